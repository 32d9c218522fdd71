"""A team's store on a real PostgreSQL server (issue 20): writers racing to create the same rows, eight
`mlopsctl` processes registering and promoting one new model at once, serving with the prediction log in
PostgreSQL (read back by `mlopsctl monitor drift`), and train/register/promote/predict/serve end to end
through the CLI with ``MLOPS_STORE_URL`` pointing at the server.

Every database here is a fresh one on the server named by ``MLOPSCTL_TEST_POSTGRES`` (conftest's
``pg_server``); these tests are skipped without it, except under CI, where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import http.client
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from served_projects import cli_ok, module_isolation, training_records
from test_serving_server import stop_server
from sqlalchemy import func, select, text

from mlopsctl import registry, tracking
from mlopsctl.store import db
from mlopsctl.store.models import Dataset, DatasetVersion, Experiment, ModelVersion, RegisteredModel

pytestmark = pytest.mark.postgres

BC = "breast-cancer"
BC_TARGET = "diagnosis"


# ---- two writers creating the same row at once (deterministic) ------------------------------------------

def lock_waiters(store: db.Store) -> int:
    """How many sessions of this database are waiting for a lock right now."""
    with store.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND wait_event_type = 'Lock'")).scalar()


def race(store: db.Store, first: Callable[[Any], Any], second: Callable[[Any], Any]) -> tuple[Any, dict[str, Any]]:
    """``first`` runs in a transaction that stays open until ``second``, in another thread and transaction,
    is blocked on it; then the first commits. Returns (first's result, {"result"|"error": ...} of the
    second)."""
    out: dict[str, Any] = {}

    def other() -> None:
        try:
            with store.session() as s:
                out["result"] = second(s)
        except Exception as e:  # reported to the test
            out["error"] = e

    with store.session() as s:
        mine = first(s)
        t = threading.Thread(target=other)
        t.start()
        deadline = time.monotonic() + 20
        while lock_waiters(store) == 0:
            assert t.is_alive(), out  # the second writer must wait for the first, not finish or fail
            assert time.monotonic() < deadline, "the second writer never waited for the first"
            time.sleep(0.02)
    t.join(20)
    assert not t.is_alive()
    return mine, out


def new_runs(store: db.Store, n: int) -> list[int]:
    with store.session() as s:
        return [tracking.create_run(s, "default").id for _ in range(n)]


def register(s, name: str, run_id: int) -> tuple[int, int]:
    """What `mlopsctl register` does in its transaction: (model id, new version)."""
    model = registry.get_or_create_model(s, name)
    mv = registry.create_version(s, model, run_id=run_id, onnx_sha256="a" * 64, contract_sha256="b" * 64,
                                 task="classification", metrics={}, parity={"passed": True})
    return model.id, mv.version


def test_two_writers_registering_one_new_model_get_one_row_and_versions_1_and_2(pg_url):
    """The reported crash: two `register` of a not-yet-registered name; the second failed on
    uq_registered_models_name (SELECT ... FOR UPDATE locks nothing when the row does not exist)."""
    store = db.open_store(pg_url)
    r1, r2 = new_runs(store, 2)
    (model_id, v1), other = race(store, lambda s: register(s, "peng", r1), lambda s: register(s, "peng", r2))
    assert other == {"result": (model_id, 2)}
    assert v1 == 1
    with store.read() as s:
        assert s.execute(select(RegisteredModel.id, RegisteredModel.name)).all() == [(model_id, "peng")]
        assert s.execute(select(ModelVersion.version, ModelVersion.run_id).order_by(ModelVersion.version)).all() == [
            (1, r1), (2, r2)]


def test_two_writers_creating_one_experiment_share_it(pg_url):
    store = db.open_store(pg_url)

    def run_in(s) -> tuple[int, int]:
        run = tracking.create_run(s, "new-experiment")
        return run.experiment_id, run.id

    (exp_id, run1), other = race(store, run_in, run_in)
    assert other["result"][0] == exp_id and other["result"][1] != run1
    with store.read() as s:
        assert s.execute(select(Experiment.id, Experiment.name)).all() == [(exp_id, "new-experiment")]


def record(fingerprint: str):
    def write(s) -> tuple[int, int, bool]:
        dv, created = tracking.record_dataset_version(
            s, "customers", source_path="/data/customers.csv", file_sha256=None, fingerprint=fingerprint,
            row_count=3, column_count=2, schema={"columns": []})
        return dv.dataset_id, dv.version, created
    return write


@pytest.mark.parametrize("existing", [False, True], ids=["new-dataset", "existing-dataset"])
def test_two_writers_recording_versions_of_one_dataset_number_them_without_gaps(pg_url, existing):
    """Different contents: versions n and n+1 (without the dataset row lock both would take n and the second
    would fail on uq_dataset_versions_dataset_id_version)."""
    store = db.open_store(pg_url)
    if existing:
        with store.session() as s:
            record("0" * 64)(s)
    n = 2 if existing else 1
    (ds_id, v1, created1), other = race(store, record("1" * 64), record("2" * 64))
    assert (v1, created1) == (n, True)
    assert other == {"result": (ds_id, n + 1, True)}
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 1
        assert s.scalars(select(DatasetVersion.version).order_by(DatasetVersion.version)).all() == list(range(1, n + 2))


def test_two_writers_recording_the_same_new_content_get_one_version(pg_url):
    store = db.open_store(pg_url)
    (ds_id, v1, created1), other = race(store, record("3" * 64), record("3" * 64))
    assert (v1, created1) == (1, True)
    assert other == {"result": (ds_id, 1, False)}


# ---- a project on PostgreSQL (store.url in .mlops.toml), trained once for the module ----------------------

RUNS = 8


@pytest.fixture(scope="module")
def pg_project(pg_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """breast-cancer (5-tree forests) with ``store.url`` on a fresh PostgreSQL database: `db upgrade`, 8 runs
    trained, run 1 registered as bc/1 and promoted to @production."""
    url = pg_server.create(migrated=False)
    root = tmp_path_factory.mktemp("pg-project")
    project = root / "bc"
    try:
        with module_isolation(root):
            cli_ok("init", project, "--example", BC)
            cfg = project / ".mlops.toml"
            body = re.sub(r"(?m)^params = .*$", "params = { n_estimators = 5 }", cfg.read_text())
            cfg.write_text(f'[store]\nurl = "{url}"\n\n' + body)
            cli_ok("-C", project, "db", "upgrade")
            for _ in range(RUNS):
                cli_ok("-C", project, "train")
            cli_ok("-C", project, "register", 1, "--name", "bc")
            cli_ok("-C", project, "promote", "bc", 1)
        db.close_all()
        yield project
    finally:
        pg_server.drop(url)


def project_settings(project: Path, **flags: Any):
    from mlopsctl.config import load_settings

    return load_settings(flags, {}, project)


def test_the_project_store_is_postgres(pg_project):
    store = db.open_store(project_settings(pg_project).store_url)
    assert store.engine.dialect.name == "postgresql"
    with store.read() as s:
        assert s.scalars(select(tracking.Run.status)).all() == ["FINISHED"] * RUNS


def test_eight_processes_register_one_new_model_and_promote_at_once(pg_project):
    """Eight `mlopsctl register RUN --name peng` (a name not registered yet) released together, each then
    `promote peng V --force`: no error, versions exactly 1..8, one alias move per promotion in one unbroken
    chain ending at the alias's holder, and every write in the audit trail once."""
    model = "peng"
    barrier = threading.Barrier(RUNS)
    base = [sys.executable, "-m", "mlopsctl", "-C", str(pg_project)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}

    def mlopsctl(*args: Any) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=pg_project,
                              env=env)

    def worker(i: int) -> dict[str, Any]:
        barrier.wait(timeout=60)
        reg = mlopsctl("register", i + 1, "--name", model)
        out: dict[str, Any] = {"calls": [reg]}
        m = re.fullmatch(rf"registered {model}/(\d+)\n", reg.stdout)
        if reg.returncode == 0 and m:
            out["version"] = int(m.group(1))
            out["calls"].append(mlopsctl("promote", model, out["version"], "--force", "--reason", f"worker {i}"))
        return out

    with ThreadPoolExecutor(RUNS) as pool:
        results = list(pool.map(worker, range(RUNS)))

    calls = [c for r in results for c in r["calls"]]
    assert [(c.args[5:], c.returncode, c.stderr) for c in calls if c.returncode != 0 or c.stderr] == []
    assert len(calls) == 2 * RUNS
    assert sorted(r["version"] for r in results) == list(range(1, RUNS + 1))

    shown = json.loads(cli_ok("-C", pg_project, "models", "show", model, "--json").stdout)
    assert [v["version"] for v in shown["versions"]] == list(range(1, RUNS + 1))
    assert sorted(v["run_id"] for v in shown["versions"]) == list(range(1, RUNS + 1))
    by_version = {r["version"]: i for i, r in enumerate(results)}
    assert {v["version"]: v["run_id"] for v in shown["versions"]} == {v: i + 1 for v, i in by_version.items()}

    hist = shown["history"]
    assert sorted(h["reason"] for h in hist) == sorted(f"worker {i}" for i in range(RUNS))
    assert hist[0]["from_version"] is None
    for prev, cur in zip(hist, hist[1:]):
        assert cur["from_version"] == prev["to_version"], (prev, cur)
    assert {h["reason"]: h["to_version"] for h in hist} == {f"worker {i}": r["version"] for i, r in enumerate(results)}
    assert shown["aliases"] == {"production": hist[-1]["to_version"]}

    events = json.loads(cli_ok("-C", pg_project, "events", "--model", model, "--json", "--limit", "1000").stdout)
    kinds = [e["kind"] for e in events]
    assert {k: kinds.count(k) for k in set(kinds)} == {"registered": RUNS, "promoted": RUNS}


# ---- serving with the prediction log in PostgreSQL ---------------------------------------------------------

def test_serving_from_postgres_logs_there_and_monitor_drift_reads_it(pg_project, cli, monkeypatch):
    """The real app (test client) on a PostgreSQL store: /predict answers from bc@production, the log is
    written to PostgreSQL: one quiet window indexed at once, then one busy window (more than INDEX_NOW_MAX
    requests) whose index rows are deferred; `mlopsctl monitor drift` indexes those and reads every logged
    row back; `mlopsctl monitor feedback` joins late labels to them and computes the live accuracy."""
    from mlopsctl.predlog_format import read_requests
    from mlopsctl.serving.app import create_app
    from mlopsctl.serving.predlog import INDEX_NOW_MAX

    monkeypatch.chdir(pg_project)
    settings = project_settings(pg_project, **{"serve.log_flush_seconds": 60.0})  # windows end at flush()
    app = create_app(settings, "bc@production", watch=False)
    state = app.extensions["mlopsctl"]
    client = app.test_client()
    records = training_records(pg_project, BC_TARGET, 40)
    quiet = 10
    bodies = []
    try:
        sent: list[tuple[str, list[dict[str, Any]]]] = []
        for i in range(quiet + INDEX_NOW_MAX + 20):
            rows = records[i % 40:i % 40 + 1 + i % 3]
            rid = f"pg-{i:04d}"
            resp = client.post("/predict", json={"records": rows}, headers={"X-Request-ID": rid})
            assert resp.status_code == 200, resp.get_json()
            body = resp.get_json()
            assert (body["model"], body["version"], body["request_id"]) == ("bc", 1, rid)
            assert len(body["predictions"]) == len(rows)
            sent.append((rid, rows))
            bodies.append(body)
            if i == quiet - 1:
                assert state.predlog.flush(30)  # the quiet window: indexed at once
        assert state.predlog.flush(30)  # the busy window: index rows deferred
        assert (state.predlog.dropped, state.predlog.write_errors, state.predlog.written) == (0, 0, len(sent))
    finally:
        state.holder.stop()
        state.predlog.close()

    store = db.open_store(settings.store_url)
    with store.read() as s:
        batches = s.execute(text("SELECT n_rows, pending_index IS NOT NULL FROM prediction_batches ORDER BY id")).all()
        indexed = s.execute(text("SELECT count(*) FROM predictions")).scalar()
    n_rows = sum(len(rows) for _, rows in sent)
    assert [tuple(b) for b in batches] == [(sum(len(r) for _, r in sent[:quiet]), False),
                                           (sum(len(r) for _, r in sent[quiet:]), True)]
    assert indexed == quiet

    result = cli("monitor", "drift", "bc@production", "--json", "--last", n_rows)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    out = json.loads(result.stdout)
    assert (out["model"], out["version"], out["window"]["rows"]) == ("bc", 1, n_rows)
    assert len(out["columns"]) == 30 and 0.0 <= out["drift_share"] <= 1.0
    with store.read() as s:
        assert s.execute(text("SELECT count(*) FROM predictions")).scalar() == len(sent)
        assert s.execute(text("SELECT count(*) FROM prediction_batches WHERE pending_index IS NOT NULL")).scalar() == 0
        assert s.execute(text("SELECT kind, model, version FROM monitor_results")).all() == [("drift", "bc", 1)]
        offsets = s.execute(text('SELECT request_id, batch_id, "offset", n_rows FROM predictions ORDER BY id')).all()
    # the offsets the deferred index got on PostgreSQL: each request's first row inside its batch
    assert [(rid, n) for rid, _b, _o, n in offsets] == [(rid, len(rows)) for rid, rows in sent]
    for batch_rows in (offsets[:quiet], offsets[quiet:]):
        starts = [o for _r, _b, o, _n in batch_rows]
        assert starts == [sum(n for *_x, n in batch_rows[:k]) for k in range(len(batch_rows))]

    picked = [sent[0], sent[quiet - 1], sent[quiet], sent[-1]]
    logged = read_requests(store, [rid for rid, _ in picked], list(records[0]))
    for rid, rows in picked:
        assert logged[rid]["inputs"]["mean_radius"] == [r["mean_radius"] for r in rows]
        assert len(logged[rid]["outputs"]["label"]) == len(rows)

    # late labels for the rows of the first 30 requests, joined by (request id, row)
    import pandas as pd

    truth = pd.read_csv(pg_project / "data" / "train.csv")[BC_TARGET].astype(str).tolist()
    labels = [(sent[i][0], r, truth[i % 40 + r]) for i in range(30) for r in range(len(sent[i][1]))]
    pd.DataFrame(labels, columns=["request_id", "row", "label"]).to_csv(pg_project / "labels.csv", index=False)
    result = cli("monitor", "feedback", "labels.csv", "--model", "bc@production", "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    out = json.loads(result.stdout)
    assert (out["labels"], out["matched"], out["unknown"], out["invalid_rows"]) == (len(labels), len(labels), 0, 0)
    predicted = [bodies[i]["predictions"][r] for i in range(30) for r in range(len(sent[i][1]))]
    accuracy = sum(str(p) == t for p, (_i, _r, t) in zip(predicted, labels)) / len(labels)
    live = out["live"]
    assert (live["model"], live["version"], live["labelled_rows"]) == ("bc", 1, len(labels))
    assert live["per_version"]["1"]["accuracy"] == pytest.approx(accuracy)


# ---- the whole loop through the CLI, MLOPS_STORE_URL pointing at PostgreSQL ----------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


def test_train_register_promote_predict_serve_end_to_end(make_project, cli, assert_error, pg_blank_url, monkeypatch,
                                                         tmp_path):
    from mlopsctl.predlog_format import read_requests

    project = make_project("breast-cancer", params="{ n_estimators = 5 }")
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLOPS_STORE_URL", pg_blank_url)

    # a blank shared store is not created behind the team's back
    assert_error(cli("train"), 7, f"the store at {pg_blank_url} has no mlopsctl tables yet; create them with "
                                  "`mlopsctl db upgrade`.")
    r = cli("db", "upgrade")
    assert r.exit_code == 0 and r.stdout.startswith(f"upgraded the store at {pg_blank_url} from a blank database")

    run_ids = []
    for _ in range(2):
        r = cli("train", "--json")
        assert r.exit_code == 0, r.stderr
        run_ids.append(json.loads(r.stdout)["id"])
    assert run_ids == [1, 2]
    for run_id in run_ids:
        r = cli("register", run_id)
        assert (r.exit_code, r.stdout) == (0, f"registered {BC}/{run_id}\n"), r.stderr
    r = cli("promote", BC, 1)
    assert r.exit_code == 0 and r.stdout.startswith(f"promoted {BC}/1 to @production\n"), r.stderr
    r = cli("promote", BC, 2)  # gated against version 1 on the same held-out rows (same seed: equal scores)
    assert r.exit_code == 0 and r.stdout.startswith(f"promoted {BC}/2 to @production\n"), r.stderr
    r = cli("rollback", BC)
    assert (r.exit_code, r.stdout) == (0, f"rolled back {BC}@production: version 2 -> 1\n")

    shown = json.loads(cli("models", "show", BC, "--json").stdout)
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    assert shown["aliases"] == {"production": 1}
    assert [(h["from_version"], h["to_version"], h["action"]) for h in shown["history"]] == [
        (None, 1, "promote"), (1, 2, "promote"), (2, 1, "rollback")]
    kinds = [e["kind"] for e in json.loads(cli("events", "--json").stdout)]
    assert kinds == ["trained", "trained", "registered", "registered", "promoted", "promoted", "rolled_back"]

    r = cli("predict", f"{BC}@production", "data/train.csv", "--output", tmp_path / "scored.csv")
    assert r.exit_code == 0, r.stderr
    scored = (tmp_path / "scored.csv").read_text().splitlines()
    assert len(scored) == len((project / "data" / "train.csv").read_text().splitlines())

    # `mlopsctl serve` (granian, the default front), its store and prediction log on PostgreSQL through MLOPS_STORE_URL
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "PROMETHEUS_MULTIPROC_DIR"))}
    env["MLOPS_STORE_URL"] = pg_blank_url
    log = tmp_path / "serve.log"
    records = training_records(project, BC_TARGET, 5)
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "mlopsctl", "serve", f"{BC}@production", "--port", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=project, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if http_json(port, "GET", "/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        ids = []
        for i in range(20):
            status, body = http_json(port, "POST", "/predict", {"records": records[:1 + i % 5]},
                                     {"X-Request-ID": f"pg-{i}"})
            assert status == 200, body
            assert (body["model"], body["version"], len(body["predictions"])) == (BC, 1, 1 + i % 5)
            ids.append(body["request_id"])
    finally:
        stop_server(proc)
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "2 granian worker(s)" in " ".join(log.read_text().split())
    logged = read_requests(db.open_store(pg_blank_url), ids, list(records[0]))  # flushed at the stop
    assert set(logged) == set(ids)
    for i, rid in enumerate(ids):
        assert logged[rid]["inputs"]["mean_radius"] == [r["mean_radius"] for r in records[:1 + i % 5]]

    # `mlopsctl watch --once`: a new file becomes a dataset version, a run, version 3 and a gate decision
    import pandas as pd

    new = pd.read_csv(project / "data" / "train.csv").sample(n=120, random_state=7)
    new.to_csv(project / "data" / "incoming" / "batch-1.csv", index=False)
    r = cli("watch", "--once", "--json", env={"MLOPS_WATCH_DEBOUNCE_SECONDS": "0.2"})
    assert r.exit_code == 0, r.stderr
    [outcome] = json.loads(r.stdout)
    assert (outcome["job_id"], outcome["run_id"], outcome["version"]) == (1, 3, 3)
    assert outcome["decision"] in ("promoted", "rejected"), outcome
    with db.open_store(pg_blank_url).read() as s:
        assert s.execute(text("SELECT status, decision, run_id, model_version FROM watch_jobs")).all() == [
            ("done", outcome["decision"], 3, 3)]
        assert s.execute(text("SELECT name, status, rows, job_id FROM watched_files")).all() == [
            ("batch-1.csv", "processed", 120, 1)]
    shown = json.loads(cli("models", "show", BC, "--json").stdout)
    assert [v["version"] for v in shown["versions"]] == [1, 2, 3]
    assert shown["aliases"] == {"production": 3 if outcome["decision"] == "promoted" else 1}
