"""``mlopsctl``: the root Typer app. Keep imports light: ``mlopsctl --help`` must stay instant.

The command modules do not use ``from __future__ import annotations``: Typer reads every command's annotations
each time the CLI starts, and string annotations cost it an ``eval`` apiece (three quarters of building the
command tree; a tenth of a fully cached ``mlopsctl pipeline run``). tests/test_startup_guard.py checks it.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

from mlopsctl._version import __version__
from mlopsctl.cli import data, db, export, monitor, pipeline, predict, project, registry, runs, serve, train, tune, ui, watch

app = typer.Typer(
    name="mlopsctl",
    help=(
        "Single-node MLOps: train from a CSV file, track experiments, export ONNX, and record everything "
        "in a local SQLite store.\n\n"
        "Quick start:  mlopsctl init demo --example breast-cancer && cd demo && mlopsctl train"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # cli._errors prints unexpected errors in one line (--traceback: all of it)
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # plain Click help: rendering it with rich costs ~70 ms per --help
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"mlopsctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    project: Annotated[Optional[Path], typer.Option(
        "--project", "-C", help="Project folder (default: the nearest folder with .mlops.toml).",
        file_okay=False)] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
    traceback: Annotated[bool, typer.Option("--traceback", help="Show the full trace of an unexpected error.")] = False,
) -> None:
    from mlopsctl.cli import _errors

    _errors.show_traceback = traceback
    ctx.obj = {"project": project}


project.register(app)
train.register(app)
app.add_typer(data.app, name="data")
registry.register_commands(app)
predict.register(app)
serve.register(app)
export.register(app)
watch.register(app)
ui.register(app)
app.add_typer(runs.app, name="runs")
app.add_typer(registry.models_app, name="models")
app.add_typer(monitor.app, name="monitor")
app.add_typer(db.app, name="db")
app.add_typer(pipeline.app, name="pipeline")
pipeline.register(app)
app.add_typer(tune.app, name="tune")


def main() -> None:
    import gc

    try:
        app()
    finally:
        # At exit the interpreter would garbage-collect every scikit-learn/SciPy/SQLAlchemy object
        # (~0.5 s after `mlopsctl train`); the process is ending, so exempt them. atexit handlers still run.
        gc.freeze()
