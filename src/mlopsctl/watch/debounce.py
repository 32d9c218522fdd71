"""Which files in the watched folder are candidates, and when one is stable enough to read."""

from __future__ import annotations

import threading
import time
from pathlib import Path


class Debouncer:
    """Tracks candidate files; one is ready when (size, mtime) stayed the same for ``seconds``."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._seen: dict[Path, tuple[int, int, float]] = {}
        self._lock = threading.Lock()

    def touch(self, path: Path) -> None:
        """Start tracking; the stability clock starts at the first look (``ready``), which the watcher's
        wake-up makes immediate."""
        with self._lock:
            self._seen.setdefault(path, (-1, -1, time.monotonic()))

    def pending(self) -> int:
        return len(self._seen)

    def ready(self, now: float | None = None) -> list[Path]:
        now = time.monotonic() if now is None else now
        out = []
        with self._lock:
            for path, (size, mtime, since) in list(self._seen.items()):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    del self._seen[path]
                    continue
                if (st.st_size, st.st_mtime_ns) != (size, mtime):
                    self._seen[path] = (st.st_size, st.st_mtime_ns, now)
                elif now - since >= self.seconds:
                    out.append(path)
                    del self._seen[path]
        return sorted(out)


def is_candidate(path: Path) -> bool:
    """A file that may be data: not hidden, not a temporary or partial file, not a quarantine reason."""
    name = path.name
    return path.is_file() and not name.startswith(".") and not name.endswith(("~", ".tmp", ".part", ".reason.txt"))
