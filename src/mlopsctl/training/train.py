"""The training flow without a database: split, fit, evaluate, export, parity.

``TrainSpec`` is plain data (validated when :func:`train` runs, like a scikit-learn estimator's params);
``services`` records the :class:`TrainResult` in the store.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from mlopsctl import labels
from mlopsctl.contract import Contract
from mlopsctl.data import build_contract, split_target
from mlopsctl.errors import InvalidInputError
from mlopsctl.scoring import Scorer
from mlopsctl.training import boosters, estimators, export, metrics

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
    categorical: str = "auto"  # onehot | native (LightGBM, XGBoost) | auto: native for boosters
    early_stopping_rounds: int = 0  # boosters: stop after this many rounds without improvement (0: off)


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
    model_info: dict[str, Any] = field(default_factory=dict)  # categorical encoding, trees, best iteration
    importance: dict[str, Any] | None = None  # boosters: total gain per column (boosters.gain_importance)


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
    categorical: str = "onehot"  # train.categorical resolved for this model and data: onehot | native
    notices: list[str] = field(default_factory=list)  # one line each: what training noticed about the data


def _exclude(X: pd.DataFrame, spec: TrainSpec, categorical: str) -> tuple[pd.DataFrame, tuple[str, ...], list[str]]:
    """X without ``spec.exclude`` and date columns; (X, what was left out, notices)."""
    from mlopsctl.data import screen_columns

    unknown = [c for c in spec.exclude if c not in X.columns]
    if unknown:
        what = "is the target" if unknown[0] == spec.target else f"is not in {spec.source}"
        raise InvalidInputError(
            f"data.exclude names {unknown[0]!r}, which {what}; exclude feature columns only "
            f"({', '.join(map(str, X.columns))}).")
    X = X.drop(columns=list(spec.exclude))
    screened = screen_columns(X, spec.max_categories, onehot=categorical == "onehot")
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
    from mlopsctl.data import column_kind

    has_categorical = any(column_kind(tf.X[c]) == "categorical" for c in tf.X.columns if c not in spec.exclude)
    categorical = boosters.resolve_categorical(spec.categorical, estimator, has_categorical)
    X, ignored, notices = _exclude(tf.X, spec, categorical)
    if tf.dropped:
        notices.insert(0, f"{tf.dropped} row(s) of {spec.source} have no {spec.target!r} value and are left out.")
    boosters.check_early_stopping(spec.early_stopping_rounds, estimator)
    if spec.early_stopping_rounds:
        boosters.validation_rows(_split(X, y, spec, tf.task)[2], tf.task)
    return Prepared(spec=spec, X=X, y=y, task=tf.task, estimator=estimator, label_type=label_type,
                    dropped=tf.dropped, ignored=ignored, notices=notices, categorical=categorical)


def library_versions(prepared: Prepared) -> dict[str, str]:
    """The versions of the libraries the model needs beyond scikit-learn (a booster's, with onnxmltools)."""
    return boosters.versions(boosters.library_of(prepared.estimator))


def _split(X: pd.DataFrame, y: pd.Series, spec: TrainSpec, task: str) -> list[Any]:
    """X_train, X_test, y_train, y_test: the held-out split (stratified by class)."""
    from sklearn.model_selection import train_test_split

    return train_test_split(X, y, test_size=spec.test_size, random_state=spec.seed,
                            stratify=y if task == "classification" else None)


@dataclass
class Split:
    """The training and held-out rows (raw features, cleaned target), each with a fresh 0..n-1 index."""

    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


def split(prepared: Prepared) -> Split:
    """The held-out split every run of this spec gets: ``test_size`` and ``seed``, stratified by class. A tuning
    trial's cross-validation folds come from its training rows only."""
    parts = _split(prepared.X, prepared.y, prepared.spec, prepared.task)
    return Split(*(part.reset_index(drop=True) for part in parts))


def train(prepared: Prepared, progress: Progress = lambda stage: None) -> TrainResult:
    """Split, fit, evaluate on the held-out split, export to ONNX and check parity, each stage timed."""
    timings: dict[str, float] = {}
    spec, estimator, task = prepared.spec, prepared.estimator, prepared.task
    with _stage("prepare", progress, timings):
        parts = split(prepared)
        X_train, X_test, y_train, y_test = parts.X_train, parts.X_test, parts.y_train, parts.y_test
        decode = labels.decoder(prepared.label_type) or (lambda codes: codes)
        classes = decode(np.array(sorted(y_train.unique().tolist()))) if task == "classification" else None
        contract = build_contract(X_train, y_train, target=spec.target, task=task, classes=classes,
                                  label_type=prepared.label_type, reference_rows=spec.reference_rows,
                                  seed=spec.seed, ignored=prepared.ignored)
        Xn_train = pd.DataFrame(contract.normalize(X_train))
        pipeline = estimators.build_pipeline(contract, estimator, Xn_train, spec.max_categories, prepared.categorical)
        Xn_test = pd.DataFrame(contract.normalize(X_test))
    booster = boosters.library_of(estimator) is not None
    with _stage("fit", progress, timings):
        fit(pipeline, Xn_train, y_train, prepared)
    with _stage("evaluate", progress, timings):
        scores = evaluate(pipeline, Xn_test, y_test, task)
    with _stage("export", progress, timings):
        onnx_bytes, contract = export.export_onnx(pipeline, contract)
    with _stage("parity", progress, timings):
        scorer = Scorer(onnx_bytes, contract)  # one ONNX Runtime session for both checks
        parity = export.with_training_rows(export.parity_check(pipeline, onnx_bytes, contract, Xn_test, scorer),
                                           pipeline, onnx_bytes, contract, Xn_train, spec.seed, scorer)
    model_info, importance = _model_info(pipeline, onnx_bytes, prepared, booster)
    heldout = X_test.copy()  # the target in the training file's label type, as the gate will read it
    heldout[spec.target] = contract.decode_labels(y_test.to_numpy()) if task == "classification" else y_test.to_numpy()
    return TrainResult(
        pipeline=pipeline, contract=contract, onnx_bytes=onnx_bytes, metrics=scores, parity=parity,
        task=task, model_class=estimators.class_path(type(estimator)),
        params={k: v for k, v in estimator.get_params(deep=False).items()},
        n_train=len(X_train), n_test=len(X_test), heldout=heldout, timings=timings, dropped=prepared.dropped,
        model_info=model_info, importance=importance,
    )


@contextlib.contextmanager
def _stage(name: str, progress: Progress, timings: dict[str, float]) -> Iterator[None]:
    progress(name)
    t = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t


def fit(pipeline: Any, X: pd.DataFrame, y: pd.Series, prepared: Prepared) -> None:
    """Fit (a booster with its early stopping), an estimator's complaint about its data or parameters as one
    TrainingError line. Used by a run and by each fold of a tuning trial's cross-validation."""
    try:
        if boosters.library_of(prepared.estimator) is not None:
            boosters.fit(pipeline, X, y, task=prepared.task, early_stopping_rounds=prepared.spec.early_stopping_rounds,
                         seed=prepared.spec.seed)
        else:
            pipeline.fit(X, y)
    except (ValueError, TypeError) as e:
        from mlopsctl.errors import TrainingError

        raise TrainingError(f"fitting {type(prepared.estimator).__name__} failed: {str(e).splitlines()[0]}") from None


def evaluate(pipeline: Any, X: pd.DataFrame, y: pd.Series, task: str, only: tuple[str, ...] | None = None) -> dict[str, float]:
    """The task's metrics (mlopsctl.training.metrics; those in ``only``, else all) of a fitted pipeline on rows it
    did not see."""
    if task == "classification":
        proba = pipeline.predict_proba(X)
        predicted = pipeline.classes_[np.argmax(proba, axis=1)]
        return metrics.classification_metrics(y, predicted, proba, pipeline.classes_, only or metrics.CLASSIFICATION)
    return metrics.regression_metrics(y, pipeline.predict(X), only or metrics.REGRESSION)


def _model_info(pipeline: Any, onnx_bytes: bytes, prepared: Prepared, booster: bool) -> tuple[dict[str, Any], Any]:
    """How categories were encoded and, for a booster, what the exported graph holds (trees up to the best
    iteration) and its gain importance."""
    model_info: dict[str, Any] = {"categorical": prepared.categorical}
    if not booster:
        return model_info, None
    n_rounds, best = boosters.rounds(pipeline.steps[-1][1])
    model_info.update(n_trees=export.tree_count(onnx_bytes), n_rounds=n_rounds,
                      early_stopping_rounds=prepared.spec.early_stopping_rounds)
    if best is not None:
        model_info["best_iteration"] = best
    return model_info, boosters.gain_importance(pipeline)
