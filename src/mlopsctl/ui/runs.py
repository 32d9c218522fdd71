"""Pages of runs: the list (``/runs``), one run (``/runs/<id>``), its artifacts, and ``/compare``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, redirect, request

from mlopsctl.errors import InvalidInputError, NotFoundError
from mlopsctl.services import browse
from mlopsctl.ui import charts
from mlopsctl.ui.app import arg_int, page, settings, svg

bp = Blueprint("runs", __name__)
MAX_PARALLEL_AXES = 10


@bp.get("/")
def index() -> Any:
    return redirect("/runs", 302)


def _flag(name: str) -> bool:
    return request.args.get(name, "").lower() in ("1", "true", "yes", "on")


@page(bp, "/runs", "runs.html")
def runs_list() -> dict[str, Any]:
    """Query: experiment, status, q (search), filter, sort, order, page, per_page, col (repeated; with
    cols=1 an explicit choice, even of none)."""
    a = request.args
    columns = a.getlist("col") if (_flag("cols") or a.getlist("col")) else None
    return browse.search_runs(
        settings(), experiment=a.get("experiment") or None, status=a.get("status") or None, q=a.get("q"),
        filter=a.get("filter"), sort=a.get("sort") or "started_at", order=a.get("order") or "desc",
        page=a.get("page") or "1", per_page=arg_int("per_page", 50, high=browse.MAX_PER_PAGE), columns=columns)


def _run_charts(data: dict[str, Any]) -> dict[str, Any]:
    series = {k: svg(charts.step_chart(k, pts)) for k, pts in sorted(data["metric_history"].items()) if len(pts) > 1}
    return {"series": series}


@page(bp, "/runs/<ref>", "run.html", charts=_run_charts)
def run_detail(ref: str) -> dict[str, Any]:
    return browse.run_page(settings(), ref)


@bp.get("/runs/<ref>/artifacts/<path:name>")
def artifact(ref: str, name: str) -> Response:
    """A run's artifact, verified against its sha256, as a download."""
    from mlopsctl.services.runs import run_artifact, show_run

    run = show_run(settings(), ref)
    media = next((a["media_type"] for a in run["artifacts"] if a["name"] == name), None)
    if media is None:
        raise NotFoundError(f"run {run['id']} has no artifact {name!r}; it has "
                            f"{', '.join(a['name'] for a in run['artifacts']) or 'none'}.")
    body = run_artifact(settings(), str(run["id"]), name)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return Response(body, mimetype=media, headers={"Content-Disposition": f'attachment; filename="{safe}"'})


def _fields(data: dict[str, Any]) -> dict[str, list[Any]]:
    """``{"metrics.auc": [values per run], "params.seed": [...]}`` for the compare page's charts."""
    return {f"{kind}.{row['key']}": row["values"] for kind in ("metrics", "params") for row in data[kind]}


def _default_axes(data: dict[str, Any]) -> list[str]:
    differing = [f"{kind}.{r['key']}" for kind in ("params", "metrics") for r in data[kind] if r["differs"]]
    return differing or [f"metrics.{r['key']}" for r in data["metrics"]]


def _compare_charts(data: dict[str, Any]) -> dict[str, Any]:
    fields = _fields(data)
    numeric = [k for k in _default_axes(data) if charts.Axis(k, fields[k]).numeric]
    metrics_first = sorted(numeric, key=lambda k: not k.startswith("metrics."))
    x = request.args.get("x") or (metrics_first[1] if len(metrics_first) > 1 else next(iter(fields), ""))
    y = request.args.get("y") or (metrics_first[0] if metrics_first else next(iter(fields), ""))
    for name in (x, y):
        if name and name not in fields:
            raise InvalidInputError(f"{name!r} is not a metric or param of these runs; choose one of {', '.join(fields)}.")
    labels = [f"{r['id']} {r['name']}" for r in data["runs"]]
    links = [f"/runs/{r['id']}" for r in data["runs"]]
    scatter = charts.scatter_chart(charts.Axis(x, fields[x]), charts.Axis(y, fields[y]), labels, links) if x and y else ""
    params = [k for k in _default_axes(data) if k.startswith("params.")][:MAX_PARALLEL_AXES - 3]
    metrics = [k for k in _default_axes(data) if k.startswith("metrics.")]
    axes = (params + metrics)[:MAX_PARALLEL_AXES]
    parallel = charts.parallel_chart([charts.Axis(k, fields[k]) for k in axes], labels)
    return {"fields": list(fields), "x": x, "y": y, "scatter": svg(scatter), "parallel": svg(parallel)}


@page(bp, "/compare", "compare.html", charts=_compare_charts)
def compare() -> dict[str, Any]:
    """Query: runs (``1,2,3`` or repeated); diff=1 shows only the rows whose values differ (every row carries
    ``differs``, so the JSON is the same either way)."""
    data = browse.compare(settings(), request.args.getlist("runs"))
    data["only_differences"] = _flag("diff")
    return data
