"""An error nobody planned for is one line on stderr (exit 1); the global --traceback flag shows all of it."""

from __future__ import annotations

import sqlite3



def test_an_unexpected_error_is_one_line_and_traceback_shows_it_all(cli, fast_project):
    assert cli("train").exit_code == 0
    db = sqlite3.connect(fast_project / ".mlops" / "mlops.db")
    db.execute("DROP TABLE metrics")  # a store damaged by hand: not an error mlopsctl raises on purpose
    db.commit()
    db.close()
    result = cli("runs", "list")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: unexpected OperationalError: (sqlite3.OperationalError) no such table: "
                                    "metrics")
    assert result.stderr.endswith(" (rerun with --traceback for details)\n")
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    full = cli("--traceback", "runs", "list")
    assert full.exit_code == 1
    assert "Traceback (most recent call last):" in full.stderr and "no such table: metrics" in full.stderr
