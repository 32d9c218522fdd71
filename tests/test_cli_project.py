"""`mlopsctl init` and `--version` through CliRunner, with a real store in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

import mlopsctl
from mlopsctl.config import CONFIG_FILE, load_settings

from served_projects import ok, ok_json

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# ---- init -----------------------------------------------------------------------------------------------

def test_init_creates_a_project(cli, tmp_path):
    from mlopsctl.services.project import DEFAULT_CONFIG

    out = ok_json(cli("init", "proj", "--json"))
    project = tmp_path / "proj"
    assert out == {"project": str(project.resolve()), "example": None,
                   "config": str((project / CONFIG_FILE).resolve()), "next": "mlopsctl train"}
    assert (project / CONFIG_FILE).read_text() == DEFAULT_CONFIG
    assert (project / ".mlops").is_dir()
    assert (project / "data" / "incoming").is_dir()
    s = load_settings({}, {}, project)
    assert s.config_file == (project / CONFIG_FILE).resolve()
    assert (s.train.model, s.train.params, s.data.exclude) == ("auto", {}, [])
    assert s.data.target == "label"


def test_init_prints_next_steps(cli, tmp_path):
    out = ok(cli("init", "p"))
    assert out.startswith("Created project ")
    assert "Next: cd p && mlopsctl train" in out


def test_init_of_a_pipeline_example_says_to_run_the_pipeline(cli, tmp_path):
    out = ok(cli("init", "p", "--example", "subscriptions"))
    assert "Next: cd p && mlopsctl pipeline run" in out
    assert (tmp_path / "p" / "prepare.py").read_bytes() == (EXAMPLES / "subscriptions" / "prepare.py").read_bytes()
    assert sorted(f.name for f in (tmp_path / "p" / "data" / "raw" / "usage").iterdir()) == [
        f"2024-0{m}.csv" for m in range(1, 7)]


def test_init_in_the_current_folder(cli, tmp_path):
    out = ok_json(cli("init", "--json"))
    assert out["project"] == str(tmp_path.resolve())
    assert (tmp_path / CONFIG_FILE).is_file()


@pytest.mark.parametrize("example", ["breast-cancer", "diabetes", "churn"])
def test_init_with_each_example(cli, tmp_path, example):
    out = ok_json(cli("init", "ex", "--example", example, "--json"))
    project = tmp_path / "ex"
    assert out["example"] == example
    assert (project / CONFIG_FILE).read_text() == (EXAMPLES / example / CONFIG_FILE).read_text()
    assert (project / "data" / "train.csv").read_bytes() == (EXAMPLES / example / "data" / "train.csv").read_bytes()
    assert (project / ".mlops").is_dir() and (project / "data" / "incoming").is_dir()
    load_settings({}, {}, project)  # the example's config is valid


def test_examples_are_listed():
    from mlopsctl.services import project

    assert {"breast-cancer", "diabetes", "churn"} <= set(project.list_examples())


def test_init_unknown_example_exits_3(cli, assert_error, tmp_path):
    from mlopsctl.services import project

    assert_error(cli("init", "p", "--example", "iris"), 3,
                 f"no example named 'iris'; choose one of: {', '.join(project.list_examples())}.")
    assert not (tmp_path / "p").exists()


def test_init_existing_project_exits_4(cli, assert_error, tmp_path):
    ok(cli("init", "proj"))
    before = (tmp_path / "proj" / CONFIG_FILE).read_text()
    assert_error(cli("init", "proj"), 4, "proj/.mlops.toml already exists; this folder is already a project.")
    assert_error(cli("init", "proj", "--example", "churn"), 4,
                 "proj/.mlops.toml already exists; this folder is already a project.")
    assert (tmp_path / "proj" / CONFIG_FILE).read_text() == before


def test_init_example_into_a_non_empty_folder_exits_4(cli, assert_error, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert_error(cli("init", "busy", "--example", "churn"), 4,
                 "busy is not empty; choose a new folder for the example.")
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_version(cli):
    assert ok(cli("--version")) == f"mlopsctl {mlopsctl.__version__}\n"
