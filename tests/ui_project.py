"""A project with something on every dashboard page, built through the real CLI, the Python API, the real
prediction server and the real watcher (shared by the dashboard's API tests and browser tests).

``build_ui_project(root)`` makes ``root/bc`` from the breast-cancer example (10-tree forests):

- runs 1 and 2 trained by ``mlopsctl train`` (run 2: ``--run-name shallow -p max_depth=3``), registered as
  breast-cancer/1 and /2; /1 promoted to @production, /2 to @staging, /2 forced to @production past a gate
  it cannot pass (``--min-delta -1``), then @production rolled back to /1: four alias moves;
- runs 3..10 logged with the Python API in experiment ``sweep``: params ``lr`` (numbers), ``depth``,
  ``odd key.with dots``, tag ``owner``, a ``loss`` series of 6 steps and ``auc``; run 11 FAILED;
- 150 rows served by the real app (``/predict``, request ids ``req-0`` ..), labels for them joined with
  ``mlopsctl monitor feedback``, and one drift check (``mlopsctl monitor drift --last 150``);
- a junk file and a good file dropped into ``data/incoming`` and ``mlopsctl watch --once`` (auto-promote off):
  one quarantined file with its reason, one job that trained run 12 and registered breast-cancer/3.

``registry.min_delta = 1.0``: every gate still runs (scores both versions), and passes, so a promotion in a
test moves the alias deterministically.
"""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from served_projects import cli_ok, training_records

MODEL = "breast-cancer"
TARGET = "diagnosis"
TOKEN = "s3cret-token-for-tests"
SWEEP_RUNS = range(3, 11)  # run ids logged through the Python API
FAILED_RUN = 11


def _configure(project: Path) -> None:
    cfg = project / ".mlops.toml"
    text, n = re.subn(r"(?m)^params = .*$", "params = { n_estimators = 10 }", cfg.read_text())
    text, m = re.subn(r'(?m)^model_name = "breast-cancer"$', 'model_name = "breast-cancer"\nmin_delta = 1.0', text)
    assert n == m == 1
    cfg.write_text(text)


def _sweep(project: Path) -> None:
    import mlopsctl

    for i, run_id in enumerate(SWEEP_RUNS):
        with mlopsctl.start_run(experiment="sweep", run_name=f"sweep-{i}", project_dir=project) as run:
            assert run.id == run_id
            lr, depth = [0.3, 0.1, 0.03, 0.01][i % 4], 2 + i % 3
            run.log_params({"lr": lr, "depth": depth, "odd key.with dots": f"v{i % 2}"})
            run.set_tag("owner", ["ann", "bob"][i % 2])
            for step in range(6):
                run.log_metric("loss", round(1.0 / (1 + step * lr * 10) + i * 0.01, 6), step=step)
            run.log_metric("auc", round(0.80 + 0.02 * i, 4))
    try:
        with mlopsctl.start_run(experiment="sweep", run_name="broken", project_dir=project) as run:
            assert run.id == FAILED_RUN
            run.log_param("lr", 9.9)
            raise RuntimeError("diverged at step 3")
    except RuntimeError:
        pass


def _traffic(project: Path, n: int = 150) -> None:
    from mlopsctl.config import load_settings
    from mlopsctl.serving.app import create_app

    app = create_app(load_settings({}, {}, project), f"{MODEL}@production", watch=False)
    client, state = app.test_client(), app.extensions["mlopsctl"]
    records = training_records(project, TARGET, n)
    for k in range(0, n, 10):
        resp = client.post("/predict", json={"records": records[k:k + 10]}, headers={"X-Request-ID": f"req-{k // 10}"})
        assert resp.status_code == 200, resp.get_json()
    state.predlog.close()
    with open(project / "data" / "train.csv", newline="") as fh:
        truth = [row[TARGET] for _, row in zip(range(n), csv.DictReader(fh))]
    labels = project / "labels.csv"
    labels.write_text("request_id,row,label\n" + "".join(f"req-{i // 10},{i % 10},{t}\n" for i, t in enumerate(truth)))
    cli_ok("-C", project, "monitor", "feedback", labels)
    cli_ok("-C", project, "monitor", "drift", f"{MODEL}@production", "--last", n)


def _watch(project: Path) -> None:
    incoming = project / "data" / "incoming"
    (incoming / "junk.csv").write_text("this is not,a training file\n1,2\n")
    with open(project / "data" / "train.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    with open(incoming / "batch-1.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([rows[0], *rows[1:41]])
    from typer.testing import CliRunner

    from mlopsctl.cli.main import app

    env = {"MLOPS_WATCH_DEBOUNCE_SECONDS": "0", "MLOPS_WATCH_AUTO_PROMOTE": "false"}
    result = CliRunner().invoke(app, ["-C", str(project), "watch", "--once"], env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr)


def build_ui_project(root: Path) -> Path:
    project = root / "bc"
    cli_ok("init", project, "--example", MODEL)
    _configure(project)
    cli_ok("-C", project, "train")
    cli_ok("-C", project, "train", "--run-name", "shallow", "-p", "max_depth=3")
    _sweep(project)
    for run in (1, 2):
        cli_ok("-C", project, "register", run)
    cli_ok("-C", project, "promote", MODEL, 1)
    cli_ok("-C", project, "promote", MODEL, 2, "--alias", "staging")
    cli_ok("-C", project, "promote", MODEL, 2, "--force", "--min-delta", "-1", "--reason", "try the shallow forest")
    cli_ok("-C", project, "rollback", MODEL, "--reason", "shallow forest misses cases")
    _traffic(project)
    _watch(project)
    return project


def copy_project(template: Path, dest: Path) -> Path:
    """A private copy (its own SQLite file and artifacts) of a built project."""
    shutil.copytree(template, dest)
    return dest


def settings_for(project: Path, **flags: Any):
    from mlopsctl.config import load_settings

    return load_settings(flags, {}, project)


@pytest.fixture(scope="session")
def ui_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project above, built once per test session (read-only tests use it as is; tests that write use
    :func:`copy_project`)."""
    return build_once(tmp_path_factory, "ui", build_ui_project)


def build_once(tmp_path_factory: pytest.TempPathFactory, folder: str, build: Callable[[Path], Path]) -> Path:
    """``build(root)`` in a new folder, with no MLOPS_* settings and outside any git repository; the store's
    connections are closed afterwards (for the session fixtures of built projects)."""
    from served_projects import module_isolation

    from mlopsctl.store import db

    root = tmp_path_factory.mktemp(folder)
    with module_isolation(root) as mp:
        mp.setenv("GIT_CEILING_DIRECTORIES", str(root.parent))
        project = build(root)
    db.close_all()
    return project


@pytest.fixture
def ui_copy(ui_template: Path, tmp_path: Path) -> Path:
    """A private copy of the built project, for a test that writes."""
    return copy_project(ui_template, tmp_path / "bc")


def client_for(project: Path, *, token: str = "", host: str = "127.0.0.1"):
    """The dashboard's Flask test client on ``project`` (``token``: ui.token)."""
    from mlopsctl.ui.app import create_app

    return create_app(settings_for(project, **{"ui.token": token}), host=host).test_client()
