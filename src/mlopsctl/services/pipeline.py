"""Use case: ``mlopsctl pipeline run | status | show | step | compile``, and the pipeline a watch retrain runs.

A step runs only when its cache key (:mod:`mlopsctl.pipeline.keys`) has no good execution in the store, or
when it is forced, marked ``always``, or a command without deps. Otherwise its outputs come back from the
content-addressed artifact store (each blob verified) and it does not run. Independent steps run in parallel
(``jobs``); a failed step stops its dependants and leaves every other step's result recorded and cached.

Nothing is half-written, whatever stops a step (a failure, Ctrl-C): a command's outputs are moved aside
before it starts and put back if it does not finish; its outputs and logs are stored as blobs (atomically)
before the execution row that names them is committed, one short transaction per step; the stat cache is
written atomically. Ctrl-C stops launching steps, sends SIGINT to the running commands' process groups,
waits for them, restores their outputs, records the run as interrupted and re-raises.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from mlopsctl.common import atomic_path, atomic_write, iso, jsonable
from mlopsctl.config import Settings
from mlopsctl.errors import (
    ConfigError, ConflictError, CorruptArtifactError, MlopsError, NotFoundError, PipelineStepError,
)
from mlopsctl.pipeline import keys
from mlopsctl.pipeline.graph import Pipeline, Step, build
from mlopsctl.pipeline.hashing import StatCache, folder_manifest, manifest_sha256, path_sha256
from mlopsctl.project import open_project

WORK_DIR = ".mlops/pipeline"
GOOD = ("ran", "cached")
KILL_GRACE_S = 10.0
Progress = Callable[[dict[str, Any]], None]


def load(settings: Settings) -> Pipeline:
    """The project's pipeline, checked (ConfigError naming the steps otherwise)."""
    return build(settings)


@dataclass
class Outcome:
    """What happened to (or, in a plan, what would happen to) one step."""

    step: str
    status: str  # ran | cached | failed | skipped; plans: fresh | stale
    reasons: list[str] = field(default_factory=list)
    key: str | None = None
    duration_s: float = 0.0
    exit_code: int | None = None
    message: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    restored: list[str] = field(default_factory=list)
    execution_id: int | None = None
    logs: tuple[str | None, str | None] | None = None  # sha256 of the stdout and stderr blobs

    def view(self) -> dict[str, Any]:
        return {"step": self.step, "status": self.status, "reasons": self.reasons, "key": self.key,
                "duration_s": round(self.duration_s, 3), "exit_code": self.exit_code, "message": self.message,
                "restored": self.restored, "result": jsonable(self.result), "execution": self.execution_id,
                "outputs": {p: o["sha256"] for p, o in self.outputs.items()}}


class _Failed(Exception):
    """A step that did not finish: its exit code (None for a built-in step) and its last line of output."""

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        self.message, self.exit_code = message, exit_code


def param_env(params: dict[str, Any]) -> dict[str, str]:
    """``MLOPS_PARAM_<NAME>``: strings as they are, anything else as JSON (``true``, ``100``, ``[1, 2]``)."""
    return {f"MLOPS_PARAM_{k.upper()}": v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}


def last_line(*texts: bytes | str | None) -> str:
    """The last non-empty line of the first text that has one (stderr, then stdout)."""
    for t in texts:
        if t:
            s = t.decode("utf-8", "replace") if isinstance(t, bytes) else t
            lines = [ln.strip() for ln in s.splitlines() if ln.strip()]
            if lines:
                return lines[-1][:500]
    return "no output"


def _tail(path: Path, limit: int = 8192) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - limit))
        return fh.read()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class _Runner:
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
                raise _Failed(f"upstream step {', '.join(unknown)} has not settled")
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
                raise _Failed(f"its dep {d!r} is missing although step {producer!r} finished; check that step's outs.")
            deps[d] = sha
        return keys.inputs(step, self.settings, deps, {u: self.digests[u] for u in step.upstream}), []

    def _hit(self, step: Step, key: str) -> Any:
        """The newest good execution with this key whose products are still there, or None."""
        from sqlalchemy import select

        from mlopsctl.store.models import ModelVersion, PipelineExecution, Run

        with self.project.store.read() as s:
            rows = s.scalars(select(PipelineExecution).where(PipelineExecution.key == key,
                                                             PipelineExecution.status.in_(GOOD))
                             .order_by(PipelineExecution.id.desc()).limit(5)).all()
            for e in rows:
                if step.kind in ("train", "evaluate") and (e.run_id is None or getattr(s.get(Run, e.run_id), "status", None) != "FINISHED"):
                    continue
                if step.kind in ("register", "promote") and (e.model_version_id is None or s.get(ModelVersion, e.model_version_id) is None):
                    continue
                if not all(self.project.artifacts.path(sha).exists() for sha in _blobs(e.outputs)):
                    continue
                s.expunge(e)
                return e
        return None

    def _last_good_inputs(self, name: str) -> dict[str, Any] | None:
        from sqlalchemy import select

        from mlopsctl.store.models import PipelineExecution

        with self.project.store.read() as s:
            return s.scalar(select(PipelineExecution.inputs).where(PipelineExecution.step == name,
                                                                   PipelineExecution.status.in_(GOOD))
                            .order_by(PipelineExecution.id.desc()).limit(1))

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
        from mlopsctl.store.models import PipelineRun

        with self.project.store.session() as s:
            run = PipelineRun(trigger=self.trigger, targets=targets, options=options, status="running")
            s.add(run)
            s.flush()
            self.pipeline_run_id = run.id

    def finish(self, status: str, message: str | None, t0: float) -> None:
        from mlopsctl.store.models import PipelineRun, utcnow

        with self.project.store.session() as s:
            run = s.get(PipelineRun, self.pipeline_run_id)
            run.status, run.message, run.ended_at = status, message, utcnow()
            run.duration_s = time.perf_counter() - t0
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
                raise _Failed(f"it has not run with its current inputs ({'; '.join(self.why_run(step, step_inputs))}); "
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
        except _Failed as e:
            o.message, o.exit_code = e.message, e.exit_code
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

    # ---- outputs ---------------------------------------------------------------------------------------

    def _store_outputs(self, step: Step) -> dict[str, Any]:
        arts = self.project.artifacts
        out: dict[str, Any] = {}
        for rel in step.outs:
            p = self.settings.resolve(rel)
            if p.is_file():
                sha = self.cache.file_sha256(p)
                arts.put_file(p, sha)
                out[rel] = {"type": "file", "sha256": sha, "size": p.stat().st_size}
            elif p.is_dir():
                files = folder_manifest(p, self.cache)
                for f, sha in files.items():
                    arts.put_file(p / f, sha)
                out[rel] = {"type": "dir", "sha256": manifest_sha256(files), "files": files}
            else:
                raise _Failed(f"it finished without writing its output {rel!r}; write it or fix the step's outs")
        return out

    def _restore(self, rel: str, output: dict[str, Any]) -> None:
        """Put an output back from its verified blobs; the old content is replaced in one rename."""
        arts = self.project.artifacts
        dest = self.settings.resolve(rel)
        if output["type"] == "file":
            src = arts.verified_path(output["sha256"])
            if dest.is_dir():
                shutil.rmtree(dest)
            with atomic_path(dest) as tmp:
                shutil.copyfile(src, tmp)
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.mlops-restore-{os.getpid()}-{threading.get_ident()}")
        _remove(tmp)
        try:
            for f, sha in output["files"].items():
                target = tmp / f
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(arts.verified_path(sha), target)
            tmp.mkdir(exist_ok=True)
            old = dest.with_name(f".{dest.name}.mlops-old-{os.getpid()}-{threading.get_ident()}")
            if dest.exists() or dest.is_symlink():
                os.replace(dest, old)
            os.replace(tmp, dest)
            _remove(old)
        finally:
            _remove(tmp)

    @contextlib.contextmanager
    def _outputs_aside(self, step: Step) -> Iterator[None]:
        """Move a command's outputs aside while it runs; put them back unless it finishes."""
        moved: list[tuple[Path, Path]] = []
        for rel in step.outs:
            p = self.settings.resolve(rel)
            p.parent.mkdir(parents=True, exist_ok=True)
            bak = p.with_name(f".{p.name}.mlops-prev")
            _remove(bak)
            if p.exists() or p.is_symlink():
                os.replace(p, bak)
                moved.append((p, bak))
        try:
            yield
        except BaseException:
            for rel in step.outs:
                _remove(self.settings.resolve(rel))
            for p, bak in moved:
                os.replace(bak, p)
            raise
        for _p, bak in moved:
            _remove(bak)

    # ---- the two kinds of step -----------------------------------------------------------------------

    def _cmd(self, step: Step, o: Outcome) -> None:
        logs = self.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        stem = f"{step.name}.{os.getpid()}.{threading.get_ident()}"
        out_log, err_log = logs / f"{stem}.stdout", logs / f"{stem}.stderr"
        env = {**os.environ, **param_env(step.params)}
        try:
            with self._outputs_aside(step):
                with open(out_log, "wb") as fo, open(err_log, "wb") as fe:
                    proc = subprocess.Popen(step.cmd, shell=True, cwd=self.settings.project_dir, env=env,  # noqa: S602 - the user's own command
                                            stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, start_new_session=True)
                    with self._lock:
                        self._children.add(proc)
                    try:
                        code = self._wait(proc)
                    finally:
                        with self._lock:
                            self._children.discard(proc)
                arts = self.project.artifacts
                o.logs = (arts.put_file(out_log), arts.put_file(err_log))
                if code != 0 or self.cancel.is_set():
                    what = f"exit {code}" if code >= 0 else f"killed by signal {-code}"
                    raise _Failed(f"{what}: {last_line(_tail(err_log), _tail(out_log))}", code)
                missing = [rel for rel in step.outs if not self.settings.resolve(rel).exists()]
                if missing:
                    raise _Failed(f"exit 0 without writing its output {missing[0]!r}; write it or fix the step's outs",
                                  code)
        finally:
            for f in (out_log, err_log):
                with contextlib.suppress(OSError):
                    f.unlink()

    def _wait(self, proc: subprocess.Popen) -> int:
        while True:
            try:
                return proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                if self.cancel.is_set():
                    self._signal(proc, signal.SIGINT)
                    try:
                        return proc.wait(timeout=KILL_GRACE_S)
                    except subprocess.TimeoutExpired:
                        self._signal(proc, signal.SIGKILL)
                        return proc.wait()

    def _signal(self, proc: subprocess.Popen, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def _interrupt_children(self) -> None:
        with self._lock:
            children = list(self._children)
        for proc in children:
            self._signal(proc, signal.SIGINT)

    def _builtin(self, step: Step, o: Outcome) -> None:
        lines: list[str] = []
        try:
            o.result = _BUILTINS[step.kind](self, step, lines.append)
        except Exception as e:
            o.logs = self._log_blobs(lines, e.message if isinstance(e, MlopsError) else f"{type(e).__name__}: {e}")
            raise
        o.logs = self._log_blobs(lines, "")

    def _log_blobs(self, lines: list[str], err: str) -> tuple[str, str]:
        arts = self.project.artifacts
        return arts.put_bytes(("\n".join(lines) + "\n" if lines else "").encode()), arts.put_bytes(err.encode())

    def source_product(self, step: Step) -> dict[str, Any]:
        return self.products[step.source]  # type: ignore[index]

    # ---- the record ----------------------------------------------------------------------------------

    def _record(self, step: Step, o: Outcome, step_inputs: dict[str, Any] | None, *, source_id: int | None = None,
                logs: tuple[str | None, str | None] | None = None) -> None:
        from sqlalchemy import select

        from mlopsctl.store.models import ModelVersion, PipelineExecution, RegisteredModel

        if self.pipeline_run_id is None:
            return
        r = o.result or {}
        with self.project.store.session() as s:
            mv_id = None
            if r.get("model") and r.get("version"):
                mv_id = s.scalar(select(ModelVersion.id).join(RegisteredModel).where(
                    RegisteredModel.name == r["model"], ModelVersion.version == r["version"]))
            e = PipelineExecution(
                pipeline_run_id=self.pipeline_run_id, step=step.name, kind=step.kind, key=o.key or "",
                status=o.status, exit_code=o.exit_code, duration_s=o.duration_s, inputs=step_inputs or {},
                outputs=o.outputs, result=jsonable(r), stdout_sha256=(logs or (None, None))[0],
                stderr_sha256=(logs or (None, None))[1], message=o.message or "; ".join(o.reasons) or None,
                run_id=r.get("run_id"), model_version_id=mv_id, source_id=source_id)
            s.add(e)
            s.flush()
            o.execution_id = e.id


def _blobs(outputs: dict[str, Any]) -> list[str]:
    out = []
    for o in outputs.values():
        out.extend(o["files"].values() if o["type"] == "dir" else [o["sha256"]])
    return out


# ---- built-in steps: each returns what it produced; the run or version it made is linked to the record ----

def _train(r: _Runner, step: Step, say: Callable[[str], None]) -> dict[str, Any]:
    from mlopsctl.config import with_overrides
    from mlopsctl.services import runs

    s = r.settings
    model = step.settings.get("model", s.train.model)
    base = dict(s.train.params) if model == s.train.model else {}
    settings = with_overrides(s, train={"model": model, "params": {**base, **step.params}})
    run = runs.train_and_track(settings, data_path=s.resolve(step.deps[0]), run_name=f"pipeline-{step.name}",
                               experiment=step.settings.get("experiment", s.train.experiment), notify=say)
    say(f"run {run['id']}: " + ", ".join(f"{k}={v:.4f}" for k, v in run["metrics"].items() if v is not None))
    return {"run_id": run["id"], "metrics": run["metrics"]}


def _evaluate(r: _Runner, step: Step, say: Callable[[str], None]) -> dict[str, Any]:
    import io

    import pandas as pd

    from mlopsctl import data, tracking
    from mlopsctl.services import gate, runs

    run_id = r.source_product(step)["run_id"]
    model = runs.run_model(r.settings, str(run_id))
    if "data" in step.settings:
        frame = data.read_table(r.settings.resolve(step.settings["data"]), delimiter=r.settings.data.delimiter,
                                decimal=r.settings.data.decimal)
        label = step.settings["data"]
    else:
        if not model.heldout_sha256:
            raise ConflictError(f"run {run_id} has no held-out split; set data = \"<file>\" on step {step.name!r}.")
        frame = pd.read_parquet(io.BytesIO(r.project.artifacts.get_bytes(model.heldout_sha256)))
        label = f"held-out split of run {run_id}"
    if model.contract.target not in frame.columns:
        raise ConflictError(f"{label} has no {model.contract.target!r} column to score against.")
    scores = jsonable(gate.score_frame(model, frame, model.contract.target))
    with r.project.store.session() as s:
        tracking.log_metrics(s, run_id, {f"{step.name}.{k}": v for k, v in scores.items() if v is not None})
    report = {"run_id": run_id, "data": label, "rows": int(len(frame)), "metrics": scores}
    if "metrics" in step.settings:
        with atomic_write(r.settings.resolve(step.settings["metrics"]), "w") as fh:
            json.dump(report, fh, indent=2, sort_keys=True)
    say(f"run {run_id} on {label} ({len(frame)} rows): " + ", ".join(f"{k}={v}" for k, v in scores.items()))
    return report


def _register(r: _Runner, step: Step, say: Callable[[str], None]) -> dict[str, Any]:
    from sqlalchemy import select

    from mlopsctl import registry
    from mlopsctl.services import models
    from mlopsctl.store.models import ModelVersion, RegisteredModel

    run_id = r.source_product(step)["run_id"]
    name = registry.validate_name(step.settings.get("name", r.settings.registry.model_name))
    with r.project.store.read() as s:  # --force on the same run: the version it already has
        version = s.scalar(select(ModelVersion.version).join(RegisteredModel).where(
            RegisteredModel.name == name, ModelVersion.run_id == run_id))
    if version is None:
        version = models.register(r.settings, str(run_id), name)["version"]
    say(f"run {run_id} is {name}/{version}")
    return {"run_id": run_id, "model": name, "version": version}


def _promote(r: _Runner, step: Step, say: Callable[[str], None]) -> dict[str, Any]:
    from mlopsctl.services import gate, models

    made = r.source_product(step)
    alias = step.settings.get("alias", r.settings.registry.alias)
    try:
        out = models.promote(r.settings, made["model"], made["version"], alias=alias,
                             min_delta=step.settings.get("min_delta"))
        decision = "promoted" if out["changed"] else "unchanged"
        why = gate.gate_summary(out["gate"]) if out.get("gate") else out.get("message", "")
    except ConflictError as e:  # a gate rejection is a decision, recorded like watch's, not a failed step
        decision, why = "rejected", e.message
    say(f"{made['model']}/{made['version']} @{alias}: {decision}: {why}")
    return {"model": made["model"], "version": made["version"], "alias": alias, "decision": decision, "reason": why}


_BUILTINS: dict[str, Callable[[_Runner, Step, Callable[[str], None]], dict[str, Any]]] = {
    "train": _train, "evaluate": _evaluate, "register": _register, "promote": _promote,
}


def _refuse_unavailable(pipeline: Pipeline, names: list[str]) -> None:
    for n in names:
        if pipeline.steps[n].kind == "tune":
            raise ConfigError(f"pipeline step {n!r}: uses = \"tune\" is not available in this version of mlopsctl; "
                              "remove the step or use uses = \"train\".")


@contextlib.contextmanager
def _exclusive(settings: Settings) -> Iterator[None]:
    """One pipeline run at a time per project (a CLI run and the watcher would write the same outputs)."""
    path = settings.resolve(WORK_DIR) / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConflictError("another `mlopsctl pipeline` run is in progress in this project; wait for it to "
                                "finish.") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _failure(outcomes: list[Outcome], pipeline: Pipeline) -> str | None:
    failed = [o for o in outcomes if o.status == "failed"]
    if not failed:
        return None
    first = failed[0]
    skipped = [o.step for o in outcomes if o.status == "skipped"]
    text = f"step {first.step!r} failed ({first.message})"
    if len(failed) > 1:
        text += f"; also failed: {', '.join(o.step for o in failed[1:])}"
    if skipped:
        text += f"; not run: {', '.join(skipped)}"
    return text + "."


def _summary(runner: _Runner, outcomes: list[Outcome], t0: float, status: str) -> dict[str, Any]:
    by = {k: [o.step for o in outcomes if o.status == k] for k in ("ran", "cached", "failed", "skipped")}
    return {"pipeline_run": runner.pipeline_run_id, "status": status, "duration_s": round(time.perf_counter() - t0, 3),
            **by, "files_hashed": runner.cache.hashed,
            "bytes_hashed": runner.cache.hashed_bytes, "steps": [o.view() for o in outcomes]}


def run_pipeline(settings: Settings, steps: Iterable[str] = (), *, force: Iterable[str] = (), no_cache: bool = False,
                 dry_run: bool = False, jobs: int = 1, progress: Progress | None = None,
                 trigger: str = "cli") -> dict[str, Any]:
    """Run what is stale among ``steps`` (all when empty) and the steps they depend on. Returns the summary;
    a failed step raises PipelineStepError (after every step that could settle has, and was recorded)."""
    pipeline = load(settings)
    targets = pipeline.check_names(steps)
    forced = pipeline.check_names(force)
    names = pipeline.upstream_closure([*(targets or pipeline.order), *forced])
    _refuse_unavailable(pipeline, names)
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}.")
    runner = _Runner(settings, pipeline, progress=progress, force=forced, no_cache=no_cache, trigger=trigger)
    t0 = time.perf_counter()
    if dry_run:
        plan = runner.plan(names)
        return {"dry_run": True, "would_run": [o.step for o in plan if o.status == "stale"],
                "steps": [o.view() for o in plan]}
    with _exclusive(settings):
        runner.start(targets, {"force": forced, "no_cache": no_cache, "jobs": jobs})
        try:
            outcomes = runner.run(names, jobs)
        except KeyboardInterrupt:
            runner.finish("interrupted", "interrupted (Ctrl-C)", t0)
            raise
        except BaseException as e:
            runner.finish("failed", str(e)[:2000], t0)
            raise
        failure = _failure(outcomes, pipeline)
        runner.finish("failed" if failure else "succeeded", failure, t0)
    summary = _summary(runner, outcomes, t0, "failed" if failure else "succeeded")
    if failure:
        err = PipelineStepError(failure)
        err.summary = summary  # type: ignore[attr-defined]
        raise err
    return summary


def run_step(settings: Settings, name: str, *, fingerprint: str | None = None, force: bool = False,
             progress: Progress | None = None) -> dict[str, Any]:
    """One step, as a KFP container runs it: the steps before it must be settled already (their outputs are
    restored from the cache when missing here); then this step comes from the cache or runs."""
    pipeline = load(settings)
    pipeline.check_names([name])
    _refuse_unavailable(pipeline, [name])
    if fingerprint is not None:
        have = fingerprints(settings, pipeline)[name]
        if have != fingerprint:
            raise ConflictError(
                f"step {name!r}: this project's inputs differ from the compiled pipeline's (fingerprint {have[:12]}, "
                f"compiled {fingerprint[:12]}); rebuild the image and recompile with `mlopsctl pipeline compile`.")
    names = pipeline.upstream_closure([name])
    runner = _Runner(settings, pipeline, progress=progress, force=[name] if force else [], trigger="step")
    t0 = time.perf_counter()
    with _exclusive(settings):
        runner.start([name], {"force": [name] if force else [], "no_cache": False, "jobs": 1})
        try:
            outcomes = runner.run(names, 1, restore_only=[n for n in names if n != name])
        except BaseException as e:
            runner.finish("interrupted" if isinstance(e, KeyboardInterrupt) else "failed", str(e)[:2000] or "interrupted", t0)
            raise
        failure = _failure(outcomes, pipeline)
        runner.finish("failed" if failure else "succeeded", failure, t0)
    if failure:
        raise PipelineStepError(failure)
    return _summary(runner, outcomes, t0, "succeeded")


def status(settings: Settings) -> dict[str, Any]:
    """Each step fresh (its current key has a good execution) or stale, and why."""
    pipeline = load(settings)
    runner = _Runner(settings, pipeline)
    plan = runner.plan(list(pipeline.order))
    runner.cache.save()
    return {"steps": [{**o.view(), "kind": pipeline.steps[o.step].kind} for o in plan],
            "stale": [o.step for o in plan if o.status == "stale"]}


def show(settings: Settings) -> dict[str, Any]:
    """The DAG: each step's kind, command or settings, deps, outs, params and the steps it depends on."""
    pipeline = load(settings)
    return {"steps": [{"name": s.name, "kind": s.kind, "cmd": s.cmd, "settings": s.settings, "deps": list(s.deps),
                       "outs": list(s.outs), "params": s.params, "needs": list(s.needs),
                       "upstream": list(s.upstream), "always": s.always, "cached": s.cacheable}
                      for s in (pipeline.steps[n] for n in pipeline.order)]}


def dot(settings: Settings) -> str:
    """The DAG in Graphviz's dot language (``mlopsctl pipeline show --dot | dot -Tsvg > dag.svg``)."""
    pipeline = load(settings)
    lines = ["digraph pipeline {", "  rankdir=LR;", "  node [shape=box, fontname=\"Helvetica\"];"]
    for n in pipeline.order:
        s = pipeline.steps[n]
        label = n if s.kind == "cmd" else f"{n}\\n(uses {s.kind})"
        lines.append(f"  {json.dumps(n)} [label={json.dumps(label).replace(chr(92) * 2, chr(92))}];")
    for n in pipeline.order:
        for u in pipeline.steps[n].upstream:
            lines.append(f"  {json.dumps(u)} -> {json.dumps(n)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def fingerprints(settings: Settings, pipeline: Pipeline | None = None) -> dict[str, str]:
    """Each step's static fingerprint: its definition, params, the content of the deps no step writes (the
    raw inputs and scripts), and its upstream steps' fingerprints. What a compiled KFP pipeline passes in its
    arguments, so KFP's own cache (which keys on arguments) follows the content."""
    pipeline = pipeline or load(settings)
    cache = StatCache(settings.resolve(WORK_DIR) / "stat-cache.json")
    out: dict[str, str] = {}
    for n in pipeline.order:
        step = pipeline.steps[n]
        raw: dict[str, str | None] = {}
        for d in step.deps:
            if pipeline.producer(d) is None:
                raw[d] = path_sha256(settings.resolve(d), cache)
        out[n] = keys.digest({"definition": keys.definition(step, settings), "params": step.params, "deps": raw,
                              "upstream": {u: out[u] for u in step.upstream},
                              "environment": keys.environment() if step.builtin else {}})
    cache.save()
    return out


def compile_kfp(settings: Settings, output: Path, *, image: str = "${IMAGE}", workdir: str = "/srv/mlops",
                name: str | None = None) -> dict[str, Any]:
    """A Kubeflow Pipelines v2 pipeline (IR YAML) with one container component per step running
    ``mlopsctl -C WORKDIR pipeline step NAME --fingerprint F`` in ``image``."""
    from mlopsctl.pipeline import kfp

    pipeline = load(settings)
    fps = fingerprints(settings, pipeline)
    name = name or settings.project_dir.name
    kfp.compile_pipeline(pipeline, fps, output=output, image=image, workdir=workdir, name=name)
    return {"output": str(output), "name": kfp.pipeline_name(name), "image": image,
            "steps": [{"step": n, "component": kfp.component_name(n), "fingerprint": fps[n],
                       "after": list(pipeline.steps[n].upstream)} for n in pipeline.order]}


# ---- continuous training -------------------------------------------------------------------------------

def retrain(settings: Settings, *, progress: Progress | None = None) -> dict[str, Any]:
    """What a watch retrain does when ``watch.pipeline`` is on: the whole pipeline (trigger ``watch``), then
    the run, version and promotion decision its train, register and promote steps produced (None where the
    pipeline has no such step). Raises PipelineStepError when a step fails, like a failed training."""
    summary = run_pipeline(settings, progress=progress, trigger="watch")
    pipeline = load(settings)
    found: dict[str, Any] = {"run_id": None, "model": None, "version": None, "decision": None, "reason": None}
    for o in summary["steps"]:
        kind, res = pipeline.steps[o["step"]].kind, o["result"]
        if kind == "train":
            found["run_id"] = res.get("run_id")
        elif kind == "register":
            found.update(model=res.get("model"), version=res.get("version"))
        elif kind == "promote":
            found.update(decision=res.get("decision"), reason=res.get("reason"))
    return {**found, "pipeline_run": summary["pipeline_run"], "ran": summary["ran"], "cached": summary["cached"]}


# ---- history and lineage -------------------------------------------------------------------------------

def executions(settings: Settings, *, step: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest step executions (a step's history with ``step``)."""
    from sqlalchemy import select

    from mlopsctl.store.models import PipelineExecution

    q = select(PipelineExecution).order_by(PipelineExecution.id.desc()).limit(limit)
    if step:
        q = q.where(PipelineExecution.step == step)
    with open_project(settings).store.read() as s:
        return [_execution_view(e) for e in s.scalars(q)]


def _execution_view(e: Any) -> dict[str, Any]:
    return {"id": e.id, "pipeline_run": e.pipeline_run_id, "step": e.step, "kind": e.kind, "key": e.key,
            "status": e.status, "exit_code": e.exit_code, "duration_s": round(e.duration_s, 3),
            "outputs": {p: o["sha256"] for p, o in (e.outputs or {}).items()},
            "deps": (e.inputs or {}).get("deps", {}), "result": e.result, "run_id": e.run_id,
            "stdout_sha256": e.stdout_sha256, "stderr_sha256": e.stderr_sha256, "message": e.message,
            "source": e.source_id, "at": iso(e.created_at)}


def lineage(settings: Settings, ref: str) -> dict[str, Any]:
    """From a model version back to the raw files and scripts that made it: the execution that registered it,
    then, step by step, the executions whose outputs (or run) fed each one, with every dep's sha256."""
    from sqlalchemy import select

    from mlopsctl import registry
    from mlopsctl.store.models import PipelineExecution

    project = open_project(settings)
    parsed = project.ref(ref)
    with project.store.read() as s:
        mv = registry.resolve(s, parsed)
        start = s.scalar(select(PipelineExecution).where(PipelineExecution.model_version_id == mv.id,
                                                         PipelineExecution.kind == "register")
                         .order_by(PipelineExecution.id).limit(1))
        if start is None:
            raise ConflictError(f"{parsed.name}/{mv.version} was not registered by a pipeline step; it has no "
                                "pipeline lineage (see `mlopsctl models show` for its run).")
        chain, seen, frontier = [], set(), [start]
        while frontier:
            e = frontier.pop(0)
            if e.id in seen:
                continue
            seen.add(e.id)
            chain.append(_execution_view(e))
            for up_step, want in (e.inputs or {}).get("upstream", {}).items():
                candidates = s.scalars(select(PipelineExecution).where(
                    PipelineExecution.step == up_step, PipelineExecution.status.in_(GOOD), PipelineExecution.id < e.id)
                    .order_by(PipelineExecution.id.desc()).limit(200))
                prev = next((c for c in candidates if keys.result_digest(c.outputs, c.result) == want), None)
                if prev is not None:
                    frontier.append(prev)
        return {"model": parsed.name, "version": mv.version, "run_id": mv.run_id, "executions": chain}
