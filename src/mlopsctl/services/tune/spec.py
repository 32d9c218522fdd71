"""The study spec: what a study searches, how it is stored as a run, how a resume must match it."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from mlopsctl.common import jsonable
from mlopsctl.config import Settings, with_overrides
from mlopsctl.errors import ConflictError, InvalidInputError, NotFoundError
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

    from mlopsctl.tuning import storage

    if make_url(settings.store_url).get_backend_name() == "postgresql":
        return storage.postgres_backend(settings.store_url, name)
    return storage.journal_backend(_journal_dir(settings), name)


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
    """One process's view of a study's data: prepared, split and folded once; ``frame``: the table as read (what
    the refit trains on)."""

    prepared: Any
    folds: Any
    frame: Any = None


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
    return Loaded(prepared, cv.make_folds(prepared, spec["cv"], spec["metric"]), df)


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
    return spec, Loaded(prepared, folds, df), dv_id


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
