"""The training flow without a database: split, fit, evaluate, export, parity.

``TrainSpec`` is plain data (validated when :func:`train` runs, like a scikit-learn estimator's params);
``services`` records the :class:`TrainResult` in the store.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from mlopsctl import labels
from mlopsctl.contract import Contract
from mlopsctl.data import build_contract, split_target
from mlopsctl.errors import InvalidInputError
from mlopsctl.training import estimators, export, metrics

Progress = Callable[[str], None]


@dataclass
class TrainSpec:
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    target: str = "label"
    task: str = "auto"
    test_size: float = 0.2
    seed: int = 42
    reference_rows: int = 1000
    source: str = "the data"  # how errors name the input (usually its path)
    exclude: tuple[str, ...] = ()  # columns that are not features
    max_categories: int = 50  # one-hot values per categorical column (its most frequent ones)


@dataclass
class TrainResult:
    pipeline: Any
    contract: Contract
    onnx_bytes: bytes
    metrics: dict[str, float]
    parity: export.Parity
    task: str
    model_class: str
    params: dict[str, Any]
    n_train: int
    n_test: int
    heldout: pd.DataFrame  # raw held-out features plus the target column
    timings: dict[str, float]
    dropped: int = 0  # training-file rows without a target value, left out


def _clean_target(y: pd.Series, task: str, label_type: str | None) -> pd.Series:
    """Labels the converters handle: text stays text; integer, boolean and float-coded classes become int64
    codes equal to their value (decoded back to the file's type by the contract, see mlopsctl.labels)."""
    if task != "classification":
        return y.astype("float64")
    if label_type == "string":
        return y.map(lambda v: labels.text(v) if not isinstance(v, str) else v).astype(str)
    typed, valid = labels.coerce(y, label_type or "integer")
    if not valid.all():
        bad = y[~valid].iloc[0]
        if label_type in ("integer", "float") and isinstance(bad, (int, float)):
            raise InvalidInputError(
                f"target {y.name!r} has fractional values, which cannot be classes; set data.task = \"regression\"."
            )
        raise InvalidInputError(f"target {y.name!r} has the value {bad!r}, which is not a {label_type} class label.")
    if label_type == "float" and not all(float(v).is_integer() for v in typed):
        raise InvalidInputError(
            f"target {y.name!r} has fractional values, which cannot be classes; set data.task = \"regression\"."
        )
    return pd.Series(typed, name=y.name).astype("int64")


def _check_split(y: pd.Series, task: str, test_size: float, source: str) -> None:
    n = len(y)
    n_test = math.ceil(n * test_size)
    n_train = n - n_test
    if task == "classification":
        counts = y.value_counts()
        k = len(counts)
        if k < 2:
            raise InvalidInputError(
                f"target {y.name!r} in {source} has a single class ({counts.index[0]!r}); classification needs at least two."
            )
        need = max(2 * k, math.ceil(k / min(test_size, 1 - test_size)))
        if n < need or n_test < k or n_train < k:
            raise InvalidInputError(
                f"{source} has {n} rows, fewer than the split needs (at least {need} for {k} classes with "
                f"test_size={test_size}); add rows or change train.test_size."
            )
        rare = counts[counts < 2]
        if len(rare):
            raise InvalidInputError(
                f"class {rare.index[0]!r} of {y.name!r} has only 1 row in {source}; the stratified split needs at "
                "least 2 per class (add rows or drop that class)."
            )
    elif n_test < 2 or n_train < 2:
        need = math.ceil(2 / min(test_size, 1 - test_size))
        raise InvalidInputError(
            f"{source} has {n} rows, fewer than the split needs (at least {need} with test_size={test_size}); "
            "add rows or change train.test_size."
        )


@dataclass
class Prepared:
    """Checked inputs: everything that can be wrong with the data or the model spec fails here, fast."""

    spec: TrainSpec
    X: pd.DataFrame
    y: pd.Series
    task: str
    estimator: Any
    label_type: str | None = None
    dropped: int = 0  # rows without a target value, left out
    ignored: tuple[str, ...] = ()  # columns left out of the features: data.exclude and dates
    notices: list[str] = field(default_factory=list)  # one line each: what training noticed about the data


def _exclude(X: pd.DataFrame, spec: TrainSpec) -> tuple[pd.DataFrame, tuple[str, ...], list[str]]:
    """X without ``spec.exclude`` and date columns; (X, what was left out, notices)."""
    from mlopsctl.data import screen_columns

    unknown = [c for c in spec.exclude if c not in X.columns]
    if unknown:
        what = "is the target" if unknown[0] == spec.target else f"is not in {spec.source}"
        raise InvalidInputError(
            f"data.exclude names {unknown[0]!r}, which {what}; exclude feature columns only "
            f"({', '.join(map(str, X.columns))}).")
    X = X.drop(columns=list(spec.exclude))
    screened = screen_columns(X, spec.max_categories)
    X = X.drop(columns=screened.dates)
    if X.shape[1] == 0:
        raise InvalidInputError(f"no feature columns are left in {spec.source} after leaving out "
                                f"{', '.join(map(repr, [*spec.exclude, *screened.dates]))}; keep at least one.")
    notices = list(screened.notices)
    if spec.exclude:
        notices.insert(0, f"left out by data.exclude: {', '.join(map(str, spec.exclude))}.")
    return X, (*spec.exclude, *screened.dates), notices


def prepare(df: pd.DataFrame, spec: TrainSpec) -> Prepared:
    tf = split_target(df, spec.target, spec.task, source=spec.source)
    label_type = labels.of_series(tf.y, had_nulls=tf.dropped > 0) if tf.task == "classification" else None
    y = _clean_target(tf.y, tf.task, label_type)
    estimator = estimators.make_estimator(spec.model, dict(spec.params), tf.task, spec.seed)
    _check_split(y, tf.task, spec.test_size, spec.source)
    X, ignored, notices = _exclude(tf.X, spec)
    if tf.dropped:
        notices.insert(0, f"{tf.dropped} row(s) of {spec.source} have no {spec.target!r} value and are left out.")
    return Prepared(spec=spec, X=X, y=y, task=tf.task, estimator=estimator, label_type=label_type,
                    dropped=tf.dropped, ignored=ignored, notices=notices)


@dataclass
class Split:
    """The training and held-out rows (raw features, cleaned target), each with a fresh 0..n-1 index."""

    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


def split(prepared: Prepared) -> Split:
    """The held-out split every run of this spec gets: ``test_size`` and ``seed``, stratified by class."""
    from sklearn.model_selection import train_test_split

    spec, y = prepared.spec, prepared.y
    parts = train_test_split(prepared.X, y, test_size=spec.test_size, random_state=spec.seed,
                             stratify=y if prepared.task == "classification" else None)
    return Split(*(part.reset_index(drop=True) for part in parts))


def fit(pipeline: Any, X: pd.DataFrame, y: pd.Series) -> None:
    """Fit, with an estimator's complaint about its data or parameters as one TrainingError line."""
    try:
        pipeline.fit(X, y)
    except (ValueError, TypeError) as e:
        from mlopsctl.errors import TrainingError

        name = type(pipeline.steps[-1][1]).__name__
        raise TrainingError(f"fitting {name} failed: {str(e).splitlines()[0]}") from None


def evaluate(pipeline: Any, X: pd.DataFrame, y: pd.Series, task: str) -> dict[str, float]:
    """Every metric of the task (mlopsctl.training.metrics) of a fitted pipeline on rows it did not see."""
    if task == "classification":
        proba = pipeline.predict_proba(X)
        predicted = pipeline.classes_[np.argmax(proba, axis=1)]
        return metrics.classification_metrics(y, predicted, proba, pipeline.classes_)
    return metrics.regression_metrics(y, pipeline.predict(X))


def train(prepared: Prepared, progress: Progress = lambda stage: None) -> TrainResult:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    progress("prepare")
    spec, estimator = prepared.spec, prepared.estimator
    task = prepared.task
    parts = split(prepared)
    X_train, X_test, y_train, y_test = parts.X_train, parts.X_test, parts.y_train, parts.y_test
    decode = labels.decoder(prepared.label_type) or (lambda codes: codes)
    classes = decode(np.array(sorted(y_train.unique().tolist()))) if task == "classification" else None
    contract = build_contract(X_train, y_train, target=spec.target, task=task, classes=classes,
                              label_type=prepared.label_type, reference_rows=spec.reference_rows, seed=spec.seed,
                              ignored=prepared.ignored)
    Xn_train = pd.DataFrame(contract.normalize(X_train))
    pipeline = estimators.build_pipeline(contract, estimator, Xn_train, spec.max_categories)
    Xn_test = pd.DataFrame(contract.normalize(X_test))
    timings["prepare"] = time.perf_counter() - t0

    t = time.perf_counter()
    progress("fit")
    fit(pipeline, Xn_train, y_train)
    timings["fit"] = time.perf_counter() - t

    t = time.perf_counter()
    progress("evaluate")
    scores = evaluate(pipeline, Xn_test, y_test, task)
    timings["evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    progress("export")
    onnx_bytes, contract = export.export_onnx(pipeline, contract)
    timings["export"] = time.perf_counter() - t

    t = time.perf_counter()
    progress("parity")
    parity = export.parity_check(pipeline, onnx_bytes, contract, Xn_test)
    timings["parity"] = time.perf_counter() - t

    heldout = X_test.copy()  # the target in the training file's label type, as the gate will read it
    heldout[spec.target] = contract.decode_labels(y_test.to_numpy()) if task == "classification" else y_test.to_numpy()
    return TrainResult(
        pipeline=pipeline, contract=contract, onnx_bytes=onnx_bytes, metrics=scores, parity=parity,
        task=task, model_class=estimators.class_path(type(estimator)),
        params={k: v for k, v in estimator.get_params(deep=False).items()},
        n_train=len(X_train), n_test=len(X_test), heldout=heldout, timings=timings, dropped=prepared.dropped,
    )
