"""What happened to a pipeline step, and the small helpers the runner and the steps share."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mlopsctl.common import jsonable

WORK_DIR = ".mlops/pipeline"
GOOD = ("ran", "cached")
KILL_GRACE_S = 10.0
Progress = Callable[[dict[str, Any]], None]


@dataclass
class Outcome:
    """What happened to (or, in a plan, what would happen to) one step."""

    step: str
    status: str  # ran | cached | failed | skipped; plans: fresh | stale
    reasons: list[str] = field(default_factory=list)
    key: str | None = None
    duration_s: float = 0.0
    exit_code: int | None = None
    message: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    restored: list[str] = field(default_factory=list)
    execution_id: int | None = None
    logs: tuple[str | None, str | None] | None = None  # sha256 of the stdout and stderr blobs

    def view(self) -> dict[str, Any]:
        return {"step": self.step, "status": self.status, "reasons": self.reasons, "key": self.key,
                "duration_s": round(self.duration_s, 3), "exit_code": self.exit_code, "message": self.message,
                "restored": self.restored, "result": jsonable(self.result), "execution": self.execution_id,
                "outputs": {p: o["sha256"] for p, o in self.outputs.items()}}


def param_env(params: dict[str, Any]) -> dict[str, str]:
    """``MLOPS_PARAM_<NAME>``: strings as they are, anything else as JSON (``true``, ``100``, ``[1, 2]``)."""
    return {f"MLOPS_PARAM_{k.upper()}": v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}


def last_line(*texts: bytes | str | None) -> str:
    """The last non-empty line of the first text that has one (stderr, then stdout)."""
    for t in texts:
        if t:
            s = t.decode("utf-8", "replace") if isinstance(t, bytes) else t
            lines = [ln.strip() for ln in s.splitlines() if ln.strip()]
            if lines:
                return lines[-1][:500]
    return "no output"


def _tail(path: Path, limit: int = 8192) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - limit))
        return fh.read()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def blobs(outputs: dict[str, Any]) -> list[str]:
    out = []
    for o in outputs.values():
        out.extend(o["files"].values() if o["type"] == "dir" else [o["sha256"]])
    return out
