"""The Python API: ``mlopsctl.start_run(...)`` records into the same store as ``mlopsctl train``, on
SQLite and on PostgreSQL (``proj``'s ``store.url``)."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

import mlopsctl
from mlopsctl.services import runs
from mlopsctl.config import load_settings
from mlopsctl.contract import Contract
from mlopsctl.errors import InvalidInputError


@pytest.fixture
def proj(tmp_path, store_url):
    """A bare project (`.mlops.toml` with defaults but ``store.url``, a fresh store of each backend) as the
    working folder."""
    (tmp_path / ".mlops.toml").write_text(f'[store]\nurl = "{store_url}"\n\n[train]\nexperiment = "api"\n')
    return tmp_path


def settings():
    return load_settings({}, {}, None)


def show(ref) -> dict:
    return runs.show_run(settings(), str(ref))


@pytest.fixture
def frame() -> pd.DataFrame:
    """A generated mixed-type frame: numeric (with nulls), categorical and a binary target."""
    rng = np.random.default_rng(3)
    n = 300
    x1 = rng.normal(size=n)
    x2 = rng.uniform(0, 10, n)
    color = rng.choice(["red", "green", "blue"], n)
    logit = 1.5 * x1 - 0.3 * x2 + np.where(color == "red", 1.0, -0.5)
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    df = pd.DataFrame({"x1": x1, "x2": x2, "color": color, "y": y})
    df.loc[::17, "x2"] = np.nan
    return df


def user_pipeline(regression: bool = False):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pre = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer(strategy="mean")), ("scale", StandardScaler())]), ["x1", "x2"]),
        ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["color"]),
    ])
    return Pipeline([("pre", pre), ("model", Ridge() if regression else LogisticRegression())])


def test_start_run_is_exported_lazily():
    from mlopsctl.api import start_run

    assert mlopsctl.start_run is start_run
    with pytest.raises(AttributeError, match="module 'mlopsctl' has no attribute 'nope'"):
        mlopsctl.nope  # noqa: B018


def test_a_run_logs_params_metrics_and_tags(proj):
    with mlopsctl.start_run(run_name="custom") as run:
        assert (run.id, run.name) == (1, "custom")
        assert show(run.id)["status"] == "RUNNING"
        run.log_params({"C": 0.5, "penalty": "l2", "layers": [64, 32], "seed": 3, "none": None})
        run.log_param("C", 0.25)  # a later value replaces the earlier one
        for step, loss in enumerate([0.9, 0.5, 0.3]):
            run.log_metric("loss", loss, step=step)
        run.log_metrics({"acc": 0.8, "f1": 0.7}, step=2)
        run.set_tag("owner", "me")
        run.set_tag("attempt", 2)
    r = show("custom")
    assert r["status"] == "FINISHED"
    assert r["failure_reason"] is None
    assert r["experiment"] == "api"  # train.experiment from .mlops.toml
    assert r["params"] == {"C": "0.25", "penalty": "l2", "layers": "[64, 32]", "seed": "3", "none": "None"}
    assert r["metrics"] == {"acc": 0.8, "f1": 0.7, "loss": 0.3}
    assert [(h["step"], h["value"]) for h in r["metric_history"]["loss"]] == [(0, 0.9), (1, 0.5), (2, 0.3)]
    assert all(h["timestamp"].endswith("Z") for h in r["metric_history"]["loss"])
    assert r["tags"] == {"attempt": "2", "owner": "me"}
    assert r["ended_at"] is not None and r["duration_s"] >= 0
    assert r["environment"]["mlopsctl"] == mlopsctl.__version__
    assert r["artifacts"] == [] and r["parity"] is None


def test_log_batch(proj):
    with mlopsctl.start_run() as run:
        run.log_batch([("loss", 1.0, 0), ("loss", 0.5, 1), ("acc", 0.6, 0), ("acc", 0.9, 1), ("loss", 0.25, 2)])
        run.log_batch([])
    r = show(run.id)
    assert r["name"] == "run-1"
    assert {k: [(h["step"], h["value"]) for h in v] for k, v in r["metric_history"].items()} == {
        "acc": [(0, 0.6), (1, 0.9)], "loss": [(0, 1.0), (1, 0.5), (2, 0.25)],
    }
    assert r["metrics"] == {"acc": 0.9, "loss": 0.25}


def test_latest_metric_is_the_highest_step(proj):
    with mlopsctl.start_run() as run:
        run.log_metric("m", 5.0, step=10)
        run.log_metric("m", 1.0, step=2)  # logged later, but an earlier step
    assert show(run.id)["metrics"] == {"m": 5.0}


def test_bad_metric_value_is_refused(proj):
    with mlopsctl.start_run() as run:
        with pytest.raises(InvalidInputError) as info:
            run.log_metric("loss", "low")
        assert str(info.value) == "metric 'loss' must be a number, got 'low'."
        with pytest.raises(InvalidInputError) as info:
            run.log_param("", 1)
        assert str(info.value) == "key '' must be 1 to 250 characters."
    assert show(run.id)["status"] == "FINISHED"  # handled errors inside the block do not fail the run


def test_an_exception_marks_the_run_failed_and_is_reraised(proj):
    with pytest.raises(RuntimeError, match="boom"):
        with mlopsctl.start_run(run_name="broken") as run:
            run.log_metric("loss", 1.0)
            raise RuntimeError("boom")
    r = show("broken")
    assert r["status"] == "FAILED"
    assert r["failure_reason"] == "RuntimeError: boom"
    assert r["metrics"] == {"loss": 1.0}  # what was logged before the failure is kept
    assert r["ended_at"] is not None


def test_ctrl_c_in_the_block_marks_the_run_failed(proj):
    with pytest.raises(KeyboardInterrupt):
        with mlopsctl.start_run() as run:
            raise KeyboardInterrupt
    assert (show(run.id)["status"], show(run.id)["failure_reason"]) == ("FAILED", "interrupted (Ctrl-C)")


def test_end_is_idempotent(proj):
    run = mlopsctl.start_run()
    run.end()
    run.end("FAILED", "ignored")
    assert (show(run.id)["status"], show(run.id)["failure_reason"]) == ("FINISHED", None)


def test_start_run_options(tmp_path, monkeypatch):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / ".mlops.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    with mlopsctl.start_run("exp-x", "named", project_dir=tmp_path / "p") as run:
        pass
    s = load_settings({}, {}, tmp_path / "p")
    r = runs.show_run(s, str(run.id))
    assert (r["experiment"], r["name"], r["status"]) == ("exp-x", "named", "FINISHED")
    assert (tmp_path / "p" / ".mlops" / "mlops.db").is_file()

    with mlopsctl.start_run(settings=s) as again:
        pass
    assert runs.show_run(s, str(again.id))["experiment"] == "default"


def test_api_runs_show_up_in_the_cli(proj, cli):
    with mlopsctl.start_run(run_name="from-python") as run:
        run.log_metric("r2", 0.5)
    [listed] = json.loads(cli("runs", "list", "--json").stdout)
    assert (listed["name"], listed["status"], listed["metrics"]) == ("from-python", "FINISHED", {"r2": 0.5})


# ---- log_model --------------------------------------------------------------------------------------------

def test_log_model_with_a_users_pipeline(proj, frame):
    import joblib

    X, y = frame.drop(columns="y"), frame["y"]
    pipeline = user_pipeline().fit(X, y)
    with mlopsctl.start_run(run_name="lr") as run:
        parity = run.log_model(pipeline, X, target="y")
    assert parity["passed"] is True
    assert parity["rows"] == len(X)
    assert parity["label_agreement"] == 1.0
    assert parity["max_abs_diff"] < 1e-5

    r = show("lr")
    assert (r["status"], r["task"], r["model"]) == ("FINISHED", "classification", "LogisticRegression")
    assert r["parity"]["passed"] is True
    assert {a["name"] for a in r["artifacts"]} == {"model.onnx", "contract.json", "model.joblib"}

    s = settings()
    contract = Contract.from_json(runs.run_artifact(s, "lr", "contract.json"))
    assert contract.target == "y"
    assert contract.task == "classification"
    assert contract.classes == ("no", "yes")
    assert contract.feature_names == ["x1", "x2", "color"]
    assert [c.kind for c in contract.columns] == ["numeric", "numeric", "categorical"]
    assert contract.column("color").categories == ("blue", "green", "red")
    assert contract.column("x2").nullable

    # the stored ONNX file, run by a plain ONNX Runtime session, predicts what the pipeline predicts
    import onnxruntime as ort

    session = ort.InferenceSession(runs.run_artifact(s, "lr", "model.onnx"), providers=["CPUExecutionProvider"])
    fresh = frame.sample(100, random_state=1).drop(columns="y").reset_index(drop=True)
    feeds = contract.onnx_feeds(contract.normalize({c: fresh[c].to_numpy() for c in fresh.columns}))
    labels, proba = session.run([contract.outputs["label"], contract.outputs["probabilities"]], feeds)
    np.testing.assert_allclose(proba, pipeline.predict_proba(fresh), atol=1e-5)
    assert labels.ravel().tolist() == pipeline.predict(fresh).tolist()

    # and the stored joblib is the same fitted pipeline
    restored = joblib.load(io.BytesIO(runs.run_artifact(s, "lr", "model.joblib")))
    np.testing.assert_array_equal(restored.predict_proba(fresh), pipeline.predict_proba(fresh))


def test_log_model_regression(proj, frame):
    X = frame.drop(columns="y")
    target = X["x1"] * 3 + X["x2"].fillna(5) + (X["color"] == "red") * 2
    pipeline = user_pipeline(regression=True).fit(X, target)
    with mlopsctl.start_run() as run:
        parity = run.log_model(pipeline, X)
    assert parity["passed"] is True
    assert parity["relative_max_diff"] <= 1e-3
    r = show(run.id)
    assert (r["task"], r["model"]) == ("regression", "Ridge")

    import onnxruntime as ort

    s = settings()
    contract = Contract.from_json(runs.run_artifact(s, str(run.id), "contract.json"))
    assert contract.outputs == {"prediction": contract.outputs["prediction"]}
    session = ort.InferenceSession(runs.run_artifact(s, str(run.id), "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    [pred] = session.run([contract.outputs["prediction"]], contract.onnx_feeds(
        contract.normalize({c: X[c].to_numpy() for c in X.columns})))
    np.testing.assert_allclose(pred.ravel(), pipeline.predict(X), rtol=1e-4, atol=1e-4)


def test_log_model_needs_a_dataframe_sample(proj, frame):
    X, y = frame.drop(columns="y"), frame["y"]
    pipeline = user_pipeline().fit(X, y)
    with mlopsctl.start_run() as run:
        for bad in (X.to_numpy(), X.iloc[:0]):
            with pytest.raises(InvalidInputError) as info:
                run.log_model(pipeline, bad)
            assert str(info.value) == "log_model needs a non-empty pandas DataFrame of input rows as `sample`."
    assert show(run.id)["artifacts"] == []


def test_log_model_of_an_unconvertible_estimator_fails_the_run(proj, frame):
    from sklearn.dummy import DummyClassifier

    from mlopsctl.errors import TrainingError

    X, y = frame[["x1"]], frame["y"]
    with pytest.raises(TrainingError) as info:
        with mlopsctl.start_run(run_name="dummy") as run:
            run.log_model(DummyClassifier().fit(X, y), X)
    assert str(info.value).startswith("ONNX export of DummyClassifier failed: ")
    r = show("dummy")
    assert r["status"] == "FAILED"
    assert r["failure_reason"].startswith("TrainingError: ONNX export of DummyClassifier failed: ")
    assert r["artifacts"] == []
