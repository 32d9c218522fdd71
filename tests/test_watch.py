"""`mlopsctl watch` (issue 5): debounce, validation, exactly-once, retrain → register → gate → promote.

Every test works on a real project: the breast-cancer example, trained once per module with a 10-tree forest
(`mlopsctl init`, `train`, `register 1`, `promote breast-cancer 1` through the CLI), then copied into the
test's own ``tmp_path``. New data are rows of the example's train.csv, perturbed by ~2 % per cell. Stores are
real SQLite files, observers are real watchdog observers; nothing of mlopsctl's is mocked.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from served_projects import make_served_project, private_copy

MODEL = "breast-cancer"
TARGET = "diagnosis"
FAST = {"MLOPS_WATCH_DEBOUNCE_SECONDS": "0.3"}


# ---- fixtures and helpers -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """breast-cancer example, 10 trees, run 1 registered as version 1 and promoted to @production."""
    from mlopsctl.store import db

    project = make_served_project(tmp_path_factory.mktemp("watch-template"), "breast-cancer", MODEL, "{ n_estimators = 10 }")
    db.close_all()
    return project


@pytest.fixture
def proj(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the template project; the working folder is inside it."""
    return private_copy(template, tmp_path, monkeypatch)


def settings(project: Path, **env: str):
    from mlopsctl.config import load_settings

    return load_settings({}, {**FAST, **env}, project)


class Log(list):
    """The watcher's `say` lines."""

    def has(self, fragment: str) -> bool:
        return any(fragment in line for line in self)


def make_watcher(project: Path, triggers: list | None = None, **env: str):
    from mlopsctl.watch import Watcher

    log = Log()
    return Watcher(settings(project, **env), say=log.append, triggers=triggers), log


def fresh_rows(project: Path, n: int, seed: int, noise: float = 0.02):
    """n rows of the example's training data, each numeric cell scaled by N(1, noise)."""
    import numpy as np
    import pandas as pd

    df = pd.read_csv(project / "data" / "train.csv")
    out = df.sample(n=n, random_state=seed).reset_index(drop=True)
    features = [c for c in out.columns if c != TARGET]
    rng = np.random.default_rng(seed)
    out[features] = (out[features] * rng.normal(1.0, noise, size=(n, len(features)))).round(6)
    return out


def drop(df, path: Path) -> Path:
    """Write a data file into place atomically (written beside it, then renamed in)."""
    tmp = path.with_name(path.name + ".part")
    if path.suffix == ".parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, index=False)
    tmp.rename(path)
    return path


def q(project: Path, sql: str, *args: Any) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(project / ".mlops" / "mlops.db", timeout=30)) as con:
        return con.execute(sql, args).fetchall()


def alias_version(project: Path, alias: str = "production") -> int:
    [(v,)] = q(project, "SELECT v.version FROM aliases a JOIN model_versions v ON v.id = a.version_id "
                        "WHERE a.name = ?", alias)
    return v


def versions(project: Path) -> list[int]:
    return [v for (v,) in q(project, "SELECT version FROM model_versions ORDER BY version")]


def set_job(project: Path, job_id: int, **fields: Any) -> None:
    """What a stage of the job commits (the state a crash right after it leaves)."""
    with contextlib.closing(sqlite3.connect(project / ".mlops" / "mlops.db", timeout=30)) as con, con:
        con.execute(f"UPDATE watch_jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                    (*fields.values(), job_id))


def jobs(project: Path) -> list[tuple]:
    return q(project, "SELECT id, trigger, status, decision, run_id, model_version FROM watch_jobs ORDER BY id")


def files(project: Path) -> list[tuple]:
    return q(project, "SELECT name, status, rows, job_id FROM watched_files ORDER BY id")


def event_kinds(project: Path, after: int = 0) -> list[str]:
    return [k for (k,) in q(project, "SELECT kind FROM events WHERE id > ? ORDER BY id", after)]


def last_event_id(project: Path) -> int:
    return q(project, "SELECT coalesce(max(id), 0) FROM events")[0][0]


def os_listdir(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextlib.contextmanager
def running(watcher, log: Log):
    """Watcher.run_forever (a real watchdog Observer) in a thread, stopped through its stop event."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            watcher.run_forever(tick=0.05)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    thread = threading.Thread(target=target, name="watcher", daemon=True)
    thread.start()
    try:
        wait_for(lambda: log.has("watching ") or errors, 20, "the watcher to start")
        yield
    finally:
        watcher.stop.set()
        thread.join(30)
    assert not thread.is_alive(), "the watcher did not stop within 30 s of its stop event"
    assert not errors, errors


# ---- Debouncer and candidates -------------------------------------------------------------------------

def test_debouncer_takes_a_file_only_after_size_and_mtime_are_stable(tmp_path: Path):
    import os

    from mlopsctl.watch import Debouncer

    d = Debouncer(2.0)
    f = tmp_path / "a.csv"
    f.write_text("x\n1\n")
    d.touch(f)
    d.touch(f)  # a second event for the same file changes nothing
    assert d.pending() == 1
    assert d.ready(now=100.0) == []  # first look: records (size, mtime) at t=100
    assert d.ready(now=101.9) == []  # stable for 1.9 s < 2.0 s
    with f.open("a") as fh:  # still being written: grows
        fh.write("2\n")
    assert d.ready(now=102.5) == []  # changed: the clock restarts at 102.5
    assert d.ready(now=104.4) == []
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same size, newer mtime (rewritten in place)
    assert d.ready(now=104.5) == []  # restarts at 104.5
    assert d.ready(now=106.4) == []
    assert d.ready(now=106.5) == [f]
    assert d.pending() == 0
    assert d.ready(now=200.0) == []  # taken once


def test_debouncer_forgets_files_that_disappear_and_sorts_what_is_ready(tmp_path: Path):
    from mlopsctl.watch import Debouncer

    d = Debouncer(0.5)
    b, a, gone = tmp_path / "b.csv", tmp_path / "a.csv", tmp_path / "gone.csv"
    for p in (b, a, gone):
        p.write_text("x\n1\n")
        d.touch(p)
    assert d.ready(now=10.0) == []
    gone.unlink()
    assert d.ready(now=10.5) == [a, b]
    assert d.pending() == 0


def test_debouncer_with_zero_seconds_still_needs_two_looks(tmp_path: Path):
    from mlopsctl.watch import Debouncer

    d = Debouncer(0.0)
    f = tmp_path / "a.csv"
    f.write_text("x\n1\n")
    d.touch(f)
    assert d.ready(now=1.0) == []
    assert d.ready(now=1.0) == [f]


@pytest.mark.parametrize("name, candidate", [
    ("batch.csv", True), ("batch.parquet", True), ("notes.txt", True),  # taken, then judged by validation
    (".batch.csv", False), ("batch.csv~", False), ("batch.csv.tmp", False), ("batch.csv.part", False),
    ("batch.csv.reason.txt", False),
])
def test_temporary_and_hidden_files_are_never_candidates(tmp_path: Path, name: str, candidate: bool):
    from mlopsctl.watch import is_candidate

    p = tmp_path / name
    p.write_text("x\n")
    assert is_candidate(p) is candidate
    assert is_candidate(tmp_path) is False  # a folder


# ---- validation ---------------------------------------------------------------------------------------

def _columns(project: Path) -> list[str]:
    return (project / "data" / "train.csv").read_text().splitlines()[0].split(",")


def _bad_files(project: Path) -> dict[str, tuple[Callable[[Path], None], str]]:
    """name -> (writer, exact reason); {path} in a reason is the incoming file's absolute path."""
    cols = _columns(project)
    expected = ", ".join(cols)
    good = fresh_rows(project, 40, 3)

    def frame(mutate: Callable) -> Callable[[Path], None]:
        def write(path: Path) -> None:
            df = good.copy()
            df = mutate(df) if mutate is not None else df
            df.to_parquet(path, index=False) if path.suffix == ".parquet" else df.to_csv(path, index=False)
        return write

    def raw(data: bytes) -> Callable[[Path], None]:
        return lambda path: path.write_bytes(data)

    def half_null(df):
        df.loc[::2, "mean_radius"] = None
        return df

    def texture_text(df):
        df["mean_texture"] = ["abc"] * len(df)
        return df

    def target_numeric(df):
        df[TARGET] = (df[TARGET] == "malignant").astype(int)
        return df

    def no_target(df):
        df[TARGET] = None
        return df

    return {
        "missing.csv": (frame(lambda df: df.drop(columns=["mean_area"])),
                        f"missing column(s) mean_area; expected {expected}"),
        "no-label.csv": (frame(lambda df: df.drop(columns=[TARGET])), f"missing column(s) {TARGET}; expected {expected}"),
        "extra.csv": (frame(lambda df: df.assign(patient_id=range(len(df)))),
                      f"unexpected column(s) patient_id; expected {expected}"),
        "types.csv": (frame(texture_text), "column 'mean_texture' is categorical, but the training data has it numeric"),
        "target-type.parquet": (frame(target_numeric),
                                f"column '{TARGET}' is numeric, but the training data has it categorical"),
        "target-null.csv": (frame(no_target), f"target column '{TARGET}' has no values"),
        "few.csv": (frame(lambda df: df.head(5)), "5 rows, fewer than watch.min_rows = 10"),
        "nulls.csv": (frame(half_null), "column 'mean_radius' is 50% null, above the training data's 0% "
                                        "+ watch.max_null_increase 20%"),
        "binary.csv": (raw(bytes(range(256)) * 8), "{path} is not UTF-8 text; save it as UTF-8 CSV or as Parquet."),
        "empty.csv": (raw(b""), "{path} is empty; add a header row and data rows."),
        "latin1.csv": (raw("caf\xe9,label\n1,2\n".encode("latin-1")),
                       "{path} is not UTF-8 text; save it as UTF-8 CSV or as Parquet."),
        "nul.csv": (raw(b"\x00" * 64), "{path} has no data rows; add rows below the header."),
        "junk.parquet": (raw(b"PAR1 not a parquet file"),
                         "{path} could not be parsed as PARQUET (Could not open Parquet input source '{path}': "
                         "Parquet magic bytes not found in footer. Either the file is corrupted or this is not a "
                         "parquet file.); fix the file."),
        "notes.txt": (raw(b"a,b\n1,2\n"), "unsupported file type '.txt'; drop .csv or .parquet files"),
        "README": (raw(b"hello\n"), "unsupported file type '(none)'; drop .csv or .parquet files"),
    }


BAD_NAMES = ["missing.csv", "no-label.csv", "extra.csv", "types.csv", "target-type.parquet", "target-null.csv",
             "few.csv", "nulls.csv", "binary.csv", "empty.csv", "latin1.csv", "nul.csv", "junk.parquet",
             "notes.txt", "README"]


def test_validate_accepts_files_matching_the_contract(proj: Path):
    w, _ = make_watcher(proj)
    df = fresh_rows(proj, 40, 3)
    assert w.intake.validate(drop(df, w.folder / "ok.csv")) == (True, None, 40)
    assert w.intake.validate(drop(df, w.folder / "ok.parquet")) == (True, None, 40)
    # a few nulls, within max_null_increase, and rows in another column order are fine
    df.loc[:3, "mean_radius"] = None
    assert w.intake.validate(drop(df[list(reversed(df.columns))], w.folder / "ok2.csv")) == (True, None, 40)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_validate_rejects_with_the_exact_reason(proj: Path, name: str):
    w, _ = make_watcher(proj)
    write, reason = _bad_files(proj)[name]
    path = w.folder / name
    write(path)
    ok, got, _rows = w.intake.validate(path)
    assert (ok, got) == (False, reason.format(path=path))


ODD = {"size (cm)": ("numeric", 0.0), "v.2": ("numeric", 0.25), "ünï code": ("categorical", 0.0),
       "flag": ("boolean", 0.0), "label": ("numeric", 0.34)}


def _odd_rows(n: int = 12, **changes: Any):
    """n rows matching ODD (the label column: integer classes read back as floats, with a gap)."""
    import pandas as pd

    df = pd.DataFrame({"size (cm)": [float(i) for i in range(n)], "v.2": [None if i % 4 == 0 else i for i in range(n)],
                       "ünï code": (["α", "β", "γ"] * n)[:n], "flag": [i % 2 == 0 for i in range(n)],
                       "label": ([1.0, 2.0, None] * n)[:n]})
    return df.assign(**changes)


@pytest.mark.parametrize("frame, classes, reason", [
    (_odd_rows(), {"1", "2"}, None),  # 1.0 and 2.0 are the classes "1" and "2"
    (_odd_rows()[["label", "flag", "ünï code", "v.2", "size (cm)"]], {"1", "2"}, None),  # another column order
    (_odd_rows(), None, None),  # regression: no class check
    (_odd_rows(label=[1.0, 3.0, 2.0] * 4), {"1", "2"},
     "target 'label' has class(es) '3' never seen in training (known: 1, 2); retrain by hand to add a class"),
    (_odd_rows(label=[True, False, True] * 4), {"True", "False"}, None),  # boolean labels as text
    (_odd_rows(flag=[0, 1] * 6), {"1", "2"}, "column 'flag' is numeric, but the training data has it boolean"),
    (_odd_rows().assign(**{"size (cm)": [True, False] * 6}), {"1", "2"}, None),  # ... but booleans are numbers
    (_odd_rows().rename(columns={"v.2": "v 2"}), {"1", "2"},
     "missing column(s) v.2; expected size (cm), v.2, ünï code, flag, label"),
    (_odd_rows().assign(**{"id.x": range(12)}), {"1", "2"},
     "unexpected column(s) id.x; expected size (cm), v.2, ünï code, flag, label"),
    (_odd_rows(label=[None] * 12), {"1", "2"}, "target column 'label' has no values"),
    (_odd_rows(9), {"1", "2"}, "9 rows, fewer than watch.min_rows = 10"),
    (_odd_rows().assign(**{"v.2": [None] * 6 + [1.0] * 6}), {"1", "2"},
     "column 'v.2' is 50% null, above the training data's 25% + watch.max_null_increase 20%"),
    (_odd_rows().assign(**{"ünï code": [None] * 12}), {"1", "2"},
     "column 'ünï code' is 100% null, above the training data's 0% + watch.max_null_increase 20%"),
    (_odd_rows().assign(**{"size (cm)": ["x"] * 12}), {"1", "2"},
     "column 'size (cm)' is categorical, but the training data has it numeric"),
])
def test_validate_new_rows_on_odd_shapes(frame, classes, reason):
    """The data layer's check of new rows, without a store: odd column names, integer classes that a CSV gap
    turned into floats, boolean labels and columns, all-null columns."""
    from mlopsctl import data

    assert data.validate_new_rows(frame, ODD, target="label", classes=classes, min_rows=10,
                                  max_null_increase=0.2) == reason


# ---- run_once flows -----------------------------------------------------------------------------------

def test_a_good_file_makes_exactly_one_new_version_and_a_promotion(proj: Path):
    before = last_event_id(proj)
    drop(fresh_rows(proj, 150, 1), proj / "data" / "incoming" / "batch-1.csv")  # there before start: catch-up
    w, log = make_watcher(proj)
    [o] = w.run_once()
    assert (o.job_id, o.decision, o.run_id, o.version) == (1, "promoted", 2, 2)
    score = r"(?:0\.\d{4}|1\.0000)"
    assert re.fullmatch(rf"gate passed: roc_auc {score} vs {score} of version 1 \(delta [+-]\d\.\d{{4}}, min_delta 0\.0\)",
                        o.reason), o.reason
    assert set(o.timings) == {"data", "train", "register", "gate_promote"} and all(v > 0 for v in o.timings.values())
    assert versions(proj) == [1, 2]
    assert alias_version(proj) == 2
    assert jobs(proj) == [(1, "files", "done", "promoted", 2, 2)]
    assert files(proj) == [("batch-1.csv", "processed", 150, 1)]
    assert not (proj / "data" / "incoming" / "batch-1.csv").exists()
    assert (proj / "data" / "processed" / "batch-1.csv").is_file()
    assert list((proj / "data" / "quarantine").iterdir()) == []
    assert event_kinds(proj, before) == ["file_accepted", "retrain_started", "trained", "registered", "promoted"]
    # training data = the current 569 rows + 120 of the new ones; the other 30 are the gate's held-out rows
    [(rows, timings)] = q(proj, "SELECT dv.row_count, j.timings FROM watch_jobs j "
                                "JOIN dataset_versions dv ON dv.id = j.dataset_version_id")
    assert rows == 569 + 120
    assert json.loads(timings) == o.timings
    gate = json.loads(q(proj, "SELECT gate FROM model_versions WHERE version = 2")[0][0])
    assert gate["data"] == {"source": "30 new rows held out from job 1's files (seen by neither model)",
                            "rows": 30, "target": TARGET}
    assert (gate["holder"]["version"], gate["passed"], gate["decision"]) == (1, True, "promoted")
    assert [q(proj, "SELECT status FROM runs WHERE id = 2")[0][0]] == ["FINISHED"]
    for fragment in ("file seen: batch-1.csv", "validated batch-1.csv: 150 rows", "trained run 2: accuracy=",
                     f"registered {MODEL}/2", f"promoted {MODEL}/2 to @production: gate passed"):
        assert log.has(fragment), (fragment, log)
    assert not [line for line in log if re.search(r"\[/?[a-z ]*\]", line)], log  # plain text, no rich markup


def test_a_job_reads_each_file_once_and_records_its_dataset_once(proj: Path, monkeypatch: pytest.MonkeyPatch):
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
    drop(fresh_rows(proj, 150, 1), proj / "data" / "incoming" / "batch-1.csv")
    w, _ = make_watcher(proj)
    [o] = w.run_once()
    assert (o.decision, o.version) == ("promoted", 2)
    [(train_sha,)] = q(proj, "SELECT file_sha256 FROM dataset_versions WHERE version = 1")
    [(new_sha,)] = q(proj, "SELECT sha256 FROM watched_files")
    assert reads == {"batch-1.csv": 1, train_sha[2:]: 1, new_sha[2:]: 1, "job-1.parquet": 1}, reads
    assert recorded == [q(proj, "SELECT dataset_version_id FROM watch_jobs")[0][0]]
    assert q(proj, "SELECT dataset_version_id FROM runs WHERE id = 2") == [(recorded[0],)]


def test_a_worse_model_is_rejected_by_the_gate_and_the_alias_stays(proj: Path):
    drop(fresh_rows(proj, 150, 1), proj / "data" / "incoming" / "batch-1.csv")
    w, log = make_watcher(proj, MLOPS_TRAIN_MODEL="sklearn.tree.DecisionTreeClassifier",
                          MLOPS_TRAIN_PARAMS='{"max_depth": 1}')
    [o] = w.run_once()
    assert (o.decision, o.version) == ("rejected", 2)
    assert o.reason.startswith(f"gate rejected {MODEL}/2 for @production: roc_auc ")
    assert f"is worse than {MODEL}/1's " in o.reason and o.reason.endswith("; use --force to promote anyway.")
    assert versions(proj) == [1, 2]  # registered (recorded), but not promoted
    assert alias_version(proj) == 1
    assert jobs(proj) == [(1, "files", "done", "rejected", 2, 2)]
    assert files(proj) == [("batch-1.csv", "processed", 150, 1)]
    gate = json.loads(q(proj, "SELECT gate FROM model_versions WHERE version = 2")[0][0])
    assert (gate["passed"], gate["decision"], gate["data"]["rows"]) == (False, "rejected", 30)
    assert gate["candidate"]["score"] < gate["holder"]["score"]
    assert q(proj, "SELECT count(*) FROM events WHERE kind = 'rejected' AND version = 2") == [(1,)]
    assert q(proj, "SELECT count(*) FROM alias_history") == [(1,)]  # only the initial promotion of version 1
    assert log.has(f"gate rejected {MODEL}/2")


def test_bad_and_junk_files_are_quarantined_with_reasons_and_the_loop_goes_on(proj: Path):
    inc = proj / "data" / "incoming"
    bad = _bad_files(proj)
    for name in ("missing.csv", "binary.csv"):
        bad[name][0](inc / name)
    drop(fresh_rows(proj, 150, 1), inc / "good.csv")
    before = last_event_id(proj)
    w, log = make_watcher(proj)
    [o] = w.run_once()  # the good file still goes through
    assert (o.decision, o.version) == ("promoted", 2)
    quarantine = proj / "data" / "quarantine"
    assert sorted(p.name for p in quarantine.iterdir()) == [
        "binary.csv", "binary.csv.reason.txt", "missing.csv", "missing.csv.reason.txt"]
    for name in ("missing.csv", "binary.csv"):
        reason = bad[name][1].format(path=inc / name)
        assert (quarantine / f"{name}.reason.txt").read_text() == reason + "\n"
        assert q(proj, "SELECT status, reason, job_id FROM watched_files WHERE name = ?", name) == [
            ("rejected", reason, None)]
        assert q(proj, "SELECT count(*) FROM events WHERE kind = 'file_rejected' AND message = ?",
                 f"{name} quarantined: {reason}") == [(1,)]
        assert log.has(f"rejected {name}: ")
    assert event_kinds(proj, before) == ["file_rejected", "file_accepted", "file_rejected",  # in name order
                                         "retrain_started", "trained", "registered", "promoted"]
    assert os_listdir(inc) == []
    assert files(proj) == [("binary.csv", "rejected", None, None), ("good.csv", "processed", 150, 1),
                           ("missing.csv", "rejected", 40, None)]


def test_nothing_is_processed_twice_restart_touch_or_same_content_under_another_name(proj: Path):
    inc = proj / "data" / "incoming"
    data = fresh_rows(proj, 150, 1)
    drop(data, inc / "batch-1.csv")
    w, _ = make_watcher(proj)
    assert [o.decision for o in w.run_once()] == ["promoted"]
    # a restart: a new watcher (new process state) finds nothing to do
    w2, _ = make_watcher(proj)
    assert w2.run_once() == []
    # the same bytes again, under the old name and under a new one, one of them touched
    shutil.copy(proj / "data" / "processed" / "batch-1.csv", inc / "batch-1.csv")
    shutil.copy(proj / "data" / "processed" / "batch-1.csv", inc / "copy-of-batch.csv")
    (inc / "copy-of-batch.csv").touch()
    before = last_event_id(proj)
    w3, log = make_watcher(proj)
    assert w3.run_once() == []
    assert versions(proj) == [1, 2] and len(jobs(proj)) == 1
    assert files(proj) == [("batch-1.csv", "processed", 150, 1)]
    assert event_kinds(proj, before) == ["file_duplicate", "file_duplicate"]
    assert log.has("copy-of-batch.csv: same content as batch-1.csv (already processed); skipped")
    assert os_listdir(inc) == []
    # duplicates go to processed/ too (the second batch-1.csv under a timestamped name), never to quarantine
    names = os_listdir(proj / "data" / "processed")
    assert len(names) == 3 and names[1:] == ["batch-1.csv", "copy-of-batch.csv"], names
    assert re.fullmatch(r"batch-1\.\d{8}T\d{6}\.csv", names[0]), names
    assert os_listdir(proj / "data" / "quarantine") == []


def test_several_pending_files_are_coalesced_into_one_job(proj: Path):
    inc = proj / "data" / "incoming"
    for i in range(3):
        drop(fresh_rows(proj, 50, 10 + i), inc / f"part-{i}.csv")
    w, _ = make_watcher(proj)
    [o] = w.run_once()
    assert o.decision == "promoted"
    assert files(proj) == [(f"part-{i}.csv", "processed", 50, 1) for i in range(3)]
    [(rows,)] = q(proj, "SELECT dv.row_count FROM watch_jobs j JOIN dataset_versions dv ON dv.id = j.dataset_version_id")
    assert rows == 569 + 120  # 150 new rows: 120 train, 30 gate
    assert versions(proj) == [1, 2]


@pytest.mark.parametrize("env, train_rows", [
    ({"MLOPS_WATCH_MODE": "replace"}, 120),  # the new rows only (minus the 30 held out for the gate)
    ({"MLOPS_WATCH_WINDOW_ROWS": "300"}, 300),  # appended, then the last 300 rows
    ({"MLOPS_WATCH_MODE": "replace", "MLOPS_WATCH_WINDOW_ROWS": "100"}, 100),
])
def test_replace_mode_and_sliding_window(proj: Path, env: dict[str, str], train_rows: int):
    import pandas as pd

    new = fresh_rows(proj, 150, 1)
    drop(new, proj / "data" / "incoming" / "batch-1.csv")
    w, _ = make_watcher(proj, **env)
    [o] = w.run_once()
    # fewer (or older-dropped) rows than the holder's 569: the candidate scores lower on the gate rows
    assert (o.decision, o.version) == ("rejected", 2), o.reason
    assert alias_version(proj) == 1
    [(rows, dv_sha, n_train)] = q(proj, "SELECT dv.row_count, dv.file_sha256, "
                                        "(SELECT value FROM params WHERE run_id = j.run_id AND key = 'n_train') "
                                        "FROM watch_jobs j JOIN dataset_versions dv ON dv.id = j.dataset_version_id")
    assert rows == train_rows
    assert int(n_train) == round(train_rows * 0.8)  # the run's own train/test split of that data
    trained_on = pd.read_parquet(proj / ".mlops" / "watch" / "job-1.parquet")
    assert len(trained_on) == train_rows
    gate_rows = new.sample(frac=0.2, random_state=42)
    new_train = new.drop(index=gate_rows.index).reset_index(drop=True)
    # the window keeps the newest rows: the tail is always the new file's training rows
    tail = min(train_rows, len(new_train))
    pd.testing.assert_frame_equal(trained_on.tail(tail).reset_index(drop=True),
                                  new_train.tail(tail).reset_index(drop=True), check_dtype=False)


# ---- triggers -----------------------------------------------------------------------------------------

def test_schedule_trigger_fires_every_period_with_a_fake_clock(proj: Path):
    from mlopsctl.watch import ScheduleTrigger

    w, _ = make_watcher(proj)
    t = ScheduleTrigger(every_s=6 * 3600, last=1000.0)
    assert t.check(w, 1000.0 + 6 * 3600 - 1) is None
    assert t.check(w, 1000.0 + 6 * 3600) == "scheduled retrain (every 21600 s)"
    assert t.last == 1000.0 + 6 * 3600
    assert t.check(w, 1000.0 + 6 * 3600 + 10) is None  # not again until the next period
    assert t.check(w, 1000.0 + 12 * 3600 + 5) == "scheduled retrain (every 21600 s)"


def test_every_makes_a_schedule_trigger_that_retrains_without_new_files(proj: Path):
    w, log = make_watcher(proj, MLOPS_WATCH_EVERY="6h")
    [trig] = w.triggers
    assert (trig.name, trig.every_s) == ("schedule", 21600.0)
    assert w.check_triggers(now=time.monotonic() + 60) == []  # not yet due
    [o] = w.check_triggers(now=time.monotonic() + 6 * 3600 + 1)
    assert (o.decision, o.version) == ("promoted", 2)  # same data, same seed: the same model, delta 0
    assert q(proj, "SELECT trigger, status, reason FROM watch_jobs") == [
        ("schedule", "done", o.reason)]
    assert q(proj, "SELECT message FROM events WHERE kind = 'retrain_started'") == [
        ("job 1: scheduled retrain (every 21600 s)",)]
    assert files(proj) == []
    assert log.has("trigger schedule: scheduled retrain (every 21600 s)")
    gate = json.loads(q(proj, "SELECT gate FROM model_versions WHERE version = 2")[0][0])
    assert gate["data"]["source"] == f"held-out split of {MODEL}/2"  # no new rows: the candidate's own split


def test_a_custom_trigger_is_a_clean_extension_point(proj: Path):
    class DriftTrigger:
        name = "drift"

        def __init__(self) -> None:
            self.calls = 0

        def check(self, watcher, now: float) -> str | None:
            self.calls += 1
            return "3 of 30 columns drifted" if self.calls == 2 else None

    trig = DriftTrigger()
    w, log = make_watcher(proj, triggers=[trig])
    assert w.check_triggers(now=1.0) == []
    [o] = w.check_triggers(now=2.0)
    assert o.version == 2
    assert w.check_triggers(now=3.0) == []
    assert q(proj, "SELECT trigger, status FROM watch_jobs") == [("drift", "done")]
    assert log.has("trigger drift: 3 of 30 columns drifted")


def test_a_file_with_a_target_class_never_seen_does_not_crash_the_watcher(proj: Path):
    """'unknown' in the target passes validation today, trains, registers, and then the gate's scoring of the
    holder raises a bare ValueError that escapes run_once/run_forever: the watcher dies, the job stays
    'registered', and every restart resumes it and dies again. The loop must go on (quarantine the file or
    fail the job), and later files must still be processed."""
    inc = proj / "data" / "incoming"
    odd = fresh_rows(proj, 150, 1)
    odd.loc[::4, TARGET] = "unknown"
    drop(odd, inc / "new-class.csv")
    w, _ = make_watcher(proj)
    outcomes = w.run_once()
    assert [o.decision for o in outcomes] in ([], ["failed"])  # quarantined, or a failed job
    assert alias_version(proj) == 1
    drop(fresh_rows(proj, 150, 2), inc / "good.csv")
    w2, _ = make_watcher(proj)
    # the later good file goes all the way through the gate (whose verdict depends on the sampled rows)
    assert [o.decision for o in w2.run_once()][-1:] in (["promoted"], ["rejected"])
    assert q(proj, "SELECT count(*) FROM watch_jobs WHERE status NOT IN ('done', 'failed')") == [(0,)]
    reason = (proj / "data" / "quarantine" / "new-class.csv.reason.txt").read_text()
    assert reason == ("target 'diagnosis' has class(es) 'unknown' never seen in training (known: benign, malignant); "
                      "retrain by hand to add a class\n")


# ---- crash states (what a kill -9 leaves between two commits) ------------------------------------------

def test_a_file_validated_before_a_crash_is_not_lost(proj: Path):
    """Killed after take_file() committed the file as accepted (and moved it to processed/) but before
    create_job(): the next start must still train on it. Each file exactly once, none lost."""
    inc = proj / "data" / "incoming"
    path = drop(fresh_rows(proj, 150, 1), inc / "batch-1.csv")
    w, _ = make_watcher(proj)
    assert w.intake.take(path) == 1  # what process_ready does first ... then the process dies
    assert files(proj) == [("batch-1.csv", "accepted", 150, None)]
    w2, _ = make_watcher(proj)
    outcomes = w2.run_once()
    assert [o.decision for o in outcomes] == ["promoted"], "the accepted file was never trained on"
    assert files(proj) == [("batch-1.csv", "processed", 150, 1)]
    assert versions(proj) == [1, 2]


def test_a_crash_between_register_and_the_job_update_does_not_fail_the_resumed_job(proj: Path):
    """Killed right after register() committed version 2 but before the job was marked 'registered': the
    resumed job must gate and promote that version, not register the run again (or fail)."""
    from mlopsctl.services import models, runs
    from mlopsctl.config import with_overrides

    inc = proj / "data" / "incoming"
    path = drop(fresh_rows(proj, 150, 1), inc / "batch-1.csv")
    w, _ = make_watcher(proj)
    job = w.retrain.create_job("files", [w.intake.take(path)])
    data_path, _, dv_id = w.retrain.build_data(job, w.retrain.new_rows(job).train)
    set_job(proj, job, dataset_version_id=dv_id)
    run = runs.train_and_track(with_overrides(w.settings, data={"name": w.retrain.dataset_name}), data_path=data_path,
                                   run_name=f"watch-job-{job}", experiment="watch")
    set_job(proj, job, status="trained", run_id=run["id"])
    models.register(w.settings, str(run["id"]), MODEL)  # committed ... then the process dies
    w2, _ = make_watcher(proj)
    [o] = w2.run_once()
    assert versions(proj) == [1, 2]
    assert (o.decision, o.version) == ("promoted", 2), o.reason
    assert jobs(proj) == [(job, "files", "done", "promoted", run["id"], 2)]


def test_a_run_left_running_by_a_dead_process_is_marked_failed_and_its_job_resumed(proj: Path):
    """The store as a kill -9 during training leaves it (job pending with its data, run RUNNING with the dead
    process's pid): recover() fails the run and finishes the job with a fresh run."""
    inc = proj / "data" / "incoming"
    path = drop(fresh_rows(proj, 150, 1), inc / "batch-1.csv")
    w, _ = make_watcher(proj)
    job = w.retrain.create_job("files", [w.intake.take(path)])
    _, _, dv_id = w.retrain.build_data(job, w.retrain.new_rows(job).train)
    set_job(proj, job, dataset_version_id=dv_id)
    (proj / ".mlops" / "watch" / f"job-{job}.parquet").unlink()  # even the materialized data is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    with contextlib.closing(sqlite3.connect(proj / ".mlops" / "mlops.db")) as con, con:
        con.execute("INSERT INTO runs (experiment_id, name, status, started_at, dataset_version_id, pid, environment) "
                    "SELECT experiment_id, 'watch-job-1', 'RUNNING', started_at, ?, ?, '{}' FROM runs WHERE id = 1",
                    (dv_id, dead_pid))
    w2, log = make_watcher(proj)
    [o] = w2.run_once()
    assert q(proj, "SELECT id, status, failure_reason FROM runs ORDER BY id") == [
        (1, "FINISHED", None), (2, "FAILED", f"abandoned: process {dead_pid} died"), (3, "FINISHED", None)]
    assert (o.decision, o.run_id, o.version) == ("promoted", 3, 2)
    assert jobs(proj) == [(1, "files", "done", "promoted", 3, 2)]
    assert q(proj, "SELECT dataset_version_id FROM runs WHERE id = 3") == [(dv_id,)]  # exactly the recorded data
    assert log.has("resuming job 1 left unfinished by a previous watcher")


# ---- real observer ------------------------------------------------------------------------------------

def test_observer_takes_moved_in_and_written_files_and_catches_up(proj: Path):
    inc = proj / "data" / "incoming"
    drop(fresh_rows(proj, 60, 1), inc / "already-there.csv")  # catch-up at start
    w, log = make_watcher(proj)
    with running(w, log):
        wait_for(lambda: len(w.outcomes) == 1, 30, "the catch-up job")
        fresh_rows(proj, 60, 2).to_csv(inc / "written.csv", index=False)  # written in place
        drop(fresh_rows(proj, 60, 3), inc / "moved-in.parquet")  # renamed into the folder
        wait_for(lambda: len(files(proj)) == 3 and all(f[1] == "processed" for f in files(proj)), 30,
                 "both new files to be processed")
    assert sorted(f[0] for f in files(proj)) == ["already-there.csv", "moved-in.parquet", "written.csv"]
    assert all(f[2] == 60 for f in files(proj))
    assert [j[2] for j in jobs(proj)] == ["done"] * len(jobs(proj))
    assert len(jobs(proj)) in (2, 3)  # the two new files land together: coalesced unless 0.3 s apart
    assert versions(proj) == list(range(1, len(jobs(proj)) + 2))
    assert os_listdir(inc) == []


def test_observer_reads_a_slowly_written_file_once_and_complete(proj: Path):
    inc = proj / "data" / "incoming"
    text = fresh_rows(proj, 120, 5).to_csv(index=False)
    chunks = [text[i:i + len(text) // 8 + 1] for i in range(0, len(text), len(text) // 8 + 1)]
    assert len(chunks) >= 8
    w, log = make_watcher(proj)  # debounce 0.3 s
    with running(w, log):
        with open(inc / "slow.csv", "w") as fh:
            for chunk in chunks:  # one chunk every 0.15 s (< debounce): 1.2 s to write
                fh.write(chunk)
                fh.flush()
                time.sleep(0.15)
        wait_for(lambda: w.outcomes, 30, "the job")
        time.sleep(0.5)
    assert files(proj) == [("slow.csv", "processed", 120, 1)]
    assert q(proj, "SELECT count(*) FROM watched_files WHERE status = 'rejected'") == [(0,)]
    assert [o.decision for o in w.outcomes] == ["promoted"]
    assert (proj / "data" / "processed" / "slow.csv").read_text() == text


def test_observer_coalesces_files_arriving_during_a_training_into_the_next_job(proj: Path):
    inc = proj / "data" / "incoming"
    w, log = make_watcher(proj, MLOPS_TRAIN_PARAMS='{"n_estimators": 100}')
    with running(w, log):
        drop(fresh_rows(proj, 60, 1), inc / "first.csv")
        wait_for(lambda: q(proj, "SELECT count(*) FROM runs WHERE status = 'RUNNING'")[0][0], 30,
                 "the first training to start")
        for i in range(3):
            drop(fresh_rows(proj, 60, 20 + i), inc / f"during-{i}.csv")
            time.sleep(0.05)
        assert q(proj, "SELECT count(*) FROM runs WHERE status = 'RUNNING'") == [(1,)], "training too short"
        wait_for(lambda: len(w.outcomes) == 2, 60, "the second job")
        time.sleep(0.5)
    assert len(w.outcomes) == 2
    assert files(proj) == [("first.csv", "processed", 60, 1)] + [
        (f"during-{i}.csv", "processed", 60, 2) for i in range(3)]
    assert [j[2] for j in jobs(proj)] == ["done", "done"]
    assert versions(proj) == [1, 2, 3]


def test_run_forever_retrains_on_the_schedule_without_any_file(proj: Path):
    w, log = make_watcher(proj, MLOPS_WATCH_EVERY="1s")
    with running(w, log):
        wait_for(lambda: w.outcomes, 30, "a scheduled job")
    assert log.has("trigger schedule: scheduled retrain (every 1 s)")
    assert {(t, s) for t, s in q(proj, "SELECT trigger, status FROM watch_jobs")} == {("schedule", "done")}
    assert files(proj) == []
    assert versions(proj)[:2] == [1, 2]


# ---- the command line: --once and its exit codes -------------------------------------------------------

def test_once_json_exit_0(proj: Path, cli):
    inc = proj / "data" / "incoming"
    drop(fresh_rows(proj, 150, 1), inc / "good.csv")
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


def test_once_exit_0_when_only_junk_or_a_failed_training(proj: Path, cli):
    inc = proj / "data" / "incoming"
    (inc / "junk.parquet").write_bytes(b"PAR1 not a parquet file")
    (inc / "notes [red]x.csv").write_bytes(b"")
    result = cli("watch", "--once", "--json", env=FAST)
    assert (result.exit_code, json.loads(result.stdout)) == (0, [])
    assert "rejected notes [red]x.csv: " in result.stderr  # a name is shown as it is, never read as markup
    drop(fresh_rows(proj, 150, 1), inc / "good.csv")
    result = cli("watch", "--once", "--json", env={**FAST, "MLOPS_TRAIN_PARAMS": '{"n_estimators": -1}'})
    assert result.exit_code == 0, (result.stdout, result.stderr)
    [out] = json.loads(result.stdout)
    assert (out["decision"], out["version"]) == ("failed", None)
    assert "n_estimators" in out["reason"]
    assert jobs(proj)[0][2:4] == ("failed", "failed")
    assert versions(proj) == [1] and alias_version(proj) == 1
    assert q(proj, "SELECT count(*) FROM events WHERE kind = 'retrain_failed'") == [(1,)]


def test_once_exit_7_when_the_store_cannot_be_opened(proj: Path, cli, assert_error):
    drop(fresh_rows(proj, 150, 1), proj / "data" / "incoming" / "good.csv")
    url = "sqlite:////proc/no-such-dir/mlops.db"
    assert_error(cli("watch", "--once", env={**FAST, "MLOPS_STORE_URL": url}), 7,
                 f"cannot open the store at {url}: cannot create /proc/no-such-dir (No such file or directory).")
    assert (proj / "data" / "incoming" / "good.csv").is_file()  # nothing taken


def test_once_exit_7_when_the_store_is_newer_than_this_mlopsctl(proj: Path, cli, assert_error):
    from mlopsctl.store.db import head_revision

    drop(fresh_rows(proj, 150, 1), proj / "data" / "incoming" / "good.csv")
    with contextlib.closing(sqlite3.connect(proj / ".mlops" / "mlops.db")) as con, con:
        con.execute("UPDATE alembic_version SET version_num = 'm999_from_the_future'")
    assert_error(cli("watch", "--once", env=FAST), 7,
                 "the store is at schema revision 'm999_from_the_future', newer than this mlopsctl understands "
                 f"(latest known: {head_revision()}); upgrade mlopsctl (pip install -U mlopsctl).")
    assert (proj / "data" / "incoming" / "good.csv").is_file()


def test_every_must_be_a_duration(proj: Path, cli, assert_error):
    assert_error(cli("watch", "--once", "--every", "soon", env=FAST), 5,
                 "watch.every 'soon' is not a duration; use e.g. 90s, 30m, 6h or 1d.")
