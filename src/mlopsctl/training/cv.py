"""K-fold cross-validation on the training split only: what a tuning trial scores.

The rows are those :func:`mlopsctl.training.train.split` keeps for training (same ``test_size`` and ``seed`` as
``mlopsctl train``), so the held-out rows that the refit's metrics and the gate use are never seen by a search.
Each fold is fitted through the same preprocessing pipeline as a run (:func:`estimators.build_pipeline`) and
scored by the same metrics (:func:`train.evaluate`). No database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from mlopsctl.data import build_contract
from mlopsctl.errors import InvalidInputError
from mlopsctl.training import estimators, metrics
from mlopsctl.training.train import Prepared, evaluate, fit, split


@dataclass
class Folds:
    """The normalized training split and its K (train, validation) row indices; built once per process."""

    prepared: Prepared
    X: pd.DataFrame
    y: pd.Series
    contract: Any
    indices: list[tuple[np.ndarray, np.ndarray]]
    metric: str

    @property
    def k(self) -> int:
        return len(self.indices)


def make_folds(prepared: Prepared, k: int, metric: str = "auto") -> Folds:
    """Stratified K folds for classification, shuffled K folds for regression, seeded by ``spec.seed``."""
    from sklearn.model_selection import KFold, StratifiedKFold

    spec, task = prepared.spec, prepared.task
    metric = metrics.primary_metric(task, metric)
    parts = split(prepared)
    X, y = parts.X_train, parts.y_train
    if task == "classification":
        counts = y.value_counts()
        if counts.min() < k:
            raise InvalidInputError(
                f"class {counts.idxmin()!r} has {counts.min()} row(s) in the training split, fewer than the {k} "
                f"cross-validation folds; lower --cv to at most {max(counts.min(), 2)} or add rows.")
        splitter: Any = StratifiedKFold(n_splits=k, shuffle=True, random_state=spec.seed)
    else:
        if len(y) < 2 * k:
            raise InvalidInputError(
                f"the training split has {len(y)} rows, too few for {k} cross-validation folds (at least {2 * k}); "
                "lower --cv or add rows.")
        splitter = KFold(n_splits=k, shuffle=True, random_state=spec.seed)
    contract = build_contract(X, y, target=spec.target, task=task, reference_rows=0, ignored=prepared.ignored)
    Xn = pd.DataFrame(contract.normalize(X))
    return Folds(prepared=prepared, X=Xn, y=y, contract=contract, indices=list(splitter.split(Xn, y)), metric=metric)


def score_fold(folds: Folds, estimator: Any, i: int) -> float:
    """Fit a copy of ``estimator`` on every fold but ``i`` and return the primary metric on fold ``i``."""
    from sklearn.base import clone

    train_rows, valid_rows = folds.indices[i]
    X_tr, y_tr = folds.X.iloc[train_rows], folds.y.iloc[train_rows]
    prepared = folds.prepared
    pipeline = estimators.build_pipeline(folds.contract, clone(estimator), X_tr, prepared.spec.max_categories,
                                         prepared.categorical)
    fit(pipeline, X_tr, y_tr, prepared)
    valid = folds.X.iloc[valid_rows], folds.y.iloc[valid_rows]
    return evaluate(pipeline, *valid, folds.prepared.task, only=(folds.metric,))[folds.metric]


def cross_validate(folds: Folds, estimator: Any, on_fold: Callable[[int, float], None] = lambda i, score: None) -> list[float]:
    """Per-fold scores of ``estimator``; ``on_fold(i, score)`` after each fold (a pruner may raise there)."""
    scores = []
    for i in range(folds.k):
        scores.append(score_fold(folds, estimator, i))
        on_fold(i, scores[-1])
    return scores
