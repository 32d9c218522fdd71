"""Trials as runs in our store: started, each fold, finished, lost; the trial objective."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from mlopsctl.common import jsonable
from mlopsctl.config import Settings
from mlopsctl.project import open_project
from mlopsctl.services.tune.spec import Loaded, _environment


# ---- trials as runs -----------------------------------------------------------------------------------------

class Recorder:
    """Trials as runs of our store (the tuning loop's :class:`mlopsctl.tuning.study.Recorder`); each call is one
    short write transaction. A trial's start and end are written through SQLAlchemy Core (the runs, tags, params
    and metrics tables the ORM maps): two of them a trial, ~8 ms of ORM unit-of-work each took ~2 ms."""

    def __init__(self, settings: Settings, spec: dict[str, Any], experiment: str, study_run_id: int | None,
                 dataset_version_id: int | None, role: str = "trial"):
        self.store = open_project(settings).store
        self.spec, self.experiment, self.parent, self.dv_id, self.role = spec, experiment, study_run_id, dataset_version_id, role
        self.metric = spec["metric"]
        self._folds: dict[int, list[dict[str, Any]]] = {}
        self._started: dict[int, Any] = {}  # run id -> its started_at, for the duration at its end
        self._experiment_id: int | None = None

    def started(self, number: int, params: dict[str, Any], worker: str) -> int:
        from sqlalchemy import insert

        from mlopsctl import tracking
        from mlopsctl.store import tables
        from mlopsctl.store.models import Param, Tag

        if self._experiment_id is None:
            with self.store.session() as s:
                self._experiment_id = tracking.get_or_create_experiment(s, self.experiment).id
        now = tables.utcnow()
        with self.store.transaction(write=True) as conn:
            run_id = conn.execute(insert(tables.runs).values(
                experiment_id=self._experiment_id, name=f"{self.spec['study']}-trial-{number}", status=tracking.RUNNING,
                pid=os.getpid(), started_at=now, **self._run_fields())).inserted_primary_key[0]
            conn.execute(insert(Tag.__table__), [{"run_id": run_id, "key": k, "value": v}
                                                 for k, v in self._tags(number, params, worker).items()])
            if params:
                conn.execute(insert(Param.__table__), [{"run_id": run_id, "key": tracking.check_key(f"model.{k}"),
                                                        "value": tracking.param_text(v)} for k, v in params.items()])
        self._started[run_id] = now
        return run_id

    def _run_fields(self) -> dict[str, Any]:
        return {"dataset_version_id": self.dv_id, "task": self.spec["task"], "model_class": self.spec["model"],
                "seed": self.spec["seed"], "environment": _environment()}

    def _tags(self, number: int | str, params: dict[str, Any], worker: str) -> dict[str, str]:
        tags = {"tune.role": self.role, "tune.study": self.spec["study"], "tune.trial": number,
                "tune.state": "RUNNING", "tune.worker": worker, "tune.params": json.dumps(jsonable(params))}
        if self.parent is not None:
            tags["parent_run_id"] = self.parent
        return {k: str(v) for k, v in tags.items()}

    def _create(self, s: Any, number: int | str, params: dict[str, Any], worker: str) -> Any:
        """The trial's run through the ORM (:meth:`lost`: a trial found dead, recorded by another process)."""
        from mlopsctl import tracking

        # a new run: its tags and params go in with it (one flush, no per-key merge)
        return tracking.create_run(
            s, self.experiment, f"{self.spec['study']}-trial-{number}", **self._run_fields(),
            tags=[tracking.Tag(key=k, value=v) for k, v in self._tags(number, params, worker).items()],
            params=[tracking.Param(key=f"model.{k}", value=tracking.param_text(v)) for k, v in params.items()])

    def fold(self, run_id: int, step: int, score: float, mean: float) -> None:
        """Kept until the trial ends, then written with its state in one transaction (a trial whose process dies
        loses its fold scores, not its FAILED record)."""
        from mlopsctl import tracking

        self._folds.setdefault(run_id, []).extend(
            tracking.metric_rows(run_id, {f"fold_{self.metric}": score, f"cv_{self.metric}": mean}, step))

    def finished(self, run_id: int, state: str, value: float | None, reason: str | None) -> None:
        from sqlalchemy import insert, select, update

        from mlopsctl import tracking
        from mlopsctl.store import tables
        from mlopsctl.store.models import Metric, Tag

        status = {"COMPLETE": tracking.FINISHED, "PRUNED": tracking.PRUNED}.get(state, tracking.FAILED)
        rows = self._folds.pop(run_id, [])
        with self.store.transaction(write=True) as conn:
            if rows:
                conn.execute(insert(Metric.__table__), rows)
            tag = Tag.__table__.c
            conn.execute(update(Tag.__table__).where(tag.run_id == run_id, tag.key == "tune.state").values(value=state))
            started = self._started.pop(run_id, None)
            if started is None:
                started = conn.scalar(select(tables.runs.c.started_at).where(tables.runs.c.id == run_id))
            conn.execute(update(tables.runs).where(tables.runs.c.id == run_id).values(
                **tracking.ending(started, status, reason)))

    def lost(self, number: int, params: dict[str, Any], reason: str) -> None:
        from mlopsctl import tracking

        with self.store.session() as s:
            run = next((r for r in tracking.runs_tagged(s, "tune.study", self.spec["study"])
                        if _role_and_trial(r) == (self.role, str(number))), None)
            if run is None:  # died between asking for the trial and recording it
                run = self._create(s, number, params, "unknown")
            tracking.set_tags(s, run.id, {"tune.state": "FAILED"})
            tracking.finish_run(s, run.id, tracking.FAILED, reason)


def _role_and_trial(run: Any) -> tuple[str | None, str | None]:
    tags = {t.key: t.value for t in run.tags}
    return tags.get("tune.role"), tags.get("tune.trial")


def _evaluate(loaded: Loaded, spec: dict[str, Any]) -> Callable[[dict[str, Any], Callable[[int, float], None]], list[float]]:
    from mlopsctl.training import cv, estimators

    prepared = loaded.prepared

    def evaluate(params: dict[str, Any], report: Callable[[int, float], None]) -> list[float]:
        estimator = estimators.make_estimator(spec["model"], {**spec["fixed"], **params}, prepared.task, spec["seed"])
        return cv.cross_validate(loaded.folds, estimator, report)

    return evaluate
