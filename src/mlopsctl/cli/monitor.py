"""``mlopsctl monitor drift | feedback | report``."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from mlopsctl.cli._console import JsonFlag, cli_path, console, fmt, print_json, settings_from, table
from mlopsctl.cli._errors import reports_errors

app = typer.Typer(help="Data drift, live quality from late labels, and HTML reports.", no_args_is_help=True)

SinceOpt = Annotated[Optional[str], typer.Option(help="Window: logged predictions of the last 24h, 7d, 30m ... (default: monitor.window).")]
LastOpt = Annotated[Optional[int], typer.Option(help="Window: the last N logged rows instead of a time span.")]


@app.command("drift")
@reports_errors
def drift(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="MODEL@ALIAS or MODEL/VERSION.")],
    since: SinceOpt = None,
    last: LastOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Compare logged inputs (and predictions) with the version's training reference sample.

    Evidently-compatible tests per column (KS / chi-square / Z-test for a reference of <= 1000 rows,
    normed Wasserstein / Jensen-Shannon above); the data set drifts when monitor.drift_share of columns drift.

    Examples:

      mlopsctl monitor drift churn@production --since 24h

      mlopsctl monitor drift churn/3 --last 5000 --json
    """
    from mlopsctl.monitoring import checks

    out = checks.drift(settings_from(ctx), model, since=since, last=last)
    if json_:
        print_json(out)
        return
    c = console()
    verdict = "[red]DRIFT[/]" if out["drifted"] else "[green]no drift[/]"
    c.print(f"{out['model']}/{out['version']}: {verdict} - {len(out['drifted_columns'])} of {len(out['columns'])} "
            f"columns ({out['drift_share']:.0%}, threshold {out['threshold_share']:.0%}) over {out['window']['rows']} rows")
    rows = [(x["column"], x["method"], x["statistic"], x["threshold"], "DRIFT" if x["drifted"] else "", x["effect_size"],
             x["psi"], f"{x['missing_share']:.1%}", f"{x['out_of_contract_share']:.1%}")
            for x in sorted(out["columns"], key=lambda x: (not x["drifted"], x["column"]))]
    if out.get("prediction"):
        p = out["prediction"]
        rows.insert(0, ("(prediction)", p["method"], p["statistic"], p["threshold"], "DRIFT" if p["drifted"] else "",
                        p["effect_size"], p["psi"], "", ""))
    c.print(table("Drift by column", ["column", "method", "statistic", "threshold", "drift", "effect", "PSI",
                                      "missing", "out of contract"], rows))


@app.command("feedback")
@reports_errors
def feedback(
    ctx: typer.Context,
    labels: Annotated[Path, typer.Argument(help="CSV/Parquet with request_id,label (and optionally row).")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Also show live metrics of this MODEL@ALIAS.")] = None,
    json_: JsonFlag = False,
) -> None:
    """Record ground-truth labels that arrived later and join them to logged predictions.

    Example: mlopsctl monitor feedback labels.csv --model churn@production
    """
    from mlopsctl.monitoring import feedback as fb

    settings = settings_from(ctx)
    out = fb.add_feedback(settings, cli_path(labels))
    target = model or f"{settings.registry.model_name}@{settings.registry.alias}"
    try:
        out["live"] = fb.live_metrics(settings, target)
    except Exception as e:  # no such model yet: the labels are still recorded
        if model:
            raise
        out["live"] = None
        del e
    if json_:
        print_json(out)
        return
    c = console()
    c.print(f"{out['matched']} of {out['labels']} label(s) joined to predictions; {out['unknown']} unknown request id(s)"
            + (f" (e.g. {', '.join(out['unknown_ids'][:3])})" if out["unknown"] else "")
            + f"; {out['invalid_rows']} label(s) for a row the request does not have"
            + f"; {out['duplicates_in_file']} duplicate(s) in the file (last kept); {out['replaced']} label(s) replaced")
    live = out["live"]
    if live:
        c.print(table(f"Live quality of {live['model']} ({live['labelled_rows']} labelled rows)",
                      ["version", "rows", *[k for k in next(iter(live["per_version"].values()), {}) if k != "rows"]],
                      [(v, m["rows"], *[fmt(x) for k, x in m.items() if k != "rows"]) for v, m in live["per_version"].items()]))


@app.command("report")
@reports_errors
def report(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="MODEL@ALIAS or MODEL/VERSION.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")] = Path("report.html"),
    since: SinceOpt = None,
    last: LastOpt = None,
    bucket: Annotated[str, typer.Option(help="Time bucket of the live-metric chart: 1h, 1d ...")] = "1d",
    json_: JsonFlag = False,
) -> None:
    """Write a self-contained HTML report: distributions, drift statistics, live metric per version, history.

    Example: mlopsctl monitor report churn@production --output report.html
    """
    from mlopsctl.monitoring.report import write_report

    out = write_report(settings_from(ctx), model, cli_path(output), since=since, last=last, bucket=bucket)
    if json_:
        print_json(out)
        return
    print(f"wrote {out['output']} ({out['bytes']} bytes) for {out['model']}/{out['version']}: "
          f"{'DRIFT' if out['drifted'] else 'no drift'} ({out['drift_share']:.0%} of columns) over {out['rows']} rows")
