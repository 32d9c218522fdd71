"""The debouncer: a file is taken only once its size and mtime are stable; what is never a candidate."""

from pathlib import Path

import pytest


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
