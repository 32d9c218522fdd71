"""`mlopsctl watch` as real OS processes (issue 5): kill -9 and recovery, SIGTERM, and a live server that
picks up the watcher's promotion by itself.

The project is the breast-cancer example with a 10-tree forest, version 1 promoted to @production (built
once per module through the CLI, copied into each test's ``tmp_path``). Every process started here is
killed in a ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from watch_helpers import MODEL, TARGET, drop, fresh_rows, q

SLOW = '{"n_estimators": 5000}'  # a training that is surely still running when we kill it


# ---- fixtures and helpers -----------------------------------------------------------------------------


def wait_for(cond: Callable[[], Any], timeout: float, what: str, proc: subprocess.Popen | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    e.update({"MLOPS_WATCH_DEBOUNCE_SECONDS": "0.3", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}, **extra)
    return e


class Proc:
    """A child `mlopsctl` process with stdout/stderr in files (no pipe can fill up and block it)."""

    def __init__(self, args: list[str], cwd: Path, environ: dict[str, str], name: str):
        self.out, self.err = cwd.parent / f"{name}.out", cwd.parent / f"{name}.err"
        with self.out.open("w") as o, self.err.open("w") as e:
            self.p = subprocess.Popen([sys.executable, "-m", "mlopsctl", *args], cwd=cwd, env=environ,
                                      stdout=o, stderr=e, start_new_session=True)

    def stderr(self) -> str:
        return self.err.read_text()

    def stdout(self) -> str:
        return self.out.read_text()

    def wait(self, timeout: float) -> int:
        return self.p.wait(timeout)

    def kill(self) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.p.pid, signal.SIGKILL)  # the whole session: gunicorn's workers too
            self.p.wait(30)


def running_runs(project: Path) -> int:
    try:
        return q(project, "SELECT count(*) FROM runs WHERE status = 'RUNNING'")[0][0]
    except sqlite3.OperationalError:
        return 0


def once(project: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlopsctl", "watch", "--once", "--json"], cwd=project,
                          env=env(**extra), capture_output=True, text=True, timeout=120)


# ---- kill -9 and recovery -----------------------------------------------------------------------------

def test_kill_9_during_training_then_watch_once_recovers(bc_project: Path):
    inc = bc_project / "data" / "incoming"
    drop(fresh_rows(bc_project, 80, 1), inc / "a.csv")
    drop(fresh_rows(bc_project, 80, 2), inc / "b.csv")
    watch = Proc(["watch"], bc_project, env(MLOPS_TRAIN_PARAMS=SLOW), "watch")
    try:
        wait_for(lambda: running_runs(bc_project), 60, "the training to start", watch.p)
        time.sleep(0.3)
        pid = watch.p.pid
        watch.p.send_signal(signal.SIGKILL)
        assert watch.wait(30) == -signal.SIGKILL
    finally:
        watch.kill()
    # what the kill left: a pending job holding both files, a RUNNING run of a dead process
    assert q(bc_project, "SELECT id, status FROM watch_jobs") == [(1, "pending")]
    assert q(bc_project, "SELECT name, status, job_id FROM watched_files ORDER BY name") == [
        ("a.csv", "accepted", 1), ("b.csv", "accepted", 1)]
    assert q(bc_project, "SELECT id, status, pid FROM runs WHERE id = 2") == [(2, "RUNNING", pid)]
    drop(fresh_rows(bc_project, 80, 3), inc / "c.csv")  # lands while no watcher runs

    result = once(bc_project)
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    assert [(o["job_id"], o["decision"], o["run_id"], o["version"]) for o in outcomes] == [
        (1, "promoted", 3, 2), (2, "promoted", 4, 3)]
    assert "resuming job 1 left unfinished by a previous watcher" in result.stderr
    assert q(bc_project, "SELECT count(*) FROM runs WHERE status = 'RUNNING'") == [(0,)]
    assert q(bc_project, "SELECT id, status, failure_reason FROM runs ORDER BY id") == [
        (1, "FINISHED", None), (2, "FAILED", f"abandoned: process {pid} died"), (3, "FINISHED", None),
        (4, "FINISHED", None)]
    assert q(bc_project, "SELECT version, run_id FROM model_versions ORDER BY version") == [(1, 1), (2, 3), (3, 4)]
    assert q(bc_project, "SELECT id, status, decision, run_id, model_version FROM watch_jobs ORDER BY id") == [
        (1, "done", "promoted", 3, 2), (2, "done", "promoted", 4, 3)]
    assert q(bc_project, "SELECT name, status, job_id FROM watched_files ORDER BY name") == [
        ("a.csv", "processed", 1), ("b.csv", "processed", 1), ("c.csv", "processed", 2)]
    # the resumed job trained on exactly the data recorded before the kill
    assert q(bc_project, "SELECT r.dataset_version_id = j.dataset_version_id FROM watch_jobs j JOIN runs r ON r.id = 3 "
                   "WHERE j.id = 1") == [(1,)]
    assert q(bc_project, "SELECT count(*) FROM events WHERE kind = 'training_failed' AND run_id = 2") == [(1,)]
    assert sorted(p.name for p in inc.iterdir()) == []


# ---- signals ------------------------------------------------------------------------------------------

def test_sigterm_during_training_finishes_the_step_and_exits_0(bc_project: Path):
    drop(fresh_rows(bc_project, 150, 1), bc_project / "data" / "incoming" / "a.csv")
    watch = Proc(["watch"], bc_project, env(MLOPS_TRAIN_PARAMS='{"n_estimators": 300}'), "watch")
    try:
        wait_for(lambda: running_runs(bc_project), 60, "the training to start", watch.p)
        watch.p.send_signal(signal.SIGTERM)
        assert watch.wait(120) == 0, watch.stderr()
    finally:
        watch.kill()
    err = watch.stderr()
    assert "SIGTERM: finishing the current step, then stopping (again to abandon it)" in err
    assert err.rstrip().endswith("stopped")
    assert q(bc_project, "SELECT id, status FROM runs ORDER BY id") == [(1, "FINISHED"), (2, "FINISHED")]
    assert q(bc_project, "SELECT status, decision, model_version FROM watch_jobs") == [("done", "promoted", 2)]
    assert q(bc_project, "SELECT name, status FROM watched_files") == [("a.csv", "processed")]


def test_a_second_sigterm_abandons_the_training_cleanly_and_the_next_start_resumes(bc_project: Path):
    drop(fresh_rows(bc_project, 150, 1), bc_project / "data" / "incoming" / "a.csv")
    watch = Proc(["watch"], bc_project, env(MLOPS_TRAIN_PARAMS=SLOW), "watch")
    try:
        wait_for(lambda: running_runs(bc_project), 60, "the training to start", watch.p)
        watch.p.send_signal(signal.SIGTERM)
        wait_for(lambda: "SIGTERM: finishing" in watch.stderr(), 10, "the first SIGTERM to be seen", watch.p)
        watch.p.send_signal(signal.SIGTERM)
        assert watch.wait(60) == 130, watch.stderr()
    finally:
        watch.kill()
    assert watch.stderr().endswith("Error: interrupted.\n")
    assert q(bc_project, "SELECT id, status, failure_reason FROM runs WHERE id = 2") == [(2, "FAILED", "interrupted (Ctrl-C)")]
    assert q(bc_project, "SELECT status FROM watch_jobs") == [("pending",)]
    assert q(bc_project, "SELECT version FROM model_versions") == [(1,)]  # nothing half-registered
    result = once(bc_project)
    assert result.returncode == 0, result.stderr
    assert [(o["job_id"], o["decision"], o["version"]) for o in json.loads(result.stdout)] == [(1, "promoted", 2)]
    assert q(bc_project, "SELECT name, status, job_id FROM watched_files") == [("a.csv", "processed", 1)]


# ---- end to end: a running server follows the watcher's promotion ---------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def test_a_running_server_serves_the_version_the_watcher_promotes(bc_project: Path):
    import pandas as pd

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    row = pd.read_csv(bc_project / "data" / "train.csv").drop(columns=[TARGET]).head(1).to_dict("records")
    serve = Proc(["serve", f"{MODEL}@production", "--port", str(port)], bc_project,
                 env(MLOPS_SERVE_RELOAD_INTERVAL="0.2", MLOPS_SERVE_WORKERS="2"), "serve")
    watch = None
    try:
        def up() -> bool:
            with contextlib.suppress(OSError):
                return http(base + "/v2/health/ready")[0] == 200
            return False

        wait_for(up, 60, "the server", serve.p)
        status, body = http(base + "/predict", {"records": row})
        assert (status, body["model"], body["version"]) == (200, MODEL, 1)
        watch = Proc(["watch"], bc_project, env(), "watch")
        wait_for(lambda: "watching " in watch.stderr(), 60, "the watcher", watch.p)
        landed = time.monotonic()
        drop(fresh_rows(bc_project, 150, 1), bc_project / "data" / "incoming" / "new.csv")
        wait_for(lambda: http(base + "/predict", {"records": row})[1].get("version") == 2, 60,
                 "the server to answer with version 2", serve.p)
        seconds = time.monotonic() - landed
        time.sleep(0.5)  # every worker polls every 0.2 s: by now all of them serve version 2
        answers = [http(base + "/predict", {"records": row}) for _ in range(10)]
        assert {(s, b["version"]) for s, b in answers} == {(200, 2)}
        assert body["request_id"] != answers[0][1]["request_id"]
        watch.p.send_signal(signal.SIGTERM)  # idle now: stops at once, exit 0
        assert watch.wait(15) == 0, watch.stderr()
        assert watch.stderr().rstrip().endswith("stopped")
    finally:
        serve.kill()
        if watch is not None:
            watch.kill()
    assert q(bc_project, "SELECT status, decision, model_version FROM watch_jobs") == [("done", "promoted", 2)]
    [(train_s,)] = q(bc_project, "SELECT json_extract(timings, '$.train') FROM watch_jobs")
    assert seconds < 60 and train_s > 0
