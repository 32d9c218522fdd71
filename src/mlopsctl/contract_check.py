"""The contract's checker: input columns against a :class:`~mlopsctl.contract.Contract`, one rule at a time.

:func:`check` normalizes every column and marks the rows that break a rule; it drops nothing. The rules,
one function each: :func:`missing_columns` and :func:`unexpected_columns` fail the whole input;
:func:`categorical_values`, :func:`numeric_values`, :func:`ranges` and :func:`unseen_nulls` mark rows,
column by column in contract order (the first error is the one a caller reports).

There is one engine. The numeric and boolean columns are converted together into one float64 ``[k, N]``
block whose rows are the contract's ``numeric_names``: the caller passes it as ``block=`` when it already
has it (the server's records decoder and the V2 ``[N, F]`` tensor build it while reading the request),
else it is built here, in one numpy call when every value converts and column by column (numeric text,
booleans as words, the values that do not convert marked) otherwise. The range and null rules are then
two vectorised masks over the block, and only a column with something marked is worded row by row.

The module is below ``contract`` in the layers (``Contract.check`` and ``Contract.normalize`` call it):
it reads a contract's fields and never imports the module. Light at import time: numpy and pandas are
imported inside the functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from mlopsctl.errors import InvalidInputError

MISSING_CATEGORY = ""  # nulls in categorical columns are fed to the model as the empty string


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
    block: Any = None  # float64 [numeric columns, rows]; None when the contract has no numeric column
    block_columns: tuple[str, ...] = ()  # the block's rows, by column name

    @property
    def n_bad(self) -> int:
        return int(self.bad_rows.sum())


@dataclass(frozen=True)
class CheckPlan:
    """What the checker needs from a contract, computed once (``Contract.check_plan``): the categorical
    columns, the numeric and boolean ones in contract order (the block's rows) and which of those had no
    nulls, and per range tolerance their accepted ranges as ``[k, 1]`` columns."""

    categorical: tuple[Any, ...]  # ColumnSpec
    columns: tuple[Any, ...]  # the numeric and boolean ColumnSpecs
    names: tuple[str, ...]
    row: dict[str, int]  # column name -> its row in the block
    not_nullable: Any
    has_ranges: bool
    _bounds: dict = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, columns: tuple[Any, ...]) -> CheckPlan:
        import numpy as np

        cols = tuple(c for c in columns if c.kind != "categorical")
        not_nullable = np.array([c.null_rate == 0 for c in cols], dtype=bool).reshape(-1, 1)
        names = tuple(c.name for c in cols)
        return cls(tuple(c for c in columns if c.kind == "categorical"), cols, names,
                   {n: i for i, n in enumerate(names)}, not_nullable if not_nullable.any() else None,
                   any(c.accepted_range(1.0) is not None for c in cols))

    def bounds(self, tolerance: float) -> tuple[Any, Any]:
        """(lo, hi) as ``[k, 1]`` arrays of ``ColumnSpec.accepted_range``; +-inf where there is none."""
        b = self._bounds.get(tolerance)
        if b is None:
            import numpy as np

            ranges = [c.accepted_range(tolerance) or (-np.inf, np.inf) for c in self.columns]
            b = self._bounds[tolerance] = (np.array([r[0] for r in ranges], dtype=np.float64).reshape(-1, 1),
                                           np.array([r[1] for r in ranges], dtype=np.float64).reshape(-1, 1))
        return b


def check(contract: Any, data: Mapping[str, Any], *, block: Any = None, unknown_category: str = "accept",
          extra_columns: str = "ignore", unseen_nulls: str = "accept", out_of_range: str = "accept",
          range_tolerance: float = 1.0, max_errors: int = 1000) -> CheckResult:
    """Normalize and validate column-wise; rows that break the contract are marked, not dropped.

    ``block``: the numeric and boolean columns already converted, float64 ``[k, N]`` in the order of
    ``contract.numeric_names`` (``data`` must still name those columns). Policies: ``unknown_category``
    accept|reject (the model ignores unseen categories); ``extra_columns`` ignore|reject;
    ``unseen_nulls`` accept|reject (a null where training had none); ``out_of_range`` accept|flag|reject
    (beyond [min, max] by more than ``range_tolerance`` x the training span). A missing column, or an
    extra one under ``reject``, fails the whole input.
    """
    missing_columns(contract, data)
    if extra_columns == "reject":
        unexpected_columns(contract, data)
    plan: CheckPlan = contract.check_plan
    block, numbers, bad, raw = _numbers(plan, data, block)
    categories = {c.name: _as_categorical(data[c.name]) for c in plan.categorical}
    if categories:
        normalized = {c.name: categories[c.name][0] if c.kind == "categorical" else numbers[c.name]
                      for c in contract.columns}
    else:
        normalized = numbers  # every column numeric or boolean: already in contract order
    n = _same_length(normalized)
    if block is None and numbers:  # converted column by column: stacked once the lengths agree
        import numpy as np

        block = np.stack(list(numbers.values()))
    result = CheckResult(normalized, [], None, [], block, plan.names)
    flag = _Flagger(result, max_errors)
    far = _far_rows(plan, block, range_tolerance) if out_of_range != "accept" else None
    nulls = _null_rows(plan, block) if unseen_nulls == "reject" else None
    numeric_marked = bool(bad) or far is not None or nulls is not None
    for c in contract.columns if numeric_marked else plan.categorical:  # contract order: the first error first
        if c.kind == "categorical":
            categorical_values(c, data[c.name], *categories[c.name], unknown_category, flag)
            if unseen_nulls == "reject" and c.null_rate == 0:
                unseen_nulls_in(c, normalized[c.name] == MISSING_CATEGORY, flag)
            continue
        i = plan.row[c.name]
        numeric_values(c, bad.get(c.name), raw.get(c.name), flag)
        if far is not None:
            ranges(c, normalized[c.name], far[i], range_tolerance, out_of_range, flag)
        if nulls is not None:
            unseen_nulls_in(c, nulls[i] if c.name not in bad else nulls[i] & ~bad[c.name], flag)
    if result.bad_rows is None:
        import numpy as np

        result.bad_rows = np.zeros(n, dtype=bool)
    return result


# ---- the rules ----------------------------------------------------------------------------------------

def missing_columns(contract: Any, data: Mapping[str, Any]) -> None:
    missing = [c.name for c in contract.columns if c.name not in data]
    if missing:
        raise InvalidInputError(
            f"missing column(s) {', '.join(map(repr, missing))}; the model needs {', '.join(contract.feature_names)}."
        )


def unexpected_columns(contract: Any, data: Mapping[str, Any]) -> None:
    """A column that is neither a feature nor a column training ignored (``extra_columns = "reject"``)."""
    if len(data) > len(contract.columns):
        known = set(contract.feature_names).union(contract.ignored)
        extra = [str(k) for k in data if k not in known]
        if extra:
            raise InvalidInputError(
                f"unexpected column(s) {', '.join(map(repr, extra[:10]))}; the model takes {', '.join(contract.feature_names)}."
            )


def categorical_values(c: Any, values: Any, norm: Any, nulls: Any, unknown_category: str, flag: _Flagger) -> None:
    """A category is text: a list or an object is an error; under ``reject``, so is a category training
    never saw (a null is not one)."""
    raw = list(values)
    if any(isinstance(v, (list, dict, tuple)) for v in raw):
        import numpy as np

        nested = np.fromiter((isinstance(v, (list, dict, tuple)) for v in raw), dtype=bool, count=len(raw))
        flag(nested, c.name, lambda r: f"column {c.name!r} must be a category (text), got {raw[r]!r}")
    if unknown_category == "reject" and c.categories is not None:
        unknown = ~nulls & ~_isin(norm, c.categories)
        flag(unknown, c.name, lambda r: (
            f"column {c.name!r} has unknown category {norm[r]!r} (known: "
            f"{', '.join(c.categories[:20])}{' ...' if len(c.categories) > 20 else ''})"))


def numeric_values(c: Any, bad: Any, raw: Any, flag: _Flagger) -> None:
    """A value of a numeric or boolean column that does not convert (``bad``: where it did not)."""
    if bad is not None:
        flag(bad, c.name, lambda r: f"column {c.name!r} must be {c.kind}, got {raw[r]!r}")


def ranges(c: Any, values: Any, far: Any, tolerance: float, out_of_range: str, flag: _Flagger) -> None:
    """A value beyond the training range widened by ``tolerance`` x its span: a warning under ``flag``,
    an error under ``reject``."""
    accepted = c.accepted_range(tolerance)
    if accepted is None:
        return
    lo, hi = accepted
    flag(far, c.name, lambda r: (
        f"column {c.name!r} value {values[r]:g} is far outside the training range "
        f"[{c.min:g}, {c.max:g}] (accepted: [{lo:g}, {hi:g}])"), warn=out_of_range == "flag")


def unseen_nulls_in(c: Any, nulls: Any, flag: _Flagger) -> None:
    """A null in a column that had none in training (``unseen_nulls = "reject"``)."""
    flag(nulls, c.name, lambda r: f"column {c.name!r} is null, but it had no nulls in training")


class _Flagger:
    """Marks a rule's rows in a result: errors (at most ``max_errors`` messages, every row counted in
    ``bad_rows``) or warnings (at most ``max_errors`` per column)."""

    def __init__(self, result: CheckResult, max_errors: int) -> None:
        self.result, self.max_errors = result, max_errors

    def __call__(self, mask: Any, column: str, describe: Callable[[int], str], *, warn: bool = False) -> None:
        if not mask.any():
            return
        import numpy as np

        result = self.result
        if warn:
            result.warnings.extend(RowError(int(r), column, describe(int(r)))
                                   for r in np.flatnonzero(mask)[:self.max_errors])
            return
        result.bad_rows = mask if result.bad_rows is None else (result.bad_rows | mask)
        for row in np.flatnonzero(mask)[: max(0, self.max_errors - len(result.errors))]:
            result.errors.append(RowError(int(row), column, describe(int(row))))


# ---- the numeric block and its vectorised masks ----------------------------------------------------

def _numbers(plan: CheckPlan, data: Mapping[str, Any], block: Any) -> tuple[Any, dict, dict, dict]:
    """The numeric and boolean columns as float64: (the block or None, the arrays by name in contract
    order, the marks of the values that did not convert and the raw values for messages, by name). The
    block when it is given or converts in one call; else one array per column (stacked by the caller)."""
    import numpy as np

    if block is not None:
        if block.dtype != np.float64 or block.ndim != 2 or block.shape[0] != len(plan.names):
            raise ValueError(f"block must be float64 [{len(plan.names)}, N], got {block.dtype} {block.shape}")
        return block, dict(zip(plan.names, block)), {}, {}
    if not plan.names:
        return None, {}, {}, {}
    try:
        block = np.array([data[name] for name in plan.names], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        block = None
    if block is not None and block.ndim == 2:
        return block, dict(zip(plan.names, block)), {}, {}
    columns, bad, raw = {}, {}, {}
    for c in plan.columns:
        columns[c.name], marks, raw[c.name] = _as_float(data[c.name], c.kind == "boolean")
        if marks is not None:
            bad[c.name] = marks
    return None, columns, bad, raw


def _far_rows(plan: CheckPlan, block: Any, tolerance: float) -> Any:
    """[k, N] mask of values beyond their accepted range, or None when there is none."""
    if not plan.has_ranges:
        return None
    import numpy as np

    lo, hi = plan.bounds(tolerance)
    with np.errstate(invalid="ignore"):
        far = (block < lo) | (block > hi)
    return far if far.any() else None


def _null_rows(plan: CheckPlan, block: Any) -> Any:
    """[k, N] mask of nulls (NaN) in columns that had none in training, or None when there is none."""
    if plan.not_nullable is None:
        return None
    import numpy as np

    nulls = np.isnan(block) & plan.not_nullable
    return nulls if nulls.any() else None


def _same_length(normalized: dict[str, Any]) -> int:
    """The columns' common length; an error naming the first that differs."""
    lengths = [len(v) for v in normalized.values()]
    n = max(lengths, default=0)
    if lengths.count(n) != len(lengths):
        short, k = next((name, k) for name, k in zip(normalized, lengths) if k != n)
        raise InvalidInputError(f"columns of different lengths: {short!r} has {k} value(s), others "
                                f"have {n}; send one value per row in every column.")
    return n


# ---- value conversion -------------------------------------------------------------------------------

def _as_float(values: Any, boolean: bool) -> tuple[Any, Any, Any]:
    """(float64 array with NaN for nulls, mask of unparseable values or None, raw values for messages).

    Numbers and numeric strings take one numpy call; anything else goes through pandas."""
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
