"""Use cases. Each owns its transactions and returns plain dicts/dataclasses, never ORM objects.

A crash mid-way never leaves a half-written record: blobs are written (atomically) before the rows
that point at them, and each group of rows is committed in one short transaction.
"""

from __future__ import annotations

import io
import platform
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from mlopsctl import __version__
from mlopsctl.artifacts import ArtifactStore
from mlopsctl.config import CONFIG_FILE, Settings
from mlopsctl.contract import Contract
from mlopsctl.errors import ConflictError, InvalidInputError, NotFoundError
from mlopsctl.store.db import Store, open_store

ONNX_MEDIA = "application/onnx"
JSON_MEDIA = "application/json"


# ---- project ------------------------------------------------------------------------------------------

def store_for(settings: Settings) -> Store:
    return open_store(settings.store_url, settings.store.busy_timeout_ms)


def artifacts_for(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.artifacts_dir)


def examples_dir() -> Path:
    """Bundled examples: packaged in the wheel as ``mlopsctl/_examples``; the repo's ``examples/`` in dev."""
    packaged = Path(__file__).with_name("_examples")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "examples"


def list_examples() -> list[str]:
    root = examples_dir()
    return sorted(p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file()) if root.is_dir() else []


DEFAULT_CONFIG = """\
# mlopsctl project configuration; every key is listed in .mlops.toml.example.
[store]
url = "sqlite:///.mlops/mlops.db"
artifacts = ".mlops/artifacts"

[data]
path = "data/train.csv"
target = "label"

[train]
model = "sklearn.ensemble.RandomForestClassifier"
params = { n_estimators = 200 }
"""


def init_project(directory: Path, example: str | None = None) -> dict[str, Any]:
    """Create ``.mlops.toml``, ``.mlops/`` and ``data/incoming``; with ``example``, copy a runnable example."""
    directory = Path(directory)
    if (directory / CONFIG_FILE).exists():
        raise ConflictError(f"{directory / CONFIG_FILE} already exists; this folder is already a project.")
    if example is not None:
        names = list_examples()
        if example not in names:
            raise NotFoundError(f"no example named {example!r}; choose one of: {', '.join(names)}.")
        src = examples_dir() / example
        if directory.exists() and any(directory.iterdir()):
            raise ConflictError(f"{directory} is not empty; choose a new folder for the example.")
        shutil.copytree(src, directory, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".mlops", "__pycache__", "*.pyc"))
    else:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(DEFAULT_CONFIG)
    (directory / ".mlops").mkdir(exist_ok=True)
    (directory / "data" / "incoming").mkdir(parents=True, exist_ok=True)
    return {"project": str(directory.resolve()), "example": example, "config": str((directory / CONFIG_FILE).resolve())}


# ---- data ---------------------------------------------------------------------------------------------

def dataset_name_for(settings: Settings, path: Path, name: str | None) -> str:
    chosen = name or settings.data.name or Path(path).stem
    if not chosen or len(chosen) > 200 or any(c in chosen for c in ":/\\"):
        raise InvalidInputError(f"dataset name {chosen!r} must be 1 to 200 characters without ':', '/' or '\\'.")
    return chosen


def _record_dataset(settings: Settings, path: Path, df: Any, name: str | None) -> tuple[dict[str, Any], bool, int]:
    from mlopsctl import data, tracking

    arts = artifacts_for(settings)
    file_sha = arts.put_file(path)  # the exact bytes, for lineage and retraining
    with store_for(settings).session() as s:
        dv, created = tracking.record_dataset_version(
            s, dataset_name_for(settings, path, name), source_path=str(Path(path).resolve()),
            file_sha256=file_sha, fingerprint=data.fingerprint(df), row_count=len(df),
            column_count=len(df.columns), schema=data.schema_of(df),
        )
        return tracking.dataset_version_view(dv), created, dv.id


def add_dataset(settings: Settings, path: Path, name: str | None = None) -> dict[str, Any]:
    from mlopsctl import data

    path = settings.resolve(path)
    df = data.read_table(path)
    view, created, _ = _record_dataset(settings, path, df, name)
    return {**view, "created": created}


def list_datasets(settings: Settings) -> list[dict[str, Any]]:
    from mlopsctl import tracking

    with store_for(settings).session() as s:
        out = []
        for ds in tracking.list_datasets(s):
            latest = ds.versions[-1] if ds.versions else None
            out.append({"name": ds.name, "versions": len(ds.versions),
                        "latest": latest.version if latest else None,
                        "rows": latest.row_count if latest else None,
                        "fingerprint": latest.fingerprint if latest else None})
        return out


def show_dataset(settings: Settings, ref: str) -> dict[str, Any]:
    from mlopsctl import tracking

    with store_for(settings).session() as s:
        dv = tracking.get_dataset_version(s, ref)
        view = tracking.dataset_version_view(dv)
        view["versions"] = [{"version": v.version, "rows": v.row_count, "fingerprint": v.fingerprint,
                             "created_at": tracking._iso(v.created_at)} for v in dv.dataset.versions]
        return view


# ---- runs ---------------------------------------------------------------------------------------------

def environment() -> dict[str, str]:
    env = {"python": platform.python_version(), "mlopsctl": __version__}
    for dist in ("scikit-learn", "skl2onnx", "onnxruntime", "onnx", "numpy", "pandas"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = "not installed"
    return env


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
    joblib.dump(pipeline, buf, compress=3)
    blobs = {"onnx": onnx_bytes, "contract": contract.to_json().encode(), "joblib": buf.getvalue()}
    shas = {k: arts.put_bytes(v) for k, v in blobs.items()}
    return ModelFiles(sizes={k: len(v) for k, v in blobs.items()}, **shas)


def record_model(s: Any, run_id: int, files: ModelFiles, parity: dict[str, Any], extra: dict[str, tuple[str, int, str]] | None = None) -> None:
    """Artifact rows and parity for a run (inside the caller's transaction)."""
    from mlopsctl import tracking
    from mlopsctl.store.models import Run

    tracking.add_artifact(s, run_id, "model.onnx", files.onnx, files.sizes["onnx"], ONNX_MEDIA)
    tracking.add_artifact(s, run_id, "contract.json", files.contract, files.sizes["contract"], JSON_MEDIA)
    tracking.add_artifact(s, run_id, "model.joblib", files.joblib, files.sizes["joblib"], "application/x-joblib")
    for name, (sha, size, media) in (extra or {}).items():
        tracking.add_artifact(s, run_id, name, sha, size, media)
    s.get(Run, run_id).parity = parity


def fail_run(store: Store, run_id: int, reason: str) -> None:
    from mlopsctl import tracking

    with store.session() as s:
        tracking.finish_run(s, run_id, tracking.FAILED, reason[:2000])


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(exc, SystemExit):
        return f"interrupted (exit {exc.code})"
    return f"{type(exc).__name__}: {exc}"


def train_and_track(
    settings: Settings, *, data_path: Path | None = None, run_name: str | None = None,
    experiment: str | None = None, progress: Callable[[str], None] = lambda stage: None,
) -> dict[str, Any]:
    """Read the data, train, export, check parity and record everything as one run.

    Input errors (file, target, model spec, split) are raised before a run exists. Once the run exists,
    any failure or Ctrl-C marks it FAILED with the reason before the exception propagates.
    """
    from mlopsctl import data, tracking
    from mlopsctl.training import train as training

    path = settings.resolve(data_path or settings.data.path)
    progress("load")
    df = data.read_table(path)
    spec = training.TrainSpec(
        model=settings.train.model, params=dict(settings.train.params), target=settings.data.target,
        task=settings.data.task, test_size=settings.train.test_size, seed=settings.train.seed,
        reference_rows=settings.train.reference_rows, source=str(path.name),
    )
    prepared = training.prepare(df, spec)
    _, _, dv_id = _record_dataset(settings, path, df, None)
    store = store_for(settings)
    with store.session() as s:
        run = tracking.create_run(
            s, experiment or settings.train.experiment, run_name, dataset_version_id=dv_id, task=prepared.task,
            model_class=settings.train.model, seed=spec.seed, git_commit=git_commit(settings.project_dir),
            environment=environment(),
        )
        run_id = run.id
    try:
        result = training.train(prepared, progress)
        progress("record")
        arts = artifacts_for(settings)
        files = store_model_files(arts, result.pipeline, result.onnx_bytes, result.contract)
        heldout = io.BytesIO()
        result.heldout.to_parquet(heldout, index=False)
        heldout_sha = arts.put_bytes(heldout.getvalue())
        with store.session() as s:
            r = s.get(tracking.Run, run_id)
            r.model_class = result.model_class
            tracking.log_params(s, run_id, {f"model.{k}": v for k, v in result.params.items()})
            tracking.log_params(s, run_id, {"target": spec.target, "task": result.task, "test_size": spec.test_size,
                                            "seed": spec.seed, "n_train": result.n_train, "n_test": result.n_test})
            tracking.log_metrics(s, run_id, result.metrics)
            tracking.set_tags(s, run_id, {f"timing.{k}": f"{v:.3f}" for k, v in result.timings.items()})
            record_model(s, run_id, files, result.parity.to_dict(),
                         {"heldout.parquet": (heldout_sha, len(heldout.getvalue()), "application/vnd.apache.parquet")})
            tracking.finish_run(s, run_id)
    except BaseException as exc:
        fail_run(store, run_id, describe_failure(exc))
        raise
    return show_run(settings, str(run_id))


def list_runs(settings: Settings, experiment: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    from mlopsctl import tracking

    with store_for(settings).session() as s:
        runs = tracking.list_runs(s, experiment, limit)
        metrics = tracking.metrics_for(s, [r.id for r in runs])
        return [tracking.run_summary(r, metrics[r.id]) for r in runs]


def show_run(settings: Settings, ref: str) -> dict[str, Any]:
    from mlopsctl import tracking

    with store_for(settings).session() as s:
        return tracking.run_detail(s, tracking.get_run(s, ref))


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


def run_artifact(settings: Settings, ref: str, name: str) -> bytes:
    """A verified artifact blob of a run (``model.onnx``, ``contract.json``, ...)."""
    run = show_run(settings, ref)
    for a in run["artifacts"]:
        if a["name"] == name:
            return artifacts_for(settings).get_bytes(a["sha256"])
    raise NotFoundError(f"run {run['id']} has no artifact {name!r}; it has {', '.join(a['name'] for a in run['artifacts']) or 'none'}.")


