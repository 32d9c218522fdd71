"""``mlopsctl register | promote | rollback | events`` and ``models list | show``."""

from typing import Annotated, Any, Optional

import typer

from mlopsctl.cli._console import JsonFlag, console, fmt, print_json, settings_from, table
from mlopsctl.cli._errors import reports_errors

models_app = typer.Typer(help="List and inspect registered models, versions and aliases.", no_args_is_help=True)

AliasOpt = Annotated[Optional[str], typer.Option("--alias", "-a", help="Alias to move (default: registry.alias).")]
ReasonOpt = Annotated[Optional[str], typer.Option("--reason", "-r", help="Why; stored in the alias history.")]



@reports_errors
def register(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="Run id or name (a FINISHED run whose ONNX parity passed).")],
    name: Annotated[Optional[str], typer.Option("--name", "-n", help="Model name (default: registry.model_name).")] = None,
    json_: JsonFlag = False,
) -> None:
    """Register a finished run as a new immutable version of a model.

    Example: mlopsctl register 3 --name churn
    """
    from mlopsctl.services import models

    out = models.register(settings_from(ctx), run, name)
    if json_:
        print_json(out)
        return
    print(f"registered {out['ref']}")


@reports_errors
def promote(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(min=1, help="Version to promote.")],
    alias: AliasOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Promote even if the gate rejects (recorded as forced).")] = False,
    reason: ReasonOpt = None,
    min_delta: Annotated[Optional[float], typer.Option(help="Allowed drop of the primary metric (default: registry.min_delta).")] = None,
    json_: JsonFlag = False,
) -> None:
    """Move an alias to a version after the quality gate.

    The candidate and the alias's current holder are scored through ONNX Runtime on the candidate's
    held-out rows; the candidate passes if its primary metric is not worse by more than min_delta and
    its contract is compatible. A rejection exits 4 and changes nothing.

    Examples:

      mlopsctl promote churn 3

      mlopsctl promote churn 3 --alias staging --force --reason "hotfix"
    """
    from mlopsctl.services import models

    out = models.promote(settings_from(ctx), model, version, alias=alias, force=force, reason=reason,
                           min_delta=min_delta)
    if json_:
        print_json(out)
        return
    if not out["changed"]:
        print(out["message"])
        return
    print(f"promoted {model}/{version} to @{out['alias']}" + (" (FORCED past the gate)" if out["decision"] == "forced" else ""))
    console().print(_gate_table(out["gate"]))


@reports_errors
def rollback(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    alias: AliasOpt = None,
    reason: ReasonOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Move an alias back to its previous holder (recorded in the history).

    Example: mlopsctl rollback churn --alias production
    """
    from mlopsctl.services import models

    out = models.rollback(settings_from(ctx), model, alias=alias, reason=reason)
    if json_:
        print_json(out)
        return
    print(f"rolled back {model}@{out['alias']}: version {out['from_version']} -> {out['to_version']}")


@reports_errors
def events(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Only this model's events.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, oldest first.")] = 200,
    json_: JsonFlag = False,
) -> None:
    """The audit trail: trainings, registrations, promotions, rejections and rollbacks, in order.

    Example: mlopsctl events --model churn --json
    """
    from mlopsctl.services import models

    rows = models.list_events(settings_from(ctx), model, limit)
    if json_:
        print_json(rows)
        return
    console().print(table("Events", ["id", "at", "kind", "model", "version", "run", "message"], [
        (e["id"], e["at"], e["kind"], e["model"], e["version"], e["run_id"], e["message"]) for e in rows]))


def register_commands(app: typer.Typer) -> None:
    app.command("register")(register)
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("events")(events)


def _gate_table(gate: dict[str, Any]):
    rows = [("metric", gate["metric"]), ("candidate", f"v{gate['candidate']['version']}: {fmt(gate['candidate'].get('score'))}")]
    if gate.get("holder"):
        rows.append(("holder", f"v{gate['holder']['version']}: {fmt(gate['holder'].get('score'))}"))
        rows.append(("delta", fmt(gate.get("delta"))))
    rows += [("min_delta", gate["min_delta"]), ("decision", gate.get("decision")),
             ("data", f"{gate['data']['source']} ({gate['data']['rows']} rows)")]
    rows += [("reason", r) for r in gate["reasons"]]
    return table("Gate report", ["", ""], rows)


@models_app.command("list")
@reports_errors
def list_(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """List registered models with their latest version and aliases."""
    from mlopsctl.services import models

    rows = models.list_models(settings_from(ctx))
    if json_:
        print_json(rows)
        return
    console().print(table("Models", ["name", "versions", "latest", "aliases"], [
        (r["name"], r["versions"], r["latest"], ", ".join(f"@{a}=v{v}" for a, v in r["aliases"].items())) for r in rows]))


@models_app.command("show")
@reports_errors
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="MODEL, MODEL/VERSION or MODEL@ALIAS.")],
    json_: JsonFlag = False,
) -> None:
    """Show a model (versions, aliases, history) or one version with its lineage and gate report.

    Examples:

      mlopsctl models show churn

      mlopsctl models show churn@production --json
    """
    from mlopsctl.services import models

    out = models.show_model(settings_from(ctx), ref)
    if json_:
        print_json(out)
        return
    c = console()
    if "versions" in out:
        c.print(f"[bold]{out['name']}[/] aliases: " + (", ".join(f"@{a}=v{v}" for a, v in out["aliases"].items()) or "none"))
        c.print(table("Versions", ["version", "run", "metrics", "created"], [
            (v["version"], v["run_id"], ", ".join(f"{k}={fmt(x)}" for k, x in sorted(v["metrics"].items())), v["created_at"])
            for v in out["versions"]]))
    else:
        c.print(f"[bold]{out['ref']}[/] from run {out['run_id']} ({out['task']}); aliases: "
                + (", ".join("@" + a for a in out["aliases"]) or "none"))
        c.print(f"onnx sha256 {out['onnx_sha256']}\ndata fingerprint {out['dataset_fingerprint'] or '-'}, "
                f"git {out['git_commit'] or '-'}, registered by {out['created_by']} at {out['created_at']}")
        c.print(table("Metrics", ["metric", "value"], sorted(out["metrics"].items())))
        if out["gate"]:
            c.print(_gate_table(out["gate"]))
    if out["history"]:
        c.print(table("Alias history", ["at", "alias", "from", "to", "action", "forced", "actor", "reason"], [
            (h["at"], h["alias"], h["from_version"], h["to_version"], h["action"], h["forced"], h["actor"], h["reason"])
            for h in out["history"]]))
