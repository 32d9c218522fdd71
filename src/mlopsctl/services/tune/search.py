"""Running a study: the search in this process and its worker processes, the refit, register, retrain."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from mlopsctl.common import jsonable
from mlopsctl.config import Settings, with_overrides
from mlopsctl.config_checks import parse_duration
from mlopsctl.errors import ConflictError, TrainingError
from mlopsctl.project import open_project
from mlopsctl.services import runs
from mlopsctl.services.tune.recorder import Recorder, _evaluate
from mlopsctl.services.tune.spec import Loaded, _backend, _create_study_run, _default_name, _get_study, _load, _new_spec, _resume_spec, _spec_settings, _study_run, _study_spec


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
    spec, loaded, stored, run_id, dv_id, experiment = _start_or_resume(settings, name, data_path, given,
                                                                        experiment, notify)
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
    # the parameter importance (fANOVA fits a forest: ~0.2 s and its imports) is computed by the first `tune show`,
    # which keeps it on the study run: a search that nobody inspects does not pay for it
    result["refit"] = _refit(settings, spec, run_id, snap, loaded, dv_id, experiment, notify)
    if register is not None:
        result["registered"] = _register(settings, result["refit"]["id"], register)
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    return result


def _start_or_resume(settings: Settings, name: str, data_path: Path | None, given: frozenset[str],
                     experiment: str | None, notify: Callable[[str], None]) -> tuple[Any, ...]:
    """(spec, loaded data, the stored spec or None, study run id, dataset version id, experiment): a new study's
    spec, or the stored study's, reopened (RUNNING again) for a resume whose settings match it."""
    from mlopsctl import tracking

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
    return spec, loaded, stored, run_id, dv_id, experiment


def _search(settings: Settings, spec: dict[str, Any], sspec: Any, backend: Any, study_obj: Any, loaded: Loaded,
            recorder: Recorder, started: float, progress: Progress, base: int = 0) -> None:
    """This process's worker plus ``tune.jobs - 1`` subprocess workers (sampler seeds ``seed + base + i``), until
    the study has its trials."""
    from mlopsctl.tuning import study as st
    from mlopsctl.tuning import storage

    timeout = parse_duration(settings.tune.timeout, "tune.timeout") if settings.tune.timeout else None
    deadline = started + timeout if timeout else None
    workers = [_spawn_worker(settings, spec["study"], base + i, timeout) for i in range(1, settings.tune.jobs)]
    lease = storage.Lease(backend.workers)
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
    from mlopsctl.errors import Stopped
    from mlopsctl.tuning import storage, study as st

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
    lease = storage.Lease(backend.workers)
    deadline = time.monotonic() + timeout if timeout else None
    try:
        st.run_worker(study_obj, sspec, backend, lease, Recorder(settings, spec, spec.get("experiment", "default"),
                                                                 run_id, dv_id),
                      _evaluate(loaded, spec), deadline=deadline, stop=parent_gone.is_set)
    except Stopped:
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


def _refit(settings: Settings, spec: dict[str, Any], study_run_id: int, snap: Any, loaded: Loaded, dv_id: int,
           experiment: str, notify: Callable[[str], None]) -> dict[str, Any]:
    """The best parameters through `mlopsctl train`'s path on the study's data (ONNX, parity, held-out metrics): the
    table this process read and the dataset version it recorded, not read and recorded again (the file must still
    hash as it did when the study started)."""
    from mlopsctl.artifacts import sha256_file

    s = with_overrides(_spec_settings(settings, spec), train={"params": {**spec["fixed"], **snap.best_params}})
    path = Path(spec["data"]["path"])
    if not path.exists() or sha256_file(path) != spec["data"]["sha256"]:
        raise ConflictError(f"{path} changed (or is gone) since study {spec['study']!r} started; the best parameters "
                            f"were not refitted. Restore the file, or tune again with a new --study name.")
    run = runs.train_and_track(s, data_path=path, run_name=f"{spec['study']}-best", experiment=experiment,
                               frame=loaded.frame, dataset_version_id=dv_id, notify=notify,
                               tags={"parent_run_id": study_run_id, "tune.study": spec["study"], "tune.role": "refit",
                                     "tune.trial": snap.best_number})
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
