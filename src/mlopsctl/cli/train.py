"""``mlopsctl train``."""

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mlopsctl.cli._console import JsonFlag, cli_path, console, err_console, fmt, print_json, settings_from, table
from mlopsctl.cli._errors import reports_errors
from mlopsctl.common import parse_value
from mlopsctl.errors import InvalidInputError

STAGE_TEXT = {
    "load": "Reading data", "prepare": "Splitting and profiling", "fit": "Fitting", "evaluate": "Evaluating",
    "export": "Exporting ONNX", "parity": "Checking ONNX parity", "record": "Recording the run",
}


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["n_estimators=300", "max_depth=null"]`` -> ``{"n_estimators": 300, "max_depth": None}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInputError(f"--param {item!r} must look like key=value, e.g. --param n_estimators=300.")
        out[key] = parse_value(raw)
    return out


def with_model(ctx: typer.Context, settings: Any, model: str | None, param: list[str] | None,
               extra: dict[str, Any] | None = None) -> Any:
    """``settings`` with the estimator parameters for ``--model``: train.params belong to the configured estimator,
    so another ``--model`` starts from none; then ``extra`` and the ``--param`` values on top."""
    from mlopsctl.config import with_overrides

    params = {} if model is not None and model != settings_from(ctx).train.model else dict(settings.train.params)
    params.update(extra or {})
    params.update(parse_params(param or []))
    return with_overrides(settings, train={"params": params})


def register(app: typer.Typer) -> None:
    @app.command()
    @reports_errors
    def train(
        ctx: typer.Context,
        data: Annotated[Optional[Path], typer.Option("--data", "-d", help="CSV or Parquet file (default: data.path).")] = None,
        target: Annotated[Optional[str], typer.Option(help="Target column (default: data.target).")] = None,
        task: Annotated[Optional[str], typer.Option(help="auto, classification or regression.")] = None,
        model: Annotated[Optional[str], typer.Option("--model", "-m", help="Estimator class path.")] = None,
        param: Annotated[Optional[list[str]], typer.Option(
            "--param", "-p", help="Estimator parameter key=value (repeatable); merged over train.params.")] = None,
        experiment: Annotated[Optional[str], typer.Option("--experiment", "-x", help="Experiment name.")] = None,
        run_name: Annotated[Optional[str], typer.Option(help="Name for this run (default: run-<id>).")] = None,
        seed: Annotated[Optional[int], typer.Option(help="Seed for the split and the estimator.")] = None,
        test_size: Annotated[Optional[float], typer.Option(help="Held-out fraction.")] = None,
        exclude: Annotated[Optional[list[str]], typer.Option(
            "--exclude", "-X", help="A column that is not a feature, e.g. an id (repeatable; replaces data.exclude).")] = None,
        json_: JsonFlag = False,
    ) -> None:
        """Train a model on the project's data, evaluate it, export it to ONNX and record the run.

        Examples:

          mlopsctl train

          mlopsctl train --model sklearn.ensemble.GradientBoostingClassifier -p n_estimators=300

          mlopsctl train --data data/new.csv --target churned --run-name baseline --json

          mlopsctl train --exclude customer_id --exclude notes
        """
        from mlopsctl.services import runs

        settings = settings_from(ctx, **{
            "data.target": target, "data.task": task, "train.model": model, "train.experiment": experiment,
            "train.seed": seed, "train.test_size": test_size, "data.exclude": exclude or None,
        })
        settings = with_model(ctx, settings, model, param)
        data = cli_path(data)
        if json_:
            result = runs.train_and_track(settings, data_path=data, run_name=run_name, notify=_note)
            print_json(result)
            return
        result = _train_with_progress(settings, data, run_name)
        _summary(result)


def _train_with_progress(settings, data, run_name):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from mlopsctl.services import runs

    console = err_console()
    if not console.is_terminal:  # no spinner (and no stray newline) when stderr is a file or a pipe
        return runs.train_and_track(settings, data_path=data, run_name=run_name, notify=_note)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task_id = progress.add_task("Starting", total=None)

        def on_stage(stage: str) -> None:
            progress.update(task_id, description=STAGE_TEXT.get(stage, stage))

        return runs.train_and_track(settings, data_path=data, run_name=run_name, progress=on_stage,
                                    notify=lambda line: progress.console.print(f"Note: {line}", markup=False,
                                                                               highlight=False))


def _note(line: str) -> None:
    """What training noticed about the data (a column left out, an id-like column): one line on stderr."""
    import sys

    print(f"Note: {line}", file=sys.stderr)


def _summary(run: dict[str, Any]) -> None:
    c = console()
    parity = run.get("parity") or {}
    c.print(f"[green]Run {run['id']} ({run['name']}) FINISHED[/] in {fmt(run['duration_s'])} s "
            f"- {run['model']} on {run['dataset']['name']}:{run['dataset']['version']}")
    rows = [(k, v) for k, v in run["metrics"].items()]
    rows.append(("onnx parity", "passed" if parity.get("passed") else "FAILED"))
    if parity.get("label_agreement") is not None:
        rows.append(("label agreement", parity["label_agreement"]))
    rows.append(("max abs diff", parity.get("max_abs_diff")))
    c.print(table("Held-out metrics", ["metric", "value"], rows))
