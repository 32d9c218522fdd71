"""Shared test set-up: isolation from the caller's MLOPS_* settings, and small example projects trained,
registered and promoted via the CLI."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
from typer.testing import CliRunner


def forget_mlops_env(mp: pytest.MonkeyPatch) -> None:
    """Unset every MLOPS_* variable for the rest of ``mp``'s life (settings must come from the test)."""
    for name in [n for n in os.environ if n.startswith("MLOPS_")]:
        mp.delenv(name)


@contextlib.contextmanager
def module_isolation(root: Path | None = None) -> Iterator[pytest.MonkeyPatch]:
    """For module-scoped fixtures, what conftest's autouse isolation does per test: no MLOPS_* settings
    and, given ``root``, that folder as the working folder."""
    with pytest.MonkeyPatch.context() as mp:
        if root is not None:
            mp.chdir(root)
        forget_mlops_env(mp)
        yield mp


def ok(result: Any) -> str:
    """The stdout of a CliRunner result that must have succeeded."""
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result.stdout


def ok_json(result: Any) -> Any:
    import json

    return json.loads(ok(result))


def cli_ok(*args: Any) -> Any:
    """Run ``mlopsctl ARGS`` in-process; it must succeed."""
    from mlopsctl.cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (args, result.stdout, result.stderr, result.exception)
    return result


def make_served_project(root: Path, example: str, model: str, params: str, runs: int = 1) -> Path:
    """`init --example` with small ``params``, `train` ``runs`` times, register every run as MODEL/1..runs,
    promote MODEL/1 to @production."""
    project = root / example
    cli_ok("init", project, "--example", example)
    cfg = project / ".mlops.toml"
    text, n = re.subn(r"(?m)^params = .*$", f"params = {params}", cfg.read_text())
    assert n == 1
    cfg.write_text(text)
    for run in range(1, runs + 1):
        cli_ok("-C", project, "train")
        cli_ok("-C", project, "register", run, "--name", model)
    cli_ok("-C", project, "promote", model, 1)
    return project


def private_copy(template: Path, tmp_path: Path, monkeypatch: Any) -> Path:
    """A test's own copy of a template project; the working folder is inside it."""
    p = tmp_path / "p"
    shutil.copytree(template, p)
    monkeypatch.chdir(p)
    return p


def training_records(project: Path, target: str, n: int, *, start: int = 0, complete: bool = False) -> list[dict[str, Any]]:
    """``n`` rows of the project's training CSV as JSON records, from row ``start``: numbers as numbers, ''
    as null, True/False as booleans, the target left out; ``complete`` skips rows with a missing value."""
    out: list[dict[str, Any]] = []
    with open(project / "data" / "train.csv", newline="") as fh:
        for i, raw in enumerate(csv.DictReader(fh)):
            if len(out) == n:
                break
            if i < start or (complete and "" in raw.values()):
                continue
            raw.pop(target)
            rec: dict[str, Any] = {}
            for k, v in raw.items():
                if v == "":
                    rec[k] = None
                elif v in ("True", "False"):
                    rec[k] = v == "True"
                else:
                    try:
                        rec[k] = float(v)
                    except ValueError:
                        rec[k] = v
            out.append(rec)
    return out
