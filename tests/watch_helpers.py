"""Helpers of the watch tests: a watcher on a project copy, fresh rows dropped into its folder, and reads of
the store (jobs, files, versions, events) with plain SQL."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

MODEL = "breast-cancer"
TARGET = "diagnosis"
FAST = {"MLOPS_WATCH_DEBOUNCE_SECONDS": "0.3"}


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


def data_columns(project: Path) -> list[str]:
    return (project / "data" / "train.csv").read_text().splitlines()[0].split(",")



def bad_files(project: Path) -> dict[str, tuple[Callable[[Path], None], str]]:
    """name -> (writer, exact reason); {path} in a reason is the incoming file's absolute path."""
    cols = data_columns(project)
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
