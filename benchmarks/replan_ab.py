"""Same-run A/B of the registry, monitoring and watch benchmarks: a base commit against the working tree (issue 15:
"drift/report/registry/watch figures no worse" than before the re-plan).

    .venv/bin/python benchmarks/replan_ab.py --base e5b2898 --rounds 2            # writes RESULTS.md's section
    .venv/bin/python benchmarks/replan_ab.py --base e5b2898 --rounds 1 --no-write --only registry

Each benchmark script runs as it is in its own tree (the base commit's copy in a git worktree under
``benchmarks/.work/replan-ab/``, this tree's own), with that tree's ``src`` first on ``PYTHONPATH`` and this
venv's Python, in alternating order (round 1: base then head, round 2: head then base, ...), so drifting load on
a shared machine falls on both sides. Flags: registry ``--no-write --no-mlflow``; monitoring ``--no-write
--quick`` (3 timed runs; ``--reuse`` after its first set-up in that tree); watch ``--no-write --runs 3 --idle
30``. The figures are read from what each script prints (registry: its JSON on stderr; monitoring: its table;
watch: its ``results.json``). Reported: the median over rounds of each side's figure and head / base.
Benchmarks are not tests: the exit status is 0 whatever the ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from _common import cpu_model, write_section

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work" / "replan-ab"
SECTION = "## Re-plan A/B: registry, monitoring, watch (issue 15)"
KEEP = "### Controlled re-runs"  # a hand-written subsection, kept when the section is rewritten

FLAGS = {
    "registry": ["--no-write", "--no-mlflow"],
    "monitor": ["--no-write", "--quick"],
    "watch": ["--no-write", "--runs", "3", "--idle", "30"],
}
MONITOR_ROWS = {  # row label prefix in bench_monitor's target table -> our name
    "drift, 50 columns": "drift, 1 row per request",
    "drift, the same rows": "drift, 100 rows per request",
    "report generation (": "report, 1 row per request",
    "report generation, requests": "report, 100 rows per request",
}


def say(msg: str) -> None:
    print(msg, flush=True)


def base_tree(rev: str) -> Path:
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    tree = WORK / f"tree-{sha}"
    if not tree.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=REPO, check=True,
                       capture_output=True)
    return tree


def run_bench(tree: Path, name: str, log: Path) -> tuple[str, str]:
    flags = list(FLAGS[name])
    if name == "monitor" and (tree / "benchmarks/.work/monitor").exists():
        flags.append("--reuse")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    env["PYTHONPATH"] = str(tree / "src")
    p = subprocess.run([sys.executable, f"benchmarks/bench_{name}.py", *flags], cwd=tree, env=env,
                       capture_output=True, text=True)
    log.write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    if p.returncode != 0:
        raise SystemExit(f"bench_{name}.py failed in {tree} (exit {p.returncode}); see {log}")
    return p.stdout, p.stderr


def figures(tree: Path, name: str, out: str, err: str) -> dict[str, float]:
    """ms for the registry, s for the rest; CPU seconds where the script reports them (monitoring)."""
    if name == "registry":
        blob = json.loads(err[err.rindex('{\n "mlopsctl"'):])["mlopsctl"]
        return {f"{k} (ms)": v["median"] for k, v in blob.items() if isinstance(v, dict) and "median" in v}
    if name == "monitor":
        got = {}
        for line in out.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            for prefix, label in MONITOR_ROWS.items():
                if len(cells) >= 3 and cells[0].startswith(prefix):
                    m = re.match(r"([\d.]+) \(([\d.]+)\) s", cells[2])
                    if m:
                        got[f"{label}, wall (s)"] = float(m.group(1))
                        got[f"{label}, CPU (s)"] = float(m.group(2))
        return got
    saved = json.loads((tree / "benchmarks/.work/watch/results.json").read_text())
    got = {}
    for res in saved["results"]:
        runs = (res.get("runs") or [])[1:]  # the first file after the watcher starts pays the imports
        if runs:
            got[f"watch {res['name']}: end to end - train (s)"] = statistics.median(r["overhead"] for r in runs)
            got[f"watch {res['name']}: train (s)"] = statistics.median(r["train"] for r in runs)
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the commit to compare with (e.g. the one before the re-plan)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default="registry,monitor,watch", help="comma-separated: registry, monitor, watch")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    trees = {"base": base_tree(args.base), "head": REPO}
    load0 = os.getloadavg()[0]
    got: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
    for r in range(args.rounds):
        order = ("base", "head") if r % 2 == 0 else ("head", "base")
        for name in names:
            for side in order:
                say(f"round {r + 1}: {name} on {side} ...")
                out, err = run_bench(trees[side], name, WORK / f"{name}-{side}-{r + 1}.log")
                for k, v in figures(trees[side], name, out, err).items():
                    got[side].setdefault(k, []).append(v)
    text = render(args, got, (load0, os.getloadavg()[0]))
    print(text)
    if not args.no_write:
        write_section(SECTION, text, keep=KEEP)
        say(f"wrote the '{SECTION}' section of benchmarks/RESULTS.md")
    return 0


def render(args: argparse.Namespace, got: dict, load: tuple[float, float]) -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    cmd = ".venv/bin/python benchmarks/replan_ab.py" + "".join(f" {a}" for a in sys.argv[1:] if a != "--no-write")
    lines = [
        SECTION,
        "",
        f"`{cmd}` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_model()}, {os.cpu_count()} cores; "
        f"base {args.base}, head {head} (+ the working tree). 1-minute load {load[0]:.2f} at the start, {load[1]:.2f} "
        f"at the end. Medians over {args.rounds} rounds of each script's own median; lower is better everywhere.",
        "",
        "| figure | base | head | head / base |",
        "|---|---|---|---|",
    ]
    for key in sorted(set(got["base"]) | set(got["head"]), key=lambda k: (k.split(" ")[0], k)):
        b, h = got["base"].get(key), got["head"].get(key)
        mb, mh = (statistics.median(b) if b else None), (statistics.median(h) if h else None)
        ratio = f"{mh / mb:.3f}" if mb and mh else "-"
        lines.append(f"| {key} | {_fmt(mb)} | {_fmt(mh)} | {ratio} |")
    lines += ["", "Every round (base / head): " + "; ".join(
        f"{k}: {', '.join(_fmt(v) for v in got['base'].get(k, []))} / {', '.join(_fmt(v) for v in got['head'].get(k, []))}"
        for k in sorted(got["head"]))]
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
