"""`mlopsctl --help` must stay instant: the CLI's import path loads none of the heavy libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("sklearn", "onnxruntime", "flask", "sqlalchemy", "pandas", "watchdog", "skl2onnx", "onnx", "joblib",
         "scipy", "alembic", "pyarrow")

PROBE = """
import json, sys
argv = json.loads(sys.argv[1])
heavy = json.loads(sys.argv[2])
code = None
if argv is None:
    import mlopsctl.cli.main  # noqa: F401
else:
    sys.argv = ["mlopsctl", *argv]
    from mlopsctl.cli.main import main
    try:
        main()
    except SystemExit as e:
        code = e.code
loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
print("@@" + json.dumps({"code": code, "loaded": loaded}))
"""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}


def probe(argv: list[str] | None, cwd) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)], cwd=cwd,
                          env=clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("@@"))
    return json.loads(line[2:])


@pytest.mark.parametrize("argv", [
    None,  # import mlopsctl.cli.main
    ["--help"],
    ["--version"],
    [],  # no arguments: the help text
    ["train", "--help"],
    ["runs", "list", "--help"],
    ["runs", "--help"],
    ["data", "add", "--help"],
    ["init", "--help"],
    ["db", "--help"],
    ["db", "upgrade", "--help"],
    ["pipeline", "run", "--help"],
    ["report", "--help"],
    ["ui", "--help"],
])
def test_cli_import_and_help_load_no_heavy_library(tmp_path, argv):
    out = probe(argv, tmp_path)
    assert out["loaded"] == []
    if argv is not None and argv != []:
        assert out["code"] in (0, None)


def test_import_mlopsctl_is_light(tmp_path):
    code = ("import json, sys, mlopsctl; print(json.dumps(sorted(m for m in sys.modules "
            f"if m.split('.')[0] in {list(HEAVY)!r})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_python_dash_m_mlopsctl_help(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mlopsctl", "--help"], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: ")
    for command in ("init", "train", "data", "runs"):
        assert f"  {command}" in proc.stdout
    assert proc.stderr == ""


def test_python_dash_m_mlopsctl_version(tmp_path):
    import mlopsctl

    proc = subprocess.run([sys.executable, "-m", "mlopsctl", "--version"], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, f"mlopsctl {mlopsctl.__version__}\n")


def _callbacks(app):
    if app.registered_callback is not None:
        yield app.registered_callback.callback
    for command in app.registered_commands:
        yield command.callback
    for group in app.registered_groups:
        yield from _callbacks(group.typer_instance)


def test_commands_give_typer_evaluated_annotations():
    """Typer reads every command's annotations at each start; a string annotation (``from __future__ import
    annotations`` in a command module) costs it an eval, each start, for every command."""
    from mlopsctl.cli.main import app

    callbacks = list(_callbacks(app))
    assert len(callbacks) > 30
    assert sorted(f"{cb.__module__}.{cb.__qualname__}" for cb in callbacks
                  if any(isinstance(a, str) for a in cb.__annotations__.values())) == []
