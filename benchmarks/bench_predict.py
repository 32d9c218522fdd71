"""Batch predict benchmark (issue 3): `mlopsctl predict` on a 1,000,000-row CSV vs a plain script.

    .venv/bin/python benchmarks/bench_predict.py            # 3 alternating rounds, writes RESULTS.md
    .venv/bin/python benchmarks/bench_predict.py --no-write

Target: predict end to end (read, validate, score, write) >= 1.2x a plain script doing pandas.read_csv +
the run's joblib pipeline predict_proba + to_csv on the same file, with peak memory bounded by the chunk
size, not the file size. Both run as fresh processes under /usr/bin/time (wall and peak RSS); the model is
the breast-cancer example (RandomForest, 100 trees). A 250,000-row file is measured too, to show whether
peak RSS grows with the file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import write_section

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "predict"
PY = sys.executable
MLOPSCTL = str(Path(PY).with_name("mlopsctl"))

BASELINE = '''
import sys, joblib, pandas as pd
pipe = joblib.load(sys.argv[1])
df = pd.read_csv(sys.argv[2])
proba = pipe.predict_proba(df.drop(columns=["diagnosis"]))
out = df.copy()
out["prediction"] = pipe.classes_[proba.argmax(axis=1)]
for i, c in enumerate(pipe.classes_):
    out[f"proba_{c}"] = proba[:, i]
out.to_csv(sys.argv[3], index=False)
'''


def run(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one process."""
    out = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *cmd], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})
    if out.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{out.stderr[-2000:]}")
    m = re.findall(r"TIME ([\d.]+) (\d+)", out.stderr)[-1]
    return float(m[0]), int(m[1]) / 1024


def setup() -> tuple[Path, Path, dict[int, Path]]:
    import numpy as np
    import pandas as pd

    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    proj = WORK / "bc"
    subprocess.run([MLOPSCTL, "init", str(proj), "--example", "breast-cancer"], check=True, capture_output=True)
    run_json = json.loads(subprocess.run([MLOPSCTL, "train", "--json"], cwd=proj, check=True, capture_output=True,
                                         text=True).stdout)
    subprocess.run([MLOPSCTL, "register", str(run_json["id"]), "--name", "bc"], cwd=proj, check=True, capture_output=True)
    subprocess.run([MLOPSCTL, "promote", "bc", "1"], cwd=proj, check=True, capture_output=True)
    sha = {a["name"]: a["sha256"] for a in run_json["artifacts"]}["model.joblib"]
    joblib_path = WORK / "model.joblib"
    shutil.copy(proj / ".mlops" / "artifacts" / "sha256" / sha[:2] / sha[2:], joblib_path)
    df = pd.read_csv(proj / "data" / "train.csv")
    rng = np.random.default_rng(0)
    files = {}
    for n in (250_000, 1_000_000):
        big = df.sample(n, replace=True, random_state=n).reset_index(drop=True)
        num = big.columns[:-1]
        big[num] = (big[num] * (1 + rng.normal(0, 0.01, (n, len(num))))).round(5)
        files[n] = WORK / f"rows-{n}.csv"
        big.to_csv(files[n], index=False)
    (WORK / "baseline.py").write_text(BASELINE)
    return proj, joblib_path, files


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    proj, joblib_path, files = setup()
    res: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for n, path in files.items():
        rounds = args.rounds if n == 1_000_000 else 1
        for _ in range(rounds):
            res.setdefault(("mlopsctl", n), []).append(run(
                [MLOPSCTL, "predict", "bc@production", str(path), "-o", str(WORK / "out-mlopsctl.csv"), "--json"], proj))
            res.setdefault(("script", n), []).append(run(
                [PY, str(WORK / "baseline.py"), str(joblib_path), str(path), str(WORK / "out-script.csv")], proj))
            print(n, res[("mlopsctl", n)][-1], res[("script", n)][-1], flush=True)
    med = {k: (statistics.median(w for w, _ in v), max(r for _, r in v)) for k, v in res.items()}
    ratio = med[("script", 1_000_000)][0] / med[("mlopsctl", 1_000_000)][0]
    load = os.getloadavg()[0]
    lines = [
        "## Batch predict (issue 3)", "",
        f"Produced by `.venv/bin/python benchmarks/bench_predict.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{os.cpu_count()} cores, 1-minute load average at the end {load:.2f}. Breast-cancer example (RandomForest, 100 "
        "trees), CSV of 31 columns; both sides are fresh processes timed by `/usr/bin/time` (wall, peak RSS), "
        f"alternating, median of {args.rounds} rounds on 1,000,000 rows (one round on 250,000).", "",
        "| rows | mlopsctl predict (wall / peak RSS) | pandas + joblib + to_csv (wall / peak RSS) | speed-up | target |",
        "|---|---|---|---|---|",
    ]
    for n in files:
        m, s = med[("mlopsctl", n)], med[("script", n)]
        target = "≥ 1.2× — " + ("PASS" if s[0] / m[0] >= 1.2 else "MISS") if n == 1_000_000 else "–"
        lines.append(f"| {n:,} | {m[0]:.2f} s / {m[1]:.0f} MiB | {s[0]:.2f} s / {s[1]:.0f} MiB | {s[0] / m[0]:.2f}× | {target} |")
    lines += ["", f"Peak RSS of `mlopsctl predict` is {med[('mlopsctl', 250_000)][1]:.0f} MiB at 250,000 rows and "
              f"{med[('mlopsctl', 1_000_000)][1]:.0f} MiB at 1,000,000 (bounded by the chunk, not the file); the script's "
              f"grows from {med[('script', 250_000)][1]:.0f} to {med[('script', 1_000_000)][1]:.0f} MiB. All runs (wall s): "
              + "; ".join(f"{k[0]} {k[1]:,}: " + ", ".join(f"{w:.2f}" for w, _ in v) for k, v in res.items()), ""]
    section = "\n".join(lines)
    print(section)
    print(f"ratio {ratio:.2f}")
    if not args.no_write:
        write_section("## Batch predict (issue 3)", section)


if __name__ == "__main__":
    main()
