"""`mlopsctl train` through CliRunner against a real SQLite store and artifact folder in tmp_path: the examples, parameters and models, failing runs."""

from __future__ import annotations

import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlopsctl
from mlopsctl.training.estimators import supported_list

from served_projects import ok, ok_json

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# ---- train: the examples ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("example", "rows", "task", "checks"), [
    ("breast-cancer", 569, "classification", {"roc_auc": (0.95, 1.0), "accuracy": (0.9, 1.0)}),
    ("diabetes", 442, "regression", {"r2": (0.3, 1.0), "rmse": (0.0, 70.0), "mae": (0.0, 60.0)}),
    ("churn", 3000, "classification", {"roc_auc": (0.7, 1.0), "accuracy": (0.65, 1.0)}),
])
def test_train_each_example_as_shipped(cli, make_project, example, rows, task, checks):
    project = make_project(example)
    run = ok_json(cli("-C", project, "train", "--json"))
    assert run["status"] == "FINISHED"
    assert run["failure_reason"] is None
    assert run["task"] == task
    assert run["dataset"]["rows"] == rows
    for metric, (low, high) in checks.items():
        assert low < run["metrics"][metric] <= high, (metric, run["metrics"])
    assert run["parity"]["rows"] == int(run["params"]["n_test"])
    assert run["parity"]["passed"] is True, run["parity"]


def test_train_in_the_project_folder_uses_its_config(cli, project):
    """`mlopsctl init proj --example breast-cancer && cd proj && mlopsctl train`, as the README says."""
    run = ok_json(cli("train", "--json"))
    assert run["params"]["model.n_estimators"] == "100"
    assert run["params"]["target"] == "diagnosis"
    assert run["metrics"]["roc_auc"] > 0.95
    assert run["parity"]["passed"] is True


def test_train_json_structure(cli, fast_project):
    run = ok_json(cli("train", "--json"))
    assert set(run) == {
        "id", "name", "experiment", "status", "model", "task", "started_at", "duration_s", "metrics",
        "failure_reason", "ended_at", "seed", "git_commit", "environment", "parity", "dataset", "params", "tags",
        "metric_history", "artifacts",
    }
    assert (run["id"], run["name"], run["experiment"], run["status"]) == (1, "run-1", "default", "FINISHED")
    assert run["model"] == "sklearn.ensemble.RandomForestClassifier"
    assert run["task"] == "classification"
    assert run["seed"] == 42
    assert run["git_commit"] is None  # tmp_path is not a git repository
    assert run["started_at"].endswith("Z") and run["ended_at"].endswith("Z")
    assert 0 <= run["duration_s"] < 60
    assert set(run["metrics"]) == {"accuracy", "f1_macro", "log_loss", "roc_auc"}
    assert all(isinstance(v, float) for v in run["metrics"].values())
    assert 0 < run["metrics"]["log_loss"] < 1
    assert run["metric_history"].keys() == run["metrics"].keys()
    for key, history in run["metric_history"].items():
        assert [h["step"] for h in history] == [0]
        assert history[0]["value"] == run["metrics"][key]
    assert run["dataset"] == {"name": "train", "version": 1, "fingerprint": run["dataset"]["fingerprint"], "rows": 569}
    p = run["params"]
    assert (p["target"], p["task"], p["test_size"], p["seed"], p["n_train"], p["n_test"]) == (
        "diagnosis", "classification", "0.2", "42", "455", "114")
    assert p["model.n_estimators"] == "10"
    assert p["model.random_state"] == "42"  # the seed reaches the estimator
    assert {k for k in run["tags"]} == {f"timing.{s}" for s in ("prepare", "fit", "evaluate", "export", "parity")}
    assert {a["name"]: a["media_type"] for a in run["artifacts"]} == {
        "contract.json": "application/json", "heldout.parquet": "application/vnd.apache.parquet",
        "model.joblib": "application/x-joblib", "model.onnx": "application/onnx",
    }
    assert all(a["size"] > 0 and len(a["sha256"]) == 64 for a in run["artifacts"])
    parity = run["parity"]
    assert parity["passed"] is True
    assert parity["rows"] == 114
    assert parity["label_agreement"] >= 0.99
    assert parity["max_abs_diff"] <= 0.05
    assert parity["numeric_dtype"] == "float32"
    assert parity["bounds"] == {"min_label_agreement": 0.99, "max_proba_diff": 0.05}


def test_train_records_the_environment(cli, fast_project):
    run = ok_json(cli("train", "--json"))
    env = run["environment"]
    assert env["python"] == platform.python_version()
    assert env["mlopsctl"] == mlopsctl.__version__
    for dist in ("scikit-learn", "skl2onnx", "onnxruntime", "onnx", "numpy", "pandas"):
        assert env[dist] == metadata.version(dist)


def test_train_records_the_git_commit(cli, fast_project):
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=fast_project, check=True)
    subprocess.run([*git, "add", "-A"], cwd=fast_project, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=fast_project, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=fast_project, check=True, capture_output=True,
                          text=True).stdout.strip()
    assert len(head) == 40
    run = ok_json(cli("train", "--json"))
    assert run["git_commit"] == head


def test_train_prints_a_summary(cli, fast_project):
    out = ok(cli("train"))
    assert out.startswith("Run 1 (run-1) FINISHED in ")
    for word in ("Held-out metrics", "roc_auc", "accuracy", "onnx parity", "passed", "label agreement"):
        assert word in out


def test_train_writes_nothing_to_stderr_when_it_succeeds(cli, fast_project):
    """The progress display is for terminals; with stderr captured or redirected it must print nothing."""
    result = cli("train")
    assert result.exit_code == 0
    assert result.stderr == ""


def test_train_error_is_one_line_on_stderr(cli, assert_error, fast_project):
    """Without --json too (the progress display must not add lines)."""
    assert_error(cli("train", "--data", "nope.csv"), 3,
                 f"data file {fast_project.resolve() / 'nope.csv'} does not exist; check the path or set "
                 "data.path in .mlops.toml.")


def test_train_options_reach_the_run(cli, fast_project):
    run = ok_json(cli("train", "--json", "--experiment", "exp-a", "--run-name", "baseline", "--seed", "7",
                      "--test-size", "0.25"))
    assert (run["name"], run["experiment"], run["seed"]) == ("baseline", "exp-a", 7)
    assert (run["params"]["seed"], run["params"]["test_size"], run["params"]["n_test"]) == ("7", "0.25", "143")
    assert run["params"]["model.random_state"] == "7"


def test_train_with_an_explicit_data_file_and_target(cli, make_project, tmp_path):
    project = make_project("breast-cancer", params="{ n_estimators = 5 }")
    import pandas as pd

    df = pd.read_csv(project / "data" / "train.csv").rename(columns={"diagnosis": "y"})
    df.to_parquet(tmp_path / "other.parquet", index=False)
    run = ok_json(cli("-C", project, "train", "--json", "--data", tmp_path / "other.parquet", "--target", "y"))
    assert run["params"]["target"] == "y"
    assert run["dataset"]["name"] == "other"
    assert run["dataset"]["rows"] == 569


# ---- train: parameters and models ---------------------------------------------------------------------

def test_params_reach_the_estimator(cli, fast_project, settings_of):
    import joblib
    import io

    from mlopsctl.services import runs

    run = ok_json(cli("train", "--json", "-p", "n_estimators=7", "--param", "max_depth=3",
                      "-p", "criterion=entropy", "-p", "max_features=null", "-p", "bootstrap=false"))
    p = run["params"]
    assert (p["model.n_estimators"], p["model.max_depth"], p["model.criterion"], p["model.max_features"],
            p["model.bootstrap"]) == ("7", "3", "entropy", "None", "False")
    pipeline = joblib.load(io.BytesIO(runs.run_artifact(settings_of(fast_project), "1", "model.joblib")))
    forest = pipeline.steps[-1][1]
    assert len(forest.estimators_) == 7
    assert (forest.max_depth, forest.criterion, forest.max_features, forest.bootstrap) == (3, "entropy", None, False)
    assert max(t.get_depth() for t in forest.estimators_) <= 3


def test_params_merge_over_the_config_file(cli, fast_project):
    run = ok_json(cli("train", "--json", "-p", "max_depth=2"))
    assert (run["params"]["model.n_estimators"], run["params"]["model.max_depth"]) == ("10", "2")


def test_parse_params():
    from mlopsctl.cli.train import parse_params

    assert parse_params(["a=1", "b=0.5", "c=true", "d=False", "e=none", "f=null", "g=gini", "h=[1, 2]",
                         " i = x y ", "j=a=b"]) == {
        "a": 1, "b": 0.5, "c": True, "d": False, "e": None, "f": None, "g": "gini", "h": [1, 2], "i": "x y",
        "j": "a=b",
    }


@pytest.mark.parametrize("bad", ["n_estimators", "=3", " =3"])
def test_bad_param_format_exits_2(cli, assert_error, fast_project, bad):
    assert_error(cli("train", "--json", "-p", bad), 2,
                 f"--param {bad!r} must look like key=value, e.g. --param n_estimators=300.")


def test_unknown_estimator_param_exits_2_listing_the_valid_ones(cli, assert_error, fast_project):
    from sklearn.ensemble import RandomForestClassifier

    valid = ", ".join(sorted(RandomForestClassifier().get_params(deep=False)))
    assert_error(cli("train", "--json", "-p", "n_trees=5"), 2,
                 f"sklearn.ensemble.RandomForestClassifier has no parameter 'n_trees'; valid: {valid}.")
    assert_error(cli("train", "--json", "-p", "zeta=1", "-p", "alpha=2"), 2,
                 f"sklearn.ensemble.RandomForestClassifier has no parameter 'alpha', 'zeta'; valid: {valid}.")


def test_invalid_param_value_exits_2_before_any_run(cli, assert_error, fast_project):
    result = cli("train", "--json", "-p", "n_estimators=-1")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: sklearn.ensemble.RandomForestClassifier: The 'n_estimators' parameter "
                                    "of RandomForestClassifier must be an int in the range [1, inf). Got -1 instead")
    assert result.stderr.count("\n") == 1
    assert ok_json(cli("runs", "list", "--json")) == []


def test_classifier_on_a_regression_task_exits_2(cli, assert_error, make_project):
    project = make_project("diabetes", params="{ n_estimators = 5 }", model="sklearn.ensemble.RandomForestClassifier")
    assert_error(cli("-C", project, "train", "--json"), 2,
                 "sklearn.ensemble.RandomForestClassifier is not a regressor but the task is regression; pick a "
                 f"regressor ({supported_list('regression')}) or set data.task = \"classification\".")


def test_regressor_on_a_classification_task_exits_2(cli, assert_error, fast_project):
    assert_error(cli("train", "--json", "-m", "sklearn.ensemble.RandomForestRegressor"), 2,
                 "sklearn.ensemble.RandomForestRegressor is not a classifier but the task is classification; pick a "
                 f"classifier ({supported_list('classification')}) or set data.task = \"regression\".")


# scikit-learn 1.9 deprecates SVC(probability=True), the very fix the message suggests (see the report).
@pytest.mark.filterwarnings("ignore:The `probability` parameter was deprecated in 1.9:FutureWarning")
@pytest.mark.filterwarnings("ignore:Attribute `prob[AB]_` was deprecated in version 1.9:FutureWarning")
def test_classifier_without_probabilities_exits_2(cli, assert_error, make_project):
    project = make_project("breast-cancer", params="{}", model="sklearn.svm.SVC")
    assert_error(cli("-C", project, "train", "--json"), 2,
                 "sklearn.svm.SVC gives no class probabilities as configured (pass --param probability=true); "
                 "mlopsctl needs predict_proba.")
    run = ok_json(cli("-C", project, "train", "--json", "-p", "probability=true"))
    assert run["model"] == "sklearn.svm.SVC" and run["parity"]["passed"] is True


@pytest.mark.parametrize(("model", "message"), [
    ("sklearn.ensemble.NoSuchForest",
     f"model 'sklearn.ensemble.NoSuchForest' cannot be imported; check the spelling (supported: {supported_list()})."),
    ("nosuchpackage.models.Model",
     f"model 'nosuchpackage.models.Model' cannot be imported; check the spelling (supported: {supported_list()})."),
    ("RandomForest",
     "model 'RandomForest' is not a class path; use e.g. sklearn.ensemble.RandomForestClassifier "
     f"(supported: {supported_list()})."),
    ("sklearn.ensemble", "model 'sklearn.ensemble' is not a class."),
])
def test_unimportable_model_exits_2(cli, assert_error, fast_project, model, message):
    assert_error(cli("train", "--json", "-m", model), 2, message)
    assert ok_json(cli("runs", "list", "--json")) == []


def test_short_model_names(cli, fast_project):
    run = ok_json(cli("train", "--json", "-m", "ExtraTreesClassifier", "-p", "n_estimators=5"))
    assert run["model"] == "sklearn.ensemble.ExtraTreesClassifier"
    assert run["params"]["model.n_estimators"] == "5"


@pytest.mark.parametrize(("example", "model", "task"), [
    ("breast-cancer", "sklearn.dummy.DummyClassifier", "classification"),
    ("diabetes", "sklearn.kernel_ridge.KernelRidge", "regression"),
])
def test_estimator_without_an_onnx_converter_exits_6(cli, assert_error, make_project, example, model, task):
    project = make_project(example, params="{}", model=model)
    assert_error(cli("-C", project, "train", "--json"), 6,
                 f"{model} cannot be exported to ONNX (skl2onnx has no converter for it); "
                 f"use one of: {supported_list(task)}.")
    assert ok_json(cli("-C", project, "runs", "list", "--json")) == []  # refused before fitting


# ---- failing runs -------------------------------------------------------------------------------------

def test_a_run_failing_in_fit_is_marked_failed(cli, assert_error, fast_project):
    reason = "fitting RandomForestClassifier failed: Out of bag estimation only available if bootstrap=True"
    assert_error(cli("train", "--json", "-p", "oob_score=true", "-p", "bootstrap=false"), 6, reason)
    run = ok_json(cli("runs", "show", "1", "--json"))
    assert run["status"] == "FAILED"
    assert run["failure_reason"] == f"TrainingError: {reason}"
    assert run["ended_at"] is not None and run["duration_s"] is not None
    assert run["metrics"] == {} and run["artifacts"] == [] and run["parity"] is None
    assert run["dataset"]["name"] == "train"  # the data it failed on is still known
    [listed] = ok_json(cli("runs", "list", "--json"))
    assert (listed["status"], listed["failure_reason"]) == ("FAILED", f"TrainingError: {reason}")
    shown = ok(cli("runs", "show", "1"))
    assert "FAILED" in shown and "Out of bag estimation" in shown


def _wait_for_running_run(db_path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if db_path.exists():
            try:
                con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)
                try:
                    if con.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]:
                        return
                finally:
                    con.close()
            except sqlite3.OperationalError:
                pass  # not migrated yet
        time.sleep(0.05)
    raise AssertionError("the run never started")


def test_ctrl_c_marks_the_run_failed(make_project, settings_of):
    """SIGINT while a slow forest trains: exit 130, and the run is FAILED with 'interrupted (Ctrl-C)'."""
    project = make_project("churn", params="{ n_estimators = 5000 }", model="sklearn.ensemble.RandomForestClassifier")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    proc = subprocess.Popen([sys.executable, "-m", "mlopsctl", "train", "--json"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_running_run(project / ".mlops" / "mlops.db", proc)
        time.sleep(0.5)  # inside fit
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert stderr.endswith("Error: interrupted.\n")
    assert stdout == ""
    from mlopsctl.services import runs

    run = runs.show_run(settings_of(project), "1")
    assert run["status"] == "FAILED"
    assert run["failure_reason"] == "interrupted (Ctrl-C)"
    assert run["artifacts"] == []


# ---- the default model, columns that are not features -----------------------------------------------

def test_init_writes_the_auto_model(cli, tmp_path):
    assert cli("init", tmp_path / "x").exit_code == 0
    text = (tmp_path / "x" / ".mlops.toml").read_text()
    assert 'model = "auto"' in text and "params = {}" in text and "exclude = []" in text


@pytest.mark.parametrize(("example", "target", "model", "task"), [
    ("diabetes", "progression", "sklearn.ensemble.RandomForestRegressor", "regression"),
    ("breast-cancer", "diagnosis", "sklearn.ensemble.RandomForestClassifier", "classification"),
])
def test_a_plain_project_trains_whatever_the_task(cli, tmp_path, monkeypatch, example, target, model, task):
    """`mlopsctl init x && cd x && mlopsctl train --data ... --target ...` on a regression target works."""
    assert cli("init", tmp_path / "x").exit_code == 0
    monkeypatch.chdir(tmp_path / "x")
    data = EXAMPLES / example / "data" / "train.csv"
    result = cli("train", "--data", data, "--target", target, "-p", "n_estimators=5", "--json")
    assert result.exit_code == 0, result.stderr
    run = json.loads(result.stdout)
    assert (run["model"], run["task"], run["status"]) == (model, task, "FINISHED")


def test_an_explicit_classifier_on_a_regression_target_still_fails_clearly(cli, assert_error, tmp_path, monkeypatch):
    assert cli("init", tmp_path / "x").exit_code == 0
    monkeypatch.chdir(tmp_path / "x")
    data = EXAMPLES / "diabetes" / "data" / "train.csv"
    result = cli("train", "--data", data, "--target", "progression", "-m", "RandomForestClassifier")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: sklearn.ensemble.RandomForestClassifier is not a regressor but the task "
                                    "is regression; pick a regressor"), result.stderr
    assert result.stderr.count("\n") == 1


@pytest.fixture
def id_project(cli, tmp_path, monkeypatch) -> Path:
    rng = np.random.default_rng(3)
    n = 120
    df = pd.DataFrame({"id": np.arange(n), "x": rng.normal(size=n), "note": [f"remark {i}" for i in range(n)]})
    df["y"] = np.where(df["x"] > 0, "up", "down")
    assert cli("init", tmp_path / "p").exit_code == 0
    monkeypatch.chdir(tmp_path / "p")
    df.to_csv("data/train.csv", index=False)
    return tmp_path / "p"


def test_exclude_leaves_columns_out_and_requests_may_still_carry_them(cli, id_project):
    from mlopsctl.config import load_settings
    from mlopsctl.serving.app import create_app

    result = cli("train", "--target", "y", "-X", "id", "-X", "note", "-p", "n_estimators=5", "--json")
    assert result.exit_code == 0, result.stderr
    assert "Note: left out by data.exclude: id, note.\n" in result.stderr
    run = json.loads(result.stdout)
    assert run["params"]["excluded_columns"] == "id,note"
    assert cli("register", "1", "--name", "m").exit_code == 0
    settings = load_settings({}, {}, id_project)
    client = create_app(settings, "m/1", watch=False).test_client()
    resp = client.post("/predict", json={"records": [{"id": 7, "x": 1.5, "note": "hi"}]})
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["predictions"] == ["up"]
    resp = client.post("/predict", json={"records": [{"id": 7, "x": 1.5, "nope": 1}]})
    assert resp.status_code == 400 and "unexpected column(s) 'nope'" in resp.get_json()["message"]


def test_an_identifier_column_is_said_once_in_one_line(cli, id_project):
    result = cli("train", "--target", "y", "-p", "n_estimators=5")
    assert result.exit_code == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("Note: ")]
    assert notes == [
        "Note: column 'id' has a different value in every row, like an identifier; a model cannot learn from it: "
        "exclude it with --exclude id or data.exclude = [\"id\"].",
        "Note: column 'note' has a different value in every row, like an identifier; a model cannot learn from it: "
        "exclude it with --exclude note or data.exclude = [\"note\"].",
    ]


@pytest.mark.parametrize(("args", "message"), [
    (("-X", "nope"), "data.exclude names 'nope', which is not in train.csv; exclude feature columns only (id, x, note)."),
    (("-X", "y"), "data.exclude names 'y', which is the target; exclude feature columns only (id, x, note)."),
    (("-X", "id", "-X", "x", "-X", "note"),
     "no feature columns are left in train.csv after leaving out 'id', 'x', 'note'; keep at least one."),
])
def test_bad_exclusions_are_one_line(cli, assert_error, id_project, args, message):
    assert_error(cli("train", "--target", "y", *args), 2, message)
