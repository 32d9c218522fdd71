"""`mlopsctl report RUN --against MODEL@ALIAS`: the comparison a CI job posts, and its exit code."""

from __future__ import annotations

import json

import pytest


def train(cli, *args: str) -> int:
    r = cli("train", "--json", *args)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)["id"]


@pytest.fixture
def served(fast_project, cli):
    """breast-cancer: run 1 (10-tree forest) is breast-cancer/1 @production; run 2 is a depth-1 tree."""
    first = train(cli)
    assert cli("register", str(first)).exit_code == 0
    assert cli("promote", "breast-cancer", "1").exit_code == 0
    weak = train(cli, "-m", "sklearn.tree.DecisionTreeClassifier", "-p", "max_depth=1", "--run-name", "stump")
    return fast_project, first, weak


def test_a_worse_run_is_reported_with_the_gates_verdict_and_exits_4(cli, served, settings_of):
    from mlopsctl.services import models, runs
    from mlopsctl.services.gate import evaluate_gate

    project, first, weak = served
    result = cli("report", "stump", "--against", "breast-cancer@production", "--format", "json", "-o", "r.json")
    assert result.exit_code == 4, result.stderr
    out = json.loads(result.stdout)
    assert json.loads((project / "r.json").read_text()) == out
    assert result.stderr == (f"Error: the gate would reject run {weak} against breast-cancer@production: "
                             f"{out['gate']['reasons'][0]}.\n")
    assert out["would_pass"] is False and out["holder"]["ref"] == "breast-cancer/1"
    # the verdict is the gate's, on the same held-out rows promote would use
    s = settings_of(project)
    gate = evaluate_gate(s, runs.run_model(s, str(weak)), models.load_model(s, "breast-cancer/1"),
                         alias="production", min_delta=0.0)
    assert out["gate"]["candidate"]["score"] == pytest.approx(gate["candidate"]["score"])
    assert out["gate"]["holder"]["score"] == pytest.approx(gate["holder"]["score"])
    assert out["gate"]["candidate"]["score"] < out["gate"]["holder"]["score"]
    # metrics side by side, with deltas
    weak_run, first_run = runs.show_run(s, str(weak)), runs.show_run(s, str(first))
    auc = out["metrics"]["roc_auc"]
    assert (auc["candidate"], auc["holder"]) == (weak_run["metrics"]["roc_auc"], first_run["metrics"]["roc_auc"])
    assert auc["delta"] == pytest.approx(auc["candidate"] - auc["holder"])
    # what changed: the model's parameters; the data did not
    assert out["params"]["model.max_depth"] == {"candidate": "1", "holder": "None"}
    assert out["data"]["same_data"] is True and out["contract"]["compatible"] is True
    assert out["parity"]["candidate"]["passed"] is True


def test_markdown_for_a_pull_request(cli, served):
    _project, first, weak = served
    result = cli("report", str(weak), "--against", "breast-cancer@production")
    assert result.exit_code == 4
    md = result.stdout
    assert md.startswith(f"## Model report: run {weak} (stump) vs breast-cancer@production (breast-cancer/1)\n")
    assert "**Gate: would reject.** roc_auc " in md and "| metric | run 2 | breast-cancer/1 | delta |" in md
    assert "| model.max_depth | 1 | None |" in md and "Columns: unchanged." in md
    same = cli("report", str(first), "--against", "breast-cancer@production")
    assert same.exit_code == 0 and same.stderr == ""
    assert "**Gate: passes.**" in same.stdout and "delta +0.0000" in same.stdout
    assert "Parameters: unchanged." in same.stdout


def test_no_holder_yet_passes_as_the_first_holder(cli, fast_project):
    run = train(cli)
    result = cli("report", str(run), "--against", "breast-cancer@staging", "--format", "json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["would_pass"] is True and out["holder"] is None
    assert out["note"] == ("breast-cancer@staging has no holder (model 'breast-cancer' does not exist; registered: "
                           "(none yet).); the run would be its first holder.")


def test_report_errors(cli, fast_project, assert_error):
    run = train(cli)
    assert_error(cli("report", str(run), "--against", "m@production", "--format", "html"), 2,
                 "--format 'html' is not supported; use markdown or json.")
    assert_error(cli("report", "99", "--against", "m@production"), 3,
                 "run '99' does not exist; see `mlopsctl runs list`.")
    assert_error(cli("report", str(run), "--against", "bad name"), 2,
                 "model name 'bad name' is invalid; use 1-100 characters: letters, digits, '.', '_' or '-', "
                 "starting with a letter or digit.")
