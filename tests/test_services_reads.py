"""Reading the store never waits behind a writer: the read use cases take read transactions, so the read
commands answer while another connection holds the write lock."""

from __future__ import annotations

import json
import sqlite3
import threading
import time



def test_read_commands_answer_while_another_connection_holds_the_write_lock(cli, fast_project):
    assert cli("train").exit_code == 0
    assert cli("register", "1", "--name", "bc").exit_code == 0
    writer = sqlite3.connect(fast_project / ".mlops" / "mlops.db", timeout=1, isolation_level=None,
                             check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO experiments (name, created_at) VALUES ('held', '2026-01-01 00:00:00')")
    released = threading.Timer(12, writer.rollback)  # what a long training or a stuck process would do
    released.start()
    try:
        for args in (("runs", "list"), ("runs", "show", "1"), ("models", "show", "bc"), ("data", "list"),
                     ("events",), ("models", "list")):
            t0 = time.perf_counter()
            result = cli(*args, "--json")
            took = time.perf_counter() - t0
            assert result.exit_code == 0, (args, result.stderr)
            assert took < 1.0, (args, took)
        assert json.loads(cli("runs", "list", "--json").stdout)[0]["id"] == 1
    finally:
        released.cancel()
        writer.rollback()
        writer.close()
