"""Use cases: train and track a run (``mlopsctl train``), list, show and compare runs.

A crash mid-way never leaves a half-written record: blobs are written (atomically) before the rows that
point at them, and each group of rows is committed in one short transaction.
"""

from __future__ import annotations

import io
import json
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from mlopsctl._version import __version__
from mlopsctl.artifacts import ArtifactStore
from mlopsctl.common import jsonable
from mlopsctl.config import Settings
from mlopsctl.contract import Contract
from mlopsctl.errors import ConflictError, InvalidInputError, NotFoundError
from mlopsctl.project import open_project
from mlopsctl.services.datasets import record_dataset
from mlopsctl.store.db import Store

ONNX_MEDIA = "application/onnx"
JSON_MEDIA = "application/json"
IMPORTANCE = "feature_importance.json"  # a booster's total gain per column (training.boosters.gain_importance)


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Versions a run depends on; ``extra``: more libraries the model needs (a booster's, with onnxmltools)."""
    env = {"python": platform.python_version(), "mlopsctl": __version__}
    for dist in ("scikit-learn", "skl2onnx", "onnxruntime", "onnx", "numpy", "pandas"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = "not installed"
    return {**env, **(extra or {})}


def git_commit(directory: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


@dataclass
class ModelFiles:
    """What a trained model leaves in the artifact store (sha256 of each blob)."""

    onnx: str
    contract: str
    joblib: str
    sizes: dict[str, int]


def store_model_files(arts: ArtifactStore, pipeline: Any, onnx_bytes: bytes, contract: Contract) -> ModelFiles:
    import joblib

    buf = io.BytesIO()
    joblib.dump(pipeline, buf)  # uncompressed: several times faster to write than compress=3
    blobs = {"onnx": onnx_bytes, "contract": contract.to_json().encode(), "joblib": buf.getvalue()}
    shas = {k: arts.put_bytes(v) for k, v in blobs.items()}
    return ModelFiles(sizes={k: len(v) for k, v in blobs.items()}, **shas)


def record_model(s: Any, run_id: int, files: ModelFiles, parity: dict[str, Any], extra: dict[str, tuple[str, int, str]] | None = None) -> None:
    """Artifact rows and parity for a run (inside the caller's transaction)."""
    from mlopsctl import tracking

    tracking.add_artifact(s, run_id, "model.onnx", files.onnx, files.sizes["onnx"], ONNX_MEDIA)
    tracking.add_artifact(s, run_id, "contract.json", files.contract, files.sizes["contract"], JSON_MEDIA)
    tracking.add_artifact(s, run_id, "model.joblib", files.joblib, files.sizes["joblib"], "application/x-joblib")
    for name, (sha, size, media) in (extra or {}).items():
        tracking.add_artifact(s, run_id, name, sha, size, media)
    tracking.describe_run(s, run_id, parity=parity)


def fail_run(store: Store, run_id: int, reason: str) -> None:
    from mlopsctl import tracking

    with store.session() as s:
        tracking.finish_run(s, run_id, tracking.FAILED, reason[:2000])
        training_event(s, run_id, "training_failed", f"run {run_id} failed: {reason[:500]}", {"reason": reason[:2000]})


def training_event(s: Any, run_id: int, kind: str, message: str, payload: dict[str, Any]) -> None:
    from mlopsctl import registry

    registry.add_event(s, kind, message, run_id=run_id, payload=payload)


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(exc, SystemExit):
        return f"interrupted (exit {exc.code})"
    return f"{type(exc).__name__}: {exc}"


def train_and_track(
    settings: Settings, *, data_path: Path | None = None, run_name: str | None = None,
    experiment: str | None = None, progress: Callable[[str], None] = lambda stage: None,
    notify: Callable[[str], None] = lambda line: None, frame: Any = None, dataset_version_id: int | None = None,
    tags: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read the data, train, export, check parity and record everything as one run.

    ``frame``: the data of ``data_path``, already read; ``dataset_version_id``: its dataset version, already
    recorded (the retrain job does both once, before training). Input errors (file, target, model spec, split)
    are raised before a run exists. Once the run exists, any failure or Ctrl-C marks it FAILED with the reason
    before the exception propagates.
    """
    from mlopsctl import data
    from mlopsctl.training import train as training

    path = settings.resolve(data_path or settings.data.path)
    progress("load")
    df = frame if frame is not None else data.read_table(path, delimiter=settings.data.delimiter,
                                                          decimal=settings.data.decimal)
    prepared = training.prepare(df, train_spec(settings, path))
    for line in prepared.notices:
        notify(line)
    dv_id = dataset_version_id if dataset_version_id is not None else record_dataset(settings, path, df, None)[2]
    store = open_project(settings).store
    run_id = _start_run(settings, prepared, dv_id, experiment, run_name, tags)
    try:
        result = training.train(prepared, progress)
        progress("record")
        _record_result(settings, run_id, prepared.spec, result)
    except BaseException as exc:
        fail_run(store, run_id, describe_failure(exc))
        raise
    return show_run(settings, str(run_id))


def train_spec(settings: Settings, path: Path) -> Any:
    """The TrainSpec of ``settings`` for the data at ``path`` (what `mlopsctl train` and a tuning trial fit)."""
    from mlopsctl.training import train as training

    t = settings.train
    return training.TrainSpec(
        model=t.model, params=dict(t.params), target=settings.data.target, task=settings.data.task,
        test_size=t.test_size, seed=t.seed, reference_rows=t.reference_rows, source=str(path.name),
        exclude=tuple(settings.data.exclude), max_categories=t.max_categories, categorical=t.categorical,
        early_stopping_rounds=t.early_stopping_rounds,
    )


def _start_run(settings: Settings, prepared: Any, dv_id: int, experiment: str | None, run_name: str | None,
               tags: dict[str, Any] | None = None) -> int:
    """The RUNNING run, with what training noticed about the data (one short transaction)."""
    from mlopsctl import tracking
    from mlopsctl.training import train as training

    with open_project(settings).store.session() as s:
        run = tracking.create_run(
            s, experiment or settings.train.experiment, run_name, dataset_version_id=dv_id, task=prepared.task,
            model_class=settings.train.model, seed=prepared.spec.seed, git_commit=git_commit(settings.project_dir),
            environment=environment(training.library_versions(prepared)),
        )
        if prepared.notices:
            tracking.set_tags(s, run.id, {"data.notices": "\n".join(prepared.notices)})
        if tags:
            tracking.set_tags(s, run.id, tags)
        if prepared.ignored:
            tracking.log_params(s, run.id, {"excluded_columns": ",".join(map(str, prepared.ignored))})
        return run.id


def _record_result(settings: Settings, run_id: int, spec: Any, result: Any) -> None:
    """The blobs first (atomically), then every row that names them in one transaction, then FINISHED."""
    from mlopsctl import tracking

    arts = open_project(settings).artifacts
    files = store_model_files(arts, result.pipeline, result.onnx_bytes, result.contract)
    heldout = io.BytesIO()
    result.heldout.to_parquet(heldout, index=False)
    extra = {"heldout.parquet": (arts.put_bytes(heldout.getvalue()), len(heldout.getvalue()),
                                 "application/vnd.apache.parquet")}
    if result.importance is not None:
        blob = json.dumps(result.importance).encode()
        extra[IMPORTANCE] = (arts.put_bytes(blob), len(blob), JSON_MEDIA)
    with open_project(settings).store.session() as s:
        tracking.describe_run(s, run_id, model_class=result.model_class)
        tracking.log_params(s, run_id, {f"model.{k}": v for k, v in result.params.items()})
        tracking.log_params(s, run_id, {"target": spec.target, "task": result.task, "test_size": spec.test_size,
                                        "seed": spec.seed, "n_train": result.n_train, "n_test": result.n_test,
                                        "rows_without_target": result.dropped, **result.model_info})
        tracking.log_metrics(s, run_id, result.metrics)
        tracking.set_tags(s, run_id, {f"timing.{k}": f"{v:.3f}" for k, v in result.timings.items()})
        record_model(s, run_id, files, jsonable(result.parity.to_dict()), extra)
        tracking.finish_run(s, run_id)
        training_event(s, run_id, "trained", f"run {run_id} finished: " + ", ".join(
            f"{k}={v:.4f}" for k, v in sorted(result.metrics.items())), result.metrics)


def list_runs(settings: Settings, experiment: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    from mlopsctl import tracking

    with open_project(settings).store.read() as s:
        runs = tracking.list_runs(s, experiment, limit)
        metrics = tracking.metrics_for(s, [r.id for r in runs])
        return [tracking.run_summary(r, metrics[r.id]) for r in runs]


def show_run(settings: Settings, ref: str) -> dict[str, Any]:
    """The run's record; with the feature importance it stored (LightGBM, XGBoost), if any."""
    from mlopsctl import tracking

    with open_project(settings).store.read() as s:
        view = tracking.run_detail(s, tracking.get_run(s, ref))
    for a in view["artifacts"]:
        if a["name"] == IMPORTANCE:
            try:
                view["feature_importance"] = json.loads(open_project(settings).artifacts.get_bytes(a["sha256"]))
            except NotFoundError:  # blob gone from the artifact store: the rest of the record still shows
                view["feature_importance"] = None
    return view


def compare_runs(settings: Settings, refs: list[str]) -> dict[str, Any]:
    """Side by side: params and metrics of each run, with the keys that differ marked."""
    if len(refs) < 2:
        raise InvalidInputError("compare needs at least two runs, as in `mlopsctl runs compare 3 4`.")
    runs = [show_run(settings, r) for r in refs]
    keys_p = sorted({k for r in runs for k in r["params"]})
    keys_m = sorted({k for r in runs for k in r["metrics"]})
    params = {k: [r["params"].get(k) for r in runs] for k in keys_p}
    metrics = {k: [r["metrics"].get(k) for r in runs] for k in keys_m}
    return {
        "runs": [{"id": r["id"], "name": r["name"], "status": r["status"], "model": r["model"]} for r in runs],
        "params": params, "metrics": metrics,
        "differing_params": [k for k, v in params.items() if len(set(map(str, v))) > 1],
    }


def run_model(settings: Settings, ref: str) -> Any:
    """A finished run's model as a LoadedModel (named ``run N``, version N): its ONNX file and contract,
    verified, and its held-out split's sha256 — what the gate scores, for a run that is not registered."""
    from mlopsctl.registry import LoadedModel

    run = show_run(settings, ref)
    shas = {a["name"]: a["sha256"] for a in run["artifacts"]}
    if run["status"] != "FINISHED" or "model.onnx" not in shas or "contract.json" not in shas:
        raise ConflictError(f"run {run['id']} is {run['status']} without an ONNX export (model.onnx + contract.json); "
                            "train it again.")
    arts = open_project(settings).artifacts
    return LoadedModel(f"run {run['id']}", run["id"], shas["model.onnx"], arts.get_bytes(shas["model.onnx"]),
                       Contract.from_json(arts.get_bytes(shas["contract.json"])), shas.get("heldout.parquet"))


def run_artifact(settings: Settings, ref: str, name: str) -> bytes:
    """A verified artifact blob of a run (``model.onnx``, ``contract.json``, ...)."""
    run = show_run(settings, ref)
    for a in run["artifacts"]:
        if a["name"] == name:
            return open_project(settings).artifacts.get_bytes(a["sha256"])
    raise NotFoundError(f"run {run['id']} has no artifact {name!r}; it has {', '.join(a['name'] for a in run['artifacts']) or 'none'}.")
