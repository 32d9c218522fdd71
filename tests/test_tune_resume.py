"""kill -9 in the middle of `mlopsctl tune --jobs 2`, then resume: exactly the requested number of finished trials,
unique trial numbers, the trials that were running marked FAILED with the reason, no lock errors, and the store's
runs agreeing with Optuna's journal. Real processes, real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

TRIALS = 6
# a forest big enough that a trial takes a second or two, so that the kill lands in the middle of trials
ARGS = ["--model", "sklearn.ensemble.RandomForestClassifier", "--space", "n_estimators=int:100..200",
        "--space", "max_depth=choice:none,2,4", "--cv", "3", "--trials", str(TRIALS), "--jobs", "2"]


def _states(project: Path) -> list[tuple[int, str, str, str | None]]:
    """(trial number, run status, tune.state, failure reason) of every trial run, read with plain SQL."""
    db = sqlite3.connect(project / ".mlops" / "mlops.db")
    try:
        rows = db.execute("""
            select cast(t.value as integer), r.status, s.value, r.failure_reason from runs r
            join tags t on t.run_id = r.id and t.key = 'tune.trial'
            join tags role on role.run_id = r.id and role.key = 'tune.role' and role.value = 'trial'
            join tags s on s.run_id = r.id and s.key = 'tune.state' order by 1""").fetchall()
    except sqlite3.OperationalError:  # the store is not created yet
        return []
    finally:
        db.close()
    return rows


def _mlopsctl(project: Path, *args: str, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    return subprocess.Popen([sys.executable, "-m", "mlopsctl", "-C", str(project), "tune", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _kill_when_two_are_running(proc: subprocess.Popen, project: Path, kill) -> list[tuple]:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        rows = _states(project)
        running = [r for r in rows if r[1] == "RUNNING"]
        finished = [r for r in rows if r[1] != "RUNNING"]
        if len(running) == 2 and len(finished) >= 2:
            kill(proc)
            proc.communicate(timeout=30)  # reaps it and closes its pipes
            return rows
        if proc.poll() is not None:
            pytest.fail(f"tune ended before the kill: {proc.communicate()}")
        time.sleep(0.05)
    pytest.fail("two trials never ran at once")


def _whole_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)


def _parent_only(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("kill", [_whole_group, _parent_only], ids=["kill-9-all-processes", "kill-9-the-parent"])
def test_kill_9_then_resume_reaches_exactly_the_trial_count(cli, make_project, kill):
    project = make_project("breast-cancer")
    proc = _mlopsctl(project, *ARGS, "--study", "k", start_new_session=True)
    before = _kill_when_two_are_running(proc, project, kill)
    running_then = {r[0] for r in before if r[1] == "RUNNING"}
    assert len(running_then) == 2

    if kill is _parent_only:  # the orphaned worker notices its stdin closing, fails its trial at the next fold, exits
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(r[1] == "RUNNING" for r in _states(project)) > 1:
            time.sleep(0.1)
        stopped = [r for r in _states(project) if r[3] == "stopped: the tune process that started this worker has ended"]
        assert len(stopped) == 1 and stopped[0][0] in running_then

    resumed = _mlopsctl(project, "--study", "k", "--json")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert "lock" not in stderr.lower()
    out = json.loads(stdout)
    assert out["complete"] + out["pruned"] == TRIALS

    rows = _states(project)
    numbers = [r[0] for r in rows]
    assert len(numbers) == len(set(numbers)), "a trial number was used twice"
    finished = [r for r in rows if r[2] in ("COMPLETE", "PRUNED")]
    failed = [r for r in rows if r[2] == "FAILED"]
    assert len(finished) == TRIALS and not [r for r in rows if r[1] == "RUNNING"]
    assert {r[0] for r in failed} == running_then  # exactly the trials that were running when killed
    for number, status, _state, reason in failed:
        assert status == "FAILED"
        assert ("ended while the trial was running (killed or crashed)" in reason
                or reason == "stopped: the tune process that started this worker has ended"), reason
    if kill is _whole_group:
        assert all("ended while the trial was running" in r[3] for r in failed)

    # Optuna's journal agrees with the store, trial by trial
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(project / ".mlops" / "tune" / "k.journal")))
    trials = optuna.load_study(study_name="k", storage=storage).get_trials(deepcopy=False)
    journal = {t.number: {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED", "FAIL": "FAILED"}[t.state.name] for t in trials}
    assert journal == {r[0]: r[2] for r in rows}
    study = json.loads(cli("-C", project, "tune", "show", "k", "--json").stdout)
    assert study["status"] == "FINISHED" and study["counts"]["RUNNING"] == 0
    assert study["counts"]["FAILED"] == 2 and study["refit"]["status"] == "FINISHED"
