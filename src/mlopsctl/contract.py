"""The input contract of a model version, learned from its training data.

Training writes it, the server enforces it, monitoring uses its reference sample. This module must stay
light: no scikit-learn, no SQLAlchemy, no pandas at import time (numpy/pandas are imported lazily).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Mapping

from mlopsctl import labels
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

    def accepted_range(self, tolerance: float) -> tuple[float, float] | None:
        """[lo, hi] a value may take before it counts as far out of range: the training range widened by
        ``tolerance`` x its span on each side; None when the column has no recorded range (or is not numeric)."""
        if self.kind != "numeric" or self.min is None or self.max is None:
            return None
        span = (self.max - self.min) or max(abs(self.max), 1.0)
        return self.min - tolerance * span, self.max + tolerance * span


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
    warnings: list[RowError] = field(default_factory=list)  # flagged, still scored (out_of_range="flag")
    block: Any = None  # float64 [numeric columns, rows] when the vectorised path ran; normalized holds its rows
    block_columns: tuple[str, ...] = ()  # the block's rows, by column name

    @property
    def n_bad(self) -> int:
        return int(self.bad_rows.sum())


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
        """The numeric and boolean columns, in contract order (the vectorised check's block rows)."""
        return self._plan.names

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

    def check(self, data: Mapping[str, Any], *, unknown_category: str = "accept", extra_columns: str = "ignore",
              unseen_nulls: str = "accept", out_of_range: str = "accept", range_tolerance: float = 1.0,
              max_errors: int = 1000) -> CheckResult:
        """Normalize and validate column-wise; rows that break the contract are marked, not dropped.

        Policies: ``unknown_category`` accept|reject (the model ignores unseen categories);
        ``extra_columns`` ignore|reject; ``unseen_nulls`` accept|reject (a null where training had none);
        ``out_of_range`` accept|flag|reject (beyond [min, max] by more than ``range_tolerance`` x the
        training span). A missing column, or an extra one under ``reject``, fails the whole input.
        """
        import numpy as np

        missing = [c.name for c in self.columns if c.name not in data]
        if missing:
            raise InvalidInputError(
                f"missing column(s) {', '.join(map(repr, missing))}; the model needs {', '.join(self.feature_names)}."
            )
        if extra_columns == "reject" and len(data) > len(self.columns):
            known = set(self.feature_names).union(self.ignored)
            extra = [str(k) for k in data if k not in known]
            if extra:
                raise InvalidInputError(
                    f"unexpected column(s) {', '.join(map(repr, extra[:10]))}; the model takes {', '.join(self.feature_names)}."
                )
        result = CheckResult({}, [], None, [])

        def flag(mask: Any, col: str, describe, *, warn: bool = False) -> None:
            if not mask.any():
                return
            if warn:
                result.warnings.extend(RowError(int(r), col, describe(int(r))) for r in np.flatnonzero(mask)[:max_errors])
                return
            result.bad_rows = mask if result.bad_rows is None else (result.bad_rows | mask)
            for row in np.flatnonzero(mask)[: max(0, max_errors - len(result.errors))]:
                result.errors.append(RowError(int(row), col, describe(int(row))))

        block = self._numeric_block(data, out_of_range, range_tolerance, unseen_nulls)
        rows = iter(block) if block is not None else None
        if block is not None:
            result.block, result.block_columns = block, self._plan.names
        for c in self.columns:
            if rows is not None and c.kind != "categorical":
                result.normalized[c.name] = next(rows)  # checked all at once in _numeric_block
                continue
            values = data[c.name]
            bad = None
            if c.kind == "categorical":
                norm, nulls = _as_categorical(values)
                result.normalized[c.name] = norm
                raw_vals = list(values)
                nested = np.fromiter((isinstance(v, (list, dict, tuple)) for v in raw_vals), dtype=bool, count=len(raw_vals))
                flag(nested, c.name, lambda r, c=c, raw=raw_vals: f"column {c.name!r} must be a category (text), got {raw[r]!r}")
                if unknown_category == "reject" and c.categories is not None:
                    unknown = ~nulls & ~_isin(norm, c.categories)
                    flag(unknown, c.name, lambda r, c=c, v=norm: (
                        f"column {c.name!r} has unknown category {v[r]!r} (known: "
                        f"{', '.join(c.categories[:20])}{' ...' if len(c.categories) > 20 else ''})"))
            else:
                arr, bad, raw = _as_float(values, c.kind == "boolean")
                if bad is not None:
                    flag(bad, c.name, lambda r, c=c, raw=raw: f"column {c.name!r} must be {c.kind}, got {raw[r]!r}")
                result.normalized[c.name] = arr
                accepted = c.accepted_range(range_tolerance) if out_of_range != "accept" else None
                if accepted is not None:
                    lo, hi = accepted
                    with np.errstate(invalid="ignore"):
                        far = (arr < lo) | (arr > hi)
                    flag(far, c.name, lambda r, c=c, a=arr, lo=lo, hi=hi: (
                        f"column {c.name!r} value {a[r]:g} is far outside the training range "
                        f"[{c.min:g}, {c.max:g}] (accepted: [{lo:g}, {hi:g}])"), warn=out_of_range == "flag")
            if unseen_nulls == "reject" and c.null_rate == 0:
                col = result.normalized[c.name]
                nulls_mask = (col == MISSING_CATEGORY) if c.kind == "categorical" else np.isnan(col)
                if bad is not None and c.kind != "categorical":
                    nulls_mask = nulls_mask & ~bad
                flag(nulls_mask, c.name, lambda r, c=c: f"column {c.name!r} is null, but it had no nulls in training")
        lengths = {name: len(v) for name, v in result.normalized.items()}
        n = max(lengths.values(), default=0)
        if any(k != n for k in lengths.values()):
            short = next(name for name, k in lengths.items() if k != n)
            raise InvalidInputError(f"columns of different lengths: {short!r} has {lengths[short]} value(s), others "
                                    f"have {n}; send one value per row in every column.")
        if result.bad_rows is None:
            result.bad_rows = np.zeros(n, dtype=bool)
        return result

    @cached_property
    def _plan(self) -> _NumericPlan:
        return _NumericPlan.of(self)

    def _numeric_block(self, data: Mapping[str, Any], out_of_range: str, range_tolerance: float,
                       unseen_nulls: str) -> Any:
        """The fast path of :meth:`check`: every numeric and boolean column as one float64 ``[k, N]`` array,
        checked with two vectorised masks. ``None`` when a value does not convert, the columns are not all
        plain 1-D sequences of one length, or a value is flagged: the per-column path then decides and
        words the messages."""
        import numpy as np

        plan = self._plan
        if not plan.names:
            return None
        block = getattr(data, "block", None)  # already converted together (mlopsctl.serving.records.Columns)
        if block is None or getattr(data, "block_names", None) != plan.names:
            try:
                block = np.array([data[name] for name in plan.names], dtype=np.float64)
            except (TypeError, ValueError, OverflowError):
                return None
        if block.ndim != 2:
            return None
        if out_of_range != "accept" and plan.has_ranges:
            lo, hi = plan.bounds(range_tolerance)
            with np.errstate(invalid="ignore"):
                if ((block < lo) | (block > hi)).any():
                    return None
        if unseen_nulls == "reject" and plan.not_nullable.any() and (np.isnan(block) & plan.not_nullable).any():
            return None
        return block

    def feeds(self, checked: CheckResult) -> dict[str, Any]:
        """ONNX Runtime feeds for a :meth:`check` result: from its float64 block in one conversion when the
        vectorised path ran (each feed a contiguous ``[N, 1]`` view), else :meth:`onnx_feeds`."""
        if checked.block is None:
            return self.onnx_feeds(checked.normalized)
        import numpy as np

        with np.errstate(over="ignore"):
            rows = iter(checked.block.astype(self.numeric_dtype)[:, :, None])  # each row an [N, 1] view
        if len(self._plan.names) == len(self.columns):  # all numeric/boolean: the block rows, in order
            return dict(zip(self._input_names, rows))
        return {c.input_name: checked.normalized[c.name].reshape(-1, 1) if c.kind == "categorical" else next(rows)
                for c in self.columns}

    @cached_property
    def _input_names(self) -> tuple[str, ...]:
        return tuple(c.input_name for c in self.columns)

    def onnx_feeds(self, normalized: Mapping[str, Any]) -> dict[str, Any]:
        """ONNX Runtime feeds (one ``[N, 1]`` tensor per column) from :meth:`normalize` output."""
        import numpy as np

        feeds = {}
        with np.errstate(over="ignore"):
            for c in self.columns:
                arr = normalized[c.name]
                if c.kind == "categorical":
                    feeds[c.input_name] = arr.reshape(-1, 1)
                else:
                    feeds[c.input_name] = arr.astype(self.numeric_dtype).reshape(-1, 1)
        return feeds


@dataclass(frozen=True)
class _NumericPlan:
    """What the vectorised check needs from a contract, computed once: the numeric and boolean columns in
    contract order, which had no nulls, and per range tolerance their accepted ranges as ``[k, 1]`` columns."""

    columns: tuple[ColumnSpec, ...]
    names: tuple[str, ...]
    not_nullable: Any
    has_ranges: bool
    _bounds: dict = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, contract: Contract) -> _NumericPlan:
        import numpy as np

        cols = tuple(c for c in contract.columns if c.kind != "categorical")
        not_nullable = np.array([c.null_rate == 0 for c in cols], dtype=bool).reshape(-1, 1)
        return cls(cols, tuple(c.name for c in cols), not_nullable,
                   any(c.accepted_range(1.0) is not None for c in cols))

    def bounds(self, tolerance: float) -> tuple[Any, Any]:
        """(lo, hi) as ``[k, 1]`` arrays of :meth:`ColumnSpec.accepted_range`; +-inf where there is none."""
        b = self._bounds.get(tolerance)
        if b is None:
            import numpy as np

            ranges = [c.accepted_range(tolerance) or (-np.inf, np.inf) for c in self.columns]
            b = self._bounds[tolerance] = (np.array([r[0] for r in ranges], dtype=np.float64).reshape(-1, 1),
                                           np.array([r[1] for r in ranges], dtype=np.float64).reshape(-1, 1))
        return b


def _as_float(values: Any, boolean: bool) -> tuple[Any, Any, Any]:
    """(float64 array with NaN for nulls, mask of unparseable values or None, raw values for messages).

    The fast path (numbers, numeric strings) is one numpy call; anything else goes through pandas."""
    import numpy as np

    raw = values if hasattr(values, "dtype") else None
    if raw is not None and raw.dtype.kind in "fiub":
        return np.asarray(raw, dtype=np.float64).ravel(), None, raw
    try:
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim == 1:
            return arr, None, values
    except (TypeError, ValueError):
        pass
    import pandas as pd

    s = pd.Series(list(values), dtype=object)
    if boolean:
        s = s.map(_to_bool_or_nan)
    num = pd.to_numeric(s, errors="coerce")
    bad = (num.isna() & ~s.isna()).to_numpy()
    return num.to_numpy(dtype="float64", na_value=np.nan), (bad if bad.any() else None), s.to_numpy()


def _as_categorical(values: Any) -> tuple[Any, Any]:
    """(object array of str with "" for nulls, null mask)."""
    import numpy as np

    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    if len(arr) <= 64:  # requests: a Python loop beats pandas' overhead
        nulls = np.fromiter((v is None or (isinstance(v, float) and v != v) for v in arr), dtype=bool, count=len(arr))
        norm = np.array([MISSING_CATEGORY if n else (v if isinstance(v, str) else str(v)) for v, n in zip(arr, nulls)],
                        dtype=object)
        return norm, nulls
    import pandas as pd

    nulls = pd.isna(arr)
    return np.where(nulls, MISSING_CATEGORY, arr.astype(str)).astype(object), nulls


def _isin(values: Any, categories: tuple[str, ...]) -> Any:
    import numpy as np

    known = set(categories)
    return np.fromiter((v in known for v in values), dtype=bool, count=len(values))


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
