"""Experiments, runs, params, metrics, tags, datasets and run artifacts.

Functions take a Session; the caller (``services``/``api``) owns the transaction. They return ORM objects
to the service layer only; the CLI sees the plain dicts built by :func:`run_summary`.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, selectinload

from mlopsctl.common import iso, jsonable
from mlopsctl.errors import InvalidInputError, NotFoundError
from mlopsctl.store.db import get_or_create
from mlopsctl.store.models import (
    Artifact, Dataset, DatasetVersion, Experiment, Metric, Param, Run, Tag, utcnow,
)

RUNNING, FINISHED, FAILED = "RUNNING", "FINISHED", "FAILED"
PRUNED = "PRUNED"  # a tuning trial stopped early by the pruner (it finished, with a partial score)
MAX_KEY = 250


def get_or_create_experiment(s: Session, name: str) -> Experiment:
    if not name or len(name) > 200:
        raise InvalidInputError(f"experiment name {name!r} must be 1 to 200 characters.")
    return get_or_create(s, select(Experiment).where(Experiment.name == name), lambda: Experiment(name=name))


def create_run(s: Session, experiment: str, name: str | None = None, **fields: Any) -> Run:
    exp = get_or_create_experiment(s, experiment)
    run = Run(experiment_id=exp.id, name=name or "", status=RUNNING, pid=os.getpid(), **fields)
    s.add(run)
    s.flush()
    if not name:
        run.name = f"run-{run.id}"
    return run


def check_key(key: str) -> str:
    """A param, tag or metric key, checked: 1 to MAX_KEY characters."""
    key = str(key)
    if not key or len(key) > MAX_KEY:
        raise InvalidInputError(f"key {key[:40]!r} must be 1 to {MAX_KEY} characters.")
    return key


def log_params(s: Session, run_id: int, params: dict[str, Any]) -> None:
    for k, v in params.items():
        s.merge(Param(run_id=run_id, key=check_key(k), value=param_text(v)))


def param_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if v is None or isinstance(v, (bool, int, float)):
        return repr(v)
    return repr(v)


def metric_rows(run_id: int, metrics: dict[str, float], step: int = 0, ts: datetime | None = None) -> list[dict]:
    ts = ts or utcnow()
    rows = []
    for k, v in metrics.items():
        try:
            value = float(v)
        except (TypeError, ValueError):
            raise InvalidInputError(f"metric {k!r} must be a number, got {v!r}.") from None
        rows.append({"run_id": run_id, "key": check_key(k), "value": value, "step": int(step), "timestamp": ts})
    return rows


def log_metrics(s: Session, run_id: int, metrics: dict[str, float], step: int = 0) -> None:
    insert_metric_rows(s, metric_rows(run_id, metrics, step))


def insert_metric_rows(s: Session, rows: list[dict]) -> None:
    """Rows from :func:`metric_rows` (several steps and runs at once), in one statement."""
    if rows:
        s.execute(insert(Metric), rows)


def set_tags(s: Session, run_id: int, tags: dict[str, Any]) -> None:
    for k, v in tags.items():
        s.merge(Tag(run_id=run_id, key=check_key(k), value=str(v)))


def add_artifact(s: Session, run_id: int, name: str, sha256: str, size: int, media_type: str) -> None:
    existing = s.scalar(select(Artifact).where(Artifact.run_id == run_id, Artifact.name == name))
    if existing is not None:
        existing.sha256, existing.size, existing.media_type = sha256, size, media_type
    else:
        s.add(Artifact(run_id=run_id, name=name, sha256=sha256, size=size, media_type=media_type))


def describe_run(s: Session, run_id: int, *, model_class: str | None = None, task: str | None = None,
                 parity: dict[str, Any] | None = None) -> Run:
    """Set what a run turned out to be once its model exists: the estimator class, the task, the parity check."""
    run = s.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"run {run_id} does not exist.")
    for name, value in (("model_class", model_class), ("task", task), ("parity", parity)):
        if value is not None:
            setattr(run, name, value)
    return run


def finish_run(s: Session, run_id: int, status: str = FINISHED, reason: str | None = None) -> Run:
    run = s.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"run {run_id} does not exist.")
    for k, v in ending(run.started_at, status, reason).items():
        setattr(run, k, v)
    return run


def ending(started_at: datetime, status: str, reason: str | None) -> dict[str, Any]:
    """The columns a run's end sets, now: status, failure reason, end time and duration."""
    ended = utcnow()
    return {"status": status, "failure_reason": reason, "ended_at": ended,
            "duration_s": (ended - started_at).total_seconds()}


def get_run(s: Session, ref: str | int) -> Run:
    """A run by id (``7``) or unique name (``run-7``, ``baseline``)."""
    text = str(ref).strip()
    q = select(Run).options(selectinload(Run.params), selectinload(Run.tags), selectinload(Run.artifacts),
                            selectinload(Run.experiment), selectinload(Run.dataset_version).selectinload(DatasetVersion.dataset))
    run = s.scalar(q.where(Run.id == int(text))) if text.isdigit() else None
    if run is None:
        matches = s.scalars(q.where(Run.name == text)).all()
        if len(matches) > 1:
            raise InvalidInputError(
                f"run name {text!r} matches {len(matches)} runs ({', '.join(str(r.id) for r in matches)}); use the id."
            )
        run = matches[0] if matches else None
    if run is None:
        raise NotFoundError(f"run {text!r} does not exist; see `mlopsctl runs list`.")
    return run


def runs_tagged(s: Session, key: str, value: str) -> list[Run]:
    """Runs with tag ``key`` = ``value``, oldest first (a study's trials: ``parent_run_id`` = the study's run id)."""
    q = select(Run).join(Tag, Tag.run_id == Run.id).where(Tag.key == key, Tag.value == value)
    return list(s.scalars(q.options(selectinload(Run.experiment), selectinload(Run.tags)).order_by(Run.id)))


def latest_metrics(s: Session, run_id: int) -> dict[str, float]:
    """The value at the highest step (latest timestamp on ties) of each metric key."""
    rows = s.execute(
        select(Metric.key, Metric.value).where(Metric.run_id == run_id).order_by(Metric.step, Metric.timestamp, Metric.id)
    ).all()
    return {k: v for k, v in rows}


def metric_history(s: Session, run_id: int) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for m in s.scalars(select(Metric).where(Metric.run_id == run_id).order_by(Metric.key, Metric.step, Metric.id)):
        out.setdefault(m.key, []).append({"step": m.step, "value": m.value, "timestamp": m.timestamp.isoformat() + "Z"})
    return out


def list_runs(s: Session, experiment: str | None = None, limit: int = 100) -> list[Run]:
    q = select(Run).options(selectinload(Run.experiment)).order_by(Run.id.desc()).limit(limit)
    if experiment:
        exp = s.scalar(select(Experiment).where(Experiment.name == experiment))
        if exp is None:
            names = s.scalars(select(Experiment.name).order_by(Experiment.name)).all()
            raise NotFoundError(
                f"experiment {experiment!r} does not exist; known: {', '.join(names) or '(none yet)'}."
            )
        q = q.where(Run.experiment_id == exp.id)
    return list(s.scalars(q))


def metrics_for(s: Session, run_ids: Iterable[int]) -> dict[int, dict[str, float]]:
    ids = list(run_ids)
    out: dict[int, dict[str, float]] = {i: {} for i in ids}
    if not ids:
        return out
    rows = s.execute(
        select(Metric.run_id, Metric.key, Metric.value).where(Metric.run_id.in_(ids))
        .order_by(Metric.step, Metric.timestamp, Metric.id)
    ).all()
    for rid, k, v in rows:
        out[rid][k] = v
    return out


# ---- datasets ----------------------------------------------------------------------------------------

def record_dataset_version(
    s: Session, name: str, *, source_path: str, file_sha256: str | None, fingerprint: str,
    row_count: int, column_count: int, schema: dict[str, Any],
) -> tuple[DatasetVersion, bool]:
    """(version, created). The same content under the same name returns the existing version. The dataset
    row is locked (or created by this transaction) first, so concurrent writers number versions without
    gaps or duplicates and record one content once."""
    ds = get_or_create(s, select(Dataset).where(Dataset.name == name).with_for_update(), lambda: Dataset(name=name))
    existing = s.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id,
                                                     DatasetVersion.fingerprint == fingerprint))
    if existing is not None:
        return existing, False
    n = (s.scalar(select(func.max(DatasetVersion.version)).where(DatasetVersion.dataset_id == ds.id)) or 0) + 1
    dv = DatasetVersion(dataset_id=ds.id, version=n, source_path=source_path, file_sha256=file_sha256,
                        fingerprint=fingerprint, row_count=row_count, column_count=column_count, schema=schema)
    s.add(dv)
    s.flush()
    return dv, True


def get_dataset_version(s: Session, ref: str) -> DatasetVersion:
    """``name`` (latest version) or ``name:3``."""
    name, _, version = ref.partition(":")
    ds = s.scalar(select(Dataset).where(Dataset.name == name))
    if ds is None:
        known = s.scalars(select(Dataset.name).order_by(Dataset.name)).all()
        raise NotFoundError(f"dataset {name!r} does not exist; known: {', '.join(known) or '(none yet)'}.")
    q = select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id)
    if version:
        if not version.isdigit():
            raise InvalidInputError(f"dataset version {version!r} must be a number, as in {name}:2.")
        dv = s.scalar(q.where(DatasetVersion.version == int(version)))
        if dv is None:
            raise NotFoundError(f"dataset {name!r} has no version {version}; see `mlopsctl data show {name}`.")
        return dv
    return s.scalar(q.order_by(DatasetVersion.version.desc()).limit(1))  # type: ignore[return-value]


def list_datasets(s: Session) -> list[Dataset]:
    return list(s.scalars(select(Dataset).options(selectinload(Dataset.versions)).order_by(Dataset.name)))


# ---- plain views for the CLI -------------------------------------------------------------------------

def run_summary(run: Run, metrics: dict[str, float]) -> dict[str, Any]:
    return {
        "id": run.id, "name": run.name, "experiment": run.experiment.name, "status": run.status,
        "model": run.model_class, "task": run.task, "started_at": iso(run.started_at),
        "duration_s": round(run.duration_s, 3) if run.duration_s is not None else None,
        "metrics": jsonable(dict(sorted(metrics.items()))),
        "failure_reason": run.failure_reason,
    }


def run_detail(s: Session, run: Run) -> dict[str, Any]:
    d = run_summary(run, latest_metrics(s, run.id))
    dv = run.dataset_version
    d.update({
        "ended_at": iso(run.ended_at), "seed": run.seed, "git_commit": run.git_commit,
        "environment": run.environment, "parity": run.parity,
        "dataset": ({"name": dv.dataset.name, "version": dv.version, "fingerprint": dv.fingerprint,
                     "rows": dv.row_count} if dv else None),
        "params": {p.key: p.value for p in run.params},
        "tags": {t.key: t.value for t in run.tags},
        "metric_history": metric_history(s, run.id),
        "artifacts": [{"name": a.name, "sha256": a.sha256, "size": a.size, "media_type": a.media_type}
                      for a in run.artifacts],
    })
    return d


def dataset_version_view(dv: DatasetVersion) -> dict[str, Any]:
    return {"name": dv.dataset.name, "version": dv.version, "rows": dv.row_count, "columns": dv.column_count,
            "fingerprint": dv.fingerprint, "file_sha256": dv.file_sha256, "source": dv.source_path,
            "created_at": iso(dv.created_at), "schema": dv.schema}
