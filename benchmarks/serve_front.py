"""Serving on granian (issue 21): mlopsctl and the bare Flask + ONNX Runtime app, each on granian and on gunicorn.

    .venv/bin/python benchmarks/serve_front.py             # full: the figures in RESULTS.md (~15 min)
    .venv/bin/python benchmarks/serve_front.py --quick     # short runs, one round: a smoke check
    .venv/bin/python benchmarks/serve_front.py --no-write  # print the section, leave RESULTS.md alone
    .venv/bin/python benchmarks/serve_front.py --threads 1 2 4   # also mlopsctl on granian at other serve.threads

Setup: benchmarks/serve_bench.py's project (``mlopsctl init --example breast-cancer``: a 100-tree random forest,
``bc@production``), with a second run registered as ``bc/2`` for the hot-reload run.

* Four systems, 2 workers each: ``mlopsctl serve bc@production --server granian`` and ``--server gunicorn``
  (the real CLI, every feature at its default: contract checks, the prediction log, metrics), and the bare app
  (``benchmarks/serve_bare_app.py``: the same ONNX file, same feeds, same ORT thread rule, orjson; no checks, no
  log, no metrics, no request ids) on ``granian --interface wsgi --workers 2 --blocking-threads <same as
  mlopsctl>`` and on gunicorn sync workers.
* Each round starts every system once (the order rotates each round), times it to ready (process start to
  the first 200 on /v2/health/ready), warms it up (2 s of wrk), then runs wrk on loopback with 1, 8 and 32
  keep-alive connections (``wrk -t2 --latency``; the body is one row, ``{"records": [row]}``), reads the PSS
  of the whole server (every process of its group, /proc/<pid>/smaps_rollup), times five 10,000-row
  requests, and stops it. Medians over rounds. Any non-2xx answer fails the run.
* How the 8 connections spread over the workers: each worker's share of the server's CPU during the 8-client
  run (from /proc; an even spread is 50 % each).
* ``--uwsgi``: also the bare app on uWSGI (``pip install pyuwsgi``; ``--http`` router with keep-alive, 2
  processes): would another front serve the same app faster?
* ``--peers``: also ``mlflow models serve``, MLServer and BentoML (benchmarks/serve_peers.py: each in its own venv
  under benchmarks/.work/, installed when missing; the same fitted model; one row in each one's own format), in
  the same rounds, measured the same way; ``--peer-rounds N`` runs them in the first N rounds only.
* Hot reload under load: mlopsctl following ``bc@staging`` (polled every 0.2 s), wrk with 8 connections for
  8 s while the alias moves 1 -> 2 -> 1 (at 2 s and 4 s): non-2xx answers and socket errors (both must be 0), and the
  reloads the log shows.

Benchmarks are not tests: the exit status is 0 whether targets are met or not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import threading
import time

import serve_bench as sb
import serve_peers as sp
from _common import cpu_model, write_section

SECTION = "## Serving on granian (issue 21)"
FINDINGS = "### Profiling findings (issue 21)"  # a hand-written subsection kept across re-runs
CLIENTS = (1, 8, 32)
TARGETS = "≥ 0.8× the bare app on granian at 8 and 32 clients, ≥ 1.5× mlopsctl on gunicorn, p99 at 8 ≤ 5 ms, " \
          "PSS ≤ 1.5× the bare app on the same front, ready ≤ 0.8 s, 10,000 rows ≤ 0.07 s, hot reload 0 failed"


class Front(sb.Server):
    """A server of this benchmark: ``kind`` mlopsctl or bare, ``front`` granian or gunicorn."""

    def __init__(self, label: str, kind: str, front: str, p: sb.Project, *, threads: int = 1, ref: str = sb.REF,
                 env: dict[str, str] | None = None):
        super().__init__(sb.Spec(label, kind, worker_class="sync"), p, None, None)
        self.env.update(env or {})
        if kind == "mlopsctl":
            self.cmd = [str(sb.MLOPSCTL), "serve", ref, "--host", sb.HOST, "--port", str(self.port), "--workers", "2",
                        "--server", front, "--threads", str(threads)]
            self.cwd = p.dir
        elif front == "granian":
            self.cmd = [sb.PY, "-m", "granian", "--interface", "wsgi", "--workers", "2", "--blocking-threads",
                        str(threads), "--host", sb.HOST, "--port", str(self.port), "--working-dir", str(sb.BENCH),
                        "--log-level", "warning", "--no-ws", "serve_bare_app:app"]
        elif front == "uwsgi":  # its HTTP router in front of 2 processes: keep-alive like the others
            self.cmd = [str(sb.BIN / "uwsgi"), "--http", f"{sb.HOST}:{self.port}", "--http-keepalive", "--processes",
                        "2", "--master", "--die-on-term", "--disable-logging", "--lazy-apps", "--chdir", str(sb.BENCH),
                        "--wsgi-file", "serve_bare_app.py", "--callable", "app"]
        self.body1, self.body_big = p.body1, p.body_big


def pss_mb(pgid: int) -> float:
    """The PSS of every process of the server in group ``pgid`` (its parent, workers and their children), in MB."""
    total = 0
    for pid in sb.server_stats(pgid):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


def cell(srv: Front | sp.PeerServer, args: argparse.Namespace) -> dict:
    out: dict = {"ready_s": srv.start()}
    try:
        sb.wrk(srv.url, srv.body1, args.warmup)
        time.sleep(sb.SETTLE_S)
        for c in CLIENTS:
            cpu0 = sb.process_cpu_s(srv.proc.pid)
            res = sb.wrk(srv.url, srv.body1, args.duration, threads=min(2, c), conns=c)
            cpu1 = sb.process_cpu_s(srv.proc.pid)
            if res["non2xx"] or res["socket_errors"]:
                raise RuntimeError(f"{srv.spec.label}: {res['non2xx']} non-2xx, {res['socket_errors']} socket errors "
                                   f"at {c} clients; see {srv.log}")
            used = sorted((cpu1[pid] - cpu0.get(pid, 0.0) for pid in cpu1), reverse=True)
            res["worker_shares"] = [round(u / max(1e-9, sum(used)), 2) for u in used[:2]]
            res["cpu_us"] = sum(used) / max(1, res["requests"]) * 1e6
            out[c] = res
        out["pss_mb"] = pss_mb(srv.proc.pid)
        time.sleep(sb.SETTLE_S)
        out["big_s"] = statistics.median(sp.post(srv, srv.body_big)[0] for _ in range(args.big))
        out["load1"] = sb.loadavg()
    finally:
        srv.stop()
    sb.say(f"    {srv.spec.label:<34} " + "  ".join(f"{c}: {out[c]['rps']:7.0f}/s p99 {out[c]['p99_ms']:5.2f}"
                                                   for c in CLIENTS)
           + f"  PSS {out['pss_mb']:.0f} MB  ready {out['ready_s']:.2f} s  10k {out['big_s']:.3f} s"
           f"  8-client shares {out[8]['worker_shares']}  load {out['load1']:.1f}")
    return out


def hot_reload(p: sb.Project, front: str, args: argparse.Namespace) -> dict:
    sb.run([sb.MLOPSCTL, "promote", sb.MODEL, "1", "--alias", "staging", "--force"], cwd=p.dir)
    srv = Front(f"mlopsctl, {front}, reload", "mlopsctl", front, p, ref=f"{sb.MODEL}@staging",
                env={"MLOPS_SERVE_RELOAD_INTERVAL": "0.2"})
    srv.start()

    def moves() -> None:
        for version in ("2", "1"):
            time.sleep(args.reload_s / 4)
            sb.run([sb.MLOPSCTL, "promote", sb.MODEL, version, "--alias", "staging", "--force"], cwd=p.dir)

    mover = threading.Thread(target=moves)
    try:
        mover.start()
        res = sb.wrk(srv.url, p.body1, args.reload_s, conns=8)
        mover.join()
    finally:
        srv.stop()
    log = srv.log.read_bytes()[srv.log_offset:].decode(errors="replace")
    res["reloads"] = log.count("hot reload:")
    sb.say(f"    hot reload on {front}: {res['requests']} requests, {res['non2xx']} non-2xx, "
           f"{res['socket_errors']} socket errors, {res['reloads']} worker reloads logged")
    return res


def project() -> sb.Project:
    p = sb.make_project()
    sb.run([sb.MLOPSCTL, "train", "--json"], cwd=p.dir)
    sb.run([sb.MLOPSCTL, "register", "2", "--name", sb.MODEL], cwd=p.dir)
    return p


def render(args: argparse.Namespace, res: dict[str, list[dict]], reloads: dict[str, dict], labels: dict[str, str],
           loads: list[float], peers: tuple[list[sp.Peer], dict[str, str]] = ([], {})) -> str:
    def med(label: str, key, sub: str | None = None) -> float:
        runs = res[label]
        return statistics.median(r[key][sub] if sub else r[key] for r in runs)

    mg, mu, bg, bu = labels["mg"], labels["mu"], labels["bg"], labels["bu"]
    lines = [SECTION, "",
             f"Run: `{' '.join(['.venv/bin/python', 'benchmarks/serve_front.py', *sys.argv[1:]])}` at "
             f"{sb.commit()}, {dt.date.today()}, {platform.python_version()}, {cpu_model()} ({os.cpu_count()} cores, "
             f"shared); 1-minute load during the run {min(loads):.1f}–{max(loads):.1f}. {args.rounds} round(s) × "
             f"{args.duration:g} s per client count, medians. Model: the breast-cancer random forest (100 trees) "
             "of benchmarks/serve_bench.py; payload: one row, `{\"records\": [row]}` on `/predict` for mlopsctl "
             "and the bare apps (the peers': below). Bare app: benchmarks/serve_bare_app.py (no checks, log, "
             "metrics or request ids). "
             f"2 workers everywhere; granian with {args.granian_threads} Python thread(s) per worker, gunicorn "
             "sync workers. mlopsctl with every feature at its default (checks, prediction log, metrics).", "",
             "| server | req/s at 1 / 8 / 32 clients | p99 ms at 1 / 8 / 32 | CPU µs/req at 8 | PSS after load "
             "| ready | 10,000 rows | 8-client CPU shares of the two workers |",
             "|---|---|---|---|---|---|---|---|"]
    for label in res:
        lines.append(
            f"| {label} | " + " / ".join(f"{med(label, c, 'rps'):,.0f}" for c in CLIENTS)
            + " | " + " / ".join(f"{med(label, c, 'p99_ms'):.2f}" for c in CLIENTS)
            + f" | {med(label, 8, 'cpu_us'):.0f} | {med(label, 'pss_mb'):.0f} MB | {med(label, 'ready_s'):.2f} s"
            f" | {med(label, 'big_s'):.3f} s | {res[label][-1][8]['worker_shares']} |")
    ratio = {c: med(mg, c, "rps") / med(bg, c, "rps") for c in CLIENTS}
    over_gunicorn = {c: med(mg, c, "rps") / med(mu, c, "rps") for c in CLIENTS}
    lines += ["",
              f"Targets ({TARGETS}):", "",
              f"- mlopsctl on granian / bare on granian: {ratio[1]:.2f}× / {ratio[8]:.2f}× / {ratio[32]:.2f}× at "
              f"1 / 8 / 32 clients (bare on gunicorn / bare on granian: "
              + " / ".join(f"{med(bu, c, 'rps') / med(bg, c, 'rps'):.2f}×" for c in CLIENTS) + ").",
              "- mlopsctl on granian / mlopsctl on gunicorn: " + " / ".join(f"{over_gunicorn[c]:.2f}×" for c in CLIENTS)
              + ".",
              f"- p99 at 8 clients, mlopsctl on granian: {med(mg, 8, 'p99_ms'):.2f} ms.",
              f"- PSS: mlopsctl / bare on granian {med(mg, 'pss_mb') / med(bg, 'pss_mb'):.2f}×, on gunicorn "
              f"{med(mu, 'pss_mb') / med(bu, 'pss_mb'):.2f}×.",
              f"- ready: {med(mg, 'ready_s'):.2f} s on granian, {med(mu, 'ready_s'):.2f} s on gunicorn; 10,000 rows: "
              f"{med(mg, 'big_s'):.3f} s / {med(mu, 'big_s'):.3f} s.",
              "- hot reload under load (8 connections, the alias moved twice): " + "; ".join(
                  f"{front}: {r['requests']:,} requests, {r['non2xx']} non-2xx, {r['socket_errors']} socket errors, "
                  f"{r['reloads']} worker reloads logged" for front, r in reloads.items()) + "."]
    if args.peers:
        lines += sp.lines([x for x in peers[0] if x.label in res], peers[1], lambda label: med(label, 8, "rps"), mg,
                          min(args.rounds, args.peer_rounds or args.rounds))
    return "\n".join(lines) + "\n"


def rounds(keys: list[str], makers: dict, labels: dict[str, str], peer_keys: set[str], skipped: dict[str, str],
           args: argparse.Namespace) -> tuple[dict[str, list[dict]], list[float]]:
    """Every system once a round, the order rotating; the peers only in the first ``--peer-rounds``. A peer that
    fails a cell is dropped (with its reason in ``skipped``); any other system's failure ends the run."""
    res: dict[str, list[dict]] = {labels[k]: [] for k in keys}
    loads = []
    for r in range(args.rounds):
        sb.say(f"round {r + 1}/{args.rounds} (load {sb.loadavg():.1f})")
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            if k in peer_keys and (labels[k] not in res or r >= (args.peer_rounds or args.rounds)):
                continue
            try:
                out = cell(makers[k](), args)
            except RuntimeError as e:
                if k not in peer_keys:
                    raise
                skipped[labels[k]] = f"failed in round {r + 1}: {str(e).strip().splitlines()[0]}"
                sb.say(f"    dropping {labels[k]}: {skipped[labels[k]]}")
                del res[labels[k]]
                continue
            loads.append(out["load1"])
            res[labels[k]].append(out)
    return res, loads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--big", type=int, default=5)
    ap.add_argument("--reload-s", type=float, default=8.0)
    ap.add_argument("--granian-threads", type=int, default=1, help="Python threads per granian worker (both apps)")
    ap.add_argument("--threads", type=int, nargs="*", default=[],
                    help="also run mlopsctl on granian with these serve.threads values")
    ap.add_argument("--only", nargs="*", default=None,
                    help="labels' short names to run: mg mu bg bu (mlflow mlserver bentoml with --peers)")
    ap.add_argument("--uwsgi", action="store_true", help="also the bare app on uWSGI (pip install pyuwsgi)")
    ap.add_argument("--peers", action="store_true", help="also MLflow, MLServer and BentoML (serve_peers.py; each "
                    "in its own venv under benchmarks/.work/, installed when missing)")
    ap.add_argument("--peer-rounds", type=int, default=None, help="run the peers in the first N rounds only")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.big, args.reload_s = 1, 3.0, 3, 6.0
    sb.precompile([sb.REPO / "src", sb.BENCH, sb.site_packages(sb.BIN)])
    sb.say("project: init, train twice, register bc/1 and bc/2")
    p = project()
    t = args.granian_threads
    labels = {"mg": "mlopsctl, granian", "mu": "mlopsctl, gunicorn sync", "bg": "bare app, granian",
              "bu": "bare app, gunicorn sync"}
    systems = {"mg": ("mlopsctl", "granian", t), "mu": ("mlopsctl", "gunicorn", 1), "bg": ("bare", "granian", t),
               "bu": ("bare", "gunicorn", 1)}
    for n in args.threads:
        labels[f"mg{n}"] = f"mlopsctl, granian, {n} threads"
        systems[f"mg{n}"] = ("mlopsctl", "granian", n)
    if args.uwsgi:
        labels["bw"] = "bare app, uWSGI (HTTP router, keep-alive)"
        systems["bw"] = ("bare", "uwsgi", 1)
    peers: tuple[list[sp.Peer], dict[str, str]] = ([], {})
    if args.peers:
        sb.say("peers: install (when missing), start once, compare their answer for the row with mlopsctl's")
        peers = sp.prepare(p, Front(labels["mg"], "mlopsctl", "granian", p, threads=t))
    makers = {k: (lambda k=k: Front(labels[k], systems[k][0], systems[k][1], p, threads=systems[k][2]))
              for k in systems}
    for peer in peers[0]:
        labels[peer.key] = peer.label
        makers[peer.key] = lambda peer=peer: sp.PeerServer(peer, p)
    keys = [k for k in makers if args.only is None or k in args.only]
    res, loads = rounds(keys, makers, labels, {peer.key for peer in peers[0]}, peers[1], args)
    reloads = {front: hot_reload(p, front, args) for front in ("granian", "gunicorn")}
    if not {"mg", "mu", "bg", "bu"} <= set(keys):
        return 0
    text = render(args, res, reloads, labels, loads, peers)
    print(text)
    if not (args.no_write or args.quick):
        write_section(SECTION, text, keep=FINDINGS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
