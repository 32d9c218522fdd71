"""Which steps of a pipeline run, in which order and how many at once, which come from the cache, and the record
of each execution in the store."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from typing import Any, Iterable

from mlopsctl.common import jsonable
from mlopsctl.config import Settings
from mlopsctl.errors import ConfigError, CorruptArtifactError, MlopsError, NotFoundError, StepNotFinished
from mlopsctl.pipeline import keys
from mlopsctl.pipeline.graph import Pipeline, Step
from mlopsctl.pipeline.hashing import StatCache, path_sha256
from mlopsctl.project import open_project
from mlopsctl.services.pipeline.execute import StepExecutor
from mlopsctl.services.pipeline.outcome import GOOD, WORK_DIR, Outcome, Progress, blobs

class Runner(StepExecutor):
    def __init__(self, settings: Settings, pipeline: Pipeline, *, progress: Progress | None = None,
                 force: Iterable[str] = (), no_cache: bool = False, trigger: str = "cli"):
        self.settings, self.pipeline = settings, pipeline
        self.project = open_project(settings)
        self.work = settings.resolve(WORK_DIR)
        self.cache = StatCache(self.work / "stat-cache.json")
        self.force, self.no_cache, self.trigger = set(force), no_cache, trigger
        self.progress = progress or (lambda event: None)
        self.digests: dict[str, str] = {}  # step -> result digest, for the steps settled in this invocation
        self.products: dict[str, dict[str, Any]] = {}  # step -> what it produced (run id, version, ...)
        self.cancel = threading.Event()
        self._children: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.pipeline_run_id: int | None = None

    # ---- inputs and the cache ------------------------------------------------------------------------

    def inputs(self, step: Step, *, planning: bool = False) -> tuple[dict[str, Any] | None, list[str]]:
        """(the step's key inputs, []) or, while planning, (None, why they cannot be known yet)."""
        unknown = [u for u in step.upstream if u not in self.digests]
        if unknown:
            if not planning:
                raise StepNotFinished(f"upstream step {', '.join(unknown)} has not settled")
            return None, [f"upstream step {u} is stale" for u in unknown]
        deps: dict[str, str] = {}
        for d in step.deps:
            sha = path_sha256(self.settings.resolve(d), self.cache)
            if sha is None:
                producer = self.pipeline.producer(d)
                if producer is None:
                    raise ConfigError(f"pipeline step {step.name!r}: its dep {d!r} does not exist and no step writes "
                                      "it; create it or fix the step's deps.")
                if planning:
                    return None, [f"dep {d} is missing (written by step {producer})"]
                raise StepNotFinished(f"its dep {d!r} is missing although step {producer!r} finished; check that step's outs.")
            deps[d] = sha
        return keys.inputs(step, self.settings, deps, {u: self.digests[u] for u in step.upstream}), []

    # The cache checks and the records use SQLAlchemy Core on store.tables: a fully cached run imports no ORM.

    def _hit(self, step: Step, key: str) -> Any:
        """The newest good execution (a row of pipeline_executions) with this key whose products are still
        there, or None."""
        from sqlalchemy import select

        from mlopsctl.store.tables import model_versions, pipeline_executions as pe, runs

        with self.project.store.transaction(write=False) as conn:
            rows = conn.execute(select(pe).where(pe.c.key == key, pe.c.status.in_(GOOD))
                                .order_by(pe.c.id.desc()).limit(5)).all()
            for e in rows:
                if step.kind in ("train", "evaluate") and (e.run_id is None or conn.scalar(
                        select(runs.c.status).where(runs.c.id == e.run_id)) != "FINISHED"):
                    continue
                if step.kind in ("register", "promote") and (e.model_version_id is None or conn.scalar(
                        select(model_versions.c.id).where(model_versions.c.id == e.model_version_id)) is None):
                    continue
                if not all(self.project.artifacts.path(sha).exists() for sha in blobs(e.outputs)):
                    continue
                return e
        return None

    def _last_good_inputs(self, name: str) -> dict[str, Any] | None:
        from sqlalchemy import select

        from mlopsctl.store.tables import pipeline_executions as pe

        with self.project.store.transaction(write=False) as conn:
            return conn.scalar(select(pe.c.inputs).where(pe.c.step == name, pe.c.status.in_(GOOD))
                               .order_by(pe.c.id.desc()).limit(1))

    def why_run(self, step: Step, step_inputs: dict[str, Any]) -> list[str]:
        if step.name in self.force:
            return ["forced (--force)"]
        if self.no_cache:
            return ["--no-cache"]
        if step.always:
            return ["always = true"]
        if not step.cacheable:
            return ["a command without deps always runs"]
        return keys.explain(self._last_good_inputs(step.name), step_inputs)

    def uses_cache(self, step: Step) -> bool:
        return step.cacheable and not self.no_cache and step.name not in self.force

    def outs_to_restore(self, step: Step, outputs: dict[str, Any]) -> list[str]:
        return [p for p, o in outputs.items() if path_sha256(self.settings.resolve(p), self.cache) != o["sha256"]]

    # ---- planning (status, --dry-run) ----------------------------------------------------------------

    def plan(self, names: list[str]) -> list[Outcome]:
        out = []
        for name in names:
            step = self.pipeline.steps[name]
            try:
                step_inputs, why = self.inputs(step, planning=True)
            except ConfigError as e:
                step_inputs, why = None, [e.message]
            if step_inputs is None:
                out.append(Outcome(name, "stale", why))
                continue
            key = keys.cache_key(step_inputs)
            hit = self._hit(step, key) if self.uses_cache(step) else None
            if hit is None:
                out.append(Outcome(name, "stale", self.why_run(step, step_inputs), key))
                continue
            restore = self.outs_to_restore(step, hit.outputs)
            self.digests[name] = keys.result_digest(hit.outputs, hit.result)
            reasons = [f"{p} missing or changed: restorable from the cache" for p in restore] or ["inputs unchanged"]
            out.append(Outcome(name, "fresh", reasons, key, outputs=hit.outputs, result=hit.result,
                               execution_id=hit.id))
        return out

    # ---- running -------------------------------------------------------------------------------------

    def start(self, targets: list[str], options: dict[str, Any]) -> None:
        from sqlalchemy import insert

        from mlopsctl.store.tables import pipeline_runs

        with self.project.store.transaction(write=True) as conn:
            self.pipeline_run_id = conn.execute(insert(pipeline_runs).values(
                trigger=self.trigger, targets=targets, options=options, status="running")).inserted_primary_key[0]

    def finish(self, status: str, message: str | None, t0: float) -> None:
        from sqlalchemy import update

        from mlopsctl.store.tables import pipeline_runs, utcnow

        with self.project.store.transaction(write=True) as conn:
            conn.execute(update(pipeline_runs).where(pipeline_runs.c.id == self.pipeline_run_id).values(
                status=status, message=message, ended_at=utcnow(), duration_s=time.perf_counter() - t0))
        self.cache.save()

    def run(self, names: list[str], jobs: int, restore_only: Iterable[str] = ()) -> list[Outcome]:
        """Settle ``names`` (in pipeline order), at most ``jobs`` at a time. Steps in ``restore_only`` may come
        from the cache but never run (``pipeline step``: the steps before it)."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        restore_only = set(restore_only)
        remaining = list(names)
        done: dict[str, Outcome] = {}
        running: dict[Any, str] = {}
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="mlops-step") as pool:
            try:
                while remaining or running:
                    for name in list(remaining):
                        step = self.pipeline.steps[name]
                        ups = [u for u in step.upstream if u in names]
                        bad = [u for u in ups if u in done and done[u].status in ("failed", "skipped")]
                        if bad:
                            remaining.remove(name)
                            done[name] = self.skip(step, bad)
                        elif all(u in done for u in ups) and len(running) < jobs and not self.cancel.is_set():
                            remaining.remove(name)
                            running[pool.submit(self.settle, step, name not in restore_only)] = name
                    if not running:
                        break
                    finished, _ = wait(list(running), timeout=0.25, return_when=FIRST_COMPLETED)
                    for f in finished:
                        name = running.pop(f)
                        done[name] = f.result()
            except KeyboardInterrupt:
                self.cancel.set()
                self._interrupt_children()
                for f in list(running):
                    with contextlib.suppress(Exception):
                        f.result()
                raise
        return [done[n] for n in names if n in done]

    def skip(self, step: Step, bad: list[str]) -> Outcome:
        o = Outcome(step.name, "skipped", [f"upstream step {', '.join(bad)} did not finish"])
        self._record(step, o, None)
        self.progress({"step": step.name, "event": "skipped", "outcome": o.view()})
        return o

    def settle(self, step: Step, may_run: bool = True) -> Outcome:
        """Restore the step from the cache, or run it; never raises for a failure of the step itself."""
        t0 = time.perf_counter()
        o = Outcome(step.name, "failed")
        step_inputs = None
        try:
            step_inputs, _ = self.inputs(step)
            o.key = keys.cache_key(step_inputs)
            hit = self._hit(step, o.key) if self.uses_cache(step) else None
            if hit is not None:
                o.restored = self.outs_to_restore(step, hit.outputs)
                try:
                    for p in o.restored:
                        self._restore(p, hit.outputs[p])
                except (CorruptArtifactError, NotFoundError) as e:  # a damaged cache: run the step instead
                    self.progress({"step": step.name, "event": "note", "text": e.message})
                    hit = None
            if hit is not None:
                o.status, o.outputs, o.result = "cached", hit.outputs, hit.result
                o.reasons = [f"restored {', '.join(o.restored)} from the cache"] if o.restored else ["inputs unchanged"]
                o.duration_s = time.perf_counter() - t0
                self._record(step, o, step_inputs, source_id=hit.source_id or hit.id)
                self._settled(step, o)
                return o
            if not may_run:
                raise StepNotFinished(f"it has not run with its current inputs ({'; '.join(self.why_run(step, step_inputs))}); "
                              f"run `mlopsctl pipeline step {step.name}` (or `pipeline run`) first")
            o.reasons = self.why_run(step, step_inputs)
            self.progress({"step": step.name, "event": "running", "reasons": o.reasons})
            self._cmd(step, o) if step.kind == "cmd" else self._builtin(step, o)
            o.outputs = self._store_outputs(step)
            o.status, o.exit_code = "ran", 0 if step.kind == "cmd" else None
            o.duration_s = time.perf_counter() - t0
            self._record(step, o, step_inputs, logs=o.logs)
            self._settled(step, o)
            return o
        except StepNotFinished as e:
            o.message, o.exit_code = e.message, e.returncode
        except MlopsError as e:
            o.message = e.message
        except Exception as e:  # a bug in a built-in step or an OS error: the step failed, the others go on
            o.message = f"{type(e).__name__}: {e}"
        o.duration_s = time.perf_counter() - t0
        if self.cancel.is_set():
            o.message = f"interrupted (Ctrl-C); {o.message}"
        self._record(step, o, step_inputs, logs=o.logs)
        self.progress({"step": step.name, "event": "failed", "outcome": o.view()})
        return o

    def _settled(self, step: Step, o: Outcome) -> None:
        self.digests[step.name] = keys.result_digest(o.outputs, o.result)
        self.products[step.name] = o.result
        self.progress({"step": step.name, "event": o.status, "outcome": o.view()})

    # ---- the record ----------------------------------------------------------------------------------

    def _record(self, step: Step, o: Outcome, step_inputs: dict[str, Any] | None, *, source_id: int | None = None,
                logs: tuple[str | None, str | None] | None = None) -> None:
        from sqlalchemy import insert, select

        from mlopsctl.store.tables import model_versions as mv, pipeline_executions, registered_models as rm

        if self.pipeline_run_id is None:
            return
        r = o.result or {}
        with self.project.store.transaction(write=True) as conn:
            mv_id = None
            if r.get("model") and r.get("version"):
                mv_id = conn.scalar(select(mv.c.id).join(rm, rm.c.id == mv.c.model_id).where(
                    rm.c.name == r["model"], mv.c.version == r["version"]))
            o.execution_id = conn.execute(insert(pipeline_executions).values(
                pipeline_run_id=self.pipeline_run_id, step=step.name, kind=step.kind, key=o.key or "",
                status=o.status, exit_code=o.exit_code, duration_s=o.duration_s, inputs=step_inputs or {},
                outputs=o.outputs, result=jsonable(r), stdout_sha256=(logs or (None, None))[0],
                stderr_sha256=(logs or (None, None))[1], message=o.message or "; ".join(o.reasons) or None,
                run_id=r.get("run_id"), model_version_id=mv_id, source_id=source_id)).inserted_primary_key[0]
