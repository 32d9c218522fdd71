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
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from mlopsctl.common import iso
from mlopsctl.config import Settings
from mlopsctl.errors import ConfigError, ConflictError, PipelineStepError
from mlopsctl.pipeline import keys
from mlopsctl.pipeline.graph import Pipeline, build
from mlopsctl.pipeline.hashing import StatCache, path_sha256
from mlopsctl.project import open_project
from mlopsctl.services.pipeline.outcome import GOOD, WORK_DIR, Outcome, Progress
from mlopsctl.services.pipeline.runner import Runner


def load(settings: Settings) -> Pipeline:
    """The project's pipeline, checked (ConfigError naming the steps otherwise)."""
    return build(settings)


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


def _summary(runner: Runner, outcomes: list[Outcome], t0: float, status: str) -> dict[str, Any]:
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
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}.")
    runner = Runner(settings, pipeline, progress=progress, force=forced, no_cache=no_cache, trigger=trigger)
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
    if fingerprint is not None:
        have = fingerprints(settings, pipeline)[name]
        if have != fingerprint:
            raise ConflictError(
                f"step {name!r}: this project's inputs differ from the compiled pipeline's (fingerprint {have[:12]}, "
                f"compiled {fingerprint[:12]}); rebuild the image and recompile with `mlopsctl pipeline compile`.")
    names = pipeline.upstream_closure([name])
    runner = Runner(settings, pipeline, progress=progress, force=[name] if force else [], trigger="step")
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
    runner = Runner(settings, pipeline)
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
