"""Optuna glue: samplers, pruners, where Optuna keeps its state, and the trial loop each worker process runs.

**Optuna's state is never in our tables.** Its RDB storage creates Alembic's default ``alembic_version`` table,
which is our store's, so pointed at our SQLite file it breaks both. On one machine it lives in a journal file beside
the store (``.mlops/tune/<study>.journal``; Optuna's ``JournalFileBackend``, which many processes can append to at
once, where SQLite storage fails under parallel writers); when the store is PostgreSQL, in the schema ``optuna`` of
the same database (``search_path``), so that workers on several machines share one study.

**Exactly N trials.** A study runs until ``trials`` trials have finished (complete or pruned), however many processes
work on it and however often it is killed and resumed. A worker counts the finished and running trials and asks for
the next one inside one critical section (a ``flock`` beside the journal; a PostgreSQL advisory lock), so no two
workers start the trial that would pass the target, and trial numbers are Optuna's (unique per study).

**Lost trials.** Every worker holds an exclusive ``flock`` on a file of its own for its whole life; the kernel releases
it when the process dies, SIGKILL included. Before counting, a RUNNING trial whose worker's file can be locked by
somebody else has lost its worker: it is marked FAILED with the reason (and its run too, through the recorder), so the
count goes on without it and a resume redoes it. On PostgreSQL, where workers are on other machines, Optuna's own
heartbeat does this (``fail_stale_trials``).

Recording trials as runs is the caller's (a :class:`Recorder`), and so is scoring them (an ``evaluate`` function):
this module writes nothing of ours.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

from mlopsctl.errors import InvalidInputError, MlopsError, Stopped, StoreError, TrainingError
from mlopsctl.tuning.space import Param, grid_size
from mlopsctl.tuning.storage import GRACE_S, HEARTBEAT_S, Backend, Lease, _experimental, worker_alive

SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("median", "none")
COMPLETE, PRUNED, FAILED, RUNNING = "COMPLETE", "PRUNED", "FAILED", "RUNNING"
MEDIAN_STARTUP_TRIALS = 5  # MedianPruner: trials that finish before any is pruned (Katib medianstop's min_trials_required)
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class StudySpec:
    """What Optuna needs to know about a study (the rest, data and model, is the caller's)."""

    name: str
    space: dict[str, Param]
    direction: str  # maximize | minimize
    steps: int  # intermediate values a trial reports (the CV folds)
    trials: int
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 42
    max_failed: int = 10

    @property
    def target(self) -> int:
        """Finished trials to reach: ``trials``, or fewer when a grid has fewer points."""
        return min(self.trials, grid_size(self.space)) if self.sampler == "grid" else self.trials


def check_name(name: str) -> str:
    if not STUDY_NAME.match(name or ""):
        raise InvalidInputError(f"study name {name!r} must be 1 to 100 letters, digits, '.', '_' or '-', starting with a "
                                "letter or digit.")
    return name


def quiet() -> None:
    """Optuna logs every trial at INFO on stderr; mlopsctl prints its own progress."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_sampler(spec: StudySpec, worker: int = 0):
    """The sampler of worker ``worker``: seeded ``seed + worker`` so parallel workers do not draw the same points
    (worker 0 alone draws exactly what a plain Optuna script with that seed draws)."""
    import optuna

    seed = spec.seed + worker
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler({n: p.grid() for n, p in spec.space.items()}, seed=seed)
    if spec.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise InvalidInputError("sampler cmaes needs the cmaes package: pip install cmaes (or use tpe).") from None
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise InvalidInputError(f"sampler {spec.sampler!r} is not one of {', '.join(SAMPLERS)}.")


def make_pruner(spec: StudySpec):
    import optuna

    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=0)
    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    raise InvalidInputError(f"pruner {spec.pruner!r} is not one of {', '.join(PRUNERS)}.")


# ---- where Optuna's state lives ---------------------------------------------------------------------------


def open_study(spec: StudySpec, backend: Backend, worker: int = 0):
    import optuna

    quiet()
    return optuna.create_study(study_name=spec.name, storage=backend.storage, direction=spec.direction,
                               sampler=make_sampler(spec, worker), pruner=make_pruner(spec), load_if_exists=True)


def enqueue_once(study: Any, params: dict[str, Any]) -> None:
    """Put ``params`` first in line unless the study already has trials (a resume)."""
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(params, user_attrs={"baseline": True})


class Recorder(Protocol):
    """How trials become runs in the caller's store (services.tune)."""

    def started(self, number: int, params: dict[str, Any], worker: str) -> int: ...

    def fold(self, run_id: int, step: int, score: float, mean: float) -> None: ...

    def finished(self, run_id: int, state: str, value: float | None, reason: str | None) -> None: ...

    def lost(self, number: int, params: dict[str, Any], reason: str) -> None: ...


Evaluate = Callable[[dict[str, Any], Callable[[int, float], None]], list[float]]


@dataclass
class Snapshot:
    """Where a study stands, for progress bars and summaries."""

    target: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    best_value: float | None = None
    best_number: int | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    finished: list[dict[str, Any]] = field(default_factory=list)  # every finished trial, in number order

    @property
    def done(self) -> int:
        return self.complete + self.pruned


def snapshot(study: Any, spec: StudySpec) -> Snapshot:
    from optuna.trial import TrialState

    snap = Snapshot(target=spec.target)
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            snap.complete += 1
            better = snap.best_value is None or (t.value > snap.best_value if spec.direction == "maximize"
                                                 else t.value < snap.best_value)
            if better:
                snap.best_value, snap.best_number, snap.best_params = t.value, t.number, dict(t.params)
        elif t.state == TrialState.PRUNED:
            snap.pruned += 1
        elif t.state == TrialState.FAIL:
            snap.failed += 1
        elif t.state == TrialState.RUNNING:
            snap.running += 1
        if t.state.is_finished():
            snap.finished.append({"number": t.number, "state": _state(t.state), "value": t.value,
                                  "params": dict(t.params), "reason": t.user_attrs.get("fail_reason")})
    return snap


def _state(state: Any) -> str:
    return {"COMPLETE": COMPLETE, "PRUNED": PRUNED, "FAIL": FAILED}.get(state.name, state.name)


def _fail(study: Any, trial_id: int, number: int, reason: str) -> bool:
    """Mark a RUNNING trial FAILED with ``reason``; False if it finished meanwhile."""
    import optuna
    from optuna.trial import TrialState

    try:  # Optuna's own fail_stale_trials also goes through study._storage: there is no public way for another process
        study._storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        study.tell(number, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
        return False
    return True


def reconcile(study: Any, backend: Backend, recorder: Recorder) -> int:
    """Fail the RUNNING trials whose worker is gone (call under ``backend.lock``); returns how many."""
    from optuna.trial import TrialState

    lost = 0
    if backend.workers is None:  # PostgreSQL: Optuna's heartbeat decides
        import optuna

        running = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with _experimental():
            optuna.storages.fail_stale_trials(study)
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.number in running:
                worker = t.user_attrs.get("worker")
                recorder.lost(t.number, dict(t.params), f"no heartbeat from its worker {worker} for {GRACE_S} s")
                lost += 1
        return lost
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker_alive(backend.workers, worker):
            continue
        reason = (f"its worker ({worker or 'unknown'}) ended while the trial was running (killed or crashed); "
                  "marked FAILED by a later worker")
        if _fail(study, t._trial_id, t.number, reason):
            recorder.lost(t.number, dict(t.params), reason)
            lost += 1
    return lost


def run_worker(
    study: Any, spec: StudySpec, backend: Backend, lease: Lease, recorder: Recorder, evaluate: Evaluate, *,
    deadline: float | None = None, stop: Callable[[], bool] = lambda: False,
    on_change: Callable[[], None] = lambda: None,
) -> None:
    """Ask, evaluate and tell trials until the study has its ``target`` finished trials (or ``deadline``, a
    ``time.monotonic()`` value, passes, or ``stop()``). Raises TrainingError once ``max_failed`` trials failed."""
    from optuna.trial import TrialState

    while not stop():
        with backend.lock():
            reconcile(study, backend, recorder)
            states = [t.state for t in study.get_trials(deepcopy=False)]
            failed = states.count(TrialState.FAIL)
            if failed >= spec.max_failed:
                raise TrainingError(
                    f"study {spec.name!r} has {failed} failed trials (tune.max_failed = {spec.max_failed}); see "
                    f"`mlopsctl tune show {spec.name}` for their reasons.")
            taken = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) + states.count(TrialState.RUNNING)
            if taken >= spec.target or (deadline is not None and time.monotonic() >= deadline):
                return
            with warnings.catch_warnings():  # we keep the heartbeat ourselves (_heartbeat), as optimize would
                warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used", UserWarning)
                trial = study.ask()
            trial.set_user_attr("worker", lease.id)
        _run_trial(study, spec, backend, trial, lease, recorder, evaluate, stop)
        on_change()


def _run_trial(study: Any, spec: StudySpec, backend: Backend, trial: Any, lease: Lease, recorder: Recorder,
               evaluate: Evaluate, stop: Callable[[], bool]) -> None:
    import optuna
    from optuna.trial import TrialState

    run_id = None
    scores: list[float] = []
    recording = False  # an error while writing a run is the store's, not the trial's: it ends the worker

    def report(step: int, score: float) -> None:
        nonlocal recording
        scores.append(float(score))
        mean = sum(scores) / len(scores)
        recording = True
        recorder.fold(run_id, step, float(score), mean)
        recording = False
        if stop():
            raise Stopped("stopped: the tune process that started this worker has ended")
        if step < spec.steps - 1:  # after the last fold the trial is done: nothing left to prune
            trial.report(mean, step)
            if trial.should_prune():
                raise optuna.TrialPruned()

    try:
        params = {name: p.suggest(trial) for name, p in spec.space.items()}
        recording = True
        run_id = recorder.started(trial.number, params, lease.id)
        recording = False
        with _heartbeat(backend, trial):
            evaluate(params, report)
        value = sum(scores) / len(scores) if scores else math.nan
        if not math.isfinite(value):
            raise TrainingError(f"the cross-validated score is {value}; the metric cannot rank this trial.")
    except optuna.TrialPruned:
        recorder.finished(run_id, PRUNED, sum(scores) / len(scores), None)
        study.tell(trial, state=TrialState.PRUNED)
    except BaseException as e:
        reason = _reason(e)
        if run_id is not None and not recording:
            recorder.finished(run_id, FAILED, None, reason)
        _fail(study, trial._trial_id, trial.number, reason)
        # A trial's own error (a fit that fails for these parameters) fails the trial and the search goes on;
        # Ctrl-C, a stop request, the store or a bug in the recorder end this worker.
        if recording or isinstance(e, (Stopped, StoreError)) or not isinstance(e, Exception):
            raise
    else:
        recorder.finished(run_id, COMPLETE, value, None)
        study.tell(trial, value)


@contextlib.contextmanager
def _heartbeat(backend: Backend, trial: Any) -> Iterator[None]:
    """On PostgreSQL, a thread records the trial's heartbeat every HEARTBEAT_S while it runs (what Optuna's own
    optimize loop does); lease files need none."""
    record = getattr(backend.storage, "record_heartbeat", None) if backend.workers is None else None
    if record is None:
        yield
        return
    import threading

    done = threading.Event()

    def beat() -> None:
        while True:
            record(trial._trial_id)
            if done.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, daemon=True, name="mlopsctl-tune-heartbeat")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _reason(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(e, SystemExit):
        return f"interrupted (exit {e.code})"
    if isinstance(e, Stopped):
        return str(e)
    if isinstance(e, MlopsError):
        return e.message
    first = (str(e).strip().splitlines() or ["(no message)"])[0]
    return f"{type(e).__name__}: {first[:500]}"
