"""What a new user hits in the first five minutes: the default model follows the task, columns that are not
features, an unexpected error is one line, and reading the store never waits behind a writer."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def _examples() -> Path:
    return Path(__file__).resolve().parents[1] / "examples"


def test_init_writes_the_auto_model(cli, tmp_path):
    assert cli("init", tmp_path / "x").exit_code == 0
    text = (tmp_path / "x" / ".mlops.toml").read_text()
    assert 'model = "auto"' in text and "params = {}" in text and "exclude = []" in text


@pytest.mark.parametrize(("example", "target", "model", "task"), [
    ("diabetes", "progression", "sklearn.ensemble.RandomForestRegressor", "regression"),
    ("breast-cancer", "diagnosis", "sklearn.ensemble.RandomForestClassifier", "classification"),
])
def test_a_plain_project_trains_whatever_the_task(cli, tmp_path, monkeypatch, example, target, model, task):
    """`mlopsctl init x && cd x && mlopsctl train --data ... --target ...` on a regression target works."""
    assert cli("init", tmp_path / "x").exit_code == 0
    monkeypatch.chdir(tmp_path / "x")
    data = _examples() / example / "data" / "train.csv"
    result = cli("train", "--data", data, "--target", target, "-p", "n_estimators=5", "--json")
    assert result.exit_code == 0, result.stderr
    run = json.loads(result.stdout)
    assert (run["model"], run["task"], run["status"]) == (model, task, "FINISHED")


def test_an_explicit_classifier_on_a_regression_target_still_fails_clearly(cli, assert_error, tmp_path, monkeypatch):
    assert cli("init", tmp_path / "x").exit_code == 0
    monkeypatch.chdir(tmp_path / "x")
    data = _examples() / "diabetes" / "data" / "train.csv"
    result = cli("train", "--data", data, "--target", "progression", "-m", "RandomForestClassifier")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: sklearn.ensemble.RandomForestClassifier is not a regressor but the task "
                                    "is regression; pick a regressor"), result.stderr
    assert result.stderr.count("\n") == 1


@pytest.fixture
def id_project(cli, tmp_path, monkeypatch) -> Path:
    rng = np.random.default_rng(3)
    n = 120
    df = pd.DataFrame({"id": np.arange(n), "x": rng.normal(size=n), "note": [f"remark {i}" for i in range(n)]})
    df["y"] = np.where(df["x"] > 0, "up", "down")
    assert cli("init", tmp_path / "p").exit_code == 0
    monkeypatch.chdir(tmp_path / "p")
    df.to_csv("data/train.csv", index=False)
    return tmp_path / "p"


def test_exclude_leaves_columns_out_and_requests_may_still_carry_them(cli, id_project):
    from mlopsctl.config import load_settings
    from mlopsctl.serving.app import create_app

    result = cli("train", "--target", "y", "-X", "id", "-X", "note", "-p", "n_estimators=5", "--json")
    assert result.exit_code == 0, result.stderr
    assert "Note: left out by data.exclude: id, note.\n" in result.stderr
    run = json.loads(result.stdout)
    assert run["params"]["excluded_columns"] == "id,note"
    assert cli("register", "1", "--name", "m").exit_code == 0
    settings = load_settings({}, {}, id_project)
    client = create_app(settings, "m/1", watch=False).test_client()
    resp = client.post("/predict", json={"records": [{"id": 7, "x": 1.5, "note": "hi"}]})
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["predictions"] == ["up"]
    resp = client.post("/predict", json={"records": [{"id": 7, "x": 1.5, "nope": 1}]})
    assert resp.status_code == 400 and "unexpected column(s) 'nope'" in resp.get_json()["message"]


def test_an_identifier_column_is_said_once_in_one_line(cli, id_project):
    result = cli("train", "--target", "y", "-p", "n_estimators=5")
    assert result.exit_code == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("Note: ")]
    assert notes == [
        "Note: column 'id' has a different value in every row, like an identifier; a model cannot learn from it: "
        "exclude it with --exclude id or data.exclude = [\"id\"].",
        "Note: column 'note' has a different value in every row, like an identifier; a model cannot learn from it: "
        "exclude it with --exclude note or data.exclude = [\"note\"].",
    ]


@pytest.mark.parametrize(("args", "message"), [
    (("-X", "nope"), "data.exclude names 'nope', which is not in train.csv; exclude feature columns only (id, x, note)."),
    (("-X", "y"), "data.exclude names 'y', which is the target; exclude feature columns only (id, x, note)."),
    (("-X", "id", "-X", "x", "-X", "note"),
     "no feature columns are left in train.csv after leaving out 'id', 'x', 'note'; keep at least one."),
])
def test_bad_exclusions_are_one_line(cli, assert_error, id_project, args, message):
    assert_error(cli("train", "--target", "y", *args), 2, message)


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
