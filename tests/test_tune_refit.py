"""What `mlopsctl tune` does after its search, each thing once: the refit trains on the table and dataset version the
study read (the same model and held-out metrics as the train path reading the file with the best parameters), the
importance kept on the study is the one `tune show` computes from the trial runs, and skl2onnx (with its converters,
onnx and ONNX Runtime) is imported by the refit's export only, never by a search or a worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

TREE = "sklearn.tree.DecisionTreeClassifier"
SPACE = ["--space", "max_depth=int:2..8", "--space", "min_samples_leaf=int:1..20:log"]


def _artifacts(run: dict) -> dict[str, str]:
    return {a["name"]: a["sha256"] for a in run["artifacts"]}


def _graph(settings, run: dict) -> bytes:
    """The run's ONNX model without its graph name (skl2onnx names each conversion's graph with a fresh uuid)."""
    import onnx

    from mlopsctl.services import runs

    model = onnx.load_from_string(runs.run_artifact(settings, str(run["id"]), "model.onnx"))
    assert len(model.graph.name) == 32
    model.graph.name = ""
    return model.SerializeToString()


def test_the_refit_is_the_train_path_on_the_studys_data(cli, make_project, settings_of):
    from mlopsctl.config import with_overrides
    from mlopsctl.services import runs

    project = make_project("breast-cancer", model=TREE, params="{}")
    r = cli("-C", project, "tune", "--trials", 6, "--cv", 3, "--study", "r", *SPACE, "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    settings = settings_of(project)
    refit = runs.show_run(settings, str(out["refit"]["id"]))
    # the same parameters through `mlopsctl train`'s path, which reads, checks and records the file itself
    plain = runs.train_and_track(with_overrides(settings, train={"model": TREE, "params": out["best"]["params"]}),
                                 data_path=project / "data" / "train.csv")
    assert refit["metrics"] == plain["metrics"] and set(refit["metrics"]) == {"accuracy", "f1_macro", "log_loss",
                                                                             "roc_auc"}
    assert refit["parity"] == plain["parity"] and refit["parity"]["passed"] is True
    assert {k: refit["params"][k] for k in plain["params"]} == plain["params"]
    shas, plain_shas = _artifacts(refit), _artifacts(plain)
    for name in ("contract.json", "heldout.parquet"):
        assert shas[name] == plain_shas[name], name  # the same contract and held-out rows, byte for byte
    assert _graph(settings, refit) == _graph(settings, plain)  # the same ONNX graph
    study = runs.show_run(settings, str(out["run_id"]))
    assert refit["dataset"] == plain["dataset"] == study["dataset"] and refit["dataset"] is not None


def test_a_changed_file_is_still_refused_before_the_refit(make_project):
    """The refit trains on the table the study read, and still refuses when the file changed meanwhile."""
    from mlopsctl.config import load_settings
    from mlopsctl.errors import ConflictError
    from mlopsctl.services import tune

    project = make_project("breast-cancer", model=TREE, params="{}")
    data = project / "data" / "train.csv"
    settings = load_settings({"tune.trials": 2, "tune.cv": 2}, {}, project)

    def edit(snap, elapsed):  # the progress callback after the last trial: a row is appended under the study
        if snap.done == 2:
            data.write_text(data.read_text() + data.read_text().splitlines()[1] + "\n")

    with pytest.raises(ConflictError) as info:
        tune.tune(settings, study="c", progress=edit)
    assert str(info.value) == (f"{data} changed (or is gone) since study 'c' started; the best parameters were not "
                               "refitted. Restore the file, or tune again with a new --study name.")
    assert tune.show_study(settings, "c")["refit"] is None


def test_the_importance_kept_after_a_resume_covers_every_trial(cli, make_project, settings_of):
    """A show between two commands of one study keeps the importance of the first one's trials; after the resume,
    show computes it again over every trial (the first command's and the resumed one's) and keeps that."""
    from mlopsctl import tracking
    from mlopsctl.project import open_project
    from mlopsctl.services import tune

    project = make_project("breast-cancer", model=TREE, params="{}")
    args = ("-C", project, "tune", "--cv", 2, "--pruner", "none", "--study", "i", *SPACE, "--json")
    assert cli(*args, "--trials", 4).exit_code == 0
    settings = settings_of(project)
    first = tune.show_study(settings, "i")
    with open_project(settings).store.read() as s:
        stored = json.loads({t.key: t.value for t in tracking.get_run(s, first["run_id"]).tags}["tune.importance"])
    assert [n for n, _ in json.loads(stored["key"])] == [0, 1, 2, 3] and stored["importance"] == first["importance"]
    again = cli(*args, "--trials", 7)  # a resume: trials 0-3 are the first command's
    assert again.exit_code == 0, again.stderr
    shown = tune.show_study(settings, "i")
    assert [t["trial"] for t in shown["trials"]] == list(range(7))
    with open_project(settings).store.read() as s:
        stored = json.loads({t.key: t.value for t in tracking.get_run(s, shown["run_id"]).tags}["tune.importance"])
    assert [n for n, _ in json.loads(stored["key"])] == [t["trial"] for t in shown["trials"]]
    assert stored["importance"] == shown["importance"] and set(shown["importance"]) == {"max_depth", "min_samples_leaf"}


PROBE = """
import json, sys
from mlopsctl.services import runs
from mlopsctl.services.tune import recorder

seen = {}
loaded = lambda: {m: m in sys.modules for m in ("skl2onnx", "onnx", "onnxruntime", "optuna.importance")}
started, train_and_track = recorder.Recorder.started, runs.train_and_track

def spy_started(self, number, params, worker):
    seen.setdefault("trials", []).append(loaded())
    return started(self, number, params, worker)

def spy_train(*a, **k):
    seen["refit"] = {"loaded": loaded(), "frame": k.get("frame") is not None,
                     "dataset_version_id": k.get("dataset_version_id")}
    return train_and_track(*a, **k)

recorder.Recorder.started, runs.train_and_track = spy_started, spy_train
sys.argv = ["mlopsctl", *json.loads(sys.argv[1])]
from mlopsctl.cli.main import main
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
seen["end"] = loaded()
print("@@" + json.dumps(seen))
"""


def test_only_the_refits_export_imports_skl2onnx(make_project, settings_of):
    """A fresh `mlopsctl tune` process: no trial starts with skl2onnx, onnx or ONNX Runtime imported (a tested
    scikit-learn model needs no skl2onnx to know it converts); the refit is handed the table and dataset version
    the study read, and its export imports them; nothing computes the parameter importance (the first show does)."""
    from mlopsctl.services import runs

    project = make_project("breast-cancer", model=TREE, params="{}")
    argv = ["-C", str(project), "tune", "--trials", "3", "--cv", "2", "--study", "w", *SPACE, "--json"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("@@"))[2:])
    out = json.loads(proc.stdout.split("@@")[0])
    assert len(seen["trials"]) == 3
    assert all(not t["skl2onnx"] and not t["onnx"] and not t["onnxruntime"] for t in seen["trials"]), seen["trials"]
    refit = seen["refit"]
    assert refit["loaded"] == {"skl2onnx": False, "onnx": False, "onnxruntime": False, "optuna.importance": False}
    assert refit["frame"] is True
    study = runs.show_run(settings_of(project), str(out["run_id"]))
    assert refit["dataset_version_id"] is not None and "tune.importance" not in study["tags"]
    assert seen["end"]["skl2onnx"] and seen["end"]["onnxruntime"] and not seen["end"]["optuna.importance"]


WORKER = """
import sys
from pathlib import Path
from mlopsctl import data
from mlopsctl.training import cv, train
df = data.read_table(Path(sys.argv[1]))
prepared = train.prepare(df, train.TrainSpec(model=sys.argv[2], params={"n_estimators": 10}, target="diagnosis"))
scores = cv.cross_validate(cv.make_folds(prepared, 3), prepared.estimator)
print(len(scores), min(scores) > 0.8, [m for m in ("skl2onnx", "onnx", "onnxruntime") if m in sys.modules])
"""


def test_a_tuning_worker_never_imports_the_exporter(make_project):
    """What a `tune worker` or a Katib `tune trial` does (prepare, fold, score by CV) needs no ONNX library."""
    project = make_project("breast-cancer")
    proc = subprocess.run([sys.executable, "-c", WORKER, str(project / "data" / "train.csv"),
                           "sklearn.ensemble.RandomForestClassifier"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3 True []"
