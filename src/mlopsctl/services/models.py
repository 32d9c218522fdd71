"""Use cases of the registry: register a run as a version, promote through the gate, roll back, list and show
models, the audit trail. Each owns its transactions and returns plain dicts, never ORM objects."""

from __future__ import annotations

from typing import Any

from mlopsctl.common import iso, jsonable
from mlopsctl.config import Settings
from mlopsctl.errors import ConflictError, NotFoundError
from mlopsctl.project import open_project
from mlopsctl.registry import LoadedModel
from mlopsctl.services.gate import evaluate_gate, gate_summary


def register(settings: Settings, run_ref: int | str, name: str | None = None) -> dict[str, Any]:
    """A new immutable, consecutively numbered version of ``name`` from a finished, exported run (an id, or
    a run reference as `mlopsctl register` takes it)."""
    from mlopsctl import registry, tracking

    name = registry.validate_name(name or settings.registry.model_name)
    arts = open_project(settings).artifacts
    with open_project(settings).store.session() as s:
        run = tracking.get_run(s, run_ref)
        if run.status != tracking.FINISHED:
            why = f" ({run.failure_reason})" if run.failure_reason else ""
            raise ConflictError(f"run {run.id} is {run.status}{why}; only FINISHED runs can be registered.")
        files = {a.name: a for a in run.artifacts}
        if "model.onnx" not in files or "contract.json" not in files:
            raise ConflictError(f"run {run.id} has no ONNX export (model.onnx + contract.json); it cannot be registered.")
        if not (run.parity or {}).get("passed"):
            raise ConflictError(
                f"run {run.id} failed its ONNX parity check ({_parity_text(run.parity)}); it cannot be registered."
            )
        for f in ("model.onnx", "contract.json"):
            if not arts.path(files[f].sha256).exists():
                raise NotFoundError(f"run {run.id}'s {f} is missing from {arts.root}; retrain the run.")
        model = registry.get_or_create_model(s, name)
        dv = run.dataset_version
        mv = registry.create_version(
            s, model, run_id=run.id, onnx_sha256=files["model.onnx"].sha256,
            contract_sha256=files["contract.json"].sha256,
            heldout_sha256=files["heldout.parquet"].sha256 if "heldout.parquet" in files else None,
            task=run.task or "", dataset_version_id=dv.id if dv else None,
            dataset_fingerprint=dv.fingerprint if dv else None, git_commit=run.git_commit,
            metrics=jsonable(tracking.latest_metrics(s, run.id)), parity=run.parity or {},
        )
        registry.add_event(s, "registered", f"run {run.id} registered as {name}/{mv.version}",
                           model=name, version=mv.version, run_id=run.id)
        return _version_view(mv, name)


def _parity_text(parity: dict[str, Any] | None) -> str:
    if not parity:
        return "no parity recorded"
    parts = [f"max diff {parity.get('max_abs_diff', float('nan')):.3g}"]
    if parity.get("label_agreement") is not None:
        parts.append(f"label agreement {parity['label_agreement']:.4f}")
    return ", ".join(parts)


def _version_view(mv: Any, name: str) -> dict[str, Any]:

    return {
        "model": name, "version": mv.version, "ref": f"{name}/{mv.version}", "run_id": mv.run_id, "task": mv.task,
        "onnx_sha256": mv.onnx_sha256, "contract_sha256": mv.contract_sha256,
        "dataset_fingerprint": mv.dataset_fingerprint, "git_commit": mv.git_commit, "metrics": mv.metrics,
        "parity": mv.parity, "gate": mv.gate, "created_by": mv.created_by, "created_at": iso(mv.created_at),
    }


def _move_view(m: Any) -> dict[str, Any]:

    return {"alias": m.alias, "from_version": m.from_version, "to_version": m.to_version, "action": m.action,
            "forced": m.forced, "reason": m.reason, "actor": m.actor, "at": iso(m.created_at)}


def load_model(settings: Settings, ref: str, *, alias: str | None = None) -> LoadedModel:
    """Resolve ``name``, ``name/3`` or ``name@alias`` and read its ONNX file, verified against its sha256."""
    return open_project(settings).load_model(ref, alias)


def promote(settings: Settings, name: str, version: int, *, alias: str | None = None, force: bool = False,
            reason: str | None = None, min_delta: float | None = None, metric: str | None = None,
            heldout: Any = None, data_label: str | None = None) -> dict[str, Any]:
    """Move ``alias`` to ``name/version`` if the gate passes (or ``force``). A rejection raises ConflictError
    after recording the gate report and a ``rejected`` event; the alias does not move."""
    from mlopsctl import registry

    alias = registry.validate_name(alias or settings.registry.alias, "alias")
    min_delta = settings.registry.min_delta if min_delta is None else min_delta
    store = open_project(settings).store
    for _attempt in range(5):
        candidate = load_model(settings, f"{name}/{version}")
        with store.session() as s:
            model = registry.get_model(s, name)
            holder_mv = registry.alias_holder(s, model, alias)
            holder_version = holder_mv.version if holder_mv else None
        if holder_version == version:
            return {"model": name, "version": version, "alias": alias, "changed": False,
                    "decision": "unchanged", "message": f"{name}@{alias} already points at version {version}"}
        holder = load_model(settings, f"{name}/{holder_version}") if holder_version else None
        if force and heldout is None and not candidate.heldout_sha256:
            gate = {"alias": alias, "metric": None, "min_delta": min_delta, "candidate": {"version": version},
                    "holder": {"version": holder_version} if holder else None, "delta": None, "passed": False,
                    "data": {"source": "none (no held-out split recorded)", "rows": 0, "target": candidate.contract.target},
                    "reasons": [f"{name}/{version} has no held-out data to gate on"]}
        else:
            gate = evaluate_gate(settings, candidate, holder, alias=alias, min_delta=min_delta, metric=metric,
                                 heldout=heldout, data_label=data_label)
        decision = "promoted" if gate["passed"] else ("forced" if force else "rejected")
        gate["decision"] = decision
        gate = jsonable(gate)
        with store.session() as s:
            model = registry.get_model(s, name, lock=True)
            now_holder = registry.alias_holder(s, model, alias)
            now = now_holder.version if now_holder else None
            if now != holder_version:
                if not force or now == version:
                    continue  # the alias moved while we were scoring: gate again against the new holder
                decision = gate["decision"] = "forced"
                gate["reasons"].append(f"@{alias} moved from version {holder_version} to {now} while the gate ran")
                holder_version = now
            target = registry.get_version(s, model, version)
            target.gate = gate
            if decision == "rejected":
                registry.add_event(s, "rejected", f"{name}/{version} rejected for @{alias}: {'; '.join(gate['reasons'])}",
                                   model=name, version=version, payload=gate)
            else:
                why = reason or ("forced past the gate: " + "; ".join(gate["reasons"]) if decision == "forced"
                                 else gate_summary(gate))
                registry.move_alias(s, model, alias, target, action="promote", reason=why, forced=decision == "forced",
                                    gate=gate)
                registry.add_event(s, "promoted", f"{name}/{version} -> @{alias} ({decision}): {why}",
                                   model=name, version=version, payload=gate)
        if decision == "rejected":
            raise ConflictError(
                f"gate rejected {name}/{version} for @{alias}: {'; '.join(gate['reasons'])}; use --force to promote anyway."
            )
        return {"model": name, "version": version, "alias": alias, "changed": True, "decision": decision,
                "from_version": holder_version, "gate": gate}
    raise ConflictError(f"{name}@{alias} kept moving while the gate ran; try again.")


def rollback(settings: Settings, name: str, *, alias: str | None = None, reason: str | None = None) -> dict[str, Any]:
    from mlopsctl import registry

    alias = registry.validate_name(alias or settings.registry.alias, "alias")
    with open_project(settings).store.session() as s:
        model = registry.get_model(s, name, lock=True)
        current = registry.alias_holder(s, model, alias)
        if current is None:
            raise NotFoundError(f"{name} has no alias {alias!r}; nothing to roll back.")
        target_version = registry.rollback_target(registry.history(s, model, alias))
        if target_version is None:
            raise ConflictError(f"{name}@{alias} has no previous holder to roll back to (it points at version {current.version}).")
        target = registry.get_version(s, model, target_version)
        why = reason or f"rollback from version {current.version}"
        registry.move_alias(s, model, alias, target, action="rollback", reason=why)
        registry.add_event(s, "rolled_back", f"{name}@{alias}: {current.version} -> {target_version} ({why})",
                           model=name, version=target_version)
        return {"model": name, "alias": alias, "from_version": current.version, "to_version": target_version}


def list_models(settings: Settings) -> list[dict[str, Any]]:
    from mlopsctl import registry

    with open_project(settings).store.read() as s:
        return [{"name": m.name, "versions": len(m.versions),
                 "latest": m.versions[-1].version if m.versions else None,
                 "aliases": {a.name: a.version.version for a in m.aliases}} for m in registry.list_models(s)]


def show_model(settings: Settings, ref: str) -> dict[str, Any]:
    """``MODEL`` (all versions, aliases, history), ``MODEL/3`` or ``MODEL@alias`` (one version + gate report)."""
    from mlopsctl import registry

    parsed = registry.parse_ref(ref)
    with open_project(settings).store.read() as s:
        model = registry.get_model(s, parsed.name)
        if parsed.version is None and parsed.alias is None:
            return {"name": model.name, "aliases": {a.name: a.version.version for a in model.aliases},
                    "versions": [_version_view(v, model.name) for v in model.versions],
                    "history": [_move_view(m) for m in registry.history(s, model)]}
        mv = registry.resolve(s, parsed)
        view = _version_view(mv, model.name)
        view["aliases"] = [a.name for a in model.aliases if a.version_id == mv.id]
        view["history"] = [_move_view(m) for m in registry.history(s, model, parsed.alias)]
        return view


def list_events(settings: Settings, model: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    from mlopsctl import registry

    with open_project(settings).store.read() as s:
        return [{"id": e.id, "at": iso(e.created_at), "kind": e.kind, "model": e.model, "version": e.version,
                 "run_id": e.run_id, "message": e.message, "actor": e.actor}
                for e in registry.list_events(s, model, limit)]
