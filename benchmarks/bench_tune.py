"""Tuning benchmark (issue 17): `mlopsctl tune` against a bare Optuna script running the same objective, and
trials per minute with --jobs 2 against --jobs 1.

    .venv/bin/python benchmarks/bench_tune.py              # the figures in RESULTS.md
    .venv/bin/python benchmarks/bench_tune.py --quick      # fewer trials, a smoke check
    .venv/bin/python benchmarks/bench_tune.py --no-write   # print only; leave RESULTS.md alone

Target: wall time of ``mlopsctl tune`` <= 1.15x the bare script's, both run as fresh processes in the same run,
``--rounds`` pairs in alternating order; the figure is the median of the pairs' ratios. Each process's CPU time
(user + system, from ``getrusage``) is reported beside it (on this shared machine the wall time of the same
command moved by up to 1.8x within an hour; the CPU time moved with it, so neither is load-free).

The same objective: the breast-cancer example, its stratified 80/20 split (seed 42), stratified 3-fold CV
(shuffled, seed 42) on the training rows, a random forest (random_state 42) searched over ``n_estimators``
int:50..200:log, ``max_depth`` choice:none,4,8,16 and ``min_samples_leaf`` int:1..20:log, ROC AUC, the running
mean after each fold reported to ``MedianPruner(n_startup_trials=5)``, ``TPESampler(seed=42)``, the model's own
parameters enqueued as trial 0, N trials, one process. The bare script builds the same scikit-learn pipeline
(median imputation of the numeric columns, then the forest) and keeps Optuna's state in memory; it records
nothing and exports nothing. ``mlopsctl tune`` also records the study and every trial in its SQLite store, keeps
Optuna's state in a journal file, and refits the best parameters through the train path (ONNX export, parity,
held-out metrics): the ratio is the price of all of that. Both print their best value: they must agree, which
shows the searches were the same.

--jobs 2 vs --jobs 1: the same study spec without pruning (so each trial is the same amount of work) run again
under new study names, trials per minute of search (from the first trial's start to the last trial's end, read from
the trial runs; the second worker's start-up, a fresh process importing scikit-learn, falls inside that window).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH, write_section  # noqa: E402

WORK = BENCH / ".work" / "tune"
SPACE = ["n_estimators=int:50..200:log", "max_depth=choice:none,4,8,16", "min_samples_leaf=int:1..20:log"]
BARE = textwrap.dedent('''
    import sys, time
    t0 = time.perf_counter()
    import numpy as np, optuna, pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, train_test_split
    from sklearn.pipeline import Pipeline

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials, path = int(sys.argv[1]), sys.argv[2]
    df = pd.read_csv(path)
    y = df.pop("diagnosis").astype(str)
    X = df.astype("float64")
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=42, stratify=y)
    X_train, y_train = X_train.reset_index(drop=True), y_train.reset_index(drop=True)
    folds = list(StratifiedKFold(3, shuffle=True, random_state=42).split(X_train, y_train))

    def objective(trial):
        params = {"n_estimators": trial.suggest_int("n_estimators", 50, 200, log=True),
                  "max_depth": trial.suggest_categorical("max_depth", [None, 4, 8, 16]),
                  "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 20, log=True)}
        scores = []
        for i, (tr, va) in enumerate(folds):
            model = Pipeline([("preprocess", ColumnTransformer([("numeric", Pipeline([("impute", SimpleImputer(
                strategy="median", keep_empty_features=True))]), list(X_train.columns))])),
                ("model", RandomForestClassifier(random_state=42, **params))])
            model.fit(X_train.iloc[tr], y_train.iloc[tr])
            scores.append(roc_auc_score(y_train.iloc[va], model.predict_proba(X_train.iloc[va])[:, 1]))
            if i < len(folds) - 1:
                trial.report(float(np.mean(scores)), i)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return float(np.mean(scores))

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=42),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0))
    study.enqueue_trial({"n_estimators": 100, "max_depth": None, "min_samples_leaf": 1})
    t1 = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    print(study.best_value, time.perf_counter() - t1, time.perf_counter() - t0)
''')


CPU = textwrap.dedent('''
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    X, y = load_breast_cancer(return_X_y=True)
    for i in range(6):
        RandomForestClassifier(150, random_state=i).fit(X, y)
''')


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine_parallelism(env: dict[str, str]) -> float:
    """Throughput of two plain scikit-learn processes at once over one alone, right now: what --jobs 2 can get
    from this (shared) machine at best."""
    one, _ = run([sys.executable, "-c", CPU], env)
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", CPU], env=env) for _ in range(2)]
    for p in procs:
        p.wait()
    return 2 * one / (time.perf_counter() - t)


CPU_S: list[float] = []  # CPU seconds (user + system) of each command run() ran, in order


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_S.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])}... failed:\n{p.stderr}")
    return wall, p.stdout


def search_window(project: Path, study: str, env: dict[str, str]) -> float:
    """Seconds from the first trial's start to the last trial's end, read from the trial runs."""
    out = subprocess.run([sys.executable, "-m", "mlopsctl", "-C", str(project), "tune", "show", study, "--json"],
                         env=env, capture_output=True, text=True, check=True).stdout
    shown = json.loads(out)
    runs = json.loads(subprocess.run([sys.executable, "-m", "mlopsctl", "-C", str(project), "runs", "list", "--json"],
                                     env=env, capture_output=True, text=True, check=True).stdout)
    ids = {t["run_id"] for t in shown["trials"]}
    spans = [(datetime.fromisoformat(r["started_at"].rstrip("Z")), r["duration_s"]) for r in runs if r["id"] in ids]
    start = min(s for s, _ in spans)
    end = max(s.timestamp() + d for s, d in spans)
    return end - start.timestamp()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3, help="bare/mlopsctl pairs, alternating order (median ratio)")
    args = ap.parse_args()
    trials = args.trials or (8 if args.quick else 30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    project = WORK / "project"
    subprocess.run([sys.executable, "-m", "mlopsctl", "init", str(project), "--example", "breast-cancer"], env=env,
                   check=True, capture_output=True)
    data = project / "data" / "train.csv"
    (WORK / "bare.py").write_text(BARE)
    load = os.getloadavg()[0]

    tune = [sys.executable, "-m", "mlopsctl", "-C", str(project), "tune", "--trials", str(trials), "--cv", "3",
            "--sampler", "tpe", "--pruner", "median", *(a for s in SPACE for a in ("--space", s)), "--json"]
    bare_walls, ours_walls, ratios, bests, cpu_ratios = [], [], [], set(), []
    for r in range(args.rounds):  # alternating order: drifting load falls on both sides
        order = ("bare", "ours") if r % 2 == 0 else ("ours", "bare")
        for side in order:
            if side == "bare":
                wall, out = run([sys.executable, str(WORK / "bare.py"), str(trials), str(data)], env)
                bare_cpu = CPU_S[-1]
                bare_best, bare_search, _ = map(float, out.split())
                bare_walls.append(wall)
                bests.add(round(bare_best, 9))
            else:
                wall, out = run([*tune, "--jobs", "1", "--study", f"j1-{r + 1}"], env)
                ours_cpu = CPU_S[-1]
                ours = json.loads(out)
                ours_walls.append(wall)
                bests.add(round(ours["best"]["value"], 9))
        ratios.append(ours_walls[-1] / bare_walls[-1])
        cpu_ratios.append(ours_cpu / bare_cpu)
        say(f"round {r + 1}: bare {bare_walls[-1]:.2f} s, mlopsctl {ours_walls[-1]:.2f} s, ratio {ratios[-1]:.3f} "
            f"(CPU {bare_cpu:.2f} / {ours_cpu:.2f} s, {cpu_ratios[-1]:.3f})")
    bare_wall, ours_wall = statistics.median(bare_walls), statistics.median(ours_walls)
    ratio = statistics.median(ratios)
    parallel = machine_parallelism(env)
    # trials per minute without pruning, so that both runs fit the same amount of work per trial
    unpruned = [a if a != "median" else "none" for a in tune]
    run([*unpruned, "--jobs", "1", "--study", "p1"], env)
    p1 = search_window(project, "p1", env)
    j2_wall, _ = run([*unpruned, "--jobs", "2", "--study", "p2"], env)
    p2 = search_window(project, "p2", env)
    rate1, rate2 = trials / p1 * 60, trials / p2 * 60
    j1 = search_window(project, f"j1-{args.rounds}", env)

    lines = [
        "## Tuning (issue 17)",
        "",
        f"`.venv/bin/python benchmarks/bench_tune.py{''.join(' ' + a for a in sys.argv[1:] if a != '--no-write')}` at "
        f"{subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()}, "
        f"{datetime.now().strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} CPUs, load average {load:.2f} at the start; "
        f"Python {platform.python_version()}, optuna {_version('optuna')}, scikit-learn {_version('scikit-learn')}.",
        "",
        f"Breast-cancer example, random forest over n_estimators / max_depth / min_samples_leaf, 3-fold CV on the "
        f"training split, TPE seed 42, median pruner, {trials} trials (see the script's docstring).",
        "",
        f"| | wall, median of {args.rounds} (s) | search, last round (s) | best cv_roc_auc |",
        "|---|---|---|---|",
        f"| bare Optuna script (in memory, records nothing) | {bare_wall:.2f} | {bare_search:.2f} | {bare_best:.6f} |",
        f"| `mlopsctl tune --jobs 1` (store, journal, refit + ONNX + parity) | {ours_wall:.2f} | {j1:.2f} | "
        f"{ours['best']['value']:.6f} |",
        "",
        f"**Ratio: {ratio:.2f}x**, the median of the rounds' ratios (target <= 1.15x): "
        f"{'met' if ratio <= 1.15 else 'NOT met'}. Every round (bare / mlopsctl s, ratio): "
        + "; ".join(f"{b:.2f} / {o:.2f}, {r_:.3f}" for b, o, r_ in zip(bare_walls, ours_walls, ratios))
        + f". In CPU time (user + system of each process): "
        f"median ratio {statistics.median(cpu_ratios):.2f}x, every round "
        + ", ".join(f"{c:.3f}" for c in cpu_ratios)
        + f". Same best value in every run: {'yes' if len(bests) == 1 else 'no'} "
        f"({ours['complete']} complete, {ours['pruned']} pruned).",
        "",
        f"Trials per minute, the same study spec with `--pruner none` (every trial fits all 3 folds; with pruning the "
        f"share of pruned trials differs between runs and with it the work per trial), {trials} trials:",
        "",
        "| workers | search (s) | trials / minute |",
        "|---|---|---|",
        f"| `--jobs 1` | {p1:.2f} | {rate1:.1f} |",
        f"| `--jobs 2` | {p2:.2f} | {rate2:.1f} |",
        "",
        f"--jobs 2 gives {rate2 / rate1:.2f}x the trials per minute of --jobs 1 (wall of the whole --jobs 2 command: "
        f"{j2_wall:.2f} s). For scale, measured just before: two plain scikit-learn processes (forest fits) at once got "
        f"{parallel:.2f}x the throughput of one on this machine.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section("## Tuning (issue 17)", text, keep="### Run to run")


def _version(dist: str) -> str:
    from importlib import metadata

    return metadata.version(dist)


if __name__ == "__main__":
    main()
