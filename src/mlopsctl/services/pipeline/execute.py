"""Running one pipeline step: a command (its outputs moved aside while it runs, its logs kept as blobs) or a
built-in step (train, evaluate, register, promote), and storing or restoring its outputs in the artifact store."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from mlopsctl.common import atomic_path, atomic_write, jsonable
from mlopsctl.config import Settings, with_overrides
from mlopsctl.errors import ConflictError, MlopsError, StepNotFinished
from mlopsctl.pipeline.graph import Step
from mlopsctl.pipeline.hashing import folder_manifest, manifest_sha256
from mlopsctl.services.pipeline.outcome import KILL_GRACE_S, Outcome, _remove, _tail, last_line, param_env


class StepExecutor:
    """What a step does when it runs; :class:`~mlopsctl.services.pipeline.runner.Runner` decides which steps
    run and records them. The attributes used here are set by the Runner."""

    settings: Any
    project: Any
    cache: Any
    work: Path
    cancel: threading.Event
    products: dict[str, dict[str, Any]]
    _children: set[subprocess.Popen]
    _lock: threading.Lock

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
                raise StepNotFinished(f"it finished without writing its output {rel!r}; write it or fix the step's outs")
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
                    raise StepNotFinished(f"{what}: {last_line(_tail(err_log), _tail(out_log))}", code)
                missing = [rel for rel in step.outs if not self.settings.resolve(rel).exists()]
                if missing:
                    raise StepNotFinished(f"exit 0 without writing its output {missing[0]!r}; write it or fix the step's outs",
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
            o.result = _BUILTINS[step.kind](self, step, lines.append, o.key or "")
        except Exception as e:
            o.logs = self._log_blobs(lines, e.message if isinstance(e, MlopsError) else f"{type(e).__name__}: {e}")
            raise
        o.logs = self._log_blobs(lines, "")

    def _log_blobs(self, lines: list[str], err: str) -> tuple[str, str]:
        arts = self.project.artifacts
        return arts.put_bytes(("\n".join(lines) + "\n" if lines else "").encode()), arts.put_bytes(err.encode())

    def source_product(self, step: Step) -> dict[str, Any]:
        return self.products[step.source]  # type: ignore[index]


# ---- built-in steps: each returns what it produced; the run or version it made is linked to the record ----

def _model_settings(r: StepExecutor, step: Step) -> Settings:
    """The settings a train or tune step fits with: its model, and its params over train.params (which belong to
    train.model's estimator only)."""
    s = r.settings
    model = step.settings.get("model", s.train.model)
    base = dict(s.train.params) if model == s.train.model else {}
    return with_overrides(s, train={"model": model, "params": {**base, **step.params}})


def _say_run(say: Callable[[str], None], run: dict[str, Any]) -> None:
    say(f"run {run['id']}: " + ", ".join(f"{k}={v:.4f}" for k, v in run["metrics"].items() if v is not None))


def _train(r: StepExecutor, step: Step, say: Callable[[str], None], key: str) -> dict[str, Any]:
    from mlopsctl.services import runs

    s = r.settings
    run = runs.train_and_track(_model_settings(r, step), data_path=s.resolve(step.deps[0]),
                               run_name=f"pipeline-{step.name}",
                               experiment=step.settings.get("experiment", s.train.experiment), notify=say)
    _say_run(say, run)
    return {"run_id": run["id"], "metrics": run["metrics"]}


def _tune(r: StepExecutor, step: Step, say: Callable[[str], None], key: str) -> dict[str, Any]:
    """A study (the [tune] settings, ``trials`` from the step) whose best parameters are refitted through the train
    path; the refit run is the step's product, so register/promote/evaluate steps take it like a train step's run.
    The study is named after the step and its cache key: a run that crashed mid-study resumes it."""
    from mlopsctl.services import tune

    s = r.settings
    settings = with_overrides(_model_settings(r, step), tune={"trials": step.settings.get("trials", s.tune.trials)})
    out = tune.tune(settings, study=f"pipeline-{step.name}-{key[:12]}", data_path=s.resolve(step.deps[0]),
                    experiment=step.settings.get("experiment", s.train.experiment), notify=say)
    best = out["best"]
    say(f"study {out['study']}: {out['complete']} complete, {out['pruned']} pruned, {out['failed']} failed; "
        f"best trial {best['trial']} {out['metric']}={best['value']}")
    _say_run(say, out["refit"])
    return {"run_id": out["refit"]["id"], "metrics": out["refit"]["metrics"], "study": out["study"],
            "best": best}


def _evaluate(r: StepExecutor, step: Step, say: Callable[[str], None], key: str) -> dict[str, Any]:
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


def _register(r: StepExecutor, step: Step, say: Callable[[str], None], key: str) -> dict[str, Any]:
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


def _promote(r: StepExecutor, step: Step, say: Callable[[str], None], key: str) -> dict[str, Any]:
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


_BUILTINS: dict[str, Callable[[StepExecutor, Step, Callable[[str], None], str], dict[str, Any]]] = {
    "train": _train, "tune": _tune, "evaluate": _evaluate, "register": _register, "promote": _promote,
}
