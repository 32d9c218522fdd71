"""Foundation benchmarks (issue 2): each target measured against its named baseline in the same run.

    .venv/bin/python benchmarks/bench_foundation.py            # full: the figures in RESULTS.md
    .venv/bin/python benchmarks/bench_foundation.py --quick    # fewer repetitions, a smoke check

Targets (medians of repeated runs, every command a fresh subprocess unless said otherwise):

* ``mlopsctl --help`` wall <= 0.15 s; baselines ``mlflow --help`` and ``python -c "import mlflow"``.
* Python API in a project made by ``mlopsctl init``: ``run.log_metric`` <= 0.5 ms per call and
  ``run.log_batch`` (10,000 metrics) <= 0.02 ms per metric; baseline MLflow's ``MlflowClient`` on SQLite
  (``log_metric`` per call, ``log_batch`` in batches of 1,000, MLflow's limit).
* ``mlopsctl train`` on the breast-cancer example <= 1.3 x a bare script doing the same pipeline's fit,
  the skl2onnx export and an ONNX Runtime parity check (whole process wall, start-up included for both,
  runs alternating).

MLflow runs from its own virtualenv (``benchmarks/.work/mlflow-venv``, created with pip when missing,
never in the project's venv). When it cannot be installed the recorded figures stand in and RESULTS.md says
so. Bytecode is precompiled first and ``PYTHONDONTWRITEBYTECODE`` is dropped for the subprocesses, as real
installs have .pyc files. Benchmarks are not tests: the exit status is 0 whether targets are met or not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import cpu_model, ensure_mlflow, write_section
from _common import timed as timed_call

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Foundation (issue 2)"
BIN = Path(sys.executable).parent  # the venv's bin/ (not resolved: the venv python, not the base one)
MLOPSCTL = BIN / "mlopsctl"

TARGET_HELP_S = 0.15
TARGET_LOG_METRIC_MS = 0.5
TARGET_LOG_BATCH_MS = 0.02
TARGET_TRAIN_RATIO = 1.3
BATCH_SIZE = 10_000
MLFLOW_BATCH_LIMIT = 1_000
# Figures recorded before this benchmark existed; used only when MLflow cannot be installed.
RECORDED = {"mlflow --help": 3.1, "import mlflow": 1.4, "mlflow log_metric": 2.6, "mlflow log_batch": 0.05}


# ---- helpers ------------------------------------------------------------------------------------------

def env() -> dict[str, str]:
    e = dict(os.environ)
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    e.pop("PYTHONPROFILEIMPORTTIME", None)
    for k in [k for k in e if k.startswith("MLOPS_")]:
        e.pop(k)
    return e


def run(cmd: list[str], cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stderr[-2000:]}")
    return p


def wall(cmd: list[str], cwd: Path | None = None) -> float:
    return timed(cmd, cwd)[0]


def timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys) of one subprocess run."""
    return timed_call(run, cmd, cwd)


def cpu_pressure() -> float:
    """% of the last 10 s in which some runnable task waited for a CPU (Linux PSI); load-based otherwise."""
    try:
        text = Path("/proc/pressure/cpu").read_text()
        return float(re.search(r"some avg10=([0-9.]+)", text).group(1))  # type: ignore[union-attr]
    except (OSError, AttributeError, ValueError):
        return 100.0 * os.getloadavg()[0] / (os.cpu_count() or 1)


QUIET = {"threshold": 10.0, "budget_s": 0.0, "waited_s": 0.0, "noisy_starts": 0}


def wait_quiet(max_s: float = 60.0) -> None:
    """Other processes skew wall times: wait (within the run's budget) until CPU pressure is low."""
    deadline = time.monotonic() + min(max_s, max(0.0, QUIET["budget_s"] - QUIET["waited_s"]))
    t0 = time.monotonic()
    while cpu_pressure() > QUIET["threshold"] and time.monotonic() < deadline:
        time.sleep(2)
    QUIET["waited_s"] += time.monotonic() - t0
    if cpu_pressure() > QUIET["threshold"]:
        QUIET["noisy_starts"] += 1


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def precompile(paths: list[Path]) -> None:
    for p in paths:
        if p.exists():
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(p)], env=env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def site_packages(venv_bin: Path) -> Path:
    return venv_bin.parent / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


# ---- 1. --help ----------------------------------------------------------------------------------------

def bench_help(reps: int, mlflow_py: Path | None) -> dict:
    cmds = {"mlopsctl --help": [str(MLOPSCTL), "--help"]}
    if mlflow_py is not None:
        cmds["mlflow --help"] = [str(mlflow_py.parent / "mlflow"), "--help"]
        cmds["import mlflow"] = [str(mlflow_py), "-c", "import mlflow"]
    cmds["python -c pass"] = [sys.executable, "-c", "pass"]  # interpreter start-up floor
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for cmd in cmds.values():  # warm-up: page cache, .pyc
        wall(cmd, WORK)
        wall(cmd, WORK)
    for _ in range(reps):
        wait_quiet(30)
        for name, cmd in cmds.items():
            times[name].append(wall(cmd, WORK))
    return {k: median(v) for k, v in times.items()}


# ---- 2. tracking API ----------------------------------------------------------------------------------

MLOPS_API_SCRIPT = """
import json, statistics, sys, time
import mlopsctl
calls, reps, batch = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
run = mlopsctl.start_run(experiment="bench", project_dir=sys.argv[1])
run.log_metric("warmup", 0.0)
run.log_batch([("warmup", 0.0, 1)])
per_call, per_metric = [], []
for r in range(reps):
    t = time.perf_counter()
    for i in range(calls):
        run.log_metric("loss", 0.5, step=r * calls + i)
    per_call.append((time.perf_counter() - t) / calls * 1e3)
for r in range(reps):
    rows = [(f"m{i % 100}", float(i), r * batch + i) for i in range(batch)]
    t = time.perf_counter()
    run.log_batch(rows)
    per_metric.append((time.perf_counter() - t) / batch * 1e3)
run.end()
print(json.dumps({"log_metric_ms": statistics.median(per_call), "log_batch_ms": statistics.median(per_metric),
                  "log_metric_all": per_call, "log_batch_all": per_metric}))
"""

MLFLOW_API_SCRIPT = """
import json, statistics, sys, time, logging
logging.disable(logging.WARNING)
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
db, calls, reps, batch, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
client = MlflowClient(tracking_uri=f"sqlite:///{db}")
exp = client.create_experiment("bench")
rid = client.create_run(exp).info.run_id
client.log_metric(rid, "warmup", 0.0)
client.log_batch(rid, metrics=[Metric("warmup", 0.0, int(time.time() * 1000), 1)])
per_call, per_metric = [], []
for r in range(reps):
    t = time.perf_counter()
    for i in range(calls):
        client.log_metric(rid, "loss", 0.5, step=r * calls + i)
    per_call.append((time.perf_counter() - t) / calls * 1e3)
for r in range(reps):
    now = int(time.time() * 1000)
    rows = [Metric(f"m{i % 100}", float(i), now, r * batch + i) for i in range(batch)]
    t = time.perf_counter()
    for start in range(0, batch, limit):
        client.log_batch(rid, metrics=rows[start:start + limit])
    per_metric.append((time.perf_counter() - t) / batch * 1e3)
client.set_terminated(rid)
print(json.dumps({"log_metric_ms": statistics.median(per_call), "log_batch_ms": statistics.median(per_metric),
                  "log_metric_all": per_call, "log_batch_all": per_metric}))
"""


def bench_api(calls: int, reps: int, mlflow_py: Path | None) -> dict:
    root = WORK / "foundation" / "api"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / "mlops_api.py").write_text(MLOPS_API_SCRIPT)
    run([str(MLOPSCTL), "init", str(root / "project")])
    wait_quiet(120)
    out = {"mlopsctl": json.loads(run([sys.executable, str(root / "mlops_api.py"), str(root / "project"),
                                        str(calls), str(reps), str(BATCH_SIZE)]).stdout)}
    if mlflow_py is not None:
        (root / "mlflow_api.py").write_text(MLFLOW_API_SCRIPT)
        (root / "mlflow").mkdir()
        wait_quiet(120)
        p = run([str(mlflow_py), str(root / "mlflow_api.py"), str(root / "mlflow" / "mlflow.db"), str(calls),
                 str(reps), str(BATCH_SIZE), str(MLFLOW_BATCH_LIMIT)], cwd=root / "mlflow")
        out["mlflow"] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


# ---- 3. train vs a bare script ------------------------------------------------------------------------

BARE_SCRIPT = '''
"""What `mlopsctl train` does for the breast-cancer example, as a user would write it by hand: the same
split, preprocessing (median impute + standard scale), RandomForestClassifier(n_estimators=100), skl2onnx
export (one float input per column, no ZipMap) and an ONNX Runtime parity check on the held-out rows."""
import sys

import numpy as np
import onnxruntime as ort
import pandas as pd
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

df = pd.read_csv(sys.argv[1])
y = df.pop("diagnosis").astype(str)
X_train, X_test, y_train, y_test = train_test_split(df, y, test_size=0.2, random_state=42, stratify=y)
cols = list(df.columns)
model = RandomForestClassifier(n_estimators=100, random_state=42)
pipe = Pipeline([
    ("preprocess", ColumnTransformer([("numeric", Pipeline([
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("scale", StandardScaler())]), cols)])),
    ("model", model),
])
pipe.fit(X_train, y_train)
onx = convert_sklearn(pipe, initial_types=[(c, FloatTensorType([None, 1])) for c in cols],
                      options={id(model): {"zipmap": False}})
session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
labels, proba = session.run(None, {c: X_test[c].to_numpy(np.float32).reshape(-1, 1) for c in cols})
diff = np.abs(proba - pipe.predict_proba(X_test)).max()
agreement = np.mean(labels == pipe.predict(X_test))
assert diff <= 0.05 and agreement >= 0.99, (diff, agreement)
print(f"max diff {diff:.2e}, label agreement {agreement:.3f}")
'''


def bench_train(reps: int) -> dict:
    root = WORK / "foundation" / "train"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    project = root / "breast-cancer"
    run([str(MLOPSCTL), "init", str(project), "--example", "breast-cancer"])
    bare = root / "bare_train.py"
    bare.write_text(BARE_SCRIPT)
    csv = project / "data" / "train.csv"
    cmds = {
        "mlopsctl train": [str(MLOPSCTL), "train"],
        "bare script": [sys.executable, str(bare), str(csv)],
    }
    times: dict[str, list[float]] = {k: [] for k in cmds}
    cpu: dict[str, list[float]] = {k: [] for k in cmds}
    for cmd in cmds.values():  # warm-up
        wall(cmd, project)
    for _ in range(reps):
        for name, cmd in cmds.items():
            wait_quiet(60)
            w, c = timed(cmd, project)
            times[name].append(w)
            cpu[name].append(c)
    latest = json.loads(run([str(MLOPSCTL), "runs", "list", "--json"], project).stdout)[0]["id"]
    last = json.loads(run([str(MLOPSCTL), "runs", "show", str(latest), "--json"], project).stdout)
    phases = {k.removeprefix("timing."): float(v) for k, v in (last.get("tags") or {}).items()
              if k.startswith("timing.")}
    med = {k: median(v) for k, v in times.items()}
    cpu_med = {k: median(v) for k, v in cpu.items()}
    return {"medians": med, "all": times, "ratio": med["mlopsctl train"] / med["bare script"],
            "cpu": cpu_med, "cpu_ratio": cpu_med["mlopsctl train"] / cpu_med["bare script"],
            "phases": phases, "run_duration_s": last.get("duration_s")}


# ---- report -------------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = cpu_model(platform.processor() or "?")
    versions = {}
    code = ("import importlib.metadata as m, json\n"
            "out = {}\n"
            "for d in ('mlopsctl', 'scikit-learn', 'skl2onnx', 'onnxruntime', 'sqlalchemy', 'typer'):\n"
            "    try: out[d] = m.version(d)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    versions.update(json.loads(run([sys.executable, "-c", code]).stdout))
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}",
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "versions": versions}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# Shown while the train target is missed: where the time went when it was profiled (2026-11-26, same
# machine), and what the proposed fixes measured when patched in (not applied to src/).
TRAIN_MISS_ANALYSIS = (
    "Why the train target is missed (profiled 2026-11-26 on this machine with `-X importtime`, cProfile and "
    "timestamps around the command, after commit 250c379 took Alembic out of the store check): the run "
    "itself is ~0.45 s inside the process, the rest is start-up and shut-down. Interpreter shut-down, "
    "garbage-collecting every object of scikit-learn, SciPy and SQLAlchemy, costs ~0.5 s in both processes; "
    "the ~0.75 s gap is mostly imports only mlopsctl needs (`sqlalchemy.orm` ~0.15 s, the ORM models and "
    "registry ~0.07 s, Typer ~0.02 s), the store and artifact writes, and the larger shut-down. Patched in "
    "for a measurement (7 interleaved runs): `gc.freeze()` at the end of `mlopsctl.cli.main.main` gave "
    "2.38 s vs bare 2.07 s (1.15×), against 2.82 s (1.36×) without it."
)


def render(args: argparse.Namespace, m: dict, mlflow_note: str, helps: dict, api: dict, train: dict) -> str:
    measured = "mlflow" in api
    mf = api.get("mlflow", {})
    src = "measured" if measured else "recorded (MLflow not installed: " + mlflow_note + ")"
    h_ml = helps.get("mlflow --help", RECORDED["mlflow --help"])
    i_ml = helps.get("import mlflow", RECORDED["import mlflow"])
    lm = api["mlopsctl"]["log_metric_ms"]
    lb = api["mlopsctl"]["log_batch_ms"]
    mlm = mf.get("log_metric_ms", RECORDED["mlflow log_metric"])
    mlb = mf.get("log_batch_ms", RECORDED["mlflow log_batch"])
    tm, tb = train["medians"]["mlopsctl train"], train["medians"]["bare script"]
    rows = [
        ("`mlopsctl --help` wall", f"≤ {TARGET_HELP_S} s", f"{helps['mlopsctl --help']:.3f} s",
         f"`mlflow --help` {h_ml:.2f} s; `import mlflow` {i_ml:.2f} s ({src})",
         verdict(helps["mlopsctl --help"] <= TARGET_HELP_S)),
        ("`run.log_metric` per call", f"≤ {TARGET_LOG_METRIC_MS} ms", f"{lm:.3f} ms",
         f"MLflow `log_metric` on SQLite {mlm:.2f} ms ({src})", verdict(lm <= TARGET_LOG_METRIC_MS)),
        (f"`run.log_batch` ({BATCH_SIZE:,} metrics) per metric", f"≤ {TARGET_LOG_BATCH_MS} ms", f"{lb:.4f} ms",
         f"MLflow `log_batch` (batches of {MLFLOW_BATCH_LIMIT:,}) {mlb:.4f} ms ({src})",
         verdict(lb <= TARGET_LOG_BATCH_MS)),
        ("`mlopsctl train` (breast-cancer) / bare script", f"≤ {TARGET_TRAIN_RATIO}×", f"{train['ratio']:.2f}×",
         f"mlopsctl {tm:.2f} s vs bare fit + export + parity {tb:.2f} s (measured)",
         verdict(train["ratio"] <= TARGET_TRAIN_RATIO)),
    ]
    table = ["| target | goal | mlopsctl | baseline | result |", "|---|---|---|---|---|"]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in train["phases"].items())
    v = m["versions"]
    cmd = ".venv/bin/python benchmarks/bench_foundation.py" + (" --quick" if args.quick else "") + (
        f" --quiet-wait {args.quiet_wait:g}" if args.quiet_wait != 600 else "")
    lines = [
        SECTION,
        "",
        f"Produced by `{cmd}` (from the repo root; it rewrites this section) on "
        f"{m['date']}: {m['cores']} cores ({m['cpu']}), Python {m['python']}, {m['os']}; "
        + ", ".join(f"{k} {x}" for k, x in v.items())
        + (f", mlflow {mlflow_note}" if measured else "") + ".",
        "",
        *table,
        "",
        f"Method: medians; every command is a fresh subprocess with precompiled bytecode. `--help`: "
        f"{args.help_reps} runs each after 2 warm-ups, commands interleaved (`python -c pass` start-up floor: "
        f"{helps['python -c pass']:.3f} s). API: one process per tool, {args.api_reps} repetitions of "
        f"{args.calls:,} `log_metric` calls and {args.api_reps} batches of {BATCH_SIZE:,} metrics, after a "
        f"warm-up call; mlopsctl in a project from `mlopsctl init`, MLflow via `MlflowClient` with "
        f"`sqlite:///` in its own venv. Train: {args.train_reps} alternating runs of each after one warm-up, "
        f"whole-process wall (start-up and imports included for both); the bare script is written to "
        f"`benchmarks/.work/foundation/train/bare_train.py`. CPU time (user+sys, all threads) medians, less "
        f"sensitive to other load: mlopsctl {train['cpu']['mlopsctl train']:.2f} s, bare "
        f"{train['cpu']['bare script']:.2f} s ({train['cpu_ratio']:.2f}×). 1-minute load average before/after "
        f"the run: {m['load_before']:.2f} / {m['load_after']:.2f}; before each measurement it waited for CPU "
        f"pressure (PSI some avg10) ≤ {QUIET['threshold']:.0f} % ({QUIET['waited_s']:.0f} s spent waiting, "
        f"{QUIET['noisy_starts']} measurement(s) started above it).",
        "",
        f"Inside the last `mlopsctl train` run (its `timing.*` tags, {train['run_duration_s']} s run "
        f"duration): {phases}. All runs (s): mlopsctl "
        + ", ".join(f"{x:.2f}" for x in train["all"]["mlopsctl train"])
        + "; bare " + ", ".join(f"{x:.2f}" for x in train["all"]["bare script"]) + ".",
    ]
    if train["ratio"] > TARGET_TRAIN_RATIO:
        lines += ["", TRAIN_MISS_ANALYSIS]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke check)")
    ap.add_argument("--no-install", action="store_true", help="do not pip-install MLflow when it is missing")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--quiet-wait", type=float, default=600, metavar="S",
                    help="at most S seconds in all spent waiting for CPU pressure to drop (default 600)")
    args = ap.parse_args(argv)
    args.help_reps, args.calls, args.api_reps, args.train_reps = (5, 200, 3, 3) if args.quick else (15, 1000, 5, 7)

    QUIET["budget_s"] = args.quiet_wait
    WORK.mkdir(parents=True, exist_ok=True)
    mlflow_py, mlflow_note = ensure_mlflow(not args.no_install, env(), say, packages=("mlflow",), imports=("mlflow",))
    say("precompiling bytecode ...")
    precompile([REPO / "src", site_packages(BIN)] + ([site_packages(mlflow_py.parent)] if mlflow_py else []))
    m = machine()
    m["load_before"] = os.getloadavg()[0]
    say("1/3 --help ...")
    helps = bench_help(args.help_reps, mlflow_py)
    say("2/3 tracking API ...")
    api = bench_api(args.calls, args.api_reps, mlflow_py)
    say("3/3 train vs bare script ...")
    train = bench_train(args.train_reps)
    m["load_after"] = os.getloadavg()[0]
    text = render(args, m, mlflow_note, helps, api, train)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
        say(f"wrote the '{SECTION}' section of {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
