"""``mlopsctl pipeline run | status | show | step | compile | lineage`` and ``mlopsctl report``."""

import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mlopsctl.cli._console import JsonFlag, cli_path, console, fmt, print_json, settings_from, table
from mlopsctl.cli._errors import reports_errors

app = typer.Typer(help="Steps with content-keyed caching and lineage ([pipeline.steps.NAME] in .mlops.toml).",
                  no_args_is_help=True)

MARK = {"running": "...", "ran": "ran", "cached": "cached", "failed": "FAILED", "skipped": "skipped"}


def _progress(quiet: bool = False):
    """One plain line on stderr per step event (steps report from worker threads). Printed without rich: its
    import is a tenth of a cached run's start-up, and the lines have no markup."""
    lock = threading.Lock()

    def on(event: dict[str, Any]) -> None:
        if quiet:
            return
        o = event.get("outcome") or {}
        kind = event["event"]
        if kind == "note":
            text = f"{event['step']}: {event['text']}"
        elif kind == "running":
            text = f"{event['step']}: running ({'; '.join(event['reasons'])})"
        elif kind == "failed":
            text = f"{event['step']}: FAILED after {o['duration_s']:.1f} s: {o['message']}"
        elif kind == "skipped":
            text = f"{event['step']}: skipped ({'; '.join(o['reasons'])})"
        else:
            text = f"{event['step']}: {MARK[kind]} in {o['duration_s']:.2f} s ({'; '.join(o['reasons'])})"
        with lock:
            print(text, file=sys.stderr, flush=True)

    return on


@app.command("run")
@reports_errors
def run(
    ctx: typer.Context,
    steps: Annotated[Optional[list[str]], typer.Argument(help="Steps to bring up to date, with what they depend on (default: all).")] = None,
    force: Annotated[Optional[list[str]], typer.Option("--force", "-f", help="Run this step even if it is cached (repeatable).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Run every selected step; nothing comes from the cache.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Say what would run and why; run nothing.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Independent steps run in parallel, this many at once.")] = 1,
    json_: JsonFlag = False,
) -> None:
    """Run the stale steps of the pipeline; the others come from the cache.

    Examples:

      mlopsctl pipeline run

      mlopsctl pipeline run train --force prepare -j 4

      mlopsctl pipeline run --dry-run
    """
    from mlopsctl.errors import PipelineStepError
    from mlopsctl.services import pipeline

    try:
        out = pipeline.run_pipeline(settings_from(ctx), steps or [], force=force or [], no_cache=no_cache,
                                    dry_run=dry_run, jobs=jobs, progress=_progress(quiet=json_ or dry_run))
    except PipelineStepError as e:
        if json_:
            print_json(getattr(e, "summary", {}))
        raise
    if json_:
        print_json(out)
    elif dry_run:
        console().print(table("Dry run", ["step", "would", "why"], [
            (s["step"], "run" if s["status"] == "stale" else "be cached", "; ".join(s["reasons"])) for s in out["steps"]]))
    else:
        print(f"pipeline run {out['pipeline_run']}: {len(out['ran'])} ran, {len(out['cached'])} cached "
              f"in {out['duration_s']:.2f} s")


@app.command("status")
@reports_errors
def status(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """Each step fresh or stale, and why (which dep, param or setting changed).

    Example: mlopsctl pipeline status --json
    """
    from mlopsctl.services import pipeline

    out = pipeline.status(settings_from(ctx))
    if json_:
        print_json(out)
        return
    console().print(table("Pipeline status", ["step", "kind", "state", "why"], [
        (s["step"], s["kind"], s["status"], "; ".join(s["reasons"])) for s in out["steps"]]))


@app.command("show")
@reports_errors
def show(
    ctx: typer.Context,
    dot: Annotated[bool, typer.Option("--dot", help="Print the DAG in Graphviz's dot language.")] = False,
    json_: JsonFlag = False,
) -> None:
    """The pipeline's steps and what each depends on.

    Example: mlopsctl pipeline show --dot | dot -Tsvg > pipeline.svg
    """
    from mlopsctl.services import pipeline

    settings = settings_from(ctx)
    if dot:
        print(pipeline.dot(settings), end="")
        return
    out = pipeline.show(settings)
    if json_:
        print_json(out)
        return
    console().print(table("Pipeline", ["step", "kind", "runs", "deps", "outs", "after"], [
        (s["name"], s["kind"], s["cmd"] or ", ".join(f"{k}={v}" for k, v in s["settings"].items()) or "-",
         ", ".join(s["deps"]) or "-", ", ".join(s["outs"]) or "-", ", ".join(s["upstream"]) or "-")
        for s in out["steps"]]))


@app.command("step")
@reports_errors
def step(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The step.")],
    fingerprint: Annotated[Optional[str], typer.Option(help="Refuse to run unless the step's inputs have this fingerprint (set by `pipeline compile`).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Run it even if it is cached.")] = False,
    json_: JsonFlag = False,
) -> None:
    """Run one step (what a compiled Kubeflow pipeline's container runs); the steps before it must have run.

    Example: mlopsctl pipeline step train
    """
    from mlopsctl.services import pipeline

    out = pipeline.run_step(settings_from(ctx), name, fingerprint=fingerprint, force=force,
                            progress=_progress(quiet=json_))
    if json_:
        print_json(out)


@app.command("compile")
@reports_errors
def compile_(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("--output", "-o", help="The pipeline file to write (IR YAML).")],
    target: Annotated[str, typer.Option("--target", "-t", help="Only kfp: Kubeflow Pipelines v2.")] = "kfp",
    image: Annotated[str, typer.Option(help="The container image holding mlopsctl and this project.")] = "${IMAGE}",
    workdir: Annotated[str, typer.Option(help="Where the project lies inside the image.")] = "/srv/mlops",
    json_: JsonFlag = False,
) -> None:
    """Compile the pipeline for Kubeflow Pipelines: one container component per step.

    Example: mlopsctl pipeline compile --target kfp -o pipeline.yaml --image registry.example/churn:1
    """
    from mlopsctl.errors import InvalidInputError
    from mlopsctl.services import pipeline

    if target != "kfp":
        raise InvalidInputError(f"--target {target!r} is not supported; use --target kfp.")
    out = pipeline.compile_kfp(settings_from(ctx), cli_path(output), image=image, workdir=workdir)
    if json_:
        print_json(out)
        return
    print(f"wrote {out['output']}: Kubeflow pipeline {out['name']!r} with {len(out['steps'])} steps")


@app.command("lineage")
@reports_errors
def lineage(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="MODEL/VERSION or MODEL@ALIAS.")],
    json_: JsonFlag = False,
) -> None:
    """From a model version back to the raw files and scripts that made it.

    Example: mlopsctl pipeline lineage churn@production
    """
    from mlopsctl.services import pipeline

    out = pipeline.lineage(settings_from(ctx), ref)
    if json_:
        print_json(out)
        return
    console().print(table(f"{out['model']}/{out['version']} (run {out['run_id']})", ["step", "execution", "status", "deps", "outputs"], [
        (e["step"], e["id"], e["status"], "\n".join(f"{p} {s[:12]}" for p, s in e["deps"].items()) or "-",
         "\n".join(f"{p} {s[:12]}" for p, s in e["outputs"].items()) or fmt(e["result"].get("run_id")))
        for e in out["executions"]]))


def register(root: typer.Typer) -> None:
    @root.command("report")
    @reports_errors
    def report(
        ctx: typer.Context,
        run: Annotated[str, typer.Argument(metavar="RUN", help="The candidate run (id or name).")],
        against: Annotated[str, typer.Option("--against", "-a", help="MODEL@ALIAS (or MODEL/VERSION) to compare with.")],
        format_: Annotated[str, typer.Option("--format", help="markdown or json.")] = "markdown",
        output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the report to this file.")] = None,
    ) -> None:
        """Compare a run with the model an alias points at, for CI: metrics with deltas, the gate's verdict on
        the same held-out rows, parity, data and parameter changes. Exits 4 when the gate would reject.

        Example: mlopsctl report 12 --against churn@production --format markdown -o report.md
        """
        import json
        import sys

        from mlopsctl.common import atomic_write
        from mlopsctl.errors import ConflictError, InvalidInputError
        from mlopsctl.services import report as reports

        if format_ not in ("markdown", "json"):
            raise InvalidInputError(f"--format {format_!r} is not supported; use markdown or json.")
        out = reports.model_report(settings_from(ctx), run, against)
        text = reports.render_markdown(out) if format_ == "markdown" else json.dumps(out, indent=2, default=str) + "\n"
        if output is not None:
            with atomic_write(cli_path(output), "w") as fh:
                fh.write(text)
        sys.stdout.write(text)
        if not out["would_pass"]:
            raise ConflictError(f"the gate would reject run {out['run']['id']} against {out['against']}: "
                                f"{'; '.join(out['gate']['reasons'])}.")
