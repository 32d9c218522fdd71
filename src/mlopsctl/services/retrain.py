"""Use case: retrain on new data — the job behind ``mlopsctl watch``, from accepted files to a promotion.

The watcher (:mod:`mlopsctl.watch`) validates each new file, then hands the accepted ones to
:meth:`Retrainer.create_job` (a trigger such as a schedule creates a job without files) and runs it with
:meth:`Retrainer.run_job`, which reads as the job goes::

    pending --data--> (dataset version) --train--> trained --register--> registered --gate, promote--> done

* data: the current training data (:class:`Baseline`: the latest version of the project's dataset, else
  ``data.path``) plus (``watch.mode = append``) or instead of (``replace``) the new rows of the job's files,
  the newest ``watch.window_rows`` kept, written to ``.mlops/watch/job-<id>.parquet`` and recorded as a
  dataset version;
* train: :func:`mlopsctl.services.runs.train_and_track` on exactly that frame and dataset version;
* register: a new version of ``registry.model_name``;
* gate and promote (``watch.auto_promote``): :func:`mlopsctl.services.models.promote` scores the candidate
  and the alias holder on new rows held out from the job's files (the same seeded split every time), rows
  neither model has seen; a rejection is recorded, the alias stays.

Each stage commits its result to the job's row before the next begins, so a job killed at any stage (even
``kill -9``) is resumed at that stage by the next watcher (:meth:`Retrainer.unfinished_jobs`): a pending job
whose dataset version is recorded trains on exactly that data; a run registered just before the crash is not
registered twice. Per job, the new rows are read once, the current training data parsed once and the dataset
recorded once. Progress is reported as plain text lines through ``say``; the result is a :class:`JobOutcome`.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from mlopsctl.common import atomic_path, pid_alive
from mlopsctl.config import Settings
from mlopsctl.errors import ConflictError, MlopsError, NotFoundError, StoreError
from mlopsctl.project import open_project
from mlopsctl.services import datasets

MIN_GATE_ROWS = 10
Say = Callable[[str], None]  # progress, as plain text lines


@dataclass
class JobOutcome:
    """How a job ended: promoted, unchanged, rejected (by the gate), registered (no auto-promote) or failed."""

    job_id: int
    decision: str
    run_id: int | None = None
    version: int | None = None
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Baseline:
    """The data the next training starts from, parsed once, and what new rows are checked against."""

    source: tuple[Any, ...]  # what it was read from: a dataset version's blob, or data.path as it was then
    frame: Any
    columns: dict[str, tuple[str, float]]  # column -> (kind, null rate)
    classes: set[str] | None  # the target's classes as text for a classification, else None


@dataclass
class NewRows:
    """The job's new rows, split with the project's seed: ``train`` joins the training data, ``gate`` is held
    out for the gate (None when too few rows or one class: the gate then uses the candidate's own split)."""

    train: Any = None
    gate: Any = None


@dataclass
class _Job:
    """A job's row as the stages advance it (the row is written back after each stage)."""

    id: int
    status: str
    run_id: int | None
    version: int | None
    dataset_version_id: int | None
    timings: dict[str, float]

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        t = time.monotonic()
        yield
        self.timings[stage] = time.monotonic() - t

    def outcome(self, decision: str, reason: str) -> JobOutcome:
        return JobOutcome(self.id, decision, self.run_id, self.version, reason, dict(self.timings))


class Retrainer:
    """The retrain use case for one project: jobs, their stages, and the current training data."""

    def __init__(self, settings: Settings, say: Say = lambda line: None):
        project = open_project(settings)
        self.settings, self.say = settings, say
        self.store, self.arts = project.store, project.artifacts
        self.dataset_name = datasets.dataset_name_for(settings, settings.resolve(settings.data.path), None)
        self._baseline: Baseline | None = None

    # ---- the job, stage by stage ------------------------------------------------------------------------

    def run_job(self, job_id: int) -> JobOutcome:
        """data -> train -> register -> gate -> promote, from the stage the job reached. A job that cannot finish
        is marked failed and returned as such (a watcher must go on); store errors and Ctrl-C propagate, and
        leave the job at its stage for the next start to resume."""
        if self.settings.watch.pipeline:
            return self.run_pipeline_job(job_id)
        job = self._load(job_id)
        rows = functools.cache(lambda: self.new_rows(job_id))  # read by the first stage that needs them, once
        try:
            if job.status == "pending":
                with job.timed("data"):
                    path, frame = self._data(job, rows)
                with job.timed("train"):
                    job.run_id = self._train(job.id, path, frame, job.dataset_version_id)
                job.status = "trained"
                self._save(job)
            if job.status == "trained":
                with job.timed("register"):
                    job.version = self._register(job.run_id)
                job.status = "registered"
                self._save(job)
            decision, reason = "registered", "watch.auto_promote is off"
            if self.settings.watch.auto_promote:
                with job.timed("gate_promote"):
                    decision, reason = self._gate_and_promote(job, rows())
            job.status = "done"
            self._save(job, decision=decision, reason=reason)
            self._finish_files(job.id)
            return job.outcome(decision, reason)
        except (StoreError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # a job that cannot finish must never crash (or crash-loop) the watcher
            return self._fail(job, e)
        finally:
            self._baseline = None  # the training data changed (or may have): parse it again next time

    def run_pipeline_job(self, job_id: int) -> JobOutcome:
        """``watch.pipeline``: the job runs the project's pipeline (:func:`mlopsctl.services.pipeline.retrain`)
        instead of the stages above; the watched files are its raw inputs (they stay), its cache skips what ran."""
        from mlopsctl.services import pipeline

        job = self._load(job_id)
        try:
            with job.timed("pipeline"):
                out = pipeline.retrain(self.settings)
        except (StoreError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # a failed step, another pipeline run in progress: the job fails, the watcher goes on
            return self._fail(job, e)
        job.run_id, job.version, job.status = out["run_id"], out["version"], "done"
        ran = f"ran {', '.join(out['ran'])}" if out["ran"] else "every step cached"
        decision = (out["decision"] or ("registered" if out["version"] else "unchanged")) if out["ran"] else "unchanged"
        reason = (out["reason"] if out["ran"] else None) or f"pipeline run {out['pipeline_run']}: {ran}"
        self.say(f"pipeline run {out['pipeline_run']}: {ran}" + (f"; {decision}" if out["decision"] else ""))
        self._save(job, decision=decision, reason=reason)
        return job.outcome(decision, reason)

    def _data(self, job: _Job, rows: Callable[[], NewRows]) -> tuple[Path, Any]:
        """The job's training data on disk and parsed; recorded (and committed) the first time."""
        from mlopsctl import data

        if job.dataset_version_id is None:
            path, frame, job.dataset_version_id = self.build_data(job.id, rows().train)
            self._save(job)
            return path, frame
        path = self._materialize(job.id, job.dataset_version_id)  # resumed: exactly the data recorded before
        return path, data.read_table(path)

    def _train(self, job_id: int, path: Path, frame: Any, dataset_version_id: int) -> int:
        from mlopsctl.services import runs, tune

        if self.settings.watch.tune_trials:  # a small search, its best parameters refitted as the job's run
            run = tune.retrain(self.settings, data_path=path, trials=self.settings.watch.tune_trials,
                               run_name=f"watch-job-{job_id}", experiment="watch")
        else:
            run = runs.train_and_track(self.settings, data_path=path, frame=frame,
                                       dataset_version_id=dataset_version_id, run_name=f"watch-job-{job_id}",
                                       experiment="watch")
        self.say(f"trained run {run['id']}: " + ", ".join(f"{k}={v:.4f}" for k, v in run["metrics"].items()
                                                          if v is not None))
        return run["id"]

    def _register(self, run_id: int) -> int:
        from mlopsctl.services import models

        name = self.settings.registry.model_name
        version = self._registered_version(name, run_id)  # a crash after register, before the job's update
        if version is None:
            version = models.register(self.settings, run_id, name)["version"]
        self.say(f"registered {name}/{version}")
        return version

    def _gate_and_promote(self, job: _Job, rows: NewRows) -> tuple[str, str]:
        """(decision, reason): the gate on the held-out new rows, and the alias move when it passes."""
        from mlopsctl.services import gate, models

        name, alias = self.settings.registry.model_name, self.settings.registry.alias
        label = (f"{len(rows.gate)} new rows held out from job {job.id}'s files (seen by neither model)"
                 if rows.gate is not None else None)
        try:
            out = models.promote(self.settings, name, job.version, heldout=rows.gate, data_label=label)
        except ConflictError as e:
            self.say(f"gate rejected {name}/{job.version}: {e.message}")
            return "rejected", e.message
        reason = gate.gate_summary(out["gate"]) if out.get("gate") else out.get("message", "")
        self.say(f"promoted {name}/{job.version} to @{alias}: {reason}")
        return ("promoted" if out["changed"] else "unchanged"), reason

    def _fail(self, job: _Job, e: Exception) -> JobOutcome:
        from mlopsctl import registry

        reason = e.message if isinstance(e, MlopsError) else f"{type(e).__name__}: {e}"
        self.say(f"job {job.id} failed: {reason}")
        job.status = "failed"
        self._save(job, decision="failed", reason=reason)
        with self.store.session() as s:
            registry.add_event(s, "retrain_failed", f"job {job.id} failed: {reason}")
        return job.outcome("failed", reason)

    # ---- the data ---------------------------------------------------------------------------------------

    def baseline(self) -> Baseline:
        """The current training data: the latest version of the project's dataset, else ``data.path``. Parsed
        once, and again only when that source changed (a job recorded a new version, `data add` ran)."""
        from mlopsctl import data, tracking

        try:
            with self.store.read() as s:
                dv = tracking.get_dataset_version(s, self.dataset_name)
                source: tuple[Any, ...] = ("blob", dv.file_sha256, Path(dv.source_path).suffix.lower())
        except NotFoundError:
            path = self.settings.resolve(self.settings.data.path)
            source = ("file", path, *_stat_key(path))
        if self._baseline is None or self._baseline.source != source:
            if source[0] == "blob":
                frame = self._read_blob(source[1], source[2])
            else:
                frame = data.read_table(source[1], delimiter=self.settings.data.delimiter,
                                        decimal=self.settings.data.decimal)
            self._baseline = Baseline(source, frame, *data.expected_schema(frame, self.settings.data.target, self.settings.data.task))
        return self._baseline

    def new_rows(self, job_id: int) -> NewRows:
        """The rows of the job's files, split into rows to train on and rows held out for the gate with the
        project's seed: the same split every time, so a resumed job gates on the same rows."""
        import pandas as pd
        from sqlalchemy import select

        from mlopsctl.store.models import WatchedFile

        with self.store.read() as s:
            files = [(f.sha256, f.name) for f in s.scalars(select(WatchedFile).where(WatchedFile.job_id == job_id)
                                                          .order_by(WatchedFile.id))]
        frames = [self._read_blob(sha, Path(fname).suffix) for sha, fname in files]
        if not frames:
            return NewRows()
        new = pd.concat(frames, ignore_index=True)
        gate = new.sample(frac=self.settings.train.test_size, random_state=self.settings.train.seed)
        if len(gate) < MIN_GATE_ROWS or gate[self.settings.data.target].nunique() < 2:
            return NewRows(train=new)
        return NewRows(train=new.drop(index=gate.index).reset_index(drop=True), gate=gate.reset_index(drop=True))

    def build_data(self, job_id: int, new_train: Any) -> tuple[Path, Any, int]:
        """The current training data plus (append) or instead of (replace) ``new_train``, windowed, written and
        recorded as a dataset version: (file, frame as read back from it, dataset version id)."""
        import pandas as pd

        from mlopsctl import data

        frames = [] if new_train is None else [new_train]
        if self.settings.watch.mode == "append" or not frames:
            frames.insert(0, self.baseline().frame)
        combined = pd.concat(frames, ignore_index=True)
        if self.settings.watch.window_rows:
            combined = combined.tail(self.settings.watch.window_rows).reset_index(drop=True)
        path = self._job_path(job_id)
        with atomic_path(path) as tmp:
            combined.to_parquet(tmp, index=False)
        frame = data.read_table(path)  # what the file holds: a fresh job trains on what a resumed one would
        _, _, dv_id = datasets.record_dataset(self.settings, path, frame, self.dataset_name)
        return path, frame, dv_id

    def _read_blob(self, sha: str, suffix: str) -> Any:
        """A data file stored in the artifact store (verified), read by its original extension."""
        from mlopsctl import data

        return data.read_table(self.arts.verified_path(sha), suffix=suffix, delimiter=self.settings.data.delimiter,
                               decimal=self.settings.data.decimal)

    def _job_path(self, job_id: int) -> Path:
        return self.settings.resolve(".mlops/watch") / f"job-{job_id}.parquet"

    def _materialize(self, job_id: int, dv_id: int) -> Path:
        """The job's recorded training data, back on disk from its blob (resume after a crash)."""
        from mlopsctl.artifacts import sha256_file
        from mlopsctl.store.models import DatasetVersion

        path = self._job_path(job_id)
        with self.store.read() as s:
            sha = s.get(DatasetVersion, dv_id).file_sha256
        if not path.exists() or sha256_file(path) != sha:
            with atomic_path(path) as tmp:
                tmp.write_bytes(self.arts.get_bytes(sha))
        return path

    # ---- the job's row ----------------------------------------------------------------------------------

    def create_job(self, trigger: str, file_ids: list[int], reason: str = "") -> int:
        """A pending job for accepted files (``trigger`` "files") or for a trigger's ``reason``."""
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

    def unfinished_jobs(self) -> list[int]:
        """After a crash: runs whose process died are marked FAILED; returns the jobs to resume (accepted files
        that had no job yet get one)."""
        from sqlalchemy import select

        from mlopsctl import registry, tracking
        from mlopsctl.store.models import Run, WatchedFile, WatchJob

        with self.store.session() as s:
            for run in s.scalars(select(Run).where(Run.status == tracking.RUNNING)):
                if run.pid and not pid_alive(run.pid):
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
        return unfinished

    def _load(self, job_id: int) -> _Job:
        from mlopsctl.store.models import WatchJob

        with self.store.read() as s:
            j = s.get(WatchJob, job_id)
            return _Job(j.id, j.status, j.run_id, j.model_version, j.dataset_version_id, dict(j.timings or {}))

    def _save(self, job: _Job, **fields: Any) -> None:
        from mlopsctl.store.models import WatchJob, utcnow

        with self.store.session() as s:
            row = s.get(WatchJob, job.id)
            row.status, row.run_id, row.model_version = job.status, job.run_id, job.version
            row.dataset_version_id, row.timings = job.dataset_version_id, dict(job.timings)
            for k, v in fields.items():
                setattr(row, k, v)
            row.updated_at = utcnow()

    def _registered_version(self, name: str, run_id: int) -> int | None:
        from sqlalchemy import select

        from mlopsctl.store.models import ModelVersion, RegisteredModel

        with self.store.read() as s:
            return s.scalar(select(ModelVersion.version).join(RegisteredModel).where(
                RegisteredModel.name == name, ModelVersion.run_id == run_id))

    def _finish_files(self, job_id: int) -> None:
        from sqlalchemy import update

        from mlopsctl.store.models import WatchedFile

        with self.store.session() as s:
            s.execute(update(WatchedFile).where(WatchedFile.job_id == job_id).values(status="processed"))


def _stat_key(path: Path) -> tuple[Any, ...]:
    try:
        st = path.stat()
    except OSError:
        return ()
    return st.st_mtime_ns, st.st_size

