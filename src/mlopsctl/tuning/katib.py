"""Katib ``Experiment`` (kubeflow.org/v1beta1) files: write one from a study, read one into tune settings.

The mapping (Katib's fields on the left): ``objective`` = the CV metric (``cv_<metric>``, read as the latest value a
trial prints, since the running means printed after each fold come first) and its direction; ``algorithm`` = the
sampler (Katib's Optuna suggestion service has the same four, seeded with ``random_state``); ``earlyStopping`` =
``medianstop`` for the median pruner (``min_trials_required`` = the pruner's startup trials, ``start_step`` = 1: it
may stop a trial after its first fold, as ours does); ``parallelTrialCount`` / ``maxTrialCount`` /
``maxFailedTrialCount`` = jobs / trials / max_failed; ``parameters`` = the space (int / double / categorical,
``feasibleSpace`` min, max, step, list, and ``distribution: logUniform`` for a log scale). The trial template is a
batch Job that runs ``mlopsctl tune trial`` in the project's image; Katib's StdOut collector reads the
``cv_<metric>=<value>`` lines it prints.
"""

from __future__ import annotations

import re
from typing import Any

from mlopsctl.common import parse_value
from mlopsctl.errors import InvalidInputError
from mlopsctl.tuning.space import Param, parse_spec, value_text

API_VERSION = "kubeflow.org/v1beta1"
CONTAINER = "training-container"
_TYPES = {"int": "int", "float": "double", "choice": "categorical"}
ALGORITHMS = {"tpe": "tpe", "random": "random", "grid": "grid", "cmaes": "cmaes"}  # ours -> Katib's


def k8s_name(name: str) -> str:
    """A DNS-1123 name (lowercase letters, digits, '-'; at most 63) for metadata.name."""
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    return out or "mlopsctl-study"


def parameter(p: Param) -> dict[str, Any]:
    space: dict[str, Any]
    if p.kind == "choice":
        space = {"list": [value_text(c) for c in p.choices]}
    else:
        space = {"min": value_text(p.low), "max": value_text(p.high)}
        if p.step is not None:
            space["step"] = value_text(p.step)
        if p.log:
            space["distribution"] = "logUniform"
    return {"name": p.name, "parameterType": _TYPES[p.kind], "feasibleSpace": space}


def experiment(
    *, name: str, space: dict[str, Param], metric: str, direction: str, sampler: str, pruner: str, seed: int,
    trials: int, jobs: int, max_failed: int, pruner_startup: int, image: str, command: list[str],
    namespace: str | None = None,
) -> dict[str, Any]:
    """The Experiment as a plain dict (``command``: the trial's argv without the parameters, which are appended as
    ``--param NAME=${trialParameters.NAME}``)."""
    metric_name = f"cv_{metric}"
    argv = [*command, *(a for p in space for a in ("--param", f"{p}=${{trialParameters.{p}}}"))]
    metadata: dict[str, Any] = {"name": k8s_name(name)}
    if namespace:
        metadata["namespace"] = namespace
    spec: dict[str, Any] = {
        "objective": {"type": direction, "objectiveMetricName": metric_name,
                      "metricStrategies": [{"name": metric_name, "value": "latest"}]},
        "algorithm": {"algorithmName": ALGORITHMS[sampler],
                      "algorithmSettings": [{"name": "random_state", "value": str(seed)}]},
        "parallelTrialCount": jobs,
        "maxTrialCount": trials,
        "maxFailedTrialCount": max_failed,
        "parameters": [parameter(p) for p in space.values()],
        "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
        "trialTemplate": {
            "primaryContainerName": CONTAINER,
            "trialParameters": [{"name": p, "description": f"{p} ({space[p].spec})", "reference": p} for p in space],
            "trialSpec": {
                "apiVersion": "batch/v1", "kind": "Job",
                "spec": {"template": {"spec": {
                    "containers": [{"name": CONTAINER, "image": image, "command": argv}],
                    "restartPolicy": "Never",
                }}},
            },
        },
    }
    if pruner == "median":
        spec["earlyStopping"] = {"algorithmName": "medianstop", "algorithmSettings": [
            {"name": "min_trials_required", "value": str(pruner_startup)}, {"name": "start_step", "value": "1"}]}
    return {"apiVersion": API_VERSION, "kind": "Experiment", "metadata": metadata, "spec": spec}


def _spec_of(p: dict[str, Any], where: str) -> str:
    kind = {v: k for k, v in _TYPES.items()}.get(p.get("parameterType", ""))
    fs = p.get("feasibleSpace") or {}
    if kind is None:
        if p.get("parameterType") == "discrete":
            return "choice:" + ",".join(str(v) for v in fs.get("list") or [])
        raise InvalidInputError(f"{where}: parameterType {p.get('parameterType')!r} is not int, double, categorical "
                                "or discrete.")
    if kind == "choice":
        return "choice:" + ",".join(str(v) for v in fs.get("list") or [])
    if fs.get("list"):
        return "choice:" + ",".join(str(v) for v in fs["list"])
    text = f"{kind}:{fs.get('min')}..{fs.get('max')}"
    if fs.get("distribution") in ("logUniform", "logNormal"):
        text += ":log"
    elif fs.get("distribution") not in (None, "uniform"):
        raise InvalidInputError(f"{where}: distribution {fs['distribution']!r} has no mlopsctl equivalent (uniform, "
                                "logUniform).")
    if fs.get("step") not in (None, ""):
        text += f":step={fs['step']}"
    return text


def read(doc: Any, source: str = "the experiment") -> dict[str, Any]:
    """Tune settings from an Experiment document: ``{"study", "space", "metric", "direction", "sampler", "pruner",
    "trials", "jobs", "max_failed", "model", "cv", "params"}`` (the last three from an `mlopsctl tune trial`
    template, when it is one; absent keys were not in the file)."""
    if not isinstance(doc, dict) or doc.get("kind") != "Experiment":
        raise InvalidInputError(f"{source} is not a Katib Experiment (kind: Experiment, apiVersion: {API_VERSION}).")
    spec = doc.get("spec") or {}
    out: dict[str, Any] = {}
    if (doc.get("metadata") or {}).get("name"):
        out["study"] = str(doc["metadata"]["name"])
    params = spec.get("parameters") or []
    if not params:
        raise InvalidInputError(f"{source} has no spec.parameters; a search needs at least one.")
    out["space"] = {}
    for i, p in enumerate(params):
        where = f"{source}: spec.parameters[{i}]"
        if not p.get("name"):
            raise InvalidInputError(f"{where} has no name.")
        text = _spec_of(p, where)
        parse_spec(p["name"], text)
        out["space"][p["name"]] = text
    objective = spec.get("objective") or {}
    if objective.get("objectiveMetricName"):
        out["metric"] = re.sub(r"^cv_", "", str(objective["objectiveMetricName"]))
    if objective.get("type"):
        out["direction"] = objective["type"]
    algorithm = (spec.get("algorithm") or {}).get("algorithmName")
    if algorithm:
        ours = {v: k for k, v in ALGORITHMS.items()} | {"multivariate-tpe": "tpe"}
        if algorithm not in ours:
            raise InvalidInputError(f"{source}: algorithm {algorithm!r} has no mlopsctl sampler; use one of "
                                    f"{', '.join(sorted(ours))}.")
        out["sampler"] = ours[algorithm]
    early = (spec.get("earlyStopping") or {}).get("algorithmName")
    out["pruner"] = "median" if early == "medianstop" else "none"
    for key, ours_key in (("maxTrialCount", "trials"), ("parallelTrialCount", "jobs"), ("maxFailedTrialCount", "max_failed")):
        if spec.get(key) is not None:
            out[ours_key] = int(spec[key])
    out.update(_template_options(spec))
    return out


def _template_options(spec: dict[str, Any]) -> dict[str, Any]:
    """``--model``, ``--cv`` and fixed ``--param`` values of an `mlopsctl tune trial` container command."""
    try:
        containers = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"]
    except (KeyError, TypeError):
        return {}
    argv = next((c.get("command", []) + c.get("args", []) for c in containers if c.get("name") == CONTAINER),
                containers[0].get("command", []) if containers else [])
    argv = [str(a) for a in argv]
    if "trial" not in argv or "tune" not in argv:
        return {}
    out: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    for flag, value in zip(argv, argv[1:]):
        if flag in ("--model", "-m"):
            out["model"] = value
        elif flag == "--cv":
            out["cv"] = int(value)
        elif flag in ("--param", "-p") and "${trialParameters." not in value:
            key, _, raw = value.partition("=")
            fixed[key] = parse_value(raw)
    if fixed:
        out["params"] = fixed
    return out
