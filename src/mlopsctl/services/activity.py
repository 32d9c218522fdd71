"""Use cases of the dashboard's activity pages: the audit trail with filters, the watcher's jobs and
quarantined files, and a model's page (its versions with their runs, its alias history, its events).

Read-only: each function owns one read transaction and returns plain dicts.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select

from mlopsctl.common import iso, jsonable
from mlopsctl.config import Settings
from mlopsctl.errors import InvalidInputError
from mlopsctl.project import open_project
from mlopsctl.store.models import Event, Experiment, Run, WatchedFile, WatchJob

MAX_LIMIT = 1000


def _limit(limit: Any, default: int) -> int:
    text = str(default if limit in (None, "") else limit).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidInputError(f"limit {text!r} must be a whole number from 1 to {MAX_LIMIT}.")
    return int(text)


def _event_view(e: Event) -> dict[str, Any]:
    return {"id": e.id, "at": iso(e.created_at), "kind": e.kind, "model": e.model, "version": e.version,
            "run_id": e.run_id, "message": e.message, "actor": e.actor, "payload": e.payload}


def search_events(settings: Settings, *, kind: str | None = None, model: str | None = None, q: str | None = None,
                  run_id: Any = None, before: Any = None, limit: Any = 100) -> dict[str, Any]:
    """The audit trail, newest first, filtered by kind, model, run and text; ``before`` (an event id) pages
    back in time. Returns the events, the kinds and models there are to filter on, and the next ``before``."""
    n = _limit(limit, 100)
    for name, value in (("run_id", run_id), ("before", before)):
        if value not in (None, "") and not str(value).strip().isdigit():
            raise InvalidInputError(f"{name} {value!r} must be a whole number (an id).")
    q_ = select(Event).order_by(Event.id.desc()).limit(n + 1)
    if kind:
        q_ = q_.where(Event.kind == kind)
    if model:
        q_ = q_.where(Event.model == model)
    if run_id not in (None, ""):
        q_ = q_.where(Event.run_id == int(run_id))
    if before not in (None, ""):
        q_ = q_.where(Event.id < int(before))
    if q and q.strip():
        text = q.strip()
        q_ = q_.where(or_(Event.message.contains(text, autoescape=True), Event.actor.contains(text, autoescape=True)))
    with open_project(settings).store.read() as s:
        found = list(s.scalars(q_))
        kinds = sorted(s.scalars(select(Event.kind).distinct()).all())
        models = sorted(m for m in s.scalars(select(Event.model).distinct()).all() if m)
    more = len(found) > n
    events = [_event_view(e) for e in found[:n]]
    return jsonable({"events": events, "kinds": kinds, "models": models, "kind": kind or "", "model": model or "",
                     "q": q or "", "run_id": str(run_id or ""), "limit": n,
                     "next_before": events[-1]["id"] if more and events else None})


def watch_activity(settings: Settings, *, limit: Any = 50) -> dict[str, Any]:
    """The watcher's recent jobs (newest first: trigger, stage, decision, run, version, reason, timings), the
    files it quarantined with their reasons, and its other recent files."""
    n = _limit(limit, 50)
    with open_project(settings).store.read() as s:
        jobs = list(s.scalars(select(WatchJob).order_by(WatchJob.id.desc()).limit(n)))
        rejected = list(s.scalars(select(WatchedFile).where(WatchedFile.status == "rejected")
                                  .order_by(WatchedFile.id.desc()).limit(n)))
        recent = list(s.scalars(select(WatchedFile).where(WatchedFile.status != "rejected")
                                .order_by(WatchedFile.id.desc()).limit(n)))
        files_of: dict[int, list[str]] = {}
        if jobs:
            for job_id, name in s.execute(select(WatchedFile.job_id, WatchedFile.name)
                                          .where(WatchedFile.job_id.in_([j.id for j in jobs])).order_by(WatchedFile.id)):
                files_of.setdefault(job_id, []).append(name)
    return jsonable({
        "folder": str(settings.resolve(settings.watch.path)),
        "quarantine": str(settings.resolve(settings.watch.quarantine)),
        "jobs": [{"id": j.id, "trigger": j.trigger, "status": j.status, "decision": j.decision, "run_id": j.run_id,
                  "model_version": j.model_version, "reason": j.reason,
                  "timings": j.timings, "files": files_of.get(j.id, []), "created_at": iso(j.created_at),
                  "updated_at": iso(j.updated_at)} for j in jobs],
        "quarantined": [_file_view(f) for f in rejected],
        "files": [_file_view(f) for f in recent],
    })


def _file_view(f: WatchedFile) -> dict[str, Any]:
    return {"id": f.id, "name": f.name, "path": f.path, "size": f.size, "rows": f.rows, "status": f.status,
            "reason": f.reason, "sha256": f.sha256, "job_id": f.job_id, "at": iso(f.created_at)}


def model_runs(settings: Settings, versions: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The runs behind a model's versions (name, experiment, status, started) by run id, for its page."""
    ids = sorted({v["run_id"] for v in versions})
    if not ids:
        return {}
    with open_project(settings).store.read() as s:
        return {rid: {"id": rid, "name": name, "experiment": exp, "status": status, "started_at": iso(started)}
                for rid, name, exp, status, started in s.execute(
                    select(Run.id, Run.name, Experiment.name, Run.status, Run.started_at)
                    .join(Experiment, Experiment.id == Run.experiment_id).where(Run.id.in_(ids)))}
