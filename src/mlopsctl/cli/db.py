"""``mlopsctl db current | upgrade``: the store's schema, migrated on request (a shared store never is
implicitly; a SQLite store also migrates itself when it is opened)."""

import typer

from mlopsctl.cli._console import JsonFlag, console, print_json, settings_from
from mlopsctl.cli._errors import reports_errors

app = typer.Typer(help="The store's schema: show its revision, migrate it.", no_args_is_help=True)


@app.command("current")
@reports_errors
def current(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """Show the store's schema revision and whether it is behind this mlopsctl (nothing is changed).

    Example: MLOPS_STORE_URL=postgresql+psycopg://mlops@db.internal/mlops mlopsctl db current
    """
    from mlopsctl.store.db import store_status

    out = store_status(settings_from(ctx).store_url)
    if json_:
        print_json(out)
        return
    fix = " (run `mlopsctl db upgrade`)" if out["status"] != "up to date" else ""
    console().print(f"{out['store']}: {out['current'] or 'blank (no mlopsctl tables)'}, head {out['head']}: "
                    f"{out['status']}{fix}", highlight=False, soft_wrap=True)


@app.command("upgrade")
@reports_errors
def upgrade(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """Migrate the store to this mlopsctl's schema (one process at a time; a no-op at head).

    A SQLite file is copied next to itself first; back up a server database (pg_dump) yourself.

    Example: MLOPS_STORE_URL=postgresql+psycopg://mlops@db.internal/mlops mlopsctl db upgrade
    """
    from mlopsctl.store.db import upgrade_store

    settings = settings_from(ctx)
    out = upgrade_store(settings.store_url, settings.store.busy_timeout_ms)
    if json_:
        print_json(out)
        return
    c = console()
    if not out["upgraded"]:
        c.print(f"the store at {out['store']} is already at {out['to']}", highlight=False, soft_wrap=True)
        return
    c.print(f"upgraded the store at {out['store']} from {out['from'] or 'a blank database'} to {out['to']}",
            highlight=False, soft_wrap=True)
    if out["backup"]:
        c.print(f"backup of the previous file: {out['backup']}", highlight=False, soft_wrap=True)
