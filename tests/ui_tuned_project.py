"""A project with tuning studies and a pipeline, built through the real CLI (shared by the dashboard's
studies and pipeline tests, tests/test_ui_studies.py and tests/test_ui_browser.py).

``build_tuned_project(root)`` makes ``root/tuned`` from the breast-cancer example (10-tree forests):

- study ``dt-search``: ``mlopsctl tune`` of a decision tree's ``max_depth`` (the ``[tune]`` space), 4 trials, 2 folds, refitted and registered as
  ``bc-tuned/1`` (promoted to @production through the gate);
- study ``all-fail``: k-nearest neighbours whose every trial fails while scoring (``n_neighbors`` above the
  rows a fold has), stopped after 2 failures (``--max-failed 2``; the command exits 6);
- a pipeline: ``search`` (uses tune: a 2-trial study of ``max_depth``, the project's ``[tune]`` space, 2
  folds), ``prep`` (a command copying the training data; a param holding HTML), ``fit`` (uses train on
  prep's output), ``reg`` (uses register, as ``bc-piped``), ``stats`` (a command reading ``notes.txt``) and
  ``check`` (a command that fails with HTML on its stderr). It runs twice (the second time search, prep,
  fit, reg and stats come from the cache; check fails both times), then ``notes.txt`` changes, so at the
  end search, prep, fit and reg are fresh, stats is stale (its input changed) and check is stale (its last
  execution failed).
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
from served_projects import cli_ok
from ui_project import build_once

STUDY = "dt-search"
FAILED_STUDY = "all-fail"
TUNED_MODEL = "bc-tuned"
PIPED_MODEL = "bc-piped"
XSS = "<img src=x onerror=alert(1)>"
XSS_STDERR = "<script>alert('xss')</script> notes are not ready"
PY = shlex.quote(sys.executable)

PIPELINE = f"""

[tune]
space = {{ max_depth = "int:2..8" }}
cv = 2

[pipeline.steps.search]
uses = "tune"
trials = 2

[pipeline.steps.prep]
cmd = "{PY} -c \\"import shutil; shutil.copy('data/train.csv', 'data/prepped.csv')\\""
deps = ["data/train.csv"]
outs = ["data/prepped.csv"]
params = {{ note = "{XSS}" }}

[pipeline.steps.fit]
uses = "train"
data = "data/prepped.csv"

[pipeline.steps.reg]
uses = "register"
needs = ["fit"]
name = "{PIPED_MODEL}"

[pipeline.steps.stats]
cmd = "{PY} stats.py"
deps = ["stats.py", "notes.txt"]
outs = ["out/stats.txt"]

[pipeline.steps.check]
cmd = "{PY} check.py"
deps = ["check.py", "out/stats.txt"]
outs = ["out/check.txt"]
"""

STATS = """
import os
os.makedirs("out", exist_ok=True)
open("out/stats.txt", "w").write(str(len(open("notes.txt").read())))
"""

CHECK = f"""
import sys
sys.stderr.write({XSS_STDERR!r} + "\\n")
sys.exit(3)
"""


def _cli_code(*args: object) -> int:
    from typer.testing import CliRunner

    from mlopsctl.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args]).exit_code


def build_tuned_project(root: Path) -> Path:
    project = root / "tuned"
    cli_ok("init", project, "--example", "breast-cancer")
    cfg = project / ".mlops.toml"
    text, n = re.subn(r"(?m)^params = .*$", "params = { n_estimators = 10 }", cfg.read_text())
    assert n == 1
    cfg.write_text(text + PIPELINE)
    (project / "stats.py").write_text(STATS.lstrip())
    (project / "check.py").write_text(CHECK.lstrip())
    (project / "notes.txt").write_text("first notes\n")
    cli_ok("-C", project, "tune", "--trials", 4, "--cv", 2, "--model", "sklearn.tree.DecisionTreeClassifier",
           "--study", STUDY, "--register", TUNED_MODEL)
    assert _cli_code("-C", project, "tune", "--trials", 3, "--cv", 2, "--model", "sklearn.neighbors.KNeighborsClassifier",
                     "--space", "n_neighbors=int:500..600", "--max-failed", 2, "--study", FAILED_STUDY) == 6
    for _ in range(2):
        assert _cli_code("-C", project, "pipeline", "run") == 6  # check fails; the other steps settle
    (project / "notes.txt").write_text("second notes, longer\n")
    return project


@pytest.fixture(scope="session")
def tuned_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project above, built once per test session (read it only; copy it to write)."""
    return build_once(tmp_path_factory, "ui-tuned", build_tuned_project)
