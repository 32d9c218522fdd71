"""LightGBM and XGBoost through mlopsctl: every label type and data shape, categorical encodings, early
stopping, run metadata, the missing-extra error, and the whole loop through the real CLI, store, ONNX Runtime
and Flask app (train -> register -> promote -> serve -> batch predict -> runs show).

The export matrix (tests/test_training_export.py) holds the per-task parity bounds on fresh rows; here the
shapes of tests/shapes.py go through ``prepare``/``train`` and the graph's outputs are read as the server
reads them (``Scorer``: labels decoded to the training file's type).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from shapes import json_records, make_shape

from mlopsctl.errors import ConfigError, InvalidInputError, TrainingError
from mlopsctl.scoring import Scorer
from mlopsctl.training import boosters, export
from mlopsctl.training.train import TrainSpec, prepare, train

LIBRARIES = {"lightgbm": ("LGBMClassifier", "LGBMRegressor"), "xgboost": ("XGBClassifier", "XGBRegressor")}
SHAPES = ("int-0-1", "int-minus1-1", "int-multiclass-gaps", "text-unicode", "bool", "float-0.0-1.0",
          "bool-missing-target", "regression-float", "regression-int", "nan-features", "high-cardinality",
          "odd-column-names", "tiny-12-rows", "wide-400-columns")
PYTHON_TYPES = {"integer": int, "boolean": bool, "float": float, "string": str}


def _model(library: str, task: str) -> str:
    return LIBRARIES[library][0 if task == "classification" else 1]


def _train(frame: pd.DataFrame, target: str, model: str, **kw: Any):
    kw.setdefault("params", {"n_estimators": 20})
    return train(prepare(frame, TrainSpec(model=model, target=target, reference_rows=20, **kw)))


@pytest.mark.parametrize("library", list(LIBRARIES))
@pytest.mark.parametrize("name", SHAPES)
def test_every_shape_through_the_boosters(library: str, name: str) -> None:
    shape = make_shape(name)
    result = _train(shape.frame, shape.target, _model(library, shape.task))
    assert result.task == shape.task
    assert result.model_class.startswith(f"{library}.")
    p = result.parity
    assert p.passed and p.training.passed, p.to_dict()
    assert p.rows == result.n_test and p.training.rows == result.n_train

    rows = shape.frame.drop(columns=shape.target).iloc[:40]
    out = Scorer(result.onnx_bytes, result.contract).predict_frame(rows)
    normalized = pd.DataFrame(result.contract.normalize({c: rows[c] for c in result.contract.feature_names}))
    if shape.task == "regression":
        np.testing.assert_allclose(out["prediction"].ravel(), result.pipeline.predict(normalized), rtol=1e-4)
        return
    # the graph answers the training file's classes, in their type (int64 codes equal to the value, or text)
    assert result.contract.label_type == shape.label_type
    labels = shape.frame[shape.target].dropna()
    if shape.label_type == "boolean":
        labels = labels.astype(bool)
    assert sorted(result.contract.classes) == sorted(set(labels.tolist()))
    want = PYTHON_TYPES[shape.label_type]
    got = out["label"].tolist()
    assert all(type(v) is want for v in got), got[:5]
    assert set(got) <= set(result.contract.classes)
    assert got == result.contract.decode_labels(result.pipeline.predict(normalized)).tolist()
    np.testing.assert_allclose(out["probabilities"], result.pipeline.predict_proba(normalized), atol=1e-5)


# ---- categorical encodings ------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "choice", "expected"), [
    ("LGBMClassifier", "auto", "native"), ("XGBClassifier", "auto", "native"),
    ("LGBMClassifier", "onehot", "onehot"), ("XGBRegressor", "native", "native"),
    ("RandomForestClassifier", "auto", "onehot"), ("LogisticRegression", "onehot", "onehot"),
])
def test_categorical_choice(model: str, choice: str, expected: str) -> None:
    shape = make_shape("int-0-1")
    frame = shape.frame if "Regressor" not in model else make_shape("regression-float").frame
    target = shape.target if "Regressor" not in model else "price"
    prepared = prepare(frame, TrainSpec(model=model, target=target, categorical=choice))
    assert prepared.categorical == expected


def test_without_categorical_columns_native_changes_nothing() -> None:
    shape = make_shape("wide-400-columns")
    result = _train(shape.frame, shape.target, "LGBMClassifier", categorical="native")
    assert result.model_info["categorical"] == "onehot"  # nothing to encode
    assert "categorical" not in result.pipeline.named_steps["preprocess"].named_transformers_


def test_native_categoricals_need_a_booster() -> None:
    shape = make_shape("int-0-1")
    with pytest.raises(InvalidInputError) as info:
        prepare(shape.frame, TrainSpec(model="RandomForestClassifier", target=shape.target, categorical="native"))
    assert str(info.value) == (
        'train.categorical = "native" needs a LightGBM or XGBoost model; RandomForestClassifier takes one-hot '
        'encoded categories (use "onehot" or "auto").')


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_native_codes_split_on_categories_and_unseen_ones_are_missing(library: str) -> None:
    """Native: one ordinal code per categorical column (no one-hot columns), split on by the booster; a
    category never seen in training reaches it as NaN, like a missing value, and still scores equal."""
    shape = make_shape("int-multiclass-gaps")
    result = _train(shape.frame, shape.target, _model(library, "classification"), categorical="native")
    preprocess = result.pipeline.named_steps["preprocess"]
    # x1, x2, count as they are (NaN included) + one code for plan
    assert len(preprocess.get_feature_names_out()) == len(result.contract.columns) == 4
    rows = shape.frame.drop(columns=shape.target).iloc[:30].copy()
    rows["plan"] = ["enterprise"] * 30  # unseen
    normalized = pd.DataFrame(result.contract.normalize({c: rows[c] for c in result.contract.feature_names}))
    codes = preprocess.transform(normalized)[:, -1]
    assert np.isnan(codes).all()
    out = Scorer(result.onnx_bytes, result.contract).predict_frame(rows)
    np.testing.assert_allclose(out["probabilities"], result.pipeline.predict_proba(normalized), atol=1e-5)
    importance = {c["column"]: c["gain"] for c in result.importance["columns"]}
    assert importance["plan"] > 0  # the booster did split on the category codes


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_the_label_output_is_the_class_of_the_highest_probability(library: str) -> None:
    """One tree, every leaf weight positive: ONNX Runtime's binary TreeEnsembleClassifier then compares the
    raw score with 0.5, not 0, and answered 'a' for 91 % of these rows while its probabilities said 'b'
    (LightGBM); the exported label is the ArgMax of the probabilities, as both libraries predict."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=1000), "c": rng.choice(["u", "v"], 1000)})
    frame["y"] = np.where(rng.random(1000) < 0.58 + 0.05 * np.tanh(frame["x"]), "b", "a")
    result = _train(frame, "y", _model(library, "classification"), params={"n_estimators": 1, "learning_rate": 0.05})
    out = Scorer(result.onnx_bytes, result.contract).predict_frame(frame)
    assert (out["label"] == np.array(result.contract.classes)[out["probabilities"].argmax(axis=1)]).all()
    assert result.parity.passed and result.parity.label_agreement == 1.0
    assert (out["label"] == "b").mean() > 0.9


# ---- early stopping ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "shape_name"), [
    ("LGBMClassifier", "int-multiclass-gaps"), ("XGBClassifier", "text-unicode"),
    ("LGBMRegressor", "regression-float"), ("XGBRegressor", "regression-float"),
])
def test_early_stopping_trims_the_exported_model(model: str, shape_name: str) -> None:
    shape = make_shape(shape_name)
    n_estimators = 300
    result = _train(shape.frame, shape.target, model, early_stopping_rounds=5,
                    params={"n_estimators": n_estimators, "learning_rate": 0.3})
    info = result.model_info
    n_classes = len(result.contract.classes or ()) if result.task == "classification" else 1
    per_round = n_classes if n_classes > 2 else 1
    assert 1 <= info["best_iteration"] < n_estimators
    assert info["n_rounds"] == info["best_iteration"]
    assert info["n_trees"] == info["best_iteration"] * per_round == export.tree_count(result.onnx_bytes)
    assert result.parity.passed and result.parity.training.passed

    booster = result.pipeline.named_steps["model"]
    if model.startswith("LGBM"):
        # boosting went on past the best iteration; LightGBM keeps the trees up to it only
        losses = booster.evals_result_["valid_0"][next(iter(booster.evals_result_["valid_0"]))]
        assert len(losses) == info["best_iteration"] + 5
        assert booster.booster_.current_iteration() == info["best_iteration"]
        assert losses[info["best_iteration"] - 1] < losses[0]  # validation labels encoded (lightgbm#7400)
    else:
        # XGBoost keeps every tree and predicts with the best ones: a graph that kept them all would fail parity
        Xt = result.pipeline.named_steps["preprocess"].transform(
            pd.DataFrame(result.contract.normalize({c: result.heldout[c] for c in result.contract.feature_names})))
        trained = booster.get_booster().num_boosted_rounds()
        assert trained == info["best_iteration"] + 5
        full = booster.get_booster().inplace_predict(Xt, iteration_range=(0, trained))
        best = booster.get_booster().inplace_predict(Xt, iteration_range=(0, info["best_iteration"]))
        assert np.abs(np.asarray(full) - np.asarray(best)).max() > 1e-3


def test_early_stopping_needs_a_booster() -> None:
    shape = make_shape("int-0-1")
    with pytest.raises(InvalidInputError) as info:
        prepare(shape.frame, TrainSpec(model="RandomForestClassifier", target=shape.target, early_stopping_rounds=5))
    assert "train.early_stopping_rounds works with LightGBM and XGBoost models, not RandomForestClassifier" in str(info.value)


def test_early_stopping_on_too_few_rows_says_what_to_do() -> None:
    frame = pd.DataFrame({"x": [0.1, 0.5, 0.2, 0.9, 0.4, 0.7], "y": ["a", "a", "b", "b", "c", "c"]})
    with pytest.raises(InvalidInputError) as info:  # one training row per class: none left to validate on
        prepare(frame, TrainSpec(model="LGBMClassifier", target="y", early_stopping_rounds=3, test_size=0.5))
    assert str(info.value).startswith("early stopping needs a validation slice of the")
    assert str(info.value).endswith("add rows or set train.early_stopping_rounds = 0.")


# ---- parameters, importance, missing packages ----------------------------------------------------------

def test_lightgbm_native_parameters_are_accepted_and_typos_are_not() -> None:
    shape = make_shape("int-0-1")
    prepared = prepare(shape.frame, TrainSpec(model="LGBMClassifier", target=shape.target,
                                              params={"min_data_in_leaf": 5, "feature_fraction": 0.8}))
    assert prepared.estimator.get_params()["min_data_in_leaf"] == 5
    with pytest.raises(InvalidInputError) as info:
        prepare(shape.frame, TrainSpec(model="LGBMClassifier", target=shape.target, params={"n_estimator": 5}))
    assert str(info.value).startswith("lightgbm.LGBMClassifier has no parameter 'n_estimator'; valid: ")


def test_a_library_error_in_fit_is_a_training_error() -> None:
    shape = make_shape("int-0-1")
    prepared = prepare(shape.frame, TrainSpec(model="XGBClassifier", target=shape.target,
                                              params={"tree_method": "exact"}))  # no categorical splits there
    with pytest.raises(TrainingError) as info:
        train(prepared)
    assert str(info.value).startswith("fitting XGBClassifier failed: ")
    assert "categorical" in str(info.value) and "\n" not in str(info.value)


def test_gain_importance_sums_one_hot_levels_into_their_column() -> None:
    shape = make_shape("int-0-1")
    result = _train(shape.frame, shape.target, "XGBClassifier", categorical="onehot")
    imp = result.importance
    columns = {c["column"]: c for c in imp["columns"]}
    assert set(columns) == {"x1", "x2", "plan", "count"}
    assert sum(c["share"] for c in imp["columns"]) == pytest.approx(1.0)
    plan_levels = [f for f in imp["features"] if f["column"] == "plan"]
    assert plan_levels and all(f["feature"].startswith("plan_") for f in plan_levels)
    assert columns["plan"]["gain"] == pytest.approx(sum(f["gain"] for f in plan_levels))
    assert imp["columns"][0]["column"] == "x1"  # the signal: x1 + (plan == pro)


@pytest.mark.parametrize("missing", ["lightgbm", "onnxmltools"])
def test_a_missing_package_names_the_extra(missing: str, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # `import lightgbm` now raises ImportError
    boosters.register_converters.cache_clear()
    shape = make_shape("int-0-1")
    with pytest.raises(ConfigError) as info:
        prepare(shape.frame, TrainSpec(model="lightgbm.LGBMClassifier", target=shape.target))
    assert str(info.value) == ('lightgbm.LGBMClassifier needs the lightgbm and onnxmltools packages, which are not '
                               'installed; install them with: pip install "mlopsctl[lightgbm]".')
    boosters.register_converters.cache_clear()


def test_missing_xgboost_is_one_line_on_the_cli(cli, assert_error, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "xgboost", None)
    shape = make_shape("int-0-1")
    assert cli("init", "p").exit_code == 0
    monkeypatch.chdir(tmp_path / "p")
    shape.frame.to_csv("data/train.csv", index=False)
    assert_error(cli("train", "--target", "y", "--model", "XGBClassifier"), 5,
                 'xgboost.XGBClassifier needs the xgboost and onnxmltools packages, which are not installed; install them '
                 'with: pip install "mlopsctl[xgboost]".')


def test_run_environment_names_the_booster_libraries() -> None:
    import lightgbm
    import onnxmltools

    from mlopsctl.training.train import library_versions

    shape = make_shape("int-0-1")
    prepared = prepare(shape.frame, TrainSpec(model="LGBMClassifier", target=shape.target))
    assert library_versions(prepared) == {"lightgbm": lightgbm.__version__, "onnxmltools": onnxmltools.__version__}
    forest = prepare(shape.frame, TrainSpec(model="RandomForestClassifier", target=shape.target))
    assert library_versions(forest) == {}


# ---- the whole loop through the CLI ---------------------------------------------------------------------

def _table(rng: np.random.Generator, n: int, task: str) -> pd.DataFrame:
    """Numeric and categorical columns with missing values in both; a class label or a number to predict."""
    df = pd.DataFrame({
        "tenure months": rng.integers(0, 72, n).astype(float),
        "spend": rng.gamma(2.0, 40.0, n).round(2),
        "plan": rng.choice(["basic", "pro", "team", "enterprise"], n).astype(object),
        "region": rng.choice(["north", "south", "east", "west", "über"], n).astype(object),
        "autopay": rng.random(n) < 0.5,
    })
    z = (-0.03 * df["tenure months"] + 0.01 * df["spend"] + np.where(df["plan"] == "basic", 0.9, -0.2)
         + np.where(df["region"] == "south", 0.5, 0.0) - 0.4 * df["autopay"] + rng.normal(0, 0.6, n))
    df.loc[rng.random(n) < 0.1, "spend"] = np.nan
    df.loc[rng.random(n) < 0.08, "plan"] = None
    df.loc[rng.random(n) < 0.05, "tenure months"] = np.nan
    df["target"] = np.where(z > 0, "churned", "stayed") if task == "classification" else (100 + 20 * z).round(2)
    return df


def _ok(cli, *args: Any, env: dict[str, str] | None = None) -> Any:
    result = cli(*args, env=env)
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result


@pytest.mark.parametrize("model", ["lightgbm.LGBMClassifier", "xgboost.XGBClassifier",
                                   "lightgbm.LGBMRegressor", "xgboost.XGBRegressor"])
def test_train_register_promote_serve_predict(model: str, cli, tmp_path: Path, monkeypatch) -> None:
    from mlopsctl.config import load_settings
    from mlopsctl.serving.app import create_app

    task = "classification" if model.endswith("Classifier") else "regression"
    library = model.split(".", 1)[0]
    _ok(cli, "init", "p")
    project = tmp_path / "p"
    monkeypatch.chdir(project)
    with open(".mlops.toml", "a") as fh:
        fh.write("\n[monitor]\nmin_rows = 10\n")
    frame = _table(np.random.default_rng(3), 800, task)
    frame.to_csv("data/train.csv", index=False)

    run = json.loads(_ok(cli, "train", "--target", "target", "--model", model, "-p", "n_estimators=60",
                         "--json").stdout)
    assert run["status"] == "FINISHED" and run["model"] == model and run["task"] == task
    parity = run["parity"]
    assert parity["passed"] is True
    assert parity["rows"] == int(run["params"]["n_test"]) and parity["training"]["rows"] == int(run["params"]["n_train"])
    assert parity["training"]["passed"] is True
    assert run["params"]["categorical"] == "native" and run["params"]["n_trees"] == "60"
    assert run["params"]["model.n_estimators"] == "60"
    assert run["environment"][library] != "not installed" and "onnxmltools" in run["environment"]
    columns = [c["column"] for c in run["feature_importance"]["columns"]]
    assert sorted(columns) == sorted(["tenure months", "spend", "plan", "region", "autopay"])
    assert "feature_importance.json" in {a["name"] for a in run["artifacts"]}

    shown = _ok(cli, "runs", "show", str(run["id"])).stdout
    assert "Feature importance (total gain)" in shown and columns[0] in shown and "training rows" in shown

    # a one-hot run of the same model, compared
    onehot = json.loads(_ok(cli, "train", "--target", "target", "--model", model, "-p", "n_estimators=60",
                            "--json", env={"MLOPS_TRAIN_CATEGORICAL": "onehot"}).stdout)
    assert onehot["params"]["categorical"] == "onehot" and onehot["parity"]["passed"] is True
    compared = json.loads(_ok(cli, "runs", "compare", str(run["id"]), str(onehot["id"]), "--json").stdout)
    assert "categorical" in compared["differing_params"]

    _ok(cli, "register", str(run["id"]), "--name", "m")
    _ok(cli, "promote", "m", "1")

    # batch predict through the registry
    _ok(cli, "predict", "m@production", "data/train.csv", "-o", "scored.parquet")
    scored = pd.read_parquet("scored.parquet")
    assert len(scored) == len(frame) and scored["_error"].isna().all()

    # serve: the same answers as the batch, unseen categories accepted (the booster sees them as missing)
    settings = load_settings({}, {}, project)
    app = create_app(settings, "m@production", watch=False)
    st = app.extensions["mlopsctl"]
    client = app.test_client()
    rows = frame.drop(columns="target").iloc[:25].copy()
    resp = client.post("/predict", json={"records": json_records(rows)})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    if task == "classification":
        assert body["predictions"] == scored["prediction"].iloc[:25].tolist()
        assert set(body["predictions"]) <= {"churned", "stayed"}
        assert list(body["probabilities"][0]) == ["churned", "stayed"]
    else:
        np.testing.assert_allclose(body["predictions"], scored["prediction"].iloc[:25], rtol=1e-5)
    rows.loc[rows.index[:5], "region"] = "mars"
    unseen = client.post("/predict", json={"records": json_records(rows)})
    assert unseen.status_code == 200, unseen.get_json()
    assert len(unseen.get_json()["predictions"]) == 25
    st.predlog.flush()
    st.holder.stop()
    st.predlog.close()

    drift = json.loads(_ok(cli, "monitor", "drift", "m@production", "--last", "100", "--json").stdout)
    assert drift["window"]["rows"] == 50

    # watch: a new file retrains the same booster (train.model from the environment) and gates it
    _table(np.random.default_rng(4), 200, task).to_csv("data/incoming/more.csv", index=False)
    env = {"MLOPS_WATCH_DEBOUNCE_SECONDS": "0.3", "MLOPS_TRAIN_MODEL": model, "MLOPS_DATA_TARGET": "target",
           "MLOPS_REGISTRY_MODEL_NAME": "m", "MLOPS_TRAIN_PARAMS": '{"n_estimators": 60}'}
    [job] = json.loads(_ok(cli, "watch", "--once", "--json", env=env).stdout)
    assert job["decision"] in ("promoted", "rejected"), job
    retrained = json.loads(_ok(cli, "runs", "show", str(job["run_id"]), "--json").stdout)
    assert retrained["model"] == model and retrained["parity"]["passed"] is True
    assert int(retrained["params"]["n_train"]) + int(retrained["params"]["n_test"]) > len(frame)  # the new rows too
