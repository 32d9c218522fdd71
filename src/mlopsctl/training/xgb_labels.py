"""An XGBoost classifier that takes any class labels (imported only when an XGBoost classifier is trained).

XGBoost trains on labels 0..K-1 only. mlopsctl's graphs must answer the training file's classes (int64 codes
equal to the label value, or text; see mlopsctl.labels), so this subclass encodes the labels in ``fit``,
decodes them in ``predict`` and keeps the real classes in ``classes_``: onnxmltools' XGBoost converter
writes ``classes_`` into the graph's ``TreeEnsembleClassifier`` (``classlabels_int64s`` or
``classlabels_strings``), so the label output needs no extra node.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from xgboost import XGBClassifier


class EncodedXGBClassifier(XGBClassifier):
    @property
    def classes_(self) -> np.ndarray:
        """The training labels; XGBoost's own codes (0..K-1) while XGBoost's ``fit`` checks them."""
        labels = self.__dict__.get("labels_")
        return np.arange(self.n_classes_) if labels is None else labels

    def fit(self, X: Any, y: Any, **kwargs: Any) -> EncodedXGBClassifier:
        classes, codes = np.unique(np.asarray(y), return_inverse=True)
        eval_set = kwargs.get("eval_set")
        if eval_set:
            kwargs["eval_set"] = [(Xv, self._encode(classes, yv)) for Xv, yv in eval_set]
        self.__dict__.pop("labels_", None)
        super().fit(X, codes, **kwargs)
        self.labels_ = classes
        return self

    @staticmethod
    def _encode(classes: np.ndarray, y: Any) -> np.ndarray:
        y = np.asarray(y)
        codes = np.searchsorted(classes, y)
        if not np.array_equal(classes[np.minimum(codes, len(classes) - 1)], y):
            raise ValueError("the validation labels include a class the training labels do not have")
        return codes

    def predict(self, X: Any, **kwargs: Any) -> np.ndarray:
        return self.classes_[np.asarray(super().predict(X, **kwargs), dtype=np.int64)]
