"""What every monitoring use case starts from: the version being watched, its logged predictions in a window,
the reference sample its contract carries; and where monitoring results are recorded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from mlopsctl.common import jsonable
from mlopsctl.config import Settings
from mlopsctl.config_checks import parse_duration
from mlopsctl.contract import MISSING_CATEGORY, Contract
from mlopsctl.errors import NotFoundError
from mlopsctl.predlog_format import gather, index_pending
from mlopsctl.project import open_project
from mlopsctl.registry import LoadedModel
from mlopsctl.store.db import Store
from mlopsctl.store.models import utcnow


@dataclass
class Window:
    """Logged predictions of one version: columns (normalized, as the server saw them) and outputs."""

    columns: dict[str, list]
    outputs: dict[str, list]
    request_ids: list[str]
    rows: list[int]
    times: list[datetime]
    n: int


def resolve(settings: Settings, model_ref: str) -> tuple[Store, Any, LoadedModel]:
    """(store, artifact store, the loaded version) for ``name``, ``name/3`` or ``name@alias``."""
    project = open_project(settings)
    return project.store, project.artifacts, project.load_model(model_ref)


def load_window(store: Store, model: str, version: int | None, contract: Contract, *, since: str | None = None,
                last: int | None = None) -> Window:
    """The logged inputs and outputs of ``model`` (one version, or all) in a time window or the last N rows."""
    from sqlalchemy import text

    index_pending(store.engine)  # index rows a busy server deferred

    where = ["model = :model"]
    params: dict[str, Any] = {"model": model}
    if version is not None:
        where.append("version = :version")
        params["version"] = version
    if since:
        where.append("created_at >= :since")
        params["since"] = utcnow() - timedelta(seconds=parse_duration(since, "--since"))
    sql = (f"SELECT batch_id, \"offset\", n_rows, request_id, created_at, version FROM predictions "
           f"WHERE {' AND '.join(where)} ORDER BY id DESC")
    with store.engine.connect() as conn:
        conn = conn.execution_options(mlops_readonly=True)
        requests, total = [], 0
        for req in conn.execute(text(sql), params):  # newest first
            requests.append(req)
            total += req[2]
            if last is not None and total >= last:
                break
        requests.reverse()  # oldest first
        selection = [(b, off, r, rid, as_datetime(at), v) for b, off, n, rid, at, v in requests for r in range(n)]
        if last is not None and len(selection) > last:
            selection = selection[-last:]
        rows = gather(conn, selection, contract.feature_names)
    return Window(rows.inputs, rows.outputs, rows.request_ids, rows.rows.tolist(), rows.times, rows.n)


def as_datetime(at: Any) -> datetime:
    return at if isinstance(at, datetime) else datetime.fromisoformat(str(at))


def reference_columns(contract: Contract) -> dict[str, Any]:
    """The contract's reference sample, normalized the way the server normalizes requests."""
    ref = contract.reference or {}
    rows, cols = ref.get("rows") or [], ref.get("columns") or []
    if not rows:
        raise NotFoundError("this model version has no reference sample in its contract; retrain it with "
                            "train.reference_rows > 0.")
    data = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
    return contract.normalize({c: data[c] for c in contract.feature_names})


def as_drift_input(contract: Contract, columns: dict[str, Any]) -> dict[str, Any]:
    """Normalized columns with nulls as the drift statistics expect them (None / NaN), vectorized."""
    out = {}
    for c in contract.columns:
        values = columns[c.name]
        if c.kind == "categorical":
            arr = np.array(values, dtype=object)
            arr[(arr == MISSING_CATEGORY) | (arr == None)] = None  # noqa: E711 - elementwise on objects
            out[c.name] = arr
        else:
            out[c.name] = np.asarray(values, dtype=np.float64)
    return out


def record_result(store: Store, model: str, version: int | None, kind: str, value: float,
                  details: dict[str, Any]) -> None:
    """One monitoring result (``drift``, ``live_metric``): what /metrics exposes and reports plot."""
    from mlopsctl.store.models import MonitorResult

    with store.session() as s:
        s.add(MonitorResult(model=model, version=version, kind=kind, value=float(value), details=jsonable(details)))
