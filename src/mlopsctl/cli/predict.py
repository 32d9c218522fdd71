"""``mlopsctl predict``."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from mlopsctl.cli._console import JsonFlag, cli_path, err_console, print_json, settings_from
from mlopsctl.cli._errors import reports_errors
from mlopsctl.errors import InvalidInputError


def register(app: typer.Typer) -> None:
    @app.command()
    @reports_errors
    def predict(
        ctx: typer.Context,
        model: Annotated[str, typer.Argument(help="MODEL, MODEL/VERSION or MODEL@ALIAS.")],
        input: Annotated[Path, typer.Argument(help="CSV or Parquet file to score.")],
        output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output .csv or .parquet (default: INPUT.predictions.csv).")] = None,
        chunk_size: Annotated[int, typer.Option(help="Rows scored per chunk (bounds memory).")] = 65536,
        unknown_category: Annotated[str, typer.Option(help="accept (the model ignores unseen categories) or reject.")] = "accept",
        strict: Annotated[bool, typer.Option("--strict", help="Exit 2 if any row failed validation.")] = False,
        json_: JsonFlag = False,
    ) -> None:
        """Score a file through ONNX Runtime with the model's input contract enforced.

        The output holds the input columns plus prediction, proba_<class> and _error; rows that fail
        validation keep their place with the error and no prediction.

        Examples:

          mlopsctl predict churn@production data/new.csv --output scored.csv

          mlopsctl predict churn/3 data/new.parquet -o scored.parquet --unknown-category reject --json
        """
        from mlopsctl import batch

        settings = settings_from(ctx)
        input, output = cli_path(input), cli_path(output)
        if json_ or not err_console().is_terminal:
            summary = batch.predict_file(settings, model, input, output, chunk_rows=chunk_size,
                                         unknown_category=unknown_category)
        else:
            summary = _with_progress(batch, settings, model, input, output, chunk_size, unknown_category)
        out = summary.to_dict()
        if json_:
            print_json(out)
        else:
            print(f"scored {summary.scored} of {summary.rows} rows with {summary.model}/{summary.version} "
                  f"in {summary.seconds:.2f} s -> {summary.output}")
        if summary.failed:
            rows = ", ".join(str(e["row"]) for e in summary.errors[:10])
            more = " ..." if summary.failed > 10 else ""
            msg = (f"{summary.failed} row(s) failed validation (rows {rows}{more}, counted from 1 after the header; "
                   f"first: {summary.errors[0]['message']}); "
                   f"they are in {summary.output} with an _error and no prediction.")
            if strict:
                raise InvalidInputError(msg)
            err_console().print(f"[yellow]Warning:[/] {msg}", soft_wrap=True)


def _with_progress(batch, settings, model, input, output, chunk_size, unknown_category):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("Scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                  TimeElapsedColumn(), console=err_console(), transient=True) as progress:
        task = progress.add_task("score", total=None)

        def on_progress(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        return batch.predict_file(settings, model, input, output, chunk_rows=chunk_size,
                                  unknown_category=unknown_category, progress=on_progress)
