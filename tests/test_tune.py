"""`mlopsctl tune`: a study of real trials on a bundled example, recorded as child runs of the study's run in the
real store, refitted through the train path, registered and gated; bad input as one-line errors; data shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shapes import SHAPES, make_shape

TREE = "sklearn.tree.DecisionTreeClassifier"


def _trial_runs(settings, study_run_id: int) -> list[dict]:
    """The study's trial runs straight from the store: (trial number, status, tags, metrics)."""
    from mlopsctl import tracking
    from mlopsctl.project import open_project

    with open_project(settings).store.read() as s:
        out = []
        for run in tracking.runs_tagged(s, "parent_run_id", str(study_run_id)):
            tags = {t.key: t.value for t in run.tags}
            out.append({"id": run.id, "status": run.status, "tags": tags, "reason": run.failure_reason,
                        "metrics": tracking.latest_metrics(s, run.id), "duration_s": run.duration_s,
                        "params": {p.key: p.value for p in tracking.get_run(s, run.id).params}})
        return out


def _default_cv_score(settings, project: Path, model: str, k: int) -> float:
    """The model with its default parameters, scored by the same K-fold CV on the training split."""
    from mlopsctl import data
    from mlopsctl.config import with_overrides
    from mlopsctl.services import runs
    from mlopsctl.training import cv, train

    s = with_overrides(settings, train={"model": model, "params": {}})
    path = project / "data" / "train.csv"
    prepared = train.prepare(data.read_table(path), runs.train_spec(s, path))
    scores = cv.cross_validate(cv.make_folds(prepared, k), prepared.estimator)
    return sum(scores) / len(scores)


def test_tune_20_trials_2_jobs_cv_3_registers_a_gated_model(cli, make_project, settings_of):
    project = make_project("breast-cancer")
    r = cli("-C", project, "tune", "--trials", 20, "--jobs", 2, "--cv", 3, "--model", TREE, "--study", "bc",
            "--register", "breast-cancer", "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    out = json.loads(r.stdout)
    settings = settings_of(project)
    assert out["complete"] + out["pruned"] == 20 and out["failed"] == 0
    assert out["pruned"] >= 1, "the median pruner stopped no trial"
    # progress: one plain line per finished trial on stderr (not a terminal here)
    assert sorted(int(line.split()[1]) for line in r.stderr.splitlines() if line.startswith("trial ")) == list(range(20))

    trials = [t for t in _trial_runs(settings, out["run_id"]) if t["tags"]["tune.role"] == "trial"]
    assert sorted(int(t["tags"]["tune.trial"]) for t in trials) == list(range(20))  # 20 runs, numbers unique
    assert {t["tags"]["tune.study"] for t in trials} == {"bc"}
    by_state = {s: [t for t in trials if t["tags"]["tune.state"] == s] for s in ("COMPLETE", "PRUNED")}
    assert len(by_state["COMPLETE"]) == out["complete"] and len(by_state["PRUNED"]) == out["pruned"]
    for t in by_state["COMPLETE"]:
        assert t["status"] == "FINISHED" and t["duration_s"] > 0
        assert set(t["metrics"]) == {"cv_roc_auc", "fold_roc_auc"}
        assert set(t["params"]) == {"model.max_depth", "model.min_samples_leaf", "model.criterion"}
    for t in by_state["PRUNED"]:
        assert t["status"] == "PRUNED"
    # the best trial beats (or matches) the model as it is: trial 0 is the default parameters, scored the same way
    default = _default_cv_score(settings, project, TREE, 3)
    trial0 = next(t for t in trials if t["tags"]["tune.trial"] == "0")
    assert json.loads(trial0["tags"]["tune.params"]) == {"max_depth": None, "min_samples_leaf": 1, "criterion": "gini"}
    assert trial0["metrics"]["cv_roc_auc"] == pytest.approx(default, abs=1e-12)
    assert out["best"]["value"] >= default
    best_run = next(t for t in trials if t["tags"]["tune.trial"] == str(out["best"]["trial"]))
    assert best_run["metrics"]["cv_roc_auc"] == pytest.approx(out["best"]["value"])

    # the refit went through the train path: held-out metrics, ONNX parity; registered and promoted through the gate
    refit = out["refit"]
    assert refit["status"] == "FINISHED" and refit["parity"]["passed"] is True
    assert set(refit["metrics"]) == {"accuracy", "f1_macro", "log_loss", "roc_auc"}
    assert out["registered"]["decision"] == "promoted" and out["registered"]["ref"] == "breast-cancer/1"
    shown = json.loads(cli("-C", project, "models", "show", "breast-cancer/1", "--json").stdout)
    assert shown["run_id"] == refit["id"] and shown["gate"]["passed"] is True
    run = json.loads(cli("-C", project, "runs", "show", refit["id"], "--json").stdout)
    assert run["tags"]["parent_run_id"] == str(out["run_id"]) and run["tags"]["tune.role"] == "refit"
    assert {k: run["params"][f"model.{k}"] for k in out["best"]["params"]} == {
        k: v if isinstance(v, str) else repr(v) for k, v in out["best"]["params"].items()}

    # tune show: trials, best over time, fANOVA importance (computed by the first show, not by the study); tune list
    study_tags = json.loads(cli("-C", project, "runs", "show", out["run_id"], "--json").stdout)["tags"]
    assert "tune.importance" not in study_tags and study_tags["tune.best_trial"] == str(out["best"]["trial"])
    show = json.loads(cli("-C", project, "tune", "show", "bc", "--json").stdout)
    assert [t["trial"] for t in show["trials"]] == list(range(20))
    assert show["counts"] == {"COMPLETE": out["complete"], "PRUNED": out["pruned"], "FAILED": 0, "RUNNING": 0}
    assert show["best"]["trial"] == out["best"]["trial"] and show["refit"]["run_id"] == refit["id"]
    bests = [p["best"] for p in show["best_over_time"] if p["best"] is not None]
    assert bests == sorted(bests) and bests[-1] == pytest.approx(out["best"]["value"])
    assert set(show["importance"]) == {"max_depth", "min_samples_leaf", "criterion"}
    assert sum(show["importance"].values()) == pytest.approx(1.0, abs=1e-3)
    _importance_is_kept_while_its_trials_are(settings_of(project), out["run_id"], show)
    assert all(t["folds"] == 3 for t in show["trials"] if t["state"] == "COMPLETE")
    assert all(t["folds"] < 3 for t in show["trials"] if t["state"] == "PRUNED")
    listed = json.loads(cli("-C", project, "tune", "list", "--json").stdout)
    assert [(s["study"], s["status"], s["complete"], s["pruned"]) for s in listed] == [
        ("bc", "FINISHED", out["complete"], out["pruned"])]
    text = cli("-C", project, "tune", "show", "bc")
    assert text.exit_code == 0 and "Parameter importance (fANOVA)" in text.stdout
    # Optuna's state is in its journal beside the store, not in our tables
    assert Path(out["storage"]) == project / ".mlops" / "tune" / "bc.journal" and Path(out["storage"]).stat().st_size > 0
    import sqlite3

    tables = {r[0] for r in sqlite3.connect(project / ".mlops" / "mlops.db").execute(
        "select name from sqlite_master where type='table'")}
    assert not tables & {"studies", "trials", "trial_values", "trial_params", "version_info"}


@pytest.mark.parametrize("args, code, message", [
    (["--space", "max_depth=int:5"], 2,
     "search space max_depth='int:5' needs int bounds as LOW..HIGH; use int:LOW..HIGH[:log][:step=S], "
     "float:LOW..HIGH[:log][:step=S] or choice:A,B,C (e.g. n_estimators=int:50..500)."),
    (["--space", "max_depth=range:1..5"], 2,
     "search space max_depth='range:1..5' does not start with int:, float: or choice:; use int:LOW..HIGH[:log][:step=S], "
     "float:LOW..HIGH[:log][:step=S] or choice:A,B,C (e.g. n_estimators=int:50..500)."),
    (["--space", "max_depth"], 2, "--space 'max_depth' must look like NAME=SPEC, e.g. --space n_estimators=int:50..500."),
    (["--space", "n_estimators=int:10..50"], 2,
     "sklearn.tree.DecisionTreeClassifier has no parameter 'n_estimators' to search; valid: ccp_alpha, class_weight, "
     "criterion, max_depth, max_features, max_leaf_nodes, min_impurity_decrease, min_samples_leaf, min_samples_split, "
     "min_weight_fraction_leaf, monotonic_cst, random_state, splitter."),
    (["--space", "criterion=choice:gini,bogus"], 2, None),
    (["--space", "min_samples_leaf=float:0.001..0.3:log", "--sampler", "grid"], 2,
     "the grid sampler needs a step for float parameter 'min_samples_leaf' (float:0.001..0.3:log:step=...) or a "
     "choice; or use another sampler."),
    (["--trials", "0"], 5, "tune.trials must be at least 1, got 0."),
    (["--cv", "1"], 5, "tune.cv must be at least 2, got 1."),
    (["--sampler", "bayes"], 5, "tune.sampler in a command-line flag must be one of tpe, random, grid, cmaes; got 'bayes'."),
    (["--pruner", "hyperband"], 5, "tune.pruner in a command-line flag must be one of median, none; got 'hyperband'."),
    (["--timeout", "soon"], 5, "tune.timeout 'soon' is not a duration; use e.g. 90s, 30m, 6h or 1d."),
    (["--study", "no spaces"], 2,
     "study name 'no spaces' must be 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit."),
    (["--cv", "300"], 2, None),
])
def test_bad_input_is_one_line_and_records_nothing(cli, make_project, assert_error, settings_of, args, code, message):
    project = make_project("breast-cancer")
    r = cli("-C", project, "tune", "--model", TREE, "--trials", 3, *args)
    if message is None:
        assert r.exit_code == code and r.stdout == "" and r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
    else:
        assert_error(r, code, message)
    assert json.loads(cli("-C", project, "tune", "list", "--json").stdout) == []
    assert not list((project / ".mlops").glob("tune/*.journal"))


def test_bad_choice_value_names_it(cli, make_project):
    r = cli("-C", make_project("breast-cancer"), "tune", "--model", TREE, "--space", "criterion=choice:gini,bogus")
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: search space criterion=choice:gini,bogus: sklearn.tree.DecisionTreeClassifier "
                               "does not accept 'bogus' (")


def test_no_default_space_says_what_to_do(cli, make_project, assert_error):
    r = cli("-C", make_project("diabetes"), "tune", "--model", "sklearn.linear_model.LinearRegression")
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: there is no default search space for sklearn.linear_model.LinearRegression; "
                               "give one with --space NAME=SPEC (or tune.space), or tune one of: ")


def test_show_unknown_study_and_resume_with_another_space(cli, make_project, assert_error):
    project = make_project("breast-cancer")
    assert_error(cli("-C", project, "tune", "show", "nope"), 3,
                 "study 'nope' does not exist; known: (none yet) (see `mlopsctl tune list`).")
    ok = cli("-C", project, "tune", "--model", TREE, "--trials", 2, "--cv", 2, "--study", "s", "--json")
    assert ok.exit_code == 0, ok.stderr
    assert_error(cli("-C", project, "tune", "--study", "s", "--cv", 3), 4,
                 "study 's' was started with cv = 2, not 3; resume it without --cv or start a new study with another "
                 "--study name.")
    assert_error(cli("-C", project, "tune", "--study", "s", "--data", project / "data" / "other.csv"), 4,
                 f"study 's' was started on {project / 'data' / 'train.csv'}, not {project / 'data' / 'other.csv'}; "
                 "resume it without --data or start a new study with another --study name.")
    # resuming with more trials extends it to exactly that many; the first two runs are not redone
    more = cli("-C", project, "tune", "--study", "s", "--trials", 4, "--json")
    assert more.exit_code == 0, more.stderr
    out = json.loads(more.stdout)
    assert out["complete"] + out["pruned"] == 4
    shown = json.loads(cli("-C", project, "tune", "show", "s", "--json").stdout)
    assert [t["trial"] for t in shown["trials"]] == [0, 1, 2, 3]


SHAPE_NAMES = ["int-multiclass-gaps", "bool-missing-target", "text-unicode", "regression-float", "odd-column-names",
               "tiny-12-rows"]


@pytest.mark.parametrize("name", SHAPE_NAMES)
def test_shapes_through_a_short_tune(tmp_path, name):
    from mlopsctl.config import load_settings
    from mlopsctl.services import project as project_service
    from mlopsctl.services import tune

    shape = make_shape(name)
    project_service.init_project(tmp_path / "p")
    shape.frame.to_csv(tmp_path / "p" / "data.csv", index=False)
    model = TREE if shape.task == "classification" else "sklearn.tree.DecisionTreeRegressor"
    settings = load_settings({"data.target": shape.target, "train.model": model, "tune.trials": 4, "tune.cv": 2,
                              "data.exclude": list(shape.exclude) or None}, {}, tmp_path / "p")
    out = tune.tune(settings, study=f"shape-{name.replace('.', '')}", data_path=tmp_path / "p" / "data.csv")
    assert out["complete"] + out["pruned"] == 4 and out["failed"] == 0
    assert out["metric"] == ("cv_roc_auc" if shape.task == "classification" else "cv_r2")
    assert out["refit"]["status"] == "FINISHED" and out["refit"]["parity"]["passed"] is True
    from mlopsctl.project import open_project
    from mlopsctl.services import runs

    contract = json.loads(runs.run_artifact(settings, str(out["refit"]["id"]), "contract.json"))
    assert contract["label_type"] == shape.label_type
    assert open_project(settings).store is not None


def test_a_fold_without_any_value_of_a_categorical_column(tmp_path):
    """12 rows, a categorical column filled in 2 of them: in 2-fold CV on the training split one fold's training
    rows hold no value of it at all. The fold's imputer keeps the column (filled as missing) instead of dropping
    it, so the encoder gets every column and no trial fails ("Found array with 0 feature(s)" before)."""
    import numpy as np
    import pandas as pd

    from mlopsctl import data
    from mlopsctl.config import load_settings
    from mlopsctl.services import project as project_service
    from mlopsctl.services import runs, tune
    from mlopsctl.training import cv, estimators, train as training

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": rng.normal(size=12), "plan": [None] * 12, "label": [0, 1] * 6})
    frame.loc[[0, 3], "plan"] = ["gold", "basic"]  # both in one fold of the training split (asserted below)
    root = tmp_path / "p"
    project_service.init_project(root)
    frame.to_csv(root / "data.csv", index=False)
    settings = load_settings({"data.target": "label", "train.model": TREE, "tune.trials": 4, "tune.cv": 2}, {}, root)
    prepared = training.prepare(data.read_table(root / "data.csv"), runs.train_spec(settings, root / "data.csv"))
    folds = cv.make_folds(prepared, 2, "roc_auc")
    assert any((folds.X.iloc[train]["plan"] == estimators.MISSING_CATEGORY).all() for train, _ in folds.indices), \
        "no fold without a value of plan: the test lost its case"
    out = tune.tune(settings, study="sparse", data_path=root / "data.csv")
    assert (out["complete"] + out["pruned"], out["failed"]) == (4, 0)
    assert out["refit"]["status"] == "FINISHED" and out["refit"]["parity"]["passed"] is True


def test_retrain_with_a_small_tune(make_project, settings_of):
    """The function a retrain job calls instead of runs.train_and_track when watch.tune_trials > 0."""
    from mlopsctl.config import with_overrides
    from mlopsctl.services import tune

    project = make_project("breast-cancer", model=TREE, params="{}")
    settings = with_overrides(settings_of(project), tune={"cv": 2})
    run = tune.retrain(settings, data_path=project / "data" / "train.csv", trials=3, run_name="watch-job-1",
                       experiment="watch")
    assert run["status"] == "FINISHED" and run["experiment"] == "watch" and run["name"].endswith("-best")
    assert run["tags"]["tune.role"] == "refit" and run["study"] == "watch-job-1"
    shown = tune.show_study(settings, run["study"])
    assert shown["target"] == 3 and len(shown["trials"]) == 3 and shown["refit"]["run_id"] == run["id"]


def _importance_is_kept_while_its_trials_are(settings, study_run_id: int, show: dict) -> None:
    """The first show stored the fANOVA importance it computed; show reads it back while the complete trials are the
    ones it was computed from, and computes it afresh (and keeps that) once they are not (a resumed study)."""
    from mlopsctl import tracking
    from mlopsctl.project import open_project
    from mlopsctl.services import tune as svc

    store = open_project(settings).store
    with store.read() as s:
        stored = json.loads({t.key: t.value for t in tracking.get_run(s, study_run_id).tags}["tune.importance"])
    assert stored["importance"] == show["importance"]
    marker = {"max_depth": 1.0}
    with store.session() as s:
        tracking.set_tags(s, study_run_id, {"tune.importance": json.dumps({**stored, "importance": marker})})
    assert svc.show_study(settings, "bc")["importance"] == marker
    with store.session() as s:
        tracking.set_tags(s, study_run_id, {"tune.importance": json.dumps({"key": "[]", "importance": marker})})
    assert svc.show_study(settings, "bc")["importance"] == show["importance"]
    with store.read() as s:
        kept = json.loads({t.key: t.value for t in tracking.get_run(s, study_run_id).tags}["tune.importance"])
    assert kept == stored


def test_tune_list_and_show_text(cli, make_project):
    project = make_project("breast-cancer")
    assert cli("-C", project, "tune", "list").exit_code == 0
    r = cli("-C", project, "tune", "--model", TREE, "--trials", 2, "--cv", 2, "--study", "t")
    assert r.exit_code == 0, r.stderr
    assert "Study t (run 1): " in r.stdout and "onnx parity" in r.stdout
    shown = cli("-C", project, "tune", "show", "t")
    assert shown.exit_code == 0 and "Search space" in shown.stdout and "Trials" in shown.stdout
    assert set(SHAPES) >= set(SHAPE_NAMES)
