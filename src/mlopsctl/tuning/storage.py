"""Where Optuna keeps a study's state (never in our tables) and who may count its trials.

A :class:`Backend` is Optuna's storage plus a lock around "count the trials, then ask for the next one": a journal
file beside the store with a ``flock`` beside it on one machine, or the schema ``optuna`` of a PostgreSQL store with
an advisory lock for workers on several machines. A :class:`Lease` is a worker's own ``flock``, held for its whole
life, which tells the others whether the worker of a RUNNING trial is still alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from mlopsctl.common import flocked

HEARTBEAT_S, GRACE_S = 20, 60  # PostgreSQL: a RUNNING trial without a heartbeat for GRACE_S has lost its worker


@dataclass
class Backend:
    """Optuna's storage for a study, the lock that makes counting and asking atomic, and how lost workers are
    found: lock files in ``workers`` (one machine) or Optuna's heartbeat (PostgreSQL)."""

    storage: Any
    location: str  # for people: the journal path or the database schema
    lock: Callable[[], contextlib.AbstractContextManager]
    workers: Path | None = None


def journal_backend(folder: Path, study: str) -> Backend:
    """``folder/<study>.journal`` (Optuna's journal), ``<study>.lock`` (our counting lock) and ``<study>.workers/``."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{study}.journal"
    workers = folder / f"{study}.workers"
    workers.mkdir(exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    return Backend(storage, str(path), lambda: flocked(folder / f"{study}.lock"), workers)


def postgres_backend(url: str, study: str, schema: str = "optuna") -> Backend:
    """Optuna's RDB storage in its own schema of the store's PostgreSQL database, with heartbeats; the counting
    lock is a PostgreSQL advisory lock keyed by the study name. (Untested here: needs a PostgreSQL server.)"""
    import zlib

    import optuna
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    u = make_url(url)
    with create_engine(u).begin() as conn:
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    options = f"-csearch_path={schema}"
    with _experimental():
        storage = optuna.storages.RDBStorage(
            u.update_query_dict({"options": options}).render_as_string(hide_password=False),
            heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    key = zlib.crc32(f"mlopsctl-tune:{study}".encode())

    @contextlib.contextmanager
    def lock() -> Iterator[None]:
        with storage.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})

    return Backend(storage, f"schema {schema!r} of {u.render_as_string()}", lock, None)


@contextlib.contextmanager
def _experimental() -> Iterator[None]:
    """Heartbeats and fail_stale_trials are "experimental" in Optuna 4 and 5 (and what its own optimize uses)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


class Lease:
    """This process's claim to be alive: an exclusive flock on ``workers/<id>.lock`` held until :meth:`close`."""

    def __init__(self, workers: Path | None):
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._fh = None
        if workers is not None:
            self._path = workers / _lease_file(self.id)
            self._fh = open(self._path, "a+")
            fcntl.flock(self._fh, fcntl.LOCK_EX)

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
            self._fh.close()
            self._fh = None


def _lease_file(worker: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", worker) + ".lock"


def worker_alive(workers: Path, worker: str | None) -> bool:
    """False when ``worker``'s lease file is gone or can be locked (its process has ended)."""
    if not worker:
        return False  # asked for a trial (under the counting lock) and died before naming itself
    path = workers / _lease_file(worker)
    try:
        fh = open(path, "r")
    except FileNotFoundError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        path.unlink()
    return False


# ---- the study and its trials ----------------------------------------------------------------------------
