"""Use cases. Each owns its transactions and returns plain dicts/dataclasses, never ORM objects.

A crash mid-way never leaves a half-written record: blobs are written (atomically) before the rows
that point at them, and each group of rows is committed in one short transaction.
"""

from __future__ import annotations

import io
import json
import platform
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from mlopsctl._version import __version__
from mlopsctl.artifacts import ArtifactStore
from mlopsctl.config import CONFIG_FILE, Settings
from mlopsctl.contract import Contract, _jsonable
from mlopsctl.errors import ConflictError, InvalidInputError, NotFoundError
from mlopsctl.registry import LoadedModel
from mlopsctl.store.db import Store, open_store

ONNX_MEDIA = "application/onnx"
JSON_MEDIA = "application/json"
IMPORTANCE = "feature_importance.json"  # a booster's total gain per column (training.boosters.gain_importance)


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
exclude = []            # columns that are not features, e.g. ["customer_id"]

[train]
model = "auto"          # a random forest classifier or regressor by the task, or any estimator class path
params = {}
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


def record_dataset(settings: Settings, path: Path, df: Any, name: str | None) -> tuple[dict[str, Any], bool, int]:
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
    view, created, _ = record_dataset(settings, path, df, name)
    return {**view, "created": created}


def list_datasets(settings: Settings) -> list[dict[str, Any]]:
    from mlopsctl import tracking

    with store_for(settings).read() as s:
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

    with store_for(settings).read() as s:
        dv = tracking.get_dataset_version(s, ref)
        view = tracking.dataset_version_view(dv)
        view["versions"] = [{"version": v.version, "rows": v.row_count, "fingerprint": v.fingerprint,
                             "created_at": tracking._iso(v.created_at)} for v in dv.dataset.versions]
        return view


# ---- runs ---------------------------------------------------------------------------------------------

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
    notify: Callable[[str], None] = lambda line: None,
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
        exclude=tuple(settings.data.exclude), max_categories=settings.train.max_categories,
        categorical=settings.train.categorical, early_stopping_rounds=settings.train.early_stopping_rounds,
    )
    prepared = training.prepare(df, spec)
    for line in prepared.notices:
        notify(line)
    _, _, dv_id = record_dataset(settings, path, df, None)
    store = store_for(settings)
    with store.session() as s:
        run = tracking.create_run(
            s, experiment or settings.train.experiment, run_name, dataset_version_id=dv_id, task=prepared.task,
            model_class=settings.train.model, seed=spec.seed, git_commit=git_commit(settings.project_dir),
            environment=environment(training.library_versions(prepared)),
        )
        run_id = run.id
        if prepared.notices:
            tracking.set_tags(s, run_id, {"data.notices": "\n".join(prepared.notices)})
        if prepared.ignored:
            tracking.log_params(s, run_id, {"excluded_columns": ",".join(map(str, prepared.ignored))})
    try:
        result = training.train(prepared, progress)
        progress("record")
        arts = artifacts_for(settings)
        files = store_model_files(arts, result.pipeline, result.onnx_bytes, result.contract)
        heldout = io.BytesIO()
        result.heldout.to_parquet(heldout, index=False)
        heldout_sha = arts.put_bytes(heldout.getvalue())
        extra = {"heldout.parquet": (heldout_sha, len(heldout.getvalue()), "application/vnd.apache.parquet")}
        if result.importance is not None:
            blob = json.dumps(result.importance).encode()
            extra[IMPORTANCE] = (arts.put_bytes(blob), len(blob), JSON_MEDIA)
        with store.session() as s:
            r = s.get(tracking.Run, run_id)
            r.model_class = result.model_class
            tracking.log_params(s, run_id, {f"model.{k}": v for k, v in result.params.items()})
            tracking.log_params(s, run_id, {"target": spec.target, "task": result.task, "test_size": spec.test_size,
                                            "seed": spec.seed, "n_train": result.n_train, "n_test": result.n_test,
                                            "rows_without_target": result.dropped, **result.model_info})
            tracking.log_metrics(s, run_id, result.metrics)
            tracking.set_tags(s, run_id, {f"timing.{k}": f"{v:.3f}" for k, v in result.timings.items()})
            record_model(s, run_id, files, _jsonable(result.parity.to_dict()), extra)
            tracking.finish_run(s, run_id)
            training_event(s, run_id, "trained", f"run {run_id} finished: " + ", ".join(
                f"{k}={v:.4f}" for k, v in sorted(result.metrics.items())), result.metrics)
    except BaseException as exc:
        fail_run(store, run_id, describe_failure(exc))
        raise
    return show_run(settings, str(run_id))


def list_runs(settings: Settings, experiment: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    from mlopsctl import tracking

    with store_for(settings).read() as s:
        runs = tracking.list_runs(s, experiment, limit)
        metrics = tracking.metrics_for(s, [r.id for r in runs])
        return [tracking.run_summary(r, metrics[r.id]) for r in runs]


def show_run(settings: Settings, ref: str) -> dict[str, Any]:
    """The run's record; with the feature importance it stored (LightGBM, XGBoost), if any."""
    from mlopsctl import tracking

    with store_for(settings).read() as s:
        view = tracking.run_detail(s, tracking.get_run(s, ref))
    for a in view["artifacts"]:
        if a["name"] == IMPORTANCE:
            try:
                view["feature_importance"] = json.loads(artifacts_for(settings).get_bytes(a["sha256"]))
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


def run_artifact(settings: Settings, ref: str, name: str) -> bytes:
    """A verified artifact blob of a run (``model.onnx``, ``contract.json``, ...)."""
    run = show_run(settings, ref)
    for a in run["artifacts"]:
        if a["name"] == name:
            return artifacts_for(settings).get_bytes(a["sha256"])
    raise NotFoundError(f"run {run['id']} has no artifact {name!r}; it has {', '.join(a['name'] for a in run['artifacts']) or 'none'}.")




# ---- registry -----------------------------------------------------------------------------------------

def _artifact_map(run_view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in run_view["artifacts"]}


def register(settings: Settings, run_ref: str, name: str | None = None) -> dict[str, Any]:
    """A new immutable, consecutively numbered version of ``name`` from a finished, exported run."""
    from mlopsctl import registry, tracking

    name = registry.validate_name(name or settings.registry.model_name)
    arts = artifacts_for(settings)
    with store_for(settings).session() as s:
        run = tracking.get_run(s, run_ref)
        if run.status != tracking.FINISHED:
            why = f" ({run.failure_reason})" if run.failure_reason else ""
            raise ConflictError(f"run {run.id} is {run.status}{why}; only FINISHED runs can be registered.")
        files = {a.name: a for a in run.artifacts}
        if "model.onnx" not in files or "contract.json" not in files:
            raise ConflictError(f"run {run.id} has no ONNX export (model.onnx + contract.json); it cannot be registered.")
        if not (run.parity or {}).get("passed"):
            raise ConflictError(
                f"run {run.id} failed its ONNX parity check ({_parity_text(run.parity)}); it cannot be registered."
            )
        for f in ("model.onnx", "contract.json"):
            if not arts.path(files[f].sha256).exists():
                raise NotFoundError(f"run {run.id}'s {f} is missing from {arts.root}; retrain the run.")
        model = registry.get_or_create_model(s, name)
        dv = run.dataset_version
        mv = registry.create_version(
            s, model, run_id=run.id, onnx_sha256=files["model.onnx"].sha256,
            contract_sha256=files["contract.json"].sha256,
            heldout_sha256=files["heldout.parquet"].sha256 if "heldout.parquet" in files else None,
            task=run.task or "", dataset_version_id=dv.id if dv else None,
            dataset_fingerprint=dv.fingerprint if dv else None, git_commit=run.git_commit,
            metrics=_jsonable(tracking.latest_metrics(s, run.id)), parity=run.parity or {},
        )
        registry.add_event(s, "registered", f"run {run.id} registered as {name}/{mv.version}",
                           model=name, version=mv.version, run_id=run.id)
        return _version_view(mv, name)


def _parity_text(parity: dict[str, Any] | None) -> str:
    if not parity:
        return "no parity recorded"
    parts = [f"max diff {parity.get('max_abs_diff', float('nan')):.3g}"]
    if parity.get("label_agreement") is not None:
        parts.append(f"label agreement {parity['label_agreement']:.4f}")
    return ", ".join(parts)


def _version_view(mv: Any, name: str) -> dict[str, Any]:
    from mlopsctl.tracking import _iso

    return {
        "model": name, "version": mv.version, "ref": f"{name}/{mv.version}", "run_id": mv.run_id, "task": mv.task,
        "onnx_sha256": mv.onnx_sha256, "contract_sha256": mv.contract_sha256,
        "dataset_fingerprint": mv.dataset_fingerprint, "git_commit": mv.git_commit, "metrics": mv.metrics,
        "parity": mv.parity, "gate": mv.gate, "created_by": mv.created_by, "created_at": _iso(mv.created_at),
    }


def _move_view(m: Any) -> dict[str, Any]:
    from mlopsctl.tracking import _iso

    return {"alias": m.alias, "from_version": m.from_version, "to_version": m.to_version, "action": m.action,
            "forced": m.forced, "reason": m.reason, "actor": m.actor, "at": _iso(m.created_at)}


def load_model(settings: Settings, ref: str, *, alias: str | None = None) -> LoadedModel:
    """Resolve ``name``, ``name/3`` or ``name@alias`` and read its ONNX file, verified against its sha256."""
    from mlopsctl import registry

    parsed = registry.parse_ref(ref, alias or settings.registry.alias)
    return registry.load_model(store_for(settings), artifacts_for(settings), parsed)


def contract_compatibility(holder: Contract, candidate: Contract) -> dict[str, Any]:
    """The holder's required inputs must be a subset of the candidate's, with the same kinds."""
    cand = {c.name: c.kind for c in candidate.columns}
    held = {c.name: c.kind for c in holder.columns}
    missing = sorted(set(held) - set(cand))
    kinds = sorted(f"{n}: {held[n]} -> {cand[n]}" for n in set(held) & set(cand) if held[n] != cand[n])
    return {"compatible": not missing and not kinds and holder.task == candidate.task,
            "missing_in_candidate": missing, "kind_changes": kinds,
            "new_in_candidate": sorted(set(cand) - set(held)),
            "task_change": None if holder.task == candidate.task else f"{holder.task} -> {candidate.task}"}


def _score(model: LoadedModel, frame: Any, target: str, metric: str) -> float:
    """``metric`` of ``model`` on ``frame``'s rows that have a target, scored through ONNX Runtime."""
    import numpy as np

    from mlopsctl.scoring import Scorer
    from mlopsctl.training import metrics as m

    contract = model.contract
    if contract.task == "classification":
        y, valid = contract.coerce_labels(frame[target].tolist())
        if not valid.all():  # rows without a label (or with one this model cannot have) are not scored
            frame, (y, _) = frame[valid], contract.coerce_labels(y[valid])
    else:
        y = frame[target].to_numpy(dtype="float64", na_value=np.nan)
        frame, y = frame[~np.isnan(y)], y[~np.isnan(y)]
    out = Scorer(model.onnx, contract).predict_frame(frame)
    if contract.task == "classification":
        proba = np.asarray(out["probabilities"], dtype=np.float64)
        return m.classification_metrics(y, np.asarray(out["label"]).ravel(), proba, list(contract.classes))[metric]
    return m.regression_metrics(y, np.asarray(out["prediction"]).ravel())[metric]


def evaluate_gate(settings: Settings, candidate: LoadedModel, holder: LoadedModel | None, *, alias: str,
                  min_delta: float, metric: str | None = None, heldout: Any = None, data_label: str | None = None) -> dict[str, Any]:
    """Score candidate and holder through ONNX Runtime on the same held-out rows and decide."""
    import math

    import pandas as pd

    from mlopsctl.training import metrics as m
    from mlopsctl.tracking import _iso
    from mlopsctl.store.models import utcnow

    metric = m.primary_metric(candidate.contract.task, metric or settings.train.metric)
    higher = metric not in m.LOWER_IS_BETTER
    report: dict[str, Any] = {"alias": alias, "metric": metric, "higher_is_better": higher, "min_delta": min_delta,
                              "candidate": {"version": candidate.version}, "holder": None, "delta": None,
                              "reasons": [], "measured_at": _iso(utcnow())}
    if heldout is None:
        if not candidate.heldout_sha256:
            raise ConflictError(f"{candidate.name}/{candidate.version} has no held-out data to gate on; retrain it.")
        heldout = pd.read_parquet(io.BytesIO(artifacts_for(settings).get_bytes(candidate.heldout_sha256)))
        data_label = f"held-out split of {candidate.name}/{candidate.version}"
    target = candidate.contract.target
    report["data"] = {"source": data_label, "rows": int(len(heldout)), "target": target}
    cand_score = _score(candidate, heldout, target, metric)
    report["candidate"]["score"] = cand_score
    passed = True
    if holder is not None:
        compat = contract_compatibility(holder.contract, candidate.contract)
        report["contract"] = compat
        report["holder"] = {"version": holder.version}
        if not compat["compatible"]:
            passed = False
            report["reasons"].append(
                "contract incompatible: " + "; ".join(filter(None, [
                    compat["missing_in_candidate"] and f"candidate lacks {', '.join(compat['missing_in_candidate'])}",
                    compat["kind_changes"] and f"type changes {', '.join(compat['kind_changes'])}",
                    compat["task_change"] and f"task {compat['task_change']}"])))
        else:
            holder_score = _score(holder, heldout, target, metric)
            report["holder"]["score"] = holder_score
            delta = (cand_score - holder_score) if higher else (holder_score - cand_score)
            report["delta"] = delta
            if math.isnan(delta):
                passed = False
                report["reasons"].append(f"{metric} could not be computed on the held-out rows")
            elif delta < -min_delta:
                passed = False
                report["reasons"].append(
                    f"{metric} {cand_score:.4f} is worse than {holder.name}/{holder.version}'s {holder_score:.4f} "
                    f"by {-delta:.4f} (min_delta {min_delta})")
    report["passed"] = passed
    return report


def promote(settings: Settings, name: str, version: int, *, alias: str | None = None, force: bool = False,
            reason: str | None = None, min_delta: float | None = None, metric: str | None = None,
            heldout: Any = None, data_label: str | None = None) -> dict[str, Any]:
    """Move ``alias`` to ``name/version`` if the gate passes (or ``force``). A rejection raises ConflictError
    after recording the gate report and a ``rejected`` event; the alias does not move."""
    from mlopsctl import registry

    alias = registry.validate_name(alias or settings.registry.alias, "alias")
    min_delta = settings.registry.min_delta if min_delta is None else min_delta
    store = store_for(settings)
    for _attempt in range(5):
        candidate = load_model(settings, f"{name}/{version}")
        with store.session() as s:
            model = registry.get_model(s, name)
            holder_mv = registry.alias_holder(s, model, alias)
            holder_version = holder_mv.version if holder_mv else None
        if holder_version == version:
            return {"model": name, "version": version, "alias": alias, "changed": False,
                    "decision": "unchanged", "message": f"{name}@{alias} already points at version {version}"}
        holder = load_model(settings, f"{name}/{holder_version}") if holder_version else None
        if force and heldout is None and not candidate.heldout_sha256:
            gate = {"alias": alias, "metric": None, "min_delta": min_delta, "candidate": {"version": version},
                    "holder": {"version": holder_version} if holder else None, "delta": None, "passed": False,
                    "data": {"source": "none (no held-out split recorded)", "rows": 0, "target": candidate.contract.target},
                    "reasons": [f"{name}/{version} has no held-out data to gate on"]}
        else:
            gate = evaluate_gate(settings, candidate, holder, alias=alias, min_delta=min_delta, metric=metric,
                                 heldout=heldout, data_label=data_label)
        decision = "promoted" if gate["passed"] else ("forced" if force else "rejected")
        gate["decision"] = decision
        gate = _jsonable(gate)
        with store.session() as s:
            model = registry.get_model(s, name, lock=True)
            now_holder = registry.alias_holder(s, model, alias)
            now = now_holder.version if now_holder else None
            if now != holder_version:
                if not force or now == version:
                    continue  # the alias moved while we were scoring: gate again against the new holder
                decision = gate["decision"] = "forced"
                gate["reasons"].append(f"@{alias} moved from version {holder_version} to {now} while the gate ran")
                holder_version = now
            target = registry.get_version(s, model, version)
            target.gate = gate
            if decision == "rejected":
                registry.add_event(s, "rejected", f"{name}/{version} rejected for @{alias}: {'; '.join(gate['reasons'])}",
                                   model=name, version=version, payload=gate)
            else:
                why = reason or ("forced past the gate: " + "; ".join(gate["reasons"]) if decision == "forced"
                                 else gate_summary(gate))
                registry.move_alias(s, model, alias, target, action="promote", reason=why, forced=decision == "forced",
                                    gate=gate)
                registry.add_event(s, "promoted", f"{name}/{version} -> @{alias} ({decision}): {why}",
                                   model=name, version=version, payload=gate)
        if decision == "rejected":
            raise ConflictError(
                f"gate rejected {name}/{version} for @{alias}: {'; '.join(gate['reasons'])}; use --force to promote anyway."
            )
        return {"model": name, "version": version, "alias": alias, "changed": True, "decision": decision,
                "from_version": holder_version, "gate": gate}
    raise ConflictError(f"{name}@{alias} kept moving while the gate ran; try again.")


def gate_summary(gate: dict[str, Any]) -> str:
    c = gate["candidate"]
    if gate["holder"] is None:
        return f"first holder of @{gate['alias']}: {gate['metric']} {c['score']:.4f}"
    h = gate["holder"]
    return (f"gate passed: {gate['metric']} {c['score']:.4f} vs {h['score']:.4f} of version {h['version']} "
            f"(delta {gate['delta']:+.4f}, min_delta {gate['min_delta']})")


def rollback(settings: Settings, name: str, *, alias: str | None = None, reason: str | None = None) -> dict[str, Any]:
    from mlopsctl import registry

    alias = registry.validate_name(alias or settings.registry.alias, "alias")
    with store_for(settings).session() as s:
        model = registry.get_model(s, name, lock=True)
        current = registry.alias_holder(s, model, alias)
        if current is None:
            raise NotFoundError(f"{name} has no alias {alias!r}; nothing to roll back.")
        target_version = registry.rollback_target(registry.history(s, model, alias))
        if target_version is None:
            raise ConflictError(f"{name}@{alias} has no previous holder to roll back to (it points at version {current.version}).")
        target = registry.get_version(s, model, target_version)
        why = reason or f"rollback from version {current.version}"
        registry.move_alias(s, model, alias, target, action="rollback", reason=why)
        registry.add_event(s, "rolled_back", f"{name}@{alias}: {current.version} -> {target_version} ({why})",
                           model=name, version=target_version)
        return {"model": name, "alias": alias, "from_version": current.version, "to_version": target_version}


def list_models(settings: Settings) -> list[dict[str, Any]]:
    from mlopsctl import registry

    with store_for(settings).read() as s:
        return [{"name": m.name, "versions": len(m.versions),
                 "latest": m.versions[-1].version if m.versions else None,
                 "aliases": {a.name: a.version.version for a in m.aliases}} for m in registry.list_models(s)]


def show_model(settings: Settings, ref: str) -> dict[str, Any]:
    """``MODEL`` (all versions, aliases, history), ``MODEL/3`` or ``MODEL@alias`` (one version + gate report)."""
    from mlopsctl import registry

    parsed = registry.parse_ref(ref)
    with store_for(settings).read() as s:
        model = registry.get_model(s, parsed.name)
        if parsed.version is None and parsed.alias is None:
            return {"name": model.name, "aliases": {a.name: a.version.version for a in model.aliases},
                    "versions": [_version_view(v, model.name) for v in model.versions],
                    "history": [_move_view(m) for m in registry.history(s, model)]}
        mv = registry.resolve(s, parsed)
        view = _version_view(mv, model.name)
        view["aliases"] = [a.name for a in model.aliases if a.version_id == mv.id]
        view["history"] = [_move_view(m) for m in registry.history(s, model, parsed.alias)]
        return view


def list_events(settings: Settings, model: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    from mlopsctl import registry
    from mlopsctl.tracking import _iso

    with store_for(settings).read() as s:
        return [{"id": e.id, "at": _iso(e.created_at), "kind": e.kind, "model": e.model, "version": e.version,
                 "run_id": e.run_id, "message": e.message, "actor": e.actor}
                for e in registry.list_events(s, model, limit)]
