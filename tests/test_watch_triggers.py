"""`mlopsctl watch --on-drift` (issue 6): a drift check that retrains through the same gated path as a file.

The breast-cancer example (10-tree forest) is trained, registered and promoted once for the module through
the CLI; each test works on a private copy. Traffic goes through the real Flask app (ONNX Runtime, the
asynchronous prediction log on real SQLite), labels through `mlopsctl monitor feedback`, and the watcher is
either `mlopsctl watch --once --on-drift` (CliRunner) or a `Watcher` with a `DriftTrigger`.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from served_projects import module_isolation
from typer.testing import CliRunner

MODEL, TARGET = "breast-cancer", "diagnosis"
FAST = {"MLOPS_WATCH_DEBOUNCE_SECONDS": "0.2"}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlopsctl.cli.main import app
    from mlopsctl.store import db

    project = tmp_path_factory.mktemp("drift-trigger") / "p"
    runner = CliRunner()
    with module_isolation():
        assert runner.invoke(app, ["init", str(project), "--example", MODEL]).exit_code == 0
        cfg = project / ".mlops.toml"
        cfg.write_text(re.sub(r"(?m)^params = .*$", "params = { n_estimators = 10 }", cfg.read_text()))
        for args in (["train"], ["register", "1"], ["promote", MODEL, "1"]):
            result = runner.invoke(app, ["-C", str(project), *args])
            assert result.exit_code == 0, (args, result.stdout, result.stderr)
    db.close_all()
    return project


@pytest.fixture
def proj(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    p = tmp_path / "p"
    shutil.copytree(template, p)
    monkeypatch.chdir(p)
    return p


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


def test_watch_once_on_drift_retrains_through_the_gated_path(proj: Path, cli) -> None:
    df, ids = serve_traffic(proj, 150, factor=1.5)
    feed(cli, proj, df, ids, 150)

    result = cli("watch", "--once", "--on-drift", "--json", env=FAST)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    [outcome] = json.loads(result.stdout)
    assert (outcome["version"], outcome["decision"]) == (2, "promoted")
    assert versions(proj) == [1, 2]

    [check] = events(proj, "drift_check")
    assert check["message"] == f"{MODEL}/1: 30 of 30 columns drifted (100%); DRIFT over 150 rows"
    [retrain] = events(proj, "drift_retrain")
    m = re.fullmatch(r"drift in (.+): 150 labelled rows queued for retraining as (drift-\d{8}T\d{6}\.parquet)",
                     retrain["message"])
    assert m, retrain["message"]
    assert m.group(1).split(", ") == [c for c in df.columns if c != TARGET][:10]
    name = m.group(2)
    assert (retrain["model"], retrain["version"]) == (MODEL, 1)
    # the same path as a dropped file: accepted, trained, registered, gated
    kinds = [e["kind"] for e in events(proj)]
    after = kinds[kinds.index("drift_retrain"):]
    for kind in ("file_accepted", "retrain_started", "trained", "registered"):
        assert kind in after, (kind, after)
    assert [e["message"] for e in events(proj, "file_accepted")] == [f"{name}: 150 rows accepted"]
    assert not (proj / "data" / "incoming" / name).exists()
    processed = proj / "data" / "processed" / name
    import pandas as pd

    queued = pd.read_parquet(processed)
    assert list(queued.columns) == list(df.columns) and len(queued) == 150
    assert queued[TARGET].tolist() == df[TARGET].tolist()
    np.testing.assert_allclose(queued["mean_radius"].to_numpy(), df["mean_radius"].to_numpy())
    con = sqlite3.connect(proj / ".mlops" / "mlops.db")
    try:
        jobs = con.execute("SELECT trigger, status, decision, model_version FROM watch_jobs").fetchall()
    finally:
        con.close()
    assert jobs == [("files", "done", outcome["decision"], 2)]
    promoted = events(proj, "promoted")[-1]
    assert re.fullmatch(rf"{MODEL}/2 -> @production \(promoted\): gate passed: roc_auc [0-9.]+ vs [0-9.]+ of version 1 "
                        r"\(delta [-+][0-9.]+, min_delta 0\.0\)", promoted["message"]), promoted["message"]


def test_a_second_drift_retrain_queues_only_labels_not_yet_used(proj: Path, cli) -> None:
    """Issue 6: "retrains on the latest data". After a drift-triggered retrain, the next one must queue the
    labelled rows that arrived since, not every labelled prediction ever logged: with watch.mode = append the
    rows of the first drift file are otherwise appended to the training data a second time."""
    df, ids = serve_traffic(proj, 150, factor=1.5)
    feed(cli, proj, df, ids, 150)
    result = cli("watch", "--once", "--on-drift", "--json", env=FAST)
    assert [o["version"] for o in json.loads(result.stdout)] == [2], result.stderr
    df2, ids2 = serve_traffic(proj, 150, factor=1.6, seed=9, prefix="e")
    feed(cli, proj, df2, ids2, 150)
    result = cli("watch", "--once", "--on-drift", "--json", env=FAST)
    assert result.exit_code == 0, result.stderr
    checks = events(proj, "drift_check")
    assert [c["version"] for c in checks] == [1, 2] and "DRIFT over 150 rows" in checks[1]["message"]
    second = events(proj, "drift_retrain")[1]["message"]
    assert ": 150 labelled rows queued for retraining as drift-" in second, second
    # the bookmark (the newest label queued) is state of its own, not an event's payload
    con = sqlite3.connect(proj / ".mlops" / "mlops.db")
    try:
        marks = con.execute("SELECT model, version, value, details FROM monitor_results WHERE kind = 'drift_queued' "
                            "ORDER BY id").fetchall()
        payloads = con.execute("SELECT payload FROM events WHERE kind = 'drift_retrain'").fetchall()
    finally:
        con.close()
    assert [(m, v, value, json.loads(d)) for m, v, value, d in marks] == [
        (MODEL, 1, 150.0, {"last_feedback_id": 150}), (MODEL, 2, 300.0, {"last_feedback_id": 300})]
    assert [json.loads(p) for (p,) in payloads] == [{}, {}]


def test_the_drift_bookmark_of_an_older_store_is_still_honoured(proj: Path) -> None:
    """A store written before the bookmark had its own row kept it in the drift_retrain event's payload; the
    next drift retrain starts after it, and from then on after its own row."""
    from mlopsctl.config import load_settings
    from mlopsctl.monitoring import feedback
    from mlopsctl.project import open_project
    from mlopsctl.registry import add_event

    store = open_project(load_settings({}, {}, proj)).store
    assert feedback.queued_feedback_id(store, MODEL) == 0
    with store.session() as s:
        add_event(s, "drift_retrain", "drift in x: 40 labelled rows queued", model=MODEL, version=1,
                  payload={"last_feedback_id": 40})
        add_event(s, "drift_retrain", "another model", model="other", version=1, payload={"last_feedback_id": 99})
    assert feedback.queued_feedback_id(store, MODEL) == 40
    feedback.mark_queued(store, MODEL, 1, "drift in x: 10 labelled rows queued", 50)
    assert feedback.queued_feedback_id(store, MODEL) == 50
    assert feedback.queued_feedback_id(store, "other") == 99


def test_drift_without_enough_labels_does_not_retrain(proj: Path, cli) -> None:
    from mlopsctl.config import load_settings
    from mlopsctl.watch import DriftTrigger
    from mlopsctl.watch import Watcher

    df, ids = serve_traffic(proj, 150, factor=1.5)
    feed(cli, proj, df, ids, 20)
    settings = load_settings({}, FAST, proj)
    trigger = DriftTrigger(settings, f"{MODEL}@production", every_s=0.5)
    log: list[str] = []
    watcher = Watcher(settings, say=log.append, triggers=[trigger])

    assert watcher.run_once(timeout=2) == []
    assert "drift check: 30 of 30 columns drifted (100%) over 150 rows" in log
    msg = "drift detected but only 20 labelled prediction(s); need monitor.min_labels = 50 to retrain"
    assert msg in log
    [no] = events(proj, "drift_no_retrain")
    assert (no["message"], no["model"], no["version"]) == (msg, MODEL, 1)
    assert len(events(proj, "drift_check")) == 1 and events(proj, "drift_retrain") == []
    assert list((proj / "data" / "incoming").iterdir()) == []
    assert versions(proj) == [1]

    # every_s: a second check within the interval is not made; after it, it is
    first = trigger.last
    assert trigger.check(watcher, first + 0.1) is None
    assert len(events(proj, "drift_check")) == 1
    assert trigger.check(watcher, first + 0.6) is None
    assert len(events(proj, "drift_check")) == 2 and len(events(proj, "drift_no_retrain")) == 2

    # with monitor.min_labels lowered to what is there, the next check queues the labelled rows
    low = DriftTrigger(load_settings({}, {**FAST, "MLOPS_MONITOR_MIN_LABELS": "20"}, proj), f"{MODEL}@production",
                       every_s=0.5)
    low.check(watcher, first + 1.2)
    [retrain] = events(proj, "drift_retrain")
    assert ": 20 labelled rows queued for retraining as drift-" in retrain["message"]
    [queued] = list((proj / "data" / "incoming").iterdir())
    assert queued.suffix == ".parquet" and watcher.debouncer.pending() == 1


def test_no_drift_no_retrain_and_too_little_traffic_is_skipped(proj: Path, cli) -> None:
    from mlopsctl.config import load_settings
    from mlopsctl.watch import DriftTrigger
    from mlopsctl.watch import Watcher

    settings = load_settings({}, FAST, proj)
    log: list[str] = []
    watcher = Watcher(settings, say=log.append, triggers=[DriftTrigger(settings, f"{MODEL}@production", 0.1)])
    assert watcher.run_once(timeout=1) == []
    assert log == [f"drift check skipped: only 0 logged row(s) for {MODEL}/1 in the window (24h); drift needs at "
                   "least monitor.min_rows = 100. Widen --since or serve more traffic."]
    assert events(proj, "drift_check") == []

    df, ids = serve_traffic(proj, 150, factor=1.0)
    feed(cli, proj, df, ids, 150)
    result = cli("watch", "--once", "--on-drift", "--json", env=FAST)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == []
    [check] = events(proj, "drift_check")
    assert re.fullmatch(rf"{MODEL}/1: \d of 30 columns drifted \(\d+%\); no drift over 150 rows", check["message"])
    assert events(proj, "drift_retrain") == events(proj, "drift_no_retrain") == []
    assert versions(proj) == [1]
