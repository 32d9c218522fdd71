"""Monitoring use cases: drift of a served version, feedback (late labels) and live quality, trigger data."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from mlopsctl import labels
from mlopsctl.common import jsonable, readable_by_all
from mlopsctl.config import Settings
from mlopsctl.config_checks import parse_duration
from mlopsctl.contract import MISSING_CATEGORY, Contract
from mlopsctl.errors import InvalidInputError, NotFoundError
from mlopsctl.monitoring.drift import DriftReport, column_drift, dataset_drift
from mlopsctl.predlog_format import gather, index_pending
from mlopsctl.project import open_project
from mlopsctl.registry import LoadedModel
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


def load_window(store: Any, model: str, version: int | None, contract: Contract, *, since: str | None = None,
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
        selection = [(b, off, r, rid, _dt(at), v) for b, off, n, rid, at, v in requests for r in range(n)]
        if last is not None and len(selection) > last:
            selection = selection[-last:]
        rows = gather(conn, selection, contract.feature_names)
    return Window(rows.inputs, rows.outputs, rows.request_ids, rows.rows.tolist(), rows.times, rows.n)


def _dt(at: Any) -> datetime:
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


def _as_drift_input(contract: Contract, columns: dict[str, Any]) -> dict[str, Any]:
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


def resolve(settings: Settings, model_ref: str) -> tuple[Any, Any, LoadedModel]:
    project = open_project(settings)
    return project.store, project.artifacts, project.load_model(model_ref)


def drift(settings: Settings, model_ref: str, *, since: str | None = None, last: int | None = None,
          record: bool = True) -> dict[str, Any]:
    """Drift of the logged inputs (and predictions) of a version against its training reference sample."""
    from mlopsctl.scoring import Scorer

    t0 = time.perf_counter()
    if since is None and last is None:
        since = settings.monitor.window
    if last is not None and last < 1:
        raise InvalidInputError(f"--last must be at least 1, got {last}.")
    store, _, loaded = resolve(settings, model_ref)
    contract = loaded.contract
    window = load_window(store, loaded.name, loaded.version, contract, since=since, last=last)
    if window.n < settings.monitor.min_rows:
        raise InvalidInputError(
            f"only {window.n} logged row(s) for {loaded.name}/{loaded.version} in the window "
            f"({'last ' + str(last) if last else since}); drift needs at least monitor.min_rows = "
            f"{settings.monitor.min_rows}. Widen --since or serve more traffic.")
    reference = reference_columns(contract)
    report = dataset_drift(contract, _as_drift_input(contract, reference), _as_drift_input(contract, window.columns),
                           drift_share=settings.monitor.drift_share, methods=settings.monitor.stattest,
                           thresholds=settings.monitor.threshold, range_tolerance=settings.serve.range_tolerance)
    ref_out = Scorer(loaded.onnx, contract).run(reference)
    report.prediction = _prediction_drift(contract, ref_out, window.outputs)
    out = {"model": loaded.name, "version": loaded.version, "window": {"since": since, "last": last, "rows": window.n},
           **report.to_dict(), "seconds": round(time.perf_counter() - t0, 3)}
    if record:
        _record(store, loaded.name, loaded.version, "drift", report.drift_share,
                {"drifted": report.drifted, "drifted_columns": report.drifted_columns, "rows": window.n})
        from mlopsctl.registry import add_event

        with store.session() as s:
            add_event(s, "drift_check", f"{loaded.name}/{loaded.version}: {len(report.drifted_columns)} of "
                      f"{len(report.columns)} columns drifted ({report.drift_share:.0%}); "
                      f"{'DRIFT' if report.drifted else 'no drift'} over {window.n} rows",
                      model=loaded.name, version=loaded.version,
                      payload={"drift_share": report.drift_share, "drifted_columns": report.drifted_columns})
    return out


def drift_report(settings: Settings, model_ref: str, *, since: str | None = None, last: int | None = None) -> tuple[DriftReport, Any, Window]:
    """The full DriftReport object (with histograms) for the HTML report."""
    store, _, loaded = resolve(settings, model_ref)
    contract = loaded.contract
    window = load_window(store, loaded.name, loaded.version, contract, since=since or settings.monitor.window, last=last)
    reference = reference_columns(contract)
    report = dataset_drift(contract, _as_drift_input(contract, reference), _as_drift_input(contract, window.columns),
                           drift_share=settings.monitor.drift_share, methods=settings.monitor.stattest,
                           thresholds=settings.monitor.threshold, range_tolerance=settings.serve.range_tolerance)
    return report, loaded, window


def _prediction_drift(contract: Contract, ref_out: dict[str, Any], cur_out: dict[str, Any]):
    key = "label" if contract.task == "classification" else "prediction"
    if key not in cur_out or len(cur_out[key]) == 0:
        return None
    if contract.task == "classification":
        return column_drift("prediction", "categorical", np.asarray(ref_out["label"]).ravel().astype(str).astype(object),
                            np.asarray(cur_out["label"]).astype(str).astype(object))
    return column_drift("prediction", "numeric", np.asarray(ref_out["prediction"], dtype=np.float64).ravel(),
                        np.asarray(cur_out["prediction"], dtype=np.float64).ravel())


def _record(store: Any, model: str, version: int | None, kind: str, value: float, details: dict[str, Any]) -> None:
    from mlopsctl.store.models import MonitorResult

    with store.session() as s:
        s.add(MonitorResult(model=model, version=version, kind=kind, value=float(value), details=jsonable(details)))


# ---- feedback and live quality ------------------------------------------------------------------------

def add_feedback(settings: Settings, labels_path: Path) -> dict[str, Any]:
    """Record labels (``request_id,label[,row]``), join them to the prediction log, report what matched."""
    import pandas as pd
    from sqlalchemy import select

    from mlopsctl import data
    from mlopsctl.store.models import Feedback, PredictionRecord

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
        from mlopsctl.registry import add_event

        add_event(s, "feedback", f"{len(matched)} label(s) joined to predictions; {len(unknown)} unknown request id(s)",
                  payload={"matched": int(len(matched)), "unknown": len(unknown), "duplicates": duplicates})
    return {"labels": before, "matched": int(len(matched)), "unknown_ids": unknown[:100], "unknown": len(unknown),
            "unknown_labels": int((~is_known).sum()), "invalid_rows": invalid_rows,
            "duplicates_in_file": duplicates, "replaced": replaced}


def labelled(store: Any, model: str, contract: Contract, version: int | None = None,
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
        rows = gather(conn, [(b, off, r, rid, _dt(at), v) for b, off, r, rid, at, v, _l, _f in found],
                      contract.feature_names)
    return {"versions": rows.versions.tolist(), "times": rows.times, "labels": [f[6] for f in found],
            "columns": rows.inputs, "outputs": rows.outputs,
            "last_feedback_id": max((f[7] for f in found), default=after_feedback_id)}


def live_metrics(settings: Settings, model_ref: str, *, bucket: str = "1d", record: bool = True) -> dict[str, Any]:
    """The task's metrics from labelled predictions, per version and per time bucket."""
    store, _, loaded = resolve(settings, model_ref)
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
    primary = "accuracy" if loaded.contract.task == "classification" else "r2"
    if record and str(loaded.version) in versions and versions[str(loaded.version)].get(primary) is not None:
        _record(store, loaded.name, loaded.version, "live_metric", versions[str(loaded.version)][primary],
                {"metric": primary, "rows": versions[str(loaded.version)]["rows"]})
    return {"model": loaded.name, "version": loaded.version, "metric": primary, "labelled_rows": len(data["labels"]),
            "per_version": versions, "series": series}


def _metrics(contract: Contract, data: dict[str, Any], idx: list[int]) -> dict[str, Any]:

    if contract.task == "classification":
        truth, valid = contract.coerce_labels([data["labels"][i] for i in idx])
        predicted, _ = contract.coerce_labels([data["outputs"]["label"][i] for i in idx])
        hit = valid & (truth == predicted)
        out: dict[str, Any] = {"accuracy": float(hit.sum() / valid.sum()) if valid.any() else None}
        classes = list(contract.classes or ())
        if "probabilities" in data["outputs"] and len(classes) == 2 and valid.any():
            from scipy import stats

            p = np.asarray(data["outputs"]["probabilities"], dtype=np.float64)[idx, 1][valid]
            pos = np.asarray([t == classes[1] for t in truth[valid]], dtype=bool)
            ranks = stats.rankdata(p)
            n1, n0 = int(pos.sum()), int((~pos).sum())
            out["roc_auc"] = float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)) if n1 and n0 else None
        return jsonable(out)
    pred = np.asarray(data["outputs"]["prediction"], dtype=np.float64).ravel()[idx]
    try:
        truth = np.asarray([data["labels"][i] for i in idx], dtype=np.float64)
    except ValueError:
        raise InvalidInputError("regression labels must be numbers.") from None
    err = pred - truth
    ss_tot = float(((truth - truth.mean()) ** 2).sum())
    return jsonable({"rmse": float(np.sqrt((err ** 2).mean())), "mae": float(np.abs(err).mean()),
                      "r2": 1 - float((err ** 2).sum()) / ss_tot if ss_tot > 0 else None})


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


def write_report(settings: Settings, model_ref: str, output: Path, *, since: str | None = None,
                 last: int | None = None, bucket: str = "1d") -> dict[str, Any]:
    """Render the HTML report to ``output`` (written to a temp file, then renamed)."""
    import os
    import tempfile

    from mlopsctl.services import models
    from mlopsctl.monitoring import report as html_report

    t0 = time.perf_counter()
    report, loaded, window = drift_report(settings, model_ref, since=since, last=last)
    if window.n == 0:
        raise InvalidInputError(f"no logged predictions for {loaded.name}/{loaded.version} in the window; serve some "
                                "traffic first or widen --since.")
    from mlopsctl.scoring import Scorer

    report.prediction = _prediction_drift(loaded.contract, Scorer(loaded.onnx, loaded.contract).run(
        reference_columns(loaded.contract)), window.outputs)
    live = live_metrics(settings, model_ref, bucket=bucket, record=False)
    history = models.show_model(settings, loaded.name)["history"]
    page = html_report.render(model=loaded.name, version=loaded.version, drift=report.to_dict(), report=report,
                              live=live, history=history,
                              window_label=f"last {last} rows" if last else f"last {since or settings.monitor.window}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(page)
    readable_by_all(Path(tmp))
    os.replace(tmp, output)
    return {"model": loaded.name, "version": loaded.version, "output": str(output), "bytes": len(page.encode()),
            "drifted": report.drifted, "drift_share": report.drift_share, "rows": window.n,
            "seconds": round(time.perf_counter() - t0, 3)}


@dataclass
class DriftTrigger:
    """``watch --on-drift``: every ``every_s`` check drift over the monitoring window; when the data set has
    drifted and enough labelled predictions exist, drop them (features + label) into the watched folder as
    a Parquet file, so the retrain takes the same validated, gated path as any new file."""

    settings: Settings
    model_ref: str
    every_s: float
    name: str = "drift"
    last: float = 0.0

    def check(self, watcher: Any, now: float) -> str | None:
        from mlopsctl.errors import MlopsError
        from mlopsctl.registry import add_event

        if self.last and now - self.last < self.every_s:
            return None
        self.last = now
        try:
            result = drift(self.settings, self.model_ref)
        except MlopsError as e:
            watcher.say(f"drift check skipped: {e.message}")
            return None
        watcher.say(f"drift check: {len(result['drifted_columns'])} of {len(result['columns'])} columns drifted "
                    f"({result['drift_share']:.0%}) over {result['window']['rows']} rows")
        if not result["drifted"]:
            return None
        store = open_project(self.settings).store
        frame, last_id = training_rows_from_log(self.settings, self.model_ref, _last_queued_feedback(store, result["model"]))
        if len(frame) < self.settings.monitor.min_labels:
            msg = (f"drift detected but only {len(frame)} labelled prediction(s); need monitor.min_labels = "
                   f"{self.settings.monitor.min_labels} to retrain")
            watcher.say(msg)
            with store.session() as s:
                add_event(s, "drift_no_retrain", msg, model=result["model"], version=result["version"])
            return None
        path = watcher.folder / f"drift-{time.strftime('%Y%m%dT%H%M%S')}.parquet"
        tmp = path.with_name("." + path.name)
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        with store.session() as s:
            add_event(s, "drift_retrain", f"drift in {', '.join(result['drifted_columns'][:10])}: "
                      f"{len(frame)} labelled rows queued for retraining as {path.name}",
                      model=result["model"], version=result["version"], payload={"last_feedback_id": last_id})
        watcher.say(f"drift: queued {len(frame)} labelled rows as {path.name}")
        watcher.note(path)
        return None


def _last_queued_feedback(store: Any, model: str) -> int:
    """The newest feedback id an earlier drift retrain already queued (labels are used once)."""
    from sqlalchemy import select

    from mlopsctl.store.models import Event

    with store.read() as s:
        payload = s.scalar(select(Event.payload).where(Event.kind == "drift_retrain", Event.model == model)
                           .order_by(Event.id.desc()).limit(1))
    return int((payload or {}).get("last_feedback_id", 0))
