"""Katib interop: `tune export-katib` writes a v1beta1 Experiment that the Katib API models (kubeflow-katib-api, the
models generated from Katib's OpenAPI spec) read back field for field; its trial command, with Katib's parameter
substitution done by hand, prints what Katib's StdOut collector parses and scores what the study scored;
`tune --from-katib` reads the file back into the same study spec."""

from __future__ import annotations

import json
import re

import pytest
import yaml

TREE = "sklearn.tree.DecisionTreeClassifier"
# Katib's default StdOut metrics filter (pkg/metricscollector/v1beta1/common: DefaultFilter)
KATIB_FILTER = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")
# Katib's webhook accepts these (pkg/webhook/v1beta1/experiment/validator: parameterType, feasibleSpace.distribution)
PARAMETER_TYPES = {"int", "double", "categorical", "discrete"}
DISTRIBUTIONS = {"uniform", "logUniform", "normal", "logNormal"}


@pytest.fixture
def study(cli, make_project):
    project = make_project("breast-cancer")
    r = cli("-C", project, "tune", "--model", TREE, "--trials", 3, "--cv", 3, "--jobs", 1, "--study", "Katib_Study.1",
            "--space", "max_depth=choice:none,2,4", "--space", "min_samples_leaf=int:1..32:log",
            "--space", "ccp_alpha=float:0.0..0.02:step=0.005", "-p", "splitter=best", "--json")
    assert r.exit_code == 0, r.stderr
    return project, json.loads(r.stdout)


def test_export_katib_is_a_valid_experiment(cli, study):
    from kubeflow_katib_api.models import IoK8sApiCoreV1Container, V1beta1Experiment

    project, out = study
    r = cli("-C", project, "tune", "export-katib", "Katib_Study.1", "-o", project / "exp.yaml", "--image",
            "registry.local/bc:1", "--namespace", "team-a")
    assert r.exit_code == 0, r.stderr
    doc = yaml.safe_load((project / "exp.yaml").read_text())
    # every field we write is one Katib's models know, with the type they require
    assert V1beta1Experiment.from_dict(doc).to_dict() == doc
    spec = doc["spec"]
    assert doc["metadata"] == {"name": "katib-study-1", "namespace": "team-a"}
    assert spec["objective"] == {"type": "maximize", "objectiveMetricName": "cv_roc_auc",
                                 "metricStrategies": [{"name": "cv_roc_auc", "value": "latest"}]}
    assert spec["algorithm"] == {"algorithmName": "tpe", "algorithmSettings": [{"name": "random_state", "value": "42"}]}
    assert (spec["maxTrialCount"], spec["parallelTrialCount"], spec["maxFailedTrialCount"]) == (3, 1, 10)
    assert spec["earlyStopping"]["algorithmName"] == "medianstop"
    params = {p["name"]: p for p in spec["parameters"]}
    assert params["max_depth"] == {"name": "max_depth", "parameterType": "categorical",
                                   "feasibleSpace": {"list": ["none", "2", "4"]}}
    assert params["min_samples_leaf"] == {"name": "min_samples_leaf", "parameterType": "int",
                                          "feasibleSpace": {"min": "1", "max": "32", "distribution": "logUniform"}}
    assert params["ccp_alpha"]["feasibleSpace"] == {"min": "0.0", "max": "0.02", "step": "0.005"}
    assert {p["parameterType"] for p in spec["parameters"]} <= PARAMETER_TYPES
    assert {p["feasibleSpace"].get("distribution", "uniform") for p in spec["parameters"]} <= DISTRIBUTIONS
    template = spec["trialTemplate"]
    assert {t["reference"] for t in template["trialParameters"]} == set(params)
    container = template["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    assert IoK8sApiCoreV1Container.from_dict(container).to_dict() == container
    assert container["image"] == "registry.local/bc:1" and container["name"] == template["primaryContainerName"]
    # writing again needs --force
    again = cli("-C", project, "tune", "export-katib", "Katib_Study.1", "-o", project / "exp.yaml")
    assert again.exit_code == 4 and "already exists; pass --force" in again.stderr


def test_the_trial_command_prints_what_katib_collects(cli, study, monkeypatch):
    project, out = study
    monkeypatch.chdir(project)  # the container's working folder holds the project
    cli("-C", project, "tune", "export-katib", "Katib_Study.1", "-o", project / "exp.yaml")
    doc = yaml.safe_load((project / "exp.yaml").read_text())
    command = doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["command"]
    shown = json.loads(cli("-C", project, "tune", "show", "Katib_Study.1", "--json").stdout)
    trial = next(t for t in shown["trials"] if t["state"] == "COMPLETE")
    texts = {k: "none" if v is None else str(v) for k, v in trial["params"].items()}
    argv = [re.sub(r"\$\{trialParameters\.(\w+)\}", lambda m: texts[m.group(1)], a) for a in command]
    assert argv[:3] == ["mlopsctl", "tune", "trial"] and "--data" not in argv  # the project's data.path
    r = cli(*argv[1:])
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3  # one per fold: the running mean
    parsed = [KATIB_FILTER.fullmatch(line) for line in lines]
    assert all(parsed) and {m.group(1) for m in parsed} == {"cv_roc_auc"}
    assert float(parsed[-1].group(2)) == pytest.approx(trial["value"], abs=1e-12)  # the same CV as the study's
    runs = json.loads(cli("-C", project, "runs", "list", "--json").stdout)
    katib = [r_ for r_ in runs if r_["name"] == "Katib_Study.1-trial-katib"]
    assert len(katib) == 1 and katib[0]["status"] == "FINISHED"
    assert katib[0]["metrics"]["cv_roc_auc"] == pytest.approx(trial["value"])
    # the study's own views leave Katib's trial out of its trials and counts
    again = json.loads(cli("-C", project, "tune", "show", "Katib_Study.1", "--json").stdout)
    assert [t["trial"] for t in again["trials"]] == [0, 1, 2]
    listed = json.loads(cli("-C", project, "tune", "list", "--json").stdout)
    assert listed[0]["complete"] + listed[0]["pruned"] + listed[0]["failed"] == 3


def test_from_katib_reads_the_same_study(cli, study):
    project, out = study
    cli("-C", project, "tune", "export-katib", "Katib_Study.1", "-o", project / "exp.yaml")
    r = cli("-C", project, "tune", "--from-katib", project / "exp.yaml", "--study", "again", "--trials", 2, "--json")
    assert r.exit_code == 0, r.stderr
    first = json.loads(cli("-C", project, "tune", "show", "Katib_Study.1", "--json").stdout)
    second = json.loads(cli("-C", project, "tune", "show", "again", "--json").stdout)
    for key in ("model", "metric", "direction", "cv", "sampler", "pruner", "space", "fixed_params"):
        assert second[key] == first[key], key
    assert second["target"] == 2 and first["fixed_params"] == {"splitter": "best"}


@pytest.mark.parametrize("text, message", [
    ("kind: Job\n", "exp.yaml is not a Katib Experiment (kind: Experiment, apiVersion: kubeflow.org/v1beta1)."),
    ("kind: Experiment\nspec: {}\n", "exp.yaml has no spec.parameters; a search needs at least one."),
    ("kind: Experiment\nspec:\n  algorithm: {algorithmName: hyperband}\n  parameters:\n"
     "  - {name: max_depth, parameterType: int, feasibleSpace: {min: '1', max: '8'}}\n",
     "exp.yaml: algorithm 'hyperband' has no mlopsctl sampler; use one of cmaes, grid, multivariate-tpe, random, tpe."),
    ("kind: Experiment\nspec:\n  parameters:\n  - {name: max_depth, parameterType: int, feasibleSpace: {min: '8', max: '1'}}\n",
     "search space max_depth='int:8..1' needs LOW below HIGH; use int:LOW..HIGH[:log][:step=S], "
     "float:LOW..HIGH[:log][:step=S] or choice:A,B,C (e.g. n_estimators=int:50..500)."),
    ("kind: [Experiment\n", None),
])
def test_bad_katib_files(cli, make_project, assert_error, text, message):
    project = make_project("breast-cancer")
    (project / "exp.yaml").write_text(text)
    r = cli("-C", project, "tune", "--from-katib", project / "exp.yaml")
    if message is None:
        assert r.exit_code == 2 and r.stderr.startswith(f"Error: {project / 'exp.yaml'} is not valid YAML (")
    else:
        assert_error(r, 2, message)
