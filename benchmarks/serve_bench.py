"""Serving benchmark (issue 4): `mlopsctl serve` against a bare Flask + ONNX Runtime app and `mlflow models serve`.

    .venv/bin/python benchmarks/serve_bench.py            # full: the figures in RESULTS.md (~40 min)
    .venv/bin/python benchmarks/serve_bench.py --quick    # short runs, one round: a smoke check
    .venv/bin/python benchmarks/serve_bench.py --no-write # print the section, leave RESULTS.md alone

Setup: a project from ``mlopsctl init --example breast-cancer`` (RandomForest, n_estimators=100), trained,
registered as ``bc`` and promoted to ``@production``; every server below serves that one fitted model.

* Load: ``wrk -t2 -c8 -d10s --latency`` on loopback, single-row ``POST /predict`` (``benchmarks/wrk_post.lua``;
  install wrk with ``apt-get install -y wrk``). Every measured run follows a 2 s warm-up run on a freshly
  started server and a 1.5 s pause (the warm-up's prediction-log flush ends before measuring); any non-2xx
  answer fails the run.
* Worker matrix: ``mlopsctl serve bc@production`` and the bare app (``benchmarks/serve_bare_app.py``, same
  ONNX file, same feeds, same ORT thread rule, orjson) on gunicorn with the same worker class (sync,
  gthread with 2 or 4 threads) and count (2, 4); runs alternate between the two systems, the order of the
  configurations rotates each round.
* Per-feature cost at the code's default configuration (sync, 2 workers): mlopsctl with all
  features, with the cheapest validation policies, with prediction logging off, with metrics stubbed out
  (there is no switch: the launcher below swaps the per-request Prometheus objects for no-ops), with all
  three off, the bare app and `mlflow models serve` — alternating, several rounds. Also an in-process
  measurement of the same variants through Flask's test client (CPU µs per request, no HTTP, no noise from
  the load generator), a micro-benchmark of the metrics calls one request makes, and a cProfile of
  mlopsctl's /predict (``benchmarks/.work/serve/profile.txt``). The server's CPU time per request (its
  process group, from /proc) is reported beside req/s: on a shared machine it is the steadier figure.
* Hot-path micro-measurements of today's code in one process: records → checked feeds (1 and 10,000 rows,
  default and cheapest policies), the prediction-log writer's CPU per record at several batch sizes, and
  ``predlog_format.encode_columns`` of a 10,000-row request.
* Time to ready: process start to the first 200 on /v2/health/ready (mlopsctl, bare) or /ping (MLflow),
  median of 5, alternating.
* 10,000-row ``POST /predict`` (``dataframe_records`` on MLflow's /invocations): client-side wall, median
  of 10, requests alternating between the servers (all started, idle but one).

MLflow runs from its own venv (``benchmarks/.work/mlflow-venv``: ``python3 -m venv`` + ``pip install mlflow
scikit-learn``, created when missing, never the project's venv); the run's ``model.joblib`` pipeline is saved
with ``mlflow.sklearn.save_model`` (with a signature) and served with ``mlflow models serve --env-manager
local -w <same worker count>``. When MLflow cannot be installed the recorded figures stand in (62-88 req/s,
4.7 s to ready) and RESULTS.md says so. Bytecode is precompiled and ``PYTHONDONTWRITEBYTECODE`` dropped for
every server. Benchmarks are not tests: the exit status is 0 whether targets are met or not.

Internal: ``serve_bench.py --launch [--worker-class C] [--threads N] [--no-metrics] -- <mlopsctl args>``
runs the real mlopsctl CLI with MLOPS_SERVE_THREADS set (serve.threads = 1 means sync workers, more means
gthread; trees older than that get server.WORKER_CLASS / THREADS_PER_WORKER overridden), optionally stubbing
the metrics.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import cpu_model, ensure_mlflow, proc_stats, write_section

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
WORK = BENCH / ".work" / "serve"
RESULTS = BENCH / "RESULTS.md"
SECTION = "## Serving (issue 4)"
FINDINGS = "### Profiling findings"  # a hand-written subsection kept across re-runs
BIN = Path(sys.executable).parent
PY = sys.executable
MLOPSCTL = BIN / "mlopsctl"
LUA = BENCH / "wrk_post.lua"
HOST = "127.0.0.1"
MODEL = "bc"
REF = "bc@production"

TARGET_RATIO_BARE = 0.7
TARGET_RATIO_MLFLOW = 50.0
TARGET_P99_MS = 5.0
TARGET_READY_S = 1.5
TARGET_BIG_S = 0.1
TARGET_LOG_COST = 0.10
SETTLE_S = 1.5  # pause between the warm-up run and the measured run (> serve.log_flush_seconds)
RECORDED_MLFLOW = {"rps": (62.0, 88.0), "ready_s": 4.7}
MATRIX = [("sync", 1, 2), ("gthread", 2, 2), ("gthread", 4, 2), ("sync", 1, 4)]  # (class, threads, workers)
DEFAULT = ("sync", 2)  # serve.threads' default (1: sync workers) and serve.workers
GTHREADS = 2  # threads of a gthread row that names none
CHEAPEST_VALIDATION = {"MLOPS_SERVE_UNKNOWN_CATEGORY": "accept", "MLOPS_SERVE_OUT_OF_RANGE": "accept",
                       "MLOPS_SERVE_UNSEEN_NULLS": "accept", "MLOPS_SERVE_EXTRA_COLUMNS": "ignore"}
NO_LOGGING = {"MLOPS_SERVE_LOG_PREDICTIONS": "false"}


# ---- helpers ------------------------------------------------------------------------------------------

def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def base_env() -> dict[str, str]:
    e = dict(os.environ)
    for k in ("PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME", "PROMETHEUS_MULTIPROC_DIR"):
        e.pop(k, None)
    for k in [k for k in e if k.startswith("MLOPS_")]:
        e.pop(k)
    return e


def run(cmd: list[str], cwd: Path | None = None, env: dict | None = None, timeout: float = 1800) -> str:
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or base_env(), capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return p.stdout


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def site_packages(venv_bin: Path) -> Path:
    return venv_bin.parent / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def precompile(paths: list[Path]) -> None:
    for p in paths:
        if p.exists():
            subprocess.run([PY, "-m", "compileall", "-q", str(p)], env=base_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)


def server_stats(pgid: int) -> dict[int, list[str]]:
    """The /proc/<pid>/stat fields after "comm)" (state ppid pgrp ... utime(11) stime(12)), by pid, of every live
    process in process group ``pgid`` (the server we started: gunicorn master and workers, MLflow's uvicorn) or
    descended from one (BentoML's circus starts each worker in a session of its own)."""
    stats = proc_stats()

    def member(pid: int) -> bool:
        seen = set()
        while pid in stats and pid not in seen:
            if int(stats[pid][2]) == pgid:
                return True
            seen.add(pid)
            pid = int(stats[pid][1])
        return False

    return {pid: fields for pid, fields in stats.items() if member(pid)}


def process_cpu_s(pgid: int) -> dict[int, float]:
    """User + system CPU seconds, by pid, of every live process of the server in process group ``pgid``
    (``server_stats``), read from /proc. Robust to a shared machine: it counts the work the server did, not the
    share of the cores it got."""
    tick = os.sysconf("SC_CLK_TCK")
    return {pid: (int(f[11]) + int(f[12])) / tick for pid, f in server_stats(pgid).items()}


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


# ---- the project --------------------------------------------------------------------------------------

@dataclass
class Project:
    dir: Path
    onnx: Path
    joblib: Path
    classes: list[str]
    columns: list[str]
    target: str
    body1: Path  # {"records": [one row]}
    body_big: bytes  # {"records": [10,000 rows]}
    mlflow_body1: Path
    mlflow_big: bytes


def blob(project: Path, sha: str) -> Path:
    return project / ".mlops" / "artifacts" / "sha256" / sha[:2] / sha[2:]


def make_project() -> Project:
    import csv

    root = WORK / "project"
    shutil.rmtree(root, ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    run([MLOPSCTL, "init", root, "--example", "breast-cancer"])
    run([MLOPSCTL, "train", "--json"], cwd=root)
    run([MLOPSCTL, "register", "1", "--name", MODEL], cwd=root)
    run([MLOPSCTL, "promote", MODEL, "1"], cwd=root)
    runinfo = json.loads(run([MLOPSCTL, "runs", "show", "1", "--json"], cwd=root))
    arts = {a["name"]: a["sha256"] for a in runinfo["artifacts"]}
    version = json.loads(run([MLOPSCTL, "models", "show", f"{MODEL}/1", "--json"], cwd=root))
    assert version["onnx_sha256"] == arts["model.onnx"], "registered ONNX is not the run's model.onnx"
    contract = json.loads(blob(root, arts["contract.json"]).read_text())
    target = contract["target"]
    with open(root / "data" / "train.csv", newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if k != target} for r in csv.DictReader(f)]
    columns = [c["name"] for c in contract["columns"]]
    one = [rows[0]]
    big = [rows[i % len(rows)] for i in range(10_000)]
    body1 = WORK / "body1.json"
    body1.write_text(json.dumps({"records": one}))
    mlflow_body1 = WORK / "mlflow_body1.json"
    mlflow_body1.write_text(json.dumps({"dataframe_records": one}))
    return Project(root, blob(root, arts["model.onnx"]), blob(root, arts["model.joblib"]),
                   [str(c) for c in contract["classes"]], columns, target, body1,
                   json.dumps({"records": big}).encode(), mlflow_body1,
                   json.dumps({"dataframe_records": big}).encode())


# ---- MLflow -------------------------------------------------------------------------------------------

MLFLOW_SAVE = """
import sys, joblib, pandas as pd, mlflow.sklearn
from mlflow.models import infer_signature
pipe = joblib.load(sys.argv[1])
frame = pd.read_csv(sys.argv[2]).drop(columns=[sys.argv[3]])
# MLflow 3's default format (skops) refuses tree models unless their types are trusted explicitly
mlflow.sklearn.save_model(pipe, sys.argv[4], signature=infer_signature(frame, pipe.predict(frame)),
                          skops_trusted_types=["numpy.dtype", "sklearn.tree._tree.Tree"])
print(pipe.predict(frame.head(1))[0])
"""


def mlflow_model(mlflow_py: Path, p: Project) -> Path:
    out = WORK / "mlflow-model"
    shutil.rmtree(out, ignore_errors=True)
    script = WORK / "mlflow_save.py"
    script.write_text(MLFLOW_SAVE)
    run([mlflow_py, script, p.joblib, p.dir / "data" / "train.csv", p.target, out], cwd=WORK)
    return out


# ---- servers ------------------------------------------------------------------------------------------

@dataclass
class Spec:
    label: str
    kind: str  # mlopsctl | bare | mlflow
    worker_class: str = "gthread"
    workers: int = 2
    env: dict[str, str] = field(default_factory=dict)
    no_metrics: bool = False
    real_cli: bool = False  # the installed `mlopsctl` entry point instead of the --launch shim
    nthreads: int = 0  # threads per gthread worker; 0: GTHREADS

    @property
    def threads(self) -> int:
        return (self.nthreads or GTHREADS) if self.worker_class == "gthread" else 1

    @property
    def path(self) -> str:
        return "/invocations" if self.kind == "mlflow" else "/predict"

    @property
    def ready_path(self) -> str:
        return "/ping" if self.kind == "mlflow" else "/v2/health/ready"


class Server:
    def __init__(self, spec: Spec, p: Project, mlflow_py: Path | None, mlflow_dir: Path | None):
        self.spec, self.port = spec, free_port()
        env = base_env()
        env.update(spec.env)
        if spec.kind == "mlopsctl":
            tail = ["serve", REF, "--host", HOST, "--port", str(self.port), "--workers", str(spec.workers)]
            if spec.real_cli:
                cmd = [str(MLOPSCTL), *tail]
            else:
                cmd = [PY, str(Path(__file__).resolve()), "--launch", "--worker-class", spec.worker_class,
                       "--threads", str(spec.threads), *(["--no-metrics"] if spec.no_metrics else []),
                       "--", *tail]
            cwd = p.dir
        elif spec.kind == "bare":
            cmd = [PY, "-m", "gunicorn", "-w", str(spec.workers), "-k", spec.worker_class, "--threads",
                   str(spec.threads), "-b", f"{HOST}:{self.port}", "--chdir", str(BENCH), "--keep-alive", "5",
                   "--timeout", "60", "--log-level", "warning", "serve_bare_app:app"]
            env.update(BARE_MODEL=str(p.onnx), BARE_CLASSES=",".join(p.classes), BARE_WORKERS=str(spec.workers))
            cwd = WORK
        else:
            assert mlflow_py is not None and mlflow_dir is not None
            cmd = [str(mlflow_py.parent / "mlflow"), "models", "serve", "-m", str(mlflow_dir), "--env-manager",
                   "local", "-h", HOST, "-p", str(self.port), "-w", str(spec.workers)]
            env["PATH"] = f"{mlflow_py.parent}{os.pathsep}{env.get('PATH', '')}"  # it execs `uvicorn` from PATH
            cwd = WORK
        self.cmd, self.env, self.cwd = cmd, env, cwd
        self.log = WORK / "logs" / f"{re.sub(r'[^A-Za-z0-9]+', '_', spec.label)}.log"
        self.proc: subprocess.Popen | None = None
        self.log_offset = 0

    def start(self, timeout: float = 90) -> float:
        """Start; returns seconds from process start to the first 200 on the ready path."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        logf = open(self.log, "ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        logf.close()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.label} exited {self.proc.returncode}; see {self.log}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
                conn.request("GET", self.spec.ready_path)
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return time.perf_counter() - t0
            except (ConnectionError, http.client.HTTPException, socket.timeout, OSError):
                pass
            if time.perf_counter() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"{self.spec.label} not ready after {timeout} s; see {self.log}")
            time.sleep(0.005)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session: the group this benchmark created
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        time.sleep(0.3)  # let the workers' ports and CPU settle
        with open(self.log, "rb") as f:  # how did the workers end? (gunicorn logs workers killed by a signal)
            f.seek(self.log_offset)
            tail = f.read()
        aborted = tail.count(b"was sent SIGABRT") + tail.count(b"was sent SIGKILL")
        key = self.spec.kind
        stops = SHUTDOWNS.setdefault(key, {"stops": 0, "stops_with_abort": 0, "workers_aborted": 0})
        stops["stops"] += 1
        stops["stops_with_abort"] += bool(aborted)
        stops["workers_aborted"] += aborted

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.spec.path}"


SHUTDOWNS: dict[str, dict[str, int]] = {}


# ---- load ---------------------------------------------------------------------------------------------

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk(url: str, body: Path, duration: float, threads: int = 2, conns: int = 8) -> dict:
    env = dict(os.environ, WRK_BODY=str(body))
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration:g}s", "--timeout", "5s", "--latency",
                          "-s", str(LUA), url], env=env, capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    res = {"rps": float(m.group(1))}
    for pct in ("50", "90", "99"):
        lm = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        res[f"p{pct}_ms"] = float(lm.group(1)) * UNITS[lm.group(2)] if lm else float("nan")
    n2 = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = int(n2.group(1)) if n2 else 0
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(map(int, se.groups())) if se else 0
    tot = re.search(r"(\d+) requests in", out)
    res["requests"] = int(tot.group(1)) if tot else 0
    return res


def measure(spec: Spec, p: Project, args: argparse.Namespace, mlflow_py, mlflow_dir) -> dict:
    srv = Server(spec, p, mlflow_py, mlflow_dir)
    body = p.mlflow_body1 if spec.kind == "mlflow" else p.body1
    try:
        srv.start()
        wrk(srv.url, body, args.warmup)
        time.sleep(SETTLE_S)  # background work of the warm-up (e.g. the prediction log's flush) ends first
        la = loadavg()
        cpu0 = process_cpu_s(srv.proc.pid)
        res = wrk(srv.url, body, args.duration)
        cpu1 = process_cpu_s(srv.proc.pid)  # workers still alive: measured before stop()
        used = {pid: cpu1[pid] - cpu0.get(pid, 0.0) for pid in cpu1}
        res["load1"] = la
        res["cpu_us"] = sum(used.values()) / max(1, res["requests"]) * 1e6
        # how evenly the connections were spread: the busiest process's share of the server's CPU (with 8
        # keep-alive connections one gunicorn worker sometimes accepts all of them)
        res["top_share"] = max(used.values()) / max(1e-9, sum(used.values())) if used else 0.0
    finally:
        srv.stop()
    if res["non2xx"]:
        raise RuntimeError(f"{spec.label}: {res['non2xx']} non-2xx answers under load; see {srv.log}")
    say(f"    {spec.label:<40} {res['rps']:8.1f} req/s  p50 {res['p50_ms']:6.2f} ms  p99 {res['p99_ms']:7.2f} ms"
        f"  CPU {res['cpu_us']:5.0f} µs/req  busiest process {res['top_share']:.0%}"
        f"  (load {la:.1f}{', socket errors ' + str(res['socket_errors']) if res['socket_errors'] else ''})")
    return res


def rounds_of(specs: list[Spec], rounds: int, p, args, mlflow_py, mlflow_dir, pairs: bool = False) -> dict:
    """Run every spec once per round; the order rotates each round (pairs=True keeps (a, b) pairs adjacent,
    swapping their order on odd rounds)."""
    out: dict[str, list[dict]] = {s.label: [] for s in specs}
    units = [specs[i:i + 2] for i in range(0, len(specs), 2)] if pairs else [[s] for s in specs]
    for r in range(rounds):
        say(f"  round {r + 1}/{rounds}")
        k = r % len(units)
        for unit in units[k:] + units[:k]:
            for s in (unit[::-1] if pairs and r % 2 else unit):
                out[s.label].append(measure(s, p, args, mlflow_py, mlflow_dir))
    return out


def summary(runs: list[dict]) -> dict:
    return {k: median([r[k] for r in runs]) for k in ("rps", "p50_ms", "p99_ms", "cpu_us")} | {
        "cpu_min_us": min(r["cpu_us"] for r in runs), "all_cpu_us": [round(r["cpu_us"]) for r in runs],
        "all_rps": [round(r["rps"], 1) for r in runs], "socket_errors": sum(r["socket_errors"] for r in runs),
        "all_top_share": [round(r.get("top_share", 0.0), 2) for r in runs]}


# ---- time to ready, big requests ----------------------------------------------------------------------

def bench_ready(specs: list[Spec], reps: int, p, mlflow_py, mlflow_dir) -> dict:
    out: dict[str, list[float]] = {s.label: [] for s in specs}
    for r in range(reps):
        for s in (specs if r % 2 == 0 else specs[::-1]):
            srv = Server(s, p, mlflow_py, mlflow_dir)
            try:
                out[s.label].append(srv.start())
            finally:
                srv.stop()
        say("    ready: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in out.items()))
    return {k: {"median": median(v), "all": [round(x, 3) for x in v]} for k, v in out.items()}


def bench_big(specs: list[Spec], reps: int, p, mlflow_py, mlflow_dir) -> dict:
    servers = [Server(s, p, mlflow_py, mlflow_dir) for s in specs]
    times: dict[str, list[float]] = {s.label: [] for s in specs}
    try:
        for srv in servers:
            srv.start()

        def once(srv: Server) -> float:
            body = p.mlflow_big if srv.spec.kind == "mlflow" else p.body_big
            conn = http.client.HTTPConnection(HOST, srv.port, timeout=120)  # fresh: idle keep-alives time out
            t = time.perf_counter()
            conn.request("POST", srv.spec.path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            took = time.perf_counter() - t
            conn.close()
            if resp.status != 200:
                raise RuntimeError(f"{srv.spec.label}: 10,000-row request answered {resp.status}: {data[:300]!r}")
            return took

        for srv in servers:  # warm-up; check the answer once
            once(srv)
        for r in range(reps):
            for srv in (servers if r % 2 == 0 else servers[::-1]):
                times[srv.spec.label].append(once(srv))
                time.sleep(0.5)  # let background work (the prediction log's insert) finish
    finally:
        for srv in servers:
            srv.stop()
    return {k: {"median": median(v), "all": [round(x, 4) for x in v]} for k, v in times.items()}


# ---- in-process: per-feature CPU cost, metrics micro-benchmark, cProfile -------------------------------

INPROC = r'''
import cProfile, io, json, os, pstats, statistics, sys, tempfile, time
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="serve-bench-metrics-")  # as under gunicorn
project, body_path, onnx, classes, n, rounds, prof_out = sys.argv[1:8]
n, rounds = int(n), int(rounds)
body = open(body_path, "rb").read()
os.chdir(project)
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
from mlopsctl.config import load_settings
import mlopsctl.serving.app as app_mod
from mlopsctl.serving.metrics import Metrics
from serve_bench import NoMetrics
from mlopsctl.serving.predlog import PredictionLog, make_record
os.environ.update(BARE_MODEL=onnx, BARE_CLASSES=classes, BARE_WORKERS="2")
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
import serve_bare_app

cheap = {"MLOPS_SERVE_UNKNOWN_CATEGORY": "accept", "MLOPS_SERVE_OUT_OF_RANGE": "accept",
         "MLOPS_SERVE_UNSEEN_NULLS": "accept", "MLOPS_SERVE_EXTRA_COLUMNS": "ignore"}
nolog = {"MLOPS_SERVE_LOG_PREDICTIONS": "false"}
variants = {"full": ({}, False), "no validation": (cheap, False), "no logging": (nolog, False),
            "no metrics": ({}, True), "all off": ({**cheap, **nolog}, True)}
clients = {}
for name, (env, nometrics) in variants.items():
    app_mod.Metrics = NoMetrics if nometrics else Metrics
    settings = load_settings(env={**env})
    clients[name] = app_mod.create_app(settings, "bc@production", workers=2, watch=False).test_client()
clients["bare"] = serve_bare_app.app.test_client()

def loop(c, k):
    for _ in range(k):
        r = c.post("/predict", data=body, content_type="application/json")
        assert r.status_code == 200, r.data
for c in clients.values():
    loop(c, 300)
res = {k: {"cpu_us": [], "wall_us": []} for k in clients}
for r in range(rounds):
    order = list(clients) if r % 2 == 0 else list(clients)[::-1]
    for k in order:
        w, cpu = time.perf_counter(), time.process_time()
        loop(clients[k], n)
        res[k]["wall_us"].append((time.perf_counter() - w) / n * 1e6)
        log = clients[k].application.extensions["mlopsctl"].predlog if k != "bare" else None
        if log is not None:
            log.flush(60)  # the prediction-log thread writes what is left of this run: its CPU counts (same process)
        res[k]["cpu_us"].append((time.process_time() - cpu) / n * 1e6)

# metrics calls of one successful /predict, multiprocess mode (as under gunicorn) and single-process
def metric_calls(m, k):
    t = time.perf_counter()
    for _ in range(k):
        t0 = time.perf_counter()
        m.rows_scored("bc", 1, 1)
        m.request_done("predict", 200, time.perf_counter() - t0)
    return (time.perf_counter() - t) / k * 1e6
from prometheus_client import values
mp = Metrics()
mp_class, mp_dir = values.ValueClass, os.environ.pop("PROMETHEUS_MULTIPROC_DIR")
values.ValueClass = values.MutexValue  # prometheus_client picks the value class at import time
sp = Metrics()
values.ValueClass = mp_class
os.environ["PROMETHEUS_MULTIPROC_DIR"] = mp_dir
micro = {"multiprocess_us": statistics.median(metric_calls(mp, 20000) for _ in range(5)),
         "single_process_us": statistics.median(metric_calls(sp, 20000) for _ in range(5))}

# cProfile (wall clock) of every feature but logging: the log's writer thread would make the request thread wait
# for the GIL inside functions that release it (ORT's run), blurring the picture; its cost is measured apart
prof = cProfile.Profile()
prof.enable()
loop(clients["no logging"], n)
prof.disable()
s = io.StringIO()
st = pstats.Stats(prof, stream=s)
st.sort_stats("cumulative").print_stats(45)
st.sort_stats("tottime").print_stats(30)
open(prof_out, "w").write(f"cProfile of {n} in-process POST /predict (validation + metrics on, logging off), "
                          "Flask test client\n" + s.getvalue())

# ---- hot-path micro-measurements of today's code (CPU per call, min of 3 repetitions) ----
import numpy as np, orjson
from mlopsctl.contract_check import check
from mlopsctl.predlog_format import encode_columns
from mlopsctl.serving.http import new_request_id

def cpu_us(f, k):
    for _ in range(max(1, k // 10)):
        f()
    best = []
    for _ in range(3):
        t = time.process_time()
        for _ in range(k):
            f()
        best.append((time.process_time() - t) / k * 1e6)
    return min(best)

app_full = clients["full"].application
served = app_full.extensions["mlopsctl"].model
serve = app_full.extensions["mlopsctl"].settings.serve
c = served.contract
names = c.feature_names
recs1 = orjson.loads(body)["records"]
recs_big = [dict(recs1[0]) for _ in range(10_000)]

def feeds(records, **policies):
    d = served.records.records(records, "records")
    checked = check(c, d.columns, block=d.block, max_errors=5, **policies)
    return c.onnx_feeds(checked.normalized, checked.block)

default = dict(unknown_category=serve.unknown_category, extra_columns=serve.extra_columns,
               unseen_nulls=serve.unseen_nulls, out_of_range=serve.out_of_range, range_tolerance=serve.range_tolerance)
hot = {"validation_1row": {"default": cpu_us(lambda: feeds(recs1, **default), 3000),
                           "cheapest": cpu_us(lambda: feeds(recs1), 3000)},
       "validation_10k_ms": {"default": cpu_us(lambda: feeds(recs_big, **default), 5) / 1e3,
                             "cheapest": cpu_us(lambda: feeds(recs_big), 5) / 1e3}}

# the prediction-log writer: CPU per record at several batch sizes (one transaction each), no other threads
store = app_full.extensions["mlopsctl"].holder.project.store
writer = PredictionLog(store)
writer.close()
d1 = served.records.records(recs1, "records")
chk1 = check(c, d1.columns, block=d1.block, **default)
out1 = served.scorer.run_feeds(c.onnx_feeds(chk1.normalized, chk1.block))
def batch(b):
    return [make_record(new_request_id(), served.name, served.version, "predict", 1.0, chk1.normalized, out1, 1,
                        block=chk1.block, block_columns=chk1.block_columns) for _ in range(b)]
hot["log_write_us"] = {b: cpu_us(lambda: writer._write(batch(b)), k) / b for b, k in ((1, 200), (100, 20), (1000, 4))}
# a window over INDEX_NOW_MAX records defers its index rows; what writing them later costs (a reader or a
# quiet window pays it), per record
from mlopsctl.predlog_format import index_pending
index_pending(store.engine)
later = []
for _ in range(4):
    writer._write(batch(1000))
    t0 = time.thread_time()
    assert index_pending(store.engine) == 1000
    later.append(time.thread_time() - t0)
hot["log_index_later_us"] = min(later) / 1000 * 1e6
big = {k: np.random.rand(10_000) for k in names}
bigout = served.scorer.run(big)
hot["log_encode_10k_ms"] = cpu_us(lambda: encode_columns(big, bigout), 5) / 1e3
rows = []
for (file, line, fn), (cc, nc, tt, ct, callers) in st.stats.items():
    rows.append({"fn": f"{os.path.basename(file)}:{line}({fn})", "calls_per_req": nc / n,
                 "self_us": tt / n * 1e6, "cum_us": ct / n * 1e6})
rows.sort(key=lambda r: -r["cum_us"])
print(json.dumps({"variants": {k: {m: statistics.median(v[m]) for m in v} | {"all_cpu_us": [round(x, 1) for x in v["cpu_us"]],
                                                                              "cpu_min_us": min(v["cpu_us"])}
                               for k, v in res.items()}, "micro": micro, "profile": rows[:80], "hot": hot}))
'''


class _Noop:
    def labels(self, *a, **k):
        return self

    def inc(self, *a, **k):
        pass

    def observe(self, *a, **k):
        pass

    def set(self, *a, **k):
        pass


def _no_metrics_class():
    from mlopsctl.serving.metrics import Metrics

    class NoMetrics(Metrics):
        """The app's Metrics with the per-request objects (requests, latency, errors, rows, warnings) as no-ops:
        what a ``serve.metrics = false`` switch would save."""

        def __init__(self) -> None:
            super().__init__()
            for name in ("requests", "latency", "errors", "rows", "warnings"):
                setattr(self, name, _Noop())

    return NoMetrics


def __getattr__(name: str):  # `from serve_bench import NoMetrics` without importing mlopsctl at module import
    if name == "NoMetrics":
        return _no_metrics_class()
    raise AttributeError(name)


def bench_inproc(p: Project, n: int, rounds: int) -> dict:
    script = WORK / "inproc.py"
    script.write_text(INPROC)
    shutil.copy(Path(__file__), WORK / "serve_bench.py")
    shutil.copy(BENCH / "_common.py", WORK / "_common.py")  # serve_bench imports it
    shutil.copy(BENCH / "serve_bare_app.py", WORK / "serve_bare_app.py")
    out = run([PY, script, p.dir, p.body1, p.onnx, ",".join(p.classes), str(n), str(rounds),
               WORK / "profile.txt"], cwd=WORK)
    return json.loads(out.strip().splitlines()[-1])


# ---- the --launch shim --------------------------------------------------------------------------------

def launch(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="serve_bench.py --launch")
    ap.add_argument("--worker-class", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-metrics", action="store_true")
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    import mlopsctl.serving.server as server

    if a.worker_class and hasattr(server, "WORKER_CLASS"):  # older trees: the class was a module constant
        server.WORKER_CLASS = a.worker_class
    if a.threads and hasattr(server, "THREADS_PER_WORKER"):  # an older mlopsctl (A/B runs against old trees)
        server.THREADS_PER_WORKER = a.threads
    elif a.threads:
        os.environ["MLOPS_SERVE_THREADS"] = str(a.threads)
    if a.no_metrics:
        import mlopsctl.serving.app as app_mod

        app_mod.Metrics = _no_metrics_class()
    from mlopsctl.cli.main import app

    rest = a.rest[1:] if a.rest[:1] == ["--"] else a.rest
    app(args=rest, prog_name="mlopsctl")


# ---- report -------------------------------------------------------------------------------------------

def commit() -> str:
    """The code under test: HEAD's short hash and src/'s tree hash (+dirty when src/ has uncommitted changes)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    try:
        dirty = "+dirty" if git("status", "--porcelain", "--", "src") else ""
        return f"{git('rev-parse', '--short', 'HEAD') or '?'} (src tree {git('rev-parse', '--short', 'HEAD:src') or '?'}{dirty})"
    except OSError:
        return "?"


def machine() -> dict:
    cpu = cpu_model(platform.processor() or "?")
    code = ("import importlib.metadata as m, json\nout = {}\n"
            "for d in ('mlopsctl', 'flask', 'gunicorn', 'onnxruntime', 'orjson', 'prometheus-client', 'sqlalchemy'):\n"
            "    try: out[d] = m.version(d)\n    except m.PackageNotFoundError: pass\nprint(json.dumps(out))")
    wrkv = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}",
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
            "versions": json.loads(run([PY, "-c", code])),
            "wrk": (wrkv.stdout + wrkv.stderr).strip().splitlines()[0] if (wrkv.stdout + wrkv.stderr) else "wrk"}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def label(kind: str, wc: str, w: int, threads: int = GTHREADS) -> str:
    t = f" ×{threads} threads" if wc == "gthread" else ""
    return f"{kind} {wc}{t}, {w} workers"


def fmt_rps(x: float) -> str:
    return f"{x:,.0f}"


def render(args, m: dict, mlflow_note: str, res: dict) -> str:
    mat, feat, ready, big, inproc = res["matrix"], res["features"], res["ready"], res["big"], res["inproc"]
    have_mlflow = "mlflow" in feat
    # matrix table
    mrows = ["| gunicorn config | mlopsctl req/s | p50 / p99 ms | CPU µs/req (lowest) | bare req/s | p50 / p99 ms | CPU µs/req (lowest) "
             "| mlopsctl / bare (req/s) | bare / mlopsctl (CPU per req) |", "|---|---|---|---|---|---|---|---|---|"]
    best = None
    for wc, t, w in MATRIX:
        a, b = mat.get(label("mlopsctl", wc, w, t)), mat.get(label("bare", wc, w, t))
        if not a or not b:
            continue
        ratio = a["rps"] / b["rps"]
        if best is None or a["rps"] > best[2]:
            best = (wc, w, a["rps"], ratio, t)
        default = (wc, w) == DEFAULT
        mrows.append(f"| {label('', wc, w, t).strip()}{' (default)' if default else ''} | {fmt_rps(a['rps'])} | "
                     f"{a['p50_ms']:.2f} / {a['p99_ms']:.2f} | {a['cpu_min_us']:.0f} | {fmt_rps(b['rps'])} | "
                     f"{b['p50_ms']:.2f} / {b['p99_ms']:.2f} | {b['cpu_min_us']:.0f} | **{ratio:.2f}×** | "
                     f"{b['cpu_min_us'] / a['cpu_min_us']:.2f}× |")
    full, bare = feat["full"], feat["bare"]
    mlf_rps = feat["mlflow"]["rps"] if have_mlflow else None
    mlf_ready = ready.get("mlflow models serve", {}).get("median")
    ready_ml = ready["mlopsctl serve"]["median"]
    hot = inproc["hot"]
    v1, vb, lw = hot["validation_1row"], hot["validation_10k_ms"], hot["log_write_us"]
    prow = ["| what | CPU |", "|---|---|",
            f"| records → checked feeds, 1 row (`RecordsDecoder.records` + `contract_check.check` + `Contract.onnx_feeds`) | "
            f"{v1['default']:.0f} µs with the default policies, {v1['cheapest']:.0f} µs with the cheapest |",
            f"| the same, 10,000 rows | {vb['default']:.1f} ms default, {vb['cheapest']:.1f} ms cheapest |",
            "| `PredictionLog._write` per record (with building the records), one transaction of 1 / 100 / 1,000 "
            "records (1,000: a busy window, index rows deferred) | "
            + " / ".join(f"{lw[b]:.0f}" for b in sorted(lw, key=int)) + " µs |",
            f"| writing a busy window's deferred index rows later (`predlog_format.index_pending`), per record | "
            f"{hot['log_index_later_us']:.1f} µs |",
            f"| `predlog_format.encode_columns` of one 10,000-row request | {hot['log_encode_10k_ms']:.1f} ms |"]
    sd = res.get("shutdowns", {})
    sd_txt = "; ".join(f"{k}: {v['stops_with_abort']} of {v['stops']} stops had workers killed by SIGABRT or SIGKILL "
                       f"({v['workers_aborted']} workers)" for k, v in sd.items())
    big_ml = big["mlopsctl"]["median"]
    log_cost = 1 - full["rps"] / feat["no logging"]["rps"]
    mlf_txt = (f"`mlflow models serve` {fmt_rps(mlf_rps)} req/s (measured, -w 2)" if have_mlflow else
               f"`mlflow models serve` {RECORDED_MLFLOW['rps'][0]:.0f}–{RECORDED_MLFLOW['rps'][1]:.0f} req/s "
               f"(recorded; MLflow not installed: {mlflow_note})")
    mlf_ratio = full["rps"] / (mlf_rps if have_mlflow else RECORDED_MLFLOW["rps"][1])
    ready_base = (f"`mlflow models serve` {mlf_ready:.2f} s (measured); bare gunicorn app "
                  f"{ready['bare gunicorn']['median']:.2f} s" if mlf_ready is not None else
                  f"MLflow {RECORDED_MLFLOW['ready_s']} s (recorded); bare gunicorn app "
                  f"{ready['bare gunicorn']['median']:.2f} s")
    bc = label("mlopsctl", best[0], best[1], best[4]).removeprefix("mlopsctl ") if best else "?"
    trows = [
        ("throughput vs bare Flask + ORT (default config)", f"≥ {TARGET_RATIO_BARE}×",
         f"{full['rps'] / bare['rps']:.2f}× ({fmt_rps(full['rps'])} vs {fmt_rps(bare['rps'])} req/s)",
         f"bare app, same gunicorn config, same rounds; by server CPU per request: "
         f"{bare['cpu_min_us'] / full['cpu_min_us']:.2f}× ({full['cpu_min_us']:.0f} vs {bare['cpu_min_us']:.0f} µs)",
         verdict(full["rps"] / bare["rps"] >= TARGET_RATIO_BARE)),
        (f"throughput vs bare, best mlopsctl config ({bc})" if best else "best config",
         f"≥ {TARGET_RATIO_BARE}×", f"{best[3]:.2f}×" if best else "?", "worker matrix, same config for both",
         verdict(bool(best) and best[3] >= TARGET_RATIO_BARE)),
        ("throughput vs MLflow", f"≥ {TARGET_RATIO_MLFLOW:.0f}×", f"{mlf_ratio:.1f}×", mlf_txt,
         verdict(mlf_ratio >= TARGET_RATIO_MLFLOW)),
        ("p99 latency, 8 clients (default config)", f"≤ {TARGET_P99_MS} ms", f"{full['p99_ms']:.2f} ms",
         f"bare app {bare['p99_ms']:.2f} ms", verdict(full["p99_ms"] <= TARGET_P99_MS)),
        ("`mlopsctl serve` to ready", f"≤ {TARGET_READY_S} s", f"{ready_ml:.2f} s", ready_base,
         verdict(ready_ml <= TARGET_READY_S)),
        ("10,000-row POST /predict", f"≤ {TARGET_BIG_S} s", f"{big_ml:.3f} s",
         ", ".join(f"{k} {v['median']:.3f} s" for k, v in big.items() if k != "mlopsctl"),
         verdict(big_ml <= TARGET_BIG_S)),
        ("prediction logging's cost", f"≤ {TARGET_LOG_COST:.0%}", f"{log_cost:.1%} of throughput",
         f"logging off {fmt_rps(feat['no logging']['rps'])} req/s; by server CPU per request "
         f"{1 - feat['no logging']['cpu_min_us'] / full['cpu_min_us']:.1%}", verdict(log_cost <= TARGET_LOG_COST)),
    ]
    table = ["| target | goal | mlopsctl | baseline | result |", "|---|---|---|---|---|"]
    table += ["| " + " | ".join(r) + " |" for r in trows]
    # per-feature table
    var = inproc["variants"]
    frows = ["| feature | req/s with / without | throughput cost | server CPU µs/req with / without | CPU cost "
             "| in-process CPU µs/req with / without | CPU cost |", "|---|---|---|---|---|---|---|"]
    for name, with_, key in (("validation (default policies → cheapest)", "full", "no validation"),
                             ("prediction logging", "full", "no logging"),
                             ("metrics (stubbed out: no switch exists)", "full", "no metrics"),
                             ("all three", "full", "all off")):
        if with_ not in feat or with_ not in var:
            continue
        w, wo = feat[with_]["rps"], feat[key]["rps"]
        cw, cwo = var[with_]["cpu_min_us"], var[key]["cpu_min_us"]
        sw, swo = feat[with_]["cpu_min_us"], feat[key]["cpu_min_us"]
        frows.append(f"| {name} | {fmt_rps(w)} / {fmt_rps(wo)} | {1 - w / wo:.1%} | {sw:.0f} / {swo:.0f} | "
                     f"{1 - swo / sw:.1%} | {cw:.0f} / {cwo:.0f} | {1 - cwo / cw:.1%} |")
    frows.append(f"| (reference) everything mlopsctl adds over the bare app | {fmt_rps(full['rps'])} / "
                 f"{fmt_rps(bare['rps'])} | {1 - full['rps'] / bare['rps']:.1%} | {full['cpu_min_us']:.0f} / "
                 f"{bare['cpu_min_us']:.0f} | {1 - bare['cpu_min_us'] / full['cpu_min_us']:.1%} | {var['full']['cpu_min_us']:.0f} / "
                 f"{var['bare']['cpu_min_us']:.0f} | {1 - var['bare']['cpu_min_us'] / var['full']['cpu_min_us']:.1%} |")
    micro = inproc["micro"]
    # profile: the functions that matter, cumulative µs per request
    keys = ["(__call__)", "(_answer)", "(infer)", "(check)", "(run)", "InferenceSession.run", "(run_with",
            "(decode)", "(_typed)", "(records)", "(predict_body)", "(submit)", "(new_request_id)", "(request_done)",
            "(rows_scored)", "(_numbers)", "(run_feeds)", "(onnx_feeds)", "(_as_float)", "(parse_json)", "(model)"]
    prof_rows = []
    for r in inproc["profile"]:
        if any(k in r["fn"] for k in keys) and len(prof_rows) < 24:
            prof_rows.append(f"| `{r['fn']}` | {r['calls_per_req']:.1f} | {r['cum_us']:.1f} | {r['self_us']:.1f} |")
    v = m["versions"]
    cmd = ".venv/bin/python benchmarks/serve_bench.py" + (" --quick" if args.quick else "")
    srows = ["| server | req/s | p50 ms | p99 ms | server CPU µs/req (lowest; all rounds) | all rounds (req/s) "
             "| busiest process's share of the server CPU, all rounds |", "|---|---|---|---|---|---|---|"]
    for k, s in feat.items():
        srows.append(f"| {k} | {fmt_rps(s['rps'])} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['cpu_min_us']:.0f}; "
                     f"{', '.join(str(x) for x in s['all_cpu_us'])} | "
                     f"{', '.join(f'{x:,.0f}' for x in s['all_rps'])} | "
                     f"{', '.join(f'{x:.0%}' for x in s['all_top_share'])} |")
    lines = [
        SECTION, "",
        f"Produced by `{cmd}` (from the repo root; it rewrites this section except the hand-written "
        f"\"{FINDINGS[4:]}\") on {m['date']}, code at commit {res['commit'][0]}"
        + (f" (src/ changed during the run: {res['commit'][1]} at the end)"
           if res["commit"][1].split("(")[1] != res["commit"][0].split("(")[1] else "")
        + f": {m['cores']} cores ({m['cpu']}), {m['mem_gib']} GiB, Python "
        f"{m['python']}, {m['os']}; " + ", ".join(f"{k} {x}" for k, x in v.items())
        + (f", mlflow {mlflow_note}" if have_mlflow else "") + f"; {m['wrk']}. The machine is shared: other "
        f"jobs ran meanwhile (1-minute load average {res['load'][0]:.1f} at the start, {res['load'][1]:.1f} at the "
        f"end, {min(res['loads']):.1f}–{max(res['loads']):.1f} at the measured runs' starts), so runs alternate "
        f"and the figures are medians; compare ratios from the same rounds rather than absolute req/s.", "",
        f"Load: `wrk -t2 -c8 -d{args.duration:g}s --latency -s benchmarks/wrk_post.lua` on loopback (wrk shares the "
        f"{m['cores']} cores with the server), one-row `POST /predict` (`dataframe_records` on MLflow's "
        f"/invocations), after a {args.warmup:g} s warm-up on a freshly started server and a {SETTLE_S:g} s pause. "
        f"mlopsctl runs with contract "
        f"checks (default policies), prediction logging and metrics on unless a row says otherwise.", "",
        *table, "",
        f"### Worker matrix ({args.matrix_rounds} alternating rounds, medians)", "",
        "Both systems on gunicorn with the same class, thread and worker counts (mlopsctl's default: "
        "serve.threads = 1, which means sync workers; more threads mean gthread workers). "
        "ORT intra-op threads: max(1, cores // workers) for both.", "",
        *mrows, "",
        f"Best mlopsctl configuration here: **{bc}** ({fmt_rps(best[2]) if best else '?'} req/s); the code's "
        f"default is {label('', DEFAULT[0], DEFAULT[1]).strip()}. Sync workers do not keep connections "
        "alive, so wrk reconnects for every request"
        + (f" (socket errors seen: {sum(s['socket_errors'] for s in mat.values())})" if any(s['socket_errors'] for s in mat.values()) else "")
        + ".", "",
        f"### Per-feature cost ({args.feature_rounds} alternating rounds, default config: "
        f"{label('', DEFAULT[0], DEFAULT[1]).strip()})", "",
        "Throughput columns: wrk against real servers (switched off with `MLOPS_SERVE_UNKNOWN_CATEGORY=accept "
        "MLOPS_SERVE_OUT_OF_RANGE=accept MLOPS_SERVE_UNSEEN_NULLS=accept MLOPS_SERVE_EXTRA_COLUMNS=ignore`, "
        "`MLOPS_SERVE_LOG_PREDICTIONS=false`, and for metrics the benchmark's launcher swapping the per-request "
        "Prometheus objects for no-ops, as a `serve.metrics=false` switch would). CPU columns: the same variants "
        f"in one process through Flask's test client ({args.inproc_n:,} requests × {args.inproc_rounds} alternating "
        "rounds, CPU time per request including the prediction-log thread; no HTTP, no load generator, so "
        "far less noisy). Server CPU: user + system time of the server's process group (master, workers, their "
        "threads) over the measured wrk run, divided by the requests served; it does not depend on the share of the "
        "cores the server got, so it is the steadier comparison on a shared machine. Every CPU figure is the lowest "
        "of the rounds: contention from other jobs only ever adds CPU time (cache and core sharing), it never "
        "removes any; throughput and latency are medians.", "",
        *frows, "",
        f"Metrics micro-benchmark (the three calls one successful /predict makes: rows counter, requests counter, "
        f"latency histogram): {micro['multiprocess_us']:.1f} µs per request in prometheus_client's multiprocess "
        f"mode (what gunicorn uses: mmap'd files, a lock per value), {micro['single_process_us']:.1f} µs "
        "single-process.", "",
        "All servers in the per-feature rounds (busiest process: near 50 % when the two workers share the load, "
        "near 100 % when one worker accepted all 8 connections — such rounds show about half the req/s):", "",
        *srows, "",
        f"Time to ready (process start → first 200 on /v2/health/ready, /ping for MLflow; median of {args.ready_reps},"
        " alternating): " + "; ".join(f"{k} {x['median']:.2f} s (all: {', '.join(f'{t:.2f}' for t in x['all'])})"
                                       for k, x in ready.items()) + ".", "",
        f"10,000-row request (client wall from connect to the last byte of the answer, median of {args.big_reps}, alternating): "
        + "; ".join(f"{k} {x['median'] * 1e3:.0f} ms (all: {', '.join(f'{t * 1e3:.0f}' for t in x['all'])})"
                    for k, x in big.items()) + ".", "",
        f"Shutdown (SIGTERM to the gunicorn master after each run, counted from the servers' logs): {sd_txt}.", "",
        "### Hot-path micro-measurements", "",
        "CPU per call in one process on the same model and data (min of 3 repetitions; code in this script's "
        "`INPROC`). The writer rows run with no request threads beside it; under load its CPU per record is "
        "higher (thread switches for the GIL).", "",
        *prow, "",
        f"### Where the time goes (cProfile, {args.inproc_n:,} in-process requests)", "",
        "Validation and metrics on, logging off (the writer thread would make the request thread wait for the GIL "
        "inside functions that release it, such as ORT's run; its cost is measured apart); wall µs per request; "
        "the profiler's own overhead inflates small, often-called functions. Full listing: "
        "`benchmarks/.work/serve/profile.txt`.", "",
        "| function | calls/request | cumulative µs | self µs |", "|---|---|---|---|", *prof_rows,
    ]
    return "\n".join(lines) + "\n"


# ---- main ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--launch"]:
        launch(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 s runs, one round (a smoke check)")
    ap.add_argument("--no-install", action="store_true", help="do not pip-install MLflow when it is missing")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--skip-matrix", action="store_true", help="skip the worker matrix (its table stays empty)")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.matrix_rounds, args.feature_rounds = 3, 1, 1, 1
        args.ready_reps, args.big_reps, args.inproc_n, args.inproc_rounds = 2, 3, 300, 1
    else:
        args.duration, args.warmup, args.matrix_rounds, args.feature_rounds = 10, 2, 4, 5
        args.ready_reps, args.big_reps, args.inproc_n, args.inproc_rounds = 5, 10, 3000, 7
    if shutil.which("wrk") is None:
        say("wrk is not installed: `apt-get update && apt-get install -y wrk` (Debian/Ubuntu) or "
            "`brew install wrk` (macOS), then run this again.")
        return 2

    WORK.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(WORK / "logs", ignore_errors=True)
    load_start = loadavg()
    mlflow_py, mlflow_note = ensure_mlflow(not args.no_install, base_env(), say)
    say("precompiling bytecode ...")
    precompile([REPO / "src", BENCH, site_packages(BIN)] + ([site_packages(mlflow_py.parent)] if mlflow_py else []))
    m = machine()
    say("project: init, train, register, promote ...")
    p = make_project()
    mlflow_dir = mlflow_model(mlflow_py, p) if mlflow_py else None
    res: dict = {}

    say("1/5 in-process per-feature cost, metrics micro-benchmark, cProfile ...")
    res["inproc"] = bench_inproc(p, args.inproc_n, args.inproc_rounds)
    say("    " + ", ".join(f"{k} {v['cpu_us']:.0f} µs" for k, v in res["inproc"]["variants"].items()))

    say("2/5 worker matrix ...")
    specs = []
    for wc, t, w in MATRIX:
        specs += [Spec(label("mlopsctl", wc, w, t), "mlopsctl", wc, w, nthreads=t),
                  Spec(label("bare", wc, w, t), "bare", wc, w, nthreads=t)]
    mat = {} if args.skip_matrix else rounds_of(specs, args.matrix_rounds, p, args, mlflow_py, mlflow_dir, pairs=True)
    res["matrix"] = {k: summary(v) for k, v in mat.items()}

    say("3/5 per-feature rows ...")
    wc, w = DEFAULT
    fspecs = [Spec("full", "mlopsctl", wc, w), Spec("bare", "bare", wc, w),
              Spec("no validation", "mlopsctl", wc, w, env=dict(CHEAPEST_VALIDATION)),
              Spec("no logging", "mlopsctl", wc, w, env=dict(NO_LOGGING)),
              Spec("no metrics", "mlopsctl", wc, w, no_metrics=True),
              Spec("all off", "mlopsctl", wc, w, env={**CHEAPEST_VALIDATION, **NO_LOGGING}, no_metrics=True)]
    if mlflow_py:
        fspecs.append(Spec("mlflow", "mlflow", "uvicorn", w))
    feat = rounds_of(fspecs, args.feature_rounds, p, args, mlflow_py, mlflow_dir)
    res["features"] = {k: summary(v) for k, v in feat.items()}
    res["loads"] = [r["load1"] for runs in [*mat.values(), *feat.values()] for r in runs]

    say("4/5 time to ready ...")
    rspecs = [Spec("mlopsctl serve", "mlopsctl", wc, w, real_cli=True), Spec("bare gunicorn", "bare", wc, w)]
    if mlflow_py:
        rspecs.append(Spec("mlflow models serve", "mlflow", "uvicorn", w))
    res["ready"] = bench_ready(rspecs, args.ready_reps, p, mlflow_py, mlflow_dir)

    say("5/5 10,000-row request ...")
    bspecs = [Spec("mlopsctl", "mlopsctl", wc, w, real_cli=True), Spec("bare", "bare", wc, w),
              Spec("mlopsctl, logging off", "mlopsctl", wc, w, env=dict(NO_LOGGING), real_cli=True)]
    if mlflow_py:
        bspecs.append(Spec("mlflow", "mlflow", "uvicorn", w))
    res["big"] = bench_big(bspecs, args.big_reps, p, mlflow_py, mlflow_dir)
    res["load"] = (load_start, loadavg())
    res["shutdowns"] = SHUTDOWNS
    res["commit"] = (m["commit"], commit())
    (WORK / "results.json").write_text(json.dumps({"machine": m, "mlflow": mlflow_note, **res}, indent=1))

    text = render(args, m, mlflow_note, res)
    print(text)
    if not args.no_write:
        write_section(SECTION, text, keep=FINDINGS)
        say(f"wrote the '{SECTION}' section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
