"""load_settings(flags, env, project_dir): flag > MLOPS_* env > .mlops.toml > defaults, and its errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from mlopsctl.config import CONFIG_FILE, all_keys, find_project_dir, load_settings
from mlopsctl.errors import ConfigError

VALID_KEYS = ", ".join(all_keys())
VALID_ENV = ", ".join(sorted("MLOPS_" + k.replace(".", "_").upper() for k in all_keys()))


def write_config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(text)
    return folder


def get(settings, key: str):
    section, _, name = key.partition(".")
    return getattr(getattr(settings, section), name)


# ---- precedence -----------------------------------------------------------------------------------------

FILE = """
[train]
seed = 1
test_size = 0.3
experiment = "from-file"
params = { n_estimators = 5 }
[data]
target = "y_file"
[serve]
port = 9000
"""


@pytest.mark.parametrize(
    ("key", "file", "env", "flags", "expected"),
    [
        # defaults only
        ("train.seed", None, {}, {}, 42),
        ("train.test_size", None, {}, {}, 0.2),
        ("data.target", None, {}, {}, "label"),
        ("train.params", None, {}, {}, {}),
        ("serve.port", None, {}, {}, 8080),
        ("watch.auto_promote", None, {}, {}, True),
        # the file beats the defaults
        ("train.seed", FILE, {}, {}, 1),
        ("train.params", FILE, {}, {}, {"n_estimators": 5}),
        ("data.target", FILE, {}, {}, "y_file"),
        ("serve.port", FILE, {}, {}, 9000),
        # the environment beats the file (and is parsed to the declared type)
        ("train.seed", FILE, {"MLOPS_TRAIN_SEED": "7"}, {}, 7),
        ("train.test_size", FILE, {"MLOPS_TRAIN_TEST_SIZE": " 0.25 "}, {}, 0.25),
        ("data.target", FILE, {"MLOPS_DATA_TARGET": "y_env"}, {}, "y_env"),
        ("train.params", FILE, {"MLOPS_TRAIN_PARAMS": '{"max_depth": 3}'}, {}, {"max_depth": 3}),
        ("watch.auto_promote", None, {"MLOPS_WATCH_AUTO_PROMOTE": "off"}, {}, False),
        ("watch.auto_promote", None, {"MLOPS_WATCH_AUTO_PROMOTE": "YES"}, {}, True),
        ("serve.port", FILE, {"MLOPS_SERVE_PORT": "9100"}, {}, 9100),
        # a flag beats the environment and the file
        ("train.seed", FILE, {"MLOPS_TRAIN_SEED": "7"}, {"train.seed": 3}, 3),
        ("data.target", FILE, {"MLOPS_DATA_TARGET": "y_env"}, {"data.target": "y_flag"}, "y_flag"),
        ("train.test_size", FILE, {"MLOPS_TRAIN_TEST_SIZE": "0.25"}, {"train.test_size": 0.5}, 0.5),
        # a flag of None means "not given"
        ("train.seed", FILE, {"MLOPS_TRAIN_SEED": "7"}, {"train.seed": None}, 7),
        ("train.seed", FILE, {}, {"train.seed": None}, 1),
        # a string flag is parsed like an env value
        ("train.seed", None, {}, {"train.seed": "11"}, 11),
        # variables without the prefix are ignored
        ("train.seed", None, {"TRAIN_SEED": "5", "HOME": "/x"}, {}, 42),
    ],
)
def test_precedence(tmp_path, key, file, env, flags, expected):
    if file is not None:
        write_config(tmp_path, file)
    settings = load_settings(flags, env, tmp_path)
    value = get(settings, key)
    assert value == expected
    assert type(value) is type(expected)


def test_integer_in_file_for_a_float_key_becomes_a_float(tmp_path):
    write_config(tmp_path, "[registry]\nmin_delta = 1\n")
    settings = load_settings({}, {}, tmp_path)
    assert settings.registry.min_delta == 1.0 and type(settings.registry.min_delta) is float


def test_without_a_config_file(tmp_path):
    settings = load_settings({}, {}, tmp_path)
    assert settings.config_file is None
    assert settings.project_dir == tmp_path.resolve()


def test_config_file_and_project_dir_are_recorded(tmp_path):
    write_config(tmp_path / "p", "[train]\nseed = 2\n")
    settings = load_settings({}, {}, tmp_path / "p")
    assert settings.config_file == (tmp_path / "p" / CONFIG_FILE).resolve()
    assert settings.project_dir == (tmp_path / "p").resolve()


def test_env_defaults_to_os_environ(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_TRAIN_SEED", "99")
    assert load_settings({}, None, tmp_path).train.seed == 99


# ---- paths ----------------------------------------------------------------------------------------------

def test_relative_paths_resolve_against_the_project_dir_not_the_cwd(tmp_path, monkeypatch):
    project = write_config(tmp_path / "proj", '[data]\npath = "data/x.csv"\n[store]\nartifacts = "blobs"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = load_settings({}, {}, project)
    root = project.resolve()
    assert s.resolve(s.data.path) == root / "data" / "x.csv"
    assert s.artifacts_dir == root / "blobs"
    assert s.store_url == f"sqlite:///{root}/.mlops/mlops.db"
    assert s.resolve(s.watch.path) == root / "data" / "incoming"


def test_relative_env_paths_resolve_against_the_project_dir(tmp_path):
    project = write_config(tmp_path / "proj", "")
    s = load_settings({}, {"MLOPS_STORE_URL": "sqlite:///db/other.db", "MLOPS_DATA_PATH": "in.csv"}, project)
    assert s.store_url == f"sqlite:///{project.resolve()}/db/other.db"
    assert s.resolve(s.data.path) == project.resolve() / "in.csv"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:////abs/store.db", "sqlite:////abs/store.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("sqlite://", "sqlite://"),
        ("postgresql+psycopg://u@db.example/mlops", "postgresql+psycopg://u@db.example/mlops"),
    ],
)
def test_store_urls_that_are_not_relative_files_are_kept(tmp_path, url, expected):
    s = load_settings({"store.url": url}, {}, tmp_path)
    assert s.store_url == expected


def test_absolute_and_home_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    s = load_settings({"data.path": "~/d.csv", "store.artifacts": str(tmp_path / "abs")}, {}, tmp_path / "p")
    assert s.resolve(s.data.path) == tmp_path / "home" / "d.csv"
    assert s.artifacts_dir == tmp_path / "abs"


def test_project_dir_is_found_from_a_subfolder(tmp_path, monkeypatch):
    project = write_config(tmp_path / "proj", "[train]\nseed = 5\n")
    sub = project / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert find_project_dir() == project.resolve()
    s = load_settings({}, {}, None)
    assert s.project_dir == project.resolve()
    assert s.train.seed == 5


# ---- errors ---------------------------------------------------------------------------------------------

ERRORS = [
    # unknown key / section in the file
    ("[train]\nbogus = 1\n", {}, {},
     f"unknown key 'train.bogus' in .mlops.toml; valid keys: {VALID_KEYS}."),
    ("[bogus]\nx = 1\n", {}, {},
     "unknown section [bogus] in .mlops.toml; valid sections: store, data, train, registry, serve, watch, monitor, "
     "tune, ui, pipeline."),
    ("seed = 1\n", {}, {},  # a key outside any section
     "key 'seed' in .mlops.toml is outside any section (it belongs under [train]); put keys under a section header such as [train]."),
    ("train = 3\n", {}, {},
     "train in .mlops.toml must be a table like [train]."),
    # wrong types in the file (strings from the file are not parsed)
    ("[train]\nseed = \"7\"\n", {}, {},
     "train.seed in .mlops.toml must be an integer, got '7'."),
    ("[train]\nseed = true\n", {}, {},
     "train.seed in .mlops.toml must be an integer, got True."),
    ("[train]\nseed = 1.5\n", {}, {},
     "train.seed in .mlops.toml must be an integer, got 1.5."),
    ("[train]\ntest_size = \"0.2\"\n", {}, {},
     "train.test_size in .mlops.toml must be a number, got '0.2'."),
    ("[train]\nparams = 3\n", {}, {},
     "train.params in .mlops.toml must be a table, got 3."),
    ("[watch]\nauto_promote = 1\n", {}, {},
     "watch.auto_promote in .mlops.toml must be true or false, got 1."),
    ("[data]\ntarget = 5\n", {}, {},
     "data.target in .mlops.toml must be a string, got 5."),
    # bad choices
    ("[data]\ntask = \"clustering\"\n", {}, {},
     "data.task in .mlops.toml must be one of auto, classification, regression; got 'clustering'."),
    ("[serve]\ndevice = \"tpu\"\n", {}, {},
     "serve.device in .mlops.toml must be one of cpu, cuda, auto; got 'tpu'."),
    (None, {"MLOPS_WATCH_MODE": "merge"}, {},
     "watch.mode in the environment must be one of append, replace; got 'merge'."),
    (None, {}, {"train.metric": "auc"},
     "train.metric in a command-line flag must be one of auto, accuracy, f1_macro, roc_auc, log_loss, rmse, "
     "mae, r2; got 'auc'."),
    # unknown / unparsable environment variables
    (None, {"MLOPS_SERVE_TOKN": "s3cret"}, {},  # a known section with an unknown key: a typo
     "unknown environment variable MLOPS_SERVE_TOKN; the [serve] variables are: "
     + ", ".join(v for v in VALID_ENV.split(", ") if v.startswith("MLOPS_SERVE_")) + "."),
    (None, {"MLOPS_DATA_EXCLUDE": '[1, "id"]'}, {},
     "data.exclude in the environment must be a list of column names, got [1, 'id']."),
    (None, {"MLOPS_TRAIN_SEED": "seven"}, {},
     "train.seed from the environment must be an integer, got 'seven'."),
    (None, {"MLOPS_TRAIN_TEST_SIZE": "a fifth"}, {},
     "train.test_size from the environment must be a number, got 'a fifth'."),
    (None, {"MLOPS_WATCH_AUTO_PROMOTE": "maybe"}, {},
     "watch.auto_promote from the environment must be true or false, got 'maybe'."),
    (None, {"MLOPS_TRAIN_PARAMS": "{n_estimators: 5}"}, {},
     "train.params from the environment must be a table, got '{n_estimators: 5}'."),
    (None, {"MLOPS_TRAIN_PARAMS": "[1, 2]"}, {},
     "train.params in the environment must be a table, got [1, 2]."),
    # flags
    (None, {}, {"train.bogus": 1},
     f"unknown key 'train.bogus' in a command-line flag; valid keys: {VALID_KEYS}."),
    (None, {}, {"bogus": 1},
     f"unknown key 'bogus' in a command-line flag; valid keys: {VALID_KEYS}."),
    (None, {}, {"train.seed": "x"},
     "train.seed from a command-line flag must be an integer, got 'x'."),
    # ranges
    ("[train]\ntest_size = 1.0\n", {}, {},
     "train.test_size must be between 0 and 1 (exclusive), got 1.0."),
    (None, {"MLOPS_TRAIN_TEST_SIZE": "0"}, {},
     "train.test_size must be between 0 and 1 (exclusive), got 0.0."),
    ("[serve]\nport = 70000\n", {}, {},
     "serve.port must be between 1 and 65535, got 70000."),
    ("[serve]\nworkers = 0\n", {}, {},
     "serve.workers must be at least 1, got 0."),
    ("[serve]\nthreads = 0\n", {}, {},
     "serve.threads must be between 1 and 64, got 0."),
    (None, {"MLOPS_SERVE_THREADS": "65"}, {},
     "serve.threads must be between 1 and 64, got 65."),
    ("[train]\nreference_rows = -1\n", {}, {},
     "train.reference_rows must be 0 or more, got -1."),
    ("[serve]\nlog_flush_seconds = 0\n", {}, {},
     "serve.log_flush_seconds must be above 0 and at most 60, got 0.0."),
    (None, {"MLOPS_SERVE_LOG_FLUSH_SECONDS": "600"}, {},
     "serve.log_flush_seconds must be above 0 and at most 60, got 600.0."),
    (None, {"MLOPS_SERVE_LOG_FLUSH_SECONDS": "soon"}, {},
     "serve.log_flush_seconds from the environment must be a number, got 'soon'."),
    # pipeline steps: each table is checked strictly, and the message names the step
    ("[pipeline.steps.prep]\ncmd = \"python p.py\"\ndep = [\"p.py\"]\n", {}, {},
     "pipeline step 'prep' in .mlops.toml: unknown key 'dep'; the keys of a cmd step are: cmd, deps, outs, params, "
     "needs, always."),
    ("[pipeline.steps.reg]\nuses = \"register\"\nparams = { a = 1 }\n", {}, {},
     "pipeline step 'reg' in .mlops.toml: 'params' does not apply to a uses = \"register\" step; the keys of a "
     "uses = \"register\" step are: uses, deps, needs, always, name."),
    ("[pipeline.steps.prep]\ncmd = \"x\"\nuses = \"train\"\n", {}, {},
     "pipeline step 'prep' in .mlops.toml needs exactly one of cmd = \"<shell command>\" or uses = "
     "\"train|evaluate|register|promote|tune\"."),
    ("[pipeline.steps.prep]\ndeps = [\"a\"]\n", {}, {},
     "pipeline step 'prep' in .mlops.toml needs exactly one of cmd = \"<shell command>\" or uses = "
     "\"train|evaluate|register|promote|tune\"."),
    ("[pipeline.steps.fit]\nuses = \"fit\"\n", {}, {},
     "pipeline step 'fit' in .mlops.toml: uses must be one of train, evaluate, register, promote, tune; got 'fit'."),
    ("[pipeline.steps.prep]\ncmd = \"x\"\ndeps = \"a.csv\"\n", {}, {},
     "pipeline step 'prep' in .mlops.toml: deps must be a list of non-empty strings, got 'a.csv'."),
    ("[pipeline.steps.prep]\ncmd = \"x\"\nouts = [\"a\", \"a\"]\n", {}, {},
     "pipeline step 'prep' in .mlops.toml: outs lists 'a' twice."),
    ("[pipeline.steps.prep]\ncmd = \"\"\n", {}, {},
     "pipeline step 'prep' in .mlops.toml: cmd must be a non-empty string, got ''."),
    ("[pipeline.steps.prep]\ncmd = \"x\"\nalways = \"yes\"\n", {}, {},
     "pipeline step 'prep' in .mlops.toml: always must be true or false, got 'yes'."),
    ("[pipeline.steps.prep]\ncmd = \"x\"\nparams = { \"min-rows\" = 1 }\n", {}, {},
     "pipeline step 'prep' in .mlops.toml: param name 'min-rows' must be a letter or '_' followed by letters, "
     "digits or '_' (it becomes MLOPS_PARAM_<NAME>)."),
    ("[pipeline.steps.up]\nuses = \"promote\"\nmin_delta = -1\n", {}, {},
     "pipeline step 'up' in .mlops.toml: min_delta must be a number of 0 or more, got -1."),
    ("[pipeline.steps.\"my step\"]\ncmd = \"x\"\n", {}, {},
     "pipeline step 'my step' in .mlops.toml: the name must be 1-100 letters, digits, '.', '_' or '-', starting "
     "with a letter or digit."),
    ("[pipeline.steps]\nprep = 3\n", {}, {},
     "pipeline step 'prep' in .mlops.toml must be a table like [pipeline.steps.prep] with cmd = \"...\" or "
     "uses = \"train\"."),
    ("[pipeline.step.prep]\ncmd = \"x\"\n", {}, {},
     f"unknown key 'pipeline.step' in .mlops.toml; valid keys: {VALID_KEYS}."),
    (None, {"MLOPS_PIPELINE_STEPS": '{"t": {"uses": "train", "outs": ["m"]}}'}, {},
     "pipeline step 't' in the environment: 'outs' does not apply to a uses = \"train\" step; the keys of a "
     "uses = \"train\" step are: uses, deps, params, needs, always, data, model, experiment."),
    ("[tune]\ntrials = 0\n", {}, {}, "tune.trials must be at least 1, got 0."),
    (None, {"MLOPS_TUNE_JOBS": "0"}, {}, "tune.jobs must be at least 1, got 0."),
    (None, {}, {"tune.cv": 1}, "tune.cv must be at least 2, got 1."),
    ("[tune]\nmax_failed = 0\n", {}, {}, "tune.max_failed must be at least 1, got 0."),
    ("[tune]\ntimeout = \"later\"\n", {}, {}, "tune.timeout 'later' is not a duration; use e.g. 90s, 30m, 6h or 1d."),
    ("[tune]\nspace = { n_estimators = 100 }\n", {}, {},
     "tune.space.n_estimators must be a string such as \"int:50..500\", got 100."),
    ("[tune]\nsampler = \"bayes\"\n", {}, {},
     "tune.sampler in .mlops.toml must be one of tpe, random, grid, cmaes; got 'bayes'."),
    ("[watch]\ntune_trials = -1\n", {}, {}, "watch.tune_trials must be 0 (a plain train) or more, got -1."),
]


def test_param_variables_of_pipeline_steps_are_not_settings(tmp_path):
    """Steps get MLOPS_PARAM_<NAME>; a step that runs mlopsctl must not see them as a (typo'd) section."""
    from mlopsctl.config import SECTIONS

    assert "param" not in SECTIONS
    s = load_settings({}, {"MLOPS_PARAM_MIN_ROWS": "100", "MLOPS_TRAIN_SEED": "3"}, tmp_path)
    assert s.train.seed == 3


@pytest.mark.parametrize(("file", "env", "flags", "message"), ERRORS)
def test_config_errors(tmp_path, file, env, flags, message):
    if file is not None:
        write_config(tmp_path, file)
    with pytest.raises(ConfigError) as info:
        load_settings(flags, env, tmp_path)
    assert str(info.value) == message
    assert info.value.exit_code == 5


def test_invalid_toml(tmp_path):
    write_config(tmp_path, "[train\nseed = 1\n")
    with pytest.raises(tomllib.TOMLDecodeError) as parse:
        tomllib.loads("[train\nseed = 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings({}, {}, tmp_path)
    cfg = tmp_path.resolve() / CONFIG_FILE
    assert str(info.value) == f"{cfg} is not valid TOML ({parse.value}); fix the file or delete it to use defaults."


def test_a_folder_named_like_the_config_file_is_not_a_config(tmp_path):
    (tmp_path / CONFIG_FILE).mkdir()
    settings = load_settings({}, {}, tmp_path)
    assert settings.config_file is None


# ---- through the CLI: exit 5 and one line on stderr ------------------------------------------------------

@pytest.mark.parametrize(("file", "env", "message"), [
    ("[train]\nbogus = 1\n", {}, f"unknown key 'train.bogus' in .mlops.toml; valid keys: {VALID_KEYS}."),
    ("[bogus]\n", {},
     "unknown section [bogus] in .mlops.toml; valid sections: store, data, train, registry, serve, watch, monitor, "
     "tune, ui, pipeline."),
    ("[train]\nseed = \"x\"\n", {}, "train.seed in .mlops.toml must be an integer, got 'x'."),
    ("[data]\ntask = \"clustering\"\n", {},
     "data.task in .mlops.toml must be one of auto, classification, regression; got 'clustering'."),
    ("", {"MLOPS_TRAIN_NOPE": "1"}, "unknown environment variable MLOPS_TRAIN_NOPE; the [train] variables are: "
     + ", ".join(v for v in VALID_ENV.split(", ") if v.startswith("MLOPS_TRAIN_")) + "."),
    ("", {"MLOPS_TRAIN_SEED": "x"}, "train.seed from the environment must be an integer, got 'x'."),
])
@pytest.mark.parametrize("command", [["runs", "list"], ["data", "list"], ["train"]])
def test_cli_config_errors_exit_5(cli, assert_error, tmp_path, file, env, message, command):
    write_config(tmp_path, file)
    assert_error(cli(*command, env=env), 5, message)


def test_cli_project_option_reads_that_projects_config(cli, assert_error, tmp_path):
    write_config(tmp_path / "p", "[train]\nbogus = 1\n")
    assert_error(cli("-C", tmp_path / "p", "runs", "list"), 5,
                 f"unknown key 'train.bogus' in .mlops.toml; valid keys: {VALID_KEYS}.")
    # from tmp_path itself (no .mlops.toml here or above) the defaults apply and nothing fails
    result = cli("runs", "list", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "[]\n"


def test_cli_flag_beats_env_and_file(cli, tmp_path):
    """`train --seed` > MLOPS_TRAIN_SEED > .mlops.toml, observed on the recorded run."""
    import shutil

    examples = Path(__file__).resolve().parents[1] / "examples"
    shutil.copytree(examples / "breast-cancer", tmp_path / "p")
    cfg = tmp_path / "p" / CONFIG_FILE
    cfg.write_text(cfg.read_text().replace("params = { n_estimators = 100 }", "params = { n_estimators = 5 }\nseed = 1"))
    env = {"MLOPS_TRAIN_SEED": "2"}
    r = cli("-C", tmp_path / "p", "train", "--json", env=env)
    assert r.exit_code == 0, r.stderr
    r = cli("-C", tmp_path / "p", "train", "--json", "--seed", "3", env=env)
    assert r.exit_code == 0, r.stderr
    r = cli("-C", tmp_path / "p", "train", "--json")
    assert r.exit_code == 0, r.stderr
    runs = cli("-C", tmp_path / "p", "runs", "compare", "1", "2", "3", "--json")
    import json

    out = json.loads(runs.stdout)
    assert out["params"]["seed"] == ["2", "3", "1"]
    assert out["params"]["model.random_state"] == ["2", "3", "1"]
    assert out["params"]["model.n_estimators"] == ["5", "5", "5"]


def test_mlops_toml_example_lists_every_key_with_its_default(tmp_path):
    """The shipped example documents every key (and nothing else), each with its real default."""
    import shutil
    import tomllib

    from mlopsctl.config import all_keys, describe_keys

    example = Path(__file__).resolve().parents[1] / ".mlops.toml.example"
    text = example.read_text()
    data = tomllib.loads(text)
    assert sorted(f"{s}.{k}" for s, body in data.items() for k in body) == sorted(all_keys())
    defaults = {key: default for key, default, _doc, _choices in describe_keys()}
    steps = data["pipeline"].pop("steps")  # nested tables: an illustration of every step key, not the default
    for section, body in data.items():
        for key, value in body.items():
            assert value == defaults[f"{section}.{key}"], f"{section}.{key}"
    shutil.copy(example, tmp_path / ".mlops.toml")
    settings = load_settings({}, {}, tmp_path)
    assert settings.serve.port == 8080
    assert defaults["pipeline.steps"] == {} and settings.pipeline.steps == steps


def test_mlops_toml_example_shows_every_pipeline_step_key_with_its_doc():
    """Each key a [pipeline.steps.NAME] table takes is used by some step of the example, under its doc line."""
    import tomllib

    from mlopsctl.config_checks import STEP_KEYS

    text = (Path(__file__).resolve().parents[1] / ".mlops.toml.example").read_text()
    steps = tomllib.loads(text)["pipeline"]["steps"]
    used = {key for body in steps.values() for key in body}
    assert used == set(STEP_KEYS)
    for key, (_typ, doc, _kinds) in STEP_KEYS.items():
        assert f"# {doc}" in text, key


def test_other_tools_mlops_variables_are_ignored(tmp_path):
    """MLOPS_ is a common prefix: a variable whose next word is not one of our sections belongs to another tool."""
    s = load_settings({}, {"MLOPS_VENV": "/opt/venv", "MLOPS_DEBUG": "1", "MLOPS_": "x", "MLOPS_TRAIN_SEED": "7"},
                      tmp_path)
    assert s.train.seed == 7


@pytest.mark.parametrize(("value", "expected"), [
    ("id,signup_date", ["id", "signup_date"]), (" id , x ", ["id", "x"]), ('["a,b", "c"]', ["a,b", "c"]), ("", []),
])
def test_exclude_from_the_environment(tmp_path, value, expected):
    assert load_settings({}, {"MLOPS_DATA_EXCLUDE": value}, tmp_path).data.exclude == expected
