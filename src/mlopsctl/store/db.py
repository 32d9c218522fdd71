"""Engine, pragmas, sessions and migration on open.

SQLite runs in WAL mode with a busy timeout and foreign keys on, and every transaction starts with
``BEGIN IMMEDIATE`` so that concurrent writers queue on the busy timeout instead of failing with
"database is locked" when a read transaction tries to upgrade. PostgreSQL runs at READ COMMITTED (pinned,
whatever the server's default): writers that must not interleave lock a row (``SELECT ... FOR UPDATE``,
the registry's model row), and rows created by get-or-create go through :func:`get_or_create`.

Migrations: a SQLite store is migrated when it is opened (after a backup), as it belongs to one project. A
server store (PostgreSQL) is shared by a team whose members may run different mlopsctl versions, so it is
never migrated implicitly: opening one whose schema is behind is a StoreError that says to run
``mlopsctl db upgrade`` (:func:`upgrade_store`), which migrates under a PostgreSQL advisory lock.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError

from mlopsctl.common import flocked
from mlopsctl.errors import StoreError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
CONNECT_TIMEOUT_S = 10  # a server store that does not answer: fail after this, not after the OS's minutes
MIGRATION_LOCK_KEY = 0x6D6C6F7073637400  # pg_advisory_lock key ("mlopsct\0"): one migration at a time per database
T = TypeVar("T")


@dataclass
class Store:
    """An open, migrated store: one engine per process and URL. ORM sessions import ``sqlalchemy.orm`` on first
    use; :meth:`transaction` gives the same transactions on Core connections (:mod:`mlopsctl.store.tables`)."""

    url: str = field(repr=False)  # may hold a password
    engine: Engine
    read_engine: Engine = field(init=False, repr=False)  # its transactions begin read-only (plain BEGIN on SQLite)

    def __post_init__(self) -> None:
        self.read_engine = self.engine.execution_options(mlops_readonly=True)

    def session(self) -> contextlib.AbstractContextManager[Session]:
        """One short write transaction: committed on success, rolled back on any error."""
        return self._session(self.engine)

    def read(self) -> contextlib.AbstractContextManager[Session]:
        """A read-only transaction; on SQLite it takes no write lock, so it never waits for writers."""
        return self._session(self.read_engine)

    @contextlib.contextmanager
    def transaction(self, *, write: bool) -> Iterator[Connection]:
        """What :meth:`session` (``write=True``) or :meth:`read` (``write=False``) begins, on a Core connection."""
        with unavailable_as_store_error(self.url), (self.engine if write else self.read_engine).begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _session(self, engine: Engine) -> Iterator[Session]:
        from sqlalchemy.orm import Session

        with unavailable_as_store_error(self.url), Session(engine, expire_on_commit=False) as s, s.begin():
            yield s

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def shown_url(url: str) -> str:
    """The URL as messages show it: any password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def is_server(url: str) -> bool:
    """Whether the store is a database server (shared, migrated only on request) rather than a SQLite file."""
    return make_url(url).get_backend_name() != "sqlite"


def one_line(exc: BaseException) -> str:
    """A driver's message as one line: its first (libpq adds hint lines), without the final period."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__).rstrip(".")


@contextlib.contextmanager
def unavailable_as_store_error(url: str) -> Iterator[None]:
    """A server that cannot be reached or drops the connection mid-way (a driver's OperationalError: also a
    cancelled statement, a deadlock, a server shutting down) is a StoreError (exit 7), not a traceback;
    on SQLite only a lost connection is (its OperationalError also means a bad statement)."""
    try:
        yield
    except DBAPIError as e:
        if not (e.connection_invalidated or (isinstance(e, OperationalError) and is_server(url))):
            raise
        raise StoreError(f"the store at {shown_url(url)} is unavailable: {one_line(e.orig)}.") from None


def make_engine(url: str, busy_timeout_ms: int = 30000) -> Engine:
    try:
        u = make_url(url)
    except ArgumentError:
        raise StoreError(
            f"store.url {url!r} is not a valid SQLAlchemy URL; use e.g. sqlite:///.mlops/mlops.db "
            "or postgresql+psycopg://user@host/db."
        ) from None
    if u.get_backend_name() != "sqlite":
        options: dict[str, Any] = {"pool_pre_ping": True}
        if u.get_backend_name() == "postgresql":
            # the row locks (SELECT ... FOR UPDATE) assume each statement sees what was committed before it
            options["isolation_level"] = "READ COMMITTED"
            if u.get_driver_name() in ("psycopg", "psycopg2") and "connect_timeout" not in u.query:
                options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        try:
            return create_engine(u, **options)
        except ModuleNotFoundError as e:
            fix = ""
            if u.get_backend_name() == "postgresql":  # the [postgres] extra installs psycopg 3
                fix = ("; install it with pip install 'mlopsctl[postgres]'" if u.get_driver_name() == "psycopg"
                       else "; use postgresql+psycopg://... with pip install 'mlopsctl[postgres]'")
            raise StoreError(f"cannot use store.url {shown_url(url)}: the driver module {e.name!r} is not "
                             f"installed{fix}.") from None
        except Exception as e:  # an unknown dialect and the like
            raise StoreError(f"cannot use store.url {shown_url(url)}: {one_line(e)}.") from None

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


def open_store(url: str, busy_timeout_ms: int = 30000, migrate: bool | None = None) -> Store:
    """Open the store at ``url``, cached per process and URL. ``migrate``: None migrates a SQLite store and
    refuses a server store whose schema is behind (see the module docstring); True migrates any store;
    False only refuses a store written by a newer mlopsctl."""
    key = (url, busy_timeout_ms)
    if key in _STORES:
        return _STORES[key]
    engine = make_engine(url, busy_timeout_ms)
    try:
        if migrate or (migrate is None and not is_server(url)):
            upgrade(engine, url)
        elif migrate is None:
            require_head(engine, url)
        else:
            check_version(engine)
    except DBAPIError as e:
        engine.dispose()
        raise StoreError(f"cannot open the store at {shown_url(url)}: {one_line(e.orig)}.") from None
    except BaseException:
        engine.dispose()
        raise
    store = Store(url=url, engine=engine)
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


def require_head(engine: Engine, url: str) -> None:
    """Refuse a server store whose schema is not this mlopsctl's head (one query when it is)."""
    known = known_revisions()
    if known and _stored_revision(engine) == known[-1]:
        return
    current, head = check_version(engine)
    if current == head:
        return
    if current is None:
        raise StoreError(f"the store at {shown_url(url)} has no mlopsctl tables yet; create them with "
                         "`mlopsctl db upgrade`.")
    raise StoreError(f"the store at {shown_url(url)} is at schema revision {current!r}, this mlopsctl needs "
                     f"{head!r}; a shared store is never migrated implicitly: run `mlopsctl db upgrade`.")


@contextlib.contextmanager
def _migration_lock(url: str, engine: Engine | None = None) -> Iterator[None]:
    """Serialise migrations between processes: a lock file next to a SQLite file; on PostgreSQL a
    session-level advisory lock on the database (Alembic takes none: two upgrades at once would both try
    to create the same tables); other databases rely on their own DDL locks."""
    if engine is not None and engine.dialect.name == "postgresql":
        from sqlalchemy import text

        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                conn.commit()
        return
    path = _sqlite_path(url)
    if path is None:
        yield
        return
    with flocked(path.with_name(path.name + ".migrate.lock")):
        yield


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


def upgrade(engine: Engine, url: str,
            on_migrate: Callable[[str | None, str], None] | None = None) -> Path | None:
    """Bring the store to the head revision; back up a non-empty SQLite file first. Returns the backup.
    ``on_migrate(current, head)`` is called, under the migration lock, just before migrating.

    The common case, a store already at head, is one query and never imports alembic."""
    known = known_revisions()
    if known and _stored_revision(engine) == known[-1]:
        return None
    from alembic import command

    current, head = check_version(engine)
    if current == head:
        return None
    with _migration_lock(url, engine):
        current, head = check_version(engine)  # another process may have migrated meanwhile
        if current == head:
            return None
        if on_migrate is not None:
            on_migrate(current, head)
        backup = None
        path = _sqlite_path(url)
        if path is not None and path.exists() and inspect(engine).get_table_names():
            backup = backup_sqlite(path, f"before-{head}")
        command.upgrade(_alembic_config(engine), "head")
        return backup


# --- `mlopsctl db current | upgrade` ----------------------------------------------------------------

def store_status(url: str) -> dict[str, Any]:
    """The store's schema revision against this mlopsctl's head, read without migrating (or creating) it."""
    path = _sqlite_path(url) if not is_server(url) else None
    current = None
    if path is None or path.exists():
        engine = make_engine(url)
        try:
            current, _ = check_version(engine)
        except DBAPIError as e:
            raise StoreError(f"cannot open the store at {shown_url(url)}: {one_line(e.orig)}.") from None
        finally:
            engine.dispose()
    head = head_revision()
    status = "up to date" if current == head else ("blank" if current is None else "behind")
    return {"store": shown_url(url), "dialect": make_url(url).get_backend_name(), "current": current, "head": head,
            "status": status}


def upgrade_store(url: str, busy_timeout_ms: int = 30000) -> dict[str, Any]:
    """Migrate the store to this mlopsctl's head (what ``mlopsctl db upgrade`` does, for any store)."""
    engine = make_engine(url, busy_timeout_ms)
    done: list[tuple[str | None, str]] = []
    try:
        backup = upgrade(engine, url, on_migrate=lambda current, head: done.append((current, head)))
        current = current_revision(engine)
    except DBAPIError as e:
        raise StoreError(f"cannot upgrade the store at {shown_url(url)}: {one_line(e.orig)}.") from None
    finally:
        engine.dispose()
    return {"store": shown_url(url), "from": done[0][0] if done else current, "to": current,
            "upgraded": bool(done), "backup": str(backup) if backup else None}


# --- rows that two processes may create at once ------------------------------------------------------

def get_or_create(s: Session, query: Any, make: Callable[[], T]) -> T:
    """The row ``query`` selects, or a new one from ``make()`` when there is none.

    On a server, two transactions can both find no row and both insert it; the unique constraint lets one
    win. The loser's insert runs in a savepoint: it waits for the winner's commit, fails, is rolled back
    alone, and the loser reads (and, if ``query`` says FOR UPDATE, locks) the winner's row, its own
    transaction intact. SQLite never gets there (``BEGIN IMMEDIATE`` serialises writers)."""
    found = s.scalar(query)
    if found is not None:
        return found
    try:
        with s.begin_nested():
            obj = make()
            s.add(obj)
            s.flush()
        return obj
    except IntegrityError:
        found = s.scalar(query)
        if found is None:  # a different constraint failed
            raise
        return found
