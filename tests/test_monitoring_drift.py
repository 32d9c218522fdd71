"""Drift statistics (issue 6), pure: `mlopsctl.monitoring.drift` on synthetic reference/current pairs.

Both size regimes (reference <= 1000 rows: KS / chi-square / Z-test; larger: normed Wasserstein /
Jensen-Shannon), every method, known shifts (mean shift, new category, more nulls) detected and identical
distributions not flagged, every statistic cross-checked against scipy directly (``ks_2samp``,
``chisquare``, ``wasserstein_distance``, ``jensenshannon``) or computed by hand (two-proportion Z-test,
PSI), the thresholds' inclusive/exclusive edges, per-column overrides from ``.mlops.toml``
``[monitor] stattest/threshold`` and the data set rule (>= ``drift_share`` of columns).

Where Evidently's definition is the reference (its ``stattests`` package: ``wasserstein_distance_norm``,
``jensenshannon``, ``registry._get_default_stattest``) the test says so in its docstring.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from mlopsctl.contract import ColumnSpec, Contract
from mlopsctl.monitoring import drift as D

SMALL, LARGE = 800, 5000  # reference sizes of the two regimes
CURRENT = 3000
REGIMES = {
    "small": {"n_ref": SMALL, "numeric": "ks", "categorical": "chisquare", "binary": "ztest"},
    "large": {"n_ref": LARGE, "numeric": "wasserstein", "categorical": "jensenshannon", "binary": "jensenshannon"},
}


# ---- helpers ------------------------------------------------------------------------------------------

def normal(seed: int, n: int, mean: float = 10.0, sd: float = 2.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, sd, n)


def cats(counts: dict[str, int], seed: int = 0) -> np.ndarray:
    """Exactly these category counts, shuffled (object array, as the service passes categoricals)."""
    values = np.array([k for k, n in counts.items() for _ in range(n)], dtype=object)
    np.random.default_rng(seed).shuffle(values)
    return values


def scaled(props: dict[str, float], n: int) -> dict[str, int]:
    """Category counts with exactly these proportions of ``n`` (rounding goes to the first key)."""
    out = {k: int(round(p * n)) for k, p in props.items()}
    first = next(iter(out))
    out[first] += n - sum(out.values())
    return out


def with_nulls(values: np.ndarray, share: float, seed: int) -> np.ndarray:
    out = values.astype(object if values.dtype == object else np.float64).copy()
    idx = np.random.default_rng(seed).choice(len(out), int(round(share * len(out))), replace=False)
    out[idx] = None if out.dtype == object else np.nan
    return out


def contract(*specs: tuple[str, str, dict[str, Any]]) -> Contract:
    return Contract(target="y", task="classification",
                    columns=tuple(ColumnSpec(name, kind, "float64" if kind != "categorical" else "object", **kw)
                                  for name, kind, kw in specs))


def psi_by_hand(ref: np.ndarray, cur: np.ndarray) -> float:
    """Textbook PSI on the reference's deciles (open-ended outer bins), empty bins floored at 1e-4."""
    inner = np.unique(np.quantile(ref, np.linspace(0, 1, 11)))[1:-1]
    pr = np.bincount(np.searchsorted(inner, ref, side="right"), minlength=len(inner) + 1) / len(ref)
    pc = np.bincount(np.searchsorted(inner, cur, side="right"), minlength=len(inner) + 1) / len(cur)
    pr, pc = np.maximum(pr, 1e-4), np.maximum(pc, 1e-4)
    return float(sum((c - r) * math.log(c / r) for r, c in zip(pr, pc)))


def counts_over(keys: list[str], values: np.ndarray) -> np.ndarray:
    return np.array([int((values == k).sum()) for k in keys], dtype=np.float64)


# ---- which test runs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, values, n_ref, method", [
    ("numeric", "continuous", 1000, "ks"),           # <= 1000 rows: small regime (boundary included)
    ("numeric", "continuous", 1001, "wasserstein"),  # > 1000 rows: large regime
    ("numeric", "six", 1000, "ks"),                  # > 5 distinct values: a numeric test
    ("numeric", "five", 1000, "chisquare"),          # <= 5 distinct values and > 2: chi-square
    ("numeric", "two", 1000, "ztest"),               # 2 values (e.g. a boolean): Z-test
    ("numeric", "five", 1001, "jensenshannon"),
    ("numeric", "two", 1001, "jensenshannon"),
    ("categorical", "three", 1000, "chisquare"),
    ("categorical", "two", 1000, "ztest"),
    ("categorical", "three", 1001, "jensenshannon"),
    ("categorical", "two", 1001, "jensenshannon"),
])
def test_default_method_by_regime_kind_and_distinct_values(kind: str, values: str, n_ref: int, method: str) -> None:
    rng = np.random.default_rng(1)
    pools = {"continuous": None, "six": [0, 1, 2, 3, 4, 5], "five": [0, 1, 2, 3, 4], "two": [0, 1],
             "three": ["a", "b", "c"]}
    if kind == "categorical":
        pool = ["yes", "no"] if values == "two" else pools[values]
        ref, cur = rng.choice(pool, n_ref).astype(object), rng.choice(pool, 300).astype(object)
    elif values == "continuous":
        ref, cur = rng.normal(size=n_ref), rng.normal(size=300)
    else:
        ref, cur = rng.choice(pools[values], n_ref).astype(float), rng.choice(pools[values], 300).astype(float)
    result = D.column_drift("c", kind, ref, cur)
    assert result.method == method
    assert result.threshold == {"ks": 0.05, "chisquare": 0.05, "ztest": 0.05, "wasserstein": 0.1,
                                "jensenshannon": 0.1}[method]
    assert result.reference_rows == n_ref and result.current_rows == 300


# ---- known shifts detected, identical distributions not flagged (both regimes) ------------------------

@pytest.mark.parametrize("regime", REGIMES)
def test_mean_shift_detected_and_identical_numeric_not_flagged(regime: str) -> None:
    r = REGIMES[regime]
    ref = normal(1, r["n_ref"])
    shifted = D.column_drift("x", "numeric", ref, normal(2, CURRENT, mean=11.0))  # +0.5 sd
    same = D.column_drift("x", "numeric", ref, normal(7, CURRENT))
    assert shifted.method == same.method == r["numeric"]
    assert shifted.drifted is True and same.drifted is False
    if regime == "small":
        assert shifted.statistic < 1e-12 and same.statistic > 0.05
    else:
        assert shifted.statistic == pytest.approx(0.5, abs=0.06)  # the shift in reference sds
        assert same.statistic < 0.05
    # the effect size is the normed Wasserstein distance in both regimes
    assert shifted.effect_size == pytest.approx(0.5, abs=0.06) and same.effect_size < 0.05
    assert shifted.psi > 0.1 > same.psi


@pytest.mark.parametrize("regime", REGIMES)
def test_new_category_detected_and_identical_categorical_not_flagged(regime: str) -> None:
    r = REGIMES[regime]
    props = {"a": 0.5, "b": 0.3, "c": 0.2}
    ref = cats(scaled(props, r["n_ref"]), seed=1)
    new = cats({**scaled(props, 2100), "d": 900}, seed=2)  # 30 % of a category never seen in training
    same = cats(scaled(props, CURRENT), seed=3)  # exactly the reference proportions
    got_new = D.column_drift("plan", "categorical", ref, new, categories=("a", "b", "c"))
    got_same = D.column_drift("plan", "categorical", ref, same, categories=("a", "b", "c"))
    assert got_new.method == got_same.method == r["categorical"]
    assert got_new.drifted is True and got_same.drifted is False
    assert got_new.out_of_contract_share == pytest.approx(0.3) and got_same.out_of_contract_share == 0.0
    if regime == "small":
        assert got_new.statistic < 1e-12 and got_same.statistic == pytest.approx(1.0)
    else:
        assert got_new.statistic > 0.3 and got_same.statistic == pytest.approx(0.0, abs=1e-7)
    assert got_new.histogram["categories"] == ["a", "b", "c", "d"]
    assert got_new.histogram["reference"][3] == 0.0 and got_new.histogram["current"][3] == pytest.approx(0.3)


@pytest.mark.parametrize("regime", REGIMES)
def test_new_value_in_a_binary_column_detected(regime: str) -> None:
    """A two-valued column (Z-test when small) that gets a third value: detected, whatever the test."""
    r = REGIMES[regime]
    ref = cats(scaled({"yes": 0.4, "no": 0.6}, r["n_ref"]), seed=1)
    cur = cats({**scaled({"yes": 0.4, "no": 0.6}, 2400), "maybe": 600}, seed=2)
    same = cats(scaled({"yes": 0.4, "no": 0.6}, CURRENT), seed=3)
    got = D.column_drift("flag", "categorical", ref, cur, categories=("no", "yes"))
    assert got.drifted is True and got.out_of_contract_share == pytest.approx(0.2)
    got_same = D.column_drift("flag", "categorical", ref, same, categories=("no", "yes"))
    assert got_same.method == r["binary"] and got_same.drifted is False


@pytest.mark.parametrize("regime", REGIMES)
def test_more_nulls_reported_as_missing_share(regime: str) -> None:
    r = REGIMES[regime]
    ref = with_nulls(normal(1, r["n_ref"]), 0.05, seed=1)
    cur = with_nulls(normal(2, CURRENT), 0.40, seed=2)
    got = D.column_drift("x", "numeric", ref, cur)
    assert got.missing_share == pytest.approx(0.40)
    assert got.current_rows == int(CURRENT * 0.6)  # the tests compare the non-null values
    assert got.reference_rows == int(r["n_ref"] * 0.95)
    ref_c = with_nulls(cats(scaled({"a": 0.5, "b": 0.5}, r["n_ref"]), 1), 0.05, seed=1)
    cur_c = with_nulls(cats(scaled({"a": 0.5, "b": 0.5}, CURRENT), 2), 0.40, seed=2)
    assert D.column_drift("c", "categorical", ref_c, cur_c).missing_share == pytest.approx(0.40)


@pytest.mark.parametrize("regime", REGIMES)
def test_more_nulls_detected_as_drift(regime: str) -> None:
    """Issue 6: "known shifts (mean shift, new category, more nulls) detected". A column whose null share
    jumps from 5 % to 40 % (non-null values unchanged) must be flagged; only reporting the current missing
    share (without the reference's) leaves the surge undetected by the drift verdict and the trigger."""
    r = REGIMES[regime]
    c = contract(("x", "numeric", {"null_rate": 0.05}),
                 ("c", "categorical", {"null_rate": 0.05, "categories": ("a", "b")}))
    reference = {"x": with_nulls(normal(1, r["n_ref"]), 0.05, seed=1),
                 "c": with_nulls(cats(scaled({"a": 0.5, "b": 0.5}, r["n_ref"]), 1), 0.05, seed=1)}
    current = {"x": with_nulls(normal(2, CURRENT), 0.40, seed=2),
               "c": with_nulls(cats(scaled({"a": 0.5, "b": 0.5}, CURRENT), 2), 0.40, seed=2)}
    report = D.dataset_drift(c, reference, current)
    assert [col.missing_share for col in report.columns] == [pytest.approx(0.4), pytest.approx(0.4)]
    assert report.drifted_columns == ["x", "c"]


def test_unchanged_data_set_not_flagged_in_either_regime() -> None:
    """Ten columns drawn from the same generators: no column and not the data set."""
    for n_ref in (SMALL, LARGE):
        specs, ref, cur = [], {}, {}
        for i in range(5):
            specs.append((f"n{i}", "numeric", {}))
            ref[f"n{i}"], cur[f"n{i}"] = normal(10 + i, n_ref, mean=i), normal(20 + i, CURRENT, mean=i)
            specs.append((f"c{i}", "categorical", {"categories": ("a", "b", "c")}))
            ref[f"c{i}"] = cats(scaled({"a": 0.2, "b": 0.3, "c": 0.5}, n_ref), seed=i)
            cur[f"c{i}"] = cats(scaled({"a": 0.2, "b": 0.3, "c": 0.5}, CURRENT), seed=10 + i)
        report = D.dataset_drift(contract(*specs), ref, cur)
        assert report.drifted_columns == [] and report.drift_share == 0.0 and report.drifted is False
        assert report.reference_rows == n_ref and report.current_rows == CURRENT


# ---- cross-checks against scipy / by hand -------------------------------------------------------------

def test_ks_is_scipy_ks_2samp_on_non_null_values() -> None:
    ref = with_nulls(normal(1, SMALL), 0.1, seed=5)
    cur = with_nulls(normal(2, 700, mean=10.3), 0.2, seed=6)
    got = D.column_drift("x", "numeric", ref, cur)
    r, c = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    assert got.method == "ks"
    assert got.statistic == pytest.approx(stats.ks_2samp(r, c).pvalue, rel=1e-12)
    assert got.drifted is (got.statistic <= 0.05)
    assert got.effect_size == pytest.approx(stats.wasserstein_distance(r, c) / np.std(r), rel=1e-12)
    assert got.psi == pytest.approx(psi_by_hand(r, c), rel=1e-9)


def test_chisquare_is_scipy_chisquare_against_reference_proportions() -> None:
    """Evidently's chi-square: observed current counts vs reference counts scaled to the current total."""
    ref = cats({"a": 400, "b": 250, "c": 100, "d": 50}, seed=1)
    cur = cats({"a": 330, "b": 260, "c": 130, "d": 80}, seed=2)
    got = D.column_drift("c", "categorical", ref, cur)
    keys = ["a", "b", "c", "d"]
    fr, fc = counts_over(keys, ref), counts_over(keys, cur)
    expected = stats.chisquare(fc, fr * fc.sum() / fr.sum()).pvalue
    assert got.method == "chisquare"
    assert got.statistic == pytest.approx(expected, rel=1e-9)
    assert got.statistic < 0.05 and got.drifted is True
    assert got.effect_size == pytest.approx(distance.jensenshannon(fr / fr.sum(), fc / fc.sum()), rel=1e-9)
    pr, pc = fr / fr.sum(), fc / fc.sum()
    assert got.psi == pytest.approx(float(np.sum((pc - pr) * np.log(pc / pr))), rel=1e-9)


def test_chisquare_with_a_category_unseen_in_the_reference_is_finite_and_flags_drift() -> None:
    """scipy would divide by a zero expected count here; the p-value must stay a number (and no warning,
    since warnings are errors in this suite)."""
    ref = cats({"a": 400, "b": 300, "c": 100}, seed=1)
    cur = cats({"a": 390, "b": 300, "c": 100, "z": 10}, seed=2)
    got = D.column_drift("c", "categorical", ref, cur, categories=("a", "b", "c"))
    assert got.method == "chisquare" and math.isfinite(got.statistic)
    assert got.statistic < 1e-6 and got.drifted is True
    assert got.out_of_contract_share == pytest.approx(10 / 800)


def test_ztest_is_the_pooled_two_proportion_z_test() -> None:
    ref = cats({"no": 420, "yes": 180}, seed=1)  # 30 % yes
    cur = cats({"no": 310, "yes": 190}, seed=2)  # 38 % yes
    got = D.column_drift("flag", "categorical", ref, cur)
    n1, n2 = 600, 500
    p1, p2 = 420 / n1, 310 / n2
    pooled = (420 + 310) / (n1 + n2)
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert got.method == "ztest"
    assert got.statistic == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)
    assert got.statistic == pytest.approx(0.005169, rel=1e-3)  # z = 2.796
    assert got.drifted is True
    # symmetric: the same p-value whichever category is counted
    flipped = D.column_drift("flag", "categorical", np.where(ref == "no", "zz", ref).astype(object),
                             np.where(cur == "no", "zz", cur).astype(object))
    assert flipped.statistic == pytest.approx(got.statistic, rel=1e-12)


def test_ztest_on_a_boolean_column_counts_values_not_strings() -> None:
    ref = np.array([1.0] * 300 + [0.0] * 300)
    cur = np.array([1.0] * 300 + [0.0] * 100)
    got = D.column_drift("b", "numeric", ref, cur)
    pooled = 600 / 1000
    z = (0.5 - 0.75) / math.sqrt(pooled * (1 - pooled) * (1 / 600 + 1 / 400))
    assert got.method == "ztest"
    assert got.statistic == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)


def test_wasserstein_is_scipy_distance_normed_by_reference_std() -> None:
    ref = with_nulls(normal(1, LARGE, mean=50, sd=8), 0.02, seed=3)
    cur = normal(2, CURRENT, mean=51.2, sd=9)
    got = D.column_drift("x", "numeric", ref, cur)
    r = ref[~np.isnan(ref)]
    expected = stats.wasserstein_distance(r, cur) / np.std(r)
    assert got.method == "wasserstein"
    assert got.statistic == pytest.approx(expected, rel=1e-12) == got.effect_size
    assert got.statistic > 0.1 and got.drifted is True
    assert got.psi == pytest.approx(psi_by_hand(r, cur), rel=1e-9)


def test_wasserstein_norm_is_floored_at_0_001_like_evidently() -> None:
    """Evidently's ``_wasserstein_distance_norm`` divides by ``max(np.std(reference), 0.001)``. A column on a
    tiny scale (std 1e-4) moved by 1e-5 is a normed distance of 0.01 there: not drift. Dividing by the raw
    std (only a zero std is replaced) makes it 0.1 and flags it."""
    ref = normal(4, LARGE, mean=0.0, sd=1e-4)
    cur = ref + 1e-5
    got = D.column_drift("tiny", "numeric", ref, cur)
    expected = stats.wasserstein_distance(ref, cur) / max(float(np.std(ref)), 0.001)
    assert got.statistic == pytest.approx(expected, rel=1e-9)
    assert got.drifted is False


def test_jensenshannon_is_scipy_distance_over_the_union_of_categories() -> None:
    ref = cats({"north": 1500, "south": 1500, "east": 1000, "west": 1000}, seed=1)
    cur = cats({"north": 1200, "south": 1300, "east": 300, "west": 900, "mars": 300}, seed=2)
    got = D.column_drift("region", "categorical", ref, cur)
    keys = sorted(["north", "south", "east", "west", "mars"])
    fr, fc = counts_over(keys, ref), counts_over(keys, cur)
    expected = distance.jensenshannon(fr / fr.sum(), fc / fc.sum())  # natural log, like Evidently
    assert got.method == "jensenshannon"
    assert got.statistic == pytest.approx(expected, rel=1e-12) == got.effect_size
    assert got.statistic >= 0.1 and got.drifted is True


def test_jensenshannon_on_a_five_valued_numeric_column_compares_value_frequencies() -> None:
    ref = np.random.default_rng(1).choice([1.0, 2.0, 3.0, 4.0, 5.0], LARGE, p=[0.1, 0.2, 0.4, 0.2, 0.1])
    cur = np.random.default_rng(2).choice([1.0, 2.0, 3.0, 4.0, 5.0], CURRENT, p=[0.3, 0.3, 0.2, 0.1, 0.1])
    got = D.column_drift("stars", "numeric", ref, cur)
    keys = [1.0, 2.0, 3.0, 4.0, 5.0]
    fr = np.array([(ref == k).sum() for k in keys], float)
    fc = np.array([(cur == k).sum() for k in keys], float)
    assert got.method == "jensenshannon"
    assert got.statistic == pytest.approx(distance.jensenshannon(fr / fr.sum(), fc / fc.sum()), rel=1e-12)
    assert got.drifted is True


def test_psi_method_on_a_numeric_column_is_the_decile_psi() -> None:
    ref, cur = normal(1, SMALL), normal(2, CURRENT, mean=10.8, sd=2.5)
    got = D.column_drift("x", "numeric", ref, cur, method="psi")
    assert got.method == "psi" and got.threshold == D.DEFAULT_THRESHOLDS["psi"]
    assert got.statistic == pytest.approx(psi_by_hand(ref, cur), rel=1e-9) == got.psi
    assert got.drifted is (got.statistic >= got.threshold)


def test_psi_of_a_categorical_column_floors_empty_categories() -> None:
    ref = cats({"a": 600, "b": 400}, seed=1)
    cur = cats({"a": 500, "b": 300, "c": 200}, seed=2)
    got = D.column_drift("c", "categorical", ref, cur, method="psi")
    pr, pc = np.array([0.6, 0.4, 1e-4]), np.array([0.5, 0.3, 0.2])
    assert got.statistic == pytest.approx(float(np.sum((pc - pr) * np.log(pc / pr))), rel=1e-9)
    assert got.drifted is True


def test_missing_and_out_of_contract_shares_are_over_all_current_rows() -> None:
    ref = normal(1, SMALL)
    cur = np.concatenate([normal(2, 80), [np.nan] * 10, [100.0] * 6, [-100.0] * 4])
    got = D.column_drift("x", "numeric", ref, cur, lo=0.0, hi=20.0)
    assert got.missing_share == pytest.approx(0.10)
    assert got.out_of_contract_share == pytest.approx(0.10)
    cat_cur = np.array(["a"] * 70 + [None] * 5 + [""] * 5 + ["zzz"] * 20, dtype=object)
    got_c = D.column_drift("c", "categorical", cats({"a": 50, "b": 50}), cat_cur, categories=("a", "b"))
    assert got_c.missing_share == pytest.approx(0.10)  # None and "" are both missing
    assert got_c.out_of_contract_share == pytest.approx(0.20)


def test_all_null_current_column_is_missing_drift_and_serializes_as_null() -> None:
    """No values to compare (statistic null), but a column that went from 0 % to 100 % null has drifted."""
    c = contract(("x", "numeric", {}))
    report = D.dataset_drift(c, {"x": normal(1, 100)}, {"x": np.full(50, np.nan)})
    col = report.to_dict()["columns"][0]
    assert col["drifted"] is True and col["missing_drift"] is True
    assert col["missing_share"] == 1.0 and col["reference_missing_share"] == 0.0
    assert col["statistic"] is None and col["psi"] is None and col["current_rows"] == 0


# ---- thresholds: which side is drift --------------------------------------------------------------------

def test_threshold_edges_ks_inclusive_chisquare_and_ztest_exclusive_distances_inclusive() -> None:
    """Evidently: KS drifts at p <= threshold, chi-square and Z at p < threshold, distances at >= threshold."""
    ref, cur = normal(1, SMALL), normal(2, 600, mean=10.2)
    p = D.column_drift("x", "numeric", ref, cur).statistic
    assert D.column_drift("x", "numeric", ref, cur, threshold=p).drifted is True
    assert D.column_drift("x", "numeric", ref, cur, threshold=p * 0.999).drifted is False
    cref, ccur = cats({"a": 300, "b": 300, "c": 200}), cats({"a": 280, "b": 300, "c": 220}, seed=1)
    pc = D.column_drift("c", "categorical", cref, ccur).statistic
    assert D.column_drift("c", "categorical", cref, ccur, threshold=pc).drifted is False
    assert D.column_drift("c", "categorical", cref, ccur, threshold=pc * 1.001).drifted is True
    zref, zcur = cats({"a": 300, "b": 300}), cats({"a": 280, "b": 320}, seed=1)
    pz = D.column_drift("z", "categorical", zref, zcur).statistic
    assert D.column_drift("z", "categorical", zref, zcur, threshold=pz).drifted is False
    wref, wcur = normal(1, LARGE), normal(2, CURRENT, mean=10.1)
    w = D.column_drift("x", "numeric", wref, wcur).statistic
    assert D.column_drift("x", "numeric", wref, wcur, threshold=w).drifted is True
    assert D.column_drift("x", "numeric", wref, wcur, threshold=w * 1.001).drifted is False


# ---- the data set rule ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n_shifted, drift_share, drifted", [
    (0, 0.5, False), (1, 0.5, False), (2, 0.5, True), (3, 0.5, True), (4, 0.5, True),
    (2, 0.75, False), (3, 0.75, True), (1, 0.25, True),
])
def test_data_set_drifts_when_share_of_drifted_columns_reaches_drift_share(n_shifted: int, drift_share: float,
                                                                           drifted: bool) -> None:
    names = ["a", "b", "c", "d"]
    c = contract(*[(n, "numeric", {}) for n in names])
    ref = {n: normal(i, SMALL) for i, n in enumerate(names)}
    cur = {n: normal(10 + i, 1000, mean=12.0 if i < n_shifted else 10.0) for i, n in enumerate(names)}
    report = D.dataset_drift(c, ref, cur, drift_share=drift_share)
    assert report.drifted_columns == names[:n_shifted]
    assert report.drift_share == n_shifted / 4
    assert report.drifted is drifted and report.threshold_share == drift_share
    d = report.to_dict()
    assert d["drifted"] is drifted and d["drifted_columns"] == names[:n_shifted]
    assert "histogram" not in d["columns"][0] and "histogram" in report.to_dict(histograms=True)["columns"][0]


def test_boolean_contract_columns_are_tested_as_numbers_and_ranges_use_the_tolerance() -> None:
    c = contract(("flag", "boolean", {}), ("x", "numeric", {"min": 0.0, "max": 10.0}))
    ref = {"flag": np.array([0.0, 1.0] * 300), "x": np.linspace(0, 10, 600)}
    cur = {"flag": np.array([0.0, 1.0] * 200), "x": np.array([5.0] * 380 + [14.0] * 10 + [25.0] * 10)}
    strict = D.dataset_drift(c, ref, cur)
    tolerant = D.dataset_drift(c, ref, cur, range_tolerance=0.5)  # [-5, 15]
    assert strict.columns[0].method == "ztest" and strict.columns[0].kind == "numeric"
    assert strict.columns[0].statistic == pytest.approx(1.0)
    assert strict.columns[1].out_of_contract_share == pytest.approx(20 / 400)
    assert tolerant.columns[1].out_of_contract_share == pytest.approx(10 / 400)


# ---- per-column overrides from .mlops.toml ------------------------------------------------------------------

def _settings(tmp_path: Path, monitor: str):
    from mlopsctl.config import load_settings

    (tmp_path / ".mlops.toml").write_text("[monitor]\n" + monitor)
    return load_settings({}, {}, tmp_path)


def test_per_column_stattest_and_threshold_from_mlops_toml(tmp_path: Path) -> None:
    s = _settings(tmp_path, 'drift_share = 0.3\n'
                            'stattest = { x = "psi", y = "wasserstein", c = "jensenshannon" }\n'
                            'threshold = { x = 5.0, y = 0.9, z = 1e-300 }\n')
    assert s.monitor.stattest == {"x": "psi", "y": "wasserstein", "c": "jensenshannon"}
    assert s.monitor.threshold == {"x": 5.0, "y": 0.9, "z": 1e-300}
    c = contract(("x", "numeric", {}), ("y", "numeric", {}), ("z", "numeric", {}), ("c", "categorical", {}),
                 ("w", "numeric", {}))
    ref = {"x": normal(1, SMALL), "y": normal(2, SMALL), "z": normal(3, SMALL),
           "c": cats({"a": 400, "b": 400}), "w": normal(4, SMALL)}
    cur = {k: normal(10 + i, 1000, mean=11.5) for i, k in enumerate(["x", "y", "z", "w"])}
    cur["c"] = cats({"a": 300, "b": 700}, seed=1)
    report = D.dataset_drift(c, ref, cur, drift_share=s.monitor.drift_share, methods=s.monitor.stattest,
                             thresholds=s.monitor.threshold)
    by = {col.column: col for col in report.columns}
    assert (by["x"].method, by["x"].threshold) == ("psi", 5.0)
    assert by["x"].statistic == pytest.approx(psi_by_hand(ref["x"], cur["x"]), rel=1e-9)
    assert by["x"].drifted is False  # PSI ~1.2 but the column's threshold is 5
    assert (by["y"].method, by["y"].threshold) == ("wasserstein", 0.9)  # forced in the small regime
    assert by["y"].statistic == pytest.approx(stats.wasserstein_distance(ref["y"], cur["y"]) / np.std(ref["y"]))
    assert by["y"].drifted is False  # ~0.75 sd < 0.9
    assert (by["z"].method, by["z"].threshold) == ("ks", 1e-300)
    assert by["z"].drifted is False  # p ~1e-60 is not <= 1e-300
    assert (by["c"].method, by["c"].threshold) == ("jensenshannon", 0.1) and by["c"].drifted is True
    assert (by["w"].method, by["w"].threshold) == ("ks", 0.05) and by["w"].drifted is True
    assert report.drifted_columns == ["c", "w"] and report.drift_share == 0.4 and report.drifted is True


def test_mlops_toml_rejects_unknown_stattest_and_negative_threshold(tmp_path: Path) -> None:
    from mlopsctl.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        _settings(tmp_path, 'stattest = { x = "kolmogorov" }\n')
    assert e.value.message == ("monitor.stattest.x must be one of ks, chisquare, ztest, wasserstein, jensenshannon, "
                               "psi; got 'kolmogorov'.")
    with pytest.raises(ConfigError) as e:
        _settings(tmp_path, "threshold = { x = -0.1 }\n")
    assert e.value.message == "monitor.threshold.x must be a non-negative number, got -0.1."
    with pytest.raises(ConfigError) as e:
        _settings(tmp_path, "drift_share = 0\n")
    assert e.value.message == "monitor.drift_share must be in (0, 1], got 0.0."


def test_jensenshannon_override_on_a_continuous_column_bins_it() -> None:
    """``stattest = { income = "jensenshannon" }`` is allowed on a numeric column (Evidently bins numeric
    data for it). Comparing raw float values as categories makes any two continuous samples look totally
    different (distance ~0.83 = sqrt(ln 2)), so identical distributions are flagged."""
    ref, cur = normal(1, LARGE), normal(2, CURRENT)
    got = D.column_drift("income", "numeric", ref, cur, method="jensenshannon")
    assert got.method == "jensenshannon"
    assert got.drifted is False and got.statistic < 0.1


def test_a_numeric_only_method_on_a_categorical_column_is_a_clear_error() -> None:
    """``stattest = { plan = "wasserstein" }`` on a categorical column: the config accepts it, then the drift
    check dies with numpy's "could not convert string to float" (exit 1 in the CLI). Expected: an
    InvalidInputError/ConfigError that names the column and the methods its kind allows."""
    from mlopsctl.errors import MlopsError

    ref, cur = cats({"a": 300, "b": 300}), cats({"a": 200, "b": 400}, seed=1)
    with pytest.raises(MlopsError, match="plan"):
        D.column_drift("plan", "categorical", ref, cur, method="wasserstein")
