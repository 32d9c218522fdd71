"""LightGBM and XGBoost as first-class models: their ONNX converters, categorical handling, labels, early
stopping and what a run records about them (trees, best iteration, gain importance, library versions).

Neither library is imported until a booster is asked for: both are optional (the ``[lightgbm]`` and
``[xgboost]`` extras, each with onnxmltools, whose converters skl2onnx calls for them). The server never
needs them: the exported graph uses ONNX's own tree-ensemble operators.

What differs from scikit-learn's trees:

* numeric columns reach the booster unimputed: NaN is its own branch in both libraries and in the graph;
* categorical columns are one-hot encoded as for other models, or ordinal encoded inside the graph (string
  in, code out; an unseen category is NaN, i.e. missing) and split on natively (``train.categorical``);
* XGBoost wants class labels 0..K-1, so an :class:`EncodedXGBClassifier` (mlopsctl.training.xgb_labels)
  encodes them in ``fit`` and keeps the real ones in ``classes_``, which its converter writes into the
  graph: the graph still answers the training file's classes;
* the graph's label output is the class of the highest probability (:func:`label_from_probabilities`);
* with ``train.early_stopping_rounds``, a validation slice of the training split stops the boosting; both
  converters export the trees up to the best iteration only, as both libraries predict with.
"""

from __future__ import annotations

import functools
import importlib
import math
from typing import Any

from mlopsctl.errors import ConfigError, InvalidInputError

BOOSTERS = {
    "classification": ("lightgbm.LGBMClassifier", "xgboost.XGBClassifier"),
    "regression": ("lightgbm.LGBMRegressor", "xgboost.XGBRegressor"),
}
LIBRARIES = ("lightgbm", "xgboost")  # each is also the name of the extra that installs it
CATEGORICAL = ("auto", "onehot", "native")
VALIDATION_SHARE = 0.1  # of the training split, held back for early stopping


def library_of(obj: Any) -> str | None:
    """``lightgbm`` / ``xgboost`` for a booster class path, class or instance; None for anything else."""
    if isinstance(obj, str):
        module = obj
    else:
        module = (obj if isinstance(obj, type) else type(obj)).__module__
        if module == "mlopsctl.training.xgb_labels":
            return "xgboost"
    root = module.split(".", 1)[0]
    return root if root in LIBRARIES else None


def require(library: str, what: str | None = None) -> None:
    """Import ``library`` and onnxmltools, or fail in one line naming the extra that installs them."""
    try:
        importlib.import_module(library)
        importlib.import_module("onnxmltools")
    except ImportError:
        raise ConfigError(f"{what or library} needs the {library} and onnxmltools packages, which are not "
                          f"installed; install them with: pip install \"mlopsctl[{library}]\".") from None


@functools.cache
def register_converters(library: str) -> None:
    """Teach skl2onnx the booster classes of ``library`` (onnxmltools' converters, skl2onnx's shape
    calculators), so a pipeline ending in one converts like any scikit-learn pipeline."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    require(library)
    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    if library == "lightgbm":
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        pairs = [(LGBMClassifier, convert_lightgbm), (LGBMRegressor, convert_lightgbm)]
    else:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor

        from mlopsctl.training.xgb_labels import EncodedXGBClassifier

        pairs = [(XGBClassifier, convert_xgboost), (EncodedXGBClassifier, convert_xgboost),
                 (XGBRegressor, convert_xgboost)]
    for cls, converter in pairs:
        classifier = cls.__name__.endswith("Classifier")
        update_registered_converter(
            cls, f"{library}{cls.__name__}",
            calculate_linear_classifier_output_shapes if classifier else calculate_linear_regressor_output_shapes,
            converter, options=classifier_options if classifier else None)


def resolve_categorical(choice: str, estimator: Any, has_categorical: bool) -> str:
    """``onehot`` or ``native`` for ``train.categorical`` and this estimator; ``auto`` is native for
    boosters, one-hot for every other model."""
    if choice not in CATEGORICAL:
        raise InvalidInputError(f"train.categorical must be one of {', '.join(CATEGORICAL)}, got {choice!r}.")
    booster = library_of(estimator) is not None
    if choice == "native" and not booster:
        raise InvalidInputError(
            f"train.categorical = \"native\" needs a LightGBM or XGBoost model; {type(estimator).__name__} "
            "takes one-hot encoded categories (use \"onehot\" or \"auto\").")
    if not has_categorical:
        return "onehot"  # nothing to encode: recorded as the default
    return "native" if choice == "native" or (choice == "auto" and booster) else "onehot"


def check_early_stopping(rounds: int, estimator: Any) -> None:
    if rounds < 0:
        raise InvalidInputError(f"train.early_stopping_rounds must be 0 (off) or more, got {rounds}.")
    if rounds and library_of(estimator) is None:
        raise InvalidInputError(
            f"train.early_stopping_rounds works with LightGBM and XGBoost models, not {type(estimator).__name__}; "
            "set it to 0 (or use the model's own early-stopping parameters).")


def native_params(cls: type) -> set[str] | None:
    """Parameter names a booster takes beyond its scikit-learn ones: LightGBM's own parameters and their
    aliases (``min_data_in_leaf``, ``verbosity``...); None when the library does not say (then any name goes)."""
    if library_of(cls) != "lightgbm":
        return set()
    try:
        from lightgbm.basic import _ConfigAliases

        return {a for name, aliases in _ConfigAliases._get_all_param_aliases().items() for a in (name, *aliases)}
    except (ImportError, AttributeError):
        return None


def configure(estimator: Any, task: str, native: tuple[int, int] | None) -> Any:
    """The estimator as the pipeline fits it: LightGBM quiet, XGBoost classifiers taking any labels, and
    XGBoost's categorical feature types when ``native`` = (numeric count, categorical count)."""
    library = library_of(estimator)
    params = estimator.get_params(deep=False)
    if library == "lightgbm":
        if not {"verbose", "verbosity"} & set(params):
            estimator.set_params(verbose=-1)  # LightGBM writes its warnings to stdout, where --json goes
        return estimator
    if task == "classification":
        from mlopsctl.training.xgb_labels import EncodedXGBClassifier

        estimator = EncodedXGBClassifier(**params)
    if native is not None:
        n_numeric, n_categorical = native
        estimator.set_params(enable_categorical=True, feature_types=["q"] * n_numeric + ["c"] * n_categorical)
    return estimator


def label_from_probabilities(onx: Any, label: str, probabilities: str, classes: Any) -> None:
    """Make the graph's ``label`` output the class of the highest probability, as both libraries predict.

    ONNX Runtime's binary ``TreeEnsembleClassifier`` picks the label by comparing the raw score with 0.5
    instead of 0 when every leaf weight is positive (it takes them for probabilities): a LightGBM model of
    one tree, or of trees that found no split (few rows), then answers the wrong class for most rows
    although its probabilities are right. ArgMax over the probabilities gives the label they imply."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = onx.graph
    producer = next(n for n in graph.node if label in n.output)
    producer.output[list(producer.output).index(label)] = f"{label}_from_trees"
    values = np.asarray(classes)
    values = values.astype(np.int64) if values.dtype.kind in "iub" else values.astype(str).astype(object)
    graph.initializer.append(numpy_helper.from_array(values, name=f"{label}_classes"))
    graph.node.extend([
        helper.make_node("ArgMax", [probabilities], [f"{label}_index"], axis=1, keepdims=0,
                         name=f"{label}_argmax"),
        helper.make_node("Gather", [f"{label}_classes", f"{label}_index"], [label], axis=0, name=f"{label}_gather"),
    ])


def _native_indices(pipeline: Any) -> list[int]:
    """Positions of the ordinal-encoded (natively split) columns in the booster's input: they follow the
    numeric columns (see estimators.build_pipeline)."""
    from sklearn.preprocessing import OrdinalEncoder

    transformers = dict((name, (t, cols)) for name, t, cols in pipeline.steps[0][1].transformers)
    if "categorical" not in transformers:
        return []
    encoder, columns = transformers["categorical"]
    if not isinstance(encoder.steps[-1][1] if hasattr(encoder, "steps") else encoder, OrdinalEncoder):
        return []
    start = len(transformers["numeric"][1]) if "numeric" in transformers else 0
    return list(range(start, start + len(columns)))


def fit(pipeline: Any, X: Any, y: Any, *, task: str, early_stopping_rounds: int, seed: int) -> None:
    """Fit a pipeline ending in a booster; with early stopping, on all but a validation slice of ``X``. The
    libraries' own errors (LightGBMError, XGBoostError) become a ValueError, as scikit-learn's are."""
    try:
        _fit(pipeline, X, y, task=task, early_stopping_rounds=early_stopping_rounds, seed=seed)
    except Exception as e:
        if library_of(type(e)) is None:
            raise
        raise ValueError(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from None


def _fit(pipeline: Any, X: Any, y: Any, *, task: str, early_stopping_rounds: int, seed: int) -> None:
    model = pipeline.steps[-1][1]
    library = library_of(model)
    kwargs: dict[str, Any] = {}
    native = _native_indices(pipeline)
    if library == "lightgbm" and native:
        kwargs["categorical_feature"] = native
    if not early_stopping_rounds:
        pipeline.fit(X, y, **{f"{pipeline.steps[-1][0]}__{k}": v for k, v in kwargs.items()})
        return
    X_fit, X_val, y_fit, y_val = validation_split(X, y, task, seed)
    preprocess = pipeline[:-1]  # the same step objects: fitting it fits the pipeline's preprocessing
    Xt, Xv = preprocess.fit_transform(X_fit), preprocess.transform(X_val)
    if library == "lightgbm":
        import warnings

        import lightgbm

        # lightgbm 4.7 deprecates eval_set for eval_X + eval_y, but LGBMClassifier does not label-encode
        # eval_y (lightgbm#7400, open): classes such as 1/3/7 or text would be scored wrongly or fail
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*'eval_set' is deprecated")
            model.fit(Xt, y_fit, eval_set=[(Xv, y_val)], **kwargs, callbacks=[
                lightgbm.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False)])
    else:
        model.set_params(early_stopping_rounds=early_stopping_rounds)
        model.fit(Xt, y_fit, eval_set=[(Xv, y_val)], verbose=False)


def validation_split(X: Any, y: Any, task: str, seed: int) -> tuple[Any, Any, Any, Any]:
    """The early-stopping slice: ``VALIDATION_SHARE`` of the training rows (stratified by class, at least
    one row of each class on both sides)."""
    from sklearn.model_selection import train_test_split

    parts = train_test_split(X, y, test_size=validation_rows(y, task), random_state=seed,
                             stratify=y if task == "classification" else None)
    return tuple(p.reset_index(drop=True) for p in parts)  # type: ignore[return-value]


def validation_rows(y: Any, task: str) -> int:
    """How many of the training rows ``y`` the early-stopping slice takes; fails when too few are left."""
    n = len(y)
    k = int(y.nunique()) if task == "classification" else 1
    n_val = max(math.ceil(n * VALIDATION_SHARE), k)
    if n - n_val < max(k, 2) or (task == "classification" and int(y.value_counts().min()) < 2):
        raise InvalidInputError(
            f"early stopping needs a validation slice of the {n} training rows with every class on both sides; "
            "add rows or set train.early_stopping_rounds = 0.")
    return n_val


def rounds(model: Any) -> tuple[int, int | None]:
    """(boosting rounds in the model as it predicts, best iteration or None without early stopping); the
    best iteration counts rounds from 1, so both libraries read the same."""
    if library_of(model) == "lightgbm":
        best = int(model.best_iteration_ or 0) or None
        return (best or int(model.booster_.current_iteration())), best
    try:
        best = int(model.best_iteration) + 1
    except AttributeError:  # no early stopping
        best = None
    return (best or int(model.get_booster().num_boosted_rounds())), best


def gain_importance(pipeline: Any) -> dict[str, Any]:
    """Total gain per input column (one-hot levels summed into their column) and per booster feature."""
    model = pipeline.steps[-1][1]
    preprocess = pipeline.steps[0][1]
    names = list(preprocess.get_feature_names_out())
    owners = _feature_owners(preprocess)
    if library_of(model) == "lightgbm":
        gains = [float(g) for g in model.booster_.feature_importance(importance_type="gain")]
    else:
        booster = model.get_booster()
        n_rounds, best = rounds(model)
        if best is not None:
            booster = booster[:n_rounds]
        scores = booster.get_score(importance_type="total_gain")
        gains = [float(scores.get(f"f{i}", 0.0)) for i in range(len(names))]
    total = sum(gains) or 1.0
    columns: dict[str, float] = {}
    for owner, gain in zip(owners, gains):
        columns[owner] = columns.get(owner, 0.0) + gain
    ranked = sorted(columns.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "importance_type": "gain",
        "columns": [{"column": c, "gain": g, "share": g / total} for c, g in ranked],
        "features": [{"feature": _short(n), "column": o, "gain": g}
                     for n, o, g in sorted(zip(names, owners, gains), key=lambda t: -t[2]) if g > 0],
    }


def _short(name: str) -> str:
    """``categorical__color_red`` -> ``color_red`` (the ColumnTransformer's prefix dropped)."""
    return name.split("__", 1)[1] if "__" in name else name


def _feature_owners(preprocess: Any) -> list[str]:
    """The input column behind each output feature of the fitted ColumnTransformer, in output order."""
    owners: list[str] = []
    for name, transformer, columns in preprocess.transformers_:
        if name == "remainder" or transformer == "drop":
            continue
        last = transformer.steps[-1][1] if hasattr(transformer, "steps") else transformer
        categories = getattr(last, "categories_", None)
        if categories is not None and hasattr(last, "sparse_output"):  # one-hot: a feature per level
            for column, levels in zip(columns, categories):
                owners.extend([column] * len(levels))
        else:
            owners.extend(columns)
    return owners


def versions(library: str | None) -> dict[str, str]:
    """The booster's library and onnxmltools with their versions (the run's environment); xgboost may be
    installed as the ``xgboost`` or the ``xgboost-cpu`` distribution, so versions come from the modules."""
    if library is None:
        return {}
    out = {}
    for name in (library, "onnxmltools"):
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except (ImportError, AttributeError):
            out[name] = "not installed"
    return out
