"""Use case: create a project (``mlopsctl init``), optionally from a bundled example."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mlopsctl.config import CONFIG_FILE
from mlopsctl.errors import ConflictError, NotFoundError


def examples_dir() -> Path:
    """Bundled examples: packaged in the wheel as ``mlopsctl/_examples``; the repo's ``examples/`` in dev."""
    packaged = Path(__file__).resolve().parents[1] / "_examples"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "examples"


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
    has_pipeline = "[pipeline.steps." in (directory / CONFIG_FILE).read_text()
    return {"project": str(directory.resolve()), "example": example, "config": str((directory / CONFIG_FILE).resolve()),
            "next": "mlopsctl pipeline run" if has_pipeline else "mlopsctl train"}
