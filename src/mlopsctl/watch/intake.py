"""Taking a stable file: by content (sha256) once, validated against the training data, then moved.

A file whose bytes were seen before (a restart, a touch, a copy under another name) is not processed again:
it goes where its first copy went. Any other file is read and checked by :func:`mlopsctl.data.validate_new_rows`
against the current training data (:meth:`mlopsctl.services.retrain.Retrainer.baseline`), recorded as a
``WatchedFile`` row (accepted or rejected, with the reason) and an event, and moved: an accepted file into
``watch.processed`` (its bytes stored in the artifact store first, so a resumed job can rebuild its data), a
rejected one into ``watch.quarantine`` beside ``<name>.reason.txt``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from mlopsctl.artifacts import sha256_file
from mlopsctl.common import DATA_SUFFIXES
from mlopsctl.config import Settings
from mlopsctl.errors import MlopsError
from mlopsctl.project import open_project
from mlopsctl.services.retrain import Baseline, Say


class Intake:
    def __init__(self, settings: Settings, baseline: Callable[[], Baseline], say: Say):
        project = open_project(settings)
        self.settings, self.baseline, self.say = settings, baseline, say
        self.store, self.arts = project.store, project.artifacts
        self.quarantine_dir = settings.resolve(settings.watch.quarantine)
        self.processed_dir = settings.resolve(settings.watch.processed)

    def take(self, path: Path) -> int | None:
        """Record the file by sha256; validate it; return its row id if accepted (moved to processed/)."""
        from mlopsctl.store.models import WatchedFile

        t0 = time.monotonic()
        try:
            sha = sha256_file(path)
        except FileNotFoundError:
            return None
        if self._skip_duplicate(path, sha):
            return None
        self.say(f"file seen: {path.name} ({path.stat().st_size} bytes)")
        ok, reason, rows = self.validate(path)
        file_id = self._record(path, sha, ok, reason, rows)
        if not ok:
            self.say(f"rejected {path.name}: {reason} -> {self.quarantine_dir.name}/")
            self._move(path, self.quarantine_dir, reason=reason)
            return None
        self.arts.put_file(path)  # the exact bytes, so a resumed job can rebuild its data
        dest = self._move(path, self.processed_dir)
        with self.store.session() as s:
            s.get(WatchedFile, file_id).path = str(dest)
        self.say(f"validated {path.name}: {rows} rows ({(time.monotonic() - t0) * 1000:.0f} ms)")
        return file_id

    def validate(self, path: Path) -> tuple[bool, str | None, int | None]:
        """(ok, reason, rows): the file must match the training data's columns, kinds, null rates, classes."""
        from mlopsctl import data

        if path.suffix.lower() not in DATA_SUFFIXES:
            return False, f"unsupported file type {path.suffix or '(none)'!r}; drop .csv or .parquet files", None
        try:
            df = data.read_table(path, delimiter=self.settings.data.delimiter, decimal=self.settings.data.decimal)
        except MlopsError as e:
            return False, e.message, None
        current, watch = self.baseline(), self.settings.watch
        reason = data.validate_new_rows(df, current.columns, target=self.settings.data.target, classes=current.classes,
                                        min_rows=watch.min_rows, max_null_increase=watch.max_null_increase)
        return reason is None, reason, len(df)

    def _skip_duplicate(self, path: Path, sha: str) -> bool:
        """True (and the file moved where its first copy went) when these bytes were taken before."""
        from sqlalchemy import select

        from mlopsctl import registry
        from mlopsctl.store.models import WatchedFile

        with self.store.session() as s:
            dup = s.scalar(select(WatchedFile).where(WatchedFile.sha256 == sha))
            if dup is None:
                return False
            self.say(f"{path.name}: same content as {dup.name} (already {dup.status}); skipped")
            registry.add_event(s, "file_duplicate", f"{path.name} is a duplicate of {dup.name}; not processed again",
                               payload={"sha256": sha})
            rejected = dup.status == "rejected"
        if rejected:
            self._move(path, self.quarantine_dir, reason=f"duplicate of a rejected file ({sha[:12]})")
        else:
            self._move(path, self.processed_dir)
        return True

    def _record(self, path: Path, sha: str, ok: bool, reason: str | None, rows: int | None) -> int:
        from mlopsctl import registry
        from mlopsctl.store.models import WatchedFile, utcnow

        with self.store.session() as s:
            wf = WatchedFile(sha256=sha, name=path.name, path=str(path), size=path.stat().st_size, rows=rows,
                             status="accepted" if ok else "rejected", reason=reason, updated_at=utcnow())
            s.add(wf)
            s.flush()
            if ok:
                registry.add_event(s, "file_accepted", f"{path.name}: {rows} rows accepted", payload={"sha256": sha})
            else:
                registry.add_event(s, "file_rejected", f"{path.name} quarantined: {reason}", payload={"sha256": sha})
            return wf.id

    def _move(self, path: Path, folder: Path, reason: str | None = None) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / path.name
        if dest.exists():
            dest = folder / f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}{path.suffix}"
        shutil.move(str(path), dest)
        if reason is not None:
            (folder / f"{dest.name}.reason.txt").write_text(reason.rstrip() + "\n")
        return dest
