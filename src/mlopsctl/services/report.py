"""Use case: ``mlopsctl report RUN --against MODEL@ALIAS``: a model comparison a CI job posts on a pull request.

The run (a candidate, registered or not) against the version an alias points at: their recorded metrics side
by side with deltas, the gate's verdict with both scored through ONNX Runtime on the same held-out rows (the
run's split, as ``promote`` would score them), ONNX parity, data changes (dataset, fingerprint, columns) and
parameter changes. ``would_pass`` is what ``promote`` would decide; the CLI exits 4 when it is false.
"""

from __future__ import annotations

import io
from typing import Any

from mlopsctl.config import Settings
from mlopsctl.errors import ConflictError, NotFoundError
from mlopsctl.project import open_project


def model_report(settings: Settings, run_ref: str, against: str) -> dict[str, Any]:
    import pandas as pd

    from mlopsctl import registry
    from mlopsctl.services import runs
    from mlopsctl.services.gate import contract_compatibility, evaluate_gate

    project = open_project(settings)
    run = runs.show_run(settings, run_ref)
    candidate = runs.run_model(settings, run_ref)
    ref = project.ref(against)
    holder = holder_run = mv_view = None
    try:
        with project.store.read() as s:
            mv = registry.resolve(s, ref)
            mv_view = {"ref": f"{ref.name}/{mv.version}", "version": mv.version, "run_id": mv.run_id,
                       "metrics": mv.metrics, "parity": mv.parity}
        holder = project.load_model(mv_view["ref"])
        holder_run = runs.show_run(settings, str(mv_view["run_id"]))
    except NotFoundError as e:  # the first model, or an alias nobody holds yet: nothing to compare with
        missing = e.message
    if not candidate.heldout_sha256:
        raise ConflictError(f"run {run['id']} has no held-out split to gate on; train it again.")
    heldout = pd.read_parquet(io.BytesIO(project.artifacts.get_bytes(candidate.heldout_sha256)))
    alias = ref.alias or settings.registry.alias
    gate = evaluate_gate(settings, candidate, holder, alias=alias, min_delta=settings.registry.min_delta,
                         heldout=heldout, data_label=f"held-out split of run {run['id']}")
    out: dict[str, Any] = {
        "run": {"id": run["id"], "name": run["name"], "model": run["model"], "dataset": run["dataset"],
                "git_commit": run["git_commit"]},
        "against": str(ref), "holder": mv_view, "would_pass": bool(gate["passed"]), "gate": gate,
    }
    if holder is None:
        out["note"] = f"{ref} has no holder ({missing}); the run would be its first holder."
        out.update(metrics={k: {"candidate": v, "holder": None, "delta": None} for k, v in run["metrics"].items()},
                   parity={"candidate": run["parity"], "holder": None}, data={"candidate": run["dataset"], "holder": None},
                   params={}, contract=None)
        return out
    hm = mv_view["metrics"]
    out["metrics"] = {k: {"candidate": run["metrics"].get(k), "holder": hm.get(k),
                          "delta": _delta(run["metrics"].get(k), hm.get(k))}
                      for k in sorted(set(run["metrics"]) | set(hm))}
    out["parity"] = {"candidate": run["parity"], "holder": mv_view["parity"]}
    cd, hd = run["dataset"], holder_run["dataset"]
    out["data"] = {"candidate": cd, "holder": hd,
                   "same_data": bool(cd and hd and cd["fingerprint"] == hd["fingerprint"])}
    out["contract"] = contract_compatibility(holder.contract, candidate.contract)
    cp, hp = run["params"], holder_run["params"]
    out["params"] = {k: {"candidate": cp.get(k), "holder": hp.get(k)}
                     for k in sorted(set(cp) | set(hp)) if cp.get(k) != hp.get(k)}
    return out


def _delta(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else a - b


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}"
    return str(v)


def render_markdown(r: dict[str, Any]) -> str:
    """The report as GitHub-flavoured Markdown (what a CI job posts as a pull-request comment)."""
    run, gate, holder = r["run"], r["gate"], r["holder"]
    cand = f"run {run['id']}"
    hold = holder["ref"] if holder else r["against"]
    lines = [f"## Model report: {cand} ({run['name']}) vs {r['against']}" + (f" ({hold})" if holder else ""), ""]
    verdict = "passes" if r["would_pass"] else "would reject"
    c = gate["candidate"]
    if holder is None:
        lines.append(f"**Gate: {verdict}.** {r['note']} {gate['metric']} {c['score']:.4f} on "
                     f"{gate['data']['rows']} held-out rows.")
    else:
        h = gate["holder"]
        detail = (f"{gate['metric']} {c['score']:.4f} vs {h['score']:.4f} on the same {gate['data']['rows']} rows "
                  f"({gate['data']['source']}): delta {gate['delta']:+.4f}, min_delta {gate['min_delta']}"
                  if h.get("score") is not None else "the candidate was not scored against the holder")
        lines.append(f"**Gate: {verdict}.** {detail}.")
    for reason in gate["reasons"]:
        lines.append(f"- {reason}")
    lines += ["", "### Metrics (each model on its own held-out split, at training)", "",
              f"| metric | {cand} | {hold} | delta |", "|---|---:|---:|---:|"]
    for k, m in r["metrics"].items():
        delta = "-" if m["delta"] is None else f"{m['delta']:+.4f}"
        lines.append(f"| {k} | {_num(m['candidate'])} | {_num(m['holder'])} | {delta} |")
    lines += ["", "### ONNX parity", "", f"| check | {cand} | {hold} |", "|---|---:|---:|"]
    cp, hp = r["parity"]["candidate"] or {}, r["parity"]["holder"] or {}
    for k in ("passed", "label_agreement", "max_abs_diff", "max_rel_diff"):
        if k in cp or k in hp:
            lines.append(f"| {k} | {_num(cp.get(k))} | {_num(hp.get(k))} |")
    lines += ["", "### Data", "", f"| | {cand} | {hold} |", "|---|---|---|"]
    cd, hd = r["data"]["candidate"] or {}, r["data"]["holder"] or {}
    lines.append(f"| dataset | {_ds(cd)} | {_ds(hd)} |")
    lines.append(f"| rows | {cd.get('rows', '-')} | {hd.get('rows', '-')} |")
    lines.append(f"| fingerprint | {str(cd.get('fingerprint', '-'))[:12]} | {str(hd.get('fingerprint', '-'))[:12]} |")
    contract = r.get("contract")
    if contract:
        changes = [f"new columns: {', '.join(contract['new_in_candidate'])}" if contract["new_in_candidate"] else "",
                   f"missing columns: {', '.join(contract['missing_in_candidate'])}" if contract["missing_in_candidate"] else "",
                   f"type changes: {', '.join(contract['kind_changes'])}" if contract["kind_changes"] else "",
                   f"task: {contract['task_change']}" if contract["task_change"] else ""]
        lines += ["", "Columns: " + ("; ".join(x for x in changes if x) or "unchanged") + "."]
    if r["params"]:
        lines += ["", "### Parameters that differ", "", f"| param | {cand} | {hold} |", "|---|---|---|"]
        lines += [f"| {k} | {v['candidate'] if v['candidate'] is not None else '-'} | "
                  f"{v['holder'] if v['holder'] is not None else '-'} |" for k, v in r["params"].items()]
    elif holder is not None:
        lines += ["", "Parameters: unchanged."]
    return "\n".join(lines) + "\n"


def _ds(d: dict[str, Any]) -> str:
    return f"{d['name']}:{d['version']}" if d else "-"
