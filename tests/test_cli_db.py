"""`mlopsctl db current | upgrade` on SQLite and on a real PostgreSQL server, and a server store that
cannot be reached (one line, exit 7)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest
from alembic import command
from sqlalchemy import text

from mlopsctl.store import db

HEAD = db.head_revision()


def free_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_db_current_on_a_new_sqlite_project_creates_nothing(cli, tmp_path):
    (tmp_path / ".mlops.toml").write_text("")
    url = f"sqlite:///{tmp_path / '.mlops' / 'mlops.db'}"
    r = cli("db", "current", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {"store": url, "dialect": "sqlite", "current": None, "head": HEAD,
                                    "status": "blank"}
    assert not (tmp_path / ".mlops").exists()
    r = cli("db", "current")
    assert r.stdout == f"{url}: blank (no mlopsctl tables), head {HEAD}: blank (run `mlopsctl db upgrade`)\n"

    assert cli("runs", "list").exit_code == 0  # a SQLite store migrates itself when opened
    r = cli("db", "current")
    assert (r.exit_code, r.stdout) == (0, f"{url}: {HEAD}, head {HEAD}: up to date\n")


def test_db_upgrade_of_an_older_sqlite_store_backs_it_up(cli, tmp_path):
    (tmp_path / ".mlops.toml").write_text("")
    path = tmp_path / ".mlops" / "mlops.db"
    url = f"sqlite:///{path}"
    store = db.open_store(url)
    with store.session() as s:
        s.execute(text("INSERT INTO experiments (name, created_at) VALUES ('kept', '2024-01-01 00:00:00')"))
    command.downgrade(db._alembic_config(store.engine), "m004_watch")
    db.close_all()
    r = cli("db", "current", "--json")
    assert json.loads(r.stdout)["status"] == "behind"
    assert json.loads(r.stdout)["current"] == "m004_watch"

    r = cli("db", "upgrade")
    assert r.exit_code == 0, r.stderr
    [backup] = sorted(path.parent.glob("*.bak"))
    assert r.stdout == (f"upgraded the store at {url} from m004_watch to {HEAD}\n"
                        f"backup of the previous file: {backup}\n")
    r = cli("db", "upgrade", "--json")
    assert json.loads(r.stdout) == {"store": url, "from": HEAD, "to": HEAD, "upgraded": False, "backup": None}
    with db.open_store(url).read() as s:
        assert s.execute(text("SELECT name FROM experiments")).scalars().all() == ["kept"]


@pytest.mark.parametrize("args", [("runs", "list"), ("db", "current"), ("db", "upgrade"), ("models", "list")])
def test_an_unreachable_server_is_one_line_and_exit_7(cli, assert_error, args):
    url = f"postgresql+psycopg://mlops:pw@127.0.0.1:{free_port()}/mlops"
    verb = "upgrade" if args == ("db", "upgrade") else "open"
    shown = url.replace(":pw@", ":***@")
    port = url.split(":")[-1].split("/")[0]
    assert_error(cli(*args, env={"MLOPS_STORE_URL": url}), 7,
                 f'cannot {verb} the store at {shown}: connection failed: connection to server at "127.0.0.1", '
                 f"port {port} failed: Connection refused.")


@pytest.mark.parametrize(("url", "fix"), [
    ("postgresql+pg8000://u@127.0.0.1/db", "use postgresql+psycopg://... with pip install 'mlopsctl[postgres]'"),
])
def test_a_missing_driver_names_the_extra(cli, assert_error, url, fix):
    assert_error(cli("runs", "list", env={"MLOPS_STORE_URL": url}), 7,
                 f"cannot use store.url {url}: the driver module 'pg8000' is not installed; {fix}.")


# ---- PostgreSQL ---------------------------------------------------------------------------------------

def test_db_current_and_upgrade_on_a_blank_postgres_database(cli, pg_blank_url):
    env = {"MLOPS_STORE_URL": pg_blank_url}
    r = cli("db", "current", "--json", env=env)
    assert json.loads(r.stdout) == {"store": pg_blank_url, "dialect": "postgresql", "current": None, "head": HEAD,
                                    "status": "blank"}
    r = cli("db", "upgrade", env=env)
    assert (r.exit_code, r.stdout) == (0, f"upgraded the store at {pg_blank_url} from a blank database to {HEAD}\n")
    r = cli("db", "upgrade", env=env)
    assert (r.exit_code, r.stdout) == (0, f"the store at {pg_blank_url} is already at {HEAD}\n")
    r = cli("db", "current", env=env)
    assert (r.exit_code, r.stdout) == (0, f"{pg_blank_url}: {HEAD}, head {HEAD}: up to date\n")
    assert cli("runs", "list", "--json", env=env).stdout == "[]\n"


def test_concurrent_db_upgrades_of_one_postgres_database(pg_blank_url, tmp_path):
    """Four `mlopsctl db upgrade` processes at once on a blank database: one migrates (under the advisory
    lock), the others wait for it and find the store at head. Without the lock they would race to create the
    same tables and fail on PostgreSQL's catalog."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    env["MLOPS_STORE_URL"] = pg_blank_url
    barrier = threading.Barrier(4)

    def upgrade(_i: int) -> subprocess.CompletedProcess:
        barrier.wait(timeout=60)
        return subprocess.run([sys.executable, "-m", "mlopsctl", "db", "upgrade", "--json"], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=120)

    results: list = [None] * 4
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, upgrade(i))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [(p.returncode, p.stderr) for p in results] == [(0, "")] * 4
    outs = [json.loads(p.stdout) for p in results]
    assert sorted(o["upgraded"] for o in outs) == [False, False, False, True]
    assert {o["to"] for o in outs} == {HEAD}
    assert [o["from"] for o in outs if o["upgraded"]] == [None]
    store = db.open_store(pg_blank_url)
    with store.read() as s:
        assert s.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]
