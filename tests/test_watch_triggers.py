"""`mlopsctl watch --on-drift` (issue 6): a drift check that retrains through the same gated path as a file.

The breast-cancer example (10-tree forest) is trained, registered and promoted once for the module through
the CLI; each test works on a private copy. Traffic goes through the real Flask app (ONNX Runtime, the
asynchronous prediction log on real SQLite), labels through `mlopsctl monitor feedback`, and the watcher is
either `mlopsctl watch --once --on-drift` (CliRunner) or a `Watcher` with a `DriftTrigger`.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
from watch_helpers import alias_version, drop, files, fresh_rows, make_watcher, q

MODEL, TARGET = "breast-cancer", "diagnosis"
FAST = {"MLOPS_WATCH_DEBOUNCE_SECONDS": "0.2"}


def serve_traffic(project: Path, n: int, *, factor: float, seed: int = 4, prefix: str = "d") -> tuple[Any, list[str]]:
    """n single-row /predict requests (ids ``prefix``-0000 ...) of training rows with every feature times ``factor``;
    returns the rows sent (with their true label) and the request ids."""
    import pandas as pd

    from mlopsctl.config import load_settings
    from mlopsctl.serving.app import create_app

    df = pd.read_csv(project / "data" / "train.csv").sample(n=n, random_state=seed).reset_index(drop=True)
    features = [c for c in df.columns if c != TARGET]
    df[features] = (df[features] * factor).round(6)
    app = create_app(load_settings({}, {}, project), f"{MODEL}@production", watch=False)
    st = app.extensions["mlopsctl"]
    client = app.test_client()
    ids = []
    try:
        for i, rec in enumerate(json.loads(df.drop(columns=[TARGET]).to_json(orient="records"))):
            rid = f"{prefix}-{i:04d}"
            resp = client.post("/predict", json={"records": [rec]}, headers={"X-Request-ID": rid})
            assert resp.status_code == 200, resp.get_json()
            ids.append(rid)
        st.predlog.flush()
        assert st.predlog.written == n
    finally:
        st.holder.stop()
        st.predlog.close()
    return df, ids


def feed(cli, project: Path, df, ids: list[str], n: int) -> None:
    labels = project / f"labels-{ids[0]}.csv"
    labels.write_text("request_id,label\n" + "".join(f"{ids[i]},{df[TARGET][i]}\n" for i in range(n)))
    result = cli("monitor", "feedback", labels, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["matched"] == n


def events(project: Path, kind: str | None = None) -> list[dict[str, Any]]:
    from mlopsctl.config import load_settings
    from mlopsctl.services.models import list_events

    return [e for e in list_events(load_settings({}, {}, project)) if kind is None or e["kind"] == kind]


def versions(project: Path) -> list[int]:
    con = sqlite3.connect(project / ".mlops" / "mlops.db")
    try:
        return [v for (v,) in con.execute("SELECT version FROM model_versions ORDER BY version")]
    finally:
        con.close()


def test_watch_once_on_drift_retrains_through_the_gated_path(bc_project: Path, cli) -> None:
    df, ids = serve_traffic(bc_project, 150, factor=1.5)
    feed(cli, bc_project, df, ids, 150)

    result = cli("watch", "--once", "--on-drift", "--json", env=FAST)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    [outcome] = json.loads(result.stdout)
    assert (outcome["version"], outcome["decision"]) == (2, "promoted")
    assert versions(bc_project) == [1, 2]

    [check] = events(bc_project, "drift_check")
    assert check["message"] == f"{MODEL}/1: 30 of 30 columns drifted (100%); DRIFT over 150 rows"
    [retrain] = events(bc_project, "drift_retrain")
    m = re.fullmatch(r"drift in (.+): 150 labelled rows queued for retraining as (drift-\d{8}T\d{6}\.parquet)",
                     retrain["message"])
    assert m, retrain["message"]
    assert m.group(1).split(", ") == [c for c in df.columns if c != TARGET][:10]
    name = m.group(2)
    assert (retrain["model"], retrain["version"]) == (MODEL, 1)
    # the same path as a dropped file: accepted, trained, registered, gated
    kinds = [e["kind"] for e in events(bc_project)]
    after = kinds[kinds.index("drift_retrain"):]
    for kind in ("file_accepted", "retrain_started", "trained", "registered"):
        assert kind in after, (kind, after)
    assert [e["message"] for e in events(bc_project, "file_accepted")] == [f"{name}: 150 rows accepted"]
    assert not (bc_project / "data" / "incoming" / name).exists()
    processed = bc_project / "data" / "processed" / name
    import pandas as pd

    queued = pd.read_parquet(processed)
    assert list(queued.columns) == list(df.columns) and len(queued) == 150
    assert queued[TARGET].tolist() == df[TARGET].tolist()
    np.testing.assert_allclose(queued["mean_radius"].to_numpy(), df["mean_radius"].to_numpy())
    con = sqlite3.connect(bc_project / ".mlops" / "mlops.db")
    try:
        jobs = con.execute("SELECT trigger, status, decision, model_version FROM watch_jobs").fetchall()
    finally:
        con.close()
    assert jobs == [("files", "done", outcome["decision"], 2)]
    promoted = events(bc_project, "promoted")[-1]
    assert re.fullmatch(rf"{MODEL}/2 -> @production \(promoted\): gate passed: roc_auc [0-9.]+ vs [0-9.]+ of version 1 "
                        r"\(delta [-+][0-9.]+, min_delta 0\.0\)", promoted["message"]), promoted["message"]


def test_a_second_drift_retrain_queues_only_labels_not_yet_used(bc_project: Path, cli) -> None:
    """Issue 6: "retrains on the latest data". After a drift-triggered retrain, the next one must queue the
    labelled rows that arrived since, not every labelled prediction ever logged: with watch.mode = append the
    rows of the first drift file are otherwise appended to the training data a second time."""
    df, ids = serve_traffic(bc_project, 150, factor=1.5)
    feed(cli, bc_project, df, ids, 150)
    result = cli("watch", "--once", "--on-drift", "--json", env=FAST)
    assert [o["version"] for o in json.loads(result.stdout)] == [2], result.stderr
    df2, ids2 = serve_traffic(bc_project, 150, factor=1.6, seed=9, prefix="e")
    feed(cli, bc_project, df2, ids2, 150)
    result = cli("watch", "--once", "--on-drift", "--json", env=FAST)
    assert result.exit_code == 0, result.stderr
    checks = events(bc_project, "drift_check")
    assert [c["version"] for c in checks] == [1, 2] and "DRIFT over 150 rows" in checks[1]["message"]
    second = events(bc_project, "drift_retrain")[1]["message"]
    assert ": 150 labelled rows queued for retraining as drift-" in second, second
    # the bookmark (the newest label queued) is state of its own, not an event's payload
    con = sqlite3.connect(bc_project / ".mlops" / "mlops.db")
    try:
        marks = con.execute("SELECT model, version, value, details FROM monitor_results WHERE kind = 'drift_queued' "
                            "ORDER BY id").fetchall()
        payloads = con.execute("SELECT payload FROM events WHERE kind = 'drift_retrain'").fetchall()
    finally:
        con.close()
    assert [(m, v, value, json.loads(d)) for m, v, value, d in marks] == [
        (MODEL, 1, 150.0, {"last_feedback_id": 150}), (MODEL, 2, 300.0, {"last_feedback_id": 300})]
    assert [json.loads(p) for (p,) in payloads] == [{}, {}]


def test_the_drift_bookmark_of_an_older_store_is_still_honoured(bc_project: Path) -> None:
    """A store written before the bookmark had its own row kept it in the drift_retrain event's payload; the
    next drift retrain starts after it, and from then on after its own row."""
    from mlopsctl.config import load_settings
    from mlopsctl.monitoring import feedback
    from mlopsctl.project import open_project
    from mlopsctl.registry import add_event

    store = open_project(load_settings({}, {}, bc_project)).store
    assert feedback.queued_feedback_id(store, MODEL) == 0
    with store.session() as s:
        add_event(s, "drift_retrain", "drift in x: 40 labelled rows queued", model=MODEL, version=1,
                  payload={"last_feedback_id": 40})
        add_event(s, "drift_retrain", "another model", model="other", version=1, payload={"last_feedback_id": 99})
    assert feedback.queued_feedback_id(store, MODEL) == 40
    feedback.mark_queued(store, MODEL, 1, "drift in x: 10 labelled rows queued", 50)
    assert feedback.queued_feedback_id(store, MODEL) == 50
    assert feedback.queued_feedback_id(store, "other") == 99


def test_drift_without_enough_labels_does_not_retrain(bc_project: Path, cli) -> None:
    from mlopsctl.config import load_settings
    from mlopsctl.watch import DriftTrigger
    from mlopsctl.watch import Watcher

    df, ids = serve_traffic(bc_project, 150, factor=1.5)
    feed(cli, bc_project, df, ids, 20)
    settings = load_settings({}, FAST, bc_project)
    trigger = DriftTrigger(settings, f"{MODEL}@production", every_s=0.5)
    log: list[str] = []
    watcher = Watcher(settings, say=log.append, triggers=[trigger])

    assert watcher.run_once(timeout=2) == []
    assert "drift check: 30 of 30 columns drifted (100%) over 150 rows" in log
    msg = "drift detected but only 20 labelled prediction(s); need monitor.min_labels = 50 to retrain"
    assert msg in log
    [no] = events(bc_project, "drift_no_retrain")
    assert (no["message"], no["model"], no["version"]) == (msg, MODEL, 1)
    assert len(events(bc_project, "drift_check")) == 1 and events(bc_project, "drift_retrain") == []
    assert list((bc_project / "data" / "incoming").iterdir()) == []
    assert versions(bc_project) == [1]

    # every_s: a second check within the interval is not made; after it, it is
    first = trigger.last
    assert trigger.check(watcher, first + 0.1) is None
    assert len(events(bc_project, "drift_check")) == 1
    assert trigger.check(watcher, first + 0.6) is None
    assert len(events(bc_project, "drift_check")) == 2 and len(events(bc_project, "drift_no_retrain")) == 2

    # with monitor.min_labels lowered to what is there, the next check queues the labelled rows
    low = DriftTrigger(load_settings({}, {**FAST, "MLOPS_MONITOR_MIN_LABELS": "20"}, bc_project), f"{MODEL}@production",
                       every_s=0.5)
    low.check(watcher, first + 1.2)
    [retrain] = events(bc_project, "drift_retrain")
    assert ": 20 labelled rows queued for retraining as drift-" in retrain["message"]
    [queued] = list((bc_project / "data" / "incoming").iterdir())
    assert queued.suffix == ".parquet" and watcher.debouncer.pending() == 1


def test_no_drift_no_retrain_and_too_little_traffic_is_skipped(bc_project: Path, cli) -> None:
    from mlopsctl.config import load_settings
    from mlopsctl.watch import DriftTrigger
    from mlopsctl.watch import Watcher

    settings = load_settings({}, FAST, bc_project)
    log: list[str] = []
    watcher = Watcher(settings, say=log.append, triggers=[DriftTrigger(settings, f"{MODEL}@production", 0.1)])
    assert watcher.run_once(timeout=1) == []
    assert log == [f"drift check skipped: only 0 logged row(s) for {MODEL}/1 in the window (24h); drift needs at "
                   "least monitor.min_rows = 100. Widen --since or serve more traffic."]
    assert events(bc_project, "drift_check") == []

    df, ids = serve_traffic(bc_project, 150, factor=1.0)
    feed(cli, bc_project, df, ids, 150)
    result = cli("watch", "--once", "--on-drift", "--json", env=FAST)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == []
    [check] = events(bc_project, "drift_check")
    assert re.fullmatch(rf"{MODEL}/1: \d of 30 columns drifted \(\d+%\); no drift over 150 rows", check["message"])
    assert events(bc_project, "drift_retrain") == events(bc_project, "drift_no_retrain") == []
    assert versions(bc_project) == [1]


# ---- triggers -----------------------------------------------------------------------------------------

def test_schedule_trigger_fires_every_period_with_a_fake_clock(bc_project: Path):
    from mlopsctl.watch import ScheduleTrigger

    w, _ = make_watcher(bc_project)
    t = ScheduleTrigger(every_s=6 * 3600, last=1000.0)
    assert t.check(w, 1000.0 + 6 * 3600 - 1) is None
    assert t.check(w, 1000.0 + 6 * 3600) == "scheduled retrain (every 21600 s)"
    assert t.last == 1000.0 + 6 * 3600
    assert t.check(w, 1000.0 + 6 * 3600 + 10) is None  # not again until the next period
    assert t.check(w, 1000.0 + 12 * 3600 + 5) == "scheduled retrain (every 21600 s)"


def test_every_makes_a_schedule_trigger_that_retrains_without_new_files(bc_project: Path):
    w, log = make_watcher(bc_project, MLOPS_WATCH_EVERY="6h")
    [trig] = w.triggers
    assert (trig.name, trig.every_s) == ("schedule", 21600.0)
    assert w.check_triggers(now=time.monotonic() + 60) == []  # not yet due
    [o] = w.check_triggers(now=time.monotonic() + 6 * 3600 + 1)
    assert (o.decision, o.version) == ("promoted", 2)  # same data, same seed: the same model, delta 0
    assert q(bc_project, "SELECT trigger, status, reason FROM watch_jobs") == [
        ("schedule", "done", o.reason)]
    assert q(bc_project, "SELECT message FROM events WHERE kind = 'retrain_started'") == [
        ("job 1: scheduled retrain (every 21600 s)",)]
    assert files(bc_project) == []
    assert log.has("trigger schedule: scheduled retrain (every 21600 s)")
    gate = json.loads(q(bc_project, "SELECT gate FROM model_versions WHERE version = 2")[0][0])
    assert gate["data"]["source"] == f"held-out split of {MODEL}/2"  # no new rows: the candidate's own split


def test_a_custom_trigger_is_a_clean_extension_point(bc_project: Path):
    class DriftTrigger:
        name = "drift"

        def __init__(self) -> None:
            self.calls = 0

        def check(self, watcher, now: float) -> str | None:
            self.calls += 1
            return "3 of 30 columns drifted" if self.calls == 2 else None

    trig = DriftTrigger()
    w, log = make_watcher(bc_project, triggers=[trig])
    assert w.check_triggers(now=1.0) == []
    [o] = w.check_triggers(now=2.0)
    assert o.version == 2
    assert w.check_triggers(now=3.0) == []
    assert q(bc_project, "SELECT trigger, status FROM watch_jobs") == [("drift", "done")]
    assert log.has("trigger drift: 3 of 30 columns drifted")


def test_a_file_with_a_target_class_never_seen_does_not_crash_the_watcher(bc_project: Path):
    """'unknown' in the target passes validation today, trains, registers, and then the gate's scoring of the
    holder raises a bare ValueError that escapes run_once/run_forever: the watcher dies, the job stays
    'registered', and every restart resumes it and dies again. The loop must go on (quarantine the file or
    fail the job), and later files must still be processed."""
    inc = bc_project / "data" / "incoming"
    odd = fresh_rows(bc_project, 150, 1)
    odd.loc[::4, TARGET] = "unknown"
    drop(odd, inc / "new-class.csv")
    w, _ = make_watcher(bc_project)
    outcomes = w.run_once()
    assert [o.decision for o in outcomes] in ([], ["failed"])  # quarantined, or a failed job
    assert alias_version(bc_project) == 1
    drop(fresh_rows(bc_project, 150, 2), inc / "good.csv")
    w2, _ = make_watcher(bc_project)
    # the later good file goes all the way through the gate (whose verdict depends on the sampled rows)
    assert [o.decision for o in w2.run_once()][-1:] in (["promoted"], ["rejected"])
    assert q(bc_project, "SELECT count(*) FROM watch_jobs WHERE status NOT IN ('done', 'failed')") == [(0,)]
    reason = (bc_project / "data" / "quarantine" / "new-class.csv.reason.txt").read_text()
    assert reason == ("target 'diagnosis' has class(es) 'unknown' never seen in training (known: benign, malignant); "
                      "retrain by hand to add a class\n")
