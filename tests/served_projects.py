"""Shared set-up for the serving tests: small example projects trained, registered and promoted via the CLI."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from typer.testing import CliRunner


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
