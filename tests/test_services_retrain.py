"""The retrain job (services/retrain.py) driven by `watch --once`: one new version per good file, the gate, quarantine,
exactly-once, coalescing, replace mode and windows, and what a kill -9 between two commits leaves."""

import contextlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from watch_helpers import (
    bad_files, MODEL, TARGET, make_watcher, fresh_rows, drop, q, alias_version, versions, set_job, jobs, files, event_kinds, last_event_id, os_listdir,
)


# ---- run_once flows -----------------------------------------------------------------------------------

def test_a_good_file_makes_exactly_one_new_version_and_a_promotion(bc_project: Path):
    before = last_event_id(bc_project)
    drop(fresh_rows(bc_project, 150, 1), bc_project / "data" / "incoming" / "batch-1.csv")  # there before start: catch-up
    w, log = make_watcher(bc_project)
    [o] = w.run_once()
    assert (o.job_id, o.decision, o.run_id, o.version) == (1, "promoted", 2, 2)
    score = r"(?:0\.\d{4}|1\.0000)"
    assert re.fullmatch(rf"gate passed: roc_auc {score} vs {score} of version 1 \(delta [+-]\d\.\d{{4}}, min_delta 0\.0\)",
                        o.reason), o.reason
    assert set(o.timings) == {"data", "train", "register", "gate_promote"} and all(v > 0 for v in o.timings.values())
    assert versions(bc_project) == [1, 2]
    assert alias_version(bc_project) == 2
    assert jobs(bc_project) == [(1, "files", "done", "promoted", 2, 2)]
    assert files(bc_project) == [("batch-1.csv", "processed", 150, 1)]
    assert not (bc_project / "data" / "incoming" / "batch-1.csv").exists()
    assert (bc_project / "data" / "processed" / "batch-1.csv").is_file()
    assert list((bc_project / "data" / "quarantine").iterdir()) == []
    assert event_kinds(bc_project, before) == ["file_accepted", "retrain_started", "trained", "registered", "promoted"]
    # training data = the current 569 rows + 120 of the new ones; the other 30 are the gate's held-out rows
    [(rows, timings)] = q(bc_project, "SELECT dv.row_count, j.timings FROM watch_jobs j "
                                "JOIN dataset_versions dv ON dv.id = j.dataset_version_id")
    assert rows == 569 + 120
    assert json.loads(timings) == o.timings
    gate = json.loads(q(bc_project, "SELECT gate FROM model_versions WHERE version = 2")[0][0])
    assert gate["data"] == {"source": "30 new rows held out from job 1's files (seen by neither model)",
                            "rows": 30, "target": TARGET}
    assert (gate["holder"]["version"], gate["passed"], gate["decision"]) == (1, True, "promoted")
    assert [q(bc_project, "SELECT status FROM runs WHERE id = 2")[0][0]] == ["FINISHED"]
    for fragment in ("file seen: batch-1.csv", "validated batch-1.csv: 150 rows", "trained run 2: accuracy=",
                     f"registered {MODEL}/2", f"promoted {MODEL}/2 to @production: gate passed"):
        assert log.has(fragment), (fragment, log)
    assert not [line for line in log if re.search(r"\[/?[a-z ]*\]", line)], log  # plain text, no rich markup


def test_a_job_reads_each_file_once_and_records_its_dataset_once(bc_project: Path, monkeypatch: pytest.MonkeyPatch):
    """Counted with spies that call the real functions: the new file (at intake), its stored bytes (the job's
    new rows, for training and the gate), the current training data (validation and the job's data) and the
    job's own data file are each parsed once, and the job's data set is recorded once (not again by the run)."""
    from collections import Counter

    from mlopsctl import data
    from mlopsctl.services import datasets, runs

    reads: Counter[str] = Counter()
    recorded: list[int] = []
    read_table, record_dataset = data.read_table, datasets.record_dataset

    def counting_read(path, **kw):
        reads[Path(path).name] += 1
        return read_table(path, **kw)

    def counting_record(*args, **kw):
        out = record_dataset(*args, **kw)
        recorded.append(out[2])
        return out

    monkeypatch.setattr(data, "read_table", counting_read)
    monkeypatch.setattr(datasets, "record_dataset", counting_record)
    monkeypatch.setattr(runs, "record_dataset", counting_record)
    drop(fresh_rows(bc_project, 150, 1), bc_project / "data" / "incoming" / "batch-1.csv")
    w, _ = make_watcher(bc_project)
    [o] = w.run_once()
    assert (o.decision, o.version) == ("promoted", 2)
    [(train_sha,)] = q(bc_project, "SELECT file_sha256 FROM dataset_versions WHERE version = 1")
    [(new_sha,)] = q(bc_project, "SELECT sha256 FROM watched_files")
    assert reads == {"batch-1.csv": 1, train_sha[2:]: 1, new_sha[2:]: 1, "job-1.parquet": 1}, reads
    assert recorded == [q(bc_project, "SELECT dataset_version_id FROM watch_jobs")[0][0]]
    assert q(bc_project, "SELECT dataset_version_id FROM runs WHERE id = 2") == [(recorded[0],)]


def test_a_worse_model_is_rejected_by_the_gate_and_the_alias_stays(bc_project: Path):
    drop(fresh_rows(bc_project, 150, 1), bc_project / "data" / "incoming" / "batch-1.csv")
    w, log = make_watcher(bc_project, MLOPS_TRAIN_MODEL="sklearn.tree.DecisionTreeClassifier",
                          MLOPS_TRAIN_PARAMS='{"max_depth": 1}')
    [o] = w.run_once()
    assert (o.decision, o.version) == ("rejected", 2)
    assert o.reason.startswith(f"gate rejected {MODEL}/2 for @production: roc_auc ")
    assert f"is worse than {MODEL}/1's " in o.reason and o.reason.endswith("; use --force to promote anyway.")
    assert versions(bc_project) == [1, 2]  # registered (recorded), but not promoted
    assert alias_version(bc_project) == 1
    assert jobs(bc_project) == [(1, "files", "done", "rejected", 2, 2)]
    assert files(bc_project) == [("batch-1.csv", "processed", 150, 1)]
    gate = json.loads(q(bc_project, "SELECT gate FROM model_versions WHERE version = 2")[0][0])
    assert (gate["passed"], gate["decision"], gate["data"]["rows"]) == (False, "rejected", 30)
    assert gate["candidate"]["score"] < gate["holder"]["score"]
    assert q(bc_project, "SELECT count(*) FROM events WHERE kind = 'rejected' AND version = 2") == [(1,)]
    assert q(bc_project, "SELECT count(*) FROM alias_history") == [(1,)]  # only the initial promotion of version 1
    assert log.has(f"gate rejected {MODEL}/2")


def test_bad_and_junk_files_are_quarantined_with_reasons_and_the_loop_goes_on(bc_project: Path):
    inc = bc_project / "data" / "incoming"
    bad = bad_files(bc_project)
    for name in ("missing.csv", "binary.csv"):
        bad[name][0](inc / name)
    drop(fresh_rows(bc_project, 150, 1), inc / "good.csv")
    before = last_event_id(bc_project)
    w, log = make_watcher(bc_project)
    [o] = w.run_once()  # the good file still goes through
    assert (o.decision, o.version) == ("promoted", 2)
    quarantine = bc_project / "data" / "quarantine"
    assert sorted(p.name for p in quarantine.iterdir()) == [
        "binary.csv", "binary.csv.reason.txt", "missing.csv", "missing.csv.reason.txt"]
    for name in ("missing.csv", "binary.csv"):
        reason = bad[name][1].format(path=inc / name)
        assert (quarantine / f"{name}.reason.txt").read_text() == reason + "\n"
        assert q(bc_project, "SELECT status, reason, job_id FROM watched_files WHERE name = ?", name) == [
            ("rejected", reason, None)]
        assert q(bc_project, "SELECT count(*) FROM events WHERE kind = 'file_rejected' AND message = ?",
                 f"{name} quarantined: {reason}") == [(1,)]
        assert log.has(f"rejected {name}: ")
    assert event_kinds(bc_project, before) == ["file_rejected", "file_accepted", "file_rejected",  # in name order
                                         "retrain_started", "trained", "registered", "promoted"]
    assert os_listdir(inc) == []
    assert files(bc_project) == [("binary.csv", "rejected", None, None), ("good.csv", "processed", 150, 1),
                           ("missing.csv", "rejected", 40, None)]


def test_nothing_is_processed_twice_restart_touch_or_same_content_under_another_name(bc_project: Path):
    inc = bc_project / "data" / "incoming"
    data = fresh_rows(bc_project, 150, 1)
    drop(data, inc / "batch-1.csv")
    w, _ = make_watcher(bc_project)
    assert [o.decision for o in w.run_once()] == ["promoted"]
    # a restart: a new watcher (new process state) finds nothing to do
    w2, _ = make_watcher(bc_project)
    assert w2.run_once() == []
    # the same bytes again, under the old name and under a new one, one of them touched
    shutil.copy(bc_project / "data" / "processed" / "batch-1.csv", inc / "batch-1.csv")
    shutil.copy(bc_project / "data" / "processed" / "batch-1.csv", inc / "copy-of-batch.csv")
    (inc / "copy-of-batch.csv").touch()
    before = last_event_id(bc_project)
    w3, log = make_watcher(bc_project)
    assert w3.run_once() == []
    assert versions(bc_project) == [1, 2] and len(jobs(bc_project)) == 1
    assert files(bc_project) == [("batch-1.csv", "processed", 150, 1)]
    assert event_kinds(bc_project, before) == ["file_duplicate", "file_duplicate"]
    assert log.has("copy-of-batch.csv: same content as batch-1.csv (already processed); skipped")
    assert os_listdir(inc) == []
    # duplicates go to processed/ too (the second batch-1.csv under a timestamped name), never to quarantine
    names = os_listdir(bc_project / "data" / "processed")
    assert len(names) == 3 and names[1:] == ["batch-1.csv", "copy-of-batch.csv"], names
    assert re.fullmatch(r"batch-1\.\d{8}T\d{6}\.csv", names[0]), names
    assert os_listdir(bc_project / "data" / "quarantine") == []


def test_several_pending_files_are_coalesced_into_one_job(bc_project: Path):
    inc = bc_project / "data" / "incoming"
    for i in range(3):
        drop(fresh_rows(bc_project, 50, 10 + i), inc / f"part-{i}.csv")
    w, _ = make_watcher(bc_project)
    [o] = w.run_once()
    assert o.decision == "promoted"
    assert files(bc_project) == [(f"part-{i}.csv", "processed", 50, 1) for i in range(3)]
    [(rows,)] = q(bc_project, "SELECT dv.row_count FROM watch_jobs j JOIN dataset_versions dv ON dv.id = j.dataset_version_id")
    assert rows == 569 + 120  # 150 new rows: 120 train, 30 gate
    assert versions(bc_project) == [1, 2]


@pytest.mark.parametrize("env, train_rows", [
    ({"MLOPS_WATCH_MODE": "replace"}, 120),  # the new rows only (minus the 30 held out for the gate)
    ({"MLOPS_WATCH_WINDOW_ROWS": "300"}, 300),  # appended, then the last 300 rows
    ({"MLOPS_WATCH_MODE": "replace", "MLOPS_WATCH_WINDOW_ROWS": "100"}, 100),
])
def test_replace_mode_and_sliding_window(bc_project: Path, env: dict[str, str], train_rows: int):
    import pandas as pd

    new = fresh_rows(bc_project, 150, 1)
    drop(new, bc_project / "data" / "incoming" / "batch-1.csv")
    w, _ = make_watcher(bc_project, **env)
    [o] = w.run_once()
    # fewer (or older-dropped) rows than the holder's 569: the candidate scores lower on the gate rows
    assert (o.decision, o.version) == ("rejected", 2), o.reason
    assert alias_version(bc_project) == 1
    [(rows, dv_sha, n_train)] = q(bc_project, "SELECT dv.row_count, dv.file_sha256, "
                                        "(SELECT value FROM params WHERE run_id = j.run_id AND key = 'n_train') "
                                        "FROM watch_jobs j JOIN dataset_versions dv ON dv.id = j.dataset_version_id")
    assert rows == train_rows
    assert int(n_train) == round(train_rows * 0.8)  # the run's own train/test split of that data
    trained_on = pd.read_parquet(bc_project / ".mlops" / "watch" / "job-1.parquet")
    assert len(trained_on) == train_rows
    gate_rows = new.sample(frac=0.2, random_state=42)
    new_train = new.drop(index=gate_rows.index).reset_index(drop=True)
    # the window keeps the newest rows: the tail is always the new file's training rows
    tail = min(train_rows, len(new_train))
    pd.testing.assert_frame_equal(trained_on.tail(tail).reset_index(drop=True),
                                  new_train.tail(tail).reset_index(drop=True), check_dtype=False)


# ---- crash states (what a kill -9 leaves between two commits) ------------------------------------------

def test_a_file_validated_before_a_crash_is_not_lost(bc_project: Path):
    """Killed after take_file() committed the file as accepted (and moved it to processed/) but before
    create_job(): the next start must still train on it. Each file exactly once, none lost."""
    inc = bc_project / "data" / "incoming"
    path = drop(fresh_rows(bc_project, 150, 1), inc / "batch-1.csv")
    w, _ = make_watcher(bc_project)
    assert w.intake.take(path) == 1  # what process_ready does first ... then the process dies
    assert files(bc_project) == [("batch-1.csv", "accepted", 150, None)]
    w2, _ = make_watcher(bc_project)
    outcomes = w2.run_once()
    assert [o.decision for o in outcomes] == ["promoted"], "the accepted file was never trained on"
    assert files(bc_project) == [("batch-1.csv", "processed", 150, 1)]
    assert versions(bc_project) == [1, 2]


def test_a_crash_between_register_and_the_job_update_does_not_fail_the_resumed_job(bc_project: Path):
    """Killed right after register() committed version 2 but before the job was marked 'registered': the
    resumed job must gate and promote that version, not register the run again (or fail)."""
    from mlopsctl.services import models, runs
    from mlopsctl.config import with_overrides

    inc = bc_project / "data" / "incoming"
    path = drop(fresh_rows(bc_project, 150, 1), inc / "batch-1.csv")
    w, _ = make_watcher(bc_project)
    job = w.retrain.create_job("files", [w.intake.take(path)])
    data_path, _, dv_id = w.retrain.build_data(job, w.retrain.new_rows(job).train)
    set_job(bc_project, job, dataset_version_id=dv_id)
    run = runs.train_and_track(with_overrides(w.settings, data={"name": w.retrain.dataset_name}), data_path=data_path,
                                   run_name=f"watch-job-{job}", experiment="watch")
    set_job(bc_project, job, status="trained", run_id=run["id"])
    models.register(w.settings, str(run["id"]), MODEL)  # committed ... then the process dies
    w2, _ = make_watcher(bc_project)
    [o] = w2.run_once()
    assert versions(bc_project) == [1, 2]
    assert (o.decision, o.version) == ("promoted", 2), o.reason
    assert jobs(bc_project) == [(job, "files", "done", "promoted", run["id"], 2)]


def test_a_run_left_running_by_a_dead_process_is_marked_failed_and_its_job_resumed(bc_project: Path):
    """The store as a kill -9 during training leaves it (job pending with its data, run RUNNING with the dead
    process's pid): recover() fails the run and finishes the job with a fresh run."""
    inc = bc_project / "data" / "incoming"
    path = drop(fresh_rows(bc_project, 150, 1), inc / "batch-1.csv")
    w, _ = make_watcher(bc_project)
    job = w.retrain.create_job("files", [w.intake.take(path)])
    _, _, dv_id = w.retrain.build_data(job, w.retrain.new_rows(job).train)
    set_job(bc_project, job, dataset_version_id=dv_id)
    (bc_project / ".mlops" / "watch" / f"job-{job}.parquet").unlink()  # even the materialized data is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    with contextlib.closing(sqlite3.connect(bc_project / ".mlops" / "mlops.db")) as con, con:
        con.execute("INSERT INTO runs (experiment_id, name, status, started_at, dataset_version_id, pid, environment) "
                    "SELECT experiment_id, 'watch-job-1', 'RUNNING', started_at, ?, ?, '{}' FROM runs WHERE id = 1",
                    (dv_id, dead_pid))
    w2, log = make_watcher(bc_project)
    [o] = w2.run_once()
    assert q(bc_project, "SELECT id, status, failure_reason FROM runs ORDER BY id") == [
        (1, "FINISHED", None), (2, "FAILED", f"abandoned: process {dead_pid} died"), (3, "FINISHED", None)]
    assert (o.decision, o.run_id, o.version) == ("promoted", 3, 2)
    assert jobs(bc_project) == [(1, "files", "done", "promoted", 3, 2)]
    assert q(bc_project, "SELECT dataset_version_id FROM runs WHERE id = 3") == [(dv_id,)]  # exactly the recorded data
    assert log.has("resuming job 1 left unfinished by a previous watcher")


def test_a_retrain_with_watch_tune_trials_refits_the_best_of_a_small_tune(bc_project: Path):
    """watch.tune_trials > 0: the job's run is the refit of a study named after the job, on the job's data."""
    drop(fresh_rows(bc_project, 150, 1), bc_project / "data" / "incoming" / "batch-1.csv")
    w, log = make_watcher(bc_project, MLOPS_WATCH_TUNE_TRIALS="3", MLOPS_TUNE_CV="2")
    [o] = w.run_once()
    assert o.decision in ("promoted", "rejected") and o.version == 2
    tags = dict(q(bc_project, "SELECT key, value FROM tags WHERE run_id = ?", o.run_id))
    assert (tags["tune.role"], tags["tune.study"]) == ("refit", "watch-job-1")
    [(study_run,)] = q(bc_project, "SELECT run_id FROM tags WHERE key = 'tune.role' AND value = 'study'")
    trials = q(bc_project, "SELECT COUNT(*) FROM tags t JOIN tags p ON p.run_id = t.run_id "
                           "WHERE t.key = 'tune.role' AND t.value = 'trial' AND p.key = 'parent_run_id' AND p.value = ?",
               str(study_run))
    assert trials == [(3,)]
    assert tags["parent_run_id"] == str(study_run)
    [(data_rows,)] = q(bc_project, "SELECT dv.row_count FROM runs r JOIN dataset_versions dv "
                                   "ON dv.id = r.dataset_version_id WHERE r.id = ?", o.run_id)
    assert data_rows == 569 + 120  # the job's data, not data.path
