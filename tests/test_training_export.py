"""The export parity matrix: every estimator in ``TESTED_ESTIMATORS`` is trained through
``training.train.prepare/train`` on a bundled data set and on a generated mixed-type frame (categorical
columns, a boolean column, integer-valued and continuous numeric columns, missing values), and its ONNX
graph must agree with the fitted scikit-learn pipeline:

1. on the held-out rows, as ``train`` itself checks (``parity.passed`` within the bounds in ``export``);
2. on fresh rows the model never saw, scored by a fresh ``onnxruntime.InferenceSession`` built from the
   serialized bytes (what the server does), against ``pipeline.predict_proba`` / ``predict``.

Bounds on fresh rows (ONNX runs in float32, scikit-learn in float64):

* smooth models (linear, SVM, k-NN) must match on every row: probabilities to ``atol=1e-5``; regression to
  ``1e-5`` relative to the largest prediction (float32 has ~7 significant digits, so an absolute 1e-5 on
  targets in the hundreds is not representable);
* tree models compare float32 inputs against float32 thresholds, so a row lying on a threshold can take
  the other branch: at most ``1 - MIN_LABEL_AGREEMENT`` (1 %) of rows may differ by more than that
  tolerance, and label agreement must be at least ``MIN_LABEL_AGREEMENT``.

The mixed frame's integer-valued column is deliberate: a split between 8 and 10 puts its threshold exactly
on 9, so a model that rescales inputs before a tree (float64 in scikit-learn, float32 in ONNX) sends rows
holding 9 down the other branch. ``build_pipeline`` therefore feeds trees unscaled values; this matrix
fails if that regresses (8 of the tree cases did, before the fix).

Exact probability ties (a forest whose votes split evenly) are resolved differently by the two runtimes;
on fresh rows a label counts as agreeing when its scikit-learn probability ties the maximum.

LightGBM and XGBoost (``boosters.BOOSTERS``, converted by onnxmltools) run the same checks for each task
(binary with -1/1 labels, which XGBoost cannot take unencoded; multiclass with text labels; regression)
and each categorical encoding (one-hot; native, ordinal codes inside the graph), on the mixed frame with
NaNs and an unseen category, plus the parity check on the training rows. ``test_parity_check_catches...``
shows the held-out check failing on a graph that does not match its pipeline.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from mlopsctl.errors import InvalidInputError, TrainingError
from mlopsctl.training import boosters, estimators, export
from mlopsctl.training.train import TrainSpec, prepare, train

SMOOTH_ATOL = 1e-5  # probabilities (classification) / relative to the largest prediction (regression)
TREE_ATOL = 1e-5  # the same, for the rows that take the same branches in both runtimes
TREE_MAX_DIFFERING_ROWS = 1 - export.MIN_LABEL_AGREEMENT
TIE_TOL = 1e-9
FRESH_ROWS = 2000

TREE_MODELS = {
    "RandomForestClassifier", "ExtraTreesClassifier", "GradientBoostingClassifier",
    "HistGradientBoostingClassifier", "DecisionTreeClassifier",
    "RandomForestRegressor", "ExtraTreesRegressor", "GradientBoostingRegressor",
    "HistGradientBoostingRegressor", "DecisionTreeRegressor",
}

# Small configurations: the matrix checks export fidelity, not model quality.
PARAMS: dict[str, dict] = {
    "LogisticRegression": {"max_iter": 1000},
    "RandomForestClassifier": {"n_estimators": 20},
    "ExtraTreesClassifier": {"n_estimators": 20},
    "GradientBoostingClassifier": {"n_estimators": 20},
    "HistGradientBoostingClassifier": {"max_iter": 20},
    "SVC": {"probability": True},
    "RandomForestRegressor": {"n_estimators": 20},
    "ExtraTreesRegressor": {"n_estimators": 20},
    "GradientBoostingRegressor": {"n_estimators": 20},
    "HistGradientBoostingRegressor": {"max_iter": 20},
}

# scikit-learn 1.9 deprecated SVC(probability=True) (removal in 1.11); fit warns, and skl2onnx's SVC
# converter reads the deprecated probA_/probB_ attributes. Both warnings come from sklearn modules, so the
# skl2onnx ignores in pyproject.toml do not cover them.
SVC_WARNINGS = [
    pytest.mark.filterwarnings("ignore:The `probability` parameter was deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Attribute `prob[AB]_` was deprecated:FutureWarning"),
]

# ---- data (bundled or generated; nothing is downloaded) -----------------------------------------------

@functools.cache
def breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    b = load_breast_cancer(as_frame=True)
    df = b.data.rename(columns=lambda c: c.replace(" ", "_"))
    df["target"] = b.target
    return df


@functools.cache
def diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    d = load_diabetes(as_frame=True, scaled=False)
    df = d.data.copy()
    df["target"] = d.target
    return df


def mixed(n: int, seed: int, task: str) -> pd.DataFrame:
    """Numeric (continuous, 2-decimal and integer-valued), categorical, boolean; nulls in four columns."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "num_a": rng.normal(0, 1, n),
        "num_b": rng.uniform(10, 100, n).round(2),
        "color": rng.choice(["red", "green", "blue"], n).astype(object),
        "size": rng.choice(["S", "M", "L", "XL"], n).astype(object),
        "flag": rng.random(n) < 0.3,
        "count": rng.integers(0, 20, n).astype(float),
    })
    z = (1.5 * df["num_a"] + 0.03 * (df["num_b"] - 55) + np.where(df["color"] == "red", 1.0, -0.5)
         + np.where(df["size"].isin(["L", "XL"]), 0.8, 0.0) + 0.5 * df["flag"] + 0.05 * df["count"]
         + rng.normal(0, 0.5, n))
    df.loc[rng.random(n) < 0.08, "num_a"] = np.nan
    df.loc[rng.random(n) < 0.05, "count"] = np.nan
    df.loc[rng.random(n) < 0.07, "color"] = None
    df.loc[rng.random(n) < 0.05, "size"] = None
    if task == "classification":
        df["target"] = np.select([z < -0.5, z < 1.0], ["low", "mid"], "high")  # 3 string classes
    else:
        df["target"] = 10 * z + 50
    return df


@functools.cache
def training_frame(name: str, task: str) -> pd.DataFrame:
    if name == "mixed":
        return mixed(600, seed=1, task=task)
    return breast_cancer() if name == "breast_cancer" else diabetes()


def fresh_rows(name: str, task: str) -> pd.DataFrame:
    """Rows the model never saw: a new draw of the generated frame (with an unseen category); for the
    bundled data sets, see below."""
    if name == "mixed":
        rows = mixed(FRESH_ROWS, seed=99, task=task).drop(columns="target")
        rows.loc[rows.index % 50 == 7, "color"] = "purple"  # a category never seen in training (2 %)
        return rows
    # half: each column drawn independently from its observed values (new combinations of real values,
    # integer-valued columns stay integral); half: real rows with 5 % multiplicative noise
    base = training_frame(name, task).drop(columns="target")
    rng = np.random.default_rng(5)
    half = FRESH_ROWS // 2
    shuffled = pd.DataFrame({c: rng.choice(base[c].to_numpy(), half) for c in base.columns})
    jittered = base.sample(FRESH_ROWS - half, replace=True, random_state=3).reset_index(drop=True)
    jittered = jittered * rng.normal(1.0, 0.05, jittered.shape)
    return pd.concat([shuffled, jittered], ignore_index=True)


# ---- the matrix ---------------------------------------------------------------------------------------

def _cases():
    for task, data_sets in (("classification", ("breast_cancer", "mixed")), ("regression", ("diabetes", "mixed"))):
        for path in estimators.TESTED_ESTIMATORS[task]:
            short = path.rsplit(".", 1)[1]
            for data in data_sets:
                marks = SVC_WARNINGS if short == "SVC" else []
                yield pytest.param(task, path, data, marks=marks, id=f"{short}-{data}")


def _train(path: str, data: str, task: str, frame: pd.DataFrame | None = None, **spec_kw):
    from threadpoolctl import threadpool_limits

    spec_kw.setdefault("params", dict(PARAMS.get(path.rsplit(".", 1)[1], {})))
    spec = TrainSpec(model=path, target="target", task=task, seed=0, reference_rows=50, **spec_kw)
    # One OpenMP thread: HistGradientBoosting's many tiny parallel regions can spin for seconds on a
    # small shared VM; threads do not change what is learned.
    with threadpool_limits(limits=1, user_api="openmp"):
        return train(prepare(training_frame(data, task) if frame is None else frame, spec))


def _onnx_outputs(result, frame: pd.DataFrame) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Score ``frame`` with a fresh InferenceSession from the model bytes; also return the pipeline input."""
    import onnxruntime as ort

    contract = result.contract
    normalized = contract.normalize({c: frame[c] for c in contract.feature_names})
    feeds = {}
    for col in contract.columns:
        values = normalized[col.name]
        feeds[col.input_name] = (values.astype(object) if col.kind == "categorical"
                                 else values.astype(np.float32)).reshape(-1, 1)
    session = ort.InferenceSession(result.onnx_bytes, providers=["CPUExecutionProvider"])
    names = list(contract.outputs.values())
    got = dict(zip(contract.outputs, session.run(names, feeds)))
    return got, pd.DataFrame(normalized)


@pytest.mark.parametrize(("task", "path", "data"), list(_cases()))
def test_export_parity(task: str, path: str, data: str) -> None:
    short = path.rsplit(".", 1)[1]
    result = _train(path, data, task)
    assert result.task == task
    p = result.parity

    # 1. what train() measured on the held-out rows
    assert p.rows == result.n_test > 0
    if task == "classification":
        assert p.label_agreement >= export.MIN_LABEL_AGREEMENT, p
        assert p.max_abs_diff <= export.MAX_PROBA_DIFF, p
    else:
        assert p.relative_max_diff <= export.MAX_REL_REGRESSION_DIFF, p
    assert p.passed, p

    # 2. fresh rows through a fresh session
    _assert_fresh_parity(result, task, fresh_rows(data, task), tree=short in TREE_MODELS)


def _assert_fresh_parity(result, task: str, rows: pd.DataFrame, tree: bool) -> None:
    """Rows the model never saw, through a fresh InferenceSession, against the fitted pipeline."""
    got, X = _onnx_outputs(result, rows)
    if task == "classification":
        ref = np.asarray(result.pipeline.predict_proba(X), dtype=np.float64)
        ref_labels = np.asarray(result.pipeline.predict(X))
        proba = np.asarray(got["probabilities"], dtype=np.float64)
        assert proba.shape == ref.shape
        row_diff = np.abs(proba - ref).max(axis=1)
        classes = np.asarray(result.pipeline.classes_)
        onnx_labels = np.asarray(got["label"]).ravel()
        assert set(onnx_labels.astype(str)) <= set(classes.astype(str))
        # a label agrees when scikit-learn gives it the top probability (ties included)
        col = {str(c): i for i, c in enumerate(classes)}
        onnx_label_p = ref[np.arange(len(ref)), [col[str(lab)] for lab in onnx_labels]]
        agree = np.mean((onnx_labels.astype(str) == ref_labels.astype(str))
                        | (onnx_label_p >= ref.max(axis=1) - TIE_TOL))
        assert agree >= export.MIN_LABEL_AGREEMENT, f"label agreement {agree:.4f}"
    else:
        ref = np.asarray(result.pipeline.predict(X), dtype=np.float64).ravel()
        pred = np.asarray(got["prediction"], dtype=np.float64).ravel()
        assert pred.shape == ref.shape
        row_diff = np.abs(pred - ref) / max(1.0, float(np.abs(ref).max()))
    if tree:
        differing = float(np.mean(row_diff > TREE_ATOL))
        assert differing <= TREE_MAX_DIFFERING_ROWS, (
            f"{differing:.2%} of fresh rows differ by more than {TREE_ATOL} (max {row_diff.max():.3g})")
    else:
        assert row_diff.max() <= SMOOTH_ATOL, f"max diff {row_diff.max():.3g}"


def test_matrix_includes_hist_gradient_boosting() -> None:
    """HistGradientBoosting needs ``export._patch_skl2onnx`` with skl2onnx 1.20 + scikit-learn >= 1.8; the
    matrix must keep exercising it."""
    ids = {p.id for p in _cases()}
    assert {"HistGradientBoostingClassifier-breast_cancer", "HistGradientBoostingClassifier-mixed",
            "HistGradientBoostingRegressor-diabetes", "HistGradientBoostingRegressor-mixed"} <= ids


# ---- LightGBM and XGBoost: each task x each categorical encoding ------------------------------------------

BOOSTER_TASKS = {"binary": "classification", "multiclass": "classification", "regression": "regression"}
BOOSTER_TREES = 40


@functools.cache
def booster_frame(kind: str) -> pd.DataFrame:
    """The mixed frame (NaNs in numeric and categorical columns); binary labels are -1/1, multiclass labels
    text, so XGBoost's 0..K-1 encoding is exercised both ways."""
    df = mixed(600, seed=1, task=BOOSTER_TASKS[kind]).copy()
    if kind == "binary":
        df["target"] = np.where(df["target"] == "high", 1, -1)
    return df


def _booster_cases():
    for kind, task in BOOSTER_TASKS.items():
        for path in boosters.BOOSTERS[task]:
            for categorical in ("onehot", "native"):
                yield pytest.param(kind, path, categorical, id=f"{path.rsplit('.', 1)[1]}-{kind}-{categorical}")


@pytest.mark.parametrize(("kind", "path", "categorical"), list(_booster_cases()))
def test_booster_export_parity(kind: str, path: str, categorical: str) -> None:
    task = BOOSTER_TASKS[kind]
    frame = booster_frame(kind)
    result = _train(path, "mixed", task, frame=frame, params={"n_estimators": BOOSTER_TREES}, categorical=categorical)
    assert result.model_class == path
    assert result.model_info["categorical"] == categorical
    encoder = result.pipeline.named_steps["preprocess"].named_transformers_["categorical"].steps[-1][1]
    assert type(encoder).__name__ == ("OrdinalEncoder" if categorical == "native" else "OneHotEncoder")
    n_classes = frame["target"].nunique() if kind == "multiclass" else 1
    assert result.model_info["n_trees"] == BOOSTER_TREES * n_classes == export.tree_count(result.onnx_bytes)
    if task == "classification":
        assert sorted(result.contract.classes) == sorted(frame["target"].unique().tolist())

    # held-out rows and training rows, as train() checked them
    p = result.parity
    assert p.rows == result.n_test and p.training is not None and p.training.rows == result.n_train
    for checked in (p, p.training):
        if task == "classification":
            assert checked.label_agreement >= export.MIN_LABEL_AGREEMENT, checked
            assert checked.max_abs_diff <= export.MAX_PROBA_DIFF, checked
        else:
            assert checked.relative_max_diff <= export.MAX_REL_REGRESSION_DIFF, checked
        assert checked.passed
    assert p.passed

    # fresh rows (2 % with a category never seen in training) through a fresh session
    _assert_fresh_parity(result, task, fresh_rows("mixed", task), tree=True)


def _heldout_features(result) -> pd.DataFrame:
    rows = result.heldout.drop(columns=result.contract.target)
    return pd.DataFrame(result.contract.normalize({c: rows[c] for c in result.contract.feature_names}))


def test_parity_check_catches_a_graph_that_does_not_match_its_pipeline() -> None:
    """The held-out check is what guards against wrong conversions (onnxmltools #708, #728): a graph of
    another model, or this model's graph with one tree's leaves wrong, must fail it."""
    import onnx

    frame = booster_frame("multiclass")
    a = _train("lightgbm.LGBMClassifier", "mixed", "classification", frame=frame, params={"n_estimators": 40})
    b = _train("lightgbm.LGBMClassifier", "mixed", "classification", frame=frame,
               params={"n_estimators": 40, "num_leaves": 4, "learning_rate": 0.3})
    X = _heldout_features(a)
    assert export.parity_check(a.pipeline, a.onnx_bytes, a.contract, X).passed

    mismatched = export.parity_check(a.pipeline, b.onnx_bytes, a.contract, X)
    assert not mismatched.passed
    assert mismatched.max_abs_diff > export.MAX_PROBA_DIFF, mismatched

    model = onnx.load_from_string(a.onnx_bytes)
    (node,) = [n for n in model.graph.node if n.op_type == "TreeEnsembleClassifier"]
    attrs = {at.name: at for at in node.attribute}
    tree_ids, weights = list(attrs["class_treeids"].ints), list(attrs["class_weights"].floats)
    attrs["class_weights"].ClearField("floats")  # tree 0's leaves, as a faulty converter might write them
    attrs["class_weights"].floats.extend(w * 20 if t == 0 else w for t, w in zip(tree_ids, weights))
    corrupted = export.parity_check(a.pipeline, model.SerializeToString(), a.contract, X)
    assert not corrupted.passed
    assert corrupted.max_abs_diff > export.MAX_PROBA_DIFF, corrupted


def test_the_parity_check_scores_with_the_session_it_is_given() -> None:
    """train() builds one ONNX Runtime session for the held-out and the training-row checks: a check given a
    session scores with it (a session of another model fails the check) and agrees with one that builds its own."""
    from mlopsctl.scoring import Scorer

    a = _train("sklearn.ensemble.RandomForestClassifier", "breast_cancer", "classification")
    b = _train("sklearn.linear_model.LogisticRegression", "breast_cancer", "classification")
    X = _heldout_features(a)
    own = export.parity_check(a.pipeline, a.onnx_bytes, a.contract, X)
    assert own.passed and own.rows == len(X)
    assert export.parity_check(a.pipeline, a.onnx_bytes, a.contract, X, Scorer(a.onnx_bytes, a.contract)) == own
    other = export.parity_check(a.pipeline, a.onnx_bytes, a.contract, X, Scorer(b.onnx_bytes, b.contract))
    assert other.max_abs_diff > own.max_abs_diff and other.max_abs_diff > 0.01
    assert a.parity.training is not None and a.parity.training.passed and a.parity.passed


def test_the_export_skips_skl2onnxs_search_for_pipeline_options_and_converts_the_same_graph(monkeypatch) -> None:
    """skl2onnx walks every fitted attribute of the model (each tree of a forest) looking for Pipelines among the
    option keys; options keyed by the final estimator alone skip that walk, and the graph is the one skl2onnx
    makes through it."""
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common import utils_sklearn

    a = _train("sklearn.ensemble.RandomForestClassifier", "mixed", "classification")
    walks = []
    walk = utils_sklearn.enumerate_model_names
    monkeypatch.setattr(utils_sklearn, "enumerate_model_names", lambda *args, **kw: walks.append(1) or walk(*args, **kw))
    ours = onnx.load_from_string(export.export_onnx(a.pipeline, a.contract)[0])
    assert walks == []
    final = a.pipeline.steps[-1][1]
    searched = convert_sklearn(a.pipeline, initial_types=export._initial_types(a.contract),
                               options={id(final): {"zipmap": False}})  # a plain dict: skl2onnx's own search
    assert len(walks) >= 2
    for model in (ours, searched):
        model.graph.name, model.doc_string = "", ""  # a fresh uuid per conversion; ours is described
    assert ours.SerializeToString() == searched.SerializeToString()
    assert [o.name for o in ours.graph.output] == [a.contract.outputs["label"], a.contract.outputs["probabilities"]]


# ---- failing fast, before any fitting -----------------------------------------------------------------

@pytest.mark.parametrize(
    ("task", "path", "data"),
    [
        pytest.param("classification", "sklearn.semi_supervised.LabelPropagation", "breast_cancer",
                     id="LabelPropagation"),
        pytest.param("regression", "sklearn.kernel_ridge.KernelRidge", "diabetes", id="KernelRidge"),
    ],
)
def test_estimator_without_converter_fails_in_prepare(task: str, path: str, data: str, monkeypatch) -> None:
    cls = estimators.resolve_class(path)
    assert not export.has_converter(cls)

    def no_fit(self, *args, **kwargs):
        raise AssertionError("fit must not be reached")

    monkeypatch.setattr(cls, "fit", no_fit)
    with pytest.raises(TrainingError) as info:
        prepare(training_frame(data, task), TrainSpec(model=path, target="target", task=task))
    message = str(info.value)
    assert f"{cls.__name__} cannot be exported to ONNX (skl2onnx has no converter for it)" in message
    for supported in estimators.TESTED_ESTIMATORS[task]:
        assert supported.rsplit(".", 1)[1] in message


def test_svc_without_probability_fails_fast(monkeypatch) -> None:
    from sklearn.svm import SVC

    def no_fit(self, *args, **kwargs):
        raise AssertionError("fit must not be reached")

    monkeypatch.setattr(SVC, "fit", no_fit)
    spec = TrainSpec(model="sklearn.svm.SVC", target="target", task="classification")
    with pytest.raises(InvalidInputError) as info:
        prepare(training_frame("breast_cancer", "classification"), spec)
    message = str(info.value)
    assert "probability=true" in message
    assert "predict_proba" in message


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_evaluate_computes_only_the_metrics_asked_for_with_the_same_values(task):
    """A CV fold is scored by one metric: asking for it alone gives exactly the value of the full set."""
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    from mlopsctl.training import metrics
    from mlopsctl.training.train import evaluate

    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b b", "ç"])
    if task == "classification":
        y = pd.Series(np.where(X["a"] + rng.normal(scale=0.5, size=200) > 0, 7, -1))  # integer labels with a gap
        model = RandomForestClassifier(n_estimators=10, random_state=0).fit(X[:150], y[:150])
        names = metrics.CLASSIFICATION
    else:
        y = pd.Series(X["a"] * 2 + rng.normal(size=200))
        model = RandomForestRegressor(n_estimators=10, random_state=0).fit(X[:150], y[:150])
        names = metrics.REGRESSION
    full = evaluate(model, X[150:], y[150:], task)
    assert sorted(full) == sorted(names)
    for name in names:
        assert evaluate(model, X[150:], y[150:], task, only=(name,)) == {name: full[name]}


def test_label_agreement_counts_a_tie_break_as_agreement_and_a_real_flip_as_not():
    import numpy as np

    ref_labels = np.array(["a", "a", "b", "a"])
    ref_proba = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    onnx_proba = np.array([[0.49999994, 0.50000006], [0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=np.float32)
    diff = np.abs(onnx_proba.astype(np.float64) - ref_proba)
    # row 0: scikit-learn's 0.5 / 0.5 tie broken the other way by float32 rounding; row 3: a real flip
    labels = np.array(["b", "a", "b", "b"])
    assert export.label_agreement(labels, ref_labels, ref_proba, diff) == 0.75
    assert export.label_agreement(ref_labels, ref_labels, ref_proba, diff) == 1.0
    three = np.array([[0.4, 0.4, 0.2], [0.1, 0.3, 0.6]])
    assert export.label_agreement(np.array(["y", "x"]), np.array(["x", "z"]), three, np.zeros_like(three)) == 0.5


def test_a_wide_table_whose_forest_ties_a_held_out_row_passes_parity(tmp_path):
    """300 rows x 400 columns (the draw that found it): a 100-tree forest scores one held-out row exactly
    0.5 / 0.5; before, that tie-break alone failed the parity check (label agreement 0.983) and the run could
    not be registered."""
    import numpy as np
    import pandas as pd

    from mlopsctl.config import load_settings
    from mlopsctl.services import runs

    rng = np.random.default_rng(0)
    rng.normal(size=(200, 3)), rng.normal(scale=0.5, size=200), rng.normal(size=(12, 3))  # the draws before it
    X = pd.DataFrame(rng.normal(size=(300, 400)), columns=[f"feat {i}.x" for i in range(400)])
    X.assign(label=(X.iloc[:, 0] > 0).astype(int)).to_csv(tmp_path / "wide.csv", index=False)
    (tmp_path / ".mlops.toml").write_text('[data]\ntarget = "label"\n')
    run = runs.train_and_track(load_settings({}, {}, tmp_path), data_path=tmp_path / "wide.csv")
    assert run["parity"]["passed"] is True and run["parity"]["label_agreement"] == 1.0


def test_a_tested_estimator_is_known_to_convert_without_asking_skl2onnx() -> None:
    """check_convertible answers for the tested scikit-learn estimators without importing skl2onnx (~0.3 s):
    skl2onnx agrees for every one of them; a subclass or a namesake is still asked."""
    from sklearn.ensemble import RandomForestClassifier

    for paths in estimators.TESTED_ESTIMATORS.values():
        for path in paths:
            cls = estimators.resolve_class(path)
            assert estimators.is_tested(cls) and export.has_converter(cls), path

    class Forest(RandomForestClassifier):
        pass

    namesake = type("RandomForestClassifier", (), {"fit": None, "get_params": None})
    assert not estimators.is_tested(Forest) and export.has_converter(Forest)
    assert not estimators.is_tested(namesake)
    with pytest.raises(TrainingError, match="cannot be exported to ONNX"):
        estimators.check_convertible(namesake, "classification")
    for path in ("sklearn.semi_supervised.LabelPropagation", "lightgbm.LGBMClassifier"):
        assert not estimators.is_tested(estimators.resolve_class(path)), path
