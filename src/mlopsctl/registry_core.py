"""The registry's reads that the server needs, on SQLAlchemy Core: model references (``name``, ``name/3``,
``name@alias``) parsed and resolved to a version row, and the latest monitoring results.

They go through :mod:`mlopsctl.store.tables`, not the ORM, so that the server (its preflight, each worker's
model load, reload poller and /metrics) pays for no ``sqlalchemy.orm`` and no mapped classes (~0.18 s of a
server's start, and their memory). :mod:`mlopsctl.registry` re-exports these names and runs the same
queries on its sessions' connections.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mlopsctl.contract import Contract
from mlopsctl.errors import InvalidInputError, NotFoundError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
NAME_RULE = "1-100 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"


def validate_name(name: str, what: str = "model name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInputError(f"{what} {name!r} is invalid; use {NAME_RULE}.")
    return name


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}/{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


def parse_ref(ref: str, default_alias: str | None = None) -> ModelRef:
    """``name`` (the default alias), ``name/3`` (a version) or ``name@alias``."""
    text = (ref or "").strip()
    if "/" in text:
        name, _, v = text.partition("/")
        if not (v.isascii() and v.isdigit()) or int(v) < 1:
            raise InvalidInputError(f"model reference {ref!r} has an invalid version {v!r}; use e.g. {name or 'my-model'}/3.")
        return ModelRef(validate_name(name), version=int(v))
    if "@" in text:
        name, _, alias = text.partition("@")
        return ModelRef(validate_name(name), alias=validate_name(alias, "alias"))
    return ModelRef(validate_name(text), alias=default_alias)


@dataclass
class LoadedModel:
    """A resolved version with its verified ONNX bytes and contract (what predict and serve need)."""

    name: str
    version: int
    onnx_sha256: str
    onnx: bytes
    contract: Contract
    heldout_sha256: str | None = None


def unknown_model(conn: Any, name: str) -> NotFoundError:
    """The error for a model name that is not registered (it lists up to 20 that are)."""
    from sqlalchemy import select

    from mlopsctl.store.tables import registered_models as rm

    known = conn.scalars(select(rm.c.name).order_by(rm.c.name).limit(20)).all()
    return NotFoundError(f"model {name!r} does not exist; registered: {', '.join(known) or '(none yet)'}.")


def unknown_version(conn: Any, name: str, model_id: int, version: int) -> NotFoundError:
    """The error for a version that model ``model_id`` does not have (it says which ones it has)."""
    from sqlalchemy import func, select

    from mlopsctl.store.tables import model_versions as mv

    latest = conn.scalar(select(func.max(mv.c.version)).where(mv.c.model_id == model_id))
    return NotFoundError(f"{name} has no version {version}; "
                         + (f"versions are 1 to {latest}." if latest else "it has no versions yet."))


def resolve_row(conn: Any, ref: ModelRef) -> Any:
    """The ``model_versions`` row a reference points at, on a Core connection (one indexed query when it
    resolves; the errors name what exists: the registered models, the model's versions or aliases)."""
    from sqlalchemy import select

    from mlopsctl.store.tables import aliases, model_versions as mv, registered_models as rm

    if ref.version is None and ref.alias is None:
        raise InvalidInputError(f"model reference {ref.name!r} needs a version or an alias, as in {ref.name}/3 or {ref.name}@production.")
    q = select(mv).join(rm, rm.c.id == mv.c.model_id).where(rm.c.name == ref.name)
    if ref.version is not None:
        row = conn.execute(q.where(mv.c.version == ref.version)).first()
    else:
        row = conn.execute(q.join(aliases, aliases.c.version_id == mv.c.id)
                           .where(aliases.c.model_id == rm.c.id, aliases.c.name == ref.alias)).first()
    if row is not None:
        return row
    model_id = conn.scalar(select(rm.c.id).where(rm.c.name == ref.name))
    if model_id is None:
        raise unknown_model(conn, ref.name)
    if ref.version is not None:
        raise unknown_version(conn, ref.name, model_id, ref.version)
    names = conn.scalars(select(aliases.c.name).where(aliases.c.model_id == model_id).order_by(aliases.c.name)).all()
    raise NotFoundError(
        f"{ref.name} has no alias {ref.alias!r}; "
        + (f"its aliases are {', '.join(names)}." if names else f"promote a version first (mlopsctl promote {ref.name} 1 --alias {ref.alias}).")
    )


def latest_monitor_results(conn: Any, model: str) -> dict[str, Any]:
    """The newest drift share and live metric recorded for ``model`` (for the server's /metrics gauges)."""
    from sqlalchemy import select

    from mlopsctl.store.tables import monitor_results as mr

    out: dict[str, Any] = {}
    for kind in ("drift", "live_metric"):
        r = conn.execute(select(mr.c.value, mr.c.version, mr.c.details).where(mr.c.model == model, mr.c.kind == kind)
                         .order_by(mr.c.id.desc()).limit(1)).first()
        if r is not None:
            out[kind] = {"value": r.value, "version": r.version, "details": r.details}
    return out
