"""Use case: hyperparameter search (``mlopsctl tune``), its studies, Katib files, a retrain that tunes.

A study is a run in our store (tag ``tune.role`` = ``study``) holding the search space, the sampler, the pruner, the
best trial and the whole study spec (tag ``tune.spec``, JSON). Each trial is a run of its own: the searched
parameters as ``model.<name>`` params, ``fold_<metric>`` (each fold's score) and ``cv_<metric>`` (the running mean)
per fold as metric steps, its state (status FINISHED / PRUNED / FAILED and tag ``tune.state`` COMPLETE / PRUNED /
FAILED), its duration and, when it failed, the reason.

**Parent and child are linked by a tag**, ``parent_run_id`` on the trial (with ``tune.study`` and ``tune.trial``), as
MLflow links them (``mlflow.parentRunId``), not by a new ``runs`` column: no migration for a shared store to apply
before anyone can tune, nothing to clash with other schema changes, and a study's trials are one join on ``tags``.

Optuna's own state is beside the store, never in it (:mod:`mlopsctl.tuning.study`). The search scores trials by
K-fold CV on the training split only (:mod:`mlopsctl.training.cv`); the best parameters then go through the normal
train path (:func:`mlopsctl.services.runs.train_and_track`: ONNX export, parity, held-out metrics) as the study's
``refit`` run, which ``--register`` registers and promotes through the gate.

Worker processes: ``tune --jobs N`` runs one worker in this process and N-1 ``mlopsctl tune worker STUDY``
subprocesses, which read the study spec from the store and the data from the artifact store (the exact bytes the
study started on). A worker's stdin is a pipe from its parent; when the parent dies (even by SIGKILL) the pipe
closes and the worker stops at the next fold, marking its trial FAILED.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from mlopsctl.common import iso, jsonable
from mlopsctl.config import Settings, parse_duration, with_overrides
from mlopsctl.errors import ConflictError, InvalidInputError, NotFoundError, TrainingError
from mlopsctl.project import open_project
from mlopsctl.services import runs
from mlopsctl.services.datasets import record_dataset

SPEC_VERSION = 1
# what a resumed study may change; anything else given on the command line must match the study
RESUMABLE = frozenset({"tune.trials", "tune.jobs", "tune.timeout", "tune.max_failed", "train.experiment"})
SPEC_KEYS = {"train.model": "model", "tune.space": "space", "tune.cv": "cv", "train.metric": "metric",
             "tune.sampler": "sampler", "tune.pruner": "pruner", "data.target": "target", "data.path": "data"}


# ---- the study spec -----------------------------------------------------------------------------------------

def _journal_dir(settings: Settings) -> Path:
    """Beside the SQLite store (``.mlops/tune``), or in the project's ``.mlops/tune`` for other stores."""
    from sqlalchemy.engine import make_url

    u = make_url(settings.store_url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        return Path(u.database).parent / "tune"
    return settings.resolve(".mlops") / "tune"


def _backend(settings: Settings, name: str):
    from sqlalchemy.engine import make_url

    from mlopsctl.tuning import study as st

    if make_url(settings.store_url).get_backend_name() == "postgresql":
        return st.postgres_backend(settings.store_url, name)
    return st.journal_backend(_journal_dir(settings), name)


def _spec_settings(settings: Settings, spec: dict[str, Any]) -> Settings:
    """``settings`` with the data and model keys of a stored study (what every worker and the refit use)."""
    d = spec["data"]
    return with_overrides(
        settings,
        data={"path": d["path"], "target": d["target"], "task": d["task"], "exclude": list(d["exclude"]),
              "delimiter": d["delimiter"], "decimal": d["decimal"], "name": d["name"]},
        train={"model": spec["model"], "params": dict(spec["fixed"]), "seed": spec["seed"],
               "test_size": d["test_size"], "max_categories": d["max_categories"], "metric": spec["metric"]},
    )


def _study_spec(spec: dict[str, Any]):
    from mlopsctl.tuning import space as sp, study as st

    return st.StudySpec(name=spec["study"], space=sp.parse_space(spec["space"]), direction=spec["direction"],
                        steps=spec["cv"], trials=spec["trials"], sampler=spec["sampler"], pruner=spec["pruner"],
                        seed=spec["seed"], max_failed=spec["max_failed"])


@dataclass
class Loaded:
    """One process's view of a study's data: prepared, split and folded once."""

    prepared: Any
    folds: Any


def _load(settings: Settings, spec: dict[str, Any]) -> Loaded:
    """The study's data from the artifact store (the bytes it started on), prepared and folded."""
    from mlopsctl import data
    from mlopsctl.training import cv, train as training

    path = open_project(settings).artifacts.path(spec["data"]["sha256"])
    if not path.exists():
        raise NotFoundError(f"the data of study {spec['study']!r} ({spec['data']['sha256'][:12]}...) is missing from "
                            f"{open_project(settings).artifacts.root}; start a new study.")
    s = _spec_settings(settings, spec)
    df = data.read_table(path, delimiter=s.data.delimiter, decimal=s.data.decimal, suffix=spec["data"]["suffix"])
    prepared = training.prepare(df, runs.train_spec(s, Path(spec["data"]["path"])))
    return Loaded(prepared, cv.make_folds(prepared, spec["cv"], spec["metric"]))


def _check_space(space: dict[str, Any], prepared: Any) -> None:
    """Every searched name is a parameter of the model, and every bound and choice is a value it accepts."""
    from mlopsctl.training import estimators

    est = prepared.estimator
    valid = est.get_params(deep=False)
    name = estimators.class_path(type(est))
    unknown = sorted(set(space) - set(valid))
    if unknown:
        raise InvalidInputError(f"{name} has no parameter {', '.join(map(repr, unknown))} to search; valid: "
                                f"{', '.join(sorted(valid))}.")
    if not hasattr(type(est), "_parameter_constraints"):  # scikit-learn's declared constraints; boosters have none
        return
    for p in space.values():
        for value in (p.choices if p.kind == "choice" else (p.low, p.high)):
            try:
                type(est)(**{**valid, p.name: value})._validate_params()
            except (ValueError, TypeError) as e:
                raise InvalidInputError(f"search space {p.name}={p.spec}: {name} does not accept {value!r} "
                                        f"({str(e).splitlines()[0]}).") from None


def _new_spec(settings: Settings, name: str, data_path: Path | None, notify: Callable[[str], None]) -> tuple[dict[str, Any], Loaded, int]:
    """Read and check everything a new study needs; (spec, loaded data, dataset version id)."""
    from mlopsctl import data
    from mlopsctl.training import cv, estimators, metrics, train as training
    from mlopsctl.tuning import space as sp

    path = settings.resolve(data_path or settings.data.path)
    df = data.read_table(path, delimiter=settings.data.delimiter, decimal=settings.data.decimal)
    prepared = training.prepare(df, runs.train_spec(settings, path))
    for line in prepared.notices:
        notify(line)
    model = estimators.class_path(type(prepared.estimator))
    specs = dict(settings.tune.space) or sp.default_space(model)
    space = sp.parse_space(specs)
    _check_space(space, prepared)
    metric = metrics.primary_metric(prepared.task, settings.train.metric)
    folds = cv.make_folds(prepared, settings.tune.cv, metric)
    if settings.tune.sampler == "grid":
        sp.grid_size(space)  # a float range without a step fails here, before any run exists
    view, _, dv_id = record_dataset(settings, path, df, None)
    spec = {
        "version": SPEC_VERSION, "study": name, "model": model, "fixed": jsonable(settings.train.params),
        "space": sp.as_specs(space), "cv": settings.tune.cv, "metric": metric,
        "direction": "minimize" if metric in metrics.LOWER_IS_BETTER else "maximize",
        "sampler": settings.tune.sampler, "pruner": settings.tune.pruner, "seed": settings.train.seed,
        "trials": settings.tune.trials, "max_failed": settings.tune.max_failed, "task": prepared.task,
        "jobs": settings.tune.jobs,
        "data": {"path": str(path), "name": view["name"], "sha256": view["file_sha256"], "suffix": path.suffix.lower(),
                 "fingerprint": view["fingerprint"], "target": settings.data.target, "task": settings.data.task,
                 "exclude": list(settings.data.exclude), "delimiter": settings.data.delimiter,
                 "decimal": settings.data.decimal, "test_size": settings.train.test_size,
                 "max_categories": settings.train.max_categories},
    }
    return spec, Loaded(prepared, folds), dv_id


# ---- studies in the store -----------------------------------------------------------------------------------

def _study_run(s: Any, name: str) -> Any:
    from mlopsctl import tracking

    for run in tracking.runs_tagged(s, "tune.study", name):
        if {t.key: t.value for t in run.tags}.get("tune.role") == "study":
            return run
    return None


def _get_study(s: Any, name: str) -> tuple[Any, dict[str, Any]]:
    run = _study_run(s, name)
    if run is None:
        known = [r.name for r in _study_runs(s)]
        raise NotFoundError(f"study {name!r} does not exist; known: {', '.join(known) or '(none yet)'} "
                            "(see `mlopsctl tune list`).")
    return run, json.loads({t.key: t.value for t in run.tags}["tune.spec"])


def _study_runs(s: Any) -> list[Any]:
    from mlopsctl import tracking

    return tracking.runs_tagged(s, "tune.role", "study")


def _resume_spec(stored: dict[str, Any], settings: Settings, given: frozenset[str]) -> dict[str, Any]:
    """The stored spec with what a resume may change; ConflictError when the command asks for another study."""
    spec = dict(stored)
    current = {"model": settings.train.model, "space": dict(settings.tune.space), "cv": settings.tune.cv,
               "metric": settings.train.metric, "sampler": settings.tune.sampler, "pruner": settings.tune.pruner,
               "target": settings.data.target}
    for key in sorted(given - RESUMABLE):
        ours = SPEC_KEYS.get(key)
        if ours is None or ours == "data":
            continue
        have = stored["data"]["target"] if ours == "target" else stored[ours]
        want = current[ours]
        if ours == "model" and want != "auto":
            from mlopsctl.training import estimators

            want = estimators.class_path(estimators.resolve_class(want))
        if ours == "space":
            from mlopsctl.tuning import space as sp

            want = sp.as_specs(sp.parse_space(want))
        if want != have and not (ours in ("metric", "model") and want == "auto"):
            raise ConflictError(f"study {stored['study']!r} was started with {ours} = {have!r}, not {want!r}; "
                                f"resume it without --{ours.replace('_', '-')} or start a new study with another --study name.")
    if "tune.trials" in given:
        spec["trials"] = settings.tune.trials
    if "tune.max_failed" in given:
        spec["max_failed"] = settings.tune.max_failed
    return spec


def _default_name() -> str:
    """``tune-20261203-091500-3fa2``: two studies started in the same second still get their own."""
    return f"tune-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _study_params(spec: dict[str, Any]) -> dict[str, Any]:
    return {"model": spec["model"], "metric": spec["metric"], "direction": spec["direction"], "cv": spec["cv"],
            "sampler": spec["sampler"], "pruner": spec["pruner"], "trials": spec["trials"], "seed": spec["seed"],
            "max_failed": spec["max_failed"], **{f"space.{k}": v for k, v in spec["space"].items()},
            **{f"fixed.{k}": v for k, v in spec["fixed"].items()}}


def _create_study_run(settings: Settings, spec: dict[str, Any], experiment: str, dv_id: int, location: str) -> int:
    from mlopsctl import tracking

    with open_project(settings).store.session() as s:
        if _study_run(s, spec["study"]) is not None:
            raise ConflictError(f"study {spec['study']!r} already exists; resume it with `mlopsctl tune --study "
                                f"{spec['study']}` or pick another name.")
        run = tracking.create_run(s, experiment, f"study-{spec['study']}", dataset_version_id=dv_id, task=spec["task"],
                                  model_class=spec["model"], seed=spec["seed"],
                                  git_commit=runs.git_commit(settings.project_dir), environment=_environment())
        tracking.set_tags(s, run.id, {"tune.role": "study", "tune.study": spec["study"], "tune.storage": location,
                                      "tune.spec": json.dumps(spec, sort_keys=True)})
        tracking.log_params(s, run.id, _study_params(spec))
        return run.id


_ENV: dict[str, str] = {}


def _environment() -> dict[str, str]:
    if not _ENV:
        _ENV.update(runs.environment())
        from importlib import metadata

        _ENV["optuna"] = metadata.version("optuna")
    return dict(_ENV)


# ---- trials as runs -----------------------------------------------------------------------------------------

class Recorder:
    """Trials as runs of our store (the tuning loop's :class:`mlopsctl.tuning.study.Recorder`); each call is one
    short write transaction."""

    def __init__(self, settings: Settings, spec: dict[str, Any], experiment: str, study_run_id: int | None,
                 dataset_version_id: int | None, role: str = "trial"):
        self.store = open_project(settings).store
        self.spec, self.experiment, self.parent, self.dv_id, self.role = spec, experiment, study_run_id, dataset_version_id, role
        self.metric = spec["metric"]
        self._folds: dict[int, list[dict[str, Any]]] = {}

    def started(self, number: int, params: dict[str, Any], worker: str) -> int:
        from mlopsctl import tracking

        with self.store.session() as s:
            return self._create(s, number, params, worker).id

    def _create(self, s: Any, number: int | str, params: dict[str, Any], worker: str) -> Any:
        from mlopsctl import tracking

        tags = {"tune.role": self.role, "tune.study": self.spec["study"], "tune.trial": number,
                "tune.state": "RUNNING", "tune.worker": worker, "tune.params": json.dumps(jsonable(params))}
        if self.parent is not None:
            tags["parent_run_id"] = self.parent
        # a new run: its tags and params go in with it (one flush, no per-key merge)
        return tracking.create_run(
            s, self.experiment, f"{self.spec['study']}-trial-{number}", dataset_version_id=self.dv_id,
            task=self.spec["task"], model_class=self.spec["model"], seed=self.spec["seed"], environment=_environment(),
            tags=[tracking.Tag(key=k, value=str(v)) for k, v in tags.items()],
            params=[tracking.Param(key=f"model.{k}", value=tracking.param_text(v)) for k, v in params.items()])

    def fold(self, run_id: int, step: int, score: float, mean: float) -> None:
        """Kept until the trial ends, then written with its state in one transaction (a trial whose process dies
        loses its fold scores, not its FAILED record)."""
        from mlopsctl import tracking

        self._folds.setdefault(run_id, []).extend(
            tracking.metric_rows(run_id, {f"fold_{self.metric}": score, f"cv_{self.metric}": mean}, step))

    def finished(self, run_id: int, state: str, value: float | None, reason: str | None) -> None:
        from mlopsctl import tracking

        status = {"COMPLETE": tracking.FINISHED, "PRUNED": tracking.PRUNED}.get(state, tracking.FAILED)
        with self.store.session() as s:
            tracking.insert_metric_rows(s, self._folds.pop(run_id, []))
            tracking.set_tags(s, run_id, {"tune.state": state})
            tracking.finish_run(s, run_id, status, reason)

    def lost(self, number: int, params: dict[str, Any], reason: str) -> None:
        from mlopsctl import tracking

        with self.store.session() as s:
            run = next((r for r in tracking.runs_tagged(s, "tune.study", self.spec["study"])
                        if _role_and_trial(r) == (self.role, str(number))), None)
            if run is None:  # died between asking for the trial and recording it
                run = self._create(s, number, params, "unknown")
            tracking.set_tags(s, run.id, {"tune.state": "FAILED"})
            tracking.finish_run(s, run.id, tracking.FAILED, reason)


def _role_and_trial(run: Any) -> tuple[str | None, str | None]:
    tags = {t.key: t.value for t in run.tags}
    return tags.get("tune.role"), tags.get("tune.trial")


def _evaluate(loaded: Loaded, spec: dict[str, Any]) -> Callable[[dict[str, Any], Callable[[int, float], None]], list[float]]:
    from mlopsctl.training import cv, estimators

    prepared = loaded.prepared

    def evaluate(params: dict[str, Any], report: Callable[[int, float], None]) -> list[float]:
        estimator = estimators.make_estimator(spec["model"], {**spec["fixed"], **params}, prepared.task, spec["seed"])
        return cv.cross_validate(loaded.folds, estimator, report)

    return evaluate


# ---- running a study ----------------------------------------------------------------------------------------

Progress = Callable[[Any, float], None]  # (tuning.study.Snapshot, seconds since start)


def tune(
    settings: Settings, *, study: str | None = None, data_path: Path | None = None,
    given: frozenset[str] = frozenset(), register: str | None = None, experiment: str | None = None,
    progress: Progress = lambda snap, elapsed: None, notify: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Start study ``study`` (or resume it, if it exists) and run it to its trial count with ``tune.jobs`` worker
    processes; then refit the best parameters through the normal train path, and with ``register`` register that
    run under that name and promote it through the gate.

    ``given``: the settings keys set on the command line; a resume may change trials, jobs, timeout and max_failed
    only (other keys must match the study's, or it is a ConflictError)."""
    from mlopsctl import tracking
    from mlopsctl.tuning import space as sp, study as st

    started = time.monotonic()
    name = st.check_name(study or _default_name())
    if register is not None:
        from mlopsctl import registry

        registry.validate_name(register)
    with open_project(settings).store.read() as s:
        existing = _study_run(s, name)
        stored = _get_study(s, name)[1] if existing is not None else None
        run_id = existing.id if existing is not None else None
        dv_id = existing.dataset_version_id if existing is not None else None
    if stored is not None:
        if data_path is not None and settings.resolve(data_path) != Path(stored["data"]["path"]):
            raise ConflictError(f"study {name!r} was started on {stored['data']['path']}, not {settings.resolve(data_path)}; "
                                "resume it without --data or start a new study with another --study name.")
        spec = _resume_spec(stored, settings, given)
        loaded = _load(settings, spec)
        with open_project(settings).store.session() as s:
            r = s.get(tracking.Run, run_id)
            r.status, r.ended_at, r.duration_s, r.failure_reason = tracking.RUNNING, None, None, None
            tracking.log_params(s, run_id, {"trials": spec["trials"], "max_failed": spec["max_failed"]})
            tags = {t.key: t.value for t in r.tags}
            tracking.set_tags(s, run_id, {"tune.spec": json.dumps(spec, sort_keys=True),
                                          "tune.resumed": int(tags.get("tune.resumed", "0")) + 1})
        experiment = stored.get("experiment", settings.train.experiment)
    else:
        spec, loaded, dv_id = _new_spec(settings, name, data_path, notify)
        experiment = experiment or settings.train.experiment
        spec["experiment"] = experiment
    backend = _backend(settings, name)
    sspec = _study_spec(spec)
    if stored is None:
        try:
            run_id = _create_study_run(settings, spec, experiment, dv_id, backend.location)
        except ConflictError:  # another `tune --study NAME` created it a moment ago: join it
            return tune(settings, study=name, given=given, register=register, progress=progress, notify=notify)
    # The process that creates a study samples with the seed itself (reproducible); one that resumes or joins it
    # draws its own stream, so that two processes never propose the same points.
    base = 0 if stored is None else secrets.randbelow(10**6) * 100
    study_obj = st.open_study(sspec, backend, worker=base)
    if stored is None:
        point = sp.baseline(sspec.space, loaded.prepared.estimator.get_params(deep=False))
        if point is not None:
            st.enqueue_once(study_obj, point)
    recorder = Recorder(settings, spec, experiment, run_id, dv_id)
    try:
        _search(settings, spec, sspec, backend, study_obj, loaded, recorder, started, progress, base)
        snap = st.snapshot(study_obj, sspec)
        summary = _finish_study(settings, run_id, spec, snap)
    except BaseException as exc:
        with open_project(settings).store.session() as s:
            tracking.finish_run(s, run_id, tracking.FAILED,
                                f"{runs.describe_failure(exc)}; resume with `mlopsctl tune --study {name}`"[:2000])
        raise
    result = {"study": name, "run_id": run_id, "storage": backend.location, **summary}
    if snap.best_number is None:
        raise TrainingError(f"study {name!r} has no complete trial ({snap.pruned} pruned, {snap.failed} failed); "
                            f"see `mlopsctl tune show {name}`.")
    result["refit"] = _refit(settings, spec, run_id, snap.best_number, snap.best_params, experiment, notify)
    if register is not None:
        result["registered"] = _register(settings, result["refit"]["id"], register)
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    return result


def _search(settings: Settings, spec: dict[str, Any], sspec: Any, backend: Any, study_obj: Any, loaded: Loaded,
            recorder: Recorder, started: float, progress: Progress, base: int = 0) -> None:
    """This process's worker plus ``tune.jobs - 1`` subprocess workers (sampler seeds ``seed + base + i``), until
    the study has its trials."""
    from mlopsctl.tuning import study as st

    timeout = parse_duration(settings.tune.timeout, "tune.timeout") if settings.tune.timeout else None
    deadline = started + timeout if timeout else None
    workers = [_spawn_worker(settings, spec["study"], base + i, timeout) for i in range(1, settings.tune.jobs)]
    lease = st.Lease(backend.workers)
    report = lambda: progress(st.snapshot(study_obj, sspec), time.monotonic() - started)  # noqa: E731
    try:
        report()  # the progress bar shows from the start
        st.run_worker(study_obj, sspec, backend, lease, recorder, _evaluate(loaded, spec), deadline=deadline,
                      on_change=report)
        while any(w.poll() is None for w in workers):
            report()
            time.sleep(0.25)
        report()
    finally:
        for w in workers:
            _stop_worker(w)
        lease.close()
    failed = [w for w in workers if w.returncode not in (0, None)]
    snap = st.snapshot(study_obj, sspec)
    if failed and snap.done < sspec.target and (deadline is None or time.monotonic() < deadline):
        raise TrainingError(f"{len(failed)} worker process(es) of study {spec['study']!r} failed (exit "
                            f"{failed[0].returncode}; their error is above); resume with `mlopsctl tune --study "
                            f"{spec['study']}`.")


def _spawn_worker(settings: Settings, name: str, index: int, timeout: float | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlopsctl", "--project", str(settings.project_dir), "tune", "worker", name,
           "--index", str(index)]
    if timeout:
        cmd += ["--timeout", f"{timeout}s"]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=os.environ.copy())


def _stop_worker(w: subprocess.Popen) -> None:
    """Closing its stdin tells a worker to stop (its trial is marked FAILED at the next fold)."""
    if w.stdin is not None:
        w.stdin.close()
    try:
        w.wait(30)
    except subprocess.TimeoutExpired:
        w.kill()
        w.wait()


def work(settings: Settings, name: str, *, index: int = 1, timeout: float | None = None) -> None:
    """``mlopsctl tune worker``: one more worker on an existing study, until it has its trials. It stops (failing
    its trial) when its stdin closes, i.e. when the ``tune`` process that started it has ended."""
    from mlopsctl.tuning import study as st

    with open_project(settings).store.read() as s:
        run, spec = _get_study(s, name)
        run_id, dv_id = run.id, run.dataset_version_id
    loaded = _load(settings, spec)
    backend = _backend(settings, name)
    sspec = _study_spec(spec)
    study_obj = st.open_study(sspec, backend, worker=index)
    parent_gone = threading.Event()

    def watch_parent() -> None:  # os.read, not sys.stdin: a daemon thread blocked in a buffered read aborts exit
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        parent_gone.set()

    if not os.isatty(0):
        threading.Thread(target=watch_parent, daemon=True, name="mlopsctl-tune-parent").start()
    lease = st.Lease(backend.workers)
    deadline = time.monotonic() + timeout if timeout else None
    try:
        st.run_worker(study_obj, sspec, backend, lease, Recorder(settings, spec, spec.get("experiment", "default"),
                                                                 run_id, dv_id),
                      _evaluate(loaded, spec), deadline=deadline, stop=parent_gone.is_set)
    except st.Stopped:
        pass
    finally:
        lease.close()


def _finish_study(settings: Settings, run_id: int, spec: dict[str, Any], snap: Any) -> dict[str, Any]:
    from mlopsctl import tracking

    metric = spec["metric"]
    with open_project(settings).store.session() as s:
        if snap.best_value is not None:
            tracking.log_metrics(s, run_id, {f"best_cv_{metric}": snap.best_value}, step=snap.done)
        tracking.set_tags(s, run_id, {
            "tune.best_trial": "" if snap.best_number is None else snap.best_number,
            "tune.best_params": json.dumps(jsonable(snap.best_params)),
            "tune.counts": json.dumps({"complete": snap.complete, "pruned": snap.pruned, "failed": snap.failed}),
        })
        reason = None if snap.done >= snap.target else f"stopped at tune.timeout with {snap.done} of {snap.target} trials"
        tracking.finish_run(s, run_id, tracking.FINISHED, reason)
    return {"metric": f"cv_{metric}", "direction": spec["direction"], "target": snap.target,
            "complete": snap.complete, "pruned": snap.pruned, "failed": snap.failed,
            "best": {"trial": snap.best_number, "value": jsonable(snap.best_value), "params": jsonable(snap.best_params)}}


def _refit(settings: Settings, spec: dict[str, Any], study_run_id: int, number: int, params: dict[str, Any],
           experiment: str, notify: Callable[[str], None]) -> dict[str, Any]:
    """The best parameters through `mlopsctl train`'s path, on the study's data (ONNX, parity, held-out metrics)."""
    s = _spec_settings(settings, spec)
    s = with_overrides(s, train={"params": {**spec["fixed"], **params}})
    path = Path(spec["data"]["path"])
    from mlopsctl.artifacts import sha256_file

    if not path.exists() or sha256_file(path) != spec["data"]["sha256"]:
        raise ConflictError(f"{path} changed (or is gone) since study {spec['study']!r} started; the best parameters "
                            f"were not refitted. Restore the file, or tune again with a new --study name.")
    run = runs.train_and_track(s, data_path=path, run_name=f"{spec['study']}-best", experiment=experiment,
                               tags={"parent_run_id": study_run_id, "tune.study": spec["study"], "tune.role": "refit",
                                     "tune.trial": number}, notify=notify)
    with open_project(settings).store.session() as sess:
        from mlopsctl import tracking

        tracking.set_tags(sess, study_run_id, {"tune.refit_run": run["id"]})
    return {"id": run["id"], "name": run["name"], "status": run["status"], "metrics": run["metrics"],
            "parity": {"passed": (run.get("parity") or {}).get("passed")}}


def _register(settings: Settings, run_id: int, name: str) -> dict[str, Any]:
    """Register the refit run as ``name`` and promote it to the default alias through the gate."""
    from mlopsctl.services import models

    version = models.register(settings, str(run_id), name)["version"]
    try:
        out = models.promote(settings, name, version, reason="mlopsctl tune --register")
        decision = "promoted" if out["changed"] else "unchanged"
        return {"ref": f"{name}/{version}", "version": version, "alias": settings.registry.alias, "decision": decision,
                "gate": out.get("gate")}
    except ConflictError as e:
        return {"ref": f"{name}/{version}", "version": version, "alias": settings.registry.alias,
                "decision": "rejected", "reason": e.message}


def retrain(settings: Settings, *, data_path: Path, trials: int, run_name: str | None = None,
            experiment: str | None = None) -> dict[str, Any]:
    """A small tune in place of a plain train, for a retrain job (``watch.tune_trials``): a study of ``trials``
    trials (one worker, no timeout) on ``data_path``, named ``run_name`` (so a job that crashed resumes its study;
    default: ``retrain-<time>``), whose best parameters are refitted through the train path. Returns the refit run
    like :func:`mlopsctl.services.runs.train_and_track` does, plus ``study``."""
    tuned = with_overrides(settings, tune={"trials": trials, "jobs": 1, "timeout": ""})
    out = tune(tuned, study=run_name or f"retrain-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}",
               data_path=data_path, experiment=experiment)
    return {**runs.show_run(settings, str(out["refit"]["id"])), "study": out["study"]}


# ---- one Katib trial ----------------------------------------------------------------------------------------

def katib_trial(settings: Settings, params: dict[str, Any], *, data_path: Path | None = None, study: str | None = None,
                trial_name: str | None = None,
                on_fold: Callable[[str, int, float, float], None] = lambda metric, i, score, mean: None,
                ) -> dict[str, Any]:
    """``mlopsctl tune trial``: score one parameter set by CV on the training split (what Katib's trial template
    runs) and record it as a run (tagged with the study's name; a child of its run when this store has the study).
    ``on_fold(metric, i, score, running_mean)`` after each fold, ``metric`` being ``cv_<metric>``."""
    from mlopsctl.tuning.study import COMPLETE, FAILED

    name = study or "katib"
    settings_p = with_overrides(settings, train={"params": {**settings.train.params, **params}})
    spec, loaded, dv_id = _trial_spec(settings_p, name, data_path)
    with open_project(settings).store.read() as s:
        parent = _study_run(s, name) if study else None
        parent_id = parent.id if parent is not None else None
    recorder = Recorder(settings, spec, settings.train.experiment, parent_id, dv_id, role="katib-trial")
    run_id = recorder.started(trial_name or "katib", params, f"katib:{trial_name or '-'}")
    scores: list[float] = []
    from mlopsctl.training import cv

    def fold(i: int, score: float) -> None:
        scores.append(score)
        mean = sum(scores) / len(scores)
        recorder.fold(run_id, i, score, mean)
        on_fold(f"cv_{spec['metric']}", i, score, mean)

    try:
        cv.cross_validate(loaded.folds, loaded.prepared.estimator, fold)
    except BaseException as e:
        recorder.finished(run_id, FAILED, None, runs.describe_failure(e))
        raise
    value = sum(scores) / len(scores)
    recorder.finished(run_id, COMPLETE, value, None)
    return {"run_id": run_id, "metric": f"cv_{spec['metric']}", "value": value, "folds": scores, "params": params}


def _trial_spec(settings: Settings, name: str, data_path: Path | None) -> tuple[dict[str, Any], Loaded, int]:
    from mlopsctl import data
    from mlopsctl.training import cv, estimators, metrics, train as training

    path = settings.resolve(data_path or settings.data.path)
    df = data.read_table(path, delimiter=settings.data.delimiter, decimal=settings.data.decimal)
    prepared = training.prepare(df, runs.train_spec(settings, path))
    metric = metrics.primary_metric(prepared.task, settings.train.metric)
    _, _, dv_id = record_dataset(settings, path, df, None)
    spec = {"study": name, "model": estimators.class_path(type(prepared.estimator)), "metric": metric,
            "task": prepared.task, "seed": settings.train.seed}
    return spec, Loaded(prepared, cv.make_folds(prepared, settings.tune.cv, metric)), dv_id


# ---- reading studies ----------------------------------------------------------------------------------------

def list_studies(settings: Settings) -> list[dict[str, Any]]:
    from mlopsctl import tracking

    with open_project(settings).store.read() as s:
        out = []
        for run in _study_runs(s):
            tags = {t.key: t.value for t in run.tags}
            spec = json.loads(tags["tune.spec"])
            counts = _trial_counts(s, run.id)
            best = tracking.latest_metrics(s, run.id).get(f"best_cv_{spec['metric']}")
            out.append({"study": spec["study"], "run_id": run.id, "status": run.status, "model": spec["model"],
                        "metric": f"cv_{spec['metric']}", "trials": spec["trials"], **counts,
                        "best_value": jsonable(best), "started_at": iso(run.started_at)})
        return out


def _trial_counts(s: Any, study_run_id: int) -> dict[str, int]:
    from mlopsctl import tracking

    counts = {"complete": 0, "pruned": 0, "failed": 0, "running": 0}
    for run in tracking.runs_tagged(s, "parent_run_id", str(study_run_id)):
        tags = {t.key: t.value for t in run.tags}
        state = tags.get("tune.state") if tags.get("tune.role") == "trial" else None
        if state:
            counts[{"COMPLETE": "complete", "PRUNED": "pruned", "FAILED": "failed"}.get(state, "running")] += 1
    return counts


def show_study(settings: Settings, name: str) -> dict[str, Any]:
    """The study, its trials (number order), the best value over time and fANOVA parameter importance."""
    from mlopsctl import tracking

    with open_project(settings).store.read() as s:
        run, spec = _get_study(s, name)
        tags = {t.key: t.value for t in run.tags}
        children = tracking.runs_tagged(s, "parent_run_id", str(run.id))
        metrics = tracking.metrics_for(s, [c.id for c in children])
        trials, refit = [], None
        for c in children:
            ctags = {t.key: t.value for t in c.tags}
            if ctags.get("tune.role") == "refit":
                refit = {"run_id": c.id, "status": c.status, "trial": int(ctags["tune.trial"]),
                         "metrics": jsonable(tracking.latest_metrics(s, c.id)), "parity": c.parity}
            if ctags.get("tune.role") != "trial":  # the refit, and trials Katib ran with `tune trial`
                continue
            m = metrics[c.id]
            trials.append({
                "trial": int(ctags["tune.trial"]), "run_id": c.id, "state": ctags.get("tune.state", "RUNNING"),
                "value": jsonable(m.get(f"cv_{spec['metric']}")) if ctags.get("tune.state") != "FAILED" else None,
                "params": json.loads(ctags.get("tune.params", "{}")), "duration_s": c.duration_s,
                "ended_at": iso(c.ended_at), "reason": c.failure_reason, "worker": ctags.get("tune.worker"),
            })
        fold_counts = _fold_counts(s, [t["run_id"] for t in trials], spec["metric"])
        status, started_at, ended_at = run.status, iso(run.started_at), iso(run.ended_at)
        failure = run.failure_reason
    for t in trials:
        t["folds"] = fold_counts.get(t["run_id"], 0)
    trials.sort(key=lambda t: t["trial"])
    sign = 1 if spec["direction"] == "maximize" else -1
    complete = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    best = max(complete, key=lambda t: sign * t["value"]) if complete else None
    over_time, running = [], None
    for t in sorted((t for t in trials if t["ended_at"]), key=lambda t: t["ended_at"]):
        if t["state"] == "COMPLETE" and t["value"] is not None and (running is None or sign * t["value"] > sign * running):
            running = t["value"]
        over_time.append({"trial": t["trial"], "best": running})
    return {
        "study": name, "run_id": run.id, "status": status, "reason": failure, "model": spec["model"],
        "fixed_params": spec["fixed"], "metric": f"cv_{spec['metric']}", "direction": spec["direction"],
        "cv": spec["cv"], "sampler": spec["sampler"], "pruner": spec["pruner"], "seed": spec["seed"],
        "target": spec["trials"], "space": spec["space"], "data": {k: spec["data"][k] for k in ("path", "name", "fingerprint")},
        "storage": tags.get("tune.storage"), "started_at": started_at, "ended_at": ended_at,
        "counts": {s_: sum(t["state"] == s_ for t in trials) for s_ in ("COMPLETE", "PRUNED", "FAILED", "RUNNING")},
        "best": ({"trial": best["trial"], "value": best["value"], "params": best["params"], "run_id": best["run_id"]}
                 if best else None),
        "trials": trials, "best_over_time": over_time, "importance": _importance(spec, complete), "refit": refit,
    }


def _fold_counts(s: Any, run_ids: list[int], metric: str) -> dict[int, int]:
    from sqlalchemy import func, select

    from mlopsctl.store.models import Metric

    if not run_ids:
        return {}
    rows = s.execute(select(Metric.run_id, func.count()).where(Metric.run_id.in_(run_ids), Metric.key == f"fold_{metric}")
                     .group_by(Metric.run_id)).all()
    return {rid: n for rid, n in rows}


def _importance(spec: dict[str, Any], complete: list[dict[str, Any]]) -> dict[str, float] | None:
    """fANOVA importance (Optuna's evaluator) over the complete trials, rebuilt from our runs: no journal needed."""
    from mlopsctl.tuning import space as sp

    space = sp.parse_space(spec["space"])
    varied = [n for n in space if len({json.dumps(t["params"].get(n)) for t in complete}) > 1]
    if len(complete) < 2 or not varied:
        return None
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    from mlopsctl.tuning.study import quiet

    quiet()
    dists = {n: p.distribution() for n, p in space.items()}
    study = optuna.create_study(direction=spec["direction"])
    study.add_trials([optuna.trial.create_trial(params={n: t["params"][n] for n in space}, distributions=dists,
                                                value=t["value"]) for t in complete
                      if all(n in t["params"] for n in space)])
    try:
        found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError):
        return None
    return {k: round(float(v), 4) for k, v in found.items()}


# ---- Katib --------------------------------------------------------------------------------------------------

def export_katib(settings: Settings, name: str, output: Path, *, image: str = "mlopsctl-project:latest",
                 namespace: str | None = None, force: bool = False) -> dict[str, Any]:
    """Write study ``name`` as a Katib v1beta1 Experiment to ``output`` (YAML)."""
    import yaml

    from mlopsctl.common import atomic_write
    from mlopsctl.tuning import katib, space as sp
    from mlopsctl.tuning.study import MEDIAN_STARTUP_TRIALS

    with open_project(settings).store.read() as s:
        _, spec = _get_study(s, name)
    if output.exists() and not force:
        raise ConflictError(f"{output} already exists; pass --force to overwrite it.")
    data = Path(spec["data"]["path"])
    try:
        data_arg = str(data.relative_to(settings.project_dir))
    except ValueError:
        data_arg = str(data)
    data_flag = [] if data == settings.resolve(settings.data.path) else ["--data", data_arg]  # run in the project folder
    command = ["mlopsctl", "tune", "trial", "--study", name, "--model", spec["model"], "--cv", str(spec["cv"]),
               "--metric", spec["metric"], *data_flag, "--target", spec["data"]["target"],
               *(a for k, v in spec["fixed"].items() for a in ("--param", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"))]
    doc = katib.experiment(
        name=name, space=sp.parse_space(spec["space"]), metric=spec["metric"], direction=spec["direction"],
        sampler=spec["sampler"], pruner=spec["pruner"], seed=spec["seed"], trials=spec["trials"],
        jobs=spec.get("jobs", 1), max_failed=spec["max_failed"], pruner_startup=MEDIAN_STARTUP_TRIALS,
        image=image, command=command, namespace=namespace)
    with atomic_write(output, "w", encoding="utf-8") as fh:
        fh.write(f"# Katib Experiment for mlopsctl study {name!r} (kubectl apply -f {output.name}).\n"
                 f"# The image must hold the project (its .mlops.toml and {data_arg}) and mlopsctl.\n")
        yaml.safe_dump(doc, fh, sort_keys=False)
    return {"study": name, "output": str(output), "experiment": doc}


def read_katib(path: Path) -> dict[str, Any]:
    """Tune settings from a Katib Experiment YAML file (see :func:`mlopsctl.tuning.katib.read`)."""
    import yaml

    from mlopsctl.tuning import katib

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise NotFoundError(f"cannot read {path}: {e.strerror}.") from None
    except yaml.YAMLError as e:
        raise InvalidInputError(f"{path} is not valid YAML ({str(e).splitlines()[0]}).") from None
    return katib.read(doc, path.name)
