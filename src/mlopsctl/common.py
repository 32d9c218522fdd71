"""Small helpers every layer shares: plain JSON values, timestamps, atomic file writes, data-file suffixes.

Standard library only, no internal imports: anything may import this.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Iterator

DATA_SUFFIXES = (".csv", ".parquet", ".pq")  # what train, data add, watch and predict read
PARQUET_SUFFIXES = (".parquet", ".pq")


def parse_value(text: str) -> Any:
    """A value typed on a command line or in a search space: JSON numbers, lists and objects; true/false and
    none/null in any case; anything else is the text itself (``"gini"``, ``"sqrt"``)."""
    text = text.strip()
    low = {"true": "true", "false": "false", "none": "null", "null": "null"}.get(text.lower(), text)
    try:
        return json.loads(low)
    except ValueError:
        return text


def jsonable(o: Any) -> Any:
    """Plain JSON types for storage and output: numpy scalars become Python values, NaN and infinities
    become None, tuples become lists, keys become strings."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, float):
        return None if math.isnan(o) or math.isinf(o) else o
    if hasattr(o, "item") and callable(o.item) and not isinstance(o, (str, bytes)):  # numpy scalar
        return jsonable(o.item())
    return o


def iso(dt: datetime | None) -> str | None:
    """A stored UTC time as ISO 8601 text with a ``Z``, to the second."""
    return dt.isoformat(timespec="seconds") + "Z" if dt else None


def readable_by_all(path: Path) -> None:
    """mkstemp creates files 0600; give a finished output the permissions a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_path(dest: Path, *, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside ``dest`` to write to; renamed to ``dest`` when the block ends without error
    (``durable``: fsynced first), removed when it fails. A crash never leaves a partial file under ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        readable_by_all(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_write(dest: Path, mode: str = "wb", *, durable: bool = False, **open_kw: Any) -> Iterator[IO[Any]]:
    """``with atomic_write(path, "w") as fh: fh.write(...)``: :func:`atomic_path` with the file opened."""
    with atomic_path(dest, durable=durable) as tmp, open(tmp, mode, **open_kw) as fh:
        yield fh
        fh.flush()


@contextlib.contextmanager
def flocked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block: one process at a time."""
    import fcntl

    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (this one included); a process of another user counts."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
