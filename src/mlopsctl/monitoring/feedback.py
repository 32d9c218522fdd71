"""Late labels: recording them (``mlopsctl monitor feedback``), the live quality of each version they give, and
the labelled rows a drift-triggered retrain trains on (each label used once)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from mlopsctl import labels
from mlopsctl.common import jsonable
from mlopsctl.config import Settings
from mlopsctl.config_checks import parse_duration
from mlopsctl.contract import MISSING_CATEGORY, Contract
from mlopsctl.errors import InvalidInputError
from mlopsctl.monitoring.window import as_datetime, record_result, resolve
from mlopsctl.predlog_format import gather, index_pending
from mlopsctl.project import open_project
from mlopsctl.registry import LoadedModel
from mlopsctl.store.db import Store
from mlopsctl.store.models import utcnow

QUEUED = "drift_queued"  # MonitorResult kind: the newest feedback id a drift retrain queued


def add_feedback(settings: Settings, labels_path: Path) -> dict[str, Any]:
    """Record labels (``request_id,label[,row]``), join them to the prediction log, report what matched."""
    import pandas as pd
    from sqlalchemy import select

    from mlopsctl import data
    from mlopsctl.store.models import PredictionRecord

    df = data.read_table(settings.resolve(labels_path), delimiter=settings.data.delimiter, decimal=settings.data.decimal)
    missing = [c for c in ("request_id", "label") if c not in df.columns]
    if missing:
        raise InvalidInputError(f"{Path(labels_path).name} needs columns request_id and label (and optionally row); "
                                f"missing {', '.join(missing)}; it has {', '.join(map(str, df.columns))}.")
    df = df.dropna(subset=["request_id"])
    df["request_id"] = df["request_id"].astype(str)
    df["row"] = pd.to_numeric(df["row"], errors="coerce").fillna(0).astype(int) if "row" in df.columns else 0
    before = len(df)
    df = df.drop_duplicates(subset=["request_id", "row"], keep="last")
    duplicates = before - len(df)
    store = open_project(settings).store
    index_pending(store.engine)  # index rows a busy server deferred
    ids = df["request_id"].unique().tolist()
    known: dict[str, int] = {}
    with store.read() as s:
        for chunk in range(0, len(ids), 500):
            for rid, n in s.execute(select(PredictionRecord.request_id, PredictionRecord.n_rows)
                                    .where(PredictionRecord.request_id.in_(ids[chunk:chunk + 500]))):
                known[rid] = n
    is_known = df["request_id"].isin(list(known))
    in_range = df["row"] < df["request_id"].map(known).fillna(0)
    matched = df[is_known & in_range]
    invalid_rows = int((is_known & ~in_range).sum())  # a row number beyond the request's rows
    unknown = sorted(set(df["request_id"]) - set(known))
    replaced = _store_labels(store, matched, len(unknown), duplicates)
    return {"labels": before, "matched": int(len(matched)), "unknown_ids": unknown[:100], "unknown": len(unknown),
            "unknown_labels": int((~is_known).sum()), "invalid_rows": invalid_rows,
            "duplicates_in_file": duplicates, "replaced": replaced}


def _store_labels(store: Store, matched: Any, unknown: int, duplicates: int) -> int:
    """Insert (or replace) the matched labels and record the event; returns how many replaced another."""
    from sqlalchemy import select

    from mlopsctl.registry import add_event
    from mlopsctl.store.models import Feedback

    replaced = 0
    with store.session() as s:
        existing = {(f.request_id, f.row): f for f in s.scalars(select(Feedback).where(
            Feedback.request_id.in_(matched["request_id"].unique().tolist())))} if len(matched) else {}
        for rid, row, label in zip(matched["request_id"], matched["row"], matched["label"]):
            label_text = labels.text(label)
            f = existing.get((rid, int(row)))
            if f is not None:
                replaced += f.label != label_text
                f.label, f.received_at = label_text, utcnow()
            else:
                s.add(Feedback(request_id=rid, row=int(row), label=label_text))
        add_event(s, "feedback", f"{len(matched)} label(s) joined to predictions; {unknown} unknown request id(s)",
                  payload={"matched": int(len(matched)), "unknown": unknown, "duplicates": duplicates})
    return replaced


def labelled(store: Store, model: str, contract: Contract, version: int | None = None,
             after_feedback_id: int = 0) -> dict[str, Any]:
    """Logged predictions that have a label: columns, outputs, labels, versions, times (and the newest
    feedback id used, so a caller can take only labels it has not used yet)."""
    from sqlalchemy import text

    index_pending(store.engine)  # index rows a busy server deferred

    sql = ("SELECT p.batch_id, p.\"offset\", f.row, p.request_id, p.created_at, p.version, f.label, f.id "
           "FROM feedback f JOIN predictions p ON p.request_id = f.request_id "
           "WHERE p.model = :model AND f.row < p.n_rows AND f.id > :after"
           + (" AND p.version = :version" if version is not None else "") + " ORDER BY p.id, f.row")
    params: dict[str, Any] = {"model": model, "after": after_feedback_id}
    if version is not None:
        params["version"] = version
    with store.engine.connect() as conn:
        conn = conn.execution_options(mlops_readonly=True)
        found = list(conn.execute(text(sql), params))
        rows = gather(conn, [(b, off, r, rid, as_datetime(at), v) for b, off, r, rid, at, v, _l, _f in found],
                      contract.feature_names)
    return {"versions": rows.versions.tolist(), "times": rows.times, "labels": [f[6] for f in found],
            "columns": rows.inputs, "outputs": rows.outputs,
            "last_feedback_id": max((f[7] for f in found), default=after_feedback_id)}


def live_metrics(settings: Settings, model_ref: str, *, bucket: str = "1d", record: bool = True) -> dict[str, Any]:
    """The task's metrics from labelled predictions, per version and per time bucket."""
    store, _, loaded = resolve(settings, model_ref)
    return live_quality(settings, store, loaded, bucket=bucket, record=record)


def live_quality(settings: Settings, store: Store, loaded: LoadedModel, *, bucket: str = "1d",
                 record: bool = True) -> dict[str, Any]:
    """:func:`live_metrics` of a version already loaded. The primary metric is the one the gate uses
    (``train.metric``; roc_auc or r2 when auto); it is recorded for the /metrics gauge."""
    from mlopsctl.training.metrics import primary_metric

    data = labelled(store, loaded.name, loaded.contract)
    seconds = parse_duration(bucket, "--bucket")
    rows: dict[tuple[int, str], list[int]] = {}
    for i, (v, at) in enumerate(zip(data["versions"], data["times"])):
        start = datetime.fromtimestamp((at.timestamp() // seconds) * seconds)
        rows.setdefault((v, start.isoformat(timespec="minutes")), []).append(i)
    per_version: dict[int, list[int]] = {}
    for (v, _), idx in rows.items():
        per_version.setdefault(v, []).extend(idx)
    series = [{"version": v, "start": start, "rows": len(idx), **_metrics(loaded.contract, data, idx)}
              for (v, start), idx in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
    versions = {str(v): {"rows": len(idx), **_metrics(loaded.contract, data, idx)} for v, idx in sorted(per_version.items())}
    primary = primary_metric(loaded.contract.task, settings.train.metric)
    current = versions.get(str(loaded.version), {})
    if record and current.get(primary) is not None:
        record_result(store, loaded.name, loaded.version, "live_metric", current[primary],
                      {"metric": primary, "rows": current["rows"]})
    return {"model": loaded.name, "version": loaded.version, "metric": primary, "labelled_rows": len(data["labels"]),
            "per_version": versions, "series": series}


def _metrics(contract: Contract, data: dict[str, Any], idx: list[int]) -> dict[str, Any]:
    """The task's metrics over the labelled rows ``idx``, computed as a run's held-out metrics are
    (:mod:`mlopsctl.training.metrics`). Undefined values (a class missing from a bucket) are None."""
    import warnings

    from sklearn.exceptions import UndefinedMetricWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        if contract.task == "classification":
            return jsonable(_classification(contract, data, np.asarray(idx, dtype=np.int64)))
        return jsonable(_regression(data, idx))


def _classification(contract: Contract, data: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
    from mlopsctl.training.metrics import classification_metrics

    truth, valid = contract.coerce_labels([data["labels"][i] for i in idx])
    if not valid.any():
        return {"accuracy": None}
    idx, truth = idx[valid], contract.coerce_labels(truth[valid])[0]
    predicted, _ = contract.coerce_labels([data["outputs"]["label"][i] for i in idx])
    if "probabilities" not in data["outputs"]:  # a log without them: what the labels alone tell
        return {"accuracy": float(np.mean(truth == predicted))}
    proba = np.asarray(data["outputs"]["probabilities"], dtype=np.float64)[idx]
    classes = list(contract.classes or ())
    known_classes = set(classes)
    known = np.fromiter((t in known_classes for t in truth), dtype=bool, count=len(truth))
    if known.all():
        return classification_metrics(truth, predicted, proba, classes)
    # a label none of the model's classes (the model cannot predict it): a miss for accuracy, left out of the
    # metrics that need a probability for the true class
    out: dict[str, Any] = classification_metrics(truth[known], predicted[known], proba[known], classes) if known.any() else {}
    out["accuracy"] = float(np.mean(truth == predicted))
    return out


def _regression(data: dict[str, Any], idx: list[int]) -> dict[str, Any]:
    from mlopsctl.training.metrics import regression_metrics

    pred = np.asarray(data["outputs"]["prediction"], dtype=np.float64).ravel()[idx]
    try:
        truth = np.asarray([data["labels"][i] for i in idx], dtype=np.float64)
    except ValueError:
        raise InvalidInputError("regression labels must be numbers.") from None
    if not (np.isfinite(truth).all() and np.isfinite(pred).all()):
        return {"rmse": None, "mae": None, "r2": None}  # a missing label leaves every error undefined
    out = regression_metrics(truth, pred)
    if float(((truth - truth.mean()) ** 2).sum()) == 0:
        out["r2"] = None  # undefined for a constant truth (scikit-learn would say 0.0 or 1.0)
    return out


def training_rows_from_log(settings: Settings, model_ref: str, after_feedback_id: int = 0) -> tuple[Any, int]:
    """Labelled logged predictions (with feedback newer than ``after_feedback_id``) as a training frame
    (features + target), for a drift-triggered retrain; and the newest feedback id it used."""
    import pandas as pd

    store, _, loaded = resolve(settings, model_ref)
    data = labelled(store, loaded.name, loaded.contract, after_feedback_id=after_feedback_id)
    frame = pd.DataFrame({c: [None if v in (None, MISSING_CATEGORY) else v for v in vals]
                          for c, vals in data["columns"].items()})
    contract = loaded.contract
    if contract.task == "classification":  # labels in the model's label type; ones it cannot have are dropped
        y, valid = contract.coerce_labels(data["labels"])
        frame, y = frame[valid].reset_index(drop=True), contract.coerce_labels(y[valid])[0]
    else:
        y = pd.to_numeric(pd.Series(data["labels"], dtype=object), errors="coerce").to_numpy()
    frame[contract.target] = y
    return frame, data["last_feedback_id"]


def queued_feedback_id(store: Store, model: str) -> int:
    """The newest feedback id an earlier drift retrain of ``model`` already queued (labels are used once)."""
    from sqlalchemy import select

    from mlopsctl.store.models import Event, MonitorResult

    with store.read() as s:
        details = s.scalar(select(MonitorResult.details).where(MonitorResult.model == model, MonitorResult.kind == QUEUED)
                           .order_by(MonitorResult.id.desc()).limit(1))
        if details is None:  # a store from before the bookmark had its own row kept it in the event
            details = s.scalar(select(Event.payload).where(Event.kind == "drift_retrain", Event.model == model)
                               .order_by(Event.id.desc()).limit(1))
    return int((details or {}).get("last_feedback_id", 0))


def mark_queued(store: Store, model: str, version: int, message: str, last_feedback_id: int) -> None:
    """A drift retrain queued the labels up to ``last_feedback_id``: the event, and the bookmark the next
    drift retrain starts after, in one transaction."""
    from mlopsctl.registry import add_event
    from mlopsctl.store.models import MonitorResult

    with store.session() as s:
        add_event(s, "drift_retrain", message, model=model, version=version)
        s.add(MonitorResult(model=model, version=version, kind=QUEUED, value=float(last_feedback_id),
                            details={"last_feedback_id": int(last_feedback_id)}))
