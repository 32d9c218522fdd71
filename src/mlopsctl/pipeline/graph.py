"""The pipeline as a DAG: steps from ``[pipeline.steps.NAME]`` (already checked by :func:`config_checks.check_steps`),
edges from ``needs`` and from one step's outputs feeding another's deps. A cycle, a step that is not there,
two steps writing one output and a built-in step without the step it consumes are one-line ConfigErrors
naming the steps."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mlopsctl.config import Settings
from mlopsctl.config_checks import step_kind
from mlopsctl.errors import ConfigError, NotFoundError

# the built-in steps that consume another step's product, and the kind of step that makes it
CONSUMES = {"evaluate": ("train", "tune"), "register": ("train", "tune"), "promote": ("register",)}
BUILTIN_SETTINGS = ("data", "model", "experiment", "metrics", "name", "alias", "min_delta", "trials")


@dataclass(frozen=True)
class Step:
    name: str
    kind: str  # cmd | train | evaluate | register | promote | tune
    cmd: str | None
    deps: tuple[str, ...]  # normalised paths (relative to the project unless absolute); built-ins' data included
    outs: tuple[str, ...]  # normalised relative paths inside the project; evaluate's metrics file included
    params: dict[str, Any]
    needs: tuple[str, ...]
    always: bool
    settings: dict[str, Any]  # a built-in step's own keys (data, model, name, alias, ...)
    upstream: tuple[str, ...] = ()  # needs + the steps whose outputs it reads, in pipeline order
    source: str | None = None  # the step whose run (train) or version (register) a built-in step consumes

    @property
    def builtin(self) -> bool:
        return self.kind != "cmd"

    @property
    def cacheable(self) -> bool:
        """A step marked ``always`` never comes from the cache, nor does a command with nothing to key on."""
        return not self.always and (self.builtin or bool(self.deps))


@dataclass(frozen=True)
class Pipeline:
    steps: dict[str, Step]  # in topological order (ties kept in the order of the config file)
    order: tuple[str, ...] = field(default=())

    def upstream_closure(self, names: Iterable[str]) -> list[str]:
        """``names`` and every step they depend on, in pipeline order."""
        wanted: set[str] = set()
        stack = list(names)
        while stack:
            n = stack.pop()
            if n not in wanted:
                wanted.add(n)
                stack.extend(self.steps[n].upstream)
        return [n for n in self.order if n in wanted]

    def downstream(self, name: str) -> list[str]:
        """Every step that depends on ``name``, directly or not, in pipeline order."""
        out: set[str] = set()
        frontier = {name}
        while frontier:
            frontier = {n for n, s in self.steps.items() if set(s.upstream) & frontier} - out
            out |= frontier
        return [n for n in self.order if n in out]

    def check_names(self, names: Iterable[str], what: str = "step") -> list[str]:
        names = list(names)
        for n in names:
            if n not in self.steps:
                raise NotFoundError(f"no pipeline {what} named {n!r}; the steps are: {', '.join(self.order) or '(none)'}.")
        return names

    def producer(self, path: str) -> str | None:
        """The step whose outputs hold ``path`` (or lie inside it), if any."""
        for n in self.order:
            if any(overlaps(path, o) for o in self.steps[n].outs):
                return n
        return None


def overlaps(a: str, b: str) -> bool:
    """The same path, or one inside the other."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _norm(path: str) -> str:
    p = path.strip().replace("\\", "/")
    absolute = p.startswith("/")
    p = posixpath.normpath(p)
    return p if absolute else p.lstrip("/")


def _inside(project_dir: Path, where: str, path: str, what: str) -> str:
    p = _norm(path)
    if p.startswith("/") or p == ".." or p.startswith("../"):
        raise ConfigError(f"{where}: {what} {path!r} must be a path inside the project folder, relative to it.")
    if p == "." or p == ".mlops" or p.startswith(".mlops/") or p == ".mlops.toml":
        raise ConfigError(f"{where}: {what} {path!r} would overwrite the project itself; write under another folder.")
    return p


def build(settings: Settings) -> Pipeline:
    """The project's pipeline, checked: every name a step needs exists, no output has two writers, no cycle."""
    raw = settings.pipeline.steps
    if not raw:
        raise ConfigError(
            "this project has no pipeline steps; declare them in .mlops.toml as [pipeline.steps.NAME] tables "
            "(see .mlops.toml.example)."
        )
    steps = {name: _step(settings, name, body) for name, body in raw.items()}
    _check_names_and_writers(steps)
    edges: dict[str, list[str]] = {}
    for name, step in steps.items():
        ups = list(step.needs)
        for d in step.deps:
            for other, o in steps.items():
                if other != name and other not in ups and any(overlaps(d, out) for out in o.outs):
                    ups.append(other)
        edges[name] = ups
    order = _topological(list(steps), edges)
    final = {name: Step(**{**steps[name].__dict__, "upstream": tuple(n for n in order if n in edges[name]),
                           "source": _source(steps, name)}) for name in order}
    return Pipeline(steps=final, order=tuple(order))


def _step(settings: Settings, name: str, body: dict[str, Any]) -> Step:
    """One step from its table: the deps and outs its kind implies added to the declared ones."""
    where = f"pipeline step {name!r}"
    kind = step_kind(body)
    own = {k: body[k] for k in BUILTIN_SETTINGS if k in body}
    deps = [_norm(d) for d in body.get("deps", [])]
    outs = [_inside(settings.project_dir, where, o, "output") for o in body.get("outs", [])]
    if kind in ("train", "tune"):
        deps.insert(0, _norm(own.get("data", settings.data.path)))
    if kind == "evaluate":
        if "data" in own:
            deps.insert(0, _norm(own["data"]))
        if "metrics" in own:
            outs.append(_inside(settings.project_dir, where, own["metrics"], "metrics file"))
    for d in deps:
        for o in outs:
            if overlaps(d, o):
                raise ConfigError(f"{where} reads its own output {o!r} (dep {d!r}); a step cannot depend on "
                                  "what it writes.")
    return Step(name=name, kind=kind, cmd=body.get("cmd"), deps=tuple(dict.fromkeys(deps)), outs=tuple(outs),
                params=dict(body.get("params", {})), needs=tuple(body.get("needs", [])),
                always=bool(body.get("always", False)), settings=own)


def _check_names_and_writers(steps: dict[str, Step]) -> None:
    for name, step in steps.items():
        for n in step.needs:
            if n not in steps:
                raise ConfigError(f"pipeline step {name!r} needs {n!r}, which is not a step; the steps are: "
                                  f"{', '.join(steps)}.")
            if n == name:
                raise ConfigError(f"pipeline step {name!r} needs itself; remove it from its needs.")
    names = list(steps)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for oa in steps[a].outs:
                for ob in steps[b].outs:
                    if overlaps(oa, ob):
                        both = oa if len(oa) <= len(ob) else ob
                        raise ConfigError(f"pipeline steps {a!r} and {b!r} both write {both!r}; an output must have "
                                          "one writer.")


def _source(steps: dict[str, Step], name: str) -> str | None:
    """The one step whose product a register/promote/evaluate step consumes (its train or register step)."""
    step = steps[name]
    if step.kind not in CONSUMES:
        return None
    want = CONSUMES[step.kind]
    cands = [n for n in step.needs if steps[n].kind in want]
    if len(cands) != 1:
        found = "none" if not cands else ", ".join(cands)
        kinds = " or ".join(f'"{w}"' for w in want)
        raise ConfigError(
            f"pipeline step {name!r} (uses = \"{step.kind}\") needs exactly one uses = {kinds} "
            f"step in its needs (found {found}); add it, as in needs = [\"{cands[0] if cands else want[0]}\"]."
        )
    return cands[0]


def _topological(names: list[str], edges: dict[str, list[str]]) -> list[str]:
    """Kahn's algorithm, ties in config order; a cycle is a ConfigError that names it."""
    position = {n: i for i, n in enumerate(names)}
    indegree = {n: len(set(edges[n])) for n in names}
    dependants: dict[str, list[str]] = {n: [] for n in names}
    for n in names:
        for u in set(edges[n]):
            dependants[u].append(n)
    ready = sorted((n for n in names if indegree[n] == 0), key=position.get)
    order: list[str] = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for d in dependants[n]:
            indegree[d] -= 1
            if indegree[d] == 0:
                ready.append(d)
        ready.sort(key=position.get)
    if len(order) < len(names):
        cycle = _find_cycle([n for n in names if n not in order], edges)
        raise ConfigError(f"pipeline steps form a cycle: {' needs '.join(cycle)}; break it by removing one of "
                          "these needs (or deps on another step's outputs).")
    return order


def _find_cycle(left: list[str], edges: dict[str, list[str]]) -> list[str]:
    """One cycle among the steps Kahn's algorithm could not order, as a path that returns to its start."""
    for start in left:
        path, seen = [start], {start}
        node = start
        while True:
            nxt = next((u for u in edges[node] if u in left), None)
            if nxt is None:
                break
            if nxt in seen:
                return path[path.index(nxt):] + [nxt]  # each needs the next
            path.append(nxt)
            seen.add(nxt)
            node = nxt
    return left
