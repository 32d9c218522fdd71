"""Continuous training: new data in, validated, retrained, gated, promoted — exactly once per file.

A watchdog observer reports files in ``watch.path``; a file is taken once its size and mtime have been
stable for ``debounce_seconds`` (so a half-copied file is never read). Each file's sha256 is recorded:
the same content is never processed twice. Accepted files (coalesced while a training runs) become one
:class:`WatchJob` that goes through stages recorded in the store — data, train, register, gate/promote —
so a watcher killed at any point resumes at the stage it reached. Rejected files go to
``watch.quarantine`` with ``<name>.reason.txt``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from mlopsctl.artifacts import sha256_file
from mlopsctl.common import DATA_SUFFIXES
from mlopsctl.config import Settings, with_overrides
from mlopsctl.config_checks import parse_duration
from mlopsctl.errors import ConflictError, MlopsError, StoreError

log = logging.getLogger("mlopsctl.watch")
MIN_GATE_ROWS = 10
Say = Callable[[str], None]


# ---- triggers (files are built in; schedule here; monitoring adds drift) --------------------------------

class Trigger(Protocol):
    """Something that can ask for a retrain without new files. ``check`` returns a reason, or None."""

    name: str

    def check(self, watcher: Watcher, now: float) -> str | None: ...


@dataclass
class ScheduleTrigger:
    every_s: float
    name: str = "schedule"
    last: float = field(default_factory=time.monotonic)

    def check(self, watcher: Watcher, now: float) -> str | None:
        if now - self.last >= self.every_s:
            self.last = now
            return f"scheduled retrain (every {self.every_s:g} s)"
        return None


# ---- stability ------------------------------------------------------------------------------------------

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
    name = path.name
    return path.is_file() and not name.startswith(".") and not name.endswith(("~", ".tmp", ".part", ".reason.txt"))


# ---- the watcher ----------------------------------------------------------------------------------------

@dataclass
class JobOutcome:
    job_id: int
    decision: str
    run_id: int | None = None
    version: int | None = None
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)


class Watcher:
    def __init__(self, settings: Settings, *, say: Say = print, triggers: list[Trigger] | None = None):
        from mlopsctl.services import datasets
        from mlopsctl.project import open_project

        self.settings = settings
        self.say = say
        self.folder = settings.resolve(settings.watch.path)
        self.quarantine_dir = settings.resolve(settings.watch.quarantine)
        self.processed_dir = settings.resolve(settings.watch.processed)
        self.debouncer = Debouncer(settings.watch.debounce_seconds)
        self.triggers: list[Trigger] = list(triggers or [])
        if settings.watch.every:
            self.triggers.append(ScheduleTrigger(parse_duration(settings.watch.every, "--every")))
        self.store = open_project(settings).store
        self.arts = open_project(settings).artifacts
        self.dataset_name = datasets.dataset_name_for(settings, settings.resolve(settings.data.path), None)
        self.stop = threading.Event()
        self.wake = threading.Event()  # set by note(): the idle loop looks at a new file at once
        self.outcomes: list[JobOutcome] = []
        self.first_seen: dict[Path, float] = {}  # for the latency breakdown
        for d in (self.folder, self.quarantine_dir, self.processed_dir):
            d.mkdir(parents=True, exist_ok=True)

    # -- discovery
    def scan(self) -> None:
        for p in sorted(self.folder.iterdir()):
            if is_candidate(p):
                self.note(p)

    def note(self, path: Path) -> None:
        path = Path(path)
        if path.parent.resolve() != self.folder.resolve() or not is_candidate(path):
            return
        self.first_seen.setdefault(path, time.monotonic())
        self.debouncer.touch(path)
        self.wake.set()

    # -- one pass
    def recover(self) -> None:
        """After a crash: mark runs whose process died as FAILED and resume unfinished jobs."""
        from sqlalchemy import select

        from mlopsctl import registry, tracking
        from mlopsctl.store.models import Run, WatchedFile, WatchJob

        with self.store.session() as s:
            for run in s.scalars(select(Run).where(Run.status == tracking.RUNNING)):
                if run.pid and not _alive(run.pid):
                    tracking.finish_run(s, run.id, tracking.FAILED, f"abandoned: process {run.pid} died")
                    registry.add_event(s, "training_failed", f"run {run.id} abandoned (process {run.pid} died)",
                                       run_id=run.id)
            unfinished = [j.id for j in s.scalars(select(WatchJob).where(
                WatchJob.status.in_(("pending", "trained", "registered"))).order_by(WatchJob.id))]
            orphans = list(s.scalars(select(WatchedFile.id).where(WatchedFile.status == "accepted",
                                                                  WatchedFile.job_id.is_(None))
                                     .order_by(WatchedFile.id)))
        if orphans:  # accepted (and moved to processed/) just before a crash, before their job existed
            self.say(f"resuming {len(orphans)} accepted file(s) that had no job yet")
            unfinished.append(self.create_job("files", orphans))
        for job_id in unfinished:
            self.say(f"resuming job {job_id} left unfinished by a previous watcher")
            self.outcomes.append(self.run_job(job_id))

    def process_ready(self, now: float | None = None) -> list[JobOutcome]:
        """Take every stable file, validate, and run one job for all the accepted ones."""
        ready = self.debouncer.ready(now)
        if not ready:
            return []
        accepted = []
        for path in ready:
            verdict = self.take_file(path)
            if verdict is not None:
                accepted.append(verdict)
        if not accepted:
            return []
        job_id = self.create_job("files", accepted)
        outcome = self.run_job(job_id)
        self.outcomes.append(outcome)
        return [outcome]

    def take_file(self, path: Path) -> int | None:
        """Record the file by sha256; validate it; return its row id if accepted (moved to processed/)."""
        from sqlalchemy import select

        from mlopsctl import registry
        from mlopsctl.store.models import WatchedFile, utcnow

        t0 = time.monotonic()
        try:
            sha = sha256_file(path)
        except FileNotFoundError:
            return None
        with self.store.session() as s:
            dup = s.scalar(select(WatchedFile).where(WatchedFile.sha256 == sha))
            if dup is not None:
                self.say(f"[dim]{path.name}: same content as {dup.name} (already {dup.status}); skipped[/]")
                registry.add_event(s, "file_duplicate", f"{path.name} is a duplicate of {dup.name}; not processed again",
                                   payload={"sha256": sha})
                dup_status = dup.status
            else:
                dup_status = None
        if dup_status is not None:
            self._move(path, self.processed_dir if dup_status != "rejected" else self.quarantine_dir,
                       reason=None if dup_status != "rejected" else f"duplicate of a rejected file ({sha[:12]})")
            return None
        self.say(f"file seen: {path.name} ({path.stat().st_size} bytes)")
        ok, reason, rows = self.validate(path)
        with self.store.session() as s:
            wf = WatchedFile(sha256=sha, name=path.name, path=str(path), size=path.stat().st_size, rows=rows,
                             status="accepted" if ok else "rejected", reason=reason, updated_at=utcnow())
            s.add(wf)
            s.flush()
            file_id = wf.id
            if ok:
                registry.add_event(s, "file_accepted", f"{path.name}: {rows} rows accepted", payload={"sha256": sha})
            else:
                registry.add_event(s, "file_rejected", f"{path.name} quarantined: {reason}", payload={"sha256": sha})
        if not ok:
            self.say(f"[red]rejected[/] {path.name}: {reason} -> {self.quarantine_dir.name}/")
            self._move(path, self.quarantine_dir, reason=reason)
            return None
        self.arts.put_file(path)  # the exact bytes, so a resumed job can rebuild its data
        dest = self._move(path, self.processed_dir)
        with self.store.session() as s:
            s.get(WatchedFile, file_id).path = str(dest)
        self.say(f"[green]validated[/] {path.name}: {rows} rows ({(time.monotonic() - t0) * 1000:.0f} ms)")
        return file_id

    def validate(self, path: Path) -> tuple[bool, str | None, int | None]:
        """(ok, reason, rows): the file must match the training data's contract."""
        from mlopsctl import data

        if path.suffix.lower() not in DATA_SUFFIXES:
            return False, f"unsupported file type {path.suffix or '(none)'!r}; drop .csv or .parquet files", None
        try:
            df = data.read_table(path, delimiter=self.settings.data.delimiter, decimal=self.settings.data.decimal)
        except MlopsError as e:
            return False, e.message, None
        expected = self.expected_schema()
        target = self.settings.data.target
        cols = list(map(str, df.columns))
        missing = [c for c in expected if c not in cols]
        if missing:
            return False, f"missing column(s) {', '.join(missing)}; expected {', '.join(expected)}", len(df)
        extra = [c for c in cols if c not in expected]
        if extra:
            return False, f"unexpected column(s) {', '.join(extra)}; expected {', '.join(expected)}", len(df)
        if df[target].isna().all():
            return False, f"target column {target!r} has no values", len(df)
        if len(df) < self.settings.watch.min_rows:
            return False, f"{len(df)} rows, fewer than watch.min_rows = {self.settings.watch.min_rows}", len(df)
        for name, (kind, null_rate) in expected.items():
            s = df[name]
            if s.isna().all():
                got = "all null"
            else:
                got = data.column_kind(s)
                if got != kind and not (kind == "numeric" and got == "boolean"):
                    return False, f"column {name!r} is {got}, but the training data has it {kind}", len(df)
            rate = float(s.isna().mean())
            if rate > null_rate + self.settings.watch.max_null_increase:
                return False, (f"column {name!r} is {rate:.0%} null, above the training data's {null_rate:.0%} "
                               f"+ watch.max_null_increase {self.settings.watch.max_null_increase:.0%}"), len(df)
        classes = self.known_classes()
        if classes is not None:
            new = sorted(_labels(df[target]) - classes)
            if new:
                return False, (f"target {target!r} has class(es) {', '.join(map(repr, new[:10]))} never seen in training "
                               f"(known: {', '.join(sorted(classes)[:20])}); retrain by hand to add a class"), len(df)
        return True, None, len(df)

    def expected_schema(self) -> dict[str, tuple[str, float]]:
        """column -> (kind, null rate) of the current training data (latest dataset version, else data.path)."""
        if not hasattr(self, "_schema"):
            current = self.current_frame()
            from mlopsctl import data

            self._schema = {str(c): (data.column_kind(current[c]), float(current[c].isna().mean())) for c in current.columns}
        return self._schema

    def known_classes(self) -> set[str] | None:
        """The training data's target classes (as text) when the task is classification, else None."""
        if not hasattr(self, "_classes"):
            from mlopsctl import data

            current = self.current_frame()
            target = self.settings.data.target
            self._classes = None
            if target in current.columns and data.infer_task(current[target].dropna(), self.settings.data.task) == "classification":
                self._classes = _labels(current[target])
        return self._classes

    def forget_schema(self) -> None:
        """The training data changed (a job finished): re-read its schema and classes next time."""
        for attr in ("_schema", "_classes"):
            if hasattr(self, attr):
                delattr(self, attr)

    def current_frame(self) -> Any:
        """The data the next training starts from: the latest version of the dataset, else data.path."""
        from mlopsctl import data, tracking
        from mlopsctl.errors import NotFoundError

        try:
            with self.store.read() as s:
                dv = tracking.get_dataset_version(s, self.dataset_name)
                sha, suffix = dv.file_sha256, Path(dv.source_path).suffix.lower()
        except NotFoundError:
            return data.read_table(self.settings.resolve(self.settings.data.path), delimiter=self.settings.data.delimiter,
                                   decimal=self.settings.data.decimal)
        return self._read_blob(sha, suffix)

    # -- jobs
    def create_job(self, trigger: str, file_ids: list[int], reason: str = "") -> int:
        from mlopsctl import registry
        from mlopsctl.store.models import WatchedFile, WatchJob

        with self.store.session() as s:
            job = WatchJob(trigger=trigger, status="pending", reason=reason or None)
            s.add(job)
            s.flush()
            for fid in file_ids:
                s.get(WatchedFile, fid).job_id = job.id
            registry.add_event(s, "retrain_started", f"job {job.id}: retrain on {len(file_ids)} new file(s)"
                               if file_ids else f"job {job.id}: {reason}", payload={"files": file_ids})
            return job.id

    def run_job(self, job_id: int) -> JobOutcome:
        """Advance a job through its remaining stages; each stage's result is committed before the next."""
        from mlopsctl import registry
        from mlopsctl.services import gate, models, runs
        from mlopsctl.store.models import WatchJob

        with self.store.read() as s:
            job = s.get(WatchJob, job_id)
            status, run_id, version, timings = job.status, job.run_id, job.model_version, dict(job.timings or {})
            dv_id = job.dataset_version_id
        name = self.settings.registry.model_name
        try:
            if status == "pending":
                t = time.monotonic()
                if dv_id is None:
                    data_path, dv_id = self.build_data(job_id)
                    self._update(job_id, dataset_version_id=dv_id)
                else:  # resumed: train on exactly the data recorded before the crash
                    data_path = self._materialize(job_id, dv_id)
                timings["data"] = time.monotonic() - t
                t = time.monotonic()
                run = runs.train_and_track(
                    with_overrides(self.settings, data={"name": self.dataset_name}), data_path=data_path,
                    run_name=f"watch-job-{job_id}", experiment="watch")
                timings["train"] = time.monotonic() - t
                run_id = run["id"]
                self.say(f"trained run {run_id}: " + ", ".join(f"{k}={v:.4f}" for k, v in run["metrics"].items()
                                                               if v is not None))
                self._update(job_id, status="trained", run_id=run_id, timings=timings)
                status = "trained"
            if status == "trained":
                t = time.monotonic()
                version = self._registered_version(name, run_id)  # a crash after register, before the update
                if version is None:
                    version = models.register(self.settings, str(run_id), name)["version"]
                timings["register"] = time.monotonic() - t
                self.say(f"registered {name}/{version}")
                self._update(job_id, status="registered", model_version=version, timings=timings)
                status = "registered"
            decision, reason = "registered", "watch.auto_promote is off"
            if self.settings.watch.auto_promote:
                t = time.monotonic()
                _, gate_rows = self.new_rows(job_id)
                label = (f"{len(gate_rows)} new rows held out from job {job_id}'s files (seen by neither model)"
                         if gate_rows is not None else None)
                try:
                    out = models.promote(self.settings, name, version, heldout=gate_rows, data_label=label)
                    decision = "promoted" if out["changed"] else "unchanged"
                    reason = gate.gate_summary(out["gate"]) if out.get("gate") else out.get("message", "")
                    self.say(f"[green]promoted[/] {name}/{version} to @{self.settings.registry.alias}: {reason}")
                except ConflictError as e:
                    decision, reason = "rejected", e.message
                    self.say(f"[yellow]gate rejected[/] {name}/{version}: {e.message}")
                timings["gate_promote"] = time.monotonic() - t
            self._update(job_id, status="done", decision=decision, reason=reason, timings=timings)
            self._finish_files(job_id)
            return JobOutcome(job_id, decision, run_id, version, reason, timings)
        except StoreError:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise  # abandoned: the job stays at its stage and the next start resumes it
        except Exception as e:  # a job that cannot finish must never crash (or crash-loop) the watcher
            reason = e.message if isinstance(e, MlopsError) else f"{type(e).__name__}: {e}"
            self.say(f"[red]job {job_id} failed[/]: {reason}")
            self._update(job_id, status="failed", decision="failed", reason=reason, timings=timings)
            with self.store.session() as s:
                registry.add_event(s, "retrain_failed", f"job {job_id} failed: {reason}")
            return JobOutcome(job_id, "failed", run_id, version, reason, timings)
        finally:
            self.forget_schema()

    def _read_blob(self, sha: str, suffix: str) -> Any:
        """A data file stored in the artifact store (verified), read by its original extension."""
        from mlopsctl import data

        return data.read_table(self.arts.verified_path(sha), suffix=suffix, delimiter=self.settings.data.delimiter,
                               decimal=self.settings.data.decimal)

    def new_rows(self, job_id: int) -> tuple[Any, Any]:
        """(rows to train on, rows held out for the gate) from the job's files, split with the project's
        seed — the same split every time, so a resumed job gates on the same rows. Neither the current
        alias holder nor the candidate has seen the held-out rows. Too few rows (or one class) for a gate
        set: all rows train, and the gate falls back to the candidate's own held-out split."""
        import pandas as pd
        from sqlalchemy import select

        from mlopsctl.store.models import WatchedFile

        with self.store.read() as s:
            files = [(f.sha256, f.name) for f in s.scalars(select(WatchedFile).where(WatchedFile.job_id == job_id)
                                                          .order_by(WatchedFile.id))]
        frames = [self._read_blob(sha, Path(fname).suffix) for sha, fname in files]
        if not frames:
            return None, None
        new = pd.concat(frames, ignore_index=True)
        gate = new.sample(frac=self.settings.train.test_size, random_state=self.settings.train.seed)
        target = self.settings.data.target
        if len(gate) < MIN_GATE_ROWS or gate[target].nunique() < 2:
            return new, None
        return new.drop(index=gate.index).reset_index(drop=True), gate.reset_index(drop=True)

    def build_data(self, job_id: int) -> tuple[Path, int]:
        """Current training data plus (append) or instead of (replace) the job's new rows, windowed, recorded
        as a dataset version. Returns the file and the version id."""
        import pandas as pd

        from mlopsctl.services import datasets

        new_train, _ = self.new_rows(job_id)
        frames = [] if new_train is None else [new_train]
        if self.settings.watch.mode == "append" or not frames:
            frames.insert(0, self.current_frame())
        combined = pd.concat(frames, ignore_index=True)
        if self.settings.watch.window_rows:
            combined = combined.tail(self.settings.watch.window_rows).reset_index(drop=True)
        path = self._job_path(job_id)
        tmp = path.with_suffix(".parquet.tmp")
        combined.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        _, _, dv_id = datasets.record_dataset(self.settings, path, combined, self.dataset_name)
        return path, dv_id

    def _job_path(self, job_id: int) -> Path:
        out_dir = self.settings.resolve(".mlops/watch")
        out_dir.mkdir(parents=True, exist_ok=True)
        return out_dir / f"job-{job_id}.parquet"

    def _materialize(self, job_id: int, dv_id: int) -> Path:
        """The job's recorded training data, back on disk from its blob (resume after a crash)."""
        from mlopsctl.store.models import DatasetVersion

        path = self._job_path(job_id)
        with self.store.read() as s:
            sha = s.get(DatasetVersion, dv_id).file_sha256
        if not path.exists() or sha256_file(path) != sha:
            tmp = path.with_suffix(".parquet.tmp")
            tmp.write_bytes(self.arts.get_bytes(sha))
            os.replace(tmp, path)
        return path

    def _registered_version(self, name: str, run_id: int) -> int | None:
        from sqlalchemy import select

        from mlopsctl.store.models import ModelVersion, RegisteredModel

        with self.store.read() as s:
            return s.scalar(select(ModelVersion.version).join(RegisteredModel).where(
                RegisteredModel.name == name, ModelVersion.run_id == run_id))

    def _update(self, job_id: int, **fields: Any) -> None:
        from mlopsctl.store.models import WatchJob, utcnow

        with self.store.session() as s:
            job = s.get(WatchJob, job_id)
            for k, v in fields.items():
                setattr(job, k, v)
            job.updated_at = utcnow()

    def _finish_files(self, job_id: int) -> None:
        from sqlalchemy import update

        from mlopsctl.store.models import WatchedFile

        with self.store.session() as s:
            s.execute(update(WatchedFile).where(WatchedFile.job_id == job_id).values(status="processed"))

    def _move(self, path: Path, folder: Path, reason: str | None = None) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / path.name
        if dest.exists():
            dest = folder / f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}{path.suffix}"
        shutil.move(str(path), dest)
        if reason is not None:
            (folder / f"{dest.name}.reason.txt").write_text(reason.rstrip() + "\n")
        return dest

    # -- loops
    def check_triggers(self, now: float | None = None) -> list[JobOutcome]:
        now = time.monotonic() if now is None else now
        for trig in self.triggers:
            reason = trig.check(self, now)
            if reason:
                self.say(f"trigger {trig.name}: {reason}")
                job_id = self.create_job(trig.name, [], reason)
                outcome = self.run_job(job_id)
                self.outcomes.append(outcome)
                return [outcome]
        return []

    def run_once(self, timeout: float | None = None) -> list[JobOutcome]:
        """Process what is pending (waiting for files to settle), then return."""
        self.recover()
        self.scan()
        self.check_triggers()  # e.g. `watch --once --on-drift` from cron
        deadline = time.monotonic() + (timeout if timeout is not None else max(30.0, 10 * self.debouncer.seconds))
        while self.debouncer.pending() and time.monotonic() < deadline and not self.stop.is_set():
            self.process_ready()
            if self.debouncer.pending():
                time.sleep(min(0.1, self.debouncer.seconds or 0.05))
        return self.outcomes

    def run_forever(self, tick: float = 0.1) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.is_directory or event.event_type in ("deleted", "opened", "closed_no_write"):
                    return
                target = getattr(event, "dest_path", "") or event.src_path
                watcher.note(Path(os.fsdecode(target)))

        observer = Observer()
        observer.schedule(Handler(), str(self.folder), recursive=False)
        observer.start()
        try:
            self.recover()
            self.scan()  # catch-up: files already there
            self.say(f"watching {self.folder} (debounce {self.debouncer.seconds:g} s, mode {self.settings.watch.mode}"
                     + (f", every {self.settings.watch.every}" if self.settings.watch.every else "") + "); Ctrl-C to stop")
            while not self.stop.is_set():
                if not self.debouncer.pending():
                    self.wake.wait(0.5)
                else:
                    time.sleep(tick)
                self.wake.clear()
                self.process_ready()
                self.check_triggers()
        finally:
            observer.stop()
            observer.join(5)


def _labels(series: Any) -> set[str]:
    """Class labels as text, with integral floats (1.0 from a CSV with gaps) written as integers."""
    return {str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in series.dropna().unique()}


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def install_signal_handlers(watcher: Watcher) -> None:
    """First SIGINT/SIGTERM: finish the current step and stop. Second: abandon it (KeyboardInterrupt)."""

    def handler(signum: int, _frame: Any) -> None:
        if watcher.stop.is_set():
            raise KeyboardInterrupt
        watcher.stop.set()
        watcher.say(f"{signal.Signals(signum).name}: finishing the current step, then stopping "
                    "(again to abandon it)")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
