"""Continuous-training latency and idle cost (issue 5): from a file landing in data/incoming to the new version
answering on a running server, broken down by stage; and the idle watcher's CPU use.

    .venv/bin/python benchmarks/bench_watch.py            # full: the figures in RESULTS.md
    .venv/bin/python benchmarks/bench_watch.py --quick    # 1 run per configuration, 5 s idle, prints only
    .venv/bin/python benchmarks/bench_watch.py --from-json  # re-render the section from the last results.json

Targets: end-to-end <= training time + 3 s on the breast-cancer example (as shipped: a 100-tree forest);
the idle `mlopsctl watch` uses < 1 % of a core.

For each configuration (the defaults, watch.debounce_seconds = 2.0 and serve.reload_interval = 1.0, and a
tuned one) a fresh project is made with the CLI (`init --example breast-cancer`, `train`, `register 1`,
`promote breast-cancer 1`), then two real processes run side by side: `mlopsctl serve breast-cancer@production`
(gunicorn, 2 workers, 127.0.0.1) and `mlopsctl watch`. Each measured run renames a fresh CSV of 150 perturbed
rows into data/incoming (the landing instant), and the stages are read from:

* the watcher's log lines, time-stamped here as they arrive on its stderr pipe (line-buffered):
  detect = landed -> "file seen" (the debounce wait plus the sha256), validate = "file seen" -> "validated";
* the job's own `timings` JSON in the store's `watch_jobs` table: data (the new dataset version), train
  (`train_and_track`: fit, ONNX export, parity check, records), register, gate + promote (both models scored
  through ONNX Runtime on the held-out new rows, then the alias move);
* the server: reload = the "promoted" line -> the first /predict answer carrying the new version (polled
  every 10 ms once the promotion is logged, so polling does not compete with the training for the CPU).

The first file after the watcher starts pays the imports (pandas, scikit-learn, skl2onnx, ONNX Runtime); it
is reported on its own and the medians are over the runs after it. A run whose candidate the gate rejects
never reaches the server; it is counted and replaced by another file. Idle CPU: utime + stime of the watcher
process (all threads) from /proc/<pid>/stat over the idle window, after the last job.
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
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

from _common import cpu_model, write_section

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work" / "watch"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Watch (issue 5)"
MODEL = "breast-cancer"
TARGET = "diagnosis"
TARGET_OVERHEAD_S = 3.0
TARGET_IDLE_PCT = 1.0
ROWS = 150
CONFIGS = [  # name, watch.debounce_seconds, serve.reload_interval
    ("default", 2.0, 1.0),
    ("tuned", 0.5, 0.2),
]
STAGES = ["detect", "validate", "data", "train", "register", "gate_promote", "reload"]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    e.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "400"}, **extra)
    return e


def mlopsctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlopsctl", *args]


def run(cmd: list[str], cwd: Path) -> None:
    p = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-2000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def q(db: Path, sql: str, *args: Any) -> list[tuple]:
    with closing(sqlite3.connect(db, timeout=30)) as con:
        return con.execute(sql, args).fetchall()


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the whole line)


class LogTail:
    """Reads a child's stderr line by line, stamping each with time.monotonic() on arrival."""

    def __init__(self, stream) -> None:
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._t = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._t.start()

    def _read(self, stream) -> None:
        for line in iter(stream.readline, ""):
            with self._lock:
                self.lines.append((time.monotonic(), line.rstrip("\n")))

    def find(self, pattern: str, start: int = 0) -> tuple[float, str] | None:
        rx = re.compile(pattern)
        with self._lock:
            for t, line in self.lines[start:]:
                if rx.search(line):
                    return t, line
        return None

    def __len__(self) -> int:
        with self._lock:
            return len(self.lines)


def wait(cond, timeout: float, what: str, poll: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def fresh_rows(project: Path, n: int, seed: int):
    import numpy as np
    import pandas as pd

    df = pd.read_csv(project / "data" / "train.csv")
    out = df.sample(n=n, random_state=seed).reset_index(drop=True)
    features = [c for c in out.columns if c != TARGET]
    rng = np.random.default_rng(seed)
    out[features] = (out[features] * rng.normal(1.0, 0.02, size=(n, len(features)))).round(6)
    return out


# ---- one configuration --------------------------------------------------------------------------------

def make_project(root: Path) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    run(mlopsctl("init", "p", "--example", "breast-cancer"), root)
    project = root / "p"
    for args in (["train", "--json"], ["register", "1"], ["promote", MODEL, "1"]):
        run(mlopsctl(*args), project)
    return project


def measure_config(name: str, debounce: float, reload: float, runs: int, idle_s: float) -> dict[str, Any]:
    root = WORK / name
    say(f"[{name}] project (debounce {debounce:g} s, reload interval {reload:g} s) ...")
    project = make_project(root)
    db = project / ".mlops" / "mlops.db"
    staging = root / "staging"
    staging.mkdir()
    incoming = project / "data" / "incoming"
    row = fresh_rows(project, 1, 0).drop(columns=[TARGET]).to_dict("records")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve_log = (root / "serve.err").open("w")
    serve = subprocess.Popen(mlopsctl("serve", f"{MODEL}@production", "--port", str(port)), cwd=project,
                             env=env(MLOPS_SERVE_RELOAD_INTERVAL=str(reload)), stdout=subprocess.DEVNULL,
                             stderr=serve_log, start_new_session=True)
    watch = subprocess.Popen(mlopsctl("watch"), cwd=project, env=env(MLOPS_WATCH_DEBOUNCE_SECONDS=str(debounce)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1)
    log = LogTail(watch.stderr)
    out: dict[str, Any] = {"name": name, "debounce": debounce, "reload": reload, "runs": [], "rejected": 0}
    try:
        def ready() -> bool:
            try:
                return post(base + "/predict", {"records": row})["version"] == 1
            except OSError:
                return False

        wait(ready, 120, "the server", poll=0.2)
        wait(lambda: log.find(r"watching "), 120, "the watcher")
        seed, version = 100, 1
        while len(out["runs"]) < runs + 1:  # + 1: the first file after start
            seed += 1
            if seed > 100 + 3 * (runs + 1):
                raise RuntimeError(f"the gate rejected too many candidates ({out['rejected']})")
            fname = f"batch-{seed}.csv"
            fresh_rows(project, ROWS, seed).to_csv(staging / fname, index=False)
            mark = len(log)
            os.rename(staging / fname, incoming / fname)
            landed = time.monotonic()
            seen = wait(lambda: log.find(rf"file seen: {re.escape(fname)} ", mark), 120, f"{fname} seen")
            validated = wait(lambda: log.find(rf"validated {re.escape(fname)}: ", mark), 120, f"{fname} validated")
            decided = wait(lambda: log.find(rf"(promoted|gate rejected) {MODEL}/\d+", mark), 600, "the gate")
            v = int(re.search(rf"{MODEL}/(\d+)", decided[1]).group(1))
            if "gate rejected" in decided[1]:
                out["rejected"] += 1
                say(f"[{name}] {fname}: gate rejected {MODEL}/{v}; another file")
                continue
            served_at = wait(lambda: post(base + "/predict", {"records": row})["version"] == v and time.monotonic(),
                             60, f"the server to answer with version {v}")
            version = v
            wait(lambda: q(db, "SELECT status FROM watch_jobs WHERE model_version = ?", v) == [("done",)], 30,
                 "the job row")
            [(timings,)] = q(db, "SELECT timings FROM watch_jobs WHERE model_version = ?", v)
            t = json.loads(timings)
            r = {"file": fname, "version": v, "detect": seen[0] - landed, "validate": validated[0] - seen[0],
                 "data": t["data"], "train": t["train"], "register": t["register"],
                 "gate_promote": t["gate_promote"], "reload": served_at - decided[0], "e2e": served_at - landed}
            r["other"] = r["e2e"] - sum(r[s] for s in STAGES)
            r["overhead"] = r["e2e"] - r["train"]
            out["runs"].append(r)
            say(f"[{name}] {fname} -> v{v}: " + ", ".join(f"{k} {r[k]:.3f}" for k in STAGES + ["e2e"]))
            time.sleep(0.5)
        # idle: nothing pending, nothing arriving
        time.sleep(2.0)
        hz = os.sysconf("SC_CLK_TCK")
        c0, t0 = cpu_ticks(watch.pid), time.monotonic()
        time.sleep(idle_s)
        c1, t1 = cpu_ticks(watch.pid), time.monotonic()
        out["idle"] = {"seconds": t1 - t0, "cpu_s": (c1 - c0) / hz, "pct": 100.0 * (c1 - c0) / hz / (t1 - t0)}
        say(f"[{name}] idle watcher: {out['idle']['cpu_s']:.2f} s CPU in {out['idle']['seconds']:.1f} s "
            f"= {out['idle']['pct']:.2f} % of a core")
        out["final_version"] = version
    finally:
        for p in (watch, serve):
            if p.poll() is None:
                p.terminate()
        for p in (watch, serve):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        serve_log.close()
    return out


# ---- report -------------------------------------------------------------------------------------------

def med(rs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rs)


def machine() -> dict[str, Any]:
    cpu = cpu_model(platform.processor() or "?")
    from importlib import metadata

    versions = {}
    for d in ("mlopsctl", "scikit-learn", "onnxruntime", "watchdog", "gunicorn"):
        try:
            versions[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            pass
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}", "versions": versions,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def rng(r: dict, key: str) -> str:
    xs = [x[key] for x in r["runs"][1:]]
    return f"{min(xs):.2f}–{max(xs):.2f}"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def render(results: list[dict], m: dict, args: argparse.Namespace) -> str:
    cmd = ".venv/bin/python benchmarks/bench_watch.py" + (" --quick" if args.quick else "")
    head = ["| stage (median, s) | " + " | ".join(
        f"{r['name']}: debounce {r['debounce']:g} s, reload {r['reload']:g} s" for r in results) + " |",
        "|---|" + "---|" * len(results)]
    labels = {"detect": "detect (landed → watcher took it; debounce included)", "validate": "validate",
              "data": "data (new dataset version)", "train": "train (fit + ONNX export + parity + records)",
              "register": "register", "gate_promote": "gate + promote (both models on the new held-out rows)",
              "reload": "reload (promotion → server answers with it)", "other": "between stages (job rows, logs)",
              "e2e": "**end to end** (landed → new version answers)", "overhead": "end to end − train"}
    body = []
    for key in STAGES + ["other", "e2e", "overhead"]:
        body.append(f"| {labels[key]} | " + " | ".join(f"{med(r['runs'][1:], key):.3f}" for r in results) + " |")
    def within(r: dict) -> str:
        ok = sum(x["overhead"] <= TARGET_OVERHEAD_S for x in r["runs"][1:])
        return f"{ok} of {len(r['runs']) - 1} runs within"

    target = ["| target: end to end ≤ train + 3 s (median of end to end − train) | " + " | ".join(
        f"{med(r['runs'][1:], 'overhead'):.2f} s ({within(r)}): {verdict(med(r['runs'][1:], 'overhead') <= TARGET_OVERHEAD_S)}"
        for r in results) + " |",
        "| target: idle watcher < 1 % of a core | " + " | ".join(
        f"{r['idle']['pct']:.2f} % ({r['idle']['cpu_s']:.2f} s CPU in {r['idle']['seconds']:.0f} s): "
        f"{verdict(r['idle']['pct'] < TARGET_IDLE_PCT)}" for r in results) + " |"]
    first = "; ".join(
        f"{r['name']}: " + ", ".join(f"{k} {r['runs'][0][k]:.2f}" for k in STAGES + ["e2e"])
        + f" (end to end − train {r['runs'][0]['overhead']:.2f}: {verdict(r['runs'][0]['overhead'] <= TARGET_OVERHEAD_S)})"
        for r in results)
    all_runs = "; ".join(f"{r['name']}: " + ", ".join(
        f"{x['e2e']:.2f} (train {x['train']:.2f}, over train {x['overhead']:.2f})" for x in r["runs"][1:])
        for r in results)
    n = len(results[0]["runs"]) - 1
    lines = [
        SECTION,
        "",
        f"Produced by `{cmd}` (from the repo root; it rewrites this section) on {m['date']}: {m['cores']} cores "
        f"({m['cpu']}), Python {m['python']}, {m['os']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f". 1-minute load average before/after: {m['load_before']:.2f} / {m['load_after']:.2f} "
        "(other work shared the machine; CPU-bound stages — train above all — stretch with it).",
        "",
        "Breast-cancer example as shipped (100-tree forest), `mlopsctl serve breast-cancer@production` "
        f"(gunicorn, 2 workers) and `mlopsctl watch` as real processes on 127.0.0.1; each run renames a CSV of "
        f"{ROWS} perturbed rows into data/incoming (append mode, so the training data grows by 120 rows a run). "
        f"Medians of {n} runs per configuration, after one first file per watcher that is reported apart. "
        "Settings: `watch.debounce_seconds` (default 2.0) and `serve.reload_interval` (default 1.0), set through "
        "`MLOPS_WATCH_DEBOUNCE_SECONDS` / `MLOPS_SERVE_RELOAD_INTERVAL`.",
        "",
        *head, *body, *target,
        "",
        "Where the seconds go: detect is the debounce (the file must keep its size and mtime that long; a "
        "watchdog event wakes the idle loop at once, so the clock starts at the event); reload is up to one "
        "`reload_interval` of polling plus loading and warming the new ONNX session. Both scale with their "
        "setting, the rest does not. With the defaults these two alone took "
        f"{rng(results[0], 'detect')} s + {rng(results[0], 'reload')} s of the 3 s budget, so the default "
        "configuration sits at the edge of the target and the verdict flips with machine load (see the per-run "
        "figures); the tuned one (debounce 0.5 s, still well above a local copy's write gaps; reload every 0.2 s, one "
        "indexed query per worker per poll) leaves room. `gate + promote` is measured as one step (the "
        "promotion itself is one short transaction inside it).",
        "",
        f"First file after each watcher started (imports included, s): {first}.",
        f"All measured runs, end to end (s): {all_runs}. Gate rejections (replaced by another file): "
        + ", ".join(f"{r['name']} {r['rejected']}" for r in results) + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 run per configuration, 5 s idle window; prints only")
    ap.add_argument("--runs", type=int, default=5, help="measured runs per configuration (>= 3)")
    ap.add_argument("--idle", type=float, default=30.0, help="idle window in seconds (>= 30)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--from-json", action="store_true",
                    help="measure nothing: re-render the section from the last run's results.json")
    args = ap.parse_args(argv)
    if args.from_json:
        saved = json.loads((WORK / "results.json").read_text())
        text = render(saved["results"], saved["machine"], argparse.Namespace(quick=saved.get("quick", False)))
        print(text)
        if not args.no_write:
            write_section(SECTION, text)
        return 0
    if args.quick:
        args.runs, args.idle, args.no_write = 1, 5.0, True
    WORK.mkdir(parents=True, exist_ok=True)
    m = machine()
    m["load_before"] = os.getloadavg()[0]
    results = [measure_config(name, deb, rel, args.runs, args.idle) for name, deb, rel in CONFIGS]
    m["load_after"] = os.getloadavg()[0]
    (WORK / "results.json").write_text(json.dumps({"machine": m, "results": results, "quick": args.quick}, indent=2))
    text = render(results, m, args)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
        say(f"wrote the '{SECTION}' section of {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
