"""Monitoring benchmarks (issue 6): drift over 50 columns x 100,000 logged rows <= 2 s; report <= 3 s.

    .venv/bin/python benchmarks/bench_monitor.py              # full: the figures in RESULTS.md
    .venv/bin/python benchmarks/bench_monitor.py --quick      # 3 repetitions, a smoke check
    .venv/bin/python benchmarks/bench_monitor.py --no-write   # print only; leave RESULTS.md alone

Set-up (not timed): a project in ``benchmarks/.work/monitor/`` trained on a generated frame of 50 feature
columns (40 numeric, 10 categorical; 8,000 rows; HistGradientBoosting, 20 iterations), registered and
promoted through the service layer, so its contract carries the default 1,000-row reference sample (the
small regime: KS / chi-square). 100,000 rows, 20 of the 50 columns shifted, are scored by the version's own
ONNX Runtime session and written to the store's prediction log (``prediction_batches`` + ``predictions``) by the server's ``PredictionLog``
writer (its batched insert, one transaction per ``PredictionLog.batch_size`` records), in two layouts: one record per request (100,000
records of 1 row, the worst case) and requests of 100 rows (1,000 records). 5,000 predictions get labels
(``monitor feedback``), so the report has a live-metric chart.

Timed, in process (the store and the model files are real; nothing is mocked), median of N runs after one
warm-up run (the cold first call, with its imports, is reported too):

* ``monitoring.checks.drift(settings, "bench@production")``: the whole ``mlopsctl monitor drift`` work —
  resolve the version, read and decode the window from SQLite, the per-column statistics, the prediction
  drift (scoring the reference sample) and recording the result — and its parts: the window load alone
  (``load_window``) and the statistics alone (``dataset_drift`` on the decoded columns);
* ``monitoring.report.write_report(...)``: the HTML report (drift with histograms, live metrics, history);
* one ``mlopsctl monitor drift --json`` subprocess (whole process, start-up included), for reference.

A second version trained with ``train.reference_rows = 5000`` gives the large regime (Wasserstein /
Jensen-Shannon) on the one-row-per-request layout. Benchmarks are not tests: exit status 0 either way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from _common import cpu_model, write_section

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work" / "monitor"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Monitoring (issue 6)"
BIN = Path(sys.executable).parent
MODEL = "bench"
N_NUMERIC, N_CATEGORICAL = 40, 10
TRAIN_ROWS = 8_000
LOGGED_ROWS = 100_000
SHIFTED = 20  # columns shifted in the logged rows
LABELLED = 5_000
TARGET_DRIFT_S = 2.0
TARGET_REPORT_S = 3.0


# ---- set-up ---------------------------------------------------------------------------------------------

def generate(n: int, seed: int, shift: bool) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {}
    for i in range(N_NUMERIC):
        x = rng.normal(10 + i, 1 + i % 5, n)
        if shift and i < SHIFTED - SHIFTED // 4:
            x = x + 0.5 * (1 + i % 5)  # half a standard deviation
        x[rng.random(n) < 0.02] = np.nan
        cols[f"num_{i:02d}"] = x.round(4)
    for j in range(N_CATEGORICAL):
        levels = [f"c{k}" for k in range(3 + j % 6)]
        p = np.linspace(1, 2, len(levels))
        if shift and j < SHIFTED // 4:
            p = p[::-1]
        cols[f"cat_{j:02d}"] = rng.choice(levels, n, p=p / p.sum())
    df = pd.DataFrame(cols)
    logit = 0.4 * (df["num_00"] - 10) - 0.3 * (df["num_01"] - 11).fillna(0) + (df["cat_00"] == "c0") * 0.8
    df["label"] = np.where(logit + rng.normal(0, 1, n) > 0, "yes", "no")
    return df


def setup(say: Callable[[str], None], reuse: bool = False) -> dict[str, Any]:
    """Projects ``per-request`` and ``batched`` (same model, two log layouts), rebuilt from scratch unless
    ``reuse`` and a complete set-up is there (``benchmarks/.work/monitor/READY``)."""
    from mlopsctl.services import models, project, runs
    from mlopsctl.config import load_settings
    from mlopsctl.store import db

    marker = WORK / "READY"
    if reuse and marker.exists():
        say(f"reusing the set-up in {WORK.relative_to(REPO)} (from {marker.read_text().strip()})")
        return {layout: WORK / layout for layout in ("per-request", "batched")}
    if WORK.exists():
        shutil.rmtree(WORK)
    base = WORK / "base"
    project.init_project(base)
    (base / "data").mkdir(exist_ok=True)
    generate(TRAIN_ROWS, 1, shift=False).to_csv(base / "data" / "train.csv", index=False)
    (base / ".mlops.toml").write_text(
        '[data]\npath = "data/train.csv"\ntarget = "label"\n\n'
        '[train]\nmodel = "sklearn.ensemble.HistGradientBoostingClassifier"\nparams = { max_iter = 20 }\n\n'
        f'[registry]\nmodel_name = "{MODEL}"\n')
    t = time.perf_counter()
    for ref_rows in (1000, 5000):
        s = load_settings({"train.reference_rows": ref_rows}, {}, base)
        run = runs.train_and_track(s)
        models.register(s, str(run["id"]), MODEL)
    s = load_settings({}, {}, base)
    models.promote(s, MODEL, 1)
    say(f"trained and registered {MODEL}/1 (reference 1,000 rows) and {MODEL}/2 (5,000) in "
        f"{time.perf_counter() - t:.1f} s")
    db.close_all()
    projects = {}
    for layout in ("per-request", "batched"):
        shutil.copytree(base, WORK / layout)
        projects[layout] = WORK / layout
    logged = generate(LOGGED_ROWS, 2, shift=True)
    for layout, rows_per_request in (("per-request", 1), ("batched", 100)):
        t = time.perf_counter()
        for version in ((1, 2) if layout == "per-request" else (1,)):
            log_predictions(projects[layout], version, logged.drop(columns=["label"]), rows_per_request,
                            labels=logged["label"] if version == 1 else None)
        say(f"{layout}: logged {LOGGED_ROWS:,} rows ({rows_per_request} per request) in "
            f"{time.perf_counter() - t:.1f} s")
    marker.write_text(dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") + "\n")
    return projects


def log_predictions(project: Path, version: int, frame: Any, rows_per_request: int, labels: Any = None) -> None:
    """Score ``frame`` with the version's ONNX session and write it as the server does (PredictionLog)."""
    import numpy as np

    from mlopsctl.config import load_settings
    from mlopsctl.monitoring import window as mw
    from mlopsctl.scoring import Scorer
    from mlopsctl.predlog_format import index_pending
    from mlopsctl.serving.predlog import PredictionLog, make_record
    from mlopsctl.store import db
    from mlopsctl.store.models import Feedback

    s = load_settings({}, {}, project)
    store, _, loaded = mw.resolve(s, f"{MODEL}/{version}")
    contract = loaded.contract
    checked = contract.check({c: frame[c].tolist() for c in contract.feature_names})
    assert not checked.errors, checked.errors[:1]
    outputs = Scorer(loaded.onnx, contract).run(checked.normalized)
    log = PredictionLog(store)
    log.close()  # the writer thread is not needed: records are handed to its batched insert directly
    batch = []
    n = len(frame)
    for start in range(0, n, rows_per_request):
        sl = slice(start, min(start + rows_per_request, n))
        rid = f"v{version}-{start // rows_per_request:06d}"
        inputs = {c: v[sl] for c, v in checked.normalized.items()}
        outs = {k: np.asarray(v)[sl] for k, v in outputs.items()}
        batch.append(make_record(rid, MODEL, version, "predict", 0.5, inputs, outs, sl.stop - sl.start,
                                 created_at=_utcnow()))
        if len(batch) == log.batch_size:
            log._write(batch)
            batch = []
    if batch:
        log._write(batch)
    assert log.write_errors == 0 and log.written == -(-n // rows_per_request)
    index_pending(store.engine)  # the index rows of these busy windows, as a quiet server window would write them
    if labels is not None:  # labels for the first LABELLED rows
        with store.session() as sess:
            for i in range(LABELLED):
                sess.add(Feedback(request_id=f"v{version}-{i // rows_per_request:06d}", row=i % rows_per_request,
                                  label=str(labels.iloc[i])))
    db.close_all()


def _utcnow():
    from mlopsctl.store.models import utcnow

    return utcnow()


# ---- timing ---------------------------------------------------------------------------------------------

def timed(fn: Callable[[], Any], runs: int) -> tuple[float, list[float], Any, float]:
    """(median wall s, all wall times, the last result, median CPU s of this process, all threads)."""
    times, cpu, out = [], [], None
    for _ in range(runs):
        out = None
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(times), times, out, statistics.median(cpu)


def measure(projects: dict[str, Path], runs: int, say: Callable[[str], None]) -> dict[str, Any]:
    from mlopsctl.config import load_settings
    from mlopsctl.monitoring import checks, report
    from mlopsctl.monitoring import window as mw
    from mlopsctl.monitoring.drift import dataset_drift
    from mlopsctl.store import db

    res: dict[str, Any] = {}
    for layout, project in projects.items():
        s = load_settings({}, {}, project)
        ref = f"{MODEL}@production"
        t = time.perf_counter()
        first = checks.drift(s, ref)
        res[(layout, "cold")] = time.perf_counter() - t
        assert first["window"]["rows"] == LOGGED_ROWS and len(first["columns"]) == N_NUMERIC + N_CATEGORICAL
        res[(layout, "drifted")] = (len(first["drifted_columns"]), first["drifted"])
        res[(layout, "drift")] = timed(lambda: checks.drift(s, ref), runs)
        store, _, loaded = mw.resolve(s, ref)
        contract = loaded.contract
        res[(layout, "load")] = timed(lambda: mw.load_window(store, MODEL, 1, contract, since="24h"), runs)
        window = res[(layout, "load")][2]
        reference = mw.as_drift_input(contract, mw.reference_columns(contract))
        current = mw.as_drift_input(contract, window.columns)
        res[(layout, "prepare")] = timed(lambda: (mw.as_drift_input(contract, mw.reference_columns(contract)),
                                                  mw.as_drift_input(contract, window.columns)), runs)
        res[(layout, "stats")] = timed(lambda: dataset_drift(contract, reference, current), runs)
        out = WORK / f"report-{layout}.html"
        res[(layout, "report")] = timed(lambda: report.write_report(s, ref, out), runs)
        res[(layout, "report_bytes")] = out.stat().st_size
        say(f"{layout}: drift {res[(layout, 'drift')][0]:.3f} s (load {res[(layout, 'load')][0]:.3f}, prepare "
            f"{res[(layout, 'prepare')][0]:.3f}, statistics {res[(layout, 'stats')][0]:.3f}); report "
            f"{res[(layout, 'report')][0]:.3f} s")
        if layout == "per-request":
            ref2 = f"{MODEL}/2"
            out2 = checks.drift(s, ref2)
            assert out2["reference_rows"] == 5000 and out2["window"]["rows"] == LOGGED_ROWS
            res[("large", "methods")] = sorted({c["method"] for c in out2["columns"]})
            res[("large", "drifted")] = (len(out2["drifted_columns"]), out2["drifted"])
            res[("large", "drift")] = timed(lambda: checks.drift(s, ref2), runs)
            say(f"large regime (5,000-row reference): drift {res[('large', 'drift')][0]:.3f} s")
        db.close_all()
    # the CLI as a user runs it, whole process (start-up and imports included)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    cli_times = []
    for _ in range(3):
        t = time.perf_counter()
        proc = subprocess.run([str(BIN / "mlopsctl"), "-C", str(projects["per-request"]), "monitor", "drift",
                               f"{MODEL}@production", "--json"], capture_output=True, text=True, env=env)
        cli_times.append(time.perf_counter() - t)
        assert proc.returncode == 0, proc.stderr
    res["cli"] = (statistics.median(cli_times), cli_times)
    return res


# ---- output ---------------------------------------------------------------------------------------------

def machine() -> str:
    import numpy
    import onnxruntime
    import scipy
    import sklearn
    import sqlalchemy

    from mlopsctl._version import __version__

    cpu = cpu_model()
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()} "
            f"{platform.release()}; mlopsctl {__version__}, numpy {numpy.__version__}, scipy {scipy.__version__}, "
            f"scikit-learn {sklearn.__version__}, onnxruntime {onnxruntime.__version__}, "
            f"sqlalchemy {sqlalchemy.__version__}")


def section(res: dict[str, Any], runs: int, load: tuple[float, float], argv: list[str]) -> str:
    def ok(v: float, goal: float) -> str:
        return "PASS" if v <= goal else "MISS"

    def runs_of(key: tuple[str, str]) -> str:
        return ", ".join(f"{t:.2f}" for t in res[key][1])

    def wc(key: tuple[str, str]) -> str:
        return f"{res[key][0]:.3f} ({res[key][3]:.3f})"

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = ".venv/bin/python benchmarks/bench_monitor.py" + ("" if not argv else " " + " ".join(argv))
    pr, ba = "per-request", "batched"
    lines = [
        SECTION, "",
        f"Produced by `{cmd}` (from the repo root; it rewrites this section) on {now}: {machine()}.", "",
        "| target | goal | wall, median (CPU) | result (wall) |",
        "|---|---|---|---|",
        f"| drift, 50 columns × 100,000 logged rows, 1 row per request (`checks.drift`, end to end in process) "
        f"| ≤ {TARGET_DRIFT_S:g} s | {wc((pr, 'drift'))} s | {ok(res[(pr, 'drift')][0], TARGET_DRIFT_S)} |",
        f"| drift, the same rows logged as requests of 100 rows | ≤ {TARGET_DRIFT_S:g} s | {wc((ba, 'drift'))} s "
        f"| {ok(res[(ba, 'drift')][0], TARGET_DRIFT_S)} |",
        f"| report generation (`report.write_report`), 1 row per request | ≤ {TARGET_REPORT_S:g} s "
        f"| {wc((pr, 'report'))} s | {ok(res[(pr, 'report')][0], TARGET_REPORT_S)} |",
        f"| report generation, requests of 100 rows | ≤ {TARGET_REPORT_S:g} s | {wc((ba, 'report'))} s "
        f"| {ok(res[(ba, 'report')][0], TARGET_REPORT_S)} |",
        "",
        "| part: wall median (CPU median), s | 1 row per request | 100 rows per request |",
        "|---|---|---|",
        f"| window load: SQLite read + Arrow IPC decode of the logged batches (`load_window`) | {wc((pr, 'load'))} | {wc((ba, 'load'))} |",
        f"| columns to arrays (`as_drift_input`, reference + current) | {wc((pr, 'prepare'))} | {wc((ba, 'prepare'))} |",
        f"| statistics alone (`dataset_drift`, 50 columns) | {wc((pr, 'stats'))} | {wc((ba, 'stats'))} |",
        f"| whole `drift` (also resolve, prediction drift, record) | {wc((pr, 'drift'))} | {wc((ba, 'drift'))} |",
        f"| first `drift` call in the process (imports, cold caches), wall | {res[(pr, 'cold')]:.3f} "
        f"| {res[(ba, 'cold')]:.3f} |",
        f"| `write_report` | {wc((pr, 'report'))} | {wc((ba, 'report'))} |",
        "",
        f"Large regime (`{MODEL}/2`, 5,000-row reference: {', '.join(res[('large', 'methods')])}), 1 row per "
        f"request: drift {wc(('large', 'drift'))} s. Drifted columns found (of 50; 20 shifted): small regime "
        f"{res[(pr, 'drifted')][0]}, large regime {res[('large', 'drifted')][0]}.",
        "",
        f"`mlopsctl monitor drift bench@production --json` as a subprocess (whole process, start-up included), "
        f"1 row per request: {res['cli'][0]:.2f} s median of 3 ({', '.join(f'{t:.2f}' for t in res['cli'][1])}).",
        "",
        f"Method: in process, {runs} timed runs per figure after one warm-up call; CPU is this process's CPU time "
        "(all threads), less sensitive than wall time to other load on the machine. The report has "
        f"{res[(pr, 'report_bytes')]:,} bytes with {LABELLED:,} labelled predictions. Set-up (not timed): "
        f"{N_NUMERIC} numeric + {N_CATEGORICAL} categorical columns, {TRAIN_ROWS:,} training rows, "
        "HistGradientBoosting (20 iterations); logged rows scored by the version's ONNX session and written "
        "with `PredictionLog`'s batched insert (one transaction per `PredictionLog.batch_size` records), "
        "`created_at` = now. "
        f"1-minute load average before/after: {load[0]:.2f} / {load[1]:.2f}.",
        "",
        f"All runs, wall (s): drift per-request {runs_of((pr, 'drift'))}; drift batched {runs_of((ba, 'drift'))}; "
        f"statistics per-request {runs_of((pr, 'stats'))}; report per-request {runs_of((pr, 'report'))}; "
        f"report batched {runs_of((ba, 'report'))}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 timed runs instead of 7")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--reuse", action="store_true", help="reuse a complete set-up from an earlier run")
    args = ap.parse_args(argv)
    for k in [k for k in os.environ if k.startswith("MLOPS_")]:
        del os.environ[k]
    runs = 3 if args.quick else 7
    load0 = os.getloadavg()[0]

    def say(msg: str) -> None:
        print(msg, flush=True)

    projects = setup(say, reuse=args.reuse)
    res = measure(projects, runs, say)
    text = section(res, runs, (load0, os.getloadavg()[0]), [a for a in argv if a not in ("--no-write", "--reuse")])
    print()
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
        print(f"wrote the {SECTION!r} section of {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
