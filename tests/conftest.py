"""Shared fixtures: every test runs in its own tmp folder, with no MLOPS_* variables and a fresh store cache.

Nothing of mlopsctl's own is mocked: stores are real SQLite files under ``tmp_path`` or databases of a
real PostgreSQL server (``MLOPSCTL_TEST_POSTGRES``, see :func:`pg_server`), artifacts are real files,
models are real scikit-learn pipelines scored by real ONNX Runtime sessions.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from monitoring_helpers import BC, CH, Server
from monitoring_helpers import _cli_ok as monitor_cli_ok
from served_projects import forget_mlops_env, make_served_project, module_isolation, private_copy
from typer.testing import CliRunner

PG_ENV = "MLOPSCTL_TEST_POSTGRES"  # not MLOPS_*: _isolated clears those


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



# ---- PostgreSQL ---------------------------------------------------------------------------------------

class PgServer:
    """A real PostgreSQL server reached through an admin URL; each test gets databases of its own."""

    def __init__(self, admin_url: str):
        from sqlalchemy.engine import make_url

        self.admin_url = admin_url
        self._libpq = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._template: str | None = None

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self._libpq, autocommit=True) as conn:
            conn.execute(sql)

    def url(self, database: str) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.admin_url).set(database=database).render_as_string(hide_password=False)

    def create(self, migrated: bool = True) -> str:
        """A new database (its URL): blank, or migrated to head (a copy of a template migrated once)."""
        name = f"mlt_{uuid.uuid4().hex[:16]}"
        if migrated and self._template is None:
            from mlopsctl.store import db

            template = f"mlt_template_{uuid.uuid4().hex[:12]}"
            self._admin(f'CREATE DATABASE "{template}"')
            db.upgrade_store(self.url(template))  # disposes its engine: a template must have no sessions
            self._template = template
        self._admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{self._template}"' if migrated else ""))
        return self.url(name)

    def drop(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        from mlopsctl.store import db

        db.close_all()  # this process's pooled connections first
        self._admin(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')

    def close(self) -> None:
        if self._template is not None:
            self._admin(f'DROP DATABASE IF EXISTS "{self._template}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The server named by ``MLOPSCTL_TEST_POSTGRES`` (a SQLAlchemy URL of a database whose user may create
    databases, e.g. postgresql+psycopg://postgres@127.0.0.1:55432/postgres; `.ci/run` starts one). Without
    it the PostgreSQL tests are skipped, except under CI (CI=true), where that is a failure."""
    url = os.environ.get(PG_ENV)
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {PG_ENV} is not set: CI must run the PostgreSQL tests (.ci/run starts the server).")
        pytest.skip(f"no PostgreSQL server: set {PG_ENV}=postgresql+psycopg://USER@HOST:PORT/DB (.ci/run starts one)")
    server = PgServer(url)
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh PostgreSQL database migrated to head, dropped after the test."""
    url = pg_server.create(migrated=True)
    yield url
    pg_server.drop(url)


@pytest.fixture
def pg_blank_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped after the test."""
    url = pg_server.create(migrated=False)
    yield url
    pg_server.drop(url)


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh store at head, once for each backend: a SQLite file in ``tmp_path``, a
    PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="session")
def bc_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The breast-cancer example with a 10-tree forest, run 1 registered as breast-cancer/1 and promoted to
    @production. Built once per test session; tests use a private copy (``bc_project``)."""
    from mlopsctl.store import db

    root = tmp_path_factory.mktemp("bc-template")
    with module_isolation(root):
        project = make_served_project(root, "breast-cancer", "breast-cancer", "{ n_estimators = 10 }")
    db.close_all()
    return project


@pytest.fixture
def bc_project(bc_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A test's own copy of ``bc_template``; the working folder is inside it."""
    return private_copy(bc_template, tmp_path, monkeypatch)


# ---- the monitoring tests' projects (tests/test_monitoring_*.py) ------------------------------------------

@pytest.fixture(scope="session")
def monitor_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from mlopsctl.store import db

    root = tmp_path_factory.mktemp("monitor-service")
    out = {}
    with module_isolation(root):
        bc = root / "bc"
        monitor_cli_ok("init", bc, "--example", BC)
        cfg = bc / ".mlops.toml"
        cfg.write_text(re.sub(r"(?m)^params = .*$", "params = { n_estimators = 10 }", cfg.read_text()))
        for run, env in ((1, None), (2, None), (3, {"MLOPS_TRAIN_REFERENCE_ROWS": "0"})):
            monitor_cli_ok("-C", bc, "train", env=env)
            monitor_cli_ok("-C", bc, "register", run)
        monitor_cli_ok("-C", bc, "promote", BC, 1)
        out["bc"] = bc
        ch = root / "ch"
        monitor_cli_ok("init", ch, "--example", CH)
        cfg = ch / ".mlops.toml"
        cfg.write_text(re.sub(r"(?m)^params = .*$", "params = { max_iter = 20 }", cfg.read_text()))
        for run, env in ((1, None), (2, {"MLOPS_TRAIN_REFERENCE_ROWS": "2000"})):
            monitor_cli_ok("-C", ch, "train", env=env)
            monitor_cli_ok("-C", ch, "register", run)
        monitor_cli_ok("-C", ch, "promote", CH, 1)
        out["ch"] = ch
    db.close_all()
    return out



@pytest.fixture
def monitor_copy(monitor_templates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``copy_of("bc")``: a private copy of a template project; the working folder is inside it."""

    def make(name: str) -> Path:
        p = tmp_path / name
        shutil.copytree(monitor_templates[name], p)
        monkeypatch.chdir(p)
        return p

    return make



@pytest.fixture
def monitor_server():
    servers: list[Server] = []

    def make(project: Path, ref: str, **kw: Any) -> Server:
        servers.append(Server(project, ref, **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()

