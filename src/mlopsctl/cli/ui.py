"""``mlopsctl ui``: the dashboard."""

import sys
from typing import Annotated, Optional

import typer

from mlopsctl.cli._console import err_console, settings_from
from mlopsctl.cli._errors import reports_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @reports_errors
    def ui(
        ctx: typer.Context,
        host: Annotated[Optional[str], typer.Option(help="Address to bind (default ui.host, 127.0.0.1).")] = None,
        port: Annotated[Optional[int], typer.Option(help="Port (default ui.port, 5000).")] = None,
        workers: Annotated[int, typer.Option(help="gunicorn worker processes.")] = 2,
        dev: Annotated[bool, typer.Option("--dev", help="Flask's development server instead of gunicorn.")] = False,
        allow_unauthenticated: Annotated[bool, typer.Option(
            "--allow-unauthenticated",
            help="Listen on a non-loopback --host without ui.token (refused otherwise; the dashboard is then "
                 "read-only and readable by anyone who reaches it).")] = False,
    ) -> None:
        """The dashboard: runs, comparisons, models and their alias history, monitoring, events, the watcher.

        Read-only unless a token is set (ui.token or MLOPS_UI_TOKEN, never the command line): with one,
        signed-in users (and scripts sending Authorization: Bearer <token>) can promote and roll back, through
        the same gate as the CLI. Off the loopback the token is required (exit 5) unless
        --allow-unauthenticated, and reading needs it too. Every page's data is JSON under /api.

        Examples:

          mlopsctl ui

          MLOPS_UI_TOKEN=$(openssl rand -hex 32) mlopsctl ui --port 8501

          curl -s 'localhost:5000/api/runs?sort=metrics.roc_auc&per_page=5'
        """
        from mlopsctl.config_checks import check_exposure
        from mlopsctl.ui import server

        settings = settings_from(ctx, **{"ui.host": host, "ui.port": port})
        u = settings.ui
        warning = check_exposure(u.host, u.token, allow_unauthenticated, token_key="ui.token")
        if warning:
            print(warning, file=sys.stderr)

        def ready(url: str) -> None:
            mode = "promote and rollback need the token" if u.token else "read-only (no ui.token)"
            err_console().print(f"[green]Dashboard[/] on {url}; {mode}; Ctrl-C to stop.")

        server.run(settings, host=u.host, port=u.port, workers=workers, dev=dev, on_ready=ready)
