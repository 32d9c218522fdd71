"""The model registry: immutable versions, mutable aliases with an append-only history, and events.

Functions take a Session; the caller owns the transaction. Version numbers and alias moves are made
inside write transactions that lock the model row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite
transactions start with ``BEGIN IMMEDIATE``), so concurrent writers never skip, duplicate or lose one. A
model row that does not exist yet cannot be locked: :func:`get_or_create_model` creates it through
:func:`~mlopsctl.store.db.get_or_create`, so writers racing to create it all end up holding the one row.
"""

from __future__ import annotations

import getpass
import re
import socket
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from mlopsctl.contract import Contract
from mlopsctl.errors import ConflictError, InvalidInputError, NotFoundError
from mlopsctl.store.db import get_or_create
from mlopsctl.store.models import Alias, AliasMove, Event, ModelVersion, RegisteredModel, utcnow

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
NAME_RULE = "1-100 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"


def actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


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


# ---- models and versions ------------------------------------------------------------------------------

def get_model(s: Session, name: str, *, lock: bool = False) -> RegisteredModel:
    q = select(RegisteredModel).where(RegisteredModel.name == name)
    model = s.scalar(q.with_for_update() if lock else q)
    if model is None:
        known = s.scalars(select(RegisteredModel.name).order_by(RegisteredModel.name).limit(20)).all()
        raise NotFoundError(f"model {name!r} does not exist; registered: {', '.join(known) or '(none yet)'}.")
    return model


def get_or_create_model(s: Session, name: str) -> RegisteredModel:
    """The model row, locked (an existing one) or created by this transaction (a new one: another
    transaction creating it waits on the unique name until this one ends, then locks it)."""
    validate_name(name)
    q = select(RegisteredModel).where(RegisteredModel.name == name).with_for_update()
    return get_or_create(s, q, lambda: RegisteredModel(name=name))


def create_version(s: Session, model: RegisteredModel, **fields: Any) -> ModelVersion:
    """The next consecutive version (call inside a write transaction holding the model row)."""
    if s.scalar(select(ModelVersion.version).where(ModelVersion.model_id == model.id,
                                                   ModelVersion.run_id == fields["run_id"])) is not None:
        existing = s.scalar(select(ModelVersion.version).where(ModelVersion.model_id == model.id,
                                                               ModelVersion.run_id == fields["run_id"]))
        raise ConflictError(f"run {fields['run_id']} is already registered as {model.name}/{existing}.")
    n = (s.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)) or 0) + 1
    mv = ModelVersion(model_id=model.id, version=n, created_by=actor(), **fields)
    s.add(mv)
    s.flush()
    return mv


def get_version(s: Session, model: RegisteredModel, version: int) -> ModelVersion:
    mv = s.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == version))
    if mv is None:
        latest = s.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id))
        raise NotFoundError(
            f"{model.name} has no version {version}; " + (f"versions are 1 to {latest}." if latest else "it has no versions yet.")
        )
    return mv


def alias_holder(s: Session, model: RegisteredModel, alias: str) -> ModelVersion | None:
    a = s.scalar(select(Alias).where(Alias.model_id == model.id, Alias.name == alias))
    return a.version if a else None


def resolve(s: Session, ref: ModelRef) -> ModelVersion:
    """The version a reference points at (one indexed query for ``name@alias``)."""
    if ref.version is not None:
        return get_version(s, get_model(s, ref.name), ref.version)
    if ref.alias is None:
        raise InvalidInputError(f"model reference {ref.name!r} needs a version or an alias, as in {ref.name}/3 or {ref.name}@production.")
    mv = s.scalar(
        select(ModelVersion).join(Alias, Alias.version_id == ModelVersion.id).join(RegisteredModel, RegisteredModel.id == Alias.model_id)
        .where(RegisteredModel.name == ref.name, Alias.name == ref.alias)
    )
    if mv is None:
        model = get_model(s, ref.name)  # raises when the model is unknown
        names = [a.name for a in model.aliases]
        raise NotFoundError(
            f"{ref.name} has no alias {ref.alias!r}; "
            + (f"its aliases are {', '.join(names)}." if names else f"promote a version first (mlopsctl promote {ref.name} 1 --alias {ref.alias}).")
        )
    return mv


@dataclass
class LoadedModel:
    """A resolved version with its verified ONNX bytes and contract (what predict and serve need)."""

    name: str
    version: int
    onnx_sha256: str
    onnx: bytes
    contract: Contract
    heldout_sha256: str | None = None


# ---- aliases ------------------------------------------------------------------------------------------

def move_alias(
    s: Session, model: RegisteredModel, alias: str, target: ModelVersion, *, action: str, reason: str,
    forced: bool = False, gate: dict[str, Any] | None = None, who: str | None = None,
) -> AliasMove:
    """Point ``alias`` at ``target`` and append the move to the history (caller holds the model row)."""
    validate_name(alias, "alias")
    current = s.scalar(select(Alias).where(Alias.model_id == model.id, Alias.name == alias))
    from_version = current.version.version if current else None
    if current is None:
        s.add(Alias(model_id=model.id, name=alias, version_id=target.id))
    else:
        current.version_id = target.id
        current.updated_at = utcnow()
    move = AliasMove(model_id=model.id, alias=alias, from_version=from_version, to_version=target.version,
                     action=action, forced=forced, reason=reason, actor=who or actor(), gate=gate)
    s.add(move)
    s.flush()
    return move


def history(s: Session, model: RegisteredModel, alias: str | None = None) -> list[AliasMove]:
    q = select(AliasMove).where(AliasMove.model_id == model.id)
    if alias:
        q = q.where(AliasMove.alias == alias)
    return list(s.scalars(q.order_by(AliasMove.id)))


def rollback_target(moves: list[AliasMove]) -> int | None:
    """The holder before the current one, skipping moves that a rollback already undid (a stack)."""
    stack: list[int] = []
    for m in moves:
        if m.action == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != m.to_version:
                stack.append(m.to_version)
        else:
            stack.append(m.to_version)
    return stack[-2] if len(stack) >= 2 else None


# ---- events -------------------------------------------------------------------------------------------

def add_event(s: Session, kind: str, message: str, *, model: str | None = None, version: int | None = None,
              run_id: int | None = None, payload: dict[str, Any] | None = None) -> Event:
    e = Event(kind=kind, message=message, model=model, version=version, run_id=run_id, payload=payload or {},
              actor=actor())
    s.add(e)
    return e


def list_events(s: Session, model: str | None = None, limit: int = 200) -> list[Event]:
    q = select(Event).order_by(Event.id.desc()).limit(limit)
    if model:
        q = q.where(Event.model == model)
    return list(reversed(s.scalars(q).all()))


def list_models(s: Session) -> list[RegisteredModel]:
    return list(s.scalars(select(RegisteredModel).options(
        selectinload(RegisteredModel.versions), selectinload(RegisteredModel.aliases).selectinload(Alias.version)
    ).order_by(RegisteredModel.name)))


def latest_monitor_results(s: Session, model: str) -> dict[str, Any]:
    """The newest drift share and live metric recorded for ``model`` (for the server's /metrics gauges)."""
    from mlopsctl.store.models import MonitorResult

    out: dict[str, Any] = {}
    for kind in ("drift", "live_metric"):
        r = s.scalar(select(MonitorResult).where(MonitorResult.model == model, MonitorResult.kind == kind)
                     .order_by(MonitorResult.id.desc()).limit(1))
        if r is not None:
            out[kind] = {"value": r.value, "version": r.version, "details": r.details}
    return out
