"""A step's cache key: sha256 over what decides its result, and the words for what changed between two.

The inputs (a plain dict, stored with every execution so ``pipeline status`` can say why a step is stale):

* ``definition``: a command step's ``cmd`` and ``outs``; a built-in step's kind with every setting that
  changes its result (its own keys and the project settings it reads: target, task, split, seed, metric ...)
* ``params``: the step's params
* ``deps``: each dep's content hash (files and folders)
* ``upstream``: the result digest of each step it depends on (its outputs' hashes, the run or version it made)
* ``environment``: built-in steps only: the mlopsctl version and the versions of the libraries that change
  what training produces. A command's own code counts only when it is listed in ``deps`` (as in DVC).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict
from typing import Any

from mlopsctl._version import __version__
from mlopsctl.config import Settings
from mlopsctl.pipeline.graph import Step

KEY_FORMAT = 1
RESULT_LIBRARIES = ("scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy", "pandas", "pyarrow", "scipy")


@functools.cache
def environment() -> dict[str, str]:
    from importlib import metadata

    env = {"mlopsctl": __version__}
    for dist in RESULT_LIBRARIES:
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = "not installed"
    return env


def definition(step: Step, settings: Settings) -> dict[str, Any]:
    """What the step is, with every setting that changes its result resolved to its value."""
    if step.kind == "cmd":
        return {"kind": "cmd", "cmd": step.cmd, "outs": sorted(step.outs)}
    own = dict(step.settings)
    d, t, r = settings.data, settings.train, settings.registry
    if step.kind in ("train", "tune"):
        model = own.get("model", t.model)
        base = dict(t.params) if model == t.model else {}  # train.params belong to train.model's estimator
        own.update(model=model, params=base, experiment=own.get("experiment", t.experiment),
                   target=d.target, task=d.task, exclude=list(d.exclude), delimiter=d.delimiter, decimal=d.decimal,
                   test_size=t.test_size, seed=t.seed, reference_rows=t.reference_rows,
                   max_categories=t.max_categories)
        if step.kind == "tune":  # the whole search; jobs and timeout only change how fast it gets there
            search = {k: v for k, v in asdict(settings.tune).items() if k not in ("jobs", "timeout")}
            own["tune"] = {**search, "trials": own.pop("trials", settings.tune.trials)}
    elif step.kind == "evaluate":
        own.update(metric=t.metric, delimiter=d.delimiter, decimal=d.decimal)
    elif step.kind == "register":
        own.setdefault("name", r.model_name)
    elif step.kind == "promote":
        own.setdefault("alias", r.alias)
        own.setdefault("min_delta", r.min_delta)
        own["metric"] = t.metric
    own.pop("data", None)  # a dep: its content counts, not its name
    own.pop("metrics", None)  # an output
    return {"kind": step.kind, "settings": own}


def inputs(step: Step, settings: Settings, deps: dict[str, str], upstream: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"format": KEY_FORMAT, "definition": definition(step, settings),
                           "params": step.params, "deps": deps, "upstream": upstream}
    if step.builtin:
        out["environment"] = environment()
    return out


def digest(value: Any) -> str:
    """sha256 of a JSON value in canonical form (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(step_inputs: dict[str, Any]) -> str:
    return digest(step_inputs)


def result_digest(outputs: dict[str, Any], result: dict[str, Any]) -> str:
    """What a step produced, as one hash its dependants' keys take in."""
    return digest({"outputs": {p: o["sha256"] for p, o in outputs.items()}, "result": result})


def explain(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Why ``new`` differs from the inputs of the step's last good execution, in a few words each."""
    if old is None:
        return ["never ran"]
    if old.get("format") != new.get("format"):
        return ["cache format changed"]
    reasons: list[str] = []
    od, nd = old.get("definition", {}), new["definition"]
    if od.get("kind") != nd.get("kind") or od.get("cmd") != nd.get("cmd"):
        reasons.append("its command changed" if nd.get("kind") == "cmd" else "its kind changed")
    if od.get("outs") != nd.get("outs"):
        reasons.append("its outs changed")
    os_, ns = od.get("settings", {}), nd.get("settings", {})
    changed = sorted(k for k in set(os_) | set(ns) if os_.get(k) != ns.get(k))
    if changed:
        reasons.append("setting " + ", ".join(f"{k} {_show(os_.get(k))} -> {_show(ns.get(k))}" for k in changed))
    reasons += _diff("param", old.get("params", {}), new["params"], values=True)
    reasons += _diff("dep", old.get("deps", {}), new["deps"])
    reasons += [f"upstream step {r[len('upstream '):]}" for r in _diff("upstream", old.get("upstream", {}),
                                                                         new["upstream"], word="produced new results")]
    oe, ne = old.get("environment", {}), new.get("environment", {})
    libs = sorted(k for k in set(oe) | set(ne) if oe.get(k) != ne.get(k))
    if libs:
        reasons.append(", ".join(f"{k} {oe.get(k, '-')} -> {ne.get(k, '-')}" for k in libs))
    return reasons or ["inputs unchanged"]


def _diff(what: str, old: dict[str, Any], new: dict[str, Any], *, values: bool = False,
          word: str = "changed") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if k not in old:
            out.append(f"{what} {k} added")
        elif k not in new:
            out.append(f"{what} {k} removed")
        elif old[k] != new[k]:
            out.append(f"{what} {k} {_show(old[k])} -> {_show(new[k])}" if values else f"{what} {k} {word}")
    return out


def _show(v: Any) -> str:
    return "-" if v is None else json.dumps(v, sort_keys=True, default=str)
