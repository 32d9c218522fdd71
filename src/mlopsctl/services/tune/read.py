"""One Katib trial, reading studies (list, show, importance) and Katib files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from mlopsctl.common import iso, jsonable
from mlopsctl.config import Settings, with_overrides
from mlopsctl.errors import ConflictError, InvalidInputError, NotFoundError
from mlopsctl.project import open_project
from mlopsctl.services import runs
from mlopsctl.services.datasets import record_dataset
from mlopsctl.services.tune.recorder import Recorder
from mlopsctl.services.tune.spec import Loaded, _get_study, _study_run, _study_runs


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
        "trials": trials, "best_over_time": over_time, "importance": _cached_importance(settings, run.id, tags, spec, complete), "refit": refit,
    }


def _fold_counts(s: Any, run_ids: list[int], metric: str) -> dict[int, int]:
    from sqlalchemy import func, select

    from mlopsctl.store.models import Metric

    if not run_ids:
        return {}
    rows = s.execute(select(Metric.run_id, func.count()).where(Metric.run_id.in_(run_ids), Metric.key == f"fold_{metric}")
                     .group_by(Metric.run_id)).all()
    return {rid: n for rid, n in rows}


def _importance_key(complete: list[dict[str, Any]]) -> str:
    """What the importance was computed from: each complete trial's number and value."""
    return json.dumps(sorted((t["trial"], t["value"]) for t in complete))


def _cached_importance(settings: Settings, study_run_id: int, tags: dict[str, str], spec: dict[str, Any],
                       complete: list[dict[str, Any]]) -> dict[str, float] | None:
    """The importance kept on the study run (tag ``tune.importance``) while its complete trials are still the ones it
    was computed from; else computed now (fANOVA fits a forest: ~0.2 s and scikit-learn's import) and kept for the
    next reader. The study itself never computes it: the first `tune show` (or the dashboard's study page) does."""
    try:
        stored = json.loads(tags.get("tune.importance") or "null")
    except ValueError:
        stored = None
    key = _importance_key(complete)
    if isinstance(stored, dict) and stored.get("key") == key:
        return stored.get("importance")
    importance = _importance(spec, complete)
    _keep_importance(settings, study_run_id, key, importance)
    return importance


def _keep_importance(settings: Settings, study_run_id: int, key: str, importance: dict[str, float] | None) -> None:
    """Store the importance on the study run. Only a cache: a store that cannot be written to now (a read-only
    file, a busy database) costs the next reader the computation, not this one its answer."""
    from mlopsctl import tracking

    try:
        with open_project(settings).store.session() as s:
            tracking.set_tags(s, study_run_id, {"tune.importance": json.dumps({"key": key, "importance": importance})})
    except Exception:  # noqa: BLE001 - see the docstring
        return


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
