"""A trial's start and end go through SQLAlchemy Core (two short transactions a trial, no ORM unit of work): what
they write is what the ORM path wrote for the same trial (run, tags, params, fold metrics), on SQLite and on
PostgreSQL, and the ORM reads it back."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Text, cast, select

from mlopsctl import tracking
from mlopsctl.config import load_settings
from mlopsctl.project import open_project
from mlopsctl.services.tune.recorder import Recorder
from mlopsctl.store.models import Metric, Param, Run, Tag

SPEC = {"study": "s.1 é", "metric": "roc_auc", "task": "classification", "seed": 7,
        "model": "sklearn.ensemble.RandomForestClassifier"}
PARAMS = {"n_estimators": 120, "max_depth": None, "criterion": "log_loss", "min_impurity_decrease": 1e-7,
          "bootstrap": False}


def _settings(root: Path, url: str):
    root.mkdir()
    (root / ".mlops.toml").write_text(f'[store]\nurl = "{url}"\n')
    return load_settings({}, {}, root)


def _orm_trial(recorder: Recorder, number: int, folds: list[tuple[float, float]], state: str, reason: str | None) -> int:
    """The same trial as the recorder wrote it before its Core path: ``_create``, then one ORM session at the end."""
    with recorder.store.session() as s:
        run_id = recorder._create(s, number, PARAMS, "w-1").id
    rows = [r for i, (score, mean) in enumerate(folds)
            for r in tracking.metric_rows(run_id, {"fold_roc_auc": score, "cv_roc_auc": mean}, i)]
    with recorder.store.session() as s:
        tracking.insert_metric_rows(s, rows)
        tracking.set_tags(s, run_id, {"tune.state": state})
        tracking.finish_run(s, run_id, {"COMPLETE": tracking.FINISHED, "PRUNED": tracking.PRUNED}.get(state, tracking.FAILED),
                            reason)
    return run_id


def _core_trial(recorder: Recorder, number: int, folds: list[tuple[float, float]], state: str, reason: str | None,
                *, fresh_end: Recorder | None = None) -> int:
    run_id = recorder.started(number, PARAMS, "w-1")
    for i, (score, mean) in enumerate(folds):
        recorder.fold(run_id, i, score, mean)
    if fresh_end is not None:  # ended by a recorder that did not start it: the start time is read back
        fresh_end._folds = recorder._folds
        recorder = fresh_end
    recorder.finished(run_id, state, folds[-1][1] if folds else None, reason)
    return run_id


def _as_text(store, table, where, skip: tuple[str, ...]) -> list[tuple]:
    """Rows as the database holds them, every column but ``skip`` cast to text by the database itself."""
    cols = [cast(c, Text) for c in table.c if c.name not in skip]
    with store.transaction(write=False) as conn:
        return [tuple(r) for r in conn.execute(select(*cols).where(where).order_by(*table.primary_key.columns))]


@pytest.mark.parametrize("state,reason,folds", [
    ("COMPLETE", None, [(0.98, 0.98), (0.96, 0.97), (0.99, 0.9766666)]),
    ("PRUNED", None, [(0.5, 0.5)]),
    ("FAILED", "ValueError: boom", []),
])
def test_the_core_trial_is_the_orm_trial(tmp_path, store_url, state, reason, folds):
    settings = _settings(tmp_path / "p", store_url)
    with open_project(settings).store.session() as s:
        parent = tracking.create_run(s, "tuning", "study").id
    recorder = Recorder(settings, SPEC, "tuning", parent, None)
    orm_id = _orm_trial(recorder, 3, folds, state, reason)
    core_id = _core_trial(recorder, 3, folds, state, reason)
    ended_elsewhere = _core_trial(recorder, 3, folds, state, reason,
                                  fresh_end=Recorder(settings, SPEC, "tuning", parent, None))
    store = recorder.store

    run_skip = ("id", "started_at", "ended_at", "duration_s", "name")
    assert _as_text(store, Run.__table__, Run.__table__.c.id == core_id, run_skip) == \
        _as_text(store, Run.__table__, Run.__table__.c.id == orm_id, run_skip)
    for table in (Tag.__table__, Param.__table__):
        core = _as_text(store, table, table.c.run_id == core_id, ("run_id",))
        assert core == _as_text(store, table, table.c.run_id == orm_id, ("run_id",))
        assert core and core == _as_text(store, table, table.c.run_id == ended_elsewhere, ("run_id",))
    metric = Metric.__table__
    core_metrics = _as_text(store, metric, metric.c.run_id == core_id, ("id", "run_id", "timestamp"))
    assert core_metrics == _as_text(store, metric, metric.c.run_id == orm_id, ("id", "run_id", "timestamp"))
    assert len(core_metrics) == 2 * len(folds)

    with store.read() as s:  # the ORM reads the Core rows back
        for run_id in (orm_id, core_id, ended_elsewhere):
            run = tracking.get_run(s, run_id)
            tags = {t.key: t.value for t in run.tags}
            assert (run.status, run.failure_reason) == (
                {"COMPLETE": "FINISHED", "PRUNED": "PRUNED"}.get(state, "FAILED"), reason)
            assert tags["tune.state"] == state and tags["parent_run_id"] == str(parent)
            assert tags["tune.trial"] == "3"
            assert {p.key: p.value for p in run.params}["model.max_depth"] == "None"
            assert run.experiment.name == "tuning" and run.environment["optuna"]
            assert run.ended_at >= run.started_at
            assert run.duration_s == pytest.approx((run.ended_at - run.started_at) / timedelta(seconds=1))
        assert tracking.get_run(s, core_id).name == tracking.get_run(s, ended_elsewhere).name == "s.1 é-trial-3"


def test_a_key_too_long_is_refused_before_anything_is_written(tmp_path):
    from mlopsctl.errors import InvalidInputError

    settings = _settings(tmp_path / "p", f"sqlite:///{tmp_path / 'store.db'}")
    recorder = Recorder(settings, SPEC, "tuning", None, None)
    with pytest.raises(InvalidInputError, match="must be 1 to"):
        recorder.started(0, {"x" * 300: 1}, "w-1")
    with recorder.store.read() as s:
        assert s.scalars(select(Run).where(Run.name.like("%trial%"))).all() == []
