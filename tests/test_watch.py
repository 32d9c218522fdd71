"""`mlopsctl watch` (issue 5): the loop with real watchdog observers, and the command line (--once, exit codes).

Every test works on a private copy of the served breast-cancer project (conftest's ``bc_template``): the
example trained once with a 10-tree forest, registered and promoted. New data are rows of its train.csv,
perturbed by ~2 % per cell. Stores are real SQLite files; nothing of mlopsctl's is mocked.
"""

import contextlib
import json
import sqlite3
import time
from pathlib import Path

from watch_helpers import (
    FAST, make_watcher, fresh_rows, drop, q, alias_version, versions, jobs, files, os_listdir, wait_for, running,
)


# ---- real observer ------------------------------------------------------------------------------------

def test_observer_takes_moved_in_and_written_files_and_catches_up(bc_project: Path):
    inc = bc_project / "data" / "incoming"
    drop(fresh_rows(bc_project, 60, 1), inc / "already-there.csv")  # catch-up at start
    w, log = make_watcher(bc_project)
    with running(w, log):
        wait_for(lambda: len(w.outcomes) == 1, 30, "the catch-up job")
        fresh_rows(bc_project, 60, 2).to_csv(inc / "written.csv", index=False)  # written in place
        drop(fresh_rows(bc_project, 60, 3), inc / "moved-in.parquet")  # renamed into the folder
        wait_for(lambda: len(files(bc_project)) == 3 and all(f[1] == "processed" for f in files(bc_project)), 30,
                 "both new files to be processed")
    assert sorted(f[0] for f in files(bc_project)) == ["already-there.csv", "moved-in.parquet", "written.csv"]
    assert all(f[2] == 60 for f in files(bc_project))
    assert [j[2] for j in jobs(bc_project)] == ["done"] * len(jobs(bc_project))
    assert len(jobs(bc_project)) in (2, 3)  # the two new files land together: coalesced unless 0.3 s apart
    assert versions(bc_project) == list(range(1, len(jobs(bc_project)) + 2))
    assert os_listdir(inc) == []


def test_observer_reads_a_slowly_written_file_once_and_complete(bc_project: Path):
    inc = bc_project / "data" / "incoming"
    text = fresh_rows(bc_project, 120, 5).to_csv(index=False)
    chunks = [text[i:i + len(text) // 8 + 1] for i in range(0, len(text), len(text) // 8 + 1)]
    assert len(chunks) >= 8
    w, log = make_watcher(bc_project)  # debounce 0.3 s
    with running(w, log):
        with open(inc / "slow.csv", "w") as fh:
            for chunk in chunks:  # one chunk every 0.15 s (< debounce): 1.2 s to write
                fh.write(chunk)
                fh.flush()
                time.sleep(0.15)
        wait_for(lambda: w.outcomes, 30, "the job")
        time.sleep(0.5)
    assert files(bc_project) == [("slow.csv", "processed", 120, 1)]
    assert q(bc_project, "SELECT count(*) FROM watched_files WHERE status = 'rejected'") == [(0,)]
    assert [o.decision for o in w.outcomes] == ["promoted"]
    assert (bc_project / "data" / "processed" / "slow.csv").read_text() == text


def test_observer_coalesces_files_arriving_during_a_training_into_the_next_job(bc_project: Path):
    inc = bc_project / "data" / "incoming"
    w, log = make_watcher(bc_project, MLOPS_TRAIN_PARAMS='{"n_estimators": 100}')
    with running(w, log):
        drop(fresh_rows(bc_project, 60, 1), inc / "first.csv")
        wait_for(lambda: q(bc_project, "SELECT count(*) FROM runs WHERE status = 'RUNNING'")[0][0], 30,
                 "the first training to start")
        for i in range(3):
            drop(fresh_rows(bc_project, 60, 20 + i), inc / f"during-{i}.csv")
            time.sleep(0.05)
        assert q(bc_project, "SELECT count(*) FROM runs WHERE status = 'RUNNING'") == [(1,)], "training too short"
        wait_for(lambda: len(w.outcomes) == 2, 60, "the second job")
        time.sleep(0.5)
    assert len(w.outcomes) == 2
    assert files(bc_project) == [("first.csv", "processed", 60, 1)] + [
        (f"during-{i}.csv", "processed", 60, 2) for i in range(3)]
    assert [j[2] for j in jobs(bc_project)] == ["done", "done"]
    assert versions(bc_project) == [1, 2, 3]


def test_run_forever_retrains_on_the_schedule_without_any_file(bc_project: Path):
    w, log = make_watcher(bc_project, MLOPS_WATCH_EVERY="1s")
    with running(w, log):
        wait_for(lambda: w.outcomes, 30, "a scheduled job")
    assert log.has("trigger schedule: scheduled retrain (every 1 s)")
    assert {(t, s) for t, s in q(bc_project, "SELECT trigger, status FROM watch_jobs")} == {("schedule", "done")}
    assert files(bc_project) == []
    assert versions(bc_project)[:2] == [1, 2]


# ---- the command line: --once and its exit codes -------------------------------------------------------

def test_once_json_exit_0(bc_project: Path, cli):
    inc = bc_project / "data" / "incoming"
    drop(fresh_rows(bc_project, 150, 1), inc / "good.csv")
    (inc / "junk.csv").write_bytes(bytes(range(256)) * 8)
    result = cli("watch", "--once", "--json", env=FAST)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    [out] = json.loads(result.stdout)
    assert (out["job_id"], out["decision"], out["run_id"], out["version"]) == (1, "promoted", 2, 2)
    assert set(out["timings"]) == {"data", "train", "register", "gate_promote"}
    assert "file seen: good.csv" in result.stderr and "rejected junk.csv:" in result.stderr
    # nothing pending: exit 0, no jobs
    again = cli("watch", "--once", env=FAST)
    assert again.exit_code == 0, again.stderr
    assert again.stderr.rstrip().endswith("done: 0 job(s)")


def test_once_exit_0_when_only_junk_or_a_failed_training(bc_project: Path, cli):
    inc = bc_project / "data" / "incoming"
    (inc / "junk.parquet").write_bytes(b"PAR1 not a parquet file")
    (inc / "notes [red]x.csv").write_bytes(b"")
    result = cli("watch", "--once", "--json", env=FAST)
    assert (result.exit_code, json.loads(result.stdout)) == (0, [])
    assert "rejected notes [red]x.csv: " in result.stderr  # a name is shown as it is, never read as markup
    drop(fresh_rows(bc_project, 150, 1), inc / "good.csv")
    result = cli("watch", "--once", "--json", env={**FAST, "MLOPS_TRAIN_PARAMS": '{"n_estimators": -1}'})
    assert result.exit_code == 0, (result.stdout, result.stderr)
    [out] = json.loads(result.stdout)
    assert (out["decision"], out["version"]) == ("failed", None)
    assert "n_estimators" in out["reason"]
    assert jobs(bc_project)[0][2:4] == ("failed", "failed")
    assert versions(bc_project) == [1] and alias_version(bc_project) == 1
    assert q(bc_project, "SELECT count(*) FROM events WHERE kind = 'retrain_failed'") == [(1,)]


def test_once_exit_7_when_the_store_cannot_be_opened(bc_project: Path, cli, assert_error):
    drop(fresh_rows(bc_project, 150, 1), bc_project / "data" / "incoming" / "good.csv")
    url = "sqlite:////proc/no-such-dir/mlops.db"
    assert_error(cli("watch", "--once", env={**FAST, "MLOPS_STORE_URL": url}), 7,
                 f"cannot open the store at {url}: cannot create /proc/no-such-dir (No such file or directory).")
    assert (bc_project / "data" / "incoming" / "good.csv").is_file()  # nothing taken


def test_once_exit_7_when_the_store_is_newer_than_this_mlopsctl(bc_project: Path, cli, assert_error):
    from mlopsctl.store.db import head_revision

    drop(fresh_rows(bc_project, 150, 1), bc_project / "data" / "incoming" / "good.csv")
    with contextlib.closing(sqlite3.connect(bc_project / ".mlops" / "mlops.db")) as con, con:
        con.execute("UPDATE alembic_version SET version_num = 'm999_from_the_future'")
    assert_error(cli("watch", "--once", env=FAST), 7,
                 "the store is at schema revision 'm999_from_the_future', newer than this mlopsctl understands "
                 f"(latest known: {head_revision()}); upgrade mlopsctl (pip install -U mlopsctl).")
    assert (bc_project / "data" / "incoming" / "good.csv").is_file()


def test_every_must_be_a_duration(bc_project: Path, cli, assert_error):
    assert_error(cli("watch", "--once", "--every", "soon", env=FAST), 5,
                 "watch.every 'soon' is not a duration; use e.g. 90s, 30m, 6h or 1d.")
