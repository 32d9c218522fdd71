"""Boosters benchmark (issue 16): `mlopsctl train` with LightGBM vs a bare script, and single-row latency.

    .venv/bin/python benchmarks/bench_boost.py             # 5 alternating rounds, writes RESULTS.md
    .venv/bin/python benchmarks/bench_boost.py --rounds 3 --no-write

Targets, on one generated table (50,000 rows: 8 numeric columns with NaNs, 3 text columns with missing
values, a binary target):

* ``mlopsctl train --model lightgbm.LGBMClassifier -p n_estimators=200`` <= 1.3 x a bare script doing what it
  does by hand: the same split, native categoricals (ordinal codes + ``categorical_feature``), fit,
  onnxmltools export through skl2onnx (no ZipMap) and ONNX Runtime parity on the held-out rows and on 5,000
  training rows. Both are fresh processes (imports and CSV reading included), alternating; medians.
* single-row latency of that 200-tree LightGBM graph vs the default 100-tree random forest trained on the same
  table, in-process ONNX Runtime through mlopsctl's ``Scorer`` (what the server calls), µs per row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import cpu_model, timed, write_section

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "boost"
PY = sys.executable
MLOPSCTL = str(Path(PY).with_name("mlopsctl"))
ROWS = 50_000
TREES = 200
TARGET_RATIO = 1.3
SECTION = "## Boosters (issue 16)"

BARE_SCRIPT = '''
"""What `mlopsctl train --model lightgbm.LGBMClassifier -p n_estimators=200` does, written by hand: the same
split, numeric columns as they are (NaN included), text columns as ordinal codes split on natively, fit,
onnxmltools export through skl2onnx (ai.onnx.ml opset 3, no ZipMap) and an ONNX Runtime parity check on the
held-out rows and on 5,000 training rows."""
import sys

import numpy as np
import onnxruntime as ort
import pandas as pd
from lightgbm import LGBMClassifier
from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
from skl2onnx import convert_sklearn, get_latest_tested_opset_version, update_registered_converter
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder

update_registered_converter(LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes,
                            convert_lightgbm, options={"nocl": [True, False], "zipmap": [True, False, "columns"]})
df = pd.read_csv(sys.argv[1])
y = df.pop("target").astype("int64")
text = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
numeric = [c for c in df.columns if c not in text]
df[text] = df[text].fillna("").astype(str)
X_train, X_test, y_train, y_test = train_test_split(df, y, test_size=0.2, random_state=42, stratify=y)
model = LGBMClassifier(n_estimators=200, random_state=42, verbose=-1)
pipe = Pipeline([
    ("preprocess", ColumnTransformer([
        ("numeric", "passthrough", numeric),
        ("categorical", Pipeline([
            ("impute", SimpleImputer(missing_values="", strategy="constant", fill_value="__missing__")),
            ("native", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan))]), text)])),
    ("model", model),
])
pipe.fit(X_train, y_train, model__categorical_feature=list(range(len(numeric), len(numeric) + len(text))))
types = [(c, FloatTensorType([None, 1])) for c in numeric] + [(c, StringTensorType([None, 1])) for c in text]
onx = convert_sklearn(pipe, initial_types=types, options={id(model): {"zipmap": False}},
                      target_opset={"": get_latest_tested_opset_version(), "ai.onnx.ml": 3})
session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
for X in (X_test, X_train.sample(5000, random_state=42)):
    feeds = {c: X[c].to_numpy(np.float32).reshape(-1, 1) for c in numeric}
    feeds.update({c: X[c].to_numpy(object).reshape(-1, 1) for c in text})
    labels, proba = session.run(None, feeds)
    diff = np.abs(proba - pipe.predict_proba(X)).max()
    agreement = np.mean(labels == pipe.predict(X))
    assert diff <= 0.05 and agreement >= 0.99, (diff, agreement)
    print(f"max diff {diff:.2e}, label agreement {agreement:.3f}")
'''


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    return e


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} exited {p.returncode}:\n{p.stderr[-2000:]}")
    return p


def make_table(path: Path) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(16)
    df = pd.DataFrame({f"num_{i}": rng.normal(size=ROWS).round(4) for i in range(8)})
    df["city"] = rng.choice([f"city-{i:02d}" for i in range(40)], ROWS).astype(object)
    df["plan"] = rng.choice(["basic", "pro", "team", "enterprise"], ROWS).astype(object)
    df["channel"] = rng.choice(["web", "app", "store"], ROWS).astype(object)
    z = (df["num_0"] - 0.5 * df["num_1"] + 0.3 * df["num_2"] * df["num_3"]
         + np.where(df["plan"] == "pro", 0.8, 0.0) + df["city"].str[-1].astype(int) / 10
         + rng.normal(0, 0.7, ROWS))
    for i in range(0, 8, 2):
        df.loc[rng.random(ROWS) < 0.05, f"num_{i}"] = np.nan
    df.loc[rng.random(ROWS) < 0.05, "plan"] = None
    df["target"] = (z > 0.4).astype(int)
    df.to_csv(path, index=False)


def latency(settings, run_id: int, calls: int) -> dict[str, float]:
    """µs per single-row ``Scorer.run_feeds`` call (feeds prepared once, as the server's fast path does)."""
    import pandas as pd

    from mlopsctl.contract import Contract
    from mlopsctl.scoring import Scorer
    from mlopsctl.services import runs

    onnx_bytes = runs.run_artifact(settings, str(run_id), "model.onnx")
    contract = Contract.from_json(runs.run_artifact(settings, str(run_id), "contract.json"))
    scorer = Scorer(onnx_bytes, contract)
    row = pd.read_csv(settings.resolve("data/train.csv"), nrows=50).drop(columns="target")
    samples = []
    for i in range(calls + 200):
        one = row.iloc[[i % len(row)]]
        checked = contract.check({c: one[c].to_numpy() for c in contract.feature_names})
        feeds = contract.onnx_feeds(checked.normalized, checked.block)
        t = time.perf_counter_ns()
        scorer.run_feeds(feeds)
        if i >= 200:  # after a warm-up
            samples.append((time.perf_counter_ns() - t) / 1000)
    samples.sort()
    return {"median": statistics.median(samples), "p99": samples[int(0.99 * len(samples)) - 1],
            "size_kib": len(onnx_bytes) / 1024}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=5000, help="single-row calls per model (default 5000)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    proj = WORK / "p"
    run([MLOPSCTL, "init", str(proj)], WORK)
    make_table(proj / "data" / "train.csv")
    (WORK / "bare_train.py").write_text(BARE_SCRIPT)
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "src")], env=env(), capture_output=True)
    load_before = os.getloadavg()[0]
    cmds = {
        "mlopsctl train": [MLOPSCTL, "train", "--target", "target", "--model", "lightgbm.LGBMClassifier",
                           "-p", f"n_estimators={TREES}", "--json"],
        "bare script": [PY, str(WORK / "bare_train.py"), str(proj / "data" / "train.csv")],
    }
    for cmd in cmds.values():  # warm-up (page cache, bytecode)
        run(cmd, proj)
    walls: dict[str, list[float]] = {k: [] for k in cmds}
    cpus: dict[str, list[float]] = {k: [] for k in cmds}
    for r in range(args.rounds):
        for name, cmd in cmds.items():
            w, c = timed(run, cmd, proj)
            walls[name].append(w)
            cpus[name].append(c)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in walls.items()), file=sys.stderr)
    med = {k: statistics.median(v) for k, v in walls.items()}
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    ratio = med["mlopsctl train"] / med["bare script"]

    # the last booster run, and the default forest (100 trees) on the same table, scored one row at a time
    runs = json.loads(run([MLOPSCTL, "runs", "list", "--json"], proj).stdout)
    booster = json.loads(run([MLOPSCTL, "runs", "show", str(runs[0]["id"]), "--json"], proj).stdout)
    forest = json.loads(run([MLOPSCTL, "train", "--target", "target", "--json"], proj).stdout)
    assert booster["params"]["n_trees"] == str(TREES) and forest["params"]["model.n_estimators"] == "100"
    from mlopsctl.config import load_settings

    settings = load_settings({}, {}, proj)
    lat = {"LightGBM, 200 trees": latency(settings, booster["id"], args.calls),
           "RandomForest, 100 trees": latency(settings, forest["id"], args.calls)}
    phases = {k.removeprefix("timing."): float(v) for k, v in booster["tags"].items() if k.startswith("timing.")}
    load_after = os.getloadavg()[0]

    import lightgbm
    import onnxmltools
    import onnxruntime

    lines = [
        SECTION, "",
        f"Produced by `.venv/bin/python benchmarks/bench_boost.py --rounds {args.rounds}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {os.cpu_count()} cores ({cpu_model()}), "
        f"lightgbm {lightgbm.__version__}, onnxmltools {onnxmltools.__version__}, onnxruntime {onnxruntime.__version__}; "
        f"1-minute load average {load_before:.2f} before, {load_after:.2f} after. Table: {ROWS:,} rows, 8 numeric "
        "columns (NaNs in 4), 3 text columns (40, 4 and 3 values, missing values in one), binary target.", "",
        "| target | goal | mlopsctl | baseline | result |",
        "|---|---|---|---|---|",
        f"| `mlopsctl train --model lightgbm.LGBMClassifier -p n_estimators={TREES}` / bare script | "
        f"≤ {TARGET_RATIO}× | {ratio:.2f}× | mlopsctl {med['mlopsctl train']:.2f} s vs bare fit + onnxmltools export + "
        f"parity {med['bare script']:.2f} s | {'PASS' if ratio <= TARGET_RATIO else 'MISS'} |", "",
        f"Method: {args.rounds} alternating runs of each after one warm-up, whole-process wall (imports and CSV "
        "reading included for both), medians; the bare script is written to `benchmarks/.work/boost/bare_train.py` "
        "and checks parity on the held-out rows and 5,000 training rows, as `mlopsctl train` does. mlopsctl also "
        "builds the contract and its reference sample, records the dataset, the run, params, metrics, the gain "
        f"importance and four artifacts in SQLite. CPU time (user+sys) medians: mlopsctl {cpu['mlopsctl train']:.2f} s, "
        f"bare {cpu['bare script']:.2f} s ({cpu['mlopsctl train'] / cpu['bare script']:.2f}×). Inside the last "
        "run (its `timing.*` tags): " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(phases.items())) + ". All runs "
        "(s): " + "; ".join(f"{k} " + ", ".join(f"{x:.2f}" for x in v) for k, v in walls.items()) + ".", "",
        "Single-row scoring, in-process ONNX Runtime through `Scorer.run_feeds` (what `/predict` calls; feeds built "
        f"beforehand), {args.calls:,} calls per model after 200 warm-up calls, 1 request at a time:", "",
        "| model | graph size | median µs/row | p99 µs/row |",
        "|---|---|---|---|",
    ]
    for name, v in lat.items():
        lines.append(f"| {name} | {v['size_kib']:,.0f} KiB | {v['median']:.1f} | {v['p99']:.1f} |")
    section = "\n".join(lines) + "\n"
    print(section)
    if not args.no_write:
        write_section(SECTION, section)


if __name__ == "__main__":
    main()
