"""Content hashes of a step's deps and outputs, with a stat cache so unchanged files are not read again.

A file's sha256 is reused while its size, mtime (ns) and inode are what they were when it was hashed — the
check DVC and git make. A file modified within the same clock tick as its hashing could keep all three
("racy git"), so an entry is trusted only when the file's mtime is at least ``RACY_NS`` older than the
hashing; otherwise it is hashed again next time, and becomes trusted once that margin has passed.

A folder's hash is the sha256 of its sorted ``relative path <TAB> file sha256`` lines (empty folders and
file modes do not count); its manifest maps each relative path to its file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

from mlopsctl.artifacts import sha256_file
from mlopsctl.common import atomic_write

RACY_NS = 2_000_000_000  # 2 s: coarser than any filesystem's mtime tick that matters here


class StatCache:
    """``path -> (size, mtime_ns, inode, hashed_at_ns, sha256)``, kept in one JSON file (machine-local: the
    store may be shared, stat data is not). Thread-safe; :meth:`save` writes it atomically when it changed."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._dirty = False
        self.hashed = 0  # files read in this process (what the cache saved is the rest)
        self.hashed_bytes = 0
        try:
            raw = json.loads(self.path.read_text())
            self._entries: dict[str, list] = raw["files"] if raw.get("format") == 1 else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self._entries = {}

    def file_sha256(self, path: Path) -> str:
        path = Path(path)
        st = path.stat()
        key = str(path)
        with self._lock:
            e = self._entries.get(key)
        if e and e[0] == st.st_size and e[1] == st.st_mtime_ns and e[2] == st.st_ino and e[3] - e[1] >= RACY_NS:
            return e[4]
        now = time.time_ns()
        sha = sha256_file(path)
        with self._lock:
            self.hashed += 1
            self.hashed_bytes += st.st_size
            self._entries[key] = [st.st_size, st.st_mtime_ns, st.st_ino, now, sha]
            self._dirty = True
        return sha

    def save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            entries = {k: v for k, v in self._entries.items() if os.path.exists(k)}
            self._dirty = False
        with atomic_write(self.path, "w") as fh:
            json.dump({"format": 1, "files": entries}, fh, separators=(",", ":"))


def folder_manifest(folder: Path, cache: StatCache) -> dict[str, str]:
    """``relative/path -> sha256`` of every file under ``folder`` (symlinks followed to their content)."""
    out: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            p = Path(root) / f
            if p.is_file():
                out[p.relative_to(folder).as_posix()] = cache.file_sha256(p)
    return out


def manifest_sha256(manifest: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(manifest):
        h.update(f"{rel}\t{manifest[rel]}\n".encode())
    return h.hexdigest()


def path_sha256(path: Path, cache: StatCache) -> str | None:
    """A file's or folder's content hash; None when nothing is there."""
    if path.is_file():
        return cache.file_sha256(path)
    if path.is_dir():
        return manifest_sha256(folder_manifest(path, cache))
    return None
