"""Dashboard benchmark (issue 19): the runs list, a sort by a metric and a 50-run comparison on a big store.

    .venv/bin/python benchmarks/bench_ui.py              # full: the figures in RESULTS.md
    .venv/bin/python benchmarks/bench_ui.py --quick      # 1,000 runs, fewer repetitions, RESULTS.md untouched
    .venv/bin/python benchmarks/bench_ui.py --no-mlflow  # skip MLflow's side

Targets: with 10,000 runs x 20 metrics x 20 params in the store, ``/runs`` (the first page), ``/runs`` sorted
by a metric, and ``/compare`` of 50 runs each answer in <= 150 ms server time (median), and the ``/runs``
page weighs <= 300 KB.

What is timed:

* **server time**: the request through the dashboard's WSGI app in this process (Flask's test client: routing,
  the use case's SQL, the Jinja page), median of ``--n`` after a warm-up; the app's own ``Server-Timing``
  figure is shown beside it. The page weight is the HTML's bytes (plus the vendored CSS and JS, cached).
* **over HTTP**: the same URLs fetched from ``mlopsctl ui`` (gunicorn, one worker) with a fresh connection per
  request, client wall time.
* **MLflow** (same machine, same run, its own venv ``benchmarks/.work/mlflow-venv``): the REST call MLflow's
  UI makes for its runs table, ``POST /ajax-api/2.0/mlflow/runs/search`` against ``mlflow server`` on a SQLite
  store holding the same shape (10,000 runs x 20 metrics x 20 params: 100 runs logged with ``log_batch``, then
  copied row by row in SQL inside MLflow's own schema, values re-drawn), ``max_results`` = our page size:
  the first page by start time, the same page sorted by a metric, and the 50 runs of the comparison
  (``attributes.run_id IN (...)``). Client wall time over HTTP, like our HTTP column.

The store is built once under ``benchmarks/.work/ui`` with tracking's bulk functions (``metric_rows`` and
multi-row inserts) and reused while it has the right shape. Benchmarks are not tests: the exit status is 0
whether targets are met or not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from _common import cpu_model, ensure_mlflow, write_section

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work"
SECTION = "## Dashboard (issue 19)"
TARGET_MS, TARGET_KB = 150.0, 300.0
METRICS, PARAMS, PAGE = 20, 20, 50
SORT_METRIC = "m07"


def say(msg: str) -> None:
    print(f"[bench_ui] {msg}", file=sys.stderr, flush=True)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()[:1]) if hasattr(os, "getloadavg") else "?"


# ---- our store -------------------------------------------------------------------------------------------

def build_store(root: Path, runs: int) -> Any:
    """``runs`` finished runs x METRICS metrics x PARAMS params (and one tag) in ``root``'s store."""
    sys.path.insert(0, str(REPO / "src"))
    from sqlalchemy import func, insert, select

    from mlopsctl import tracking
    from mlopsctl.config import load_settings
    from mlopsctl.project import open_project
    from mlopsctl.store.models import Param, Run, Tag

    root.mkdir(parents=True, exist_ok=True)
    (root / ".mlops.toml").write_text("")
    settings = load_settings({}, {}, root)
    store = open_project(settings).store
    with store.read() as s:
        have = s.scalar(select(func.count(Run.id)))
    if have == runs:
        say(f"reusing the store in {root} ({runs} runs)")
        return settings
    if have:
        raise SystemExit(f"{root} holds {have} runs, not {runs}: delete it (rm -r {root}) and run again")
    say(f"building {runs} runs x {METRICS} metrics x {PARAMS} params in {root} ...")
    t0 = time.perf_counter()
    rnd = random.Random(19)
    start = dt.datetime(2026, 1, 1)
    with store.session() as s:
        exp = tracking.get_or_create_experiment(s, "bench")
        for lo in range(1, runs + 1, 1000):
            ids = range(lo, min(lo + 1000, runs + 1))
            s.execute(insert(Run), [{"id": i, "experiment_id": exp.id, "name": f"run-{i}", "status": "FINISHED",
                                     "model_class": "sklearn.ensemble.RandomForestClassifier", "task": "classification",
                                     "started_at": start + dt.timedelta(minutes=i), "duration_s": rnd.uniform(1, 60),
                                     "environment": {}} for i in ids])
            rows = [row for i in ids for row in tracking.metric_rows(i, {f"m{j:02d}": rnd.random() for j in range(METRICS)},
                                                                      ts=start + dt.timedelta(minutes=i))]
            s.execute(insert(tracking.Metric), rows)
            s.execute(insert(Param), [{"run_id": i, "key": f"p{j:02d}", "value": str(rnd.randint(1, 500))}
                                      for i in ids for j in range(PARAMS)])
            s.execute(insert(Tag), [{"run_id": i, "key": "owner", "value": rnd.choice(("ann", "bob", "eve"))} for i in ids])
    say(f"built in {time.perf_counter() - t0:.1f} s")
    return settings


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def bench_inprocess(settings: Any, cases: dict[str, str], n: int) -> dict[str, dict[str, float]]:
    from mlopsctl.ui.app import create_app

    client = create_app(settings).test_client()
    out = {}
    for name, url in cases.items():
        wall, app_ms = [], []
        for i in range(n + 3):
            t0 = time.perf_counter()
            resp = client.get(url)
            took = time.perf_counter() - t0
            assert resp.status_code == 200, (url, resp.status_code, resp.get_data(as_text=True)[:300])
            if i >= 3:
                wall.append(took)
                app_ms.append(float(resp.headers["Server-Timing"].split("dur=")[1]))
        out[name] = {"median": median_ms(wall), "p90": sorted(wall)[int(len(wall) * 0.9)] * 1000,
                     "server_timing": statistics.median(app_ms), "bytes": len(resp.data)}
    for asset in ("/static/ui.css", "/static/ui.js"):
        with client.get(asset) as r:
            out.setdefault("assets", {"bytes": 0})["bytes"] += len(r.data)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.communicate()[1][-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer in {seconds} s")


def time_http(fn: Callable[[], bytes], n: int) -> dict[str, float]:
    samples, size = [], 0
    for i in range(n + 3):
        t0 = time.perf_counter()
        size = len(fn())
        if i >= 3:
            samples.append(time.perf_counter() - t0)
    return {"median": median_ms(samples), "p90": sorted(samples)[int(len(samples) * 0.9)] * 1000, "bytes": size}


def bench_http(root: Path, cases: dict[str, str], n: int) -> dict[str, dict[str, float]]:
    port = free_port()
    proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "mlopsctl"), "-C", str(root), "ui", "--port", str(port),
                             "--workers", "1"], env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/studies", proc)

        def get(url: str) -> Callable[[], bytes]:
            return lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}{url}", timeout=30).read()

        return {name: time_http(get(url), n) for name, url in cases.items()}
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


# ---- MLflow's side ------------------------------------------------------------------------------------------

MLFLOW_BUILD = r'''
import json, random, sqlite3, sys, time, uuid
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

db, runs, n_metrics, n_params = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
client = MlflowClient(tracking_uri=f"sqlite:///{db}")
exp = client.create_experiment("bench")
rnd = random.Random(19)
templates = []
for i in range(100):  # MLflow's own API writes the first 100 runs
    r = client.create_run(exp)
    ts = int(time.time() * 1000)
    client.log_batch(r.info.run_id, metrics=[Metric(f"m{j:02d}", rnd.random(), ts, 0) for j in range(n_metrics)],
                     params=[Param(f"p{j:02d}", str(rnd.randint(1, 500))) for j in range(n_params)],
                     tags=[RunTag("owner", "ann")])
    client.set_terminated(r.info.run_id)
    templates.append(r.info.run_id)
conn = sqlite3.connect(db)
tables = ("runs", "metrics", "latest_metrics", "params", "tags")
cols = {t: [c[1] for c in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
base = int(time.time() * 1000)
for k in range(runs - len(templates)):  # the rest: copies of those rows in MLflow's own schema, new ids
    src, new = templates[k % len(templates)], uuid.uuid4().hex
    for t in tables:
        exprs = ["?" if c == "run_uuid" else ("? + 0" if c == "start_time" else c) for c in cols[t]]
        args = [new if c == "run_uuid" else base + k * 60000 for c in cols[t] if c in ("run_uuid", "start_time")]
        conn.execute(f"INSERT INTO {t} ({', '.join(cols[t])}) SELECT {', '.join(exprs)} FROM {t} WHERE run_uuid = ?",
                     [*args, src])
conn.execute("UPDATE metrics SET value = (abs(random()) % 1000000) / 1000000.0")
conn.execute("UPDATE latest_metrics SET value = (SELECT m.value FROM metrics m WHERE m.run_uuid = latest_metrics.run_uuid"
             " AND m.key = latest_metrics.key)")
conn.commit()
ids = [r[0] for r in conn.execute("SELECT run_uuid FROM runs ORDER BY start_time DESC LIMIT 50")]
print(json.dumps({"experiment_id": exp, "runs": conn.execute("SELECT count(*) FROM runs").fetchone()[0], "compare": ids}))
'''


def mlflow_store(py: Path, root: Path, runs: int) -> dict[str, Any]:
    meta = root / "meta.json"
    if meta.exists() and json.loads(meta.read_text())["runs"] == runs:
        say(f"reusing MLflow's store in {root}")
        return json.loads(meta.read_text())
    root.mkdir(parents=True, exist_ok=True)
    for f in root.glob("mlflow.db*"):
        f.unlink()
    say(f"building MLflow's store ({runs} runs) in {root} ...")
    t0 = time.perf_counter()
    out = subprocess.run([str(py), "-c", MLFLOW_BUILD, str(root / "mlflow.db"), str(runs), str(METRICS), str(PARAMS)],
                         env=clean_env(), capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    meta.write_text(out.stdout.strip().splitlines()[-1])
    say(f"built in {time.perf_counter() - t0:.1f} s")
    return json.loads(meta.read_text())


def bench_mlflow(py: Path, root: Path, runs: int, n: int) -> dict[str, dict[str, float]]:
    meta = mlflow_store(py, root, runs)
    port = free_port()
    proc = subprocess.Popen([str(py.parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1", "--port",
                             str(port), "--workers", "1"], env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, 300)
        url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/search"

        def search(body: dict[str, Any]) -> Callable[[], bytes]:
            data = json.dumps({"experiment_ids": [meta["experiment_id"]], "max_results": PAGE,
                               "run_view_type": "ACTIVE_ONLY", **body}).encode()

            def call() -> bytes:
                req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
                got = urllib.request.urlopen(req, timeout=60).read()
                assert len(json.loads(got)["runs"]) == PAGE
                return got
            return call

        ids = ", ".join(f"'{i}'" for i in meta["compare"])
        return {"runs": time_http(search({"order_by": ["attributes.start_time DESC"]}), n),
                "sort": time_http(search({"order_by": [f"metrics.`{SORT_METRIC}` DESC"]}), n),
                "compare": time_http(search({"filter": f"attributes.run_id IN ({ids})"}), n)}
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


# ---- report -------------------------------------------------------------------------------------------------

LABELS = {"runs": "`/runs` (first page, 50 runs)", "sort": f"`/runs?sort=metrics.{SORT_METRIC}`",
          "compare": "`/compare?runs=` 50 runs"}


def report(args: argparse.Namespace, runs: int, ours: dict, http: dict, mlflow: dict | None, why: str,
           load_before: str, load_after: str) -> str:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [SECTION, "",
             f"Command: `.venv/bin/python benchmarks/bench_ui.py` (repository root). Date {when}, {platform.machine()}, "
             f"{os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, MLflow {why}. 1-minute load "
             f"average before/after: {load_before} / {load_after}. Store: {runs:,} runs x {METRICS} metrics x {PARAMS} "
             f"params (+ 1 tag), SQLite; pages of {PAGE} runs; {args.n} requests per row after 3 warm-up requests.", "",
             "| request | server time median (p90) | Server-Timing median | target <= 150 ms | over HTTP median | "
             "page bytes | MLflow runs/search over HTTP median (bytes) |", "|---|---|---|---|---|---|---|"]
    for key, label in LABELS.items():
        o, h = ours[key], http.get(key, {})
        m = mlflow.get(key) if mlflow else None
        lines.append(f"| {label} | {o['median']:.1f} ms ({o['p90']:.1f}) | {o['server_timing']:.1f} ms | "
                     f"{'met' if o['median'] <= TARGET_MS else 'MISSED'} | {h.get('median', float('nan')):.1f} ms | "
                     f"{o['bytes']:,} | " + (f"{m['median']:.1f} ms ({m['bytes']:,})" if m else "-") + " |")
    kb = ours["runs"]["bytes"] / 1024
    lines += ["", f"`/runs` page weight: {kb:.1f} KB of HTML ({'met' if kb <= TARGET_KB else 'MISSED'}: target <= "
              f"{TARGET_KB:.0f} KB) plus {ours['assets']['bytes'] / 1024:.1f} KB of vendored CSS and JS (cached). "
              "For comparison the JSON of `/api/runs` is "
              f"{ours['api']['bytes'] / 1024:.1f} KB and MLflow's runs/search page of the same 50 runs "
              + (f"{mlflow['runs']['bytes'] / 1024:.1f} KB." if mlflow else "was not measured."),
              "", "Server time is the request through the dashboard's WSGI app in the benchmark's process (Flask's "
              "test client: routing, the use case's SQL, the Jinja page). Over HTTP: `mlopsctl ui` with one gunicorn "
              "worker, a new connection per request. MLflow: `mlflow server` (one worker) on a SQLite store of the "
              "same shape (see the script's docstring), the REST call its UI makes for the runs table, "
              "`POST /ajax-api/2.0/mlflow/runs/search` with `max_results` 50: by start time, by the metric, and the "
              "50 runs of the comparison (`attributes.run_id IN (...)`); it answers JSON for the browser to render, "
              "where the dashboard answers the rendered page."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 runs, 10 requests per row, RESULTS.md untouched")
    ap.add_argument("--n", type=int, default=30, help="requests per row (after 3 warm-up requests)")
    ap.add_argument("--no-mlflow", action="store_true", help="skip MLflow's side")
    ap.add_argument("--no-install", action="store_true", help="do not pip-install MLflow into its venv")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    runs = 1000 if args.quick else 10_000
    if args.quick:
        args.n, args.no_write = min(args.n, 10), True
    load_before = load()
    root = WORK / ("ui-quick" if args.quick else "ui")
    settings = build_store(root, runs)
    compare = ",".join(str(i) for i in range(runs, runs - 50, -1))
    cases = {"runs": "/runs", "sort": f"/runs?sort=metrics.{SORT_METRIC}", "compare": f"/compare?runs={compare}",
             "api": "/api/runs"}
    say("timing the dashboard in-process ...")
    ours = bench_inprocess(settings, cases, args.n)
    say("timing the dashboard over HTTP (gunicorn) ...")
    http = bench_http(root, {k: v for k, v in cases.items() if k != "api"}, args.n)
    mlflow, why = None, "not run (--no-mlflow)"
    if not args.no_mlflow:
        py, why = ensure_mlflow(not args.no_install, clean_env(), say, packages=("mlflow",), imports=("mlflow",))
        if py:
            say("timing MLflow's runs/search over HTTP ...")
            try:
                mlflow = bench_mlflow(py, WORK / ("ui-mlflow-quick" if args.quick else "ui-mlflow"), runs, args.n)
            except (RuntimeError, OSError, subprocess.SubprocessError, AssertionError) as e:
                why = f"{why} (failed: {str(e)[:300]})"
    text = report(args, runs, ours, http, mlflow, why, load_before, load())
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
        say(f"wrote {SECTION!r} in benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
