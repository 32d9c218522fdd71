"""The store: migrations (SQLite, and a real PostgreSQL server), pragmas, version checks, backups and
unusable URLs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from mlopsctl.errors import StoreError
from mlopsctl.store import db
from mlopsctl.store.models import Base


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


def backups(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.bak"))


def revisions_oldest_first() -> list[str]:
    script = ScriptDirectory(str(db.MIGRATIONS_DIR))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def reflected_schema(engine) -> dict:
    """Tables -> columns (name, type in the database's own words, nullable), primary key, foreign keys,
    indexes (not those PostgreSQL makes for unique constraints), unique constraints."""
    insp = inspect(engine)
    out = {}
    for table in insp.get_table_names():
        if table == "alembic_version":
            continue
        out[table] = {
            "columns": [(c["name"], c["type"].compile(dialect=engine.dialect), bool(c["nullable"]))
                        for c in insp.get_columns(table)],
            "pk": sorted(insp.get_pk_constraint(table)["constrained_columns"]),
            "fks": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]),
                           (f.get("options") or {}).get("ondelete")) for f in insp.get_foreign_keys(table)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(table)
                              if not i.get("duplicates_constraint")),
            "uniques": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
        }
    return out


def metadata_schema(dialect_name: str = "sqlite") -> dict:
    """The same view of ``Base.metadata`` (what the models declare), types compiled for ``dialect_name``."""
    from sqlalchemy import UniqueConstraint
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = {"sqlite": sqlite, "postgresql": postgresql}[dialect_name].dialect()
    out = {}
    for table in Base.metadata.sorted_tables:
        out[table.name] = {
            "columns": [(c.name, c.type.compile(dialect=dialect), bool(c.nullable)) for c in table.columns],
            "pk": sorted(c.name for c in table.primary_key.columns),
            "fks": sorted((tuple(e.parent.name for e in fk.elements), fk.elements[0].column.table.name,
                           tuple(e.column.name for e in fk.elements), fk.ondelete) for fk in table.foreign_key_constraints),
            "indexes": sorted((i.name, tuple(c.name for c in i.columns), bool(i.unique)) for i in table.indexes),
            "uniques": sorted(tuple(c.name for c in u.columns) for u in table.constraints
                              if isinstance(u, UniqueConstraint)),
        }
    return out


# ---- migrations -----------------------------------------------------------------------------------------

def test_blank_store_is_migrated_to_exactly_the_models(tmp_path):
    path = tmp_path / "s" / "mlops.db"  # the folder does not exist yet
    store = db.open_store(url_of(path))
    assert path.is_file()
    assert backups(path.parent) == []  # nothing to back up in a new file

    insp = inspect(store.engine)
    assert set(insp.get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    assert reflected_schema(store.engine) == metadata_schema()

    # and Alembic's own comparison finds no difference between the migrated store and the models
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    assert db.current_revision(store.engine) == db.head_revision()


def test_migrations_form_one_line_from_m001_initial():
    revs = revisions_oldest_first()
    assert revs[0] == "m001_initial"
    assert revs[-1] == db.head_revision()
    assert len(set(revs)) == len(revs)


def test_reopen_is_idempotent(tmp_path):
    path = tmp_path / "mlops.db"
    url = url_of(path)
    store = db.open_store(url)
    with store.session() as s:
        s.execute(text("INSERT INTO experiments (name, created_at) VALUES ('kept', '2024-01-01 00:00:00')"))
    assert db.open_store(url) is store  # cached per process and URL
    db.close_all()

    again = db.open_store(url)
    assert again is not store
    assert db.current_revision(again.engine) == db.head_revision()
    assert db.upgrade(again.engine, url) is None  # already at head: nothing to do, no backup
    assert backups(tmp_path) == []
    with again.session() as s:
        assert s.execute(text("SELECT name FROM experiments")).scalars().all() == ["kept"]
    with again.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


@pytest.mark.parametrize("older", ["base", *revisions_oldest_first()[:-1]])
def test_store_at_an_older_revision_is_backed_up_then_upgraded(tmp_path, older):
    """Downgrade a migrated store (with data) to each older revision, then open it: backup first, then head."""
    path = tmp_path / "mlops.db"
    url = url_of(path)
    store = db.open_store(url)
    with store.session() as s:
        s.execute(text("INSERT INTO experiments (name, created_at) VALUES ('e1', '2024-01-01 00:00:00')"))
    command.downgrade(db._alembic_config(store.engine), older)
    assert db.current_revision(store.engine) == (None if older == "base" else older)
    before = set(inspect(store.engine).get_table_names())
    db.close_all()

    reopened = db.open_store(url)
    assert db.current_revision(reopened.engine) == db.head_revision()
    assert reflected_schema(reopened.engine) == metadata_schema()
    [backup] = backups(tmp_path)
    assert backup.name.startswith(f"mlops.db.before-{db.head_revision()}.")
    con = sqlite3.connect(backup)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = con.execute("SELECT version_num FROM alembic_version").fetchall()
    finally:
        con.close()
    assert tables == before  # the copy is the store as it was before migrating
    assert version == ([] if older == "base" else [(older,)])


def test_non_empty_foreign_sqlite_file_is_backed_up_before_migrating(tmp_path):
    path = tmp_path / "mlops.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    con.executemany("INSERT INTO notes (body) VALUES (?)", [("a",), ("b",)])
    con.commit()
    con.close()

    store = db.open_store(url_of(path))
    assert db.current_revision(store.engine) == db.head_revision()
    [backup] = backups(tmp_path)
    con = sqlite3.connect(backup)
    try:
        assert con.execute("SELECT body FROM notes ORDER BY id").fetchall() == [("a",), ("b",)]
        assert {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {"notes"}
    finally:
        con.close()
    # the user's table is untouched in the store itself
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM notes")).scalar() == 2


def test_backup_sqlite_copies_a_consistent_snapshot(tmp_path):
    path = tmp_path / "mlops.db"
    store = db.open_store(url_of(path))
    with store.session() as s:
        for i in range(50):
            s.execute(text(f"INSERT INTO experiments (name, created_at) VALUES ('e{i}', '2024-01-01 00:00:00')"))
    # the rows may still live in the WAL file; the online backup API must include them
    dest = db.backup_sqlite(path, "manual")
    assert dest.parent == tmp_path
    assert dest.name.startswith("mlops.db.manual.") and dest.name.endswith(".bak")
    con = sqlite3.connect(dest)
    try:
        assert con.execute("SELECT count(*) FROM experiments").fetchone() == (50,)
        assert con.execute("SELECT version_num FROM alembic_version").fetchone() == (db.head_revision(),)
    finally:
        con.close()


def test_empty_existing_file_is_migrated_without_a_backup(tmp_path):
    path = tmp_path / "mlops.db"
    path.touch()
    store = db.open_store(url_of(path))
    assert db.current_revision(store.engine) == db.head_revision()
    assert backups(tmp_path) == []


def test_migration_lock_file_sits_next_to_the_store(tmp_path):
    db.open_store(url_of(tmp_path / "mlops.db"))
    assert (tmp_path / "mlops.db.migrate.lock").exists()


# ---- pragmas --------------------------------------------------------------------------------------------

def test_sqlite_pragmas(tmp_path):
    store = db.open_store(url_of(tmp_path / "mlops.db"), busy_timeout_ms=1234)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_default_busy_timeout_from_settings(tmp_path):
    from mlopsctl.project import open_project
    from mlopsctl.config import load_settings

    store = open_project(load_settings({}, {}, tmp_path)).store
    assert store.url == f"sqlite:///{tmp_path.resolve()}/.mlops/mlops.db"
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


FK_FAILED = {"sqlite": "FOREIGN KEY constraint failed",
             "postgresql": 'insert or update on table "params" violates foreign key constraint "fk_params_run_id_runs"'}


def test_foreign_keys_are_enforced(store_url):
    store = db.open_store(store_url)
    with pytest.raises(IntegrityError, match=FK_FAILED[store.engine.dialect.name]):
        with store.session() as s:
            s.execute(text("INSERT INTO params (run_id, key, value) VALUES (999, 'k', 'v')"))


def test_deleting_a_run_cascades_to_its_rows(store_url):
    from mlopsctl import tracking

    store = db.open_store(store_url)
    with store.session() as s:
        run = tracking.create_run(s, "e")
        tracking.log_params(s, run.id, {"a": 1})
        tracking.log_metrics(s, run.id, {"m": 1.0})
        tracking.set_tags(s, run.id, {"t": "x"})
        run_id = run.id
    with store.session() as s:
        s.execute(text("DELETE FROM runs WHERE id = :id"), {"id": run_id})
    with store.engine.connect() as conn:
        for table in ("params", "metrics", "tags"):
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0


def test_get_or_create_reraises_an_integrity_error_it_cannot_resolve(store_url):
    """A failed insert that is not a lost race (here: NOT NULL) is not hidden; the transaction is intact.
    (The races themselves are in test_postgres.py.)"""
    from sqlalchemy import select

    from mlopsctl.store.models import RegisteredModel

    store = db.open_store(store_url)
    with store.session() as s:
        with pytest.raises(IntegrityError):
            db.get_or_create(s, select(RegisteredModel).where(RegisteredModel.name.is_(None)),
                             lambda: RegisteredModel(name=None))
        s.add(RegisteredModel(name="after"))
    with store.read() as s:
        assert s.scalars(select(RegisteredModel.name)).all() == ["after"]


# ---- refusing stores we cannot use ----------------------------------------------------------------------

NEWER = "m999_from_the_future"


def stamp_newer(path: Path) -> None:
    db.open_store(url_of(path))
    db.close_all()
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = ?", (NEWER,))
    con.commit()
    con.close()


def newer_message() -> str:
    return (f"the store is at schema revision {NEWER!r}, newer than this mlopsctl understands "
            f"(latest known: {db.head_revision()}); upgrade mlopsctl (pip install -U mlopsctl).")


@pytest.mark.parametrize("migrate", [True, False])
def test_newer_revision_is_refused(tmp_path, migrate):
    path = tmp_path / "mlops.db"
    stamp_newer(path)
    with pytest.raises(StoreError) as info:
        db.open_store(url_of(path), migrate=migrate)
    assert str(info.value) == newer_message()
    assert info.value.exit_code == 7
    assert backups(tmp_path) == []  # refused before anything was touched
    con = sqlite3.connect(path)
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(NEWER,)]
    con.close()


def test_newer_revision_via_cli_exits_7(cli, assert_error, tmp_path):
    stamp_newer(tmp_path / ".mlops" / "mlops.db")
    assert_error(cli("runs", "list"), 7, newer_message())


@pytest.mark.parametrize(("url", "message"), [
    ("notaurl", "store.url 'notaurl' is not a valid SQLAlchemy URL; use e.g. sqlite:///.mlops/mlops.db or "
                "postgresql+psycopg://user@host/db."),
    ("nodialect+nodriver://u@h/db", "cannot use store.url nodialect+nodriver://u@h/db: Can't load plugin: "
                                    "sqlalchemy.dialects:nodialect.nodriver."),
])
def test_invalid_store_url_exits_7(cli, assert_error, url, message):
    assert_error(cli("runs", "list", env={"MLOPS_STORE_URL": url}), 7, message)


def test_store_url_from_the_config_file_exits_7(cli, assert_error, tmp_path):
    (tmp_path / ".mlops.toml").write_text('[store]\nurl = "::nonsense::"\n')
    assert_error(cli("data", "list"), 7,
                 "store.url '::nonsense::' is not a valid SQLAlchemy URL; use e.g. sqlite:///.mlops/mlops.db or "
                 "postgresql+psycopg://user@host/db.")


def test_a_file_that_is_not_sqlite_exits_7(cli, assert_error, tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_text("this is not a SQLite database, just text long enough to have a header" * 20)
    url = url_of(junk)
    assert_error(cli("runs", "list", env={"MLOPS_STORE_URL": url}), 7,
                 f"cannot open the store at {url}: file is not a database.")


def test_a_store_path_under_a_regular_file_exits_7(cli, tmp_path):
    """The store's folder cannot be created (a file is in the way): a StoreError, not a traceback."""
    (tmp_path / "afile").write_text("x")
    url = url_of(tmp_path / "afile" / "mlops.db")
    result = cli("runs", "list", env={"MLOPS_STORE_URL": url})
    assert result.exit_code == 7, (result.exception, result.stderr)
    assert result.stderr.startswith(f"Error: cannot open the store at {url}: ")
    assert result.stderr.count("\n") == 1


# ---- a PostgreSQL server ---------------------------------------------------------------------------------

def test_blank_postgres_store_is_migrated_to_exactly_the_models(pg_blank_url):
    out = db.upgrade_store(pg_blank_url)
    assert out == {"store": pg_blank_url, "from": None, "to": db.head_revision(), "upgraded": True, "backup": None}
    store = db.open_store(pg_blank_url)
    assert store.engine.dialect.name == "postgresql"
    assert set(inspect(store.engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    assert reflected_schema(store.engine) == metadata_schema("postgresql")
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    assert db.current_revision(store.engine) == db.head_revision()
    # at head: upgrading again changes nothing
    assert db.upgrade_store(pg_blank_url) == {**out, "from": db.head_revision(), "upgraded": False}


def test_postgres_isolation_is_read_committed(pg_url):
    """The row locks rely on each statement seeing what was committed before it, whatever the server's
    default isolation."""
    store = db.open_store(pg_url)
    with store.session() as s:
        s.execute(text("ALTER DATABASE " + store.engine.url.database + " SET default_transaction_isolation = 'serializable'"))
    db.close_all()
    store = db.open_store(pg_url)
    with store.session() as s:
        assert s.execute(text("SHOW transaction_isolation")).scalar() == "read committed"


def revision_of(url: str) -> str | None:
    """The store's revision, read on an engine of its own (no cached store)."""
    engine = db.make_engine(url)
    try:
        return db.current_revision(engine)
    finally:
        engine.dispose()


def behind_message(url: str, current: str | None) -> str:
    if current is None:
        return f"the store at {url} has no mlopsctl tables yet; create them with `mlopsctl db upgrade`."
    return (f"the store at {url} is at schema revision {current!r}, this mlopsctl needs {db.head_revision()!r}; "
            "a shared store is never migrated implicitly: run `mlopsctl db upgrade`.")


@pytest.mark.parametrize("older", ["base", *revisions_oldest_first()[:-1]])
def test_postgres_store_behind_is_refused_until_db_upgrade(pg_url, cli, assert_error, older):
    """A shared store is never migrated by opening it: every command refuses it (exit 7) until
    `mlopsctl db upgrade`, which keeps the data (the downgrades run on PostgreSQL too)."""
    store = db.open_store(pg_url)
    if older != "base":
        with store.session() as s:
            s.execute(text("INSERT INTO experiments (name, created_at) VALUES ('e1', '2024-01-01 00:00:00')"))
    command.downgrade(db._alembic_config(store.engine), older)
    current = None if older == "base" else older
    assert db.current_revision(store.engine) == current
    db.close_all()

    with pytest.raises(StoreError) as info:
        db.open_store(pg_url)
    assert str(info.value) == behind_message(pg_url, current)
    env = {"MLOPS_STORE_URL": pg_url}
    assert_error(cli("runs", "list", env=env), 7, behind_message(pg_url, current))
    assert revision_of(pg_url) == current  # refusing touched nothing

    r = cli("db", "upgrade", env=env)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert r.stdout == f"upgraded the store at {pg_url} from {current or 'a blank database'} to {db.head_revision()}\n"
    reopened = db.open_store(pg_url)
    assert reflected_schema(reopened.engine) == metadata_schema("postgresql")
    with reopened.read() as s:
        assert s.execute(text("SELECT name FROM experiments")).scalars().all() == ([] if older == "base" else ["e1"])


@pytest.mark.parametrize("migrate", [None, True, False])
def test_newer_revision_is_refused_on_postgres(pg_url, migrate):
    with db.open_store(pg_url).session() as s:
        s.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": NEWER})
    db.close_all()
    with pytest.raises(StoreError) as info:
        db.open_store(pg_url, migrate=migrate)
    assert str(info.value) == newer_message()
    assert revision_of(pg_url) == NEWER


def test_a_password_in_the_url_is_never_shown(pg_url, cli, assert_error):
    """The password of a server URL is masked in every message (here: a database that does not exist)."""
    from sqlalchemy.engine import make_url

    u = make_url(pg_url).set(password="s3cret", database="no_such_db")
    result = cli("runs", "list", env={"MLOPS_STORE_URL": u.render_as_string(hide_password=False)})
    assert result.exit_code == 7
    assert "s3cret" not in result.stderr
    shown = u.render_as_string(hide_password=True)
    assert result.stderr.startswith(f"Error: cannot open the store at {shown}: connection failed: ")
    assert result.stderr.count("\n") == 1


def test_a_disposed_store_stays_open_with_new_connections(tmp_path):
    """What the server's parent does before forking its workers (Store.dispose): its connections are closed (a
    child must not share one), the store stays cached, so a worker's open_store is the same store (no second
    open and schema check) and opens a new connection."""
    url = url_of(tmp_path / "s.db")
    store = db.open_store(url)
    with store.transaction(write=False) as conn:
        first = conn.connection.dbapi_connection
    assert store.engine.pool.checkedin() == 1
    store.dispose()
    assert store.engine.pool.checkedin() == 0
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        first.execute("select 1")
    assert db.open_store(url) is store
    with store.transaction(write=False) as conn:
        assert conn.connection.dbapi_connection is not first
        assert conn.scalar(text("select count(*) from registered_models")) == 0
    db.close_all()
    assert db.open_store(url) is not store
    db.close_all()
