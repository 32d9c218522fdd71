"""`mlopsctl runs list | show | compare` and finding the project, through CliRunner with a real store."""

from __future__ import annotations


import pytest


from served_projects import ok, ok_json



# ---- runs list / show / compare -----------------------------------------------------------------------

@pytest.fixture
def two_runs(cli, fast_project):
    ok(cli("train", "--json"))
    ok(cli("train", "--json", "-p", "n_estimators=3", "--run-name", "small", "-x", "other"))
    return fast_project


def test_runs_list_json(cli, two_runs):
    runs = ok_json(cli("runs", "list", "--json"))
    assert [(r["id"], r["name"], r["experiment"], r["status"]) for r in runs] == [
        (2, "small", "other", "FINISHED"), (1, "run-1", "default", "FINISHED")]
    assert set(runs[0]) == {"id", "name", "experiment", "status", "model", "task", "started_at", "duration_s",
                            "metrics", "failure_reason"}
    assert runs[1]["metrics"]["roc_auc"] > 0.9
    assert [r["id"] for r in ok_json(cli("runs", "list", "--json", "--experiment", "other"))] == [2]
    assert [r["id"] for r in ok_json(cli("runs", "list", "--json", "--limit", "1"))] == [2]


def test_runs_list_unknown_experiment_exits_3(cli, assert_error, two_runs):
    assert_error(cli("runs", "list", "-x", "nope"), 3, "experiment 'nope' does not exist; known: default, other.")


def test_runs_list_table(cli, two_runs):
    out = ok(cli("runs", "list", env={"COLUMNS": "200"}))  # wide enough that rich truncates no cell
    assert "Runs" in out and "run-1" in out and "small" in out and "FINISHED" in out and "roc_auc" in out


def test_runs_list_empty(cli):
    assert ok_json(cli("runs", "list", "--json")) == []


def test_runs_show_by_id_and_name(cli, two_runs):
    by_id = ok_json(cli("runs", "show", "2", "--json"))
    by_name = ok_json(cli("runs", "show", "small", "--json"))
    assert by_id == by_name
    assert by_id["params"]["model.n_estimators"] == "3"
    out = ok(cli("runs", "show", "1"))
    assert out.startswith("Run 1 run-1 (default) - FINISHED")
    for word in ("Metrics", "Params", "ONNX parity", "Artifacts", "model.onnx", "roc_auc"):
        assert word in out


def test_runs_show_unknown_exits_3(cli, assert_error, two_runs):
    assert_error(cli("runs", "show", "99"), 3, "run '99' does not exist; see `mlopsctl runs list`.")
    assert_error(cli("runs", "show", "nope", "--json"), 3, "run 'nope' does not exist; see `mlopsctl runs list`.")


def test_runs_show_ambiguous_name_exits_2(cli, assert_error, fast_project):
    ok(cli("train", "--json", "--run-name", "same", "-p", "n_estimators=2"))
    ok(cli("train", "--json", "--run-name", "same", "-p", "n_estimators=2"))
    assert_error(cli("runs", "show", "same"), 2, "run name 'same' matches 2 runs (1, 2); use the id.")


def test_runs_compare(cli, two_runs):
    out = ok_json(cli("runs", "compare", "1", "small", "--json"))
    assert [(r["id"], r["name"]) for r in out["runs"]] == [(1, "run-1"), (2, "small")]
    assert out["params"]["model.n_estimators"] == ["10", "3"]
    assert out["params"]["target"] == ["diagnosis", "diagnosis"]
    assert out["differing_params"] == ["model.n_estimators"]
    assert set(out["metrics"]) == {"accuracy", "f1_macro", "log_loss", "roc_auc"}
    assert all(len(v) == 2 and all(isinstance(x, float) for x in v) for v in out["metrics"].values())
    table = ok(cli("runs", "compare", "1", "2"))
    assert "* model.n_estimators" in table


def test_runs_compare_needs_two_runs(cli, assert_error, two_runs):
    assert_error(cli("runs", "compare", "1"), 2, "compare needs at least two runs, as in `mlopsctl runs compare 3 4`.")
    assert_error(cli("runs", "compare", "1", "77"), 3, "run '77' does not exist; see `mlopsctl runs list`.")


def test_project_option_from_outside(cli, two_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert [r["id"] for r in ok_json(cli("-C", two_runs, "runs", "list", "--json"))] == [2, 1]
    assert [r["id"] for r in ok_json(cli("--project", two_runs, "runs", "list", "--json"))] == [2, 1]


def test_commands_find_the_project_from_a_subfolder(cli, two_runs, monkeypatch):
    sub = two_runs / "data" / "incoming"
    monkeypatch.chdir(sub)
    assert [r["id"] for r in ok_json(cli("runs", "list", "--json"))] == [2, 1]
