"""``mlopsctl runs list | show | compare``."""

from typing import Annotated, Optional

import typer

from mlopsctl.cli._console import JsonFlag, console, fmt, print_json, settings_from, table
from mlopsctl.cli._errors import reports_errors

app = typer.Typer(help="Inspect and compare training runs.", no_args_is_help=True)

SHOWN_METRICS = ("roc_auc", "accuracy", "f1_macro", "log_loss", "r2", "rmse", "mae")
SHOWN_IMPORTANCE = 15  # columns in `runs show`'s importance table (--json has them all)


@app.command("list")
@reports_errors
def list_(
    ctx: typer.Context,
    experiment: Annotated[Optional[str], typer.Option("--experiment", "-x", help="Only this experiment.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many runs, newest first.")] = 100,
    json_: JsonFlag = False,
) -> None:
    """List runs, newest first.

    Example: mlopsctl runs list --experiment default --json
    """
    from mlopsctl.services import runs

    runs = runs.list_runs(settings_from(ctx), experiment, limit)
    if json_:
        print_json(runs)
        return
    keys = [k for k in SHOWN_METRICS if any(k in r["metrics"] for r in runs)]
    console().print(table("Runs", ["id", "name", "experiment", "status", "model", *keys, "duration s"], [
        (r["id"], r["name"], r["experiment"], r["status"], (r["model"] or "").rsplit(".", 1)[-1],
         *(r["metrics"].get(k) for k in keys), r["duration_s"]) for r in runs]))


@app.command("show")
@reports_errors
def show(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="Run id or name.")],
    json_: JsonFlag = False,
) -> None:
    """Show one run: params, metrics, dataset, parity, feature importance (LightGBM, XGBoost) and artifacts.

    Example: mlopsctl runs show 3
    """
    from mlopsctl.services import runs

    r = runs.show_run(settings_from(ctx), run)
    if json_:
        print_json(r)
        return
    c = console()
    ds = r["dataset"]
    c.print(f"[bold]Run {r['id']}[/] {r['name']} ({r['experiment']}) - {r['status']}"
            + (f": {r['failure_reason']}" if r["failure_reason"] else ""))
    c.print(f"model {r['model']}, task {r['task']}, seed {r['seed']}, duration {fmt(r['duration_s'])} s, "
            f"git {r['git_commit'] or '-'}" + (f", data {ds['name']}:{ds['version']} ({ds['rows']} rows)" if ds else ""))
    c.print(table("Metrics", ["metric", "value"], r["metrics"].items()))
    c.print(table("Params", ["param", "value"], r["params"].items()))
    if r["parity"]:
        training = r["parity"].get("training") or {}
        c.print(table("ONNX parity", ["check", "held-out rows", "training rows"],
                      [(k, v, training.get(k, "")) for k, v in r["parity"].items() if k not in ("bounds", "training")]))
    importance = (r.get("feature_importance") or {}).get("columns")
    if importance:
        shown = importance[:SHOWN_IMPORTANCE]
        title = "Feature importance (total gain)" + (
            f", top {len(shown)} of {len(importance)} columns" if len(importance) > len(shown) else "")
        c.print(table(title, ["column", "gain", "share"],
                      [(i["column"], i["gain"], f"{100 * i['share']:.1f} %") for i in shown]))
    c.print(table("Artifacts", ["name", "size", "sha256"], [(a["name"], a["size"], a["sha256"][:16]) for a in r["artifacts"]]))


@app.command("compare")
@reports_errors
def compare(
    ctx: typer.Context,
    runs: Annotated[list[str], typer.Argument(help="Two or more run ids or names.")],
    json_: JsonFlag = False,
) -> None:
    """Compare runs side by side (differing params are marked with *).

    Example: mlopsctl runs compare 3 4
    """
    from mlopsctl.services import runs as run_service

    out = run_service.compare_runs(settings_from(ctx), runs)
    if json_:
        print_json(out)
        return
    heads = [f"{r['id']} {r['name']}" for r in out["runs"]]
    c = console()
    c.print(table("Metrics", ["metric", *heads], [(k, *v) for k, v in out["metrics"].items()]))
    c.print(table("Params", ["param", *heads], [
        (("* " if k in out["differing_params"] else "") + k, *v) for k, v in out["params"].items()]))
