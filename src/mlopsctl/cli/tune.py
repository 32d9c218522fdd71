"""``mlopsctl tune [...]``, ``tune list | show | export-katib | trial``."""

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mlopsctl.cli._console import JsonFlag, cli_path, console, err_console, fmt, print_json, settings_from, table
from mlopsctl.cli._errors import reports_errors

app = typer.Typer(help="Hyperparameter search: every trial a tracked run, parallel, pruned, resumable, Katib-compatible.",
                  invoke_without_command=True, no_args_is_help=False)

ParamOpt = Annotated[Optional[list[str]], typer.Option(
    "--param", "-p", help="A fixed estimator parameter key=value (repeatable); merged over train.params.")]


@app.callback()
@reports_errors
def tune(
    ctx: typer.Context,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="CSV or Parquet file (default: data.path).")] = None,
    target: Annotated[Optional[str], typer.Option(help="Target column (default: data.target).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Estimator class path (default: train.model).")] = None,
    param: ParamOpt = None,
    space: Annotated[Optional[list[str]], typer.Option(
        "--space", "-s", help="NAME=SPEC to search, e.g. n_estimators=int:50..500, learning_rate=float:0.01..0.3:log, "
                              "criterion=choice:gini,entropy (repeatable; default: tune.space or the model's default space).")] = None,
    trials: Annotated[Optional[int], typer.Option("--trials", "-n", help="Finished trials to reach (default: tune.trials).")] = None,
    timeout: Annotated[Optional[str], typer.Option(help="Stop starting trials after this long, e.g. 30m.")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Worker processes (default: tune.jobs).")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="tpe, random, grid or cmaes (default: tune.sampler).")] = None,
    pruner: Annotated[Optional[str], typer.Option(help="median or none (default: tune.pruner).")] = None,
    cv: Annotated[Optional[int], typer.Option(help="Cross-validation folds on the training split (default: tune.cv).")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Metric to optimise (default: train.metric: roc_auc / r2).")] = None,
    max_failed: Annotated[Optional[int], typer.Option(help="Stop after this many failed trials (default: tune.max_failed).")] = None,
    study: Annotated[Optional[str], typer.Option(help="Study name; an existing study is resumed (default: tune-<time>).")] = None,
    register: Annotated[Optional[str], typer.Option(help="Register the refitted best model under this name and promote it through the gate.")] = None,
    experiment: Annotated[Optional[str], typer.Option("--experiment", "-x", help="Experiment of the study's runs.")] = None,
    from_katib: Annotated[Optional[Path], typer.Option("--from-katib", help="Read the space, objective, algorithm and counts from a Katib Experiment YAML.")] = None,
    json_: JsonFlag = False,
) -> None:
    """Search hyperparameters by K-fold CV on the training split, then refit the best through `mlopsctl train`'s path.

    Examples:

      mlopsctl tune --trials 30

      mlopsctl tune --trials 20 --jobs 2 --cv 3 --register breast-cancer

      mlopsctl tune -m sklearn.ensemble.HistGradientBoostingClassifier -s max_iter=int:50..400 -s learning_rate=float:0.01..0.3:log

      mlopsctl tune --study nightly          (resume a killed or timed-out study)

      mlopsctl tune --from-katib experiment.yaml
    """
    if ctx.invoked_subcommand is not None:
        return
    from mlopsctl.cli.train import with_model
    from mlopsctl.config import with_overrides
    from mlopsctl.services import tune as tuning
    from mlopsctl.tuning.space import parse_assignments

    flags: dict[str, Any] = {"data.target": target, "train.model": model, "tune.trials": trials, "tune.timeout": timeout,
                             "tune.jobs": jobs, "tune.sampler": sampler, "tune.pruner": pruner, "tune.cv": cv,
                             "train.metric": metric, "tune.max_failed": max_failed, "train.experiment": experiment}
    extra: dict[str, Any] = {}
    if from_katib is not None:  # its settings stand where no flag was given
        study, extra = _from_katib(tuning.read_katib(cli_path(from_katib)), flags, study)
    settings = settings_from(ctx, **flags)
    given = frozenset(k for k, v in flags.items() if v is not None) | frozenset({"data.path"} if data else ())
    settings = with_model(ctx, settings, model or flags["train.model"], param, extra.get("params"))
    chosen = parse_assignments(space) if space else extra.get("space")
    if chosen:
        settings = with_overrides(settings, tune={"space": chosen})
        given |= {"tune.space"}
    out = tuning.tune(settings, study=study, data_path=cli_path(data), given=given, register=register,
                      experiment=experiment, progress=_Progress(err_console()), notify=_note)
    _show(out, json_)


def _show(out: dict[str, Any], json_: bool) -> None:
    """The study's outcome; exit 4 when the gate rejected the registered refit."""
    if json_:
        print_json(out)
    else:
        _summary(out)
    reg = out.get("registered")
    if reg and reg["decision"] == "rejected":
        print(f"Error: the gate rejected {reg['ref']}: {reg['reason']}", file=sys.stderr)
        raise typer.Exit(4)


def _from_katib(katib: dict[str, Any], flags: dict[str, Any], study: str | None) -> tuple[str | None, dict[str, Any]]:
    """A Katib Experiment's study name, counts, model and objective as flags not given on the command line."""
    for key, ours in (("model", "train.model"), ("trials", "tune.trials"), ("jobs", "tune.jobs"), ("cv", "tune.cv"),
                      ("sampler", "tune.sampler"), ("pruner", "tune.pruner"), ("max_failed", "tune.max_failed"),
                      ("metric", "train.metric")):
        if key in katib and flags.get(ours) is None:
            flags[ours] = katib[key]
    return study or katib.get("study"), {"space": katib["space"], "params": katib.get("params", {})}


class _Progress:
    """A rich progress bar on a terminal; otherwise one plain line per finished trial (both on stderr)."""

    def __init__(self, con: Any):
        self.con, self.seen, self.bar, self.task = con, set(), None, None

    def __call__(self, snap: Any, elapsed: float) -> None:
        if self.con.is_terminal:
            self._bar(snap, elapsed)
            return
        for t in snap.finished:
            if t["number"] in self.seen:
                continue
            self.seen.add(t["number"])
            value = "" if t["value"] is None else f" {t['value']:.4f}"
            best = "" if snap.best_value is None else f" (best {snap.best_value:.4f}, trial {snap.best_number})"
            why = f": {t['reason']}" if t["state"] == "FAILED" and t["reason"] else ""
            print(f"trial {t['number']} {t['state']}{value}{best} [{snap.done}/{snap.target}]{why}", file=sys.stderr,
                  flush=True)

    def _bar(self, snap: Any, elapsed: float) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        if self.bar is None:
            self.bar = Progress(TextColumn("tuning"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=self.con, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=snap.target)
        best = "-" if snap.best_value is None else f"{snap.best_value:.4f} (trial {snap.best_number})"
        self.bar.update(self.task, completed=snap.done, total=snap.target,
                        description=f"pruned {snap.pruned} failed {snap.failed} best {best}")
        if snap.done >= snap.target and snap.running == 0:
            self.bar.stop()

    def __del__(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _note(line: str) -> None:
    print(f"Note: {line}", file=sys.stderr)


def _summary(out: dict[str, Any]) -> None:
    c = console()
    best = out["best"]
    c.print(f"[green]Study {out['study']}[/] (run {out['run_id']}): {out['complete']} complete, {out['pruned']} pruned, "
            f"{out['failed']} failed of {out['target']} in {fmt(out.get('elapsed_s'))} s")
    rows = [(f"best {out['metric']}", best["value"]), ("best trial", best["trial"])]
    rows += [(f"  {k}", v) for k, v in best["params"].items()]
    refit = out["refit"]
    rows.append(("refit run", f"{refit['id']} ({refit['name']})"))
    rows += [(f"  held-out {k}", v) for k, v in refit["metrics"].items()]
    rows.append(("  onnx parity", "passed" if refit["parity"]["passed"] else "FAILED"))
    reg = out.get("registered")
    if reg:
        rows.append(("registered", f"{reg['ref']}: {reg['decision']}" + (f" @{reg['alias']}" if reg["decision"] == "promoted" else "")))
    c.print(table(None, ["", "value"], rows))


@app.command("list")
@reports_errors
def list_(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """Studies in this project's store."""
    from mlopsctl.services import tune as tuning

    rows = tuning.list_studies(settings_from(ctx))
    if json_:
        print_json(rows)
        return
    console().print(table("Studies", ["study", "run", "status", "model", "metric", "best", "complete", "pruned", "failed", "of"],
                          [(r["study"], r["run_id"], r["status"], r["model"].rsplit(".", 1)[-1], r["metric"], r["best_value"],
                            r["complete"], r["pruned"], r["failed"], r["trials"]) for r in rows]))


@app.command("show")
@reports_errors
def show(ctx: typer.Context, study: Annotated[str, typer.Argument(help="Study name.")], json_: JsonFlag = False) -> None:
    """A study: its trials, the best value over time and each parameter's importance (fANOVA)."""
    from mlopsctl.services import tune as tuning

    out = tuning.show_study(settings_from(ctx), study)
    if json_:
        print_json(out)
        return
    c = console()
    counts = out["counts"]
    c.print(f"Study {out['study']} (run {out['run_id']}, {out['status']}): {out['model']}, {out['metric']} "
            f"({out['direction']}), {out['cv']}-fold CV, {out['sampler']} sampler, {out['pruner']} pruner; "
            f"{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAILED']} failed of {out['target']}")
    c.print(table("Search space", ["parameter", "spec"], out["space"].items()))
    names = list(out["space"])
    c.print(table("Trials", ["trial", "state", out["metric"], *names, "folds", "s", "run"],
                  [(t["trial"], t["state"], t["value"], *(t["params"].get(n) for n in names), t["folds"],
                    t["duration_s"], t["run_id"]) for t in out["trials"]]))
    improvements = [p for i, p in enumerate(out["best_over_time"]) if p["best"] is not None and
                    (i == 0 or p["best"] != out["best_over_time"][i - 1]["best"])]
    c.print(table("Best so far (when it improved)", ["after trial", "best"], [(p["trial"], p["best"]) for p in improvements]))
    if out["importance"]:
        c.print(table("Parameter importance (fANOVA)", ["parameter", "importance"], out["importance"].items()))
    if out["refit"]:
        c.print(f"refit run {out['refit']['run_id']} (trial {out['refit']['trial']}): " + ", ".join(
            f"{k}={fmt(v)}" for k, v in out["refit"]["metrics"].items()))


@app.command("export-katib")
@reports_errors
def export_katib(
    ctx: typer.Context,
    study: Annotated[str, typer.Argument(help="Study name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Experiment YAML to write.")],
    image: Annotated[str, typer.Option(help="Container image holding mlopsctl and this project.")] = "mlopsctl-project:latest",
    namespace: Annotated[Optional[str], typer.Option(help="metadata.namespace of the Experiment.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT.")] = False,
) -> None:
    """Write a study as a Katib v1beta1 Experiment whose trials run `mlopsctl tune trial` in IMAGE.

    Example: mlopsctl tune export-katib nightly -o experiment.yaml --image registry.local/churn:1
    """
    from mlopsctl.services import tune as tuning

    out = tuning.export_katib(settings_from(ctx), study, cli_path(output), image=image, namespace=namespace, force=force)
    print(f"wrote {out['output']} (Experiment {out['experiment']['metadata']['name']})")


@app.command("trial")
@reports_errors
def trial(
    ctx: typer.Context,
    param: ParamOpt = None,
    study: Annotated[Optional[str], typer.Option(help="Study this trial belongs to (tagged on its run).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Trial name (Katib's ${trialSpec.Name}).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="CSV or Parquet file (default: data.path).")] = None,
    target: Annotated[Optional[str], typer.Option(help="Target column (default: data.target).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Estimator class path (default: train.model).")] = None,
    cv: Annotated[Optional[int], typer.Option(help="Cross-validation folds (default: tune.cv).")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Metric (default: train.metric).")] = None,
) -> None:
    """Score one parameter set by CV on the training split and print `cv_<metric>=<value>` after each fold (the
    running mean; the last line is the trial's value), as Katib's StdOut metrics collector reads it."""
    from mlopsctl.cli.train import parse_params, with_model
    from mlopsctl.services import tune as tuning

    settings = settings_from(ctx, **{"data.target": target, "train.model": model, "tune.cv": cv, "train.metric": metric})
    settings = with_model(ctx, settings, model, None)
    tuning.katib_trial(settings, parse_params(param or []), data_path=cli_path(data), study=study, trial_name=name,
                       on_fold=lambda metric, i, score, mean: print(f"{metric}={mean!r}", flush=True))


@app.command("worker", hidden=True)
@reports_errors
def worker(
    ctx: typer.Context,
    study: Annotated[str, typer.Argument()],
    index: Annotated[int, typer.Option(min=1)] = 1,
    timeout: Annotated[Optional[str], typer.Option()] = None,
) -> None:
    """One more worker process on a study (started by `mlopsctl tune --jobs N`)."""
    from mlopsctl.config_checks import parse_duration
    from mlopsctl.services import tune as tuning

    tuning.work(settings_from(ctx), study, index=index, timeout=parse_duration(timeout) if timeout else None)
