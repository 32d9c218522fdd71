"""Use cases of the dashboard's runs pages: search runs (filter, sort, page) and compare many runs at once.

Everything is done in SQL so that a store of 10,000 runs x 20 metrics x 20 params answers a page in a few
tens of milliseconds: the page's runs are chosen by the database (a metric's latest value as a correlated
subquery on the ``(run_id, key, step)`` index, each param or tag key as one outer join on its primary key,
or a run attribute), and only those runs' values are read back. A metric's value is its latest one, as everywhere else (highest step, then the
latest timestamp, then the latest row: :func:`mlopsctl.tracking.latest_metrics`).

Filters are a small language, close to MLflow's search syntax::

    metrics.roc_auc > 0.9 and params.model.max_depth = 5 and tags.owner ~ ann and status = FINISHED

Fields: ``metrics.<key>``, ``params.<key>``, ``tags.<key>`` (a key with spaces or an operator in it goes in
backticks: ``params.`my key` = 3``), ``status``, ``experiment``, ``name``, ``model``. Operators: ``=``
``!=`` ``<`` ``<=`` ``>`` ``>=`` and ``~`` (contains). Metrics compare as numbers; params and tags compare
as numbers when both sides are numbers, else as text.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, Float, and_, case, cast, func, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.functions import FunctionElement

from mlopsctl.common import iso, jsonable
from mlopsctl.config import Settings
from mlopsctl.errors import InvalidInputError, NotFoundError
from mlopsctl.project import open_project
from mlopsctl.store.models import Experiment, Metric, ModelVersion, Param, RegisteredModel, Run, Tag

KINDS = ("metrics", "params", "tags")
ATTRIBUTES = {"id": Run.id, "name": Run.name, "status": Run.status, "experiment": Experiment.name,
              "model": Run.model_class, "started_at": Run.started_at, "duration_s": Run.duration_s}
TEXT_ATTRIBUTES = ("status", "experiment", "name", "model")
OPERATORS = ("<=", ">=", "!=", "=", "<", ">", "~")
NUMBER = r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"
MAX_PER_PAGE = 500
DEFAULT_METRIC_COLUMNS = 8
MAX_COMPARE = 200
KEYS_TTL_S = 10.0

_CLAUSE = re.compile(r"^\s*(?:(metrics|params|tags)\.(`[^`]+`|\"[^\"]+\"|[^\s<>=!~]+)|(\w+))\s*(<=|>=|!=|=|<|>|~)\s*(.*?)\s*$",
                     re.S)


@dataclass(frozen=True)
class Field:
    """A sortable, filterable, showable thing: ``metrics.auc``, ``params.seed``, ``tags.owner`` or a run
    attribute (kind ``"run"``)."""

    kind: str
    key: str

    @property
    def text(self) -> str:
        return self.key if self.kind == "run" else f"{self.kind}.{self.key}"


def parse_field(text: str) -> Field:
    """``metrics.auc``, ``params.model.max_depth`` (everything after the first dot is the key), or a run
    attribute such as ``started_at``."""
    text = (text or "").strip()
    kind, dot, key = text.partition(".")
    if dot and kind in KINDS and key:
        return Field(kind, key.strip("`"))
    if text in ATTRIBUTES:
        return Field("run", text)
    raise InvalidInputError(
        f"{text!r} is not a run field; use metrics.<key>, params.<key>, tags.<key> or one of {', '.join(ATTRIBUTES)}.")


@dataclass(frozen=True)
class Clause:
    field: Field
    op: str
    value: str


def parse_filter(text: str | None) -> list[Clause]:
    """``metrics.auc > 0.9 and params.seed = 42`` -> clauses (an empty text: none)."""
    if not text or not text.strip():
        return []
    clauses = []
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.I):
        m = _CLAUSE.match(part)
        if not m or not m.group(5):
            raise InvalidInputError(
                f"filter {part.strip()!r} is not <field> <op> <value>; e.g. metrics.roc_auc > 0.9 and params.seed = 42 "
                f"(operators: {' '.join(OPERATORS)}).")
        kind, key, attr, op, value = m.groups()
        if kind:
            field = Field(kind, key.strip("`\""))
        elif attr in TEXT_ATTRIBUTES:
            field = Field("run", attr)
        else:
            raise InvalidInputError(f"filter field {attr!r} is unknown; use metrics.<key>, params.<key>, tags.<key>, "
                                    f"{', '.join(TEXT_ATTRIBUTES)}.")
        value = value.strip().strip("'\"")
        if field.kind == "metrics" and not re.fullmatch(NUMBER, value):
            raise InvalidInputError(f"filter {part.strip()!r} compares a metric with {value!r}; metrics compare with numbers.")
        if field.kind == "metrics" and op == "~":
            raise InvalidInputError(f"filter {part.strip()!r}: ~ (contains) works on params, tags and text fields, not metrics.")
        clauses.append(Clause(field, op, value))
    return clauses


def latest_value(key: str) -> Any:
    """A correlated subquery: this run's latest value of metric ``key`` (NULL when it has none)."""
    return (select(Metric.value).where(Metric.run_id == Run.id, Metric.key == key)
            .order_by(Metric.step.desc(), Metric.timestamp.desc(), Metric.id.desc()).limit(1).scalar_subquery())


class looks_numeric(FunctionElement):
    """True where a text column holds a number: a regular expression in general, GLOB patterns on SQLite
    (whose REGEXP is a Python function called per row: 4x slower on 10,000 runs)."""

    type = Boolean()
    inherit_cache = True
    name = "looks_numeric"


@compiles(looks_numeric)
def _looks_numeric(element: Any, compiler: Any, **kw: Any) -> str:
    (arg,) = element.clauses
    return compiler.process(arg.regexp_match(f"^{NUMBER}$"), **kw)


@compiles(looks_numeric, "sqlite")
def _looks_numeric_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    x = compiler.process(list(element.clauses)[0], **kw)
    return (f"({x} GLOB '*[0-9]*' AND {x} NOT GLOB '*[^0-9.eE+-]*' AND {x} NOT GLOB '?*[+-]*[+-]*' "
            f"AND {x} NOT GLOB '*.*.*')")


def _as_number(expr: Any) -> Any:
    """The text ``expr`` as a float where it is one, else NULL (no dialect casts non-numbers)."""
    return case((looks_numeric(expr), cast(expr, Float)), else_=None)


class RunQuery:
    """``SELECT runs.id ...`` with the expressions that fields need: a param or tag key is one outer join
    (read once per run however often the filter and the sort use it); a metric is a correlated subquery
    for its latest value."""

    def __init__(self) -> None:
        self.joins: dict[tuple[str, str], Any] = {}

    def expr(self, field: Field) -> Any:
        if field.kind == "metrics":
            return latest_value(field.key)
        if field.kind == "run":
            return ATTRIBUTES[field.key]
        if (field.kind, field.key) not in self.joins:
            self.joins[(field.kind, field.key)] = aliased(Param if field.kind == "params" else Tag)
        return self.joins[(field.kind, field.key)].value

    def condition(self, c: Clause) -> Any:
        expr = self.expr(c.field)
        if c.op == "~":
            return expr.contains(c.value, autoescape=True)
        if c.field.kind == "metrics":
            return _compare(expr, c.op, float(c.value))
        if c.field.kind in ("params", "tags") and re.fullmatch(NUMBER, c.value):
            number = _compare(_as_number(expr), c.op, float(c.value))
            return or_(number, expr == c.value) if c.op == "=" else number
        if c.op == "!=":
            return or_(expr != c.value, expr.is_(None))
        return _compare(expr, c.op, c.value)

    def order(self, field: Field, descending: bool) -> list[Any]:
        expr = self.expr(field)
        keys = [_as_number(expr), expr] if field.kind in ("params", "tags") else [expr]
        ordered = [(k.desc() if descending else k.asc()).nulls_last() for k in keys]
        return ordered + [Run.id.desc() if descending else Run.id.asc()]

    def where(self, experiment: str | None, status: str | None, q: str | None, clauses: list[Clause]) -> list[Any]:
        where = [self.condition(c) for c in clauses]
        if experiment:
            where.append(Experiment.name == experiment)
        if status:
            where.append(Run.status == status.upper())
        if q and q.strip():
            text = q.strip()
            match = or_(Run.name.contains(text, autoescape=True), Run.model_class.contains(text, autoescape=True),
                        Experiment.name.contains(text, autoescape=True))
            where.append(or_(match, Run.id == int(text)) if text.isdigit() else match)
        return where

    def select(self, *columns: Any) -> Any:
        q = select(Run.id, *columns).join(Experiment, Experiment.id == Run.experiment_id)
        for (_, key), alias in self.joins.items():
            q = q.outerjoin(alias, and_(alias.run_id == Run.id, alias.key == key))
        return q


def _compare(expr: Any, op: str, value: Any) -> Any:
    return {"=": expr == value, "!=": expr != value, "<": expr < value, "<=": expr <= value,
            ">": expr > value, ">=": expr >= value}[op]


_KEYS: dict[str, tuple[float, tuple[Any, ...], dict[str, list[str]]]] = {}


def known_keys(s: Any, store_url: str) -> dict[str, list[str]]:
    """Every metric, param and tag key in the store, and the experiment names. Finding the keys reads every
    metric and param row (tens of ms at 10,000 runs), so they are kept for ``KEYS_TTL_S`` seconds per
    store, or until a run or a metric row is added."""
    mark = (s.scalar(select(func.max(Run.id))), s.scalar(select(func.max(Metric.id))))
    cached = _KEYS.get(store_url)
    if cached and cached[1] == mark and time.monotonic() - cached[0] < KEYS_TTL_S:
        return cached[2]
    keys = {kind: sorted(s.scalars(select(model.key).distinct()).all())
            for kind, model in (("metrics", Metric), ("params", Param), ("tags", Tag))}
    keys["experiments"] = sorted(s.scalars(select(Experiment.name)).all())
    _KEYS[store_url] = (time.monotonic(), mark, keys)
    return keys


def _page_number(page: Any) -> int:
    text = str(page if page is not None else 1).strip()
    if not text.isdigit() or int(text) < 1:
        raise InvalidInputError(f"page {text!r} is not a page number; pages are numbered from 1.")
    return int(text)


def _columns(columns: list[str] | None, keys: dict[str, list[str]], sort: Field) -> list[Field]:
    if columns is None:
        chosen = [Field("metrics", k) for k in keys["metrics"][:DEFAULT_METRIC_COLUMNS]]
        if sort.kind != "run" and sort not in chosen:
            chosen.append(sort)
        return chosen
    out = []
    for text in columns:
        field = parse_field(text)
        if field.kind == "run":
            raise InvalidInputError(f"column {text!r}: run attributes are always shown; choose metrics.<key>, "
                                    "params.<key> or tags.<key>.")
        if field not in out:
            out.append(field)
    return out


def search_runs(settings: Settings, *, experiment: str | None = None, status: str | None = None,
                q: str | None = None, filter: str | None = None, sort: str = "started_at", order: str = "desc",
                page: Any = 1, per_page: int = 50, columns: list[str] | None = None) -> dict[str, Any]:
    """One page of runs, filtered and sorted in SQL, with the values of the chosen columns.

    ``columns``: ``["metrics.auc", "params.seed", ...]``; None: the first metric keys (and the sort key)."""
    clauses = parse_filter(filter)
    sort_field = parse_field(sort or "started_at")
    if order not in ("asc", "desc"):
        raise InvalidInputError(f"order {order!r} must be asc or desc.")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise InvalidInputError(f"per_page must be between 1 and {MAX_PER_PAGE}, got {per_page}.")
    number = _page_number(page)
    project = open_project(settings)
    with project.store.read() as s:
        keys = known_keys(s, project.store.url)
        if experiment and experiment not in keys["experiments"]:
            raise NotFoundError(f"experiment {experiment!r} does not exist; known: {', '.join(keys['experiments']) or '(none yet)'}.")
        known = {"metrics": keys["metrics"], "params": keys["params"], "tags": keys["tags"]}
        if sort_field.kind != "run" and sort_field.key not in known[sort_field.kind]:
            raise InvalidInputError(f"cannot sort by {sort_field.text!r}: no run has that {sort_field.kind[:-1]}; "
                                    f"known {sort_field.kind}: {', '.join(known[sort_field.kind][:30]) or '(none)'}.")
        shown = _columns(columns, keys, sort_field)
        rq = RunQuery()
        where = rq.where(experiment, status, q, clauses)
        counted = rq.select().where(*where) if where else select(Run.id)
        total = s.scalar(select(func.count()).select_from(counted.subquery()))
        pages = max(1, -(-total // per_page))
        if number > pages:
            raise NotFoundError(f"page {number} is past the last page ({pages}) of {total} run(s).")
        ordering = rq.order(sort_field, order == "desc")  # after the count: its join is not needed there
        ids = list(s.scalars(rq.select().where(*where).order_by(*ordering)
                             .offset((number - 1) * per_page).limit(per_page)))
        rows = page_rows(s, ids, shown)
    return {"runs": rows, "total": total, "page": number, "pages": pages, "per_page": per_page,
            "sort": sort_field.text, "order": order, "filter": filter or "", "q": q or "",
            "experiment": experiment or "", "status": (status or "").upper(),
            "columns": [f.text for f in shown], "keys": keys}


def page_rows(s: Any, ids: list[int], shown: list[Field]) -> list[dict[str, Any]]:
    """Run rows for ``ids`` (in that order) with the values of the ``shown`` columns: a few queries in all."""
    if not ids:
        return []
    runs = {r.id: r for r in s.execute(
        select(Run.id, Run.name, Run.status, Run.model_class, Run.started_at, Run.duration_s, Experiment.name.label("experiment"))
        .join(Experiment, Experiment.id == Run.experiment_id).where(Run.id.in_(ids)))}
    values: dict[int, dict[str, Any]] = {i: {} for i in ids}
    for kind, model in (("metrics", Metric), ("params", Param), ("tags", Tag)):
        wanted = [f.key for f in shown if f.kind == kind]
        if not wanted:
            continue
        q = select(model.run_id, model.key, model.value).where(model.run_id.in_(ids), model.key.in_(wanted))
        if kind == "metrics":
            q = q.order_by(Metric.step, Metric.timestamp, Metric.id)  # the latest value wins
        for rid, key, value in s.execute(q):
            values[rid][f"{kind}.{key}"] = value
    return [{"id": i, "name": runs[i].name, "experiment": runs[i].experiment, "status": runs[i].status,
             "model": runs[i].model_class, "started_at": iso(runs[i].started_at),
             "duration_s": round(runs[i].duration_s, 3) if runs[i].duration_s is not None else None,
             "values": jsonable({f.text: values[i].get(f.text) for f in shown})} for i in ids]


def parse_run_ids(refs: str | list[str] | None) -> list[int]:
    """``"1,2,3"`` or ``["1", "2,3"]`` -> ``[1, 2, 3]`` (order kept, duplicates dropped)."""
    parts = refs if isinstance(refs, list) else [refs or ""]
    ids: list[int] = []
    for text in (p.strip() for chunk in parts for p in str(chunk).split(",")):
        if not text:
            continue
        if not text.isdigit():
            raise InvalidInputError(f"run id {text!r} is not a number; compare takes ids, as in ?runs=3,4.")
        if int(text) not in ids:
            ids.append(int(text))
    return ids


def compare(settings: Settings, refs: str | list[str] | None) -> dict[str, Any]:
    """Many runs side by side: every param, metric and tag of each, whether the values differ, and the
    model versions each run became. Reads all runs in a handful of queries (50 runs in a few ms)."""
    ids = parse_run_ids(refs)
    if len(ids) < 2:
        raise InvalidInputError("compare needs at least two runs, as in /compare?runs=3,4.")
    if len(ids) > MAX_COMPARE:
        raise InvalidInputError(f"compare takes at most {MAX_COMPARE} runs, got {len(ids)}.")
    with open_project(settings).store.read() as s:
        found = set(s.scalars(select(Run.id).where(Run.id.in_(ids))))
        missing = [str(i) for i in ids if i not in found]
        if missing:
            raise NotFoundError(f"run {', '.join(missing)} does not exist; see /runs.")
        values: dict[str, dict[str, dict[int, Any]]] = {kind: {} for kind in KINDS}
        for kind, model in (("metrics", Metric), ("params", Param), ("tags", Tag)):
            q = select(model.run_id, model.key, model.value).where(model.run_id.in_(ids))
            if kind == "metrics":
                q = q.order_by(Metric.step, Metric.timestamp, Metric.id)
            for rid, key, value in s.execute(q):
                values[kind].setdefault(key, {})[rid] = value
        rows = page_rows(s, ids, [])
        versions = versions_of_runs(s, ids)
    table = {kind: [{"key": key, "values": jsonable([per_run.get(i) for i in ids]),
                     "differs": len({repr(per_run.get(i)) for i in ids}) > 1}
                    for key, per_run in sorted(values[kind].items())] for kind in KINDS}
    for r in rows:
        r["versions"] = versions.get(r["id"], [])
    return {"runs": rows, **table}


def versions_of_runs(s: Any, ids: list[int]) -> dict[int, list[str]]:
    """The registered versions each run became: ``{run_id: ["churn/3", ...]}``."""
    out: dict[int, list[str]] = {}
    for rid, name, version in s.execute(
            select(ModelVersion.run_id, RegisteredModel.name, ModelVersion.version)
            .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
            .where(ModelVersion.run_id.in_(ids)).order_by(RegisteredModel.name, ModelVersion.version)):
        out.setdefault(rid, []).append(f"{name}/{version}")
    return out


def run_page(settings: Settings, ref: str) -> dict[str, Any]:
    """Everything about one run (:func:`mlopsctl.services.runs.show_run`) and the model versions it became."""
    from mlopsctl.services.runs import show_run

    detail = show_run(settings, ref)
    with open_project(settings).store.read() as s:
        detail["versions"] = versions_of_runs(s, [detail["id"]]).get(detail["id"], [])
    return jsonable(detail)
