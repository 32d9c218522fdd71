"""The input contract of a model version, learned from its training data.

Training writes it, the server enforces it, monitoring uses its reference sample. This module must stay
light: no scikit-learn, no SQLAlchemy, no pandas at import time (numpy/pandas are imported lazily).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from mlopsctl._version import __version__
from mlopsctl.errors import InvalidInputError

FORMAT_VERSION = 1
KINDS = ("numeric", "categorical", "boolean")
MISSING_CATEGORY = ""  # nulls in categorical columns are fed to the model as the empty string


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


@dataclass(frozen=True)
class RowError:
    row: int  # 0-based position in the input
    column: str
    message: str  # what is wrong, without the row (callers number rows their own way)


@dataclass
class CheckResult:
    normalized: dict[str, Any]
    errors: list[RowError]  # at most ``max_errors`` messages
    bad_rows: Any  # boolean numpy mask over all rows

    @property
    def n_bad(self) -> int:
        return int(self.bad_rows.sum())


@dataclass(frozen=True)
class Contract:
    target: str
    task: str  # classification | regression
    columns: tuple[ColumnSpec, ...]
    classes: tuple[Any, ...] | None = None
    numeric_dtype: str = "float32"  # dtype of numeric ONNX inputs
    outputs: dict[str, str] = field(default_factory=lambda: {"label": "label", "probabilities": "probabilities"})
    reference: dict[str, Any] = field(default_factory=dict)  # {"columns": [...], "rows": [[...], ...]}
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
        return d

    def to_json(self) -> str:
        return json.dumps(_jsonable(self.to_dict()), sort_keys=True, separators=(",", ":"), allow_nan=False)

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
            numeric_dtype=d.get("numeric_dtype", "float32"), outputs=dict(d["outputs"]),
            reference=dict(d.get("reference") or {}), format_version=version,
            mlopsctl_version=d.get("mlopsctl_version", "?"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Contract:
        return cls.from_dict(json.loads(text))

    # ---- views ----------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def without_reference(self) -> dict[str, Any]:
        d = self.to_dict()
        d.pop("reference", None)
        return d

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

    def check(self, data: Mapping[str, Any], *, unknown_category: str = "accept",
              max_errors: int = 1000) -> CheckResult:
        """Normalize and validate column-wise; rows that break the contract are marked, not dropped.

        ``unknown_category``: ``accept`` (the model ignores unseen categories) or ``reject``.
        A missing column is an error for the whole input (InvalidInputError).
        """
        import numpy as np
        import pandas as pd

        missing = [c.name for c in self.columns if c.name not in data]
        if missing:
            raise InvalidInputError(
                f"missing column(s) {', '.join(map(repr, missing))}; the model needs {', '.join(self.feature_names)}."
            )
        out: dict[str, Any] = {}
        bad_any = None
        errors: list[RowError] = []

        def flag(mask: Any, col: str, describe) -> None:
            nonlocal bad_any
            if not mask.any():
                return
            bad_any = mask if bad_any is None else (bad_any | mask)
            for row in np.flatnonzero(mask)[: max(0, max_errors - len(errors))]:
                errors.append(RowError(int(row), col, describe(int(row))))

        for c in self.columns:
            values = data[c.name]
            if c.kind == "categorical":
                arr = np.asarray(values, dtype=object).ravel()
                nulls = pd.isna(arr)
                norm = np.where(nulls, MISSING_CATEGORY, arr.astype(str)).astype(object)
                out[c.name] = norm
                if unknown_category == "reject" and c.categories is not None:
                    unknown = ~nulls & ~pd.Series(norm).isin(c.categories).to_numpy()
                    flag(unknown, c.name, lambda r, c=c, v=norm: (
                        f"column {c.name!r} has unknown category {v[r]!r} (known: "
                        f"{', '.join(c.categories[:20])}{' ...' if len(c.categories) > 20 else ''})"))
            else:
                raw = np.asarray(values).ravel()
                if raw.dtype.kind in "fiub":
                    out[c.name] = raw.astype("float64", copy=False)
                    continue
                s = pd.Series(raw)
                if c.kind == "boolean" and s.dtype == object:
                    s = s.map(_to_bool_or_nan)
                num = pd.to_numeric(s, errors="coerce")
                bad = (num.isna() & ~s.isna()).to_numpy()
                flag(bad, c.name, lambda r, c=c, s=s: f"column {c.name!r} must be {c.kind}, got {s.iloc[r]!r}")
                out[c.name] = num.to_numpy(dtype="float64", na_value=np.nan)
        n = len(next(iter(out.values()))) if out else 0
        return CheckResult(out, errors, bad_any if bad_any is not None else np.zeros(n, dtype=bool))

    def onnx_feeds(self, normalized: Mapping[str, Any]) -> dict[str, Any]:
        """ONNX Runtime feeds (one ``[N, 1]`` tensor per column) from :meth:`normalize` output."""
        feeds = {}
        for c in self.columns:
            arr = normalized[c.name]
            if c.kind == "categorical":
                feeds[c.input_name] = arr.reshape(-1, 1)
            else:
                feeds[c.input_name] = arr.astype(self.numeric_dtype).reshape(-1, 1)
        return feeds


def _to_bool_or_nan(v: Any) -> Any:
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("true", "t", "yes", "y", "1"):
            return 1.0
        if low in ("false", "f", "no", "n", "0"):
            return 0.0
        if low == "":
            return math.nan
    return v


def _jsonable(o: Any) -> Any:
    """Plain JSON types (numpy scalars, NaN -> None) for storage."""
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, float):
        return None if math.isnan(o) or math.isinf(o) else o
    if hasattr(o, "item") and callable(o.item):  # numpy scalar
        return _jsonable(o.item())
    return o
