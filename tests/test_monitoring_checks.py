"""`mlopsctl monitor drift` (monitoring/checks.py, window.py): drift of logged traffic against the reference sample,
small and large references, per-column overrides, windows, errors."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest
from scipy import stats

from monitoring_helpers import (
    BC, CH, BC_TARGET, CH_TARGET, MIN_ROWS_MSG, frame,
    records, send, reference_of, numbers, churn_shifted, set_logged_at, utcnow, events,
)


# ---- drift ------------------------------------------------------------------------------------------------

def test_drift_small_reference_detects_shifted_churn_columns(monitor_copy, monitor_server, cli) -> None:
    p = monitor_copy("ch")
    server = monitor_server(p, f"{CH}@production")
    df = churn_shifted(p, 300, seed=7)
    send(server, records(df, CH_TARGET), batch=10)

    result = cli("monitor", "drift", f"{CH}@production", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["model"], out["version"]) == (CH, 1)
    assert out["window"] == {"since": "24h", "last": None, "rows": 300}
    assert (out["reference_rows"], out["current_rows"], out["threshold_share"]) == (1000, 300, 0.5)
    by = {c["column"]: c for c in out["columns"]}
    assert {c: by[c]["method"] for c in by} == {
        "tenure_months": "ks", "monthly_charges": "ks", "plan": "chisquare", "region": "chisquare",
        "contract": "chisquare", "has_support": "ztest", "age": "ks"}
    assert out["drifted_columns"] == ["tenure_months", "monthly_charges", "plan", "age"]
    assert out["drift_share"] == pytest.approx(4 / 7) and out["drifted"] is True
    # the statistic is scipy's KS p-value between the contract's reference sample and the logged inputs
    ref = reference_of(p, f"{CH}/1")
    expected = stats.ks_2samp(numbers(ref["monthly_charges"]), numbers(df["monthly_charges"])).pvalue
    assert by["monthly_charges"]["statistic"] == pytest.approx(expected, rel=1e-9)
    assert by["monthly_charges"]["missing_share"] == pytest.approx(df["monthly_charges"].isna().mean())
    assert by["age"]["missing_share"] == pytest.approx(df["age"].isna().mean())
    assert by["age"]["current_rows"] == int(df["age"].notna().sum())
    assert by["plan"]["out_of_contract_share"] == pytest.approx(0.4)
    assert by["region"]["out_of_contract_share"] == 0.0
    for c in out["columns"]:
        assert set(c) == {"column", "kind", "method", "statistic", "threshold", "drifted", "effect_size", "psi",
                          "missing_share", "out_of_contract_share", "reference_rows", "current_rows",
                          "reference_missing_share", "missing_drift"}
    pred = out["prediction"]
    assert (pred["column"], pred["kind"], pred["method"]) == ("prediction", "categorical", "ztest")
    assert (pred["reference_rows"], pred["current_rows"]) == (1000, 300)
    # recorded: an event and the result /metrics reads
    [event] = events(cli, "drift_check")
    assert event["message"] == "churn/1: 4 of 7 columns drifted (57%); DRIFT over 300 rows"
    assert (event["model"], event["version"]) == (CH, 1)


def test_drift_large_reference_uses_wasserstein_and_jensen_shannon(monitor_copy, monitor_server, cli) -> None:
    p = monitor_copy("ch")
    server = monitor_server(p, f"{CH}/2")
    df = churn_shifted(p, 300, seed=7)
    send(server, records(df, CH_TARGET), batch=25)

    out = json.loads(cli("monitor", "drift", f"{CH}/2", "--json").stdout)
    assert out["version"] == 2 and out["reference_rows"] == 2000
    by = {c["column"]: c for c in out["columns"]}
    assert {c: by[c]["method"] for c in by} == {
        "tenure_months": "wasserstein", "monthly_charges": "wasserstein", "plan": "jensenshannon",
        "region": "jensenshannon", "contract": "jensenshannon", "has_support": "jensenshannon", "age": "wasserstein"}
    assert out["drifted_columns"] == ["tenure_months", "monthly_charges", "plan", "age"]
    assert out["drifted"] is True
    ref = numbers(reference_of(p, f"{CH}/2")["monthly_charges"])
    cur = numbers(df["monthly_charges"])
    assert by["monthly_charges"]["statistic"] == pytest.approx(
        stats.wasserstein_distance(ref, cur) / np.std(ref), rel=1e-9)
    assert by["monthly_charges"]["threshold"] == 0.1
    assert out["prediction"]["method"] == "jensenshannon"


def test_drift_of_traffic_identical_to_the_reference_is_not_flagged(monitor_copy, monitor_server, cli) -> None:
    """The version's own reference sample, replayed through the server: every KS p-value is 1."""
    p = monitor_copy("bc")
    server = monitor_server(p, f"{BC}@production")
    ref = reference_of(p, f"{BC}/1")
    n = len(ref["mean_radius"])
    recs = [{c: ref[c][i] for c in ref} for i in range(n)]
    send(server, recs, batch=50)

    out = json.loads(cli("monitor", "drift", f"{BC}@production", "--json").stdout)
    assert out["window"]["rows"] == n == out["reference_rows"] == out["current_rows"]
    assert out["drifted"] is False and out["drift_share"] == 0.0 and out["drifted_columns"] == []
    assert len(out["columns"]) == 30
    assert {c["method"] for c in out["columns"]} == {"ks"}
    assert all(c["statistic"] == pytest.approx(1.0) for c in out["columns"])
    assert all(c["psi"] == pytest.approx(0.0, abs=1e-12) for c in out["columns"])
    assert out["prediction"]["statistic"] == pytest.approx(1.0) and out["prediction"]["drifted"] is False

    text = cli("monitor", "drift", f"{BC}@production")
    assert text.exit_code == 0
    assert text.stdout.splitlines()[0] == f"{BC}/1: no drift - 0 of 30 columns (0%, threshold 50%) over {n} rows"
    assert "Drift by column" in text.stdout and "(pred" in text.stdout


def test_drift_per_column_overrides_from_mlops_toml(monitor_copy, monitor_server, cli) -> None:
    p = monitor_copy("bc")
    with open(p / ".mlops.toml", "a") as fh:
        fh.write('\n[monitor]\ndrift_share = 0.1\nstattest = { mean_radius = "wasserstein", mean_area = "psi" }\n'
                 "threshold = { mean_radius = 5.0, mean_texture = 1e-300 }\n")
    server = monitor_server(p, f"{BC}@production")
    df = frame(p).sample(n=150, random_state=2).reset_index(drop=True)
    for col in ("mean_radius", "mean_texture", "mean_area", "worst_area"):
        df[col] = df[col] * 1.6
    send(server, records(df, BC_TARGET), batch=15)

    out = json.loads(cli("monitor", "drift", f"{BC}@production", "--json").stdout)
    by = {c["column"]: c for c in out["columns"]}
    got = {c: (by[c]["method"], by[c]["threshold"], by[c]["drifted"])
           for c in ("mean_radius", "mean_texture", "mean_area", "worst_area")}
    assert got == {"mean_radius": ("wasserstein", 5.0, False), "mean_texture": ("ks", 1e-300, False),
                   "mean_area": ("psi", 0.2, True), "worst_area": ("ks", 0.05, True)}
    ref = numbers(reference_of(p, f"{BC}/1")["mean_radius"])
    assert by["mean_radius"]["statistic"] == pytest.approx(
        stats.wasserstein_distance(ref, numbers(df["mean_radius"])) / np.std(ref), rel=1e-9)
    assert out["threshold_share"] == 0.1
    assert out["drifted"] is (out["drift_share"] >= 0.1)
    assert {"mean_area", "worst_area"} <= set(out["drifted_columns"])


def test_drift_windows_since_and_last(monitor_copy, monitor_server, cli) -> None:
    p = monitor_copy("bc")
    server = monitor_server(p, f"{BC}@production")
    df = frame(p)
    send(server, records(df.iloc[:100], BC_TARGET), batch=10, prefix="old")
    send(server, records(df.iloc[100:160], BC_TARGET), batch=1, prefix="new")
    assert set_logged_at(p, "request_id LIKE 'old-%'", utcnow() - timedelta(hours=30)) == 10

    def drift(*args: str, **env: str):
        return cli("monitor", "drift", f"{BC}@production", "--json", *args, env=env or None)

    assert json.loads(drift("--since", "2d").stdout)["window"] == {"since": "2d", "last": None, "rows": 160}
    assert json.loads(drift("--last", "35", MLOPS_MONITOR_MIN_ROWS="20").stdout)["window"] == {
        "since": None, "last": 35, "rows": 35}
    assert json.loads(drift("--last", "75", MLOPS_MONITOR_MIN_ROWS="20").stdout)["window"]["rows"] == 75
    assert json.loads(drift(MLOPS_MONITOR_MIN_ROWS="50").stdout)["window"] == {"since": "24h", "last": None,
                                                                              "rows": 60}
    assert json.loads(drift(MLOPS_MONITOR_WINDOW="48h").stdout)["window"]["rows"] == 160


def test_drift_errors(monitor_copy, monitor_server, cli, assert_error) -> None:
    p = monitor_copy("bc")
    server = monitor_server(p, f"{BC}@production")
    send(server, records(frame(p).iloc[:60], BC_TARGET), batch=6)
    ref = f"{BC}@production"

    assert_error(cli("monitor", "drift", ref), 2,
                 MIN_ROWS_MSG.format(n=60, ref=f"{BC}/1", window="24h", min_rows=100))
    assert_error(cli("monitor", "drift", ref, "--last", "40"), 2,
                 MIN_ROWS_MSG.format(n=40, ref=f"{BC}/1", window="last 40", min_rows=100))
    assert_error(cli("monitor", "drift", ref, env={"MLOPS_MONITOR_MIN_ROWS": "61"}), 2,
                 MIN_ROWS_MSG.format(n=60, ref=f"{BC}/1", window="24h", min_rows=61))
    assert cli("monitor", "drift", ref, env={"MLOPS_MONITOR_MIN_ROWS": "60"}).exit_code == 0
    assert_error(cli("monitor", "drift", f"{BC}/2"), 2,
                 MIN_ROWS_MSG.format(n=0, ref=f"{BC}/2", window="24h", min_rows=100))
    assert_error(cli("monitor", "drift", "nope@production"), 3, f"model 'nope' does not exist; registered: {BC}.")
    assert_error(cli("monitor", "drift", f"{BC}/9"), 3, f"{BC} has no version 9; versions are 1 to 3.")
    assert_error(cli("monitor", "drift", f"{BC}@staging"), 3,
                 f"{BC} has no alias 'staging'; its aliases are production.")
    assert_error(cli("monitor", "drift", ref, "--since", "bogus"), 5,
                 "--since 'bogus' is not a duration; use e.g. 90s, 30m, 6h or 1d.")
    assert_error(cli("monitor", "drift", ref, "--last", "0"), 2, "--last must be at least 1, got 0.")
    assert len(events(cli, "drift_check")) == 1  # only the successful check is recorded


def test_drift_of_a_version_without_reference_sample(monitor_copy, monitor_server, cli, assert_error) -> None:
    p = monitor_copy("bc")
    server = monitor_server(p, f"{BC}/3")
    send(server, records(frame(p).iloc[:100], BC_TARGET), batch=20)
    assert_error(cli("monitor", "drift", f"{BC}/3"), 3,
                 "this model version has no reference sample in its contract; retrain it with "
                 "train.reference_rows > 0.")
