"""Shared fixtures: every test runs in its own tmp folder, with no MLOPS_* variables and a fresh store cache.

Nothing of mlopsctl's own is mocked: stores are real SQLite files under ``tmp_path``, artifacts are real
files, models are real scikit-learn pipelines scored by real ONNX Runtime sessions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest
from served_projects import forget_mlops_env
from typer.testing import CliRunner


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A private working folder, no MLOPS_* settings leaking in, and no store cached across tests."""
    monkeypatch.chdir(tmp_path)
    forget_mlops_env(monkeypatch)
    # `git rev-parse` must not find a repository above tmp_path (tests that want one create it).
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    yield
    from mlopsctl.store import db

    db.close_all()


@pytest.fixture
def runner() -> CliRunner:
    """Typer 0.29's CliRunner always captures stdout and stderr separately (result.stdout / result.stderr)."""
    return CliRunner()


@pytest.fixture
def cli(runner: CliRunner):
    """``cli("runs", "list", "--json")`` -> the CliRunner Result of the real root app."""
    from mlopsctl.cli.main import app

    def invoke(*args: str, env: dict[str, str] | None = None):
        return runner.invoke(app, [str(a) for a in args], env=env)

    return invoke


def _assert_error(result, exit_code: int, message: str) -> None:
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert result.stderr == f"Error: {message}\n"
    assert result.stdout == ""


@pytest.fixture
def assert_error():
    """``assert_error(result, 3, "run '9' does not exist; ...")``: the command exited with that code and
    printed exactly one line, ``Error: <message>``, on stderr (and nothing on stdout)."""
    return _assert_error


def set_train(project: Path, params: str | None = None, model: str | None = None) -> None:
    """Rewrite the ``[train]`` params and/or model lines of a project's .mlops.toml."""
    cfg = project / ".mlops.toml"
    text = cfg.read_text()
    if params is not None:
        text, n = re.subn(r"(?m)^params = .*$", f"params = {params}", text)
        assert n == 1
    if model is not None:
        text, n = re.subn(r'(?m)^model = ".*"$', f'model = "{model}"', text)
        assert n == 1
    cfg.write_text(text)


@pytest.fixture
def make_project(tmp_path: Path, runner: CliRunner) -> Callable[..., Path]:
    """``make_project("churn", name="p", params="{ max_iter = 20 }")``: `mlopsctl init NAME --example E`
    through the CLI, then optionally rewrite the estimator params/model. Returns the folder (no chdir)."""
    from mlopsctl.cli.main import app

    def make(example: str = "breast-cancer", name: str = "proj", params: str | None = None,
             model: str | None = None) -> Path:
        result = runner.invoke(app, ["init", str(tmp_path / name), "--example", example])
        assert result.exit_code == 0, (result.stdout, result.stderr)
        project = tmp_path / name
        set_train(project, params, model)
        return project

    return make


@pytest.fixture
def project(make_project, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The breast-cancer example as shipped (RandomForest, 100 trees), and the working folder is inside it."""
    p = make_project("breast-cancer")
    monkeypatch.chdir(p)
    return p


@pytest.fixture
def fast_project(make_project, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The breast-cancer example with a 10-tree forest (keeps the suite fast); the working folder is inside it."""
    p = make_project("breast-cancer", params="{ n_estimators = 10 }")
    monkeypatch.chdir(p)
    return p


@pytest.fixture
def settings_of():
    """``settings_of(project)``: the project's Settings, read with an empty environment."""
    from mlopsctl.config import load_settings

    def load(project: Path):
        return load_settings({}, {}, project)

    return load

