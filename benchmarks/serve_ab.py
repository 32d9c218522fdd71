"""Serving A/B for the re-plan (issues 14 and 15): mlopsctl at a base commit vs mlopsctl now, with the bare app.

    .venv/bin/python benchmarks/serve_ab.py                       # base e5b2898 (before issues 14 and 15)
    .venv/bin/python benchmarks/serve_ab.py --base REV --rounds 7 --seconds 10
    .venv/bin/python benchmarks/serve_ab.py --no-write            # print, leave RESULTS.md alone

Both trees serve the same model on the same front (gunicorn, 2 sync workers, every feature on: contract checks,
prediction log, metrics), each from a project its own CLI made (the base cannot open a store the newer code
migrated): ``mlopsctl init --example breast-cancer``, ``train`` (the 100-tree forest, seed 42: the same trees),
``register``, ``promote``. The base tree is a ``git worktree`` of REV under benchmarks/.work/, imported through
PYTHONPATH by the same interpreter and packages. The bare Flask + ONNX Runtime app (benchmarks/serve_bare_app.py)
runs beside them on the same ONNX file.

Load: ``wrk -t2 -c8 -d<seconds>s --latency`` on loopback, single-row ``POST /predict`` (benchmarks/wrk_post.lua),
after a 2 s warm-up on a freshly started server and a pause for the prediction-log flush. Every round runs the
three servers in a rotating order; the figures are medians over rounds, with the server's CPU per request (its
process group, from /proc) beside req/s. Targets: throughput and p99 at 8 clients within 5 % of the base (issue
15), and of the recorded figures against the bare app (issue 14: their ratio to the bare app's, same run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import serve_bench as sb
from _common import cpu_model, write_section

SECTION = "## Re-plan A/B (issues 14, 15)"
BASE = "e5b2898"
WORK = sb.BENCH / ".work" / "serve-ab"


def base_tree(rev: str) -> Path:
    tree = WORK / f"tree-{rev}"
    if not (tree / "src" / "mlopsctl").is_dir():
        shutil.rmtree(tree, ignore_errors=True)
        subprocess.run(["git", "-C", str(sb.REPO), "worktree", "add", "--detach", str(tree), rev], check=True,
                       capture_output=True)
    return tree


def cli(tree: Path | None, *args: str, cwd: Path | None = None) -> str:
    env = sb.base_env()
    if tree is not None:
        env["PYTHONPATH"] = str(tree / "src")
    return sb.run([sb.PY, "-m", "mlopsctl", *args], cwd=cwd, env=env)


def project(tree: Path | None, name: str) -> Path:
    root = WORK / name
    shutil.rmtree(root, ignore_errors=True)
    cli(tree, "init", str(root), "--example", "breast-cancer")
    cli(tree, "train", "--json", cwd=root)
    cli(tree, "register", "1", "--name", sb.MODEL, cwd=root)
    cli(tree, "promote", sb.MODEL, "1", cwd=root)
    return root


class Mlopsctl(sb.Server):
    """`mlopsctl serve` from a given tree (None: this checkout), 2 gunicorn sync workers."""

    def __init__(self, label: str, tree: Path | None, root: Path):
        spec = sb.Spec(label, "mlopsctl", worker_class="sync", workers=2)
        super().__init__(spec, sb.Project(root, *[None] * 9), None, None)  # type: ignore[arg-type]
        self.cmd = [sb.PY, "-m", "mlopsctl", "serve", sb.REF, "--host", sb.HOST, "--port", str(self.port),
                    "--workers", "2"]
        self.env["MLOPS_SERVE_THREADS"] = "1"
        if tree is not None:
            self.env["PYTHONPATH"] = str(tree / "src")
        self.cwd = root


def measure(server: sb.Server, body: Path, seconds: float) -> dict:
    server.start()
    try:
        sb.wrk(server.url, body, 2.0)  # warm-up
        time.sleep(sb.SETTLE_S)
        before = sum(sb.process_cpu_s(server.proc.pid).values())
        res = sb.wrk(server.url, body, seconds)
        res["cpu_us"] = (sum(sb.process_cpu_s(server.proc.pid).values()) - before) / max(res["requests"], 1) * 1e6
        if res["non2xx"] or res["socket_errors"]:
            raise RuntimeError(f"{server.spec.label}: {res['non2xx']} non-2xx, {res['socket_errors']} socket errors")
        return res
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=BASE, help=f"the commit to compare with (default {BASE})")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    sb.WORK.mkdir(parents=True, exist_ok=True)
    load0 = sb.loadavg()
    tree = base_tree(args.base)
    sb.say(f"projects (base {args.base} and this checkout) ...")
    old_root, new_root = project(tree, "base"), project(None, "head")
    p = sb.make_project()  # the bare app's model and the request body
    servers = {
        f"mlopsctl @ {args.base}": lambda: Mlopsctl(f"mlopsctl @ {args.base}", tree, old_root),
        "mlopsctl now": lambda: Mlopsctl("mlopsctl now", None, new_root),
        "bare Flask + ORT": lambda: sb.Server(sb.Spec("bare", "bare", worker_class="sync", workers=2), p, None, None),
    }
    results: dict[str, list[dict]] = {k: [] for k in servers}
    names = list(servers)
    for r in range(args.rounds):
        order = names[r % 3:] + names[:r % 3]
        for name in order:
            res = measure(servers[name](), p.body1, args.seconds)
            results[name].append(res)
            sb.say(f"round {r + 1} {name}: {res['rps']:.0f} req/s, p99 {res['p99_ms']:.2f} ms, "
                   f"{res['cpu_us']:.0f} µs CPU/request (load {sb.loadavg():.2f})")
    med = {k: {m: sb.median([x[m] for x in v]) for m in ("rps", "p99_ms", "p50_ms", "cpu_us")}
           for k, v in results.items()}
    base, now, bare = (med[n] for n in names)
    lines = [SECTION, "",
             f"`.venv/bin/python benchmarks/serve_ab.py --base {args.base} --rounds {args.rounds} --seconds "
             f"{args.seconds:g}` on {dt.date.today()}, {cpu_model()}, Python {sys.version.split()[0]}; 1-minute "
             f"load {load0:.2f} at the start, {sb.loadavg():.2f} at the end. Single-row `POST /predict`, wrk 8 "
             f"connections, gunicorn 2 sync workers for all three; medians of {args.rounds} rounds (rotating order).",
             "", "| server | req/s | p50 ms | p99 ms | server CPU µs/request |", "|---|---|---|---|---|"]
    for k in names:
        m = med[k]
        lines.append(f"| {k} | {m['rps']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['cpu_us']:.0f} |")
    lines += ["", f"- now / base: throughput **{now['rps'] / base['rps']:.3f}×**, p99 **{now['p99_ms'] / base['p99_ms']:.3f}×**,"
              f" CPU per request {now['cpu_us'] / base['cpu_us']:.3f}× (target: throughput ≥ 0.95×, p99 ≤ 1.05×).",
              f"- against the bare app in this run: base {base['rps'] / bare['rps']:.3f}×, now "
              f"{now['rps'] / bare['rps']:.3f}× the bare app's throughput; p99 base {base['p99_ms']:.2f} ms, now "
              f"{now['p99_ms']:.2f} ms, bare {bare['p99_ms']:.2f} ms.",
              "", "Every round, by server (req/s, p99 ms):", ""]
    for k in names:
        lines.append(f"- {k}: " + ", ".join(f"{x['rps']:.0f} / {x['p99_ms']:.2f}" for x in results[k]))
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps(med, indent=1), file=sys.stderr)
    if not args.no_write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
