"""Registry benchmarks (issue 3): register, promote without the gate's scoring, and alias resolution.

    .venv/bin/python benchmarks/bench_registry.py              # full: the figures in RESULTS.md
    .venv/bin/python benchmarks/bench_registry.py --quick      # fewer repetitions, a smoke check
    .venv/bin/python benchmarks/bench_registry.py --no-write   # print only; leave RESULTS.md alone

Targets: ``register``, ``promote`` without the gate's scoring, and alias resolution, each as an in-process
library call, <= 5 ms (median of >= 50 calls after a warm-up). Baseline: MLflow's model registry on SQLite
in the same run (``register_model``, ``set_registered_model_alias``, ``pyfunc.load_model("models:/m@a")``),
from its own virtualenv ``benchmarks/.work/mlflow-venv`` (created with pip when missing, never in the
project's venv); when it cannot be run, the recorded figures 22 / 10 / 78 ms stand in and RESULTS.md says so.

What is timed, exactly (all in one process, against a project made by ``init_project`` with the
breast-cancer example and a 10-tree forest, store and artifacts under ``benchmarks/.work/registry``):

* ``register``: ``models.register(settings, run, "bench")``: read the run, check status/parity/blobs,
  number and insert the version, append the event; one write transaction. Each call registers a fresh
  FINISHED run (runs are cloned from one trained run before timing: same artifact blobs, new run rows).
* ``promote`` has no code path that skips scoring (``--force`` only overrides the decision), so its
  non-scoring part is timed by running exactly the store work ``models.promote`` does around the gate:
  the holder read (one transaction), then the locked write transaction (re-read holder, fetch version,
  store the gate report, ``move_alias`` with its history row, the ``promoted`` event), with a real gate
  report from ``evaluate_gate`` as the payload; the alias alternates between two versions so each call is
  a real move. For reference the full ``models.promote(..., force=True)`` (load both ONNX files, score
  both through ONNX Runtime on 114 held-out rows) and ``evaluate_gate`` alone are timed too.
* alias resolution: ``registry.resolve`` of ``bench@production`` in a fresh session (the pointer lookup),
  ``models.load_model("bench@production")`` (lookup + read the ONNX file, verify its sha256, parse the
  contract), and that plus building the ONNX Runtime session (ready to predict, which is what MLflow's
  ``pyfunc.load_model`` returns).

Benchmarks are not tests: the exit status is 0 whether targets are met or not.
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
from typing import Any, Callable

from _common import ensure_mlflow, write_section

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Registry (issue 3)"
TARGET_MS = 5.0
RECORDED_MLFLOW = {"register": 22.0, "set alias": 10.0, "load by alias": 78.0}


def say(msg: str) -> None:
    print(f"[bench_registry] {msg}", file=sys.stderr, flush=True)


def clean_env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    return e


def stats(samples_ns: list[int], cpu_ns: list[int]) -> dict[str, float]:
    ms = sorted(x / 1e6 for x in samples_ns)
    return {"median": statistics.median(ms), "p10": ms[len(ms) // 10], "p90": ms[(len(ms) * 9) // 10],
            "n": len(ms), "cpu_median": statistics.median(x / 1e6 for x in cpu_ns)}


def timeit(fn: Callable[[int], Any], n: int, warmup: int) -> dict[str, float]:
    """Wall time per call (perf_counter) and this thread's CPU time per call (robust to other load)."""
    for i in range(warmup):
        fn(i)
    out, cpu = [], []
    for i in range(warmup, warmup + n):
        c = time.thread_time_ns()
        t = time.perf_counter_ns()
        fn(i)
        out.append(time.perf_counter_ns() - t)
        cpu.append(time.thread_time_ns() - c)
    return stats(out, cpu)


# ---- mlopsctl -----------------------------------------------------------------------------------------

def bench_mlopsctl(n: int, warmup: int) -> dict[str, dict[str, float]]:
    for name in [k for k in os.environ if k.startswith("MLOPS_")]:
        del os.environ[name]
    from mlopsctl import registry, tracking
    from mlopsctl.common import jsonable
    from mlopsctl.services import gate, models, project, runs
    from mlopsctl.project import open_project
    from mlopsctl.config import load_settings
    from mlopsctl.scoring import Scorer

    root = WORK / "registry"
    shutil.rmtree(root, ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    project.init_project(root, "breast-cancer")
    cfg = root / ".mlops.toml"
    cfg.write_text(re.sub(r"(?m)^params = .*$", "params = { n_estimators = 10 }", cfg.read_text()))
    settings = load_settings({}, {}, root)
    store = open_project(settings).store

    say("training one run and cloning it ...")
    base = runs.train_and_track(settings)
    arts = {a["name"]: a for a in base["artifacts"]}
    files = runs.ModelFiles(onnx=arts["model.onnx"]["sha256"], contract=arts["contract.json"]["sha256"],
                                joblib=arts["model.joblib"]["sha256"],
                                sizes={"onnx": arts["model.onnx"]["size"], "contract": arts["contract.json"]["size"],
                                       "joblib": arts["model.joblib"]["size"]})
    held = arts["heldout.parquet"]
    with store.session() as s:
        src = tracking.get_run(s, base["id"])
        parity, dv_id = dict(src.parity), src.dataset_version_id
    run_ids = []
    for i in range(warmup + n):
        with store.session() as s:
            run = tracking.create_run(s, "bench", f"clone-{i}", dataset_version_id=dv_id, task="classification",
                                      model_class="sklearn.ensemble.RandomForestClassifier", seed=42)
            runs.record_model(s, run.id, files, parity,
                                  {"heldout.parquet": (held["sha256"], held["size"], held["media_type"])})
            tracking.finish_run(s, run.id)
            run_ids.append(run.id)

    res: dict[str, dict[str, float]] = {}
    say("register ...")
    res["register"] = timeit(lambda i: models.register(settings, str(run_ids[i]), "bench"), n, warmup)

    # a real gate report as the payload of the alias moves
    models.promote(settings, "bench", 1, alias="production", force=True)
    cand, hold = models.load_model(settings, "bench/2"), models.load_model(settings, "bench/1")
    report = jsonable(gate.evaluate_gate(settings, cand, hold, alias="production", min_delta=0.0))
    report["decision"] = "forced"

    def promote_store_work(i: int) -> None:
        version = 2 + i % 2  # 2, 3, 2, 3, ...: every call moves the alias
        with store.session() as s:  # promote's first transaction: who holds the alias now
            registry.alias_holder(s, registry.get_model(s, "bench"), "production")
        with store.session() as s:  # promote's write transaction, after the gate
            model = registry.get_model(s, "bench", lock=True)
            registry.alias_holder(s, model, "production")
            target = registry.get_version(s, model, version)
            target.gate = report
            registry.move_alias(s, model, "production", target, action="promote", reason="bench", forced=True,
                                gate=report)
            registry.add_event(s, "promoted", f"bench/{version} -> @production (forced): bench", model="bench",
                               version=version, payload=report)

    say("promote without scoring ...")
    res["promote (store work, no scoring)"] = timeit(promote_store_work, n, warmup)

    def set_alias_only(i: int) -> None:
        with store.session() as s:
            model = registry.get_model(s, "bench", lock=True)
            registry.move_alias(s, model, "staging", registry.get_version(s, model, 2 + i % 2), action="promote",
                                reason="bench")

    res["alias move only (move_alias + history row)"] = timeit(set_alias_only, n, warmup)

    say("full promote (with scoring) and the gate alone ...")
    ref_n = max(10, n // 5)
    res["promote, full with gate scoring (reference)"] = timeit(
        lambda i: models.promote(settings, "bench", 2 + i % 2, alias="production", force=True), ref_n, 2)
    res["evaluate_gate alone (reference)"] = timeit(
        lambda i: gate.evaluate_gate(settings, cand, hold, alias="production", min_delta=0.0), ref_n, 2)

    say("alias resolution ...")
    ref = registry.parse_ref("bench@production")

    def resolve(_: int) -> None:
        with store.session() as s:
            registry.resolve(s, ref).version

    res["resolve bench@production (registry.resolve)"] = timeit(resolve, n, warmup)
    res["load_model bench@production (+ read, verify ONNX)"] = timeit(
        lambda i: models.load_model(settings, "bench@production"), n, warmup)

    def ready(_: int) -> None:
        m = models.load_model(settings, "bench@production")
        Scorer(m.onnx, m.contract)

    res["load_model + ONNX Runtime session"] = timeit(ready, n, warmup)
    with store.session() as s:
        res["_meta"] = {"versions": len(registry.get_model(s, "bench").versions),
                        "history_rows": len(registry.history(s, registry.get_model(s, "bench"))),
                        "onnx_bytes": files.sizes["onnx"]}
    store.dispose()
    return res


# ---- MLflow -------------------------------------------------------------------------------------------

MLFLOW_SCRIPT = r'''
import json, statistics, sys, time, warnings, logging
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
work, n, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
import mlflow
from mlflow import MlflowClient
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

uri = f"sqlite:///{work}/mlflow.db"
mlflow.set_tracking_uri(uri)
mlflow.set_registry_uri(uri)
X, y = load_breast_cancer(return_X_y=True, as_frame=True)
model = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=10, random_state=42)).fit(X, y)
with mlflow.start_run() as run:
    info = mlflow.sklearn.log_model(model, name="model", input_example=X.head(5), serialization_format="cloudpickle")
client = MlflowClient()

def timeit(fn, n, warmup):
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(warmup, warmup + n):
        t = time.perf_counter_ns(); fn(i); out.append((time.perf_counter_ns() - t) / 1e6)
    out.sort()
    return {"median": statistics.median(out), "p10": out[len(out) // 10], "p90": out[len(out) * 9 // 10], "n": n}

res = {}
res["register"] = timeit(lambda i: mlflow.register_model(info.model_uri, "bench"), n, warmup)
res["set alias"] = timeit(lambda i: client.set_registered_model_alias("bench", "production", str(1 + i % 2)), n, warmup)
res["resolve alias"] = timeit(lambda i: client.get_model_version_by_alias("bench", "production"), n, warmup)
res["load by alias"] = timeit(lambda i: mlflow.pyfunc.load_model("models:/bench@production"), n, warmup)
res["_meta"] = {"mlflow": mlflow.__version__}
print(json.dumps(res))
'''


def bench_mlflow(py: Path, n: int, warmup: int) -> dict[str, Any] | None:
    work = WORK / "registry-mlflow"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    p = subprocess.run([str(py), "-c", MLFLOW_SCRIPT, str(work), str(n), str(warmup)], cwd=work, env=clean_env(),
                       capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        say("MLflow run failed: " + (p.stderr.strip().splitlines() or ["?"])[-1])
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---- report -------------------------------------------------------------------------------------------

def render(args: argparse.Namespace, ours: dict, theirs: dict | None, mlflow_note: str, load: tuple) -> str:
    def cell(d: dict | None) -> str:
        return f"{d['median']:.2f} ms" if d else "-"

    def ml(key: str) -> str:
        if theirs:
            return f"{theirs[key]['median']:.1f} ms (recorded {RECORDED_MLFLOW.get(key, '-')}" + (" ms)" if key in RECORDED_MLFLOW else ")")
        return f"{RECORDED_MLFLOW[key]:.0f} ms (recorded)" if key in RECORDED_MLFLOW else "-"

    def verdict(d: dict) -> str:
        return "met" if d["median"] <= TARGET_MS else "MISSED"

    rows = [
        ("register", ours["register"], "register", True),
        ("promote (store work, no scoring)", ours["promote (store work, no scoring)"], "set alias", True),
        ("alias move only (move_alias + history row)", ours["alias move only (move_alias + history row)"], "set alias", False),
        ("resolve bench@production (registry.resolve)", ours["resolve bench@production (registry.resolve)"], "resolve alias", True),
        ("load_model bench@production (+ read, verify ONNX)", ours["load_model bench@production (+ read, verify ONNX)"], None, False),
        ("load_model + ONNX Runtime session", ours["load_model + ONNX Runtime session"], "load by alias", False),
        ("promote, full with gate scoring (reference)", ours["promote, full with gate scoring (reference)"], None, False),
        ("evaluate_gate alone (reference)", ours["evaluate_gate alone (reference)"], None, False),
    ]
    table = ["| operation (in-process library call) | mlopsctl wall median (p10-p90) | CPU median | n | "
             "target <= 5 ms (wall median) | MLflow wall median, same run |",
             "|---|---|---|---|---|---|"]
    for label, d, mkey, targeted in rows:
        table.append(f"| {label} | {d['median']:.2f} ms ({d['p10']:.2f}-{d['p90']:.2f}) | {d['cpu_median']:.2f} ms | "
                     f"{d['n']} | {verdict(d) if targeted else '-'} | {ml(mkey) if mkey else '-'} |")
    meta = ours["_meta"]
    lines = [
        SECTION,
        "",
        f"Command: `{args.command}` (repository root). Date {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"MLflow {mlflow_note}. 1-minute load average before/after: {load[0]:.2f} / {load[1]:.2f} "
        "(other work shared this 2-core machine during the run: wall times include being preempted by it; "
        "the CPU column, this thread's CPU time per call, does not).",
        "",
        *table,
        "",
        "What was timed (all in one process, medians after a warm-up; SQLite store in WAL mode on local disk, "
        f"breast-cancer example, 10-tree forest, ONNX file {meta['onnx_bytes']:,} bytes):",
        "",
        "- **register**: `models.register(settings, run, \"bench\")`, each call a fresh FINISHED run "
        "(cloned rows pointing at one trained run's blobs); it reads the run and its artifacts, checks status, "
        "parity and that the blobs exist, numbers and inserts the version and appends the event, in one "
        f"`BEGIN IMMEDIATE` transaction. {meta['versions']} versions existed at the end.",
        "- **promote without the gate's scoring**: `models.promote` has no path that skips scoring "
        "(`--force` only overrides the decision), so this row runs exactly the store work promote does around "
        "the gate: its holder-read transaction, then its locked write transaction (re-read the holder, fetch "
        "the version, store the gate report on it, `move_alias` with its history row, the `promoted` event), "
        "with a real `evaluate_gate` report as payload; the alias alternates between two versions so each call "
        "is a real move. `alias move only` is the bare pointer move plus its history row (what MLflow's "
        "`set_registered_model_alias` does). The last two rows show what the gate itself costs: the full "
        "`models.promote(..., force=True)` loads both versions' ONNX files and scores both through ONNX "
        "Runtime on the candidate's 114 held-out rows.",
        "- **alias resolution**: `registry.resolve` of `bench@production` in its own session (one indexed "
        "join); `models.load_model` adds reading the ONNX and contract files and verifying the ONNX sha256; "
        "the `+ ONNX Runtime session` row adds building the inference session, i.e. ready to predict, which is "
        "the fair counterpart of MLflow's `mlflow.pyfunc.load_model(\"models:/bench@production\")` (it "
        "unpickles the scikit-learn model).",
        "- **MLflow**: " + ("same machine, same run, its own venv (`benchmarks/.work/mlflow-venv`), "
                           "`sqlite:///` tracking and registry URI, a 10-tree forest logged once with "
                           "`mlflow.sklearn.log_model`; `register_model(model_uri, \"bench\")` per call, "
                           "`MlflowClient.set_registered_model_alias` alternating two versions, "
                           "`get_model_version_by_alias` (resolve only) and `pyfunc.load_model` by alias. "
                           "Recorded figures (22 / 10 / 78 ms) in brackets."
                           if theirs else "not run here; the recorded figures (22 / 10 / 78 ms) stand in."),
    ]
    if theirs:
        lines.append(f"  MLflow resolve-only (`get_model_version_by_alias`): {cell(theirs.get('resolve alias'))}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke check)")
    ap.add_argument("--no-install", action="store_true", help="do not pip-install MLflow when it is missing")
    ap.add_argument("--no-mlflow", action="store_true", help="skip the MLflow baseline (use the recorded figures)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    args.command = "python benchmarks/bench_registry.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    args.command = args.command.replace("python ", ".venv/bin/python ", 1)
    n, warmup = (50, 5) if args.quick else (200, 20)

    load_before = os.getloadavg()[0]
    ours = bench_mlopsctl(n, warmup)
    theirs, note = None, "not run (--no-mlflow)"
    if not args.no_mlflow:
        py, note = ensure_mlflow(not args.no_install, clean_env(), say)
        if py is not None:
            say(f"MLflow {note} ...")
            theirs = bench_mlflow(py, max(50, n // 2), 5)
            if theirs is None:
                note += " (its benchmark failed; recorded figures stand in)"
    text = render(args, ours, theirs, note, (load_before, os.getloadavg()[0]))
    print(text)
    print(json.dumps({"mlopsctl": ours, "mlflow": theirs}, indent=1), file=sys.stderr)
    if not args.no_write:
        write_section(SECTION, text)
        say(f"wrote the '{SECTION}' section of {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
