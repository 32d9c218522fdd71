"""Trials as runs in our store: started, each fold, finished, lost; the trial objective."""

from __future__ import annotations

import json
from typing import Any, Callable

from mlopsctl.common import jsonable
from mlopsctl.config import Settings
from mlopsctl.project import open_project
from mlopsctl.services.tune.spec import Loaded, _environment


# ---- trials as runs -----------------------------------------------------------------------------------------

class Recorder:
    """Trials as runs of our store (the tuning loop's :class:`mlopsctl.tuning.study.Recorder`); each call is one
    short write transaction."""

    def __init__(self, settings: Settings, spec: dict[str, Any], experiment: str, study_run_id: int | None,
                 dataset_version_id: int | None, role: str = "trial"):
        self.store = open_project(settings).store
        self.spec, self.experiment, self.parent, self.dv_id, self.role = spec, experiment, study_run_id, dataset_version_id, role
        self.metric = spec["metric"]
        self._folds: dict[int, list[dict[str, Any]]] = {}

    def started(self, number: int, params: dict[str, Any], worker: str) -> int:
        pass

        with self.store.session() as s:
            return self._create(s, number, params, worker).id

    def _create(self, s: Any, number: int | str, params: dict[str, Any], worker: str) -> Any:
        from mlopsctl import tracking

        tags = {"tune.role": self.role, "tune.study": self.spec["study"], "tune.trial": number,
                "tune.state": "RUNNING", "tune.worker": worker, "tune.params": json.dumps(jsonable(params))}
        if self.parent is not None:
            tags["parent_run_id"] = self.parent
        # a new run: its tags and params go in with it (one flush, no per-key merge)
        return tracking.create_run(
            s, self.experiment, f"{self.spec['study']}-trial-{number}", dataset_version_id=self.dv_id,
            task=self.spec["task"], model_class=self.spec["model"], seed=self.spec["seed"], environment=_environment(),
            tags=[tracking.Tag(key=k, value=str(v)) for k, v in tags.items()],
            params=[tracking.Param(key=f"model.{k}", value=tracking.param_text(v)) for k, v in params.items()])

    def fold(self, run_id: int, step: int, score: float, mean: float) -> None:
        """Kept until the trial ends, then written with its state in one transaction (a trial whose process dies
        loses its fold scores, not its FAILED record)."""
        from mlopsctl import tracking

        self._folds.setdefault(run_id, []).extend(
            tracking.metric_rows(run_id, {f"fold_{self.metric}": score, f"cv_{self.metric}": mean}, step))

    def finished(self, run_id: int, state: str, value: float | None, reason: str | None) -> None:
        from mlopsctl import tracking

        status = {"COMPLETE": tracking.FINISHED, "PRUNED": tracking.PRUNED}.get(state, tracking.FAILED)
        with self.store.session() as s:
            tracking.insert_metric_rows(s, self._folds.pop(run_id, []))
            tracking.set_tags(s, run_id, {"tune.state": state})
            tracking.finish_run(s, run_id, status, reason)

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
