"""Output helpers: rich tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Iterable

import typer

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def console():
    from rich.console import Console

    return Console()


def err_console():
    from rich.console import Console

    return Console(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]]):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*(fmt(v) for v in r))
    return t


def cli_path(path: Any) -> Any:
    """A path typed on the command line is relative to the current folder, not the project's."""
    from pathlib import Path

    return None if path is None else Path(path).expanduser().resolve()


def settings_from(ctx: typer.Context, **flags: Any):
    """Settings for this command: flags (``{"train.seed": 7}``, None = not given) over env, file, defaults."""
    from mlopsctl.config import load_settings

    project = (ctx.obj or {}).get("project")
    return load_settings(flags, project_dir=project)
