"""The quality gate: score a candidate and the alias's holder through ONNX Runtime on the same held-out rows."""

from __future__ import annotations

import io
import math
from typing import Any

from mlopsctl.common import iso
from mlopsctl.config import Settings
from mlopsctl.contract import Contract
from mlopsctl.errors import ConflictError
from mlopsctl.project import open_project
from mlopsctl.registry import LoadedModel


def contract_compatibility(holder: Contract, candidate: Contract) -> dict[str, Any]:
    """The holder's required inputs must be a subset of the candidate's, with the same kinds."""
    cand = {c.name: c.kind for c in candidate.columns}
    held = {c.name: c.kind for c in holder.columns}
    missing = sorted(set(held) - set(cand))
    kinds = sorted(f"{n}: {held[n]} -> {cand[n]}" for n in set(held) & set(cand) if held[n] != cand[n])
    return {"compatible": not missing and not kinds and holder.task == candidate.task,
            "missing_in_candidate": missing, "kind_changes": kinds,
            "new_in_candidate": sorted(set(cand) - set(held)),
            "task_change": None if holder.task == candidate.task else f"{holder.task} -> {candidate.task}"}


def _score(model: LoadedModel, frame: Any, target: str, metric: str) -> float:
    """``metric`` of ``model`` on ``frame``'s rows that have a target, scored through ONNX Runtime."""
    return score_frame(model, frame, target)[metric]


def score_frame(model: LoadedModel, frame: Any, target: str) -> dict[str, float]:
    """The task's metrics of ``model`` on ``frame``'s rows that have a target, scored through ONNX Runtime."""
    import numpy as np

    from mlopsctl.scoring import Scorer
    from mlopsctl.training import metrics as m

    contract = model.contract
    if contract.task == "classification":
        y, valid = contract.coerce_labels(frame[target].tolist())
        if not valid.all():  # rows without a label (or with one this model cannot have) are not scored
            frame, (y, _) = frame[valid], contract.coerce_labels(y[valid])
    else:
        y = frame[target].to_numpy(dtype="float64", na_value=np.nan)
        frame, y = frame[~np.isnan(y)], y[~np.isnan(y)]
    out = Scorer(model.onnx, contract).predict_frame(frame)
    if contract.task == "classification":
        proba = np.asarray(out["probabilities"], dtype=np.float64)
        return m.classification_metrics(y, np.asarray(out["label"]).ravel(), proba, list(contract.classes))
    return m.regression_metrics(y, np.asarray(out["prediction"]).ravel())


def evaluate_gate(settings: Settings, candidate: LoadedModel, holder: LoadedModel | None, *, alias: str,
                  min_delta: float, metric: str | None = None, heldout: Any = None, data_label: str | None = None) -> dict[str, Any]:
    """Score candidate and holder through ONNX Runtime on the same held-out rows and decide."""
    import pandas as pd

    from mlopsctl.training import metrics as m
    from mlopsctl.store.models import utcnow

    metric = m.primary_metric(candidate.contract.task, metric or settings.train.metric)
    higher = metric not in m.LOWER_IS_BETTER
    report: dict[str, Any] = {"alias": alias, "metric": metric, "higher_is_better": higher, "min_delta": min_delta,
                              "candidate": {"version": candidate.version}, "holder": None, "delta": None,
                              "reasons": [], "measured_at": iso(utcnow())}
    if heldout is None:
        if not candidate.heldout_sha256:
            raise ConflictError(f"{candidate.name}/{candidate.version} has no held-out data to gate on; retrain it.")
        heldout = pd.read_parquet(io.BytesIO(open_project(settings).artifacts.get_bytes(candidate.heldout_sha256)))
        data_label = f"held-out split of {candidate.name}/{candidate.version}"
    target = candidate.contract.target
    report["data"] = {"source": data_label, "rows": int(len(heldout)), "target": target}
    cand_score = _score(candidate, heldout, target, metric)
    report["candidate"]["score"] = cand_score
    passed = True
    if holder is not None:
        compat = contract_compatibility(holder.contract, candidate.contract)
        report["contract"] = compat
        report["holder"] = {"version": holder.version}
        if not compat["compatible"]:
            passed = False
            report["reasons"].append(
                "contract incompatible: " + "; ".join(filter(None, [
                    compat["missing_in_candidate"] and f"candidate lacks {', '.join(compat['missing_in_candidate'])}",
                    compat["kind_changes"] and f"type changes {', '.join(compat['kind_changes'])}",
                    compat["task_change"] and f"task {compat['task_change']}"])))
        else:
            holder_score = _score(holder, heldout, target, metric)
            report["holder"]["score"] = holder_score
            delta = (cand_score - holder_score) if higher else (holder_score - cand_score)
            report["delta"] = delta
            if math.isnan(delta):
                passed = False
                report["reasons"].append(f"{metric} could not be computed on the held-out rows")
            elif delta < -min_delta:
                passed = False
                report["reasons"].append(
                    f"{metric} {cand_score:.4f} is worse than {holder.name}/{holder.version}'s {holder_score:.4f} "
                    f"by {-delta:.4f} (min_delta {min_delta})")
    report["passed"] = passed
    return report


def gate_summary(gate: dict[str, Any]) -> str:
    c = gate["candidate"]
    if gate["holder"] is None:
        return f"first holder of @{gate['alias']}: {gate['metric']} {c['score']:.4f}"
    h = gate["holder"]
    return (f"gate passed: {gate['metric']} {c['score']:.4f} vs {h['score']:.4f} of version {h['version']} "
            f"(delta {gate['delta']:+.4f}, min_delta {gate['min_delta']})")
