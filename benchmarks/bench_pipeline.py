"""Pipeline benchmarks (issue 18): the overhead of a fully cached run, and hashing a 1 GiB dependency.

    .venv/bin/python benchmarks/bench_pipeline.py              # full: the figures in RESULTS.md
    .venv/bin/python benchmarks/bench_pipeline.py --quick      # fewer repetitions, a 256 MiB file
    .venv/bin/python benchmarks/bench_pipeline.py --no-write   # print only; leave RESULTS.md alone

Targets:

* ``mlopsctl pipeline run`` on a fully cached 10-step pipeline: <= 0.5 s. Timed two ways, medians of N runs:
  the CLI as a user runs it (a new process: Python, the imports, settings, the store, ten cache checks, ten
  execution records), interleaved with ``mlopsctl --version`` (the same process start and CLI imports,
  nothing opened) so the pipeline's own share can be read off, and with ``mlopsctl runs list`` (a command
  that opens the store through the ORM, which a cached run no longer imports); and ``run_pipeline`` as a
  library call in a warm process (the cache checks and records alone).
* A 1 GiB dependency: hashing it runs within 1.5x of ``sha256sum`` on the same file (both read it from the
  page cache: one warm-up read first), and a second ``pipeline run`` does not read it again (size, mtime and
  inode unchanged: the stat cache's hash is reused, ``StatCache.hashed`` counts 0 files).

Scratch projects go to ``benchmarks/.work/pipeline*``; the 1 GiB file is deleted at the end. Benchmarks are
not tests: the exit status is 0 whether targets are met or not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import cpu_model, write_section

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work"
SECTION = "## Pipelines (issue 18)"
PY = shlex.quote(sys.executable)
MLOPSCTL = [sys.executable, "-m", "mlopsctl"]


def say(msg: str) -> None:
    print(msg, flush=True)


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def timed(cmd: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=clean_env(), check=True, capture_output=True)
    return time.perf_counter() - t


def ten_step_project(root: Path) -> Path:
    """Ten command steps: two chains of four and a join of two, each with a script and a data dep."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    (root / "step.py").write_text("import sys\nsrc, dst = sys.argv[1:]\nopen(dst, 'w').write(open(src).read() + 'x')\n")
    (root / "data/a0.txt").write_text("a")
    (root / "data/b0.txt").write_text("b")
    steps = []
    for chain in "ab":
        for i in range(1, 5):
            steps.append(f'[pipeline.steps.{chain}{i}]\ncmd = "{PY} step.py data/{chain}{i - 1}.txt data/{chain}{i}.txt"\n'
                         f'deps = ["step.py", "data/{chain}{i - 1}.txt"]\nouts = ["data/{chain}{i}.txt"]\n')
    steps.append(f'[pipeline.steps.join]\ncmd = "{PY} -c \\"open(\'data/j.txt\',\'w\').write(open(\'data/a4.txt\').read()'
                 f'+open(\'data/b4.txt\').read())\\""\ndeps = ["data/a4.txt", "data/b4.txt"]\nouts = ["data/j.txt"]\n')
    steps.append(f'[pipeline.steps.final]\ncmd = "{PY} step.py data/j.txt data/final.txt"\n'
                 f'deps = ["step.py", "data/j.txt"]\nouts = ["data/final.txt"]\n')
    (root / ".mlops.toml").write_text("\n".join(steps))
    subprocess.run([*MLOPSCTL, "pipeline", "run"], cwd=root, env=clean_env(), check=True, capture_output=True)
    return root


def bench_cached(reps: int) -> dict:
    sys.path.insert(0, str(REPO / "src"))
    root = ten_step_project(WORK / "pipeline10")
    timed([*MLOPSCTL, "pipeline", "run"], root)  # warm the page cache and the .pyc files
    cli, floor, orm = [], [], []
    for _ in range(reps):  # interleaved: a noisy moment hits all three
        cli.append(timed([*MLOPSCTL, "pipeline", "run"], root))
        floor.append(timed([*MLOPSCTL, "--version"], root))
        orm.append(timed([*MLOPSCTL, "runs", "list"], root))
    from mlopsctl.config import load_settings
    from mlopsctl.services import pipeline

    settings = load_settings({}, {}, root)
    pipeline.run_pipeline(settings)  # a warm process
    lib = []
    for _ in range(reps):
        t = time.perf_counter()
        out = pipeline.run_pipeline(settings)
        lib.append(time.perf_counter() - t)
        assert out["ran"] == [] and len(out["cached"]) == 10, out
    return {"cli": statistics.median(cli), "floor": statistics.median(floor), "orm": statistics.median(orm),
            "lib": statistics.median(lib),
            "reps": reps}


def bench_big(size_mib: int, reps: int) -> dict:
    from mlopsctl.config import load_settings
    from mlopsctl.pipeline.hashing import StatCache
    from mlopsctl.services import pipeline

    root = WORK / "pipeline-big"
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    big = root / "data" / "big.bin"
    chunk = os.urandom(1 << 20)
    with open(big, "wb") as fh:
        for i in range(size_mib):
            fh.write(chunk[i % 7:] + chunk[:i % 7])  # not one repeated MiB
    old = time.time() - 3600
    os.utime(big, (old, old))  # written an hour ago: outside the stat cache's racy window
    (root / ".mlops.toml").write_text(
        f'[pipeline.steps.size]\ncmd = "{PY} -c \\"import os; open(\'size.txt\',\'w\').write(str(os.path.getsize('
        f'\'data/big.bin\')))\\""\ndeps = ["data/big.bin"]\nouts = ["size.txt"]\n')
    try:
        subprocess.run(["cat", str(big)], stdout=subprocess.DEVNULL, check=True)  # into the page cache
        sums, ours = [], []
        for _ in range(reps):
            t = time.perf_counter()
            subprocess.run(["sha256sum", str(big)], check=True, capture_output=True)
            sums.append(time.perf_counter() - t)
            cache = StatCache(root / "fresh-cache.json")  # empty: reads the whole file
            t = time.perf_counter()
            cache.file_sha256(big)
            ours.append(time.perf_counter() - t)
            assert cache.hashed == 1
        settings = load_settings({}, {}, root)
        t = time.perf_counter()
        first = pipeline.run_pipeline(settings)
        first_s = time.perf_counter() - t
        assert first["ran"] == ["size"]
        t = time.perf_counter()
        second = subprocess.run([*MLOPSCTL, "pipeline", "run", "--json"], cwd=root, env=clean_env(), check=True,
                                capture_output=True, text=True)
        second_cli = time.perf_counter() - t
        out = json.loads(second.stdout)
        assert out["cached"] == ["size"], out
        return {"size_mib": size_mib, "sha256sum": statistics.median(sums), "ours": statistics.median(ours),
                "first_run": first_s, "first_hashed": first["files_hashed"], "second_cli": second_cli,
                "hashed_again": out["files_hashed"], "bytes_again": out["bytes_hashed"], "reps": reps}
    finally:
        big.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 repetitions and a 256 MiB file")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    reps = 3 if args.quick else 7
    size = 256 if args.quick else 1024
    WORK.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    say(f"load average {load:.2f}")
    c = bench_cached(reps)
    say(f"cached 10-step pipeline: CLI {c['cli']:.3f} s (--version {c['floor']:.3f} s, runs list {c['orm']:.3f} s), "
        f"library {c['lib']:.3f} s")
    b = bench_big(size, reps)
    ratio = b["ours"] / b["sha256sum"]
    say(f"{size} MiB: sha256sum {b['sha256sum']:.3f} s, ours {b['ours']:.3f} s ({ratio:.2f}x); "
        f"second run {b['second_cli']:.3f} s, bytes hashed again {b['bytes_again']}")
    mib_s = lambda s: size / s  # noqa: E731
    ok = lambda cond: "met" if cond else "NOT met"  # noqa: E731
    text = f"""{SECTION}

`{' '.join(['.venv/bin/python', 'benchmarks/bench_pipeline.py', *sys.argv[1:]])}` on {dt.date.today()}, {cpu_model()}
({os.cpu_count()} cores), Python {platform.python_version()}, load average {load:.2f} at the start; medians of {reps}.

| measurement | figure | target |
|---|---:|---|
| `mlopsctl pipeline run`, 10 steps all cached (new process) | {c['cli']:.3f} s | <= 0.5 s: {ok(c['cli'] <= 0.5)} |
| `mlopsctl --version` (process start and the CLI's imports; nothing opened) | {c['floor']:.3f} s | baseline |
| the pipeline's share: settings, the store opened (SQLAlchemy Core), the DAG, ten cache checks and records | {c['cli'] - c['floor']:.3f} s | |
| for comparison, `mlopsctl runs list` in the same project (opens the store through the ORM, one query) | {c['orm']:.3f} s | |
| `run_pipeline` as a library call, 10 steps all cached (warm process) | {c['lib']:.3f} s | |
| hashing a {size} MiB dependency: `sha256sum` | {b['sha256sum']:.3f} s ({mib_s(b['sha256sum']):.0f} MiB/s) | baseline |
| hashing it: mlopsctl (`StatCache.file_sha256`, empty cache) | {b['ours']:.3f} s ({mib_s(b['ours']):.0f} MiB/s), {ratio:.2f}x | <= 1.5x: {ok(ratio <= 1.5)} |
| first `pipeline run` with that dep (hash + run the step), library call | {b['first_run']:.3f} s ({b['first_hashed']} files hashed) | |
| second `mlopsctl pipeline run` (new process) | {b['second_cli']:.3f} s | |
| bytes read again by the second run: the {size} MiB dep is not (size, mtime, inode unchanged); the step's just-written output is (racy window) | {b['bytes_again']:,} B in {b['hashed_again']} file(s) | < 1 MiB: {ok(b['bytes_again'] < 1 << 20)} |

Both hashers read the file from the page cache (one `cat` first). The 1 GiB file is written under
`benchmarks/.work/` and deleted at the end.
"""
    print(text)
    if not args.no_write:
        write_section(SECTION, text, keep="### Findings")


if __name__ == "__main__":
    main()
