"""``mlopsctl watch``."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from mlopsctl.cli._console import JsonFlag, cli_path, err_console, print_json, settings_from
from mlopsctl.cli._errors import reports_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @reports_errors
    def watch(
        ctx: typer.Context,
        path: Annotated[Optional[Path], typer.Argument(help="Folder to watch (default: watch.path, data/incoming).")] = None,
        once: Annotated[bool, typer.Option("--once", help="Process what is pending, then exit (cron, CI).")] = False,
        every: Annotated[Optional[str], typer.Option(help="Also retrain on a schedule: 30m, 6h, 1d.")] = None,
        mode: Annotated[Optional[str], typer.Option(help="append or replace the training data.")] = None,
        on_drift: Annotated[bool, typer.Option("--on-drift", help="Also retrain when the served model's inputs drift (checked every monitor.check_every).")] = False,
        json_: JsonFlag = False,
    ) -> None:
        """Continuous training: validate new CSV/Parquet files, retrain, gate and promote.

        A file is taken once its size and mtime are stable for watch.debounce_seconds; each file's sha256 is
        recorded so nothing is processed twice; rejected files go to data/quarantine/ with a reason.
        A running `mlopsctl serve MODEL@alias` picks up each promotion by itself.

        Examples:

          mlopsctl watch

          mlopsctl watch --once --json

          mlopsctl watch data/incoming --every 6h
        """
        from mlopsctl.watch import DriftTrigger, Watcher, install_signal_handlers

        settings = settings_from(ctx, **{"watch.path": str(cli_path(path)) if path else None, "watch.every": every,
                                         "watch.mode": mode})
        console = err_console()

        def say(line: str) -> None:
            console.print(f"[dim]{_now()}[/] {_styled(line)}", highlight=False)

        triggers = []
        if on_drift:
            from mlopsctl.config_checks import parse_duration

            ref = f"{settings.registry.model_name}@{settings.registry.alias}"
            triggers.append(DriftTrigger(settings, ref, parse_duration(settings.monitor.check_every, "monitor.check_every")))
        watcher = Watcher(settings, say=say, triggers=triggers)
        install_signal_handlers(watcher)
        if once:
            outcomes = watcher.run_once()
            if json_:
                print_json([o.__dict__ for o in outcomes])
            else:
                say(f"done: {len(outcomes)} job(s)" + "".join(
                    f"; job {o.job_id} {o.decision}" + (f" v{o.version}" if o.version else "") for o in outcomes))
            return
        watcher.run_forever()
        say("stopped")


def _now() -> str:
    import time

    return time.strftime("%H:%M:%S")


# How the watcher's plain text lines are shown: the verdict at the start of a line in colour, skips dimmed.
_TONES = (("validated ", "green"), ("promoted ", "green"), ("rejected ", "red"), ("gate rejected ", "yellow"))


def _styled(line: str) -> str:
    import re

    from rich.markup import escape

    for start, colour in _TONES:
        if line.startswith(start):
            return f"[{colour}]{start.strip()}[/] {escape(line[len(start):])}"
    failed = re.match(r"job \d+ failed", line)
    if failed:
        return f"[red]{failed.group()}[/]{escape(line[failed.end():])}"
    return f"[dim]{escape(line)}[/]" if line.endswith("; skipped") else escape(line)
