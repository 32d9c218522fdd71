"""The input contract of a model version, learned from its training data: a small value object.

Training writes it, the server enforces it, monitoring uses its reference sample. The checker that
enforces it is :mod:`mlopsctl.contract_check` (one function per rule); :meth:`Contract.check` and
:meth:`Contract.normalize` call it. This module must stay light: no scikit-learn, no SQLAlchemy, no pandas
at import time (numpy is imported lazily).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Mapping

from mlopsctl import contract_check, labels
from mlopsctl._version import __version__
from mlopsctl.contract_check import MISSING_CATEGORY, CheckPlan, CheckResult, RowError
from mlopsctl.errors import InvalidInputError

__all__ = ["FORMAT_VERSION", "KINDS", "MISSING_CATEGORY", "CheckResult", "ColumnSpec", "Contract", "RowError"]

FORMAT_VERSION = 1
KINDS = ("numeric", "categorical", "boolean")


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    kind: str  # numeric | categorical | boolean
    dtype: str  # the pandas dtype seen in training
    null_rate: float = 0.0
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    categories: tuple[str, ...] | None = None
    input: str | None = None  # the ONNX graph's input name (skl2onnx sanitises names like "mean radius")

    @property
    def input_name(self) -> str:
        return self.input or self.name

    @property
    def nullable(self) -> bool:
        return self.null_rate > 0

    def accepted_range(self, tolerance: float) -> tuple[float, float] | None:
        """[lo, hi] a value may take before it counts as far out of range: the training range widened by
        ``tolerance`` x its span on each side; None when the column has no recorded range (or is not numeric)."""
        if self.kind != "numeric" or self.min is None or self.max is None:
            return None
        span = (self.max - self.min) or max(abs(self.max), 1.0)
        return self.min - tolerance * span, self.max + tolerance * span


@dataclass(frozen=True)
class Contract:
    target: str
    task: str  # classification | regression
    columns: tuple[ColumnSpec, ...]
    classes: tuple[Any, ...] | None = None  # typed as in the training file (see mlopsctl.labels)
    label_type: str | None = None  # classification: integer | boolean | float | string
    numeric_dtype: str = "float32"  # dtype of numeric ONNX inputs
    outputs: dict[str, str] = field(default_factory=lambda: {"label": "label", "probabilities": "probabilities"})
    reference: dict[str, Any] = field(default_factory=dict)  # {"columns": [...], "rows": [[...], ...]}
    ignored: tuple[str, ...] = ()  # columns of the training file that are not features (data.exclude, dates)
    format_version: int = FORMAT_VERSION
    mlopsctl_version: str = __version__

    # ---- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["columns"] = [{k: v for k, v in asdict(c).items()} for c in self.columns]
        for c in d["columns"]:
            if c["categories"] is not None:
                c["categories"] = list(c["categories"])
        d["classes"] = list(self.classes) if self.classes is not None else None
        d["ignored"] = list(self.ignored)
        return d

    def to_json(self) -> str:
        """Compact, sorted JSON; NaN and infinities become null (orjson: fast on the reference sample)."""
        import orjson

        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
                            | orjson.OPT_NON_STR_KEYS).decode()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Contract:
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise InvalidInputError(
                f"contract format_version {version!r} is not supported (this mlopsctl reads {FORMAT_VERSION}); "
                "upgrade mlopsctl or retrain the model."
            )
        cols = tuple(
            ColumnSpec(**{**c, "categories": tuple(c["categories"]) if c.get("categories") is not None else None})
            for c in d["columns"]
        )
        return cls(
            target=d["target"], task=d["task"], columns=cols,
            classes=tuple(d["classes"]) if d.get("classes") is not None else None,
            label_type=d.get("label_type") or (labels.infer_type(d["classes"]) if d.get("classes") else None),
            numeric_dtype=d.get("numeric_dtype", "float32"), outputs=dict(d["outputs"]),
            reference=dict(d.get("reference") or {}), ignored=tuple(d.get("ignored") or ()), format_version=version,
            mlopsctl_version=d.get("mlopsctl_version", "?"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Contract:
        return cls.from_dict(json.loads(text))

    # ---- views ----------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def numeric_names(self) -> tuple[str, ...]:
        """The numeric and boolean columns, in contract order (the rows of the checker's float64 block)."""
        return self.check_plan.names

    @cached_property
    def check_plan(self) -> CheckPlan:
        """What the checker precomputes once per contract (:class:`mlopsctl.contract_check.CheckPlan`)."""
        return CheckPlan.of(self.columns)

    @cached_property
    def class_keys(self) -> list[str]:
        """Each class as text (:func:`mlopsctl.labels.text`): probability keys and ``proba_<class>`` names."""
        return [labels.text(c) for c in self.classes or ()]

    def decode_labels(self, codes: Any) -> Any:
        """The graph's label output in the training file's label type (bool, float; others as they are)."""
        decode = labels.decoder(self.label_type)
        return codes if decode is None else decode(codes)

    def coerce_labels(self, values: Any) -> tuple[Any, Any]:
        """Labels from elsewhere (feedback, new files) as this model's label type: (array, valid mask)."""
        return labels.coerce(values, self.label_type or "string")

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    # ---- input preparation (shared by training, batch predict and the server) -------------------
    def normalize(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Columns as 1-D numpy arrays the pipeline and the ONNX graph agree on.

        numeric/boolean -> float64 with NaN for nulls; categorical -> object array of ``str`` with
        ``""`` for nulls. Raises InvalidInputError naming the first missing column or bad value.
        """
        checked = self.check(data)
        if checked.errors:
            e = checked.errors[0]
            raise InvalidInputError(f"{e.message} at row {e.row}.")
        return checked.normalized

    def check(self, data: Mapping[str, Any], **policies: Any) -> CheckResult:
        """:func:`mlopsctl.contract_check.check` against this contract (the policies are its keywords)."""
        return contract_check.check(self, data, **policies)

    def onnx_feeds(self, normalized: Mapping[str, Any], block: Any = None) -> dict[str, Any]:
        """ONNX Runtime feeds, one ``[N, 1]`` tensor per column, from normalized columns
        (:meth:`normalize`, or a :meth:`check` result's ``normalized``). Given the check's float64 ``block``
        (``CheckResult.block``), the numeric and boolean feeds come from it in one conversion (each a
        contiguous ``[N, 1]`` view of it) instead of one conversion per column."""
        import numpy as np

        with np.errstate(over="ignore"):
            if block is None:
                numeric = (normalized[name].astype(self.numeric_dtype).reshape(-1, 1) for name in self.numeric_names)
            else:
                numeric = iter(block.astype(self.numeric_dtype)[:, :, None])
            if len(self.numeric_names) == len(self.columns):  # all numeric/boolean: the block rows, in order
                return dict(zip(self._input_names, numeric))
            return {c.input_name: normalized[c.name].reshape(-1, 1) if c.kind == "categorical" else next(numeric)
                    for c in self.columns}

    @cached_property
    def _input_names(self) -> tuple[str, ...]:
        return tuple(c.input_name for c in self.columns)
