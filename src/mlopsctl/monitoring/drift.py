"""Per-column drift with Evidently-compatible defaults, implemented with scipy.

Reference <= 1000 rows: Kolmogorov-Smirnov (drift when p <= 0.05) for numeric columns with > 5 distinct
values; chi-square (> 2 categories) or a two-proportion Z-test (2 categories) otherwise (p < 0.05).
Reference > 1000 rows: Wasserstein distance normed by the reference std (>= 0.1) for numeric columns,
Jensen-Shannon distance (>= 0.1) otherwise. The data set drifts when >= ``drift_share`` of columns drift.
Every column also gets PSI, an effect size, the share of missing values and of out-of-contract values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mlopsctl.common import jsonable

SMALL_REFERENCE = 1000
MAX_CAT_FOR_NUMERIC = 5
DEFAULT_THRESHOLDS = {"ks": 0.05, "chisquare": 0.05, "ztest": 0.05, "wasserstein": 0.1, "jensenshannon": 0.1,
                      "psi": 0.2}
P_VALUE_METHODS = {"ks", "chisquare", "ztest"}
NUMERIC_ONLY = ("ks", "wasserstein")
CATEGORICAL_METHODS = ("chisquare", "ztest", "jensenshannon", "psi")
PSI_BINS = 10
EPS = 1e-4


@dataclass
class ColumnDrift:
    column: str
    kind: str  # numeric | categorical
    method: str
    statistic: float  # the p-value for p-value tests, the distance otherwise
    threshold: float
    drifted: bool
    effect_size: float  # numeric: normed Wasserstein; categorical: Jensen-Shannon distance
    psi: float
    missing_share: float
    out_of_contract_share: float
    reference_rows: int
    current_rows: int
    histogram: dict[str, Any] = field(default_factory=dict)  # for reports: bins and both frequencies
    reference_missing_share: float = 0.0
    missing_drift: bool = False  # the share of nulls itself moved (counts as drift)


@dataclass
class DriftReport:
    columns: list[ColumnDrift]
    drift_share: float
    threshold_share: float
    drifted: bool
    reference_rows: int
    current_rows: int
    prediction: ColumnDrift | None = None

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def to_dict(self, histograms: bool = False) -> dict[str, Any]:
        def col(c: ColumnDrift) -> dict[str, Any]:
            d = {k: jsonable(v) for k, v in asdict(c).items()}
            if not histograms:
                d.pop("histogram")
            return d

        return {"drifted": self.drifted, "drift_share": self.drift_share, "threshold_share": self.threshold_share,
                "drifted_columns": self.drifted_columns, "reference_rows": self.reference_rows,
                "current_rows": self.current_rows, "columns": [col(c) for c in self.columns],
                "prediction": col(self.prediction) if self.prediction else None}


def default_method(kind: str, reference: np.ndarray, n_ref: int) -> str:
    """Evidently's defaults: by reference size, column kind and (numeric) number of distinct values."""
    if kind == "numeric":
        distinct = len(np.unique(reference[~np.isnan(reference)]))
        if distinct > MAX_CAT_FOR_NUMERIC:
            return "ks" if n_ref <= SMALL_REFERENCE else "wasserstein"
    if n_ref <= SMALL_REFERENCE:
        distinct = len(set(reference[~_isnull(reference)].tolist()))
        return "chisquare" if distinct > 2 else "ztest"
    return "jensenshannon"


def _isnull(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        return np.isnan(a)
    import pandas as pd

    return np.asarray(pd.isna(a)) | (a == "")


def _counts(values: np.ndarray) -> dict[str, int]:
    import pandas as pd

    return pd.Series(values, dtype=object).astype(str).value_counts(sort=False).to_dict()  # hashing, no sort


def _frequencies(ref: np.ndarray, cur: np.ndarray) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Aligned category counts over the union of values (nulls excluded)."""
    cr, cc = _counts(ref), _counts(cur)
    keys = sorted(set(cr) | set(cc))
    fr = np.array([cr.get(k, 0) for k in keys], dtype=float)
    fc = np.array([cc.get(k, 0) for k in keys], dtype=float)
    return keys, fr, fc


def _binned(ref: np.ndarray, cur: np.ndarray) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """A continuous column as frequencies over shared bins (for category tests on numbers, as Evidently)."""
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    fr = np.histogram(ref, edges)[0].astype(float)
    fc = np.histogram(cur, edges)[0].astype(float)
    keep = (fr + fc) > 0
    labels = [f"{edges[i]:.4g}..{edges[i + 1]:.4g}" for i in range(len(edges) - 1)]
    return [lab for lab, k in zip(labels, keep) if k], fr[keep], fc[keep]


def ks(ref: np.ndarray, cur: np.ndarray) -> float:
    from scipy import stats

    return float(stats.ks_2samp(ref, cur).pvalue)


@dataclass
class _Sorted:
    """Both samples sorted once, merged, with each side's CDF at the merged points: what KS, Wasserstein
    and PSI need, without sorting 100,000 values again for each of them."""

    u: np.ndarray  # reference, sorted
    v: np.ndarray  # current, sorted
    merged: np.ndarray
    cdf_u: np.ndarray  # at merged points, side="right" (as scipy)
    cdf_v: np.ndarray

    @classmethod
    def of(cls, ref: np.ndarray, cur: np.ndarray) -> _Sorted:
        u, v = np.sort(ref), np.sort(cur)
        pos = np.searchsorted(v, u, side="left") + np.arange(len(u))  # u's places in the merged order
        merged = np.empty(len(u) + len(v))
        from_u = np.zeros(len(merged), dtype=bool)
        from_u[pos] = True
        merged[pos] = u
        merged[~from_u] = v
        return cls(u, v, merged, np.searchsorted(u, merged, "right") / len(u),
                   np.searchsorted(v, merged, "right") / len(v))

    def ks_pvalue(self) -> float:
        """scipy.stats.ks_2samp's p-value (two-sided, method "auto"), from the shared CDFs."""
        from scipy import stats

        n1, n2 = len(self.u), len(self.v)
        if max(n1, n2) <= 10000:  # scipy's exact mode: cheap at these sizes, use it as is
            return ks(self.u, self.v)
        diffs = self.cdf_u - self.cdf_v
        d = max(float(np.clip(-diffs.min(), 0, 1)), float(diffs.max()))
        m, n = sorted([float(n1), float(n2)], reverse=True)
        return float(np.clip(stats.kstwo.sf(d, np.round(m * n / (m + n))), 0, 1))

    def wasserstein_normed(self) -> float:
        w = float(np.sum(np.abs(self.cdf_u[:-1] - self.cdf_v[:-1]) * np.diff(self.merged)))
        return w / max(float(np.std(self.u)), 1e-3)


def _hist_sorted(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """np.histogram counts for already sorted values (no re-sort)."""
    idx = np.searchsorted(sorted_values, edges, "left")
    idx[-1] = np.searchsorted(sorted_values, edges[-1], "right")
    return np.diff(idx)


def wasserstein_normed(ref: np.ndarray, cur: np.ndarray) -> float:
    """Wasserstein-1 distance divided by the reference std, floored at 0.001 (as Evidently does); the
    same value as ``scipy.stats.wasserstein_distance``."""
    return _Sorted.of(np.asarray(ref, dtype=np.float64), np.asarray(cur, dtype=np.float64)).wasserstein_normed()


def chisquare(fr: np.ndarray, fc: np.ndarray) -> float:
    """Evidently's chi-square: observed current counts against reference proportions x current total."""
    from scipy import stats

    expected = fr / fr.sum() * fc.sum()
    # categories unseen in the reference get a tiny expected count instead of dividing by zero
    expected = np.where(expected == 0, EPS * fc.sum(), expected)
    expected = expected * fc.sum() / expected.sum()
    return float(stats.chisquare(fc, expected).pvalue)


def ztest(fr: np.ndarray, fc: np.ndarray) -> float:
    """Two-proportion Z-test on the first category's share (two-sided)."""
    from scipy import stats

    n1, n2 = fr.sum(), fc.sum()
    p1, p2 = fr[0] / n1, fc[0] / n2
    p = (fr[0] + fc[0]) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0 if p1 == p2 else 0.0
    z = (p1 - p2) / se
    return float(2 * stats.norm.sf(abs(z)))


def jensenshannon(fr: np.ndarray, fc: np.ndarray) -> float:
    from scipy.spatial import distance

    return float(distance.jensenshannon(fr / fr.sum(), fc / fc.sum()))


def psi_numeric(ref: np.ndarray, cur: np.ndarray, presorted: bool = False) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """PSI over the reference's deciles (open-ended outer bins)."""
    u, v = (ref, cur) if presorted else (np.sort(ref), np.sort(cur))
    edges = np.unique(np.quantile(u, np.linspace(0, 1, PSI_BINS + 1)))
    if len(edges) < 2:
        edges = np.array([u.min() - 0.5, u.max() + 0.5])
    edges = edges.astype(float)
    edges[0], edges[-1] = -np.inf, np.inf
    pr = _hist_sorted(u, edges) / max(len(u), 1)
    pc = _hist_sorted(v, edges) / max(len(v), 1)
    return _psi(pr, pc), edges, pr, pc


def _psi(pr: np.ndarray, pc: np.ndarray) -> float:
    pr = np.clip(pr, EPS, None)
    pc = np.clip(pc, EPS, None)
    return float(np.sum((pc - pr) * np.log(pc / pr)))


def column_drift(name: str, kind: str, reference: Any, current: Any, *, method: str | None = None,
                 threshold: float | None = None, lo: float | None = None, hi: float | None = None,
                 categories: tuple[str, ...] | None = None) -> ColumnDrift:
    """Drift of one column. ``lo``/``hi`` (numeric) or ``categories`` define "out of contract"."""
    n_ref_all, n_cur_all = len(reference), len(current)
    ref, cur, missing, ooc = _present(kind, reference, current, lo, hi, categories)
    if len(ref) == 0 or len(cur) == 0:
        ref_missing = 1.0 - len(ref) / n_ref_all if n_ref_all else 0.0
        missing_drift = _missing_drift(ref_missing, n_ref_all, missing, n_cur_all)
        return ColumnDrift(name, kind, method or "none", math.nan, threshold or 0.0, missing_drift, math.nan,
                           math.nan, missing, ooc, len(ref), len(cur), {}, ref_missing, missing_drift)
    if kind != "numeric" and method in NUMERIC_ONLY:
        from mlopsctl.errors import ConfigError

        raise ConfigError(f"monitor.stattest.{name} = {method!r} needs numbers, but {name!r} is categorical; "
                          f"use one of {', '.join(CATEGORICAL_METHODS)}.")
    method = method or default_method(kind, ref if kind == "numeric" else ref.astype(object), n_ref_all)
    threshold = DEFAULT_THRESHOLDS[method] if threshold is None else threshold
    as_categories = kind != "numeric" or method in ("chisquare", "ztest", "jensenshannon")
    if as_categories:
        low_cardinality = kind != "numeric" or len(np.unique(ref)) <= MAX_CAT_FOR_NUMERIC
        keys, fr, fc = _frequencies(ref, cur) if low_cardinality else _binned(ref, cur)
        histogram = {"categories": keys[:50], "reference": (fr / fr.sum()).tolist()[:50],
                     "current": (fc / fc.sum()).tolist()[:50]}
        psi = _psi(fr / fr.sum(), fc / fc.sum())
        effect = jensenshannon(fr, fc)
    else:
        srt = _Sorted.of(ref, cur)
        psi, edges, pr, pc = psi_numeric(srt.u, srt.v, presorted=True)
        lo_e, hi_e = float(min(ref.min(), cur.min())), float(max(ref.max(), cur.max()))
        bins = np.linspace(lo_e, hi_e if hi_e > lo_e else lo_e + 1, 21)
        histogram = {"edges": bins.tolist(), "reference": (_hist_sorted(srt.u, bins) / len(ref)).tolist(),
                     "current": (_hist_sorted(srt.v, bins) / len(cur)).tolist()}
        effect = srt.wasserstein_normed()
    if method == "ks":
        stat = srt.ks_pvalue() if not as_categories else ks(ref, cur)
    elif method == "wasserstein":
        stat = effect if not as_categories else wasserstein_normed(ref.astype(float), cur.astype(float))
    elif method == "chisquare":
        stat = chisquare(fr, fc)
    elif method == "ztest":
        stat = ztest(fr, fc) if len(fr) <= 2 else chisquare(fr, fc)
    elif method == "jensenshannon":
        stat = effect
    else:  # psi
        stat = psi
    drifted = stat <= threshold if method == "ks" else stat < threshold if method in P_VALUE_METHODS else stat >= threshold
    ref_missing = 1.0 - len(ref) / n_ref_all if n_ref_all else 0.0
    missing_drift = _missing_drift(ref_missing, n_ref_all, missing, n_cur_all)
    return ColumnDrift(name, "numeric" if kind == "numeric" else "categorical", method, stat, threshold,
                       bool(drifted or missing_drift), effect, psi, missing, ooc, len(ref), len(cur), histogram,
                       ref_missing, missing_drift)


def _present(kind: str, reference: Any, current: Any, lo: float | None, hi: float | None,
             categories: tuple[str, ...] | None) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(non-null reference values, non-null current values, the current share of nulls, the current share
    out of contract): numbers as float64, anything else as text."""
    if kind == "numeric":
        ref_all = np.asarray(reference, dtype=np.float64)
        cur_all = np.asarray(current, dtype=np.float64)
        ref, cur = ref_all[~np.isnan(ref_all)], cur_all[~np.isnan(cur_all)]
        missing = float(np.isnan(cur_all).mean()) if len(cur_all) else 0.0
        ooc = float(((cur < lo) | (cur > hi)).sum() / max(len(cur_all), 1)) if lo is not None and hi is not None else 0.0
        return ref, cur, missing, ooc
    ref_all = np.asarray(reference, dtype=object)
    cur_all = np.asarray(current, dtype=object)
    rn, cn = _isnull(ref_all), _isnull(cur_all)
    ref, cur = ref_all[~rn].astype(str), cur_all[~cn].astype(str)
    missing = float(cn.mean()) if len(cur_all) else 0.0
    ooc = float(np.isin(cur, list(categories), invert=True).sum() / max(len(cur_all), 1)) if categories else 0.0
    return ref, cur, missing, ooc


def _missing_drift(p_ref: float, n_ref: int, p_cur: float, n_cur: int) -> bool:
    """The share of nulls moved: a two-proportion Z-test (p < 0.05) for a reference of <= 1000 rows,
    an absolute change of at least 0.1 above that (the same split as the value tests)."""
    if n_cur == 0 or n_ref == 0 or p_ref == p_cur:
        return False
    if n_ref > SMALL_REFERENCE:
        return abs(p_cur - p_ref) >= 0.1
    fr = np.array([p_ref * n_ref, (1 - p_ref) * n_ref])
    fc = np.array([p_cur * n_cur, (1 - p_cur) * n_cur])
    return ztest(fr, fc) < 0.05


def dataset_drift(contract: Any, reference: dict[str, Any], current: dict[str, Any], *, drift_share: float = 0.5,
                  methods: dict[str, str] | None = None, thresholds: dict[str, float] | None = None,
                  range_tolerance: float = 0.0) -> DriftReport:
    """Drift of every contract column between two column mappings (reference sample vs logged inputs)."""
    methods, thresholds = methods or {}, thresholds or {}
    cols = []
    for c in contract.columns:
        kind = "numeric" if c.kind in ("numeric", "boolean") else "categorical"
        lo = hi = None
        if c.kind == "numeric" and c.min is not None and c.max is not None:
            span = (c.max - c.min) * range_tolerance
            lo, hi = c.min - span, c.max + span
        cols.append(column_drift(c.name, kind, reference[c.name], current[c.name], method=methods.get(c.name),
                                 threshold=thresholds.get(c.name), lo=lo, hi=hi, categories=c.categories))
    n_drifted = sum(c.drifted for c in cols)
    share = n_drifted / len(cols) if cols else 0.0
    n_ref = len(next(iter(reference.values()))) if reference else 0
    n_cur = len(next(iter(current.values()))) if current else 0
    return DriftReport(cols, share, drift_share, share >= drift_share, n_ref, n_cur)
