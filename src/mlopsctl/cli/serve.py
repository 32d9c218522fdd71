"""``mlopsctl serve``."""

import sys
from typing import Annotated, Optional

import typer

from mlopsctl.cli._console import settings_from
from mlopsctl.cli._errors import reports_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @reports_errors
    def serve(
        ctx: typer.Context,
        model: Annotated[Optional[str], typer.Argument(
            help="MODEL@ALIAS (followed: hot reload), MODEL/VERSION or MODEL (default: registry.model_name@registry.alias).")] = None,
        host: Annotated[Optional[str], typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
        port: Annotated[Optional[int], typer.Option(help="Port (default 8080).")] = None,
        workers: Annotated[Optional[int], typer.Option(help="Worker processes (default 2).")] = None,
        server_: Annotated[Optional[str], typer.Option("--server", help=(
            "HTTP front: granian (default: a Rust server, keep-alive, the fastest here) or gunicorn."))] = None,
        threads: Annotated[Optional[int], typer.Option(
            help="Python threads per worker running the app (default 1). On gunicorn 1 means sync workers, the "
                 "lowest p99, and N > 1 gthread workers with keep-alive; granian keeps connections alive either way.")] = None,
        device: Annotated[Optional[str], typer.Option(
            help="cpu, cuda or auto (CUDA when present and it runs some of the model's arithmetic); the log and "
                 "/v2 metadata say where each node runs.")] = None,
        dev: Annotated[bool, typer.Option("--dev", help="Flask's development server instead of --server.")] = False,
        allow_unauthenticated: Annotated[bool, typer.Option(
            "--allow-unauthenticated",
            help="Listen on a non-loopback --host without serve.token (refused otherwise).")] = False,
    ) -> None:
        """Serve a model over HTTP: Open Inference Protocol V2, MLflow's /invocations, /predict, /metrics.

        The bearer token comes from serve.token or MLOPS_SERVE_TOKEN (never the command line). Off the
        loopback (any --host but 127.x, ::1 or localhost) serve refuses to start without one (exit 5) unless
        --allow-unauthenticated is given.

        Examples:

          mlopsctl serve churn@production

          mlopsctl serve churn/3 --port 9000 --workers 4 --threads 4

          MLOPS_SERVE_TOKEN=$(openssl rand -hex 32) mlopsctl serve churn@production --host 0.0.0.0

          curl -s localhost:8080/predict -d '{"records": [{"tenure_months": 3, "plan": "basic"}]}'
        """
        from mlopsctl.config_checks import check_exposure
        from mlopsctl.serving import server

        settings = settings_from(ctx, **{"serve.host": host, "serve.port": port, "serve.workers": workers,
                                         "serve.server": server_, "serve.threads": threads, "serve.device": device, "serve.dev": dev or None})
        s = settings.serve
        warning = check_exposure(s.host, s.token, allow_unauthenticated)
        if warning:
            print(warning, file=sys.stderr)

        def ready(url: str) -> None:
            # a plain line, not rich's console: importing rich took ~0.1 s in the server's parent before the
            # workers were started (the front calls this first)
            print(f"Serving {model or settings.registry.model_name} on {url}; Ctrl-C to stop.", file=sys.stderr, flush=True)

        server.run(settings, model, host=s.host, port=s.port, workers=s.workers, threads=s.threads, device=s.device,
                   dev=s.dev, on_ready=ready, front=s.server)
