"""Monitoring pages: ``/monitoring`` (every model's traffic and latest checks) and ``/monitoring/<name>``:
drift per column over time (the recorded drift checks), live quality over time (from feedback joined to
the prediction log), request volume and latency (the prediction log), and the HTML report."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, request

from mlopsctl.errors import MlopsError
from mlopsctl.services import monitor_history
from mlopsctl.ui import charts
from mlopsctl.ui.app import page, settings, svg

bp = Blueprint("monitor", __name__)


@page(bp, "/monitoring", "monitoring_index.html")
def monitoring_index() -> dict[str, Any]:
    return {"models": monitor_history.monitored_models(settings())}


def _live(name: str, aliases: dict[str, int], versions: int) -> dict[str, Any]:
    """Live quality per version and time bucket (labels joined to logged predictions), read with the
    contract of the default alias's version (else the newest version)."""
    from mlopsctl.monitoring.feedback import live_metrics

    s = settings()
    if not versions:
        return {"metric": None, "series": [], "per_version": {}, "labelled_rows": 0}
    ref = f"{name}@{s.registry.alias}" if s.registry.alias in aliases else f"{name}/{versions}"
    try:
        out = live_metrics(s, ref, bucket=request.args.get("bucket") or "1d", record=False)
    except MlopsError as e:  # e.g. regression labels that are not numbers: say so on the page
        return {"metric": None, "series": [], "per_version": {}, "labelled_rows": 0, "error": e.message}
    return {k: out[k] for k in ("metric", "series", "per_version", "labelled_rows")}


def _monitoring_charts(data: dict[str, Any]) -> dict[str, Any]:
    volume: dict[str, list[tuple[str, float]]] = {}
    latency: dict[str, list[tuple[str, float]]] = {}
    for b in data["traffic"]["buckets"]:
        volume.setdefault(f"version {b['version']}", []).append((b["start"], b["requests"]))
        latency.setdefault(f"version {b['version']}", []).append((b["start"], b["latency_ms_mean"]))
    share: dict[str, list[tuple[str, float]]] = {}
    for c in data["drift"]["checks"]:
        share.setdefault(f"version {c['version']}", []).append((c["at"], c["share"]))
    live = data["live"]
    quality: dict[str, list[tuple[str, float]]] = {}
    for p in live["series"]:
        quality.setdefault(f"version {p['version']}", []).append((p["start"], p.get(live["metric"])))
    return {
        "volume": svg(charts.time_chart("requests per bucket", volume, "requests", "No logged requests in this window.")),
        "latency": svg(charts.time_chart("mean latency (ms)", latency, "ms", "No logged requests in this window.")),
        "share": svg(charts.time_chart("share of drifted columns", share, "share",
                                       "No drift checks yet: run mlopsctl monitor drift MODEL or watch --on-drift.")),
        "quality": svg(charts.time_chart(f"live {live['metric'] or 'quality'} per version", quality, live["metric"] or "",
                                         "No labelled predictions yet: run mlopsctl monitor feedback labels.csv.")),
    }


@page(bp, "/monitoring/<name>", "monitoring.html", charts=_monitoring_charts)
def monitoring_detail(name: str) -> dict[str, Any]:
    """Query: since (the traffic window, default 7d), bucket (live quality's bucket, default 1d)."""
    from mlopsctl.services import models

    s = settings()
    model = models.show_model(s, name)
    return {"model": name, "aliases": model["aliases"],
            "traffic": monitor_history.traffic(s, name, since=request.args.get("since") or "7d"),
            "drift": monitor_history.drift_history(s, name),
            "live": _live(name, model["aliases"], len(model["versions"]))}


@bp.get("/monitoring/<name>/report")
def report(name: str) -> Response:
    """The self-contained HTML report of ``mlopsctl monitor report`` for the default alias (or ``ref``)."""
    from mlopsctl.monitoring.report import write_report

    ref = request.args.get("ref") or name
    if ref.split("/")[0].split("@")[0] != name:
        from mlopsctl.errors import InvalidInputError

        raise InvalidInputError(f"ref {ref!r} is not a version or alias of {name}.")
    with tempfile.TemporaryDirectory(prefix="mlopsctl-ui-") as tmp:
        out = Path(tmp) / "report.html"
        write_report(settings(), ref, out, since=request.args.get("since") or None)
        return Response(out.read_text(encoding="utf-8"), mimetype="text/html")
