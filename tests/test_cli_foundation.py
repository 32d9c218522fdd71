"""Every foundation command through CliRunner, against a real SQLite store and artifact folder in tmp_path."""

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

import pytest

import mlopsctl
from mlopsctl.config import CONFIG_FILE, load_settings
from mlopsctl.training.estimators import supported_list

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def ok(result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result.stdout


def ok_json(result):
    return json.loads(ok(result))


# ---- init -----------------------------------------------------------------------------------------------

def test_init_creates_a_project(cli, tmp_path):
    from mlopsctl.services.project import DEFAULT_CONFIG

    out = ok_json(cli("init", "proj", "--json"))
    project = tmp_path / "proj"
    assert out == {"project": str(project.resolve()), "example": None,
                   "config": str((project / CONFIG_FILE).resolve()), "next": "mlopsctl train"}
    assert (project / CONFIG_FILE).read_text() == DEFAULT_CONFIG
    assert (project / ".mlops").is_dir()
    assert (project / "data" / "incoming").is_dir()
    s = load_settings({}, {}, project)
    assert s.config_file == (project / CONFIG_FILE).resolve()
    assert (s.train.model, s.train.params, s.data.exclude) == ("auto", {}, [])
    assert s.data.target == "label"


def test_init_prints_next_steps(cli, tmp_path):
    out = ok(cli("init", "p"))
    assert out.startswith("Created project ")
    assert "Next: cd p && mlopsctl train" in out


def test_init_of_a_pipeline_example_says_to_run_the_pipeline(cli, tmp_path):
    out = ok(cli("init", "p", "--example", "subscriptions"))
    assert "Next: cd p && mlopsctl pipeline run" in out
    assert (tmp_path / "p" / "prepare.py").read_bytes() == (EXAMPLES / "subscriptions" / "prepare.py").read_bytes()
    assert sorted(f.name for f in (tmp_path / "p" / "data" / "raw" / "usage").iterdir()) == [
        f"2024-0{m}.csv" for m in range(1, 7)]


def test_init_in_the_current_folder(cli, tmp_path):
    out = ok_json(cli("init", "--json"))
    assert out["project"] == str(tmp_path.resolve())
    assert (tmp_path / CONFIG_FILE).is_file()


@pytest.mark.parametrize("example", ["breast-cancer", "diabetes", "churn"])
def test_init_with_each_example(cli, tmp_path, example):
    out = ok_json(cli("init", "ex", "--example", example, "--json"))
    project = tmp_path / "ex"
    assert out["example"] == example
    assert (project / CONFIG_FILE).read_text() == (EXAMPLES / example / CONFIG_FILE).read_text()
    assert (project / "data" / "train.csv").read_bytes() == (EXAMPLES / example / "data" / "train.csv").read_bytes()
    assert (project / ".mlops").is_dir() and (project / "data" / "incoming").is_dir()
    load_settings({}, {}, project)  # the example's config is valid


def test_examples_are_listed():
    from mlopsctl.services import project

    assert {"breast-cancer", "diabetes", "churn"} <= set(project.list_examples())


def test_init_unknown_example_exits_3(cli, assert_error, tmp_path):
    from mlopsctl.services import project

    assert_error(cli("init", "p", "--example", "iris"), 3,
                 f"no example named 'iris'; choose one of: {', '.join(project.list_examples())}.")
    assert not (tmp_path / "p").exists()


def test_init_existing_project_exits_4(cli, assert_error, tmp_path):
    ok(cli("init", "proj"))
    before = (tmp_path / "proj" / CONFIG_FILE).read_text()
    assert_error(cli("init", "proj"), 4, "proj/.mlops.toml already exists; this folder is already a project.")
    assert_error(cli("init", "proj", "--example", "churn"), 4,
                 "proj/.mlops.toml already exists; this folder is already a project.")
    assert (tmp_path / "proj" / CONFIG_FILE).read_text() == before


def test_init_example_into_a_non_empty_folder_exits_4(cli, assert_error, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert_error(cli("init", "busy", "--example", "churn"), 4,
                 "busy is not empty; choose a new folder for the example.")
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_version(cli):
    assert ok(cli("--version")) == f"mlopsctl {mlopsctl.__version__}\n"


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


# ---- runs list / show / compare -----------------------------------------------------------------------

@pytest.fixture
def two_runs(cli, fast_project):
    ok(cli("train", "--json"))
    ok(cli("train", "--json", "-p", "n_estimators=3", "--run-name", "small", "-x", "other"))
    return fast_project


def test_runs_list_json(cli, two_runs):
    runs = ok_json(cli("runs", "list", "--json"))
    assert [(r["id"], r["name"], r["experiment"], r["status"]) for r in runs] == [
        (2, "small", "other", "FINISHED"), (1, "run-1", "default", "FINISHED")]
    assert set(runs[0]) == {"id", "name", "experiment", "status", "model", "task", "started_at", "duration_s",
                            "metrics", "failure_reason"}
    assert runs[1]["metrics"]["roc_auc"] > 0.9
    assert [r["id"] for r in ok_json(cli("runs", "list", "--json", "--experiment", "other"))] == [2]
    assert [r["id"] for r in ok_json(cli("runs", "list", "--json", "--limit", "1"))] == [2]


def test_runs_list_unknown_experiment_exits_3(cli, assert_error, two_runs):
    assert_error(cli("runs", "list", "-x", "nope"), 3, "experiment 'nope' does not exist; known: default, other.")


def test_runs_list_table(cli, two_runs):
    out = ok(cli("runs", "list", env={"COLUMNS": "200"}))  # wide enough that rich truncates no cell
    assert "Runs" in out and "run-1" in out and "small" in out and "FINISHED" in out and "roc_auc" in out


def test_runs_list_empty(cli):
    assert ok_json(cli("runs", "list", "--json")) == []


def test_runs_show_by_id_and_name(cli, two_runs):
    by_id = ok_json(cli("runs", "show", "2", "--json"))
    by_name = ok_json(cli("runs", "show", "small", "--json"))
    assert by_id == by_name
    assert by_id["params"]["model.n_estimators"] == "3"
    out = ok(cli("runs", "show", "1"))
    assert out.startswith("Run 1 run-1 (default) - FINISHED")
    for word in ("Metrics", "Params", "ONNX parity", "Artifacts", "model.onnx", "roc_auc"):
        assert word in out


def test_runs_show_unknown_exits_3(cli, assert_error, two_runs):
    assert_error(cli("runs", "show", "99"), 3, "run '99' does not exist; see `mlopsctl runs list`.")
    assert_error(cli("runs", "show", "nope", "--json"), 3, "run 'nope' does not exist; see `mlopsctl runs list`.")


def test_runs_show_ambiguous_name_exits_2(cli, assert_error, fast_project):
    ok(cli("train", "--json", "--run-name", "same", "-p", "n_estimators=2"))
    ok(cli("train", "--json", "--run-name", "same", "-p", "n_estimators=2"))
    assert_error(cli("runs", "show", "same"), 2, "run name 'same' matches 2 runs (1, 2); use the id.")


def test_runs_compare(cli, two_runs):
    out = ok_json(cli("runs", "compare", "1", "small", "--json"))
    assert [(r["id"], r["name"]) for r in out["runs"]] == [(1, "run-1"), (2, "small")]
    assert out["params"]["model.n_estimators"] == ["10", "3"]
    assert out["params"]["target"] == ["diagnosis", "diagnosis"]
    assert out["differing_params"] == ["model.n_estimators"]
    assert set(out["metrics"]) == {"accuracy", "f1_macro", "log_loss", "roc_auc"}
    assert all(len(v) == 2 and all(isinstance(x, float) for x in v) for v in out["metrics"].values())
    table = ok(cli("runs", "compare", "1", "2"))
    assert "* model.n_estimators" in table


def test_runs_compare_needs_two_runs(cli, assert_error, two_runs):
    assert_error(cli("runs", "compare", "1"), 2, "compare needs at least two runs, as in `mlopsctl runs compare 3 4`.")
    assert_error(cli("runs", "compare", "1", "77"), 3, "run '77' does not exist; see `mlopsctl runs list`.")


def test_project_option_from_outside(cli, two_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert [r["id"] for r in ok_json(cli("-C", two_runs, "runs", "list", "--json"))] == [2, 1]
    assert [r["id"] for r in ok_json(cli("--project", two_runs, "runs", "list", "--json"))] == [2, 1]


def test_commands_find_the_project_from_a_subfolder(cli, two_runs, monkeypatch):
    sub = two_runs / "data" / "incoming"
    monkeypatch.chdir(sub)
    assert [r["id"] for r in ok_json(cli("runs", "list", "--json"))] == [2, 1]


# ---- data add / list / show ---------------------------------------------------------------------------

def test_data_add_list_show(cli, assert_error, fast_project):
    first = ok_json(cli("data", "add", "data/train.csv", "--json"))
    assert first["created"] is True
    assert (first["name"], first["version"], first["rows"], first["columns"]) == ("train", 1, 569, 31)
    assert first["source"] == str((fast_project / "data" / "train.csv").resolve())
    assert len(first["fingerprint"]) == 64 and len(first["file_sha256"]) == 64
    assert [c["name"] for c in first["schema"]["columns"]][-1] == "diagnosis"
    assert {c["kind"] for c in first["schema"]["columns"]} == {"numeric", "categorical"}

    again = ok_json(cli("data", "add", "data/train.csv", "--json"))
    assert again["created"] is False
    assert {k: v for k, v in again.items() if k != "created"} == {k: v for k, v in first.items() if k != "created"}

    # the same content as Parquet is the same version
    import pandas as pd

    df = pd.read_csv(fast_project / "data" / "train.csv")
    df.to_parquet(fast_project / "data" / "train.parquet", index=False)
    as_parquet = ok_json(cli("data", "add", "data/train.parquet", "--json"))
    assert (as_parquet["name"], as_parquet["version"], as_parquet["created"]) == ("train", 1, False)

    # changed content is a new version
    df.iloc[:-1].to_csv(fast_project / "data" / "train.csv", index=False)
    second = ok_json(cli("data", "add", "data/train.csv", "--json"))
    assert (second["version"], second["created"], second["rows"]) == (2, True, 568)
    assert second["fingerprint"] != first["fingerprint"]

    other = ok_json(cli("data", "add", "data/train.parquet", "--name", "customers", "--json"))
    assert (other["name"], other["version"], other["created"]) == ("customers", 1, True)

    listed = ok_json(cli("data", "list", "--json"))
    assert listed == [
        {"name": "customers", "versions": 1, "latest": 1, "rows": 569, "fingerprint": first["fingerprint"]},
        {"name": "train", "versions": 2, "latest": 2, "rows": 568, "fingerprint": second["fingerprint"]},
    ]

    latest = ok_json(cli("data", "show", "train", "--json"))
    assert (latest["version"], latest["rows"]) == (2, 568)
    assert [v["version"] for v in latest["versions"]] == [1, 2]
    v1 = ok_json(cli("data", "show", "train:1", "--json"))
    assert (v1["version"], v1["rows"], v1["fingerprint"]) == (1, 569, first["fingerprint"])

    assert_error(cli("data", "show", "nope"), 3, "dataset 'nope' does not exist; known: customers, train.")
    assert_error(cli("data", "show", "train:9"), 3, "dataset 'train' has no version 9; see `mlopsctl data show train`.")
    assert_error(cli("data", "show", "train:x"), 2, "dataset version 'x' must be a number, as in train:2.")


def test_data_text_output(cli, fast_project):
    out = ok(cli("data", "add", "data/train.csv"))
    fp = ok_json(cli("data", "show", "train", "--json"))["fingerprint"]
    assert out == f"Recorded dataset train:1 - 569 rows, 31 columns, fingerprint {fp[:12]}\n"
    assert ok(cli("data", "add", "data/train.csv")) == (
        f"Unchanged: dataset train:1 - 569 rows, 31 columns, fingerprint {fp[:12]}\n")
    listed = ok(cli("data", "list"))
    assert "Datasets" in listed and "train" in listed and fp[:12] in listed
    shown = ok(cli("data", "show", "train:1"))
    assert shown.startswith("train:1 - 569 rows from ")
    assert "Columns" in shown and "diagnosis" in shown and "Versions" in shown


def test_data_list_empty(cli):
    assert ok_json(cli("data", "list", "--json")) == []


def test_data_show_with_no_datasets_exits_3(cli, assert_error):
    assert_error(cli("data", "show", "train"), 3, "dataset 'train' does not exist; known: (none yet).")


@pytest.mark.parametrize("name", ["a:b", "a/b", "x" * 201])
def test_data_add_bad_name_exits_2(cli, assert_error, fast_project, name):
    assert_error(cli("data", "add", "data/train.csv", "--name", name), 2,
                 f"dataset name {name!r} must be 1 to 200 characters without ':', '/' or '\\'.")


def test_training_records_the_dataset_version_once(cli, fast_project):
    first = ok_json(cli("train", "--json"))
    second = ok_json(cli("train", "--json", "-p", "n_estimators=2"))
    [ds] = ok_json(cli("data", "list", "--json"))
    assert (ds["name"], ds["versions"], ds["latest"]) == ("train", 1, 1)
    assert first["dataset"] == second["dataset"] == {
        "name": "train", "version": 1, "fingerprint": ds["fingerprint"], "rows": 569}
    assert ok_json(cli("data", "add", "data/train.csv", "--json"))["created"] is False


def test_artifacts_and_store_live_in_the_project(cli, fast_project):
    ok(cli("train", "--json"))
    assert (fast_project / ".mlops" / "mlops.db").is_file()
    blobs = [p for p in (fast_project / ".mlops" / "artifacts" / "sha256").rglob("*") if p.is_file()]
    assert len(blobs) == 5  # train.csv, model.onnx, contract.json, model.joblib, heldout.parquet
