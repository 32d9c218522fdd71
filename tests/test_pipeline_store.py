"""A fully cached `mlopsctl pipeline run` pays for no ORM (issue 18: <= 0.5 s as a new process).

The runner's cache checks and records go through SQLAlchemy Core on :mod:`mlopsctl.store.tables`, the same
``Table`` objects the ORM classes map. Here: a cached run and ``pipeline status`` in a real subprocess import
neither ``sqlalchemy.orm`` nor the models nor rich; what the Core path writes is, byte for byte, what the ORM
writes for the same values (JSON, timestamps, floats), on SQLite and on PostgreSQL; and a Core transaction
reports a lost server like an ORM session does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Text, cast, select, text
from test_pipeline import CONFIG, builtin_project, make_cmd_project, settings, sha

from mlopsctl.errors import StoreError
from mlopsctl.services import pipeline as svc
from mlopsctl.store import db, tables
from mlopsctl.store.models import PipelineExecution, PipelineRun

PROBE = """
import json, sys
sys.argv = ["mlopsctl", *json.loads(sys.argv[1])]
from mlopsctl.cli.main import main
code = None
try:
    main()
except SystemExit as e:
    code = e.code
print("@@" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""
# what a fully cached run must not load: the ORM and what maps or uses it, the table printer, the heavy stack
NOT_ON_THE_CACHED_PATH = ("sqlalchemy.orm", "mlopsctl.store.models", "mlopsctl.registry", "mlopsctl.tracking",
                          "alembic", "rich", "sklearn", "pandas", "numpy")


def probe(root: Path, *argv: str) -> tuple[dict, str, str]:
    """(the exit code and the modules loaded, stdout, stderr) of ``mlopsctl ARGV`` in a new process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out, _, line = proc.stdout.rpartition("@@")
    return json.loads(line), out, proc.stderr


def loaded(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == n or m.startswith(n + ".") for n in names)]


def test_a_fully_cached_run_and_status_import_no_orm(tmp_path):
    root = make_cmd_project(tmp_path / "p")
    assert svc.run_pipeline(settings(root))["ran"] == ["clean", "features", "stats", "summary"]
    db.close_all()

    run, out, err = probe(root, "pipeline", "run")
    assert run["code"] == 0
    assert out.startswith("pipeline run 2: 0 ran, 4 cached in ")
    assert err.splitlines()[-1].startswith("summary: cached in ") and len(err.splitlines()) == 4
    assert loaded(run["modules"], NOT_ON_THE_CACHED_PATH) == []
    assert "mlopsctl.store.tables" in run["modules"]  # the Core path was taken, not a skipped one

    status, out, _ = probe(root, "pipeline", "status", "--json")
    assert status["code"] == 0
    assert json.loads(out)["stale"] == []
    assert loaded(status["modules"], NOT_ON_THE_CACHED_PATH) == []

    # the probe sees the ORM when a command does load it
    other, _, _ = probe(root, "runs", "list", "--json")
    assert other["code"] == 0 and loaded(other["modules"], ("sqlalchemy.orm", "mlopsctl.store.models")) != []


def test_cached_builtin_steps_check_their_run_and_version_without_the_orm(tmp_path):
    root = builtin_project(tmp_path / "p")
    first = svc.run_pipeline(settings(root))
    assert first["ran"] == ["prepare", "train", "register", "promote", "other"]
    db.close_all()

    run, out, _ = probe(root, "pipeline", "run")
    assert run["code"] == 0 and out.startswith("pipeline run 2: 0 ran, 5 cached in ")
    assert loaded(run["modules"], NOT_ON_THE_CACHED_PATH) == []

    # the cache check reads the train step's run: a run that is no longer FINISHED is no cache hit
    import sqlite3

    train_run = {s["step"]: s for s in first["steps"]}["train"]["result"]["run_id"]
    with sqlite3.connect(root / ".mlops" / "mlops.db") as con:
        con.execute("UPDATE runs SET status = 'FAILED' WHERE id = ?", (train_run,))
    con.close()
    status, out, _ = probe(root, "pipeline", "status", "--json")
    assert json.loads(out)["stale"] == ["train", "register", "promote"]
    assert loaded(status["modules"], NOT_ON_THE_CACHED_PATH) == []


def text_rows(store: db.Store, table, ids: list[int]) -> list[tuple]:
    """The rows as the database holds them: every column but ``id`` cast to text by the database itself."""
    cols = [cast(c, Text) for c in table.c if c.name != "id"]
    with store.transaction(write=False) as conn:
        return [tuple(r) for r in conn.execute(select(*cols).where(table.c.id.in_(ids)).order_by(table.c.id))]


def orm_copies(store: db.Store, cls, ids: list[int]) -> list[int]:
    """Each row loaded through the ORM and written again through it, every value the same but the id."""
    new = []
    with store.session() as s:
        for i in ids:
            row = s.get(cls, i)
            copy = cls(**{c.key: getattr(row, c.key) for c in cls.__table__.c if c.key != "id"})
            s.add(copy)
            s.flush()
            new.append(copy.id)
    return new


def test_what_the_core_path_writes_is_what_the_orm_writes(tmp_path, store_url):
    root = make_cmd_project(tmp_path / "p", f'[store]\nurl = "{store_url}"\n' + CONFIG)
    s = settings(root)
    first = svc.run_pipeline(s)
    (root / "raw.csv").write_text("x,y\n3,4\n1,2\n5,6\n7,8\n")
    second = svc.run_pipeline(s, ["stats"], force=["stats"])
    third = svc.run_pipeline(s)
    assert first["ran"] == ["clean", "features", "stats", "summary"]
    assert (second["ran"], third["ran"], third["cached"]) == (["stats"], ["clean", "features", "summary"], ["stats"])

    store = db.open_store(store_url)
    with store.read() as session:  # the ORM reads back what Core wrote
        runs = session.scalars(select(PipelineRun).order_by(PipelineRun.id)).all()
        execs = session.scalars(select(PipelineExecution).order_by(PipelineExecution.id)).all()
        assert [(r.status, r.targets, r.options["force"]) for r in runs] == [
            ("succeeded", [], []), ("succeeded", ["stats"], ["stats"]), ("succeeded", [], [])]
        assert all(r.ended_at >= r.started_at and r.duration_s > 0 for r in runs)
        assert [e.status for e in execs] == ["ran"] * 4 + ["ran"] + ["ran", "ran", "cached", "ran"]
        cached = execs[7]
        assert (cached.step, cached.source_id, cached.key) == ("stats", execs[4].id, execs[4].key)
        stats = root / "out/stats.json"
        assert cached.outputs == execs[4].outputs == {
            "out/stats.json": {"type": "file", "sha256": sha(stats), "size": stats.stat().st_size}}
        assert [e.id for e in execs] == [o["execution"] for o in first["steps"] + second["steps"] + third["steps"]]
        run_ids, exec_ids = [r.id for r in runs], [e.id for e in execs]

    for table, cls, ids in ((tables.pipeline_runs, PipelineRun, run_ids),
                            (tables.pipeline_executions, PipelineExecution, exec_ids)):
        assert text_rows(store, table, orm_copies(store, cls, ids)) == text_rows(store, table, ids)


@pytest.mark.postgres
@pytest.mark.parametrize("way", ["transaction", "read"])
def test_a_lost_server_connection_is_a_store_error_in_core_as_in_the_orm(pg_url, way):
    store = db.open_store(pg_url)
    with pytest.raises(StoreError, match=r"^the store at .* is unavailable: .*\.$"):
        with (store.transaction(write=False) if way == "transaction" else store.read()) as tx:
            pid = tx.execute(text("SELECT pg_backend_pid()")).scalar()
            with store.engine.connect() as other:
                assert other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar() is True
            tx.execute(text("SELECT 1"))
    with store.transaction(write=True) as conn:  # the pool replaced the dead connection
        assert conn.execute(text("SELECT 1")).scalar() == 1
