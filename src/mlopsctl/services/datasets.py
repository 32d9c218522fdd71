"""Use cases: dataset versions (``mlopsctl data add | list | show``) and recording the data a run trains on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlopsctl.common import iso
from mlopsctl.config import Settings
from mlopsctl.errors import InvalidInputError
from mlopsctl.project import open_project


def dataset_name_for(settings: Settings, path: Path, name: str | None) -> str:
    chosen = name or settings.data.name or Path(path).stem
    if not chosen or len(chosen) > 200 or any(c in chosen for c in ":/\\"):
        raise InvalidInputError(f"dataset name {chosen!r} must be 1 to 200 characters without ':', '/' or '\\'.")
    return chosen


def record_dataset(settings: Settings, path: Path, df: Any, name: str | None) -> tuple[dict[str, Any], bool, int]:
    from mlopsctl import data, tracking

    arts = open_project(settings).artifacts
    file_sha = arts.put_file(path)  # the exact bytes, for lineage and retraining
    with open_project(settings).store.session() as s:
        dv, created = tracking.record_dataset_version(
            s, dataset_name_for(settings, path, name), source_path=str(Path(path).resolve()),
            file_sha256=file_sha, fingerprint=data.fingerprint(df), row_count=len(df),
            column_count=len(df.columns), schema=data.schema_of(df),
        )
        return tracking.dataset_version_view(dv), created, dv.id


def add_dataset(settings: Settings, path: Path, name: str | None = None) -> dict[str, Any]:
    from mlopsctl import data

    path = settings.resolve(path)
    df = data.read_table(path, delimiter=settings.data.delimiter, decimal=settings.data.decimal)
    view, created, _ = record_dataset(settings, path, df, name)
    return {**view, "created": created}


def list_datasets(settings: Settings) -> list[dict[str, Any]]:
    from mlopsctl import tracking

    with open_project(settings).store.read() as s:
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

    with open_project(settings).store.read() as s:
        dv = tracking.get_dataset_version(s, ref)
        view = tracking.dataset_version_view(dv)
        view["versions"] = [{"version": v.version, "rows": v.row_count, "fingerprint": v.fingerprint,
                             "created_at": iso(v.created_at)} for v in dv.dataset.versions]
        return view
