"""Search spaces (SPEC parsing, containment, grids), the default space of every model family, and the boosters'
default spaces at the trial level: a real study of LightGBM / XGBoost trials recorded in a real store."""

from __future__ import annotations

import importlib
import json
import math

import pytest

from mlopsctl.errors import InvalidInputError
from mlopsctl.tuning import space as sp


@pytest.mark.parametrize("text, kind, low, high, log, step, choices", [
    ("int:50..500", "int", 50, 500, False, None, ()),
    ("int:1..64:log", "int", 1, 64, True, None, ()),
    ("int:0..100:step=10", "int", 0, 100, False, 10, ()),
    ("float:0.01..0.3:log", "float", 0.01, 0.3, True, None, ()),
    ("float:0.5..1.0:step=0.1", "float", 0.5, 1.0, False, 0.1, ()),
    ("choice:gini,entropy", "choice", None, None, False, None, ("gini", "entropy")),
    ("choice:none,4,8.5,true,sqrt", "choice", None, None, False, None, (None, 4, 8.5, True, "sqrt")),
])
def test_spec_parses_and_round_trips(text, kind, low, high, log, step, choices):
    p = sp.parse_spec("x", text)
    assert (p.kind, p.low, p.high, p.log, p.step, p.choices) == (kind, low, high, log, step, choices)
    assert sp.parse_spec("x", p.spec) == p
    assert [type(c) for c in p.choices] == [type(c) for c in choices]


@pytest.mark.parametrize("text, why", [
    ("int:5", "needs int bounds as LOW..HIGH"),
    ("int:1.5..3", "needs int bounds as LOW..HIGH"),
    ("float:a..b", "needs float bounds as LOW..HIGH"),
    ("int:5..5", "needs LOW below HIGH"),
    ("float:0..1:log", "is on a log scale, which needs LOW above 0"),
    ("int:1..9:log:step=2", "has both log and step, which Optuna does not combine"),
    ("int:1..9:step=0", "has a step that is not above 0"),
    ("int:1..9:fast", "has an unknown option 'fast' (log or step=S)"),
    ("choice:", "has an empty choice"),
    ("choice:a,,b", "has an empty choice"),
    ("choice:a,a", "lists a choice twice"),
    ("choice:{},3", "has a list or table among its choices (only numbers, text, true/false, none)"),
    ("uniform:0..1", "does not start with int:, float: or choice:"),
])
def test_bad_specs_say_why(text, why):
    with pytest.raises(InvalidInputError) as e:
        sp.parse_spec("p", text)
    assert e.value.message == f"search space p={text!r} {why}; use {sp.SYNTAX} (e.g. n_estimators=int:50..500)."


def test_contains_grid_and_baseline():
    space = sp.parse_space({"n": "int:0..100:step=10", "lr": "float:0.5..1.0:step=0.25", "c": "choice:none,4,gini"})
    assert space["n"].contains(30) and not space["n"].contains(35) and not space["n"].contains(30.0)
    assert not space["n"].contains(True) and not space["n"].contains(110)
    assert space["lr"].contains(0.75) and not space["lr"].contains(0.8)
    assert space["c"].contains(None) and space["c"].contains(4) and not space["c"].contains(4.0)
    assert space["n"].grid() == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert space["lr"].grid() == [0.5, 0.75, 1.0]
    assert sp.grid_size(space) == 11 * 3 * 3
    assert sp.baseline(space, {"n": 10, "lr": 1.0, "c": None, "other": 1}) == {"n": 10, "lr": 1.0, "c": None}
    assert sp.baseline(space, {"n": 15, "lr": 1.0, "c": None}) is None
    assert sp.parse_assignments(["a=int:1..2", " b = choice:x,y"]) == {"a": "int:1..2", "b": "choice:x,y"}
    with pytest.raises(InvalidInputError, match="names 'a' twice"):
        sp.parse_assignments(["a=int:1..2", "a=int:1..3"])


@pytest.mark.parametrize("family", sorted(sp.DEFAULT_SPACES))
def test_every_default_space_fits_its_class(family):
    """Each name is a parameter of the class, each bound and choice a value it accepts; for scikit-learn and
    LightGBM the class's own defaults are a point of the space (so trial 0 is the model as it is)."""
    package, name = family.split(".")
    module = {"sklearn": None, "lightgbm": "lightgbm", "xgboost": "xgboost"}[package]
    if module is None:
        from mlopsctl.training.estimators import resolve_class

        cls = resolve_class(name)
    else:
        cls = getattr(importlib.import_module(module), name)
    space = sp.parse_space(sp.default_space(f"{package}.whatever.{name}"))
    defaults = cls().get_params(deep=False)
    assert set(space) <= set(defaults)
    for p in space.values():
        for value in (p.choices if p.kind == "choice" else (p.low, p.high)):
            est = cls(**{p.name: value})
            if hasattr(cls, "_parameter_constraints"):  # scikit-learn's declared constraints (boosters have none)
                est._validate_params()
    if package != "xgboost":  # XGBoost's defaults are None (chosen inside the library)
        assert sp.baseline(space, defaults) is not None, {n: defaults[n] for n in space}


@pytest.mark.parametrize("cls_path, task", [
    ("lightgbm.LGBMClassifier", "classification"), ("lightgbm.LGBMRegressor", "regression"),
    ("xgboost.XGBClassifier", "classification"), ("xgboost.XGBRegressor", "regression"),
])
def test_booster_default_spaces_at_the_trial_level(tmp_path, cls_path, task):
    """The boosters' default spaces through the tuning loop and training.cv, trials recorded as runs of a real store.
    (The full path, refit + ONNX export, needs the boosters' converters: the boosting branch.)"""
    from sklearn.datasets import load_breast_cancer, load_diabetes

    from mlopsctl.config import load_settings
    from mlopsctl.services import project as project_service
    from mlopsctl.services.tune import Recorder
    from mlopsctl.training import cv, train
    from mlopsctl.tuning import study as st
    from mlopsctl.tuning import storage

    frame = (load_breast_cancer if task == "classification" else load_diabetes)(as_frame=True).frame
    module, name = cls_path.split(".")
    cls = getattr(importlib.import_module(module), name)
    project_service.init_project(tmp_path / "p")
    settings = load_settings({}, {}, tmp_path / "p")
    prepared = train.prepare(frame, train.TrainSpec(model="sklearn.tree.DecisionTreeClassifier" if task == "classification"
                                                    else "sklearn.tree.DecisionTreeRegressor", target="target"))
    folds = cv.make_folds(prepared, 2)
    space = sp.parse_space(sp.default_space(f"{module}.sklearn.{name}"))
    direction = "maximize"
    spec = st.StudySpec(name=f"boost-{module}", space=space, direction=direction, steps=2, trials=4, seed=0)
    backend = storage.journal_backend(tmp_path / "journal", spec.name)
    study = st.open_study(spec, backend)
    quiet = {"verbose": -1} if module == "lightgbm" else {"verbosity": 0}
    record = {"study": spec.name, "metric": folds.metric, "task": task, "model": cls_path, "seed": 0}

    def evaluate(params, report):
        return cv.cross_validate(folds, cls(**quiet, **params, random_state=0), report)

    lease = storage.Lease(backend.workers)
    st.run_worker(study, spec, backend, lease, Recorder(settings, record, "boost", None, None), evaluate)
    lease.close()
    snap = st.snapshot(study, spec)
    assert snap.done == 4 and snap.failed == 0
    assert snap.best_value > (0.9 if task == "classification" else 0.2)
    assert set(snap.best_params) == set(space)
    assert all(space[n].contains(v) for n, v in snap.best_params.items())
    from mlopsctl import tracking
    from mlopsctl.project import open_project

    with open_project(settings).store.read() as s:
        runs = tracking.runs_tagged(s, "tune.study", spec.name)
        values = {json.loads({t.key: t.value for t in r.tags}["tune.params"])["n_estimators"]: tracking.latest_metrics(s, r.id)
                  for r in runs}
    assert len(runs) == 4 and all(math.isfinite(m[f"cv_{folds.metric}"]) for m in values.values())
