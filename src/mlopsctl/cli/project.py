"""``mlopsctl init``."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from mlopsctl.cli._console import JsonFlag, console, print_json
from mlopsctl.cli._errors import reports_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @reports_errors
    def init(
        directory: Annotated[Path, typer.Argument(help="Folder for the project (created if missing).")] = Path("."),
        example: Annotated[Optional[str], typer.Option(
            "--example", "-e", help="Copy a runnable example: breast-cancer, diabetes, churn or subscriptions (a pipeline).")] = None,
        json_: JsonFlag = False,
    ) -> None:
        """Create a project: .mlops.toml, the .mlops/ store folder and data/incoming.

        Examples:

          mlopsctl init demo --example breast-cancer

          mlopsctl init .
        """
        from mlopsctl.services import project

        out = project.init_project(directory, example)
        if json_:
            print_json(out)
            return
        c = console()
        c.print(f"[green]Created project[/] {out['project']}" + (f" from example [bold]{example}[/]" if example else ""))
        c.print(f"Next: cd {directory} && {out['next']}")
