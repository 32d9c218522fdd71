"""`mlopsctl monitor feedback` (monitoring/feedback.py): labels joined to logged predictions, and live quality per
version with the /metrics gauges."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from monitoring_helpers import (
    BC, BC_TARGET, frame, records, send,
    set_logged_at, utcnow, events, write_labels, truth_of,
)


# ---- feedback and live quality ----------------------------------------------------------------------------


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


def test_feedback_joins_labels_reports_unknown_and_duplicate_ids(monitor_copy, monitor_server, cli) -> None:
    p = monitor_copy("bc")
    server = monitor_server(p, f"{BC}@production")
    df = frame(p).sample(n=60, random_state=3).reset_index(drop=True)
    bodies = send(server, records(df, BC_TARGET), batch=1, prefix="r")
    truth = truth_of(df, BC_TARGET)
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


def test_feedback_rows_of_batched_requests(monitor_copy, monitor_server, cli) -> None:
    p = monitor_copy("bc")
    server = monitor_server(p, f"{BC}@production")
    df = frame(p).iloc[:10]
    [body] = send(server, records(df, BC_TARGET), batch=10, prefix="batch")
    truth = truth_of(df, BC_TARGET)
    labels = write_labels(p / "labels.csv", [("batch-0000", i, truth[i]) for i in range(10)],
                          header="request_id,row,label")
    out = json.loads(cli("monitor", "feedback", labels, "--model", f"{BC}@production", "--json").stdout)
    assert (out["labels"], out["matched"], out["unknown"]) == (10, 10, 0)
    acc = float(np.mean([a == b for a, b in zip(body["predictions"], truth)]))
    assert out["live"]["per_version"]["1"]["rows"] == 10
    assert out["live"]["per_version"]["1"]["accuracy"] == pytest.approx(acc)


def test_feedback_accounts_for_every_label(monitor_copy, monitor_server, cli) -> None:
    """A label for row 7 of a 5-row request matches no prediction. It is neither matched, nor an unknown id,
    nor a duplicate: it vanishes from the summary (labels 6 = matched 5 + unknown 0 + duplicates 0)."""
    p = monitor_copy("bc")
    server = monitor_server(p, f"{BC}@production")
    df = frame(p).iloc[:5]
    send(server, records(df, BC_TARGET), batch=5, prefix="b")
    rows = [("b-0000", i, t) for i, t in enumerate(truth_of(df, BC_TARGET))] + [("b-0000", 7, "benign")]
    out = json.loads(cli("monitor", "feedback", write_labels(p / "l.csv", rows, "request_id,row,label"),
                         "--model", f"{BC}@production", "--json").stdout)
    assert out["matched"] == 5
    assert out["invalid_rows"] == 1  # a label for a row its request does not have is counted, never lost
    assert out["labels"] == out["matched"] + out["unknown_labels"] + out["invalid_rows"] + out["duplicates_in_file"], out


def test_feedback_errors(monitor_copy, cli, assert_error) -> None:
    p = monitor_copy("bc")
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


def test_live_metrics_per_version_and_metrics_gauges(monitor_copy, monitor_server, cli) -> None:
    p = monitor_copy("bc")
    server = monitor_server(p, f"{BC}@production")
    gauges = server.metrics()
    assert not [k for k in gauges if k[0] in ("mlops_drift_share", "mlops_live_metric")]
    df = frame(p).sample(n=120, random_state=11).reset_index(drop=True)
    truth = truth_of(df, BC_TARGET)
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


def test_live_metrics_with_a_label_the_model_cannot_have_and_a_configured_metric(monitor_copy, monitor_server, cli) -> None:
    """A label that is none of the model's classes is a miss for accuracy and left out of the metrics that need
    its probability; train.metric picks the primary metric (the gate's), which /metrics then carries."""
    p = monitor_copy("bc")
    server = monitor_server(p, f"{BC}@production")
    df = frame(p).sample(n=20, random_state=21).reset_index(drop=True)
    bodies = send(server, records(df, BC_TARGET), batch=1, prefix="u")
    truth = truth_of(df, BC_TARGET)
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


def test_live_metrics_of_labels_of_one_class_leave_roc_auc_undefined(monitor_copy, monitor_server, cli) -> None:
    p = monitor_copy("bc")
    server = monitor_server(p, f"{BC}@production")
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
