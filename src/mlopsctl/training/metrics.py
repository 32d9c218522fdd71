"""Held-out metrics: classification accuracy, F1 (macro), ROC AUC (OvR), log loss; regression RMSE, MAE, R²."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

CLASSIFICATION = ("accuracy", "f1_macro", "roc_auc", "log_loss")
REGRESSION = ("rmse", "mae", "r2")
DEFAULT_PRIMARY = {"classification": "roc_auc", "regression": "r2"}
LOWER_IS_BETTER = {"log_loss", "rmse", "mae"}


def primary_metric(task: str, configured: str = "auto") -> str:
    if configured == "auto":
        return DEFAULT_PRIMARY[task]
    allowed = CLASSIFICATION if task == "classification" else REGRESSION
    if configured not in allowed:
        from mlopsctl.errors import ConfigError

        raise ConfigError(f"train.metric {configured!r} does not apply to {task}; use one of: auto, {', '.join(allowed)}.")
    return configured


def classification_metrics(y_true: Any, labels: Any, proba: np.ndarray, classes: Any,
                           only: tuple[str, ...] = CLASSIFICATION) -> dict[str, float]:
    """The metrics named in ``only`` (all by default; a CV fold computes just the one it is scored by)."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    # ONNX Runtime computes in float32: rows may sum to 1 +- 1e-7 and leave [0, 1] by as much
    proba = np.clip(np.asarray(proba, dtype=np.float64), 0.0, 1.0)
    proba = proba / np.maximum(proba.sum(axis=1, keepdims=True), 1e-12)
    out = {}
    if "accuracy" in only:
        out["accuracy"] = float(accuracy_score(y_true, labels))
    if "f1_macro" in only:
        out["f1_macro"] = float(f1_score(y_true, labels, average="macro"))
    if "log_loss" in only:
        out["log_loss"] = float(log_loss(y_true, proba, labels=list(classes)))
    if "roc_auc" in only:
        try:
            if len(classes) == 2:
                out["roc_auc"] = float(roc_auc_score(y_true, proba[:, 1]))
            else:
                out["roc_auc"] = float(roc_auc_score(y_true, proba, multi_class="ovr", labels=list(classes)))
        except ValueError:  # a class absent from the held-out rows
            out["roc_auc"] = math.nan
    return out


def regression_metrics(y_true: Any, pred: Any, only: tuple[str, ...] = REGRESSION) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    out = {}
    if "rmse" in only:
        out["rmse"] = float(math.sqrt(mean_squared_error(y_true, pred)))
    if "mae" in only:
        out["mae"] = float(mean_absolute_error(y_true, pred))
    if "r2" in only:
        out["r2"] = float(r2_score(y_true, pred))
    return out
