"""Resolve an estimator class path, check it fast (before any fitting) and build the full pipeline."""

from __future__ import annotations

import importlib
import sys
from typing import Any

from mlopsctl.contract import MISSING_CATEGORY, Contract
from mlopsctl.errors import InvalidInputError, TrainingError
from mlopsctl.training import boosters

# The matrix tested in tests/test_training_export.py. Other estimators with a skl2onnx converter are
# accepted too (the parity check then tells how well they export); those without one fail fast.
TESTED_ESTIMATORS = {
    "classification": (
        "sklearn.linear_model.LogisticRegression",
        "sklearn.ensemble.RandomForestClassifier",
        "sklearn.ensemble.GradientBoostingClassifier",
        "sklearn.ensemble.HistGradientBoostingClassifier",
        "sklearn.ensemble.ExtraTreesClassifier",
        "sklearn.tree.DecisionTreeClassifier",
        "sklearn.svm.SVC",
        "sklearn.neighbors.KNeighborsClassifier",
    ),
    "regression": (
        "sklearn.linear_model.LinearRegression",
        "sklearn.linear_model.Ridge",
        "sklearn.ensemble.RandomForestRegressor",
        "sklearn.ensemble.GradientBoostingRegressor",
        "sklearn.ensemble.HistGradientBoostingRegressor",
        "sklearn.ensemble.ExtraTreesRegressor",
        "sklearn.tree.DecisionTreeRegressor",
        "sklearn.svm.SVR",
        "sklearn.neighbors.KNeighborsRegressor",
    ),
}

# LightGBM and XGBoost (optional extras) are tested in the same matrix, with each categorical encoding.
_SHORT_NAMES = {path.rsplit(".", 1)[1]: path for table in (TESTED_ESTIMATORS, boosters.BOOSTERS)
                for paths in table.values() for path in paths}
_TESTED = frozenset(p for paths in TESTED_ESTIMATORS.values() for p in paths)
AUTO = {"classification": "sklearn.ensemble.RandomForestClassifier",
        "regression": "sklearn.ensemble.RandomForestRegressor"}


def resolve_model(path: str, task: str) -> str:
    """``auto`` (the default model) is a random forest classifier or regressor by the detected task."""
    return AUTO[task] if path == "auto" else path


def supported_list(task: str | None = None) -> str:
    tasks = [task] if task in TESTED_ESTIMATORS else list(TESTED_ESTIMATORS)
    return ", ".join(p.rsplit(".", 1)[1] for t in tasks for p in (*TESTED_ESTIMATORS[t], *boosters.BOOSTERS[t]))


def resolve_class(path: str) -> type:
    """Import ``package.module.Class``; a bare tested name like ``RandomForestClassifier`` works too."""
    path = _SHORT_NAMES.get(path, path)
    module_name, _, cls_name = path.rpartition(".")
    if not module_name:
        raise InvalidInputError(
            f"model {path!r} is not a class path; use e.g. sklearn.ensemble.RandomForestClassifier "
            f"(supported: {supported_list()})."
        )
    library = boosters.library_of(module_name)
    if library is not None:
        boosters.require(library, path)
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, cls_name)
    except (ImportError, AttributeError):
        raise InvalidInputError(
            f"model {path!r} cannot be imported; check the spelling (supported: {supported_list()})."
        ) from None
    if not isinstance(cls, type):
        raise InvalidInputError(f"model {path!r} is not a class.")
    return cls


def class_path(cls: type) -> str:
    """The public import path: ``sklearn.ensemble.StackingClassifier``, not ``sklearn.ensemble._stacking...``."""
    public = _SHORT_NAMES.get(cls.__name__)
    if public:
        return public
    parts = cls.__module__.split(".")
    while len(parts) > 1 and parts[-1].startswith("_"):
        parts.pop()
    module = ".".join(parts)
    try:
        if getattr(importlib.import_module(module), cls.__name__, None) is cls:
            return f"{module}.{cls.__name__}"
    except ImportError:
        pass
    return f"{cls.__module__}.{cls.__name__}"


def make_estimator(path: str, params: dict[str, Any], task: str, seed: int) -> Any:
    """Instantiate and validate the estimator; every failure here happens before any fitting."""
    from sklearn.base import is_classifier, is_regressor

    cls = resolve_class(resolve_model(path, task))
    name = class_path(cls)
    if not hasattr(cls, "fit") or not hasattr(cls, "get_params"):
        raise InvalidInputError(f"{name} is not a scikit-learn estimator (it has no fit/get_params).")
    check_convertible(cls, task)
    try:
        est = cls()
        valid = est.get_params(deep=False)
        native = boosters.native_params(cls)  # LightGBM's own parameter names, beyond its scikit-learn ones
        unknown = sorted(set(params) - set(valid) - (native or set())) if native is not None else []
        if unknown:
            raise InvalidInputError(
                f"{name} has no parameter {', '.join(map(repr, unknown))}; valid: {', '.join(sorted(valid))}."
            )
        if "random_state" in valid and "random_state" not in params:
            params = {**params, "random_state": seed}
        est.set_params(**params)
        validate = getattr(est, "_validate_params", None)
        if validate is not None and hasattr(est, "_parameter_constraints"):
            validate()
    except InvalidInputError:
        raise
    except (ValueError, TypeError) as e:
        raise InvalidInputError(f"{name}: {str(e).splitlines()[0]}") from None
    if task == "classification" and not is_classifier(est):
        raise InvalidInputError(
            f"{name} is not a classifier but the task is classification; pick a classifier "
            f"({supported_list('classification')}) or set data.task = \"regression\"."
        )
    if task == "regression" and not is_regressor(est):
        raise InvalidInputError(
            f"{name} is not a regressor but the task is regression; pick a regressor "
            f"({supported_list('regression')}) or set data.task = \"classification\"."
        )
    if task == "classification" and not hasattr(est, "predict_proba"):
        hint = " (pass --param probability=true)" if "probability" in valid else ""
        raise InvalidInputError(f"{name} gives no class probabilities as configured{hint}; mlopsctl needs predict_proba.")
    return est


def check_convertible(cls: type, task: str | None = None) -> None:
    """Fail fast, before training, when skl2onnx has no converter for ``cls``. A tested scikit-learn estimator
    has one (tests/test_training_export.py exports each): asking skl2onnx would import it and every converter
    (~0.3 s) long before an export needs them, e.g. before a whole tuning search."""
    from mlopsctl.training.export import has_converter

    library = boosters.library_of(cls)
    if library is not None:
        boosters.register_converters(library)
    elif is_tested(cls):
        return
    if not has_converter(cls):
        raise TrainingError(
            f"{class_path(cls)} cannot be exported to ONNX (skl2onnx has no converter for it); "
            f"use one of: {supported_list(task)}."
        )


def is_tested(cls: type) -> bool:
    """``cls`` is one of the scikit-learn estimators of TESTED_ESTIMATORS itself (not a subclass or a namesake)."""
    path = _SHORT_NAMES.get(cls.__name__)
    if path is None or path not in _TESTED:
        return False
    module = sys.modules.get(path.rsplit(".", 1)[0])
    return module is not None and getattr(module, cls.__name__, None) is cls


SCALE_INVARIANT_MODULES = ("sklearn.tree.", "sklearn.ensemble._forest", "sklearn.ensemble._gb",
                           "sklearn.ensemble._hist_gradient_boosting.", "lightgbm.", "xgboost.")


def build_pipeline(contract: Contract, estimator: Any, frame: Any = None, max_categories: int = 0,
                   categorical: str = "onehot"):
    """Preprocessing from the column kinds (impute + scale numeric/boolean, impute + one-hot categorical).

    With ``frame`` (the normalized training rows) and ``max_categories``, a categorical column with more
    values than that is encoded on its most frequent ones; the others, like categories never seen in
    training, count as none of them (skl2onnx converts no "infrequent" category of scikit-learn's).

    LightGBM and XGBoost (see :mod:`boosters`) take numeric columns as they are, NaN included (missing values
    are a branch of their trees), and with ``categorical="native"`` each categorical column as one ordinal
    code (an unseen or infrequent category is NaN, i.e. missing) that the booster splits on natively."""
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    numeric = [c.name for c in contract.columns if c.kind in ("numeric", "boolean")]
    categorical_columns = [c.name for c in contract.columns if c.kind == "categorical"]
    booster = boosters.library_of(estimator) is not None
    transformers = []
    if numeric:
        if booster:
            transformers.append(("numeric", "passthrough", numeric))
        else:
            steps = [("impute", SimpleImputer(strategy="median", keep_empty_features=True))]
            # Trees are scale-invariant; scaling in float64 (sklearn) vs float32 (ONNX) moves rows across
            # split thresholds and breaks parity, so tree models get the raw (imputed) values.
            if not type(estimator).__module__.startswith(SCALE_INVARIANT_MODULES):
                steps.append(("scale", StandardScaler()))
            transformers.append(("numeric", Pipeline(steps), numeric))
    native = categorical == "native" and bool(categorical_columns)
    if categorical_columns:
        categories = onehot_categories(frame, categorical_columns, max_categories) if frame is not None else "auto"
        encoder = (OrdinalEncoder(categories=categories, handle_unknown="use_encoded_value", unknown_value=np.nan,
                                  dtype=np.float64) if native
                   else OneHotEncoder(categories=categories, handle_unknown="ignore", sparse_output=False))
        transformers.append(
            ("categorical", Pipeline([
                # keep_empty_features: a column with no value in these rows (a CV fold of a small or sparse
                # table) is filled, not dropped, so the encoder still sees every column the contract names
                ("impute", SimpleImputer(missing_values=MISSING_CATEGORY, strategy="constant",
                                         fill_value=FILL_CATEGORY, keep_empty_features=True)),
                ("native" if native else "onehot", encoder),
            ]), categorical_columns)
        )
    if booster:
        estimator = boosters.configure(estimator, contract.task,
                                       (len(numeric), len(categorical_columns)) if native else None)
    return Pipeline([("preprocess", ColumnTransformer(transformers)), ("model", estimator)])


FILL_CATEGORY = "__missing__"


def onehot_categories(frame: Any, columns: list[str], limit: int) -> Any:
    """"auto" when every column has at most ``limit`` values; else each column's values, the most frequent
    ``limit`` of them for the columns that have more (ties: in sorted order)."""
    import pandas as pd

    counts = [pd.Series(frame[c]).replace(MISSING_CATEGORY, FILL_CATEGORY).value_counts() for c in columns]
    if not limit or all(len(vc) <= limit for vc in counts):
        return "auto"
    out = []
    for vc in counts:
        ordered = sorted(vc.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        out.append(sorted(str(k) for k, _ in ordered))
    return out
