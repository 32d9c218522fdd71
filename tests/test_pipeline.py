"""`mlopsctl pipeline`: the DAG, the content-keyed cache, restores, failures, Ctrl-C, parallel steps, KFP.

Real parts only: steps are real shell commands running real Python scripts in a project under tmp_path, the
store is a real SQLite file, outputs go to the real artifact store, built-in steps really train. Timings are
printed (``-s``), never asserted: the figures are in benchmarks/bench_pipeline.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlopsctl.config import load_settings
from mlopsctl.errors import ConfigError, PipelineStepError
from mlopsctl.services import pipeline as svc

PY = shlex.quote(sys.executable)

# Each script appends its name to calls.log (not an output: the evidence of what actually ran).
SCRIPTS = {
    "clean.py": """
import sys, os
open("calls.log", "a").write("clean\\n")
rows = [r for r in open("raw.csv").read().splitlines()[1:] if r.strip()]
os.makedirs("out", exist_ok=True)
open("out/clean.csv", "w").write("x,y\\n" + "\\n".join(sorted(rows)) + "\\n")
""",
    "features.py": """
import os
open("calls.log", "a").write("features\\n")
rows = open("out/clean.csv").read().splitlines()[1:]
os.makedirs("out/features", exist_ok=True)
open("out/features/sums.csv", "w").write("\\n".join(str(sum(map(float, r.split(",")))) for r in rows) + "\\n")
os.makedirs("out/features/deep", exist_ok=True)
open("out/features/deep/count.txt", "w").write(str(len(rows)))
""",
    "stats.py": """
import json, os
open("calls.log", "a").write("stats\\n")
rows = open("raw.csv").read().splitlines()[1:]
os.makedirs("out", exist_ok=True)
json.dump({"rows": len(rows), "param": os.environ.get("MLOPS_PARAM_LEVEL")}, open("out/stats.json", "w"))
""",
    "summary.py": """
open("calls.log", "a").write("summary\\n")
n = open("out/features/deep/count.txt").read()
open("out/summary.txt", "w").write(f"{n} rows; " + open("out/stats.json").read())
""",
}

CONFIG = f"""
[pipeline.steps.clean]
cmd = "{PY} clean.py"
deps = ["clean.py", "raw.csv"]
outs = ["out/clean.csv"]

[pipeline.steps.features]
cmd = "{PY} features.py"
deps = ["features.py", "out/clean.csv"]
outs = ["out/features"]

[pipeline.steps.stats]
cmd = "{PY} stats.py"
deps = ["stats.py", "raw.csv"]
outs = ["out/stats.json"]
params = {{ level = 3 }}

[pipeline.steps.summary]
cmd = "{PY} summary.py"
deps = ["summary.py", "out/features", "out/stats.json"]
outs = ["out/summary.txt"]
"""


def make_cmd_project(root: Path, config: str = CONFIG, scripts: dict[str, str] = SCRIPTS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / ".mlops.toml").write_text(config)
    for name, text in scripts.items():
        (root / name).write_text(text.lstrip())
    (root / "raw.csv").write_text("x,y\n3,4\n1,2\n5,6\n")
    return root


def settings(root: Path):
    return load_settings({}, {}, root)


def calls(root: Path) -> list[str]:
    p = root / "calls.log"
    out = p.read_text().split() if p.exists() else []
    p.unlink(missing_ok=True)
    return out


def run(root: Path, *steps: str, **kw):
    return svc.run_pipeline(settings(root), list(steps), **kw)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def execution_rows(root: Path) -> list[dict]:
    import sqlite3

    con = sqlite3.connect(root / ".mlops" / "mlops.db")
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM pipeline_executions ORDER BY id")]
    finally:
        con.close()


# ---- the cache ------------------------------------------------------------------------------------------

def test_first_run_runs_every_step_and_the_second_none(tmp_path):
    root = make_cmd_project(tmp_path / "p")
    out = run(root)
    assert out["ran"] == ["clean", "features", "stats", "summary"]
    assert sorted(calls(root)) == ["clean", "features", "stats", "summary"]
    assert (root / "out/summary.txt").read_text() == '3 rows; {"rows": 3, "param": "3"}'

    t0 = time.perf_counter()
    again = run(root)
    elapsed = time.perf_counter() - t0
    print(f"\nfully cached 4-step pipeline: {elapsed * 1000:.0f} ms")
    assert again["ran"] == [] and again["cached"] == ["clean", "features", "stats", "summary"]
    assert calls(root) == []
    rows = execution_rows(root)
    assert [r["status"] for r in rows] == ["ran"] * 4 + ["cached"] * 4
    first = {r["step"]: r for r in rows[:4]}
    for r in rows[4:]:  # a cached execution points at the one that ran, with the same key and outputs
        assert r["source_id"] == first[r["step"]]["id"]
        assert r["key"] == first[r["step"]]["key"] and r["outputs"] == first[r["step"]]["outputs"]
    outputs = json.loads(first["features"]["outputs"])["out/features"]
    assert outputs["type"] == "dir" and sorted(outputs["files"]) == ["deep/count.txt", "sums.csv"]
    assert outputs["files"]["deep/count.txt"] == sha(root / "out/features/deep/count.txt")


def test_changing_one_dep_reruns_that_step_and_its_dependants_only(tmp_path):
    root = make_cmd_project(tmp_path / "p")
    run(root)
    calls(root)
    with open(root / "stats.py", "a") as fh:
        fh.write("open('out/stats.json', 'a').write(' ')\n")
    out = run(root)
    assert out["ran"] == ["stats", "summary"] and out["cached"] == ["clean", "features"]
    assert calls(root) == ["stats", "summary"]


def test_a_step_whose_output_did_not_change_leaves_its_dependants_cached(tmp_path):
    """clean.py changes (a comment) and reruns, but writes the same bytes: features and summary stay cached."""
    root = make_cmd_project(tmp_path / "p")
    run(root)
    calls(root)
    with open(root / "clean.py", "a") as fh:
        fh.write("# reworded\n")
    out = run(root)
    assert out["ran"] == ["clean"] and set(out["cached"]) == {"stats", "features", "summary"}


def test_changing_a_param_reruns_the_step_and_status_says_why(tmp_path):
    root = make_cmd_project(tmp_path / "p")
    run(root)
    calls(root)
    cfg = root / ".mlops.toml"
    cfg.write_text(cfg.read_text().replace("level = 3", 'level = "high"'))
    st = {s["step"]: s for s in svc.status(settings(root))["steps"]}
    assert st["stats"]["status"] == "stale" and st["stats"]["reasons"] == ['param level 3 -> "high"']
    assert st["summary"]["reasons"] == ["upstream step stats is stale"]
    assert st["clean"]["status"] == st["features"]["status"] == "fresh"
    (root / "raw.csv").write_text("x,y\n1,1\n")
    st = {s["step"]: s for s in svc.status(settings(root))["steps"]}
    assert st["clean"]["reasons"] == ["dep raw.csv changed"]
    assert st["stats"]["reasons"] == ["param level 3 -> \"high\"", "dep raw.csv changed"]
    out = run(root)
    assert out["ran"] == ["clean", "features", "stats", "summary"]
    assert json.loads((root / "out/stats.json").read_text()) == {"rows": 1, "param": "high"}


def test_deleting_an_output_restores_it_from_the_cache_without_running(tmp_path):
    root = make_cmd_project(tmp_path / "p")
    run(root)
    calls(root)
    before = {p: sha(root / p) for p in ("out/clean.csv", "out/features/sums.csv", "out/features/deep/count.txt")}
    (root / "out/clean.csv").unlink()
    import shutil

    shutil.rmtree(root / "out/features")
    st = {s["step"]: s for s in svc.status(settings(root))["steps"]}
    assert st["clean"]["status"] == "fresh"
    assert st["clean"]["reasons"] == ["out/clean.csv missing or changed: restorable from the cache"]
    out = run(root)
    assert out["ran"] == [] and calls(root) == []
    steps = {s["step"]: s for s in out["steps"]}
    assert steps["clean"]["restored"] == ["out/clean.csv"] and steps["features"]["restored"] == ["out/features"]
    assert {p: sha(root / p) for p in before} == before
    # an output edited by hand is put back too (its content is not what the step made)
    (root / "out/stats.json").write_text("{}")
    (root / "out/features/extra.txt").write_text("stray")
    out = run(root)
    assert out["ran"] == [] and sorted(s["step"] for s in out["steps"] if s["restored"]) == ["features", "stats"]
    assert not (root / "out/features/extra.txt").exists()
    assert json.loads((root / "out/stats.json").read_text())["rows"] == 3


def test_a_corrupted_blob_is_not_restored_the_step_runs_again(tmp_path):
    root = make_cmd_project(tmp_path / "p")
    first = run(root)
    calls(root)
    blob = settings(root).artifacts_dir / "sha256" / first["steps"][0]["outputs"]["out/clean.csv"][:2]
    [path] = [p for p in blob.iterdir() if p.name == first["steps"][0]["outputs"]["out/clean.csv"][2:]]
    path.chmod(0o644)
    path.write_text("tampered")
    (root / "out/clean.csv").unlink()
    out = run(root)
    assert out["ran"] == ["clean"] and calls(root) == ["clean"]
    assert (root / "out/clean.csv").read_text() == "x,y\n1,2\n3,4\n5,6\n"


def test_force_no_cache_and_dry_run(tmp_path):
    root = make_cmd_project(tmp_path / "p")
    plan = run(root, dry_run=True)
    assert plan["would_run"] == ["clean", "features", "stats", "summary"]
    assert not (root / "out").exists() and execution_rows(root) == []
    run(root)
    calls(root)
    plan = run(root, force=["features"], dry_run=True)
    assert plan["would_run"] == ["features", "summary"]
    assert {s["step"]: s["reasons"] for s in plan["steps"]}["features"] == ["forced (--force)"]
    out = run(root, force=["features"])
    assert out["ran"] == ["features"] and sorted(out["cached"]) == ["clean", "stats", "summary"]
    out = run(root, "features", no_cache=True)  # a target brings what it needs, not its dependants
    assert out["ran"] == ["clean", "features"]
    assert calls(root) == ["features", "clean", "features"]


def test_a_command_without_deps_or_marked_always_runs_every_time(tmp_path):
    config = f"""
[pipeline.steps.stamp]
cmd = "{PY} -c \\"open('calls.log','a').write('stamp\\\\n'); open('stamp.txt','w').write('x')\\""
outs = ["stamp.txt"]

[pipeline.steps.copy]
cmd = "{PY} -c \\"open('calls.log','a').write('copy\\\\n'); open('copy.txt','w').write(open('stamp.txt').read())\\""
deps = ["stamp.txt"]
outs = ["copy.txt"]
always = true
"""
    root = make_cmd_project(tmp_path / "p", config, {})
    assert run(root)["ran"] == ["stamp", "copy"]
    assert run(root)["ran"] == ["stamp", "copy"]
    st = {s["step"]: s["reasons"] for s in svc.status(settings(root))["steps"]}
    assert st == {"stamp": ["a command without deps always runs"], "copy": ["upstream step stamp is stale"]}


def test_params_reach_the_command_as_mlops_param_variables(tmp_path):
    """Strings as they are, everything else as JSON; a step that runs mlopsctl does not mistake them for settings."""
    config = f"""
[pipeline.steps.env]
cmd = "{PY} show_env.py"
deps = ["show_env.py"]
outs = ["env.json"]
params = {{ text = "é b", n = 100, ratio = 0.5, on = true, items = [1, "two"] }}
"""
    script = ('import json, os\n'
              'json.dump({k: v for k, v in os.environ.items() if k.startswith("MLOPS_PARAM_")}, open("env.json", "w"))\n'
              'from mlopsctl.config import load_settings\n'
              'load_settings()\n')
    root = make_cmd_project(tmp_path / "p", config, {"show_env.py": script})
    run(root)
    assert json.loads((root / "env.json").read_text()) == {
        "MLOPS_PARAM_TEXT": "é b", "MLOPS_PARAM_N": "100", "MLOPS_PARAM_RATIO": "0.5", "MLOPS_PARAM_ON": "true",
        "MLOPS_PARAM_ITEMS": '[1, "two"]'}


def test_paths_and_names_nobody_designed(tmp_path):
    """Spaces, unicode and dots in step names, deps and outputs; an empty output file; a 1-row input."""
    config = f"""
[pipeline.steps."prep.v2_x"]
cmd = "{PY} 'mon script.py'"
deps = ["mon script.py", "données brutes/entrée 1.csv"]
outs = ["sortie/résultat final.csv", "sortie/vide.txt"]
"""
    script = ('import os\nos.makedirs("sortie", exist_ok=True)\n'
              'open("sortie/résultat final.csv", "w").write(open("données brutes/entrée 1.csv").read().upper())\n'
              'open("sortie/vide.txt", "w").close()\n')
    root = make_cmd_project(tmp_path / "p ü", config, {"mon script.py": script})
    (root / "données brutes").mkdir()
    (root / "données brutes/entrée 1.csv").write_text("a\nx\n")
    assert run(root)["ran"] == ["prep.v2_x"]
    (root / "sortie/vide.txt").unlink()
    out = run(root)
    assert out["cached"] == ["prep.v2_x"] and out["steps"][0]["restored"] == ["sortie/vide.txt"]
    assert (root / "sortie/vide.txt").read_bytes() == b""
    assert (root / "sortie/résultat final.csv").read_text() == "A\nX\n"


# ---- failures and Ctrl-C --------------------------------------------------------------------------------

def test_a_failing_step_stops_its_dependants_and_leaves_the_others_cached(tmp_path, cli):
    root = make_cmd_project(tmp_path / "p")
    run(root)
    calls(root)
    good = (root / "out/clean.csv").read_bytes()
    (root / "clean.py").write_text(
        'import sys\nopen("calls.log", "a").write("clean\\n")\nopen("out/clean.csv", "w").write("half")\n'
        'print("reading rows", flush=True)\nprint("warning: odd row", file=sys.stderr)\n'
        'sys.exit("ValueError: row 7 has 3 fields, expected 2")\n')
    (root / "stats.py").write_text((root / "stats.py").read_text() + "\n# touched\n")
    os.chdir(root)
    result = cli("pipeline", "run")
    assert result.exit_code == 6, (result.stdout, result.stderr)
    assert "clean: FAILED after" in result.stderr and "features: skipped (upstream step clean did not finish)" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "Error: step 'clean' failed (exit 1: ValueError: row 7 has 3 fields, expected 2); not run: features, summary.")
    assert sorted(calls(root)) == ["clean", "stats"]
    assert (root / "out/clean.csv").read_bytes() == good  # the half-written output was replaced by the old one
    assert not list((root / "out").glob(".*mlops*"))
    rows = execution_rows(root)[4:]
    by = {r["step"]: r for r in rows}
    assert {s: r["status"] for s, r in by.items()} == {"clean": "failed", "stats": "ran", "features": "skipped",
                                                       "summary": "skipped"}
    assert by["clean"]["exit_code"] == 1
    arts = settings(root).artifacts_dir / "sha256"
    stderr = (arts / by["clean"]["stderr_sha256"][:2] / by["clean"]["stderr_sha256"][2:]).read_text()
    stdout = (arts / by["clean"]["stdout_sha256"][:2] / by["clean"]["stdout_sha256"][2:]).read_text()
    assert stderr == "warning: odd row\nValueError: row 7 has 3 fields, expected 2\n" and stdout == "reading rows\n"
    # the step that succeeded in the failed run is cached now; the failed one runs again (fixed: it writes
    # what it wrote before, so its dependants come from the cache too)
    (root / "clean.py").write_text(SCRIPTS["clean.py"].lstrip() + "# fixed\n")
    out = run(root)
    assert out["ran"] == ["clean"] and out["cached"] == ["features", "stats", "summary"]


def test_a_step_that_does_not_write_its_output_fails(tmp_path):
    config = f'[pipeline.steps.lazy]\ncmd = "{PY} -c pass"\ndeps = ["raw.csv"]\nouts = ["never.csv"]\n'
    root = make_cmd_project(tmp_path / "p", config, {})
    with pytest.raises(PipelineStepError) as info:
        run(root)
    assert str(info.value) == ("step 'lazy' failed (exit 0 without writing its output 'never.csv'; write it or fix "
                               "the step's outs).")
    assert info.value.exit_code == 6


def test_ctrl_c_leaves_nothing_half_written(tmp_path):
    """SIGINT while a step writes: the command is interrupted, its old output is back, the run is recorded."""
    config = f"""
[pipeline.steps.slow]
cmd = "{PY} slow.py"
deps = ["slow.py", "raw.csv"]
outs = ["out/slow.csv"]

[pipeline.steps.after]
cmd = "{PY} -c \\"open('out/after.txt','w').write('x')\\""
deps = ["out/slow.csv"]
outs = ["out/after.txt"]
"""
    slow = ('import os, sys, time\nos.makedirs("out", exist_ok=True)\nfh = open("out/slow.csv", "w")\n'
            'fh.write(open("raw.csv").read()); fh.flush()\n'
            'if os.environ.get("SLOW"):\n    open("started", "w").close()\n    time.sleep(60)\n')
    root = make_cmd_project(tmp_path / "p", config, {"slow.py": slow})
    run(root)
    before = (root / "out/slow.csv").read_bytes()
    (root / "raw.csv").write_text("x,y\n9,9\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")} | {"SLOW": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mlopsctl", "pipeline", "run"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (root / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.splitlines()[-1] == "Error: interrupted."
    assert (root / "out/slow.csv").read_bytes() == before
    assert sorted(p.name for p in (root / "out").iterdir()) == ["after.txt", "slow.csv"]
    import sqlite3

    con = sqlite3.connect(root / ".mlops" / "mlops.db")
    runs = con.execute("SELECT status, message FROM pipeline_runs ORDER BY id").fetchall()
    steps = con.execute("SELECT step, status FROM pipeline_executions WHERE pipeline_run_id = 2").fetchall()
    con.close()
    assert runs == [("succeeded", None), ("interrupted", "interrupted (Ctrl-C)")]
    assert steps == [("slow", "failed")]
    out = run(root)  # and the next run does the work
    assert out["ran"] == ["slow", "after"] and (root / "out/slow.csv").read_text() == "x,y\n9,9\n"


def test_independent_steps_run_in_parallel(tmp_path):
    step = ('import sys, time\nname = sys.argv[1]\nopen(f"{name}.start", "w").write(repr(time.time()))\n'
            'time.sleep(1.0)\nopen(f"{name}.end", "w").write(repr(time.time()))\n')
    config = "".join(f'[pipeline.steps.{n}]\ncmd = "{PY} step.py {n}"\ndeps = ["step.py"]\n'
                     f'outs = ["{n}.start", "{n}.end"]\n' for n in ("a", "b"))
    root = make_cmd_project(tmp_path / "p", config, {"step.py": step})
    run(root, jobs=2)
    t = {f"{n}.{e}": float((root / f"{n}.{e}").read_text()) for n in "ab" for e in ("start", "end")}
    assert t["a.start"] < t["b.end"] and t["b.start"] < t["a.end"]  # they overlapped
    run(root, no_cache=True, jobs=1)
    t = {f"{n}.{e}": float((root / f"{n}.{e}").read_text()) for n in "ab" for e in ("start", "end")}
    assert t["a.end"] <= t["b.start"]  # one at a time


def test_one_pipeline_run_at_a_time(tmp_path):
    import fcntl

    root = make_cmd_project(tmp_path / "p")
    lock = root / ".mlops/pipeline/run.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(Exception) as info:
            run(root)
    assert str(info.value) == "another `mlopsctl pipeline` run is in progress in this project; wait for it to finish."


# ---- the graph ------------------------------------------------------------------------------------------

GRAPH_ERRORS = [
    ('[pipeline.steps.a]\ncmd = "x"\nneeds = ["b"]\n[pipeline.steps.b]\ncmd = "y"\nneeds = ["a"]\n',
     "pipeline steps form a cycle: a needs b needs a; break it by removing one of these needs (or deps on another "
     "step's outputs)."),
    ('[pipeline.steps.a]\ncmd = "x"\ndeps = ["b.csv"]\nouts = ["a.csv"]\n'
     '[pipeline.steps.b]\ncmd = "y"\ndeps = ["c.csv"]\nouts = ["b.csv"]\n'
     '[pipeline.steps.c]\ncmd = "z"\ndeps = ["a.csv"]\nouts = ["c.csv"]\n',
     "pipeline steps form a cycle: a needs b needs c needs a; break it by removing one of these needs (or deps on "
     "another step's outputs)."),
    ('[pipeline.steps.a]\ncmd = "x"\nneeds = ["ghost"]\n',
     "pipeline step 'a' needs 'ghost', which is not a step; the steps are: a."),
    ('[pipeline.steps.a]\ncmd = "x"\nouts = ["data"]\n[pipeline.steps.b]\ncmd = "y"\nouts = ["data/t.csv"]\n',
     "pipeline steps 'a' and 'b' both write 'data'; an output must have one writer."),
    ('[pipeline.steps.a]\ncmd = "x"\ndeps = ["d/in.csv"]\nouts = ["d"]\n',
     "pipeline step 'a' reads its own output 'd' (dep 'd/in.csv'); a step cannot depend on what it writes."),
    ('[pipeline.steps.a]\ncmd = "x"\nouts = ["../up.csv"]\n',
     "pipeline step 'a': output '../up.csv' must be a path inside the project folder, relative to it."),
    ('[pipeline.steps.a]\ncmd = "x"\nouts = [".mlops/x"]\n',
     "pipeline step 'a': output '.mlops/x' would overwrite the project itself; write under another folder."),
    ('[pipeline.steps.reg]\nuses = "register"\n',
     "pipeline step 'reg' (uses = \"register\") needs exactly one uses = \"train\" or \"tune\" step in its needs "
     "(found none); add it, as in needs = [\"train\"]."),
    ('[train]\nseed = 1\n',
     "this project has no pipeline steps; declare them in .mlops.toml as [pipeline.steps.NAME] tables (see "
     ".mlops.toml.example)."),
]


@pytest.mark.parametrize(("config", "message"), GRAPH_ERRORS)
def test_bad_graphs_are_one_line_config_errors(tmp_path, cli, assert_error, config, message):
    (tmp_path / ".mlops.toml").write_text(config)
    with pytest.raises(ConfigError) as info:
        svc.show(settings(tmp_path))
    assert str(info.value) == message
    assert_error(cli("pipeline", "run"), 5, message)


def test_bad_step_tables_and_commands_are_one_line_errors(tmp_path, cli, assert_error):
    (tmp_path / ".mlops.toml").write_text('[pipeline.steps.prep]\ncmd = "x"\nouts = "a.csv"\n')
    assert_error(cli("pipeline", "status"), 5,
                 "pipeline step 'prep' in .mlops.toml: outs must be a list of non-empty strings, got 'a.csv'.")
    make_cmd_project(tmp_path)
    assert_error(cli("pipeline", "run", "nope"), 3,
                 "no pipeline step named 'nope'; the steps are: clean, features, stats, summary.")
    assert_error(cli("pipeline", "run", "--force", "nope"), 3,
                 "no pipeline step named 'nope'; the steps are: clean, features, stats, summary.")
    assert_error(cli("pipeline", "compile", "--target", "argo", "-o", "p.yaml"), 2,
                 "--target 'argo' is not supported; use --target kfp.")
    (tmp_path / "raw.csv").unlink()
    with pytest.raises(PipelineStepError) as info:
        run(tmp_path)
    assert str(info.value) == ("step 'clean' failed (pipeline step 'clean': its dep 'raw.csv' does not exist and no "
                               "step writes it; create it or fix the step's deps.); also failed: stats; not run: "
                               "features, summary.")


def test_show_and_dot(tmp_path, cli):
    root = make_cmd_project(tmp_path)
    out = svc.show(settings(root))
    assert [(s["name"], s["upstream"]) for s in out["steps"]] == [
        ("clean", []), ("features", ["clean"]), ("stats", []), ("summary", ["features", "stats"])]
    dot = cli("pipeline", "show", "--dot")
    assert dot.exit_code == 0
    edges = sorted(line.strip() for line in dot.stdout.splitlines() if "->" in line)
    assert edges == ['"clean" -> "features";', '"features" -> "summary";', '"stats" -> "summary";']


# ---- built-in steps, lineage, watch ---------------------------------------------------------------------

PREPARE = """
import csv, os, sys
open("calls.log", "a").write("prepare\\n")
rows = list(csv.DictReader(open("raw/data.csv")))
os.makedirs("data", exist_ok=True)
with open("data/train.csv", "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["f1", "f2", "ratio", "label"])
    for r in rows:
        w.writerow([r["f1"], r["f2"], float(r["f1"]) / (abs(float(r["f2"])) + 1), r["label"]])
"""


def builtin_project(root: Path, extra: str = "") -> Path:
    import numpy as np

    config = f"""
[data]
target = "label"
[registry]
model_name = "pipe"
[train]
params = {{ n_estimators = 5 }}

[pipeline.steps.prepare]
cmd = "{PY} prepare.py"
deps = ["prepare.py", "raw"]
outs = ["data/train.csv"]

[pipeline.steps.train]
uses = "train"

[pipeline.steps.register]
uses = "register"
needs = ["train"]

[pipeline.steps.promote]
uses = "promote"
needs = ["register"]

[pipeline.steps.other]
cmd = "{PY} -c \\"open('calls.log','a').write('other\\\\n'); open('other.txt','w').write('o')\\""
deps = ["raw"]
outs = ["other.txt"]
{extra}"""
    root = make_cmd_project(root, config, {"prepare.py": PREPARE})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    (root / "raw").mkdir()
    (root / "raw/data.csv").write_text("f1,f2,label\n" + "".join(
        f"{a:.4f},{b:.4f},{int(a + b > 0)}\n" for a, b in x))
    return root


def test_builtin_steps_cache_and_a_param_change_reruns_only_that_step(tmp_path):
    root = builtin_project(tmp_path / "p")
    out = run(root)
    assert out["ran"] == ["prepare", "train", "register", "promote", "other"]
    steps = {s["step"]: s for s in out["steps"]}
    assert steps["register"]["result"]["version"] == 1 and steps["promote"]["result"]["decision"] == "promoted"
    calls(root)
    assert run(root)["ran"] == [] and calls(root) == []

    cfg = root / ".mlops.toml"
    cfg.write_text(cfg.read_text().replace('[pipeline.steps.train]\nuses = "train"\n',
                                           '[pipeline.steps.train]\nuses = "train"\nparams = { max_depth = 3 }\n'))
    st = {s["step"]: s["reasons"] for s in svc.status(settings(root))["steps"]}
    assert st["train"] == ["param max_depth added"]
    out = run(root, "train")
    assert out["ran"] == ["train"] and out["cached"] == ["prepare"] and calls(root) == []
    from mlopsctl.services import runs

    run_id = {s["step"]: s for s in out["steps"]}["train"]["result"]["run_id"]
    assert runs.show_run(settings(root), str(run_id))["params"]["model.max_depth"] == "3"
    out = run(root)  # its dependants follow the new run; prepare and other stay cached
    assert out["ran"] == ["register", "promote"] and sorted(out["cached"]) == ["other", "prepare", "train"]
    cfg.write_text(cfg.read_text().replace("[train]\nparams = { n_estimators = 5 }", "[train]\nparams = { n_estimators = 6 }"))
    assert {s["step"]: s["reasons"] for s in svc.status(settings(root))["steps"]}["train"] == [
        'setting params {"n_estimators": 5} -> {"n_estimators": 6}']


def test_a_tune_step_searches_refits_and_its_run_is_registered_and_cached(tmp_path):
    root = builtin_project(tmp_path / "p", extra="[tune]\ncv = 2\nspace = { max_depth = \"int:2..6\" }\n")
    cfg = root / ".mlops.toml"
    cfg.write_text(cfg.read_text().replace('[pipeline.steps.train]\nuses = "train"\n',
                                           '[pipeline.steps.train]\nuses = "tune"\ntrials = 3\n'))
    out = run(root, "promote")
    assert out["ran"] == ["prepare", "train", "register", "promote"]
    made = {s["step"]: s["result"] for s in out["steps"]}
    study = made["train"]["study"]
    assert study.startswith("pipeline-train-") and len(study) == len("pipeline-train-") + 12
    from mlopsctl.services import runs, tune

    shown = tune.show_study(settings(root), study)
    assert shown["counts"]["COMPLETE"] + shown["counts"]["PRUNED"] == 3 and shown["refit"]["run_id"] == made["train"]["run_id"]
    refit = runs.show_run(settings(root), str(made["train"]["run_id"]))
    assert refit["tags"]["tune.role"] == "refit" and refit["tags"]["tune.study"] == study
    assert refit["params"]["model.max_depth"] == str(shown["best"]["params"]["max_depth"])
    assert made["register"] == {"run_id": refit["id"], "model": "pipe", "version": 1}
    assert made["promote"]["decision"] == "promoted"
    calls(root)
    assert run(root, "promote")["ran"] == []  # nothing changed: the study is not run again

    cfg.write_text(cfg.read_text().replace("trials = 3", "trials = 4"))
    assert {s["step"]: s["reasons"] for s in svc.status(settings(root))["steps"]}["train"] == [
        'setting tune {"cv": 2, "max_failed": 10, "pruner": "median", "sampler": "tpe", "space": {"max_depth": '
        '"int:2..6"}, "trials": 3} -> {"cv": 2, "max_failed": 10, "pruner": "median", "sampler": "tpe", "space": '
        '{"max_depth": "int:2..6"}, "trials": 4}']
    out = run(root, "train")
    assert out["ran"] == ["train"] and out["cached"] == ["prepare"]
    assert {s["step"]: s for s in out["steps"]}["train"]["result"]["study"] != study


@pytest.mark.parametrize(("table", "message"), [
    ('uses = "tune"\ntrials = 0', "pipeline step 'search' in .mlops.toml: trials must be a whole number of 1 or more, got 0."),
    ('uses = "tune"\ntrials = true', "pipeline step 'search' in .mlops.toml: trials must be a whole number of 1 or more, got True."),
    ('uses = "train"\ntrials = 3', "pipeline step 'search' in .mlops.toml: 'trials' does not apply to a uses = \"train\" step; "
                                 "the keys of a uses = \"train\" step are: uses, deps, params, needs, always, data, model, "
                                 "experiment."),
])
def test_bad_tune_step_tables_are_one_line_errors(tmp_path, cli, assert_error, table, message):
    (tmp_path / ".mlops.toml").write_text(f"[pipeline.steps.search]\n{table}\n")
    os.chdir(tmp_path)
    assert_error(cli("pipeline", "run"), 5, message)


def test_lineage_from_a_model_version_back_to_the_raw_files(tmp_path, cli):
    root = builtin_project(tmp_path / "p")
    run(root)
    out = svc.lineage(settings(root), "pipe@production")
    assert (out["model"], out["version"]) == ("pipe", 1)
    chain = {e["step"]: e for e in out["executions"]}
    assert list(chain) == ["register", "train", "prepare"]
    assert chain["train"]["run_id"] == out["run_id"]
    assert chain["train"]["deps"] == {"data/train.csv": sha(root / "data/train.csv")}
    assert chain["prepare"]["outputs"] == {"data/train.csv": sha(root / "data/train.csv")}
    assert chain["prepare"]["deps"]["prepare.py"] == sha(root / "prepare.py")
    from mlopsctl.pipeline.hashing import manifest_sha256

    assert chain["prepare"]["deps"]["raw"] == manifest_sha256({"data.csv": sha(root / "raw/data.csv")})
    os.chdir(root)
    result = cli("pipeline", "lineage", "pipe/1", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["executions"][2]["step"] == "prepare"


def test_watch_retrain_runs_the_pipeline_when_a_raw_file_lands(tmp_path):
    root = builtin_project(tmp_path / "p")
    first = svc.retrain(settings(root))
    assert (first["model"], first["version"], first["decision"]) == ("pipe", 1, "promoted")
    assert first["ran"] == ["prepare", "train", "register", "promote", "other"]
    nothing = svc.retrain(settings(root))
    assert nothing["ran"] == [] and nothing["version"] == 1
    (root / "raw/more.csv").write_text("f1,f2,label\n0.5,0.5,1\n")  # a new file in the raw folder
    (root / "prepare.py").write_text(PREPARE.replace('rows = list(csv.DictReader(open("raw/data.csv")))',
                                                     'import glob\nrows = [r for f in sorted(glob.glob("raw/*.csv")) '
                                                     'for r in csv.DictReader(open(f))]'))
    again = svc.retrain(settings(root))
    assert again["ran"] == ["prepare", "train", "register", "promote", "other"] and again["version"] == 2
    assert again["decision"] in ("promoted", "rejected")
    assert len((root / "data/train.csv").read_text().splitlines()) == 122


def test_evaluate_step_writes_its_metrics_file_and_logs_them_on_the_run(tmp_path):
    extra = '[pipeline.steps.eval]\nuses = "evaluate"\nneeds = ["train"]\nmetrics = "reports/m.json"\n'
    root = builtin_project(tmp_path / "p", extra)
    out = run(root, "eval")
    assert out["ran"] == ["prepare", "train", "eval"]
    report = json.loads((root / "reports/m.json").read_text())
    from mlopsctl.services import runs

    run_view = runs.show_run(settings(root), str(report["run_id"]))
    assert report["rows"] == 24 and report["data"] == f"held-out split of run {report['run_id']}"
    assert run_view["metrics"]["eval.roc_auc"] == pytest.approx(report["metrics"]["roc_auc"])
    assert report["metrics"]["roc_auc"] == pytest.approx(run_view["metrics"]["roc_auc"], abs=1e-6)
    (root / "reports/m.json").unlink()
    out = run(root, "eval")
    assert out["ran"] == [] and (root / "reports/m.json").exists()


# ---- Kubeflow Pipelines -----------------------------------------------------------------------------------

def test_compile_to_kfp_and_load_it_back_with_the_sdk(tmp_path, cli):
    from kfp import components

    root = make_cmd_project(tmp_path / "p")
    cfg = root / ".mlops.toml"
    cfg.write_text(cfg.read_text() + '\n[pipeline.steps."Final.Step"]\ncmd = "echo done"\nneeds = ["summary"]\n')
    os.chdir(root)
    result = cli("pipeline", "compile", "--target", "kfp", "-o", "pipeline.yaml", "--image", "reg.example/p:1", "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    fps = {s["step"]: s["fingerprint"] for s in info["steps"]}
    loaded = components.load_component_from_file(str(root / "pipeline.yaml"))
    spec = loaded.pipeline_spec
    tasks = spec.root.dag.tasks
    assert sorted(tasks) == ["clean", "features", "final-step", "stats", "summary"]
    assert sorted(tasks["summary"].dependent_tasks) == ["features", "stats"]
    assert list(tasks["final-step"].dependent_tasks) == ["summary"]
    assert tasks["final-step"].caching_options.enable_cache is False  # no deps: always runs
    assert tasks["clean"].caching_options.enable_cache is True
    executors = spec.deployment_spec["executors"]
    clean = executors["exec-clean"]["container"]
    assert clean["image"] == "reg.example/p:1" and clean["command"] == ["mlopsctl"]
    assert clean["args"] == ["-C", "/srv/mlops", "pipeline", "step", "clean", "--fingerprint", fps["clean"]]
    assert executors["exec-final-step"]["container"]["args"][4] == "Final.Step"
    # the fingerprints follow the content: a raw file changes its readers' and their dependants' fingerprints
    (root / "raw.csv").write_text("x,y\n0,0\n")
    after = svc.fingerprints(settings(root))
    assert {n for n in fps if fps[n] != after[n]} == {"clean", "stats", "features", "summary", "Final.Step"}
    (root / "features.py").write_text((root / "features.py").read_text() + "# edit\n")
    again = svc.fingerprints(settings(root))
    assert {n for n in fps if again[n] != after[n]} == {"features", "summary", "Final.Step"}


def test_pipeline_step_runs_one_step_as_a_kfp_container_would(tmp_path, cli, assert_error):
    root = make_cmd_project(tmp_path / "p")
    os.chdir(root)
    fps = svc.fingerprints(settings(root))
    result = cli("pipeline", "step", "features", "--json")  # --json: no progress lines, the error alone
    assert_error(result, 6, "step 'clean' failed (it has not run with its current inputs (never ran); run "
                            "`mlopsctl pipeline step clean` (or `pipeline run`) first); not run: features.")
    assert cli("pipeline", "step", "clean", "--fingerprint", fps["clean"]).exit_code == 0
    assert calls(root) == ["clean"]
    (root / "out/clean.csv").unlink()  # another pod: the upstream output is not here, the store has it
    result = cli("pipeline", "step", "features", "--fingerprint", fps["features"])
    assert result.exit_code == 0, result.stderr
    assert calls(root) == ["features"] and (root / "out/clean.csv").exists()
    assert_error(cli("pipeline", "step", "stats", "--fingerprint", "0" * 64, "--json"), 4,
                 f"step 'stats': this project's inputs differ from the compiled pipeline's (fingerprint "
                 f"{fps['stats'][:12]}, compiled 000000000000); rebuild the image and recompile with "
                 "`mlopsctl pipeline compile`.")


def test_compile_without_kfp_says_how_to_install_it(tmp_path, monkeypatch):
    root = make_cmd_project(tmp_path / "p")
    monkeypatch.setitem(sys.modules, "kfp", None)  # as if the [kubeflow] extra were not installed
    with pytest.raises(ConfigError) as info:
        svc.compile_kfp(settings(root), root / "p.yaml")
    assert str(info.value) == ("compiling for Kubeflow Pipelines needs the kfp SDK; install it with "
                               "pip install 'mlopsctl[kubeflow]'.")
    assert not (root / "p.yaml").exists()


# ---- the stat cache -------------------------------------------------------------------------------------

def test_stat_cache_skips_unchanged_files_and_rehashes_changed_or_racy_ones(tmp_path):
    from mlopsctl.pipeline.hashing import StatCache

    f = tmp_path / "big.bin"
    f.write_bytes(b"a" * 100_000)
    old = time.time() - 60
    os.utime(f, (old, old))
    cache = StatCache(tmp_path / "c.json")
    assert cache.file_sha256(f) == sha(f) and cache.hashed == 1
    assert cache.file_sha256(f) == sha(f) and cache.hashed == 1  # size, mtime, inode unchanged: not read
    cache.save()
    reloaded = StatCache(tmp_path / "c.json")
    assert reloaded.file_sha256(f) == sha(f) and reloaded.hashed == 0 and reloaded.hashed_bytes == 0
    f.write_bytes(b"b" * 100_000)  # same size, new mtime
    assert reloaded.file_sha256(f) == sha(f) and reloaded.hashed == 1
    # just written: within the racy window it is read every time, whatever the cache says
    assert reloaded.file_sha256(f) == sha(f) and reloaded.hashed == 2 and reloaded.hashed_bytes == 200_000
    (tmp_path / "c.json").write_text("{not json")
    assert StatCache(tmp_path / "c.json").file_sha256(f) == sha(f)  # a damaged cache is ignored


# ---- the bundled example, as the README runs it -----------------------------------------------------------

def test_the_subscriptions_example_end_to_end_and_a_new_usage_file(make_project, cli, monkeypatch):
    """`mlopsctl init demo --example subscriptions && cd demo && mlopsctl pipeline run`; then a new month's usage
    file lands in the watched folder and the watch retrain reruns the pipeline from prepare."""
    import pandas as pd

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # `python`
    root = make_project("subscriptions")
    cfg = root / ".mlops.toml"
    cfg.write_text(cfg.read_text().replace("max_iter = 100", "max_iter = 30"))  # a faster fit, same pipeline
    monkeypatch.chdir(root)
    result = cli("pipeline", "run", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["ran"] == ["prepare", "train", "evaluate", "register", "promote"]
    steps = {s["step"]: s for s in out["steps"]}
    assert steps["promote"]["result"]["decision"] == "promoted"
    train = pd.read_csv(root / "data/train.csv")
    assert {"tenure_days", "avg_minutes", "minutes_trend", "calls_per_month", "churned"} <= set(train.columns)
    assert "customer_id" not in train.columns and len(train) > 1000
    metrics = json.loads((root / "reports/metrics.json").read_text())["metrics"]
    assert metrics["roc_auc"] > 0.75  # the joined features carry the churn signal
    again = json.loads(cli("pipeline", "run", "--json").stdout)
    assert again["ran"] == [] and again["cached"] == out["ran"]

    s = load_settings({}, {}, root)
    assert s.watch.pipeline is True and s.resolve(s.watch.path) == root / "data/raw/usage"
    june = pd.read_csv(root / "data/raw/usage/2024-06.csv")
    june.assign(month="2024-07").to_csv(root / "data/raw/usage/2024-07.csv", index=False)
    fast = {"MLOPS_WATCH_DEBOUNCE_SECONDS": "0.1"}
    result = cli("watch", "--once", "--json", env=fast)  # the real watcher: the file lands, the pipeline runs
    assert result.exit_code == 0, result.stderr
    [job] = json.loads(result.stdout)
    assert (job["version"], job["decision"] in ("promoted", "rejected")) == (2, True)
    executions = svc.executions(s, limit=20)
    assert [e["step"] for e in executions if e["status"] == "ran"][:5] == ["promote", "register", "evaluate", "train",
                                                                           "prepare"]  # newest first
    assert (root / "data/raw/usage/2024-07.csv").exists()  # raw inputs stay where the steps read them
    result = cli("watch", "--once", "--json", env=fast)  # nothing new: the pipeline's cache skips every step
    [again] = json.loads(result.stdout)
    assert (again["version"], again["decision"]) == (2, "unchanged") and "every step cached" in again["reason"]
    assert json.loads(cli("models", "show", "subscriptions", "--json").stdout)["versions"][-1]["version"] == 2
