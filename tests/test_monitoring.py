"""`mlopsctl monitor drift | feedback | report` (issue 6), on predictions logged by the real server.

Two projects are trained once for the module through the CLI: breast-cancer (30 numeric columns; a 10-tree
forest; runs 1 and 2 registered as versions 1 and 2, version 1 at @production, and run 3 trained with
``train.reference_rows = 0`` as version 3) and churn (numeric, categorical and boolean columns with nulls;
HistGradientBoosting with 20 iterations; version 1 keeps the default 1,000-row reference sample, so the small
regime's tests, and version 2 keeps 2,000 rows, so the large regime's). Each test works on a private copy.

Traffic goes through ``create_app(settings).test_client()`` (the real Flask app, ONNX Runtime and the
asynchronous prediction log writing to real SQLite); the monitor commands run through ``CliRunner`` with
``--json``. The HTML report is rendered by headless Chromium (the Debian ``chromium`` package), which must
be installed: the test fails, it does not skip, without it.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import struct
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from served_projects import module_isolation
from scipy import stats
from typer.testing import CliRunner

BC, CH = "breast-cancer", "churn"
BC_TARGET, CH_TARGET = "diagnosis", "churned"
MIN_ROWS_MSG = ("only {n} logged row(s) for {ref} in the window ({window}); drift needs at least monitor.min_rows "
                "= {min_rows}. Widen --since or serve more traffic.")
CHROMIUM = "chromium"
CHROMIUM_MISSING = ("headless Chromium is needed to render the HTML report: install the Debian `chromium` package "
                    "(apt-get install -y chromium), which provides /usr/bin/chromium")
PROBE = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-resources', "
         "JSON.stringify(performance.getEntriesByType('resource').map(e => e.name))));</script>")


# ---- module projects ----------------------------------------------------------------------------------

def _cli_ok(*args: Any, env: dict[str, str] | None = None) -> Any:
    from mlopsctl.cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert result.exit_code == 0, (args, result.stdout, result.stderr, result.exception)
    return result


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from mlopsctl.store import db

    root = tmp_path_factory.mktemp("monitor-service")
    out = {}
    with module_isolation(root):
        bc = root / "bc"
        _cli_ok("init", bc, "--example", BC)
        cfg = bc / ".mlops.toml"
        cfg.write_text(re.sub(r"(?m)^params = .*$", "params = { n_estimators = 10 }", cfg.read_text()))
        for run, env in ((1, None), (2, None), (3, {"MLOPS_TRAIN_REFERENCE_ROWS": "0"})):
            _cli_ok("-C", bc, "train", env=env)
            _cli_ok("-C", bc, "register", run)
        _cli_ok("-C", bc, "promote", BC, 1)
        out["bc"] = bc
        ch = root / "ch"
        _cli_ok("init", ch, "--example", CH)
        cfg = ch / ".mlops.toml"
        cfg.write_text(re.sub(r"(?m)^params = .*$", "params = { max_iter = 20 }", cfg.read_text()))
        for run, env in ((1, None), (2, {"MLOPS_TRAIN_REFERENCE_ROWS": "2000"})):
            _cli_ok("-C", ch, "train", env=env)
            _cli_ok("-C", ch, "register", run)
        _cli_ok("-C", ch, "promote", CH, 1)
        out["ch"] = ch
    db.close_all()
    return out


@pytest.fixture
def copy_of(templates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``copy_of("bc")``: a private copy of a template project; the working folder is inside it."""

    def make(name: str) -> Path:
        p = tmp_path / name
        shutil.copytree(templates[name], p)
        monkeypatch.chdir(p)
        return p

    return make


class Server:
    """The real app on a project, driven by its test client."""

    def __init__(self, project: Path, ref: str, **serve: Any):
        from mlopsctl.config import load_settings
        from mlopsctl.serving.app import create_app

        self.settings = load_settings({f"serve.{k}": v for k, v in serve.items()}, {}, project)
        self.app = create_app(self.settings, ref, watch=False)
        self.client = self.app.test_client()
        self.state = self.app.extensions["mlopsctl"]

    def predict(self, records: list[dict[str, Any]], request_id: str | None = None) -> dict[str, Any]:
        headers = {"X-Request-ID": request_id} if request_id else {}
        resp = self.client.post("/predict", json={"records": records}, headers=headers)
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        if request_id:
            assert body["request_id"] == request_id
        return body

    def flush(self) -> None:
        self.state.predlog.flush()
        assert self.state.predlog.dropped == 0 and self.state.predlog.write_errors == 0

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        resp = self.client.get("/metrics")
        assert resp.status_code == 200
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(resp.get_data(as_text=True)) for s in fam.samples}

    def close(self) -> None:
        self.state.holder.stop()
        self.state.predlog.close()


@pytest.fixture
def serve():
    servers: list[Server] = []

    def make(project: Path, ref: str, **kw: Any) -> Server:
        servers.append(Server(project, ref, **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def frame(project: Path):
    import pandas as pd

    return pd.read_csv(project / "data" / "train.csv")


def records(df, target: str) -> list[dict[str, Any]]:
    """Rows as JSON records, as a client sends them (NaN -> null, numpy scalars -> Python)."""
    return json.loads(df.drop(columns=[target]).to_json(orient="records"))


def send(server: Server, recs: list[dict[str, Any]], batch: int = 1, prefix: str | None = None) -> list[dict[str, Any]]:
    """Send ``recs`` in requests of ``batch`` rows (request ids ``prefix-0000`` ...); the response bodies."""
    out = []
    for i in range(0, len(recs), batch):
        rid = f"{prefix}-{i // batch:04d}" if prefix else None
        out.append(server.predict(recs[i:i + batch], rid))
    server.flush()
    return out


def reference_of(project: Path, ref: str) -> dict[str, list]:
    """The version's reference sample straight from its contract: column -> values."""
    from mlopsctl.config import load_settings
    from mlopsctl.project import open_project

    loaded = open_project(load_settings({}, {}, project)).load_model(ref, "production")
    r = loaded.contract.reference
    return {c: [row[i] for row in r["rows"]] for i, c in enumerate(r["columns"])}


def numbers(values) -> np.ndarray:
    a = np.array([np.nan if v is None else float(v) for v in values])
    return a[~np.isnan(a)]


def churn_shifted(project: Path, n: int, seed: int):
    """n churn rows with four of seven columns shifted: tenure +30, charges +40, age +25 (and 30 % null),
    40 % of plans a category never seen in training ("enterprise")."""
    df = frame(project).sample(n=n, random_state=seed).reset_index(drop=True)
    df["tenure_months"] = df["tenure_months"] + 30
    df["monthly_charges"] = df["monthly_charges"] + 40
    df["age"] = df["age"] + 25
    df.loc[df.index[: int(0.3 * n)], "age"] = np.nan
    df.loc[df.index[-int(0.4 * n):], "plan"] = "enterprise"
    return df


def set_logged_at(project: Path, where: str, when: datetime) -> int:
    """Move logged predictions back in time (``created_at``), in the store's own text format."""
    con = sqlite3.connect(project / ".mlops" / "mlops.db")
    try:
        sample = con.execute("SELECT created_at FROM predictions LIMIT 1").fetchone()[0]
        text = when.strftime("%Y-%m-%d %H:%M:%S.%f")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", sample), sample
        n = con.execute(f"UPDATE predictions SET created_at = ? WHERE {where}", (text,)).rowcount
        con.commit()
        return n
    finally:
        con.close()


def utcnow() -> datetime:
    from mlopsctl.store.models import utcnow as now

    return now().replace(tzinfo=None)


def events(cli, kind: str) -> list[dict[str, Any]]:
    result = cli("events", "--json")
    assert result.exit_code == 0, result.stderr
    return [e for e in json.loads(result.stdout) if e["kind"] == kind]


def write_labels(path: Path, rows: list[tuple], header: str = "request_id,label") -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


# ---- drift ------------------------------------------------------------------------------------------------

def test_drift_small_reference_detects_shifted_churn_columns(copy_of, serve, cli) -> None:
    p = copy_of("ch")
    server = serve(p, f"{CH}@production")
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


def test_drift_large_reference_uses_wasserstein_and_jensen_shannon(copy_of, serve, cli) -> None:
    p = copy_of("ch")
    server = serve(p, f"{CH}/2")
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


def test_drift_of_traffic_identical_to_the_reference_is_not_flagged(copy_of, serve, cli) -> None:
    """The version's own reference sample, replayed through the server: every KS p-value is 1."""
    p = copy_of("bc")
    server = serve(p, f"{BC}@production")
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


def test_drift_per_column_overrides_from_mlops_toml(copy_of, serve, cli) -> None:
    p = copy_of("bc")
    with open(p / ".mlops.toml", "a") as fh:
        fh.write('\n[monitor]\ndrift_share = 0.1\nstattest = { mean_radius = "wasserstein", mean_area = "psi" }\n'
                 "threshold = { mean_radius = 5.0, mean_texture = 1e-300 }\n")
    server = serve(p, f"{BC}@production")
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


def test_drift_windows_since_and_last(copy_of, serve, cli) -> None:
    p = copy_of("bc")
    server = serve(p, f"{BC}@production")
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


def test_drift_errors(copy_of, serve, cli, assert_error) -> None:
    p = copy_of("bc")
    server = serve(p, f"{BC}@production")
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


def test_drift_of_a_version_without_reference_sample(copy_of, serve, cli, assert_error) -> None:
    p = copy_of("bc")
    server = serve(p, f"{BC}/3")
    send(server, records(frame(p).iloc[:100], BC_TARGET), batch=20)
    assert_error(cli("monitor", "drift", f"{BC}/3"), 3,
                 "this model version has no reference sample in its contract; retrain it with "
                 "train.reference_rows > 0.")


# ---- feedback and live quality ----------------------------------------------------------------------------

def _truth(df, target: str) -> list[str]:
    return df[target].astype(str).tolist()


def _expected_quality(bodies: list[dict[str, Any]], truth: list[str], positive: str) -> dict[str, float]:
    from sklearn.metrics import f1_score, log_loss, roc_auc_score

    pred = [b["predictions"][0] for b in bodies]
    proba = [b["probabilities"][0][positive] for b in bodies]
    classes = sorted(bodies[0]["probabilities"][0])
    return {"accuracy": float(np.mean([a == b for a, b in zip(pred, truth)])),
            "f1_macro": float(f1_score(truth, pred, average="macro")),
            "log_loss": float(log_loss(truth, [[b["probabilities"][0][c] for c in classes] for b in bodies],
                                       labels=classes)),
            "roc_auc": float(roc_auc_score([t == positive for t in truth], proba))}


def _approx(expected: dict[str, float], rows: int) -> dict[str, Any]:
    """What live metrics report for a version: its labelled rows and the training metrics, computed here."""
    return {"rows": rows, **{k: pytest.approx(v) for k, v in expected.items()}}


def test_feedback_joins_labels_reports_unknown_and_duplicate_ids(copy_of, serve, cli) -> None:
    p = copy_of("bc")
    server = serve(p, f"{BC}@production")
    df = frame(p).sample(n=60, random_state=3).reset_index(drop=True)
    bodies = send(server, records(df, BC_TARGET), batch=1, prefix="r")
    truth = _truth(df, BC_TARGET)
    wrong = {"malignant": "benign", "benign": "malignant"}
    rows = [("r-0000", wrong[truth[0]])]  # superseded by the later line for the same id
    rows += [(f"r-{i:04d}", truth[i]) for i in range(40)]
    rows += [("r-9999", "benign"), ("ghost", "malignant")]
    labels = write_labels(p / "labels.csv", rows)

    result = cli("monitor", "feedback", labels, "--model", f"{BC}@production", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert {k: out[k] for k in ("labels", "matched", "unknown", "unknown_ids", "duplicates_in_file", "replaced")} == {
        "labels": 43, "matched": 40, "unknown": 2, "unknown_ids": ["ghost", "r-9999"], "duplicates_in_file": 1,
        "replaced": 0}
    live = out["live"]
    # the primary metric is the gate's (train.metric = auto: roc_auc for a classification)
    assert (live["model"], live["version"], live["metric"], live["labelled_rows"]) == (BC, 1, "roc_auc", 40)
    expected = _expected_quality(bodies[:40], truth[:40], positive="malignant")
    assert live["per_version"] == {"1": _approx(expected, 40)}
    [point] = live["series"]
    assert (point["version"], point["rows"]) == (1, 40)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d", point["start"])

    # the same ids again, 5 of them with the other label: replaced, not added
    flipped = [(f"r-{i:04d}", wrong[truth[i]] if i < 5 else truth[i]) for i in range(40)]
    out2 = json.loads(cli("monitor", "feedback", write_labels(p / "again.csv", flipped),
                          "--model", f"{BC}@production", "--json").stdout)
    assert (out2["matched"], out2["replaced"], out2["duplicates_in_file"], out2["unknown"]) == (40, 5, 0, 0)
    assert out2["live"]["labelled_rows"] == 40
    truth2 = [wrong[t] if i < 5 else t for i, t in enumerate(truth[:40])]
    assert out2["live"]["per_version"]["1"]["accuracy"] == pytest.approx(
        _expected_quality(bodies[:40], truth2, positive="malignant")["accuracy"])

    text = cli("monitor", "feedback", labels, "--model", f"{BC}@production")
    assert text.exit_code == 0
    summary = " ".join(text.stdout.split())  # rich wraps at the terminal width
    assert summary.startswith("40 of 43 label(s) joined to predictions; 2 unknown request id(s) (e.g. ghost, r-9999); "
                              "0 label(s) for a row the request does not have; "
                              "1 duplicate(s) in the file (last kept); 5 label(s) replaced Live quality")
    [first, *_] = events(cli, "feedback")
    assert first["message"] == "40 label(s) joined to predictions; 2 unknown request id(s)"


def test_feedback_rows_of_batched_requests(copy_of, serve, cli) -> None:
    p = copy_of("bc")
    server = serve(p, f"{BC}@production")
    df = frame(p).iloc[:10]
    [body] = send(server, records(df, BC_TARGET), batch=10, prefix="batch")
    truth = _truth(df, BC_TARGET)
    labels = write_labels(p / "labels.csv", [("batch-0000", i, truth[i]) for i in range(10)],
                          header="request_id,row,label")
    out = json.loads(cli("monitor", "feedback", labels, "--model", f"{BC}@production", "--json").stdout)
    assert (out["labels"], out["matched"], out["unknown"]) == (10, 10, 0)
    acc = float(np.mean([a == b for a, b in zip(body["predictions"], truth)]))
    assert out["live"]["per_version"]["1"]["rows"] == 10
    assert out["live"]["per_version"]["1"]["accuracy"] == pytest.approx(acc)


def test_feedback_accounts_for_every_label(copy_of, serve, cli) -> None:
    """A label for row 7 of a 5-row request matches no prediction. It is neither matched, nor an unknown id,
    nor a duplicate: it vanishes from the summary (labels 6 = matched 5 + unknown 0 + duplicates 0)."""
    p = copy_of("bc")
    server = serve(p, f"{BC}@production")
    df = frame(p).iloc[:5]
    send(server, records(df, BC_TARGET), batch=5, prefix="b")
    rows = [("b-0000", i, t) for i, t in enumerate(_truth(df, BC_TARGET))] + [("b-0000", 7, "benign")]
    out = json.loads(cli("monitor", "feedback", write_labels(p / "l.csv", rows, "request_id,row,label"),
                         "--model", f"{BC}@production", "--json").stdout)
    assert out["matched"] == 5
    assert out["invalid_rows"] == 1  # a label for a row its request does not have is counted, never lost
    assert out["labels"] == out["matched"] + out["unknown_labels"] + out["invalid_rows"] + out["duplicates_in_file"], out


def test_feedback_errors(copy_of, cli, assert_error) -> None:
    p = copy_of("bc")
    assert_error(cli("monitor", "feedback", write_labels(p / "labels.csv", [(1, "benign")], "id,label")), 2,
                 "labels.csv needs columns request_id and label (and optionally row); missing request_id; "
                 "it has id, label.")
    assert_error(cli("monitor", "feedback", write_labels(p / "l2.csv", [("x", "benign")], "request_id,y")), 2,
                 "l2.csv needs columns request_id and label (and optionally row); missing label; it has request_id, y.")
    assert_error(cli("monitor", "feedback", "nope.csv"), 3,
                 f"data file {p / 'nope.csv'} does not exist; check the path or set data.path in .mlops.toml.")
    ok = write_labels(p / "ok.csv", [("zzz", "benign")])
    assert_error(cli("monitor", "feedback", ok, "--model", "nope@production"), 3,
                 f"model 'nope' does not exist; registered: {BC}.")


def test_live_metrics_per_version_and_metrics_gauges(copy_of, serve, cli) -> None:
    p = copy_of("bc")
    server = serve(p, f"{BC}@production")
    gauges = server.metrics()
    assert not [k for k in gauges if k[0] in ("mlops_drift_share", "mlops_live_metric")]
    df = frame(p).sample(n=120, random_state=11).reset_index(drop=True)
    truth = _truth(df, BC_TARGET)
    v1 = send(server, records(df.iloc[:60], BC_TARGET), batch=1, prefix="a")
    assert {b["version"] for b in v1} == {1}

    assert cli("promote", BC, "2").exit_code == 0
    reload = server.client.post("/admin/reload").get_json()
    assert (reload["version"], reload["reloaded"]) == (2, True)
    v2 = send(server, records(df.iloc[60:], BC_TARGET), batch=1, prefix="b")
    assert {b["version"] for b in v2} == {2}

    rows = [(f"a-{i:04d}", truth[i]) for i in range(60)] + [(f"b-{i:04d}", truth[60 + i]) for i in range(60)]
    out = json.loads(cli("monitor", "feedback", write_labels(p / "labels.csv", rows),
                         "--model", f"{BC}@production", "--json").stdout)
    live = out["live"]
    assert (live["version"], live["labelled_rows"]) == (2, 120)
    e1 = _expected_quality(v1, truth[:60], "malignant")
    e2 = _expected_quality(v2, truth[60:], "malignant")
    assert live["per_version"] == {"1": _approx(e1, 60), "2": _approx(e2, 60)}
    assert sorted((s["version"], s["rows"]) for s in live["series"]) == [(1, 60), (2, 60)]

    # per time window: v1's first 30 labelled predictions two days back, in their own daily bucket
    assert set_logged_at(p, "request_id < 'a-0030'", utcnow() - timedelta(days=2)) == 30
    out = json.loads(cli("monitor", "feedback", p / "labels.csv", "--model", f"{BC}@production", "--json").stdout)
    assert (out["matched"], out["replaced"]) == (120, 0)
    series = out["live"]["series"]
    assert [(s["version"], s["rows"]) for s in series] == [(1, 30), (1, 30), (2, 60)]
    assert series[0]["start"] < series[1]["start"] == series[2]["start"]
    assert series[0]["accuracy"] == pytest.approx(_expected_quality(v1[:30], truth[:30], "malignant")["accuracy"])

    # /metrics: the latest live metric of the served version, then the latest drift share
    gauges = server.metrics()
    assert gauges[("mlops_live_metric", (("metric", "roc_auc"), ("model", BC), ("version", "2")))] == \
        pytest.approx(e2["roc_auc"])
    assert not [k for k in gauges if k[0] == "mlops_drift_share"]
    drift = json.loads(cli("monitor", "drift", f"{BC}@production", "--json",
                           env={"MLOPS_MONITOR_MIN_ROWS": "50"}).stdout)
    assert (drift["version"], drift["window"]["rows"]) == (2, 60)
    gauges = server.metrics()
    assert gauges[("mlops_drift_share", (("model", BC), ("version", "2")))] == pytest.approx(drift["drift_share"])


def test_live_metrics_with_a_label_the_model_cannot_have_and_a_configured_metric(copy_of, serve, cli) -> None:
    """A label that is none of the model's classes is a miss for accuracy and left out of the metrics that need
    its probability; train.metric picks the primary metric (the gate's), which /metrics then carries."""
    p = copy_of("bc")
    server = serve(p, f"{BC}@production")
    df = frame(p).sample(n=20, random_state=21).reset_index(drop=True)
    bodies = send(server, records(df, BC_TARGET), batch=1, prefix="u")
    truth = _truth(df, BC_TARGET)
    rows = [(f"u-{i:04d}", truth[i]) for i in range(19)] + [("u-0019", "not sure")]
    result = cli("monitor", "feedback", write_labels(p / "labels.csv", rows), "--model", f"{BC}@production", "--json",
                 env={"MLOPS_TRAIN_METRIC": "accuracy"})
    assert result.exit_code == 0, result.stderr
    live = json.loads(result.stdout)["live"]
    assert (live["metric"], live["labelled_rows"]) == ("accuracy", 20)
    hits = sum(b["predictions"][0] == t for b, t in zip(bodies[:19], truth[:19]))
    known = _expected_quality(bodies[:19], truth[:19], positive="malignant")
    assert live["per_version"] == {"1": {**_approx(known, 20), "accuracy": pytest.approx(hits / 20)}}
    gauges = server.metrics()
    assert gauges[("mlops_live_metric", (("metric", "accuracy"), ("model", BC), ("version", "1")))] == \
        pytest.approx(hits / 20)


def test_live_metrics_of_labels_of_one_class_leave_roc_auc_undefined(copy_of, serve, cli) -> None:
    p = copy_of("bc")
    server = serve(p, f"{BC}@production")
    df = frame(p)
    df = df[df[BC_TARGET] == "benign"].sample(n=15, random_state=2).reset_index(drop=True)
    bodies = send(server, records(df, BC_TARGET), batch=1, prefix="o")
    out = json.loads(cli("monitor", "feedback", write_labels(p / "labels.csv", [(f"o-{i:04d}", "benign") for i in range(15)]),
                         "--model", f"{BC}@production", "--json").stdout)
    live = out["live"]
    assert live["metric"] == "roc_auc"
    accuracy = float(np.mean([b["predictions"][0] == "benign" for b in bodies]))
    assert live["per_version"]["1"]["roc_auc"] is None
    assert live["per_version"]["1"]["accuracy"] == pytest.approx(accuracy)
    assert not [k for k in server.metrics() if k[0] == "mlops_live_metric"]  # nothing defined to record


def test_report_loads_the_version_once_and_scores_its_reference_once(copy_of, serve, cli, monkeypatch,
                                                                     tmp_path: Path) -> None:
    from mlopsctl.config import load_settings
    from mlopsctl.monitoring.report import write_report
    from mlopsctl.project import Project
    from mlopsctl.scoring import Scorer

    p = copy_of("bc")
    server = serve(p, f"{BC}@production")
    df = frame(p).sample(n=30, random_state=8).reset_index(drop=True)
    send(server, records(df, BC_TARGET), batch=1, prefix="w")
    loads, scored = [], []
    load_model, run = Project.load_model, Scorer.run
    monkeypatch.setattr(Project, "load_model", lambda self, ref, alias=None: loads.append(ref) or load_model(self, ref, alias))
    monkeypatch.setattr(Scorer, "run", lambda self, normalized: scored.append(len(next(iter(normalized.values()))))
                        or run(self, normalized))
    out = write_report(load_settings({}, {}, p), f"{BC}@production", tmp_path / "r.html")
    assert (out["version"], out["rows"]) == (1, 30)
    assert loads == [f"{BC}@production"]
    assert scored == [len(reference_of(p, BC)["mean_radius"])]  # the reference sample, once


# ---- the HTML report ----------------------------------------------------------------------------------------

def _chromium_exe() -> str:
    exe = shutil.which(CHROMIUM)
    if exe is None:
        pytest.fail(CHROMIUM_MISSING, pytrace=False)
    return exe


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    exe = _chromium_exe()
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


def test_html_report_renders_its_charts_in_headless_chromium(copy_of, serve, cli, tmp_path: Path) -> None:
    _chromium_exe()  # fail first, with the install hint, when the browser is missing
    p = copy_of("bc")
    server = serve(p, f"{BC}@production")
    df = frame(p).sample(n=240, random_state=5).reset_index(drop=True)
    truth = _truth(df, BC_TARGET)
    shifted = df.copy()
    for col in ("mean_radius", "mean_texture", "worst_area"):
        shifted[col] = shifted[col] * 1.6
    send(server, records(shifted.iloc[:120], BC_TARGET), batch=1, prefix="a")
    assert set_logged_at(p, "request_id < 'a-0040'", utcnow() - timedelta(days=2)) == 40
    assert set_logged_at(p, "request_id >= 'a-0040' AND request_id < 'a-0080'", utcnow() - timedelta(days=1)) == 40
    assert cli("promote", BC, "2").exit_code == 0
    assert server.client.post("/admin/reload").get_json()["version"] == 2
    send(server, records(shifted.iloc[120:], BC_TARGET), batch=10, prefix="b")
    rows = [(f"a-{i:04d}", truth[i]) for i in range(120)]
    rows += [(f"b-{i // 10:04d}", i % 10, truth[120 + i]) for i in range(120)]
    labels = p / "labels.csv"
    labels.write_text("request_id,row,label\n" + "".join(
        f"{r[0]},{r[1] if len(r) == 3 else 0},{r[-1]}\n" for r in rows))
    fed = json.loads(cli("monitor", "feedback", labels, "--model", f"{BC}@production", "--json").stdout)
    assert fed["matched"] == 240

    out_file = tmp_path / "out" / "report.html"
    result = cli("monitor", "report", f"{BC}@production", "--output", out_file, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    html = out_file.read_text()
    assert (out["model"], out["version"], out["rows"], out["output"]) == (BC, 2, 120, str(out_file))
    assert out["bytes"] == len(html.encode()) and out["drifted"] is False
    assert out["drift_share"] == pytest.approx(3 / 30)
    text = cli("monitor", "report", f"{BC}@production", "-o", tmp_path / "r2.html")
    assert text.stdout == (f"wrote {tmp_path / 'r2.html'} ({(tmp_path / 'r2.html').stat().st_size} bytes) for "
                           f"{BC}/2: no drift (10% of columns) over 120 rows\n")

    # self-contained: nothing to fetch
    assert not re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"<(script|link|img|iframe|object|embed)\b", html, re.I)
    assert not re.search(r"url\(|@import", html, re.I)

    dom = _chromium("--dump-dom", out_file.as_uri(), tmp=tmp_path).stdout
    assert dom.count('<svg class="chart hist"') == 31  # 30 features + the prediction
    assert dom.count('<svg class="chart line"') == 1
    assert dom.count('<path class="series"') == 2  # one line per version
    for element_id in ("histograms", "drift-table", "history"):
        assert f'id="{element_id}"' in dom
    histograms = dom.split('id="histograms"', 1)[1].split("</div>", 1)[0]
    assert histograms.count("<svg") == 31 and histograms.count("<rect") > 31 * 20
    table = dom.split('id="drift-table"', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr") == 31 and table.count('<tr class="drift">') == 3
    history = dom.split('id="history"', 1)[1].split("</table>", 1)[0]
    assert history.count("<tr") == 3  # header + two promotions
    assert "<title>breast-cancer/2 monitoring report</title>" in dom
    v1_line = re.search(r'<path class="series" d="([^"]+)"', dom).group(1)
    assert v1_line.count("L") == 2  # version 1 has three daily points

    # no request of any kind once loaded: the Resource Timing API lists every fetch the page made (failed
    # ones included); a probe copy with a one-line script writes it into the DOM
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    probe_dom = _chromium("--dump-dom", probe.as_uri(), tmp=tmp_path).stdout
    fetched = re.search(r'data-resources="([^"]*)"', probe_dom)
    assert fetched is not None and json.loads(fetched.group(1).replace("&quot;", '"')) == []

    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", out_file.as_uri(), tmp=tmp_path)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1280, 2000)
    assert len(png) > 50_000  # charts drawn, not a blank page


def test_report_without_traffic_is_an_error(copy_of, cli, assert_error) -> None:
    copy_of("bc")
    assert_error(cli("monitor", "report", f"{BC}@production", "-o", "r.html"), 2,
                 f"no logged predictions for {BC}/1 in the window; serve some traffic first or widen --since.")
    assert not Path("r.html").exists()
