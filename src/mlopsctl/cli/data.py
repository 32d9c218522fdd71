"""``mlopsctl data add | list | show``."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from mlopsctl.cli._console import JsonFlag, cli_path, console, print_json, settings_from, table
from mlopsctl.cli._errors import reports_errors

app = typer.Typer(help="Register and inspect dataset versions.", no_args_is_help=True)


@app.command("add")
@reports_errors
def add(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="CSV or Parquet file.")],
    name: Annotated[Optional[str], typer.Option("--name", "-n", help="Dataset name (default: file name).")] = None,
    json_: JsonFlag = False,
) -> None:
    """Record a dataset version: schema, row count and content fingerprint.

    Adding identical content again returns the existing version.

    Example: mlopsctl data add data/train.csv --name customers
    """
    from mlopsctl.services import datasets

    out = datasets.add_dataset(settings_from(ctx), cli_path(path), name)
    if json_:
        print_json(out)
        return
    verb = "Recorded" if out["created"] else "Unchanged:"
    console().print(f"{verb} dataset [bold]{out['name']}:{out['version']}[/] - {out['rows']} rows, "
                    f"{out['columns']} columns, fingerprint {out['fingerprint'][:12]}")


@app.command("list")
@reports_errors
def list_(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """List datasets with their latest version."""
    from mlopsctl.services import datasets

    rows = datasets.list_datasets(settings_from(ctx))
    if json_:
        print_json(rows)
        return
    console().print(table("Datasets", ["name", "versions", "latest", "rows", "fingerprint"],
                          [(r["name"], r["versions"], r["latest"], r["rows"], (r["fingerprint"] or "")[:12]) for r in rows]))


@app.command("show")
@reports_errors
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME (latest version) or NAME:VERSION.")],
    json_: JsonFlag = False,
) -> None:
    """Show one dataset version: schema, rows, fingerprint, and all versions.

    Example: mlopsctl data show train:2
    """
    from mlopsctl.services import datasets

    out = datasets.show_dataset(settings_from(ctx), ref)
    if json_:
        print_json(out)
        return
    c = console()
    c.print(f"[bold]{out['name']}:{out['version']}[/] - {out['rows']} rows from {out['source']}\n"
            f"fingerprint {out['fingerprint']}")
    c.print(table("Columns", ["column", "kind", "dtype", "null rate"],
                  [(col["name"], col["kind"], col["dtype"], col["null_rate"]) for col in out["schema"]["columns"]]))
    c.print(table("Versions", ["version", "rows", "fingerprint", "created"],
                  [(v["version"], v["rows"], v["fingerprint"][:12], v["created_at"]) for v in out["versions"]]))
