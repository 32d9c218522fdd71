"""The model registry: immutable versions, mutable aliases with an append-only history, and events.

Functions take a Session; the caller owns the transaction. Version numbers and alias moves are made
inside write transactions that lock the model row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite
transactions start with ``BEGIN IMMEDIATE``), so concurrent writers never skip, duplicate or lose one. A
model row that does not exist yet cannot be locked: :func:`get_or_create_model` creates it through
:func:`~mlopsctl.store.db.get_or_create`, so writers racing to create it all end up holding the one row.
"""

from __future__ import annotations

import getpass
import socket
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from mlopsctl.errors import ConflictError
from mlopsctl import registry_core
from mlopsctl.registry_core import (NAME_RE, NAME_RULE, LoadedModel, ModelRef,  # noqa: F401 - re-exported
                                    parse_ref, resolve_row, unknown_model, unknown_version, validate_name)
from mlopsctl.store.db import get_or_create
from mlopsctl.store.models import Alias, AliasMove, Event, ModelVersion, RegisteredModel, utcnow


def actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# ---- models and versions ------------------------------------------------------------------------------

def get_model(s: Session, name: str, *, lock: bool = False) -> RegisteredModel:
    q = select(RegisteredModel).where(RegisteredModel.name == name)
    model = s.scalar(q.with_for_update() if lock else q)
    if model is None:
        raise unknown_model(s.connection(), name)
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
        raise unknown_version(s.connection(), model.name, model.id, version)
    return mv


def alias_holder(s: Session, model: RegisteredModel, alias: str) -> ModelVersion | None:
    a = s.scalar(select(Alias).where(Alias.model_id == model.id, Alias.name == alias))
    return a.version if a else None


def resolve(s: Session, ref: ModelRef) -> ModelVersion:
    """The version a reference points at (:func:`mlopsctl.registry_core.resolve_row` on the session's connection)."""
    return s.get_one(ModelVersion, resolve_row(s.connection(), ref).id)


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
    """The newest drift share and live metric recorded for ``model`` (:mod:`mlopsctl.registry_core`)."""
    return registry_core.latest_monitor_results(s.connection(), model)
