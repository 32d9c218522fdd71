"""Use cases of the dashboard's monitoring pages, read from what the server and ``mlopsctl monitor`` store:
request volume and latency over time from the prediction log (``predictions``), and drift checks over time
(``monitor_results`` rows of kind ``drift``, one per ``monitor drift`` or ``watch --on-drift`` check).

Volume and latency are aggregated in SQL per time bucket and version, so a log of millions of requests
costs one grouped scan of the window, not a row per request in Python.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from mlopsctl.common import iso, jsonable
from mlopsctl.config import Settings
from mlopsctl.config_checks import parse_duration
from mlopsctl.contract import Contract
from mlopsctl.errors import ConfigError, InvalidInputError
from mlopsctl.predlog_format import index_pending
from mlopsctl.project import open_project
from mlopsctl.store.models import MonitorResult, PredictionRecord, utcnow

MAX_BUCKETS = 400


class epoch_seconds(FunctionElement):
    """A stored UTC timestamp as whole seconds since 1970 (for bucketing in SQL on any dialect)."""

    type = Integer()
    inherit_cache = True
    name = "epoch_seconds"


@compiles(epoch_seconds)
def _epoch_default(element: Any, compiler: Any, **kw: Any) -> str:
    return f"CAST(EXTRACT(EPOCH FROM {compiler.process(list(element.clauses)[0], **kw)}) AS BIGINT)"


@compiles(epoch_seconds, "sqlite")
def _epoch_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return f"CAST(strftime('%s', {compiler.process(list(element.clauses)[0], **kw)}) AS INTEGER)"


def bucket_seconds(window_s: float) -> int:
    """An hour for windows up to two days, six hours up to two weeks, else a day (and never more than
    ``MAX_BUCKETS`` buckets)."""
    size = 3600 if window_s <= 2 * 86400 else 21600 if window_s <= 14 * 86400 else 86400
    while window_s / size > MAX_BUCKETS:
        size *= 2
    return size


def traffic(settings: Settings, model: str, *, since: str = "7d") -> dict[str, Any]:
    """Requests, rows, mean and max latency per time bucket and version for ``model`` over ``since``."""
    from mlopsctl import registry

    try:
        window_s = parse_duration(since, "since")
    except ConfigError as e:  # a query argument, not the project's configuration
        raise InvalidInputError(e.message) from None
    size = bucket_seconds(window_s)
    store = open_project(settings).store
    with store.read() as s:
        registry.get_model(s, model)  # NotFoundError for an unknown model
    index_pending(store.engine)  # index rows a busy server deferred, as every reader of the log does
    bucket = cast(epoch_seconds(PredictionRecord.created_at) / size, Integer)
    q = (select(bucket.label("b"), PredictionRecord.version, func.count(), func.sum(PredictionRecord.n_rows),
                func.avg(PredictionRecord.latency_ms), func.max(PredictionRecord.latency_ms))
         .where(PredictionRecord.model == model, PredictionRecord.created_at >= utcnow() - timedelta(seconds=window_s))
         .group_by("b", PredictionRecord.version).order_by("b", PredictionRecord.version))
    with store.read() as s:
        rows = s.execute(q).all()
    buckets = [{"start": datetime.fromtimestamp(b * size, timezone.utc).replace(tzinfo=None).isoformat(timespec="minutes"),
                "version": v, "requests": n, "rows": int(r or 0), "latency_ms_mean": mean, "latency_ms_max": top}
               for b, v, n, r, mean, top in rows]
    return jsonable({"model": model, "since": since, "bucket_seconds": size, "buckets": buckets,
                     "requests": sum(b["requests"] for b in buckets), "rows": sum(b["rows"] for b in buckets)})


def drift_history(settings: Settings, model: str, *, limit: int = 200) -> dict[str, Any]:
    """The drift checks recorded for ``model``, oldest first (share of drifted columns, which ones, rows),
    and the columns to show: the latest version's contract columns, then any other column that drifted."""
    from mlopsctl import registry

    if not 1 <= limit <= 5000:
        raise InvalidInputError(f"limit must be between 1 and 5000, got {limit}.")
    project = open_project(settings)
    with project.store.read() as s:
        m = registry.get_model(s, model)
        checks = list(reversed(s.scalars(select(MonitorResult).where(MonitorResult.model == model,
                                                                     MonitorResult.kind == "drift")
                                         .order_by(MonitorResult.id.desc()).limit(limit)).all()))
        contract_sha = m.versions[-1].contract_sha256 if m.versions else None
    columns = Contract.from_json(project.artifacts.get_bytes(contract_sha)).feature_names if contract_sha else []
    views = [{"at": iso(c.created_at), "version": c.version, "share": c.value,
              "drifted": bool((c.details or {}).get("drifted")), "rows": (c.details or {}).get("rows"),
              "drifted_columns": list((c.details or {}).get("drifted_columns") or [])} for c in checks]
    extra = sorted({col for v in views for col in v["drifted_columns"]} - set(columns))
    return jsonable({"model": model, "checks": views, "columns": list(columns) + extra})


def monitored_models(settings: Settings) -> list[dict[str, Any]]:
    """Every registered model with its logged requests, last request, and latest drift and live metric."""
    from mlopsctl import registry

    with open_project(settings).store.read() as s:
        counts = {m: (n, last) for m, n, last in s.execute(
            select(PredictionRecord.model, func.count(), func.max(PredictionRecord.created_at))
            .group_by(PredictionRecord.model))}
        out = []
        for m in registry.list_models(s):
            latest = registry.latest_monitor_results(s, m.name)
            n, last = counts.get(m.name, (0, None))
            out.append({"name": m.name, "versions": len(m.versions), "requests": n, "last_request": iso(last),
                        "aliases": {a.name: a.version.version for a in m.aliases},
                        "drift": latest.get("drift"), "live_metric": latest.get("live_metric")})
    return jsonable(out)
