"""Engine, pragmas, sessions and automatic migration on open.

SQLite runs in WAL mode with a busy timeout and foreign keys on, and every transaction starts with
``BEGIN IMMEDIATE`` so that concurrent writers queue on the busy timeout instead of failing with
"database is locked" when a read transaction tries to upgrade. Other dialects use their defaults.
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mlopsctl.errors import StoreError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


@dataclass
class Store:
    """An open, migrated store: one engine per process and URL, and a session factory."""

    url: str
    engine: Engine
    sessions: sessionmaker[Session]
    read_sessions: sessionmaker[Session]

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """One short write transaction: committed on success, rolled back on any error."""
        with self.sessions.begin() as s:
            yield s

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction; on SQLite it takes no write lock, so it never waits for writers."""
        with self.read_sessions.begin() as s:
            yield s

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def make_engine(url: str, busy_timeout_ms: int = 30000) -> Engine:
    try:
        u = make_url(url)
    except ArgumentError:
        raise StoreError(
            f"store.url {url!r} is not a valid SQLAlchemy URL; use e.g. sqlite:///.mlops/mlops.db "
            "or postgresql+psycopg://user@host/db."
        ) from None
    if u.get_backend_name() != "sqlite":
        try:
            return create_engine(u, pool_pre_ping=True)
        except Exception as e:  # missing driver and the like
            raise StoreError(f"cannot use store.url {u.render_as_string()}: {e}.") from None

    path = _sqlite_path(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot open the store at {url}: cannot create {path.parent} ({e.strerror}).") from None
    engine = create_engine(u, connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no branch - trivial
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        if path is not None:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("mlops_readonly") else "BEGIN IMMEDIATE")

    return engine


_STORES: dict[tuple[str, int], Store] = {}


def open_store(url: str, busy_timeout_ms: int = 30000, migrate: bool = True) -> Store:
    """Open (and by default migrate) the store at ``url``; cached per process and URL."""
    key = (url, busy_timeout_ms)
    if key in _STORES:
        return _STORES[key]
    engine = make_engine(url, busy_timeout_ms)
    try:
        if migrate:
            upgrade(engine, url)
        else:
            check_version(engine)
    except OperationalError as e:
        engine.dispose()
        raise StoreError(f"cannot open the store at {url}: {e.orig}.") from None
    except DBAPIError as e:
        engine.dispose()
        raise StoreError(f"cannot open the store at {url}: {e.orig}.") from None
    store = Store(url=url, engine=engine, sessions=sessionmaker(engine, expire_on_commit=False),
                  read_sessions=sessionmaker(engine.execution_options(mlops_readonly=True), expire_on_commit=False))
    _STORES[key] = store
    return store


def close_all() -> None:
    """Dispose every cached engine (tests, and processes that fork)."""
    for store in _STORES.values():
        store.dispose()
    _STORES.clear()


# --- migrations -------------------------------------------------------------------------------------

def _alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()  # type: ignore[return-value]


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_version(engine: Engine) -> tuple[str | None, str]:
    """(current, head); raises StoreError when the store was written by a newer mlopsctl."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    current = current_revision(engine)
    if current is not None and current not in {r.revision for r in script.walk_revisions()}:
        raise StoreError(
            f"the store is at schema revision {current!r}, newer than this mlopsctl understands "
            f"(latest known: {head}); upgrade mlopsctl (pip install -U mlopsctl)."
        )
    return current, head  # type: ignore[return-value]


@contextlib.contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """Serialise migrations between processes sharing one SQLite file (others: the DB's own DDL locks)."""
    path = _sqlite_path(url)
    if path is None:
        yield
        return
    lock_path = path.with_name(path.name + ".migrate.lock")
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def backup_sqlite(path: Path, label: str) -> Path:
    """Copy a SQLite file consistently (online backup API) next to itself; returns the copy's path."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    dest = path.with_name(f"{path.name}.{label}.{stamp}.bak")
    src = sqlite3.connect(path)
    try:
        dst = sqlite3.connect(dest)
        with dst:
            src.backup(dst)
        dst.close()
    finally:
        src.close()
    return dest


def known_revisions() -> list[str]:
    """Our migrations form one chain named m001_..., m002_...: the file names, in order (no alembic import)."""
    return sorted(p.stem for p in (MIGRATIONS_DIR / "versions").glob("m[0-9][0-9][0-9]_*.py"))


def _stored_revision(engine: Engine) -> str | None:
    """The store's alembic revision read with plain SQL (None for a blank store)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        conn = conn.execution_options(mlops_readonly=True)
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine, url: str) -> Path | None:
    """Bring the store to the head revision; back up a non-empty SQLite file first. Returns the backup.

    The common case, a store already at head, is one query and never imports alembic."""
    known = known_revisions()
    if known and _stored_revision(engine) == known[-1]:
        return None
    from alembic import command

    current, head = check_version(engine)
    if current == head:
        return None
    with _migration_lock(url):
        current, head = check_version(engine)  # another process may have migrated meanwhile
        if current == head:
            return None
        backup = None
        path = _sqlite_path(url)
        if path is not None and path.exists() and inspect(engine).get_table_names():
            backup = backup_sqlite(path, f"before-{head}")
        command.upgrade(_alembic_config(engine), "head")
        return backup
