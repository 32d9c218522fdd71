"""The store on PostgreSQL against SQLite (issue 20): registry operations, and serving with the prediction log.

    .venv/bin/python benchmarks/bench_postgres.py              # the figures in RESULTS.md (~6 min)
    .venv/bin/python benchmarks/bench_postgres.py --quick      # fewer calls, shorter loads: a smoke check
    .venv/bin/python benchmarks/bench_postgres.py --no-write   # print only; leave RESULTS.md alone
    .venv/bin/python benchmarks/bench_postgres.py --postgres postgresql+psycopg://postgres@127.0.0.1:55432/postgres

PostgreSQL: the server named by ``--postgres`` (a database whose user may create databases), else a
throwaway PostgreSQL 15 server this script starts (``/usr/lib/postgresql/15/bin``, as `.ci/run` does: run
as the ``postgres`` user when root, fsync off, loopback TCP) and stops. Every store below is a fresh SQLite
file or a fresh PostgreSQL database migrated with ``mlopsctl db upgrade``; both backends run in the same
process / on the same machine, alternating, and every figure is a median.

* Registry (in-process library calls, the store work only; ``bench_registry.py`` explains each): a project
  from the breast-cancer example (10-tree forest) per backend, one run trained and cloned into fresh
  FINISHED runs; ``register`` (``services.models.register``), ``promote`` (the holder read, then the locked write
  transaction with the gate report, the alias move and its history row, the event; no scoring), ``resolve``
  (``registry.resolve`` of ``bench@production`` in a read transaction) and ``load by alias``
  (``services.models.load_model``: resolve, read and verify the ONNX file, parse the contract). ``ROUNDS`` rounds
  alternate the backends, ``N`` calls each after a warm-up; the table gives the median of every call, and
  the range of the rounds' medians.
* Serving: ``mlopsctl serve bc@production`` (the real CLI, default configuration: 2 sync gunicorn workers,
  the 100-tree example forest) with its store, hence its prediction log, on SQLite or PostgreSQL
  (``MLOPS_STORE_URL``), plus the log switched off as the reference; ``wrk -t2 -c8`` single-row
  ``POST /predict`` (``benchmarks/wrk_post.lua``; apt-get install wrk), a warm-up run then a measured one
  per server start, variants alternating over the rounds. Server CPU per request is the server's process
  group's CPU (from /proc) over the measured run; for the PostgreSQL variant the database server's own CPU
  (the postmaster and its backends, when this script started the server) is given beside it. After each
  stop (the workers flush their logs) the logged requests are counted in the store.

Benchmarks are not tests: the exit status is 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from _common import cpu_model, proc_stats, stop_group, write_section
from bench_registry import timeit
from serve_bench import free_port, loadavg, process_cpu_s, wrk

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work" / "postgres"
SECTION = "## PostgreSQL store (issue 20)"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
BIN = Path(sys.executable).parent
OPS = ("register", "promote (store work)", "resolve", "load by alias")


def say(msg: str) -> None:
    print(f"[bench_postgres] {msg}", file=sys.stderr, flush=True)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MLOPS_") and k not in ("PYTHONDONTWRITEBYTECODE", "PROMETHEUS_MULTIPROC_DIR")}
    env.update(extra)
    return env


# ---- the PostgreSQL server ------------------------------------------------------------------------------

class Postgres:
    """Fresh databases on a server: a given one, or a throwaway server started here (``pids`` then lists
    its processes, for CPU accounting)."""

    def __init__(self, admin_url: str | None):
        self.dir: Path | None = None
        self.postmaster: int | None = None
        if admin_url is None:
            admin_url = self._start()
        self.admin_url = admin_url

    def _as_postgres(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _start(self) -> str:
        if not (PG_BIN / "initdb").exists():
            raise SystemExit(f"no PostgreSQL 15 in {PG_BIN}: apt-get install postgresql, or pass --postgres URL")
        self.dir = Path(tempfile.mkdtemp(prefix="mlopsctl-bench-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        port = free_port()
        subprocess.run([*self._as_postgres(), PG_BIN / "initdb", "-D", self.dir / "data", "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        subprocess.run([*self._as_postgres(), PG_BIN / "pg_ctl", "-D", self.dir / "data", "-l", self.dir / "log",
                        "-w", "start", "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {self.dir} -c fsync=off"],
                       check=True, capture_output=True)
        self.postmaster = int((self.dir / "data" / "postmaster.pid").read_text().split()[0])
        say(f"started PostgreSQL 15 on 127.0.0.1:{port} ({self.dir})")
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def stop(self) -> None:
        if self.dir is not None:
            subprocess.run([*self._as_postgres(), PG_BIN / "pg_ctl", "-D", self.dir / "data", "-m", "fast", "-w",
                            "stop"], capture_output=True)
            shutil.rmtree(self.dir, ignore_errors=True)

    def create(self) -> str:
        import psycopg
        from sqlalchemy.engine import make_url

        name = f"bench_{uuid.uuid4().hex[:12]}"
        admin = make_url(self.admin_url)
        with psycopg.connect(admin.set(drivername="postgresql").render_as_string(hide_password=False),
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return admin.set(database=name).render_as_string(hide_password=False)

    def cpu_s(self) -> float | None:
        """CPU seconds of the server: the postmaster and every process it forked (None: not ours)."""
        if self.postmaster is None:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid, fields in proc_stats().items():
            if pid == self.postmaster or int(fields[1]) == self.postmaster:  # fields: state ppid ...
                total += (int(fields[11]) + int(fields[12])) / tick
        return total


# ---- projects -------------------------------------------------------------------------------------------

def cli(project: Path, url: str, *args: Any) -> str:
    p = subprocess.run([str(BIN / "mlopsctl"), *map(str, args)], cwd=project, env=clean_env(MLOPS_STORE_URL=url),
                       capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"mlopsctl {' '.join(map(str, args))} exited {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def project(name: str, url: str, trees: int | None) -> Path:
    """`init --example breast-cancer` (``trees`` overrides the forest's size), `db upgrade`, one run."""
    root = WORK / name
    shutil.rmtree(root, ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    cli(WORK, url, "init", root, "--example", "breast-cancer")
    if trees is not None:
        cfg = root / ".mlops.toml"
        cfg.write_text(re.sub(r"(?m)^params = .*$", f"params = {{ n_estimators = {trees} }}", cfg.read_text()))
    cli(root, url, "db", "upgrade")
    cli(root, url, "train")
    return root


# ---- registry operations ----------------------------------------------------------------------------------

class RegistryBench:
    """One backend's project, with run clones to register and the calls to time."""

    def __init__(self, backend: str, url: str, clones: int):
        from mlopsctl import registry, tracking
        from mlopsctl.common import jsonable
        from mlopsctl.project import open_project
        from mlopsctl.services import gate, models, runs
        from mlopsctl.config import load_settings

        self.backend = backend
        root = project(f"registry-{backend}", url, trees=10)
        self.settings = load_settings({}, {"MLOPS_STORE_URL": url}, root)
        self.store = open_project(self.settings).store
        base = runs.show_run(self.settings, "1")
        arts = {a["name"]: a for a in base["artifacts"]}
        files = runs.ModelFiles(onnx=arts["model.onnx"]["sha256"], contract=arts["contract.json"]["sha256"],
                                    joblib=arts["model.joblib"]["sha256"],
                                    sizes={k: arts[f]["size"] for k, f in (("onnx", "model.onnx"),
                                                                           ("contract", "contract.json"),
                                                                           ("joblib", "model.joblib"))})
        held = arts["heldout.parquet"]
        with self.store.session() as s:
            src = tracking.get_run(s, "1")
            parity, dv_id = dict(src.parity), src.dataset_version_id
        self.runs = []
        for i in range(clones):
            with self.store.session() as s:
                run = tracking.create_run(s, "bench", f"clone-{i}", dataset_version_id=dv_id, task="classification",
                                          model_class="sklearn.ensemble.RandomForestClassifier", seed=42)
                runs.record_model(s, run.id, files, parity,
                                      {"heldout.parquet": (held["sha256"], held["size"], held["media_type"])})
                tracking.finish_run(s, run.id)
                self.runs.append(run.id)
        models.register(self.settings, "1", "bench")
        models.register(self.settings, str(self.runs.pop()), "bench")
        models.promote(self.settings, "bench", 1, alias="production", force=True)
        cand, hold = models.load_model(self.settings, "bench/2"), models.load_model(self.settings, "bench/1")
        self.gate = jsonable(gate.evaluate_gate(self.settings, cand, hold, alias="production",
                                                              min_delta=0.0))
        self.gate["decision"] = "forced"
        self.ref = registry.parse_ref("bench@production")
        self.next_run = 0

    def call(self, op: str) -> Callable[[int], Any]:
        from mlopsctl import registry
        from mlopsctl.services import models

        store = self.store

        def register(_i: int) -> None:
            models.register(self.settings, str(self.runs[self.next_run]), "bench")
            self.next_run += 1

        def promote(i: int) -> None:
            version = 1 + i % 2  # every call moves the alias
            with store.session() as s:
                registry.alias_holder(s, registry.get_model(s, "bench"), "production")
            with store.session() as s:
                model = registry.get_model(s, "bench", lock=True)
                registry.alias_holder(s, model, "production")
                target = registry.get_version(s, model, version)
                target.gate = self.gate
                registry.move_alias(s, model, "production", target, action="promote", reason="bench", forced=True,
                                    gate=self.gate)
                registry.add_event(s, "promoted", f"bench/{version} -> @production (forced): bench", model="bench",
                                   version=version, payload=self.gate)

        def resolve(_i: int) -> None:
            with store.read() as s:
                registry.resolve(s, self.ref).version

        def load(_i: int) -> None:
            models.load_model(self.settings, "bench@production")

        return {"register": register, "promote (store work)": promote, "resolve": resolve, "load by alias": load}[op]


def bench_registry(pg: Postgres, rounds: int, n: int, warmup: int) -> dict[str, dict[str, Any]]:
    benches = {"sqlite": RegistryBench("sqlite", f"sqlite:///{WORK / 'registry-sqlite.db'}", rounds * (n + warmup) + 1),
               "postgresql": RegistryBench("postgresql", pg.create(), rounds * (n + warmup) + 1)}
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in range(rounds):
        order = list(benches) if r % 2 == 0 else list(benches)[::-1]
        for op in OPS:
            for backend in order:
                res = timeit(benches[backend].call(op), n, warmup)
                samples.setdefault((op, backend), []).append(res)
                say(f"  round {r + 1}/{rounds} {op:<22} {backend:<10} {res['median']:.2f} ms")
    out: dict[str, dict[str, Any]] = {}
    for (op, backend), runs in samples.items():
        out.setdefault(op, {})[backend] = {
            "median": statistics.median(x["median"] for x in runs),
            "cpu_median": statistics.median(x["cpu_median"] for x in runs),
            "rounds": (min(x["median"] for x in runs), max(x["median"] for x in runs)),
            "n": sum(x["n"] for x in runs)}
    for b in benches.values():
        b.store.dispose()
    return out


# ---- serving ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def server(project_dir: Path, env: dict[str, str]) -> Iterator[tuple[int, subprocess.Popen]]:
    import http.client

    port = free_port()
    log = open(WORK / f"serve-{port}.log", "wb")
    proc = subprocess.Popen([str(BIN / "mlopsctl"), "serve", "bc@production", "--port", str(port)], cwd=project_dir,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlopsctl serve exited {proc.returncode}; see {log.name}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlopsctl serve not ready after 90 s; see {log.name}")
            time.sleep(0.05)
        yield port, proc
    finally:
        stop_group(proc)


def logged_requests(url: str) -> int:
    from sqlalchemy import text

    from mlopsctl.predlog_format import index_pending
    from mlopsctl.store.db import open_store

    store = open_store(url)
    index_pending(store.engine)
    with store.read() as s:
        n = s.execute(text("SELECT count(*) FROM predictions")).scalar()
    store.dispose()
    return n


def bench_serving(pg: Postgres, rounds: int, warmup_s: float, duration_s: float) -> dict[str, Any]:
    body = WORK / "body1.json"
    urls = {"sqlite": f"sqlite:///{WORK / 'serve-sqlite.db'}", "postgresql": pg.create()}
    projects = {}
    for backend, url in urls.items():
        projects[backend] = project(f"serve-{backend}", url, trees=None)
        cli(projects[backend], url, "register", 1, "--name", "bc")
        cli(projects[backend], url, "promote", "bc", 1)
    import csv

    with open(projects["sqlite"] / "data" / "train.csv", newline="") as f:
        row = next(csv.DictReader(f))
    body.write_text(json.dumps({"records": [{k: float(v) for k, v in row.items() if k != "diagnosis"}]}))

    variants = [("log on SQLite", "sqlite", {}), ("log on PostgreSQL", "postgresql", {}),
                ("log off (PostgreSQL store)", "postgresql", {"MLOPS_SERVE_LOG_PREDICTIONS": "false"})]
    out: dict[str, list[dict[str, Any]]] = {v[0]: [] for v in variants}
    for r in range(rounds):
        k = r % len(variants)
        for label, backend, extra in variants[k:] + variants[:k]:
            before = logged_requests(urls[backend])
            with server(projects[backend], clean_env(MLOPS_STORE_URL=urls[backend], **extra)) as (port, proc):
                url = f"http://127.0.0.1:{port}/predict"
                wrk(url, body, warmup_s)
                time.sleep(1.5)  # the warm-up's log flush ends before measuring
                la = loadavg()
                cpu0, pg0 = process_cpu_s(proc.pid), pg.cpu_s()
                res = wrk(url, body, duration_s)
                cpu1, pg1 = process_cpu_s(proc.pid), pg.cpu_s()
            served = res["requests"]
            res["cpu_us"] = sum(cpu1[p] - cpu0.get(p, 0.0) for p in cpu1) / max(1, served) * 1e6
            res["pg_cpu_us"] = ((pg1 - pg0) / max(1, served) * 1e6
                                if backend == "postgresql" and pg0 is not None and pg1 is not None else None)
            res["load1"] = la
            res["logged"] = logged_requests(urls[backend]) - before  # warm-up and measured run, after the stop
            if res["non2xx"]:
                raise RuntimeError(f"{label}: {res['non2xx']} non-2xx answers")
            out[label].append(res)
            say(f"  round {r + 1}/{rounds} {label:<28} {res['rps']:8.1f} req/s  p99 {res['p99_ms']:6.2f} ms  "
                f"CPU {res['cpu_us']:5.0f} µs/req" + (f" + PostgreSQL {res['pg_cpu_us']:4.0f}" if res["pg_cpu_us"]
                                                      is not None else "") + f"  logged {res['logged']}  (load {la:.1f})")
    return out


# ---- report -------------------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    import importlib.metadata as m

    out = {}
    for d in ("mlopsctl", "sqlalchemy", "psycopg", "psycopg-binary", "gunicorn", "onnxruntime"):
        with contextlib.suppress(m.PackageNotFoundError):
            out[d] = m.version(d)
    return out


def pg_version(pg: Postgres) -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    with psycopg.connect(make_url(pg.admin_url).set(drivername="postgresql").render_as_string(hide_password=False)) as c:
        return c.execute("SHOW server_version").fetchone()[0]


def render(args: argparse.Namespace, reg: dict, serve: dict, meta: dict) -> str:
    med = statistics.median
    lines = [SECTION, "",
             f"Produced by `{args.command}` (from the repo root; it rewrites this section) on {meta['date']}: "
             f"{os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, PostgreSQL "
             f"{meta['pg']} ({meta['pg_where']}); " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
             + f". 1-minute load average before/after: {meta['load'][0]:.2f} / {meta['load'][1]:.2f}. "
             "Both backends in the same run, alternating; SQLite in WAL mode on local disk, PostgreSQL on "
             "loopback TCP with fsync off (as in CI: commits do not wait for the disk; a production server "
             "with fsync on adds its disk's flush time to every write transaction).",
             "", "### Registry operations (in-process library calls, ms per call)", "",
             f"{args.rounds} rounds × {args.n} calls per operation and backend (after {args.warmup} warm-up calls "
             "each); median of all calls' round medians, the rounds' range in brackets; CPU: this thread's CPU "
             "time per call (the database server's work on PostgreSQL is not in it).", "",
             "| operation | SQLite | PostgreSQL | PostgreSQL / SQLite | CPU SQLite / PostgreSQL |",
             "|---|---|---|---|---|"]
    for op in OPS:
        s, p = reg[op]["sqlite"], reg[op]["postgresql"]
        lines.append(f"| {op} | {s['median']:.2f} ({s['rounds'][0]:.2f}-{s['rounds'][1]:.2f}) | "
                     f"{p['median']:.2f} ({p['rounds'][0]:.2f}-{p['rounds'][1]:.2f}) | "
                     f"{p['median'] / s['median']:.2f}× | {s['cpu_median']:.2f} / {p['cpu_median']:.2f} |")
    lines += ["", "What each operation is: see the script's docstring (the same calls as `bench_registry.py`, "
              "`promote` without the gate's scoring).", "",
              "### Serving with the prediction log (`mlopsctl serve`, 2 sync workers, wrk -t2 -c8, one-row /predict)",
              "",
              f"{args.rounds} rounds, variants alternating; each a fresh server, {args.warmup_s:g} s warm-up then "
              f"{args.duration_s:g} s measured; medians. Logged: requests found in the store's log after the "
              "stop (warm-up included) against requests wrk completed (measured run only).", "",
              "| variant | req/s | p50 / p99 ms | server CPU µs/req | PostgreSQL server CPU µs/req | logged / served |",
              "|---|---|---|---|---|---|"]
    for label, runs in serve.items():
        pg_cpu = [r["pg_cpu_us"] for r in runs if r["pg_cpu_us"] is not None]
        lines.append(f"| {label} | {med(r['rps'] for r in runs):,.0f} | {med(r['p50_ms'] for r in runs):.2f} / "
                     f"{med(r['p99_ms'] for r in runs):.2f} | {min(r['cpu_us'] for r in runs):.0f} | "
                     + (f"{min(pg_cpu):.0f}" if pg_cpu else "-")
                     + f" | {sum(r['logged'] for r in runs):,} / {sum(r['requests'] for r in runs):,} |")
    rps = {label: med(r["rps"] for r in runs) for label, runs in serve.items()}
    lines += ["", f"Throughput with the log on PostgreSQL: {rps['log on PostgreSQL'] / rps['log on SQLite']:.2f}× "
              f"the log on SQLite, {rps['log on PostgreSQL'] / rps['log off (PostgreSQL store)']:.2f}× no log. "
              "Server CPU is the lowest of the rounds (other work only ever adds to it)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--postgres", help="admin SQLAlchemy URL of a server to use (default: start a throwaway one)")
    ap.add_argument("--quick", action="store_true", help="fewer calls and shorter loads (a smoke check)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    args.command = ".venv/bin/python benchmarks/bench_postgres.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    args.rounds, args.n, args.warmup = (2, 20, 3) if args.quick else (3, 100, 10)
    args.warmup_s, args.duration_s = (1.0, 3.0) if args.quick else (2.0, 10.0)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for the serving part: apt-get install -y wrk")
    for name in [k for k in os.environ if k.startswith("MLOPS_")]:
        del os.environ[name]
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    load_before = loadavg()
    pg = Postgres(args.postgres)
    try:
        meta = {"pg": pg_version(pg), "pg_where": "given server" if args.postgres else "started by the script",
                "versions": versions(), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
        say("registry operations ...")
        reg = bench_registry(pg, args.rounds, args.n, args.warmup)
        say("serving ...")
        serve = bench_serving(pg, args.rounds, args.warmup_s, args.duration_s)
    finally:
        from mlopsctl.store.db import close_all

        close_all()
        pg.stop()
    meta["load"] = (load_before, loadavg())
    text = render(args, reg, serve, meta)
    print(text)
    print(json.dumps({"registry": reg, "serving": serve}, indent=1, default=str), file=sys.stderr)
    if not args.no_write:
        write_section(SECTION, text)
        say(f"wrote the '{SECTION}' section of {(REPO / 'benchmarks' / 'RESULTS.md').relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
