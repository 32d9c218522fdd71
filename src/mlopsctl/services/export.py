"""Use case: export a registered version to Triton, KServe or a container (``mlopsctl export``).

The output folder is written in a temporary sibling and renamed into place, so it is never half-written;
each export is recorded as an ``exported`` event. The formats themselves: :mod:`mlopsctl.exports`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mlopsctl.config import CONFIG_FILE, Settings
from mlopsctl.errors import ConflictError, InvalidInputError
from mlopsctl.exports.docker import DOCKERIGNORE, _wheel_file, bundle_config, dockerfile
from mlopsctl.exports.kserve import mlopsctl_runtime, triton_isvc
from mlopsctl.exports.triton import DEFAULT_MAX_BATCH_SIZE, FORMATS, write_triton_repository
from mlopsctl.project import open_project


def write_bundle(project: Path, settings: Settings, model: Any, row: dict[str, Any], run: dict[str, Any]) -> None:
    """A self-contained project: the version (same number, same blobs) in a fresh SQLite store."""
    from mlopsctl import registry, tracking
    from mlopsctl.artifacts import ArtifactStore
    from mlopsctl.store.db import open_store
    from mlopsctl.store.models import ModelVersion

    (project / ".mlops").mkdir(parents=True)
    (project / CONFIG_FILE).write_text(bundle_config(settings, model.name), encoding="utf-8")
    contract_bytes = open_project(settings).artifacts.get_bytes(row["contract_sha256"])
    arts = ArtifactStore(project / ".mlops" / "artifacts")
    arts.put_bytes(model.onnx)
    arts.put_bytes(contract_bytes)
    db_path = project / ".mlops" / "mlops.db"
    store = open_store(f"sqlite:///{db_path}")
    try:
        with store.session() as s:
            r = tracking.create_run(s, run["experiment"], run["name"], task=row["task"], model_class=run["model_class"],
                                    seed=run["seed"], git_commit=row["git_commit"], environment=run["environment"])
            r.parity = row["parity"]
            tracking.add_artifact(s, r.id, "model.onnx", row["onnx_sha256"], len(model.onnx), "application/onnx")
            tracking.add_artifact(s, r.id, "contract.json", row["contract_sha256"], len(contract_bytes),
                                  "application/json")
            tracking.finish_run(s, r.id)
            m = registry.get_or_create_model(s, model.name)
            s.add(ModelVersion(model_id=m.id, run_id=r.id, heldout_sha256=None, dataset_version_id=None, **row))
            registry.add_event(s, "imported", f"{model.name}/{model.version} copied by mlopsctl export from "
                               f"{settings.project_dir}", model=model.name, version=model.version,
                               payload={"onnx_sha256": model.onnx_sha256})
    finally:
        store.dispose()  # the last connection checkpoints the WAL into the file
    for leftover in db_path.parent.glob(db_path.name + ".migrate.lock"):
        leftover.unlink()


def _check_target(out: Path, force: bool, settings: Settings) -> None:
    target = out.resolve()
    for own in (settings.project_dir, settings.artifacts_dir):
        if own.resolve() == target or target in own.resolve().parents:
            raise ConflictError(f"{out} holds the project's own files ({own}); choose a folder outside it for -o.")
    if out.exists() and not out.is_dir():
        raise ConflictError(f"{out} exists and is not a folder; choose another -o.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConflictError(f"{out} is not empty; choose a new folder or pass --force to replace its content.")


def _move_into_place(tmp: Path, out: Path) -> None:
    """``tmp`` becomes ``out`` by renames (same file system): ``out`` is never half-written, and an old ``out``
    is deleted only once the new one is in place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    try:
        os.rename(out, old / "content")
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old / "content", out)
            raise
    finally:
        if out.exists():  # else the old content could not be put back: keep it where it is
            shutil.rmtree(old, ignore_errors=True)


def _version_rows(settings: Settings, ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The version ``ref`` points at now, and its run: the fields a copy of it needs."""
    from mlopsctl import registry
    from mlopsctl.store.models import Run

    with open_project(settings).store.read() as s:
        mv = registry.resolve(s, registry.parse_ref(ref, settings.registry.alias))
        row = {k: getattr(mv, k) for k in ("version", "onnx_sha256", "contract_sha256", "task", "dataset_fingerprint",
                                            "git_commit", "metrics", "parity", "gate", "created_by", "created_at")}
        run = s.get(Run, mv.run_id)
        run_fields = {"experiment": run.experiment.name, "name": run.name, "model_class": run.model_class,
                      "seed": run.seed, "environment": run.environment}
        return row, run_fields


def export_model(settings: Settings, ref: str, fmt: str, out: Path, *, force: bool = False,
                 max_batch_size: int | None = None, wheel: Path | None = None, storage_uri: str | None = None,
                 image: str | None = None) -> dict[str, Any]:
    """Write ``ref`` (``name``, ``name/3``, ``name@alias``) in ``fmt`` to the folder ``out``; returns what was
    written. ``out`` must be empty or missing unless ``force`` (then its content is replaced)."""
    from mlopsctl import registry

    if fmt not in FORMATS:
        raise InvalidInputError(f"format {fmt!r} is not one of {', '.join(FORMATS)}.")
    for flag, value, formats in (("--max-batch-size", max_batch_size, ("triton", "kserve")),
                                 ("--wheel", wheel, ("docker",)), ("--storage-uri", storage_uri, ("kserve",)),
                                 ("--image", image, ("kserve",))):
        if value is not None and fmt not in formats:
            raise InvalidInputError(f"{flag} applies to --format {' or '.join(formats)}, not {fmt}.")
    if max_batch_size is not None and max_batch_size < 1:
        raise InvalidInputError(f"--max-batch-size must be at least 1, got {max_batch_size}.")
    out = Path(out)
    _check_target(out, force, settings)
    if wheel is not None:
        wheel = _wheel_file(Path(wheel))

    row, run = _version_rows(settings, ref)
    name = registry.parse_ref(ref, settings.registry.alias).name
    model = open_project(settings).load_model(f"{name}/{row['version']}")  # the bytes, verified against the sha256
    what = f"{model.name}/{model.version}"
    batch = max_batch_size or DEFAULT_MAX_BATCH_SIZE

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise InvalidInputError(f"cannot write {out}: {e.strerror}; choose another -o.") from None
    try:
        _write_format(tmp, fmt, model, settings, batch, row, run, wheel=wheel, storage_uri=storage_uri, image=image)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    result = {"model": model.name, "version": model.version, "ref": what, "format": fmt,
              "onnx_sha256": model.onnx_sha256, "output": str(out.resolve()), "files": files}
    if fmt in ("triton", "kserve"):
        result["max_batch_size"] = batch
    if fmt == "docker":
        result["wheel"] = wheel.name if wheel is not None else None
    with open_project(settings).store.session() as s:
        registry.add_event(s, "exported", f"{what} exported as {fmt} to {result['output']}", model=model.name,
                           version=model.version, payload={k: v for k, v in result.items() if k != "files"})
    return result


def _write_format(tmp: Path, fmt: str, model: Any, settings: Settings, batch: int, row: dict[str, Any],
                  run: dict[str, Any], *, wheel: Path | None, storage_uri: str | None, image: str | None) -> None:
    if fmt == "triton":
        write_triton_repository(tmp, model, settings, batch)
    elif fmt == "kserve":
        write_triton_repository(tmp / "repository", model, settings, batch)
        (tmp / "inferenceservice-triton.yaml").write_text(
            triton_isvc(model, storage_uri or "${STORAGE_URI}", settings), encoding="utf-8")
        (tmp / "mlopsctl-runtime.yaml").write_text(
            mlopsctl_runtime(model, image or "${IMAGE}", settings), encoding="utf-8")
    else:
        write_bundle(tmp / "project", settings, model, row, run)
        (tmp / "wheels").mkdir()
        if wheel is not None:
            shutil.copyfile(wheel, tmp / "wheels" / wheel.name)
        (tmp / "Dockerfile").write_text(dockerfile(model), encoding="utf-8")
        (tmp / ".dockerignore").write_text(DOCKERIGNORE, encoding="utf-8")
