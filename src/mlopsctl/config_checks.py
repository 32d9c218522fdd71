"""The checks on merged settings that are more than a type: ranges, durations, the pipeline's step tables, and
the rule for servers that leave the loopback. :func:`mlopsctl.config.load_settings` applies them; other modules
use :func:`parse_duration` and :func:`check_exposure`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from mlopsctl.errors import ConfigError

ENV_PREFIX = "MLOPS_"  # every key has an MLOPS_<SECTION>_<KEY> variable

BUILTIN_STEPS = ("train", "evaluate", "register", "promote", "tune")
_ALL_KINDS = ("cmd", *BUILTIN_STEPS)
STEP_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")
PARAM_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}\Z")

# key -> (type, doc, the kinds of step it applies to); a step is a `cmd` step or `uses` a built-in one
STEP_KEYS: dict[str, tuple[type, str, tuple[str, ...]]] = {
    "cmd": (str, "shell command, run in the project folder", ("cmd",)),
    "uses": (str, f"a built-in step: {' | '.join(BUILTIN_STEPS)}", BUILTIN_STEPS),
    "deps": (list, "files and folders the step reads: their content is part of its cache key", _ALL_KINDS),
    "outs": (list, "files and folders the step writes: stored in the artifact store, restored on a cache hit", ("cmd",)),
    "params": (dict, "values passed as MLOPS_PARAM_<NAME> (cmd) or estimator parameters over train.params (train, tune)",
               ("cmd", "train", "tune")),
    "needs": (list, "steps that must finish first (outputs feeding deps need no entry)", _ALL_KINDS),
    "always": (bool, "run every time, even when nothing changed", _ALL_KINDS),
    "data": (str, "train: the training file (default data.path); evaluate: rows to score (default: the run's "
                  "held-out split)", ("train", "evaluate", "tune")),
    "model": (str, "estimator class path (default train.model)", ("train", "tune")),
    "experiment": (str, "experiment the run is recorded under (default train.experiment)", ("train", "tune")),
    "trials": (int, "tune: finished trials the study runs to (default tune.trials)", ("tune",)),
    "metrics": (str, "a JSON file the evaluation is written to (an output of the step)", ("evaluate",)),
    "name": (str, "model name to register under (default registry.model_name)", ("register",)),
    "alias": (str, "alias to move after the gate (default registry.alias)", ("promote",)),
    "min_delta": (float, "the gate's allowed drop of the primary metric (default registry.min_delta)", ("promote",)),
}


def step_kind(body: Mapping[str, Any]) -> str:
    """``cmd`` or the built-in step's name (for a table that :func:`check_steps` accepted)."""
    return "cmd" if "cmd" in body else str(body["uses"])


def check_steps(steps: Mapping[str, Any], source: str) -> None:
    """Every ``[pipeline.steps.NAME]`` table: a known kind, only the keys that kind takes, each of its type.
    The graph itself (cycles, unknown steps, two writers of one output) is checked by mlopsctl.pipeline."""
    for name, body in steps.items():
        where = f"pipeline step {name!r} in {source}"
        if not STEP_NAME_RE.match(name):
            raise ConfigError(f"{where}: the name must be 1-100 letters, digits, '.', '_' or '-', starting with a "
                              "letter or digit.")
        if not isinstance(body, dict):
            raise ConfigError(f"{where} must be a table like [pipeline.steps.{name}] with cmd = \"...\" or uses = \"train\".")
        if ("cmd" in body) == ("uses" in body):
            raise ConfigError(f"{where} needs exactly one of cmd = \"<shell command>\" or uses = "
                              f"\"{'|'.join(BUILTIN_STEPS)}\".")
        if "uses" in body and body["uses"] not in BUILTIN_STEPS:
            raise ConfigError(f"{where}: uses must be one of {', '.join(BUILTIN_STEPS)}; got {body['uses']!r}.")
        kind = step_kind(body)
        allowed = [k for k, (_t, _d, kinds) in STEP_KEYS.items() if kind in kinds]
        for key, value in body.items():
            what = "a cmd step" if kind == "cmd" else f"a uses = \"{kind}\" step"
            if key not in allowed:
                problem = f"unknown key {key!r}" if key not in STEP_KEYS else f"{key!r} does not apply to {what}"
                raise ConfigError(f"{where}: {problem}; the keys of {what} are: {', '.join(allowed)}.")
            typ = STEP_KEYS[key][0]
            _check_step_value(where, key, value, typ)


def _check_step_value(where: str, key: str, value: Any, typ: type) -> None:
    if typ is list:
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ConfigError(f"{where}: {key} must be a list of non-empty strings, got {value!r}.")
        if len(set(value)) != len(value):
            raise ConfigError(f"{where}: {key} lists {next(v for v in value if value.count(v) > 1)!r} twice.")
    elif typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a table such as {{ min_rows = 100 }}, got {value!r}.")
        for pname in value:
            if not PARAM_NAME_RE.match(pname):
                raise ConfigError(f"{where}: param name {pname!r} must be a letter or '_' followed by letters, "
                                  "digits or '_' (it becomes MLOPS_PARAM_<NAME>).")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{where}: {key} must be a number of 0 or more, got {value!r}.")
    elif typ is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: {key} must be a whole number of 1 or more, got {value!r}.")
    elif typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}.")
    elif not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key} must be a non-empty string, got {value!r}.")


def check_ranges(s: Any) -> None:
    """What a type cannot say about a merged :class:`mlopsctl.config.Settings`: ranges, durations, policies."""
    d = s.data.delimiter
    if d != "auto" and (len(d) != 1 or not d.isascii() or d in '"\r\n'):
        raise ConfigError(f"data.delimiter must be auto or one ASCII character such as \";\" or \"\\t\" (not a quote or a line end), got {d!r}.")
    if d == s.data.decimal:
        raise ConfigError(f"data.delimiter and data.decimal are both {d!r}; a decimal comma needs another delimiter, such as \";\".")
    if not 0.0 < s.train.test_size < 1.0:
        raise ConfigError(f"train.test_size must be between 0 and 1 (exclusive), got {s.train.test_size}.")
    if s.train.max_categories < 1:
        raise ConfigError(f"train.max_categories must be at least 1, got {s.train.max_categories}.")
    if s.train.early_stopping_rounds < 0:
        raise ConfigError(f"train.early_stopping_rounds must be 0 (off) or more, got {s.train.early_stopping_rounds}.")
    if s.train.reference_rows < 0:
        raise ConfigError(f"train.reference_rows must be 0 or more, got {s.train.reference_rows}.")
    if not 0 < s.serve.port < 65536:
        raise ConfigError(f"serve.port must be between 1 and 65535, got {s.serve.port}.")
    if not 0 < s.ui.port < 65536:
        raise ConfigError(f"ui.port must be between 1 and 65535, got {s.ui.port}.")
    if s.serve.workers < 1:
        raise ConfigError(f"serve.workers must be at least 1, got {s.serve.workers}.")
    if not 1 <= s.serve.threads <= 64:
        raise ConfigError(f"serve.threads must be between 1 and 64, got {s.serve.threads}.")
    for key in ("max_batch_rows", "log_queue_size"):
        if getattr(s.serve, key) < 1:
            raise ConfigError(f"serve.{key} must be at least 1, got {getattr(s.serve, key)}.")
    if not 0 < s.serve.log_flush_seconds <= 60:
        raise ConfigError(f"serve.log_flush_seconds must be above 0 and at most 60, got {s.serve.log_flush_seconds}.")
    if s.watch.window_rows < 0 or s.watch.min_rows < 1 or s.watch.debounce_seconds < 0:
        raise ConfigError("watch.window_rows must be >= 0, watch.min_rows >= 1 and watch.debounce_seconds >= 0.")
    if s.watch.every:
        parse_duration(s.watch.every, "watch.every")
    parse_duration(s.monitor.window, "monitor.window")
    parse_duration(s.monitor.check_every, "monitor.check_every")
    if not 0 < s.monitor.drift_share <= 1:
        raise ConfigError(f"monitor.drift_share must be in (0, 1], got {s.monitor.drift_share}.")
    methods = ("ks", "chisquare", "ztest", "wasserstein", "jensenshannon", "psi")
    for col, method in s.monitor.stattest.items():
        if method not in methods:
            raise ConfigError(f"monitor.stattest.{col} must be one of {', '.join(methods)}; got {method!r}.")
    for col, value in s.monitor.threshold.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"monitor.threshold.{col} must be a non-negative number, got {value!r}.")
    for key, low in (("trials", 1), ("jobs", 1), ("cv", 2), ("max_failed", 1)):
        if getattr(s.tune, key) < low:
            raise ConfigError(f"tune.{key} must be at least {low}, got {getattr(s.tune, key)}.")
    if s.tune.timeout:
        parse_duration(s.tune.timeout, "tune.timeout")
    for name, spec in s.tune.space.items():
        if not isinstance(spec, str):
            raise ConfigError(f"tune.space.{name} must be a string such as \"int:50..500\", got {spec!r}.")
    if s.watch.tune_trials < 0:
        raise ConfigError(f"watch.tune_trials must be 0 (a plain train) or more, got {s.watch.tune_trials}.")
    for key in ("max_body_mb", "reload_interval", "range_tolerance"):
        if getattr(s.serve, key) <= 0:
            raise ConfigError(f"serve.{key} must be greater than 0, got {getattr(s.serve, key)}.")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and the loopback addresses (127.0.0.0/8, ::1, IPv4-mapped 127.x): only this
    machine can connect. Any other name may resolve to a public address, and ``0.0.0.0``/``::``/``""``
    listen on every interface."""
    import ipaddress

    text = host.strip().strip("[]").lower().rstrip(".")
    if text == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def check_exposure(host: str, token: str, allow_unauthenticated: bool, *, token_key: str = "serve.token") -> str | None:
    """The rule for leaving the loopback, shared by every command that listens (``serve``, later ``ui``): off
    loopback a token is required unless ``allow_unauthenticated``. Raises ConfigError, or returns the warning
    to print when the caller chose to serve the network without a token (None when there is nothing to say)."""
    if token or is_loopback(host):
        return None
    env = ENV_PREFIX + token_key.replace(".", "_").upper()
    if not allow_unauthenticated:
        raise ConfigError(
            f"host {host!r} is reachable from other machines and {token_key} is empty; set {env} (or {token_key}) "
            f"to require a bearer token, or pass --allow-unauthenticated to accept requests from anyone."
        )
    return (f"Warning: listening on {host} without a token (--allow-unauthenticated): anyone who can reach this "
            f"port can use it; set {env} to require one.")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str = "duration") -> float:
    """``"90s"``, ``"30m"``, ``"6h"``, ``"1d"`` (or a plain number of seconds) -> seconds."""
    t = str(text).strip().lower()
    try:
        value = float(t[:-1]) * _UNITS[t[-1]] if t and t[-1] in _UNITS else float(t)
    except ValueError:
        value = -1
    if value <= 0:
        raise ConfigError(f"{what} {text!r} is not a duration; use e.g. 90s, 30m, 6h or 1d.")
    return value
