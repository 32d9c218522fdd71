"""`mlopsctl export` (Triton, KServe, a container) and the loopback rule of `mlopsctl serve`.

Models (trained once for the module through the CLI, 10 trees or 10 iterations): breast-cancer bc/1 (30
numeric columns, string labels), churn ch/1 (numeric, categorical and boolean columns with missing values),
diabetes db/1 (regression) and Odd_Model.2/1 (columns named "mean radius", "plan.type", "größe", "is active";
three integer classes). Triton configs are parsed with tritonclient's ModelConfig protobuf and checked against
the real ONNX Runtime session with the rules Triton's ONNX Runtime backend applies when it loads a model;
the KServe manifests are loaded with PyYAML; the Docker export's steps run here without Docker: the wheel
built from this checkout is installed into a fresh virtual environment by the Dockerfile's own RUN line, and
the Dockerfile's CMD serves a prediction from the baked-in project.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import string
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
from served_projects import cli_ok, make_served_project, module_isolation, training_records
from test_serving_server import free_port, request, stop_server

REPO = Path(__file__).resolve().parents[1]
ODD_NAME = "Odd_Model.2"


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from mlopsctl.store import db

    root = tmp_path_factory.mktemp("export")
    with module_isolation(root):
        out = {"bc": make_served_project(root, "breast-cancer", "bc", "{ n_estimators = 10 }"),
               "ch": make_served_project(root, "churn", "ch", "{ max_iter = 10 }"),
               "db": make_served_project(root, "diabetes", "db", "{ n_estimators = 10 }"),
               "odd": _odd_project(root / "odd")}
    db.close_all()
    return out


def _odd_project(project: Path) -> Path:
    import pandas as pd

    cli_ok("init", project)
    rng = np.random.default_rng(7)
    n = 240
    df = pd.DataFrame({"mean radius": rng.normal(10, 2, n), "plan.type": rng.choice(["basic", "pro", "ünï"], n),
                       "größe": rng.normal(170, 10, n), "is active": rng.choice([True, False], n)})
    df["klasse"] = (df["mean radius"] > 10).astype(int) + (df["plan.type"] == "pro").astype(int)
    df.loc[::13, "größe"] = np.nan
    df.to_csv(project / "data" / "train.csv", index=False)
    cfg = project / ".mlops.toml"
    cfg.write_text(cfg.read_text().replace('target = "label"', 'target = "klasse"')
                   .replace("n_estimators = 200", "n_estimators = 10"))
    cli_ok("-C", project, "train")
    cli_ok("-C", project, "register", 1, "--name", ODD_NAME)
    return project


def registered_sha(project: Path, ref: str) -> str:
    return json.loads(cli_ok("-C", project, "models", "show", ref, "--json").stdout)["onnx_sha256"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_json(cli, project: Path, *args) -> dict:
    r = cli("-C", project, "export", *args, "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    return json.loads(r.stdout)


def parse_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def triton_type(ort_type: str) -> str:
    return {"tensor(float)": "TYPE_FP32", "tensor(double)": "TYPE_FP64", "tensor(string)": "TYPE_STRING",
            "tensor(int64)": "TYPE_INT64"}[ort_type]


def assert_triton_would_load(cfg, onnx_path: Path) -> None:
    """What Triton's ONNX Runtime backend checks when it loads the model (onnxruntime_backend,
    ValidateInputs/ValidateOutputs + CompareDimsSupported): the same tensor names and element types, and, with
    max_batch_size > 0, the model shape equals [-1] + (reshape.shape if given else dims): exactly for outputs,
    a -1 in the model matching anything for inputs. dims may never be empty."""
    import onnxruntime as ort
    from tritonclient.grpc import model_config_pb2

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert cfg.max_batch_size > 0
    for kind, configured, actual, exact in (("input", cfg.input, session.get_inputs(), False),
                                            ("output", cfg.output, session.get_outputs(), True)):
        by_name = {t.name: t for t in actual}
        assert sorted(t.name for t in configured) == sorted(by_name), kind
        for t in configured:
            real = by_name[t.name]
            assert model_config_pb2.DataType.Name(t.data_type) == triton_type(real.type), (kind, t.name)
            assert len(t.dims) >= 1, (kind, t.name)
            model_shape = [d if isinstance(d, int) else -1 for d in real.shape]
            full = [-1, *(t.reshape.shape if t.HasField("reshape") else t.dims)]
            assert len(model_shape) == len(full), (kind, t.name, model_shape, full)
            for m, c in zip(model_shape, full):
                assert m == c or (not exact and m == -1), (kind, t.name, model_shape, full)


# ---- Triton -------------------------------------------------------------------------------------------------

CASES = {
    # key: (model name, {input: type} checked by name (None: all TYPE_FP32), label type or None, classes)
    "bc": ("bc", None, "TYPE_STRING", 2),
    "ch": ("ch", {"tenure_months": "TYPE_FP32", "monthly_charges": "TYPE_FP32", "plan": "TYPE_STRING",
                  "region": "TYPE_STRING", "contract": "TYPE_STRING", "has_support": "TYPE_FP32", "age": "TYPE_FP32"},
           "TYPE_STRING", 2),
    "db": ("db", None, None, None),
    "odd": (ODD_NAME, {"mean_radius": "TYPE_FP32", "plan_type": "TYPE_STRING", "größe": "TYPE_FP32",
                       "is_active": "TYPE_FP32"}, "TYPE_INT64", 3),
}


@pytest.mark.parametrize("key", list(CASES))
def test_triton_repository_parses_as_a_model_config_that_matches_the_graph(projects, cli, tmp_path, key):
    from tritonclient.grpc import model_config_pb2 as pb

    name, inputs, label_type, classes = CASES[key]
    out = tmp_path / "repo"
    result = export_json(cli, projects[key], f"{name}/1", "--format", "triton", "-o", out)
    assert result["files"] == [f"{name}/1/model.onnx", f"{name}/config.pbtxt"]
    assert (result["ref"], result["format"], result["max_batch_size"]) == (f"{name}/1", "triton", 1024)
    sha = registered_sha(projects[key], f"{name}/1")
    assert sha256(out / name / "1" / "model.onnx") == sha == result["onnx_sha256"]

    cfg = parse_config(out / name / "config.pbtxt")
    assert (cfg.name, cfg.platform, cfg.max_batch_size) == (name, "onnxruntime_onnx", 1024)
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 0
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(pb.ModelInstanceGroup.KIND_CPU, 2)]
    assert {k: v.string_value for k, v in cfg.parameters.items() if k != "mlopsctl.mlopsctl_version"} == {
        "mlopsctl.model": name, "mlopsctl.version": "1", "mlopsctl.onnx_sha256": sha}
    types = {t.name: pb.DataType.Name(t.data_type) for t in cfg.input}
    if inputs is None:
        assert len(types) in (30, 10) and set(types.values()) == {"TYPE_FP32"}
    else:
        assert types == inputs
    assert all(list(t.dims) == [1] and not t.HasField("reshape") for t in cfg.input)
    outputs = {t.name: t for t in cfg.output}
    if label_type is None:  # regression: one [N, 1] prediction
        assert list(outputs) == ["variable"]
        assert list(outputs["variable"].dims) == [1] and not outputs["variable"].HasField("reshape")
    else:  # label [N] -> dims [1] + reshape [], probabilities [N, classes]
        assert pb.DataType.Name(outputs["label"].data_type) == label_type
        assert list(outputs["label"].dims) == [1] and list(outputs["label"].reshape.shape) == []
        assert outputs["label"].HasField("reshape")
        assert pb.DataType.Name(outputs["probabilities"].data_type) == "TYPE_FP32"
        assert list(outputs["probabilities"].dims) == [classes]
    assert_triton_would_load(cfg, out / name / "1" / "model.onnx")
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()  # not mkdtemp's 0700


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_triton_export_of_an_alias_takes_its_version_and_records_an_event(projects, cli, tmp_path):
    cli_ok("-C", projects["bc"], "train")
    cli_ok("-C", projects["bc"], "register", 2, "--name", "bc")
    try:
        result = export_json(cli, projects["bc"], "bc@production", "-f", "triton", "-o", tmp_path / "r",
                             "--max-batch-size", 64)
        assert result["ref"] == "bc/1" and result["files"][0] == "bc/1/model.onnx"  # @production is still 1
        assert parse_config(tmp_path / "r" / "bc" / "config.pbtxt").max_batch_size == 64
        result = export_json(cli, projects["bc"], "bc/2", "-f", "triton", "-o", tmp_path / "r2")
        assert sha256(tmp_path / "r2" / "bc" / "2" / "model.onnx") == registered_sha(projects["bc"], "bc/2")
        assert registered_sha(projects["bc"], "bc/2") != registered_sha(projects["bc"], "bc/1")
        events = [e for e in json.loads(cli_ok("-C", projects["bc"], "events", "--json").stdout)
                  if e["kind"] == "exported"]
        assert [(e["model"], e["version"]) for e in events[-2:]] == [("bc", 1), ("bc", 2)]
        assert events[-1]["message"] == f"bc/2 exported as triton to {tmp_path / 'r2'}"
    finally:
        from mlopsctl.store import db

        db.close_all()


# ---- KServe -------------------------------------------------------------------------------------------------

DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?\Z")


def test_kserve_manifests_load_and_carry_the_runtime_probes_and_the_model(projects, cli, tmp_path):
    import yaml

    out = tmp_path / "k8s"
    result = export_json(cli, projects["ch"], "ch", "-f", "kserve", "-o", out, "--storage-uri", "s3://models/ch",
                         "--image", "registry.example/mlopsctl-ch:1")
    assert result["files"] == ["inferenceservice-triton.yaml", "mlopsctl-runtime.yaml", "repository/ch/1/model.onnx",
                               "repository/ch/config.pbtxt"]
    sha = registered_sha(projects["ch"], "ch/1")
    assert sha256(out / "repository" / "ch" / "1" / "model.onnx") == sha
    assert_triton_would_load(parse_config(out / "repository" / "ch" / "config.pbtxt"),
                             out / "repository" / "ch" / "1" / "model.onnx")
    meta = {"mlopsctl/model": "ch", "mlopsctl/version": "1", "mlopsctl/onnx-sha256": sha}

    isvc = yaml.safe_load((out / "inferenceservice-triton.yaml").read_text())
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert isvc["metadata"]["annotations"].items() >= meta.items()
    assert isvc["metadata"]["labels"] == {"app.kubernetes.io/name": "ch", "app.kubernetes.io/version": "1"}
    m = isvc["spec"]["predictor"]["model"]
    assert (m["modelFormat"], m["runtime"], m["protocolVersion"], m["storageUri"]) == (
        {"name": "onnx"}, "kserve-tritonserver", "v2", "s3://models/ch")
    assert set(m["resources"]) == {"requests", "limits"} and m["resources"]["limits"]["memory"].endswith("Mi")

    runtime, isvc2 = yaml.safe_load_all((out / "mlopsctl-runtime.yaml").read_text())
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert (isvc2["apiVersion"], isvc2["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    for doc in (runtime, isvc2):
        assert doc["metadata"]["annotations"].items() >= meta.items()
        assert DNS_1035.match(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= 40
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    (container,) = runtime["spec"]["containers"]
    assert container["image"] == "registry.example/mlopsctl-ch:1"
    assert container["command"] + container["args"] == ["mlopsctl", "serve", "ch/1", "--host", "0.0.0.0",
                                                         "--port", "8080"]
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert container["env"] == [{"name": "MLOPS_SERVE_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "ch-serve-token", "key": "token"}}}]
    assert set(container["resources"]) == {"requests", "limits"}
    assert container["securityContext"]["runAsNonRoot"] is True
    m2 = isvc2["spec"]["predictor"]["model"]
    assert m2["runtime"] == runtime["metadata"]["name"] and m2["protocolVersion"] == "v2"
    assert m2["modelFormat"]["name"] in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    assert isvc2["metadata"]["name"] != isvc["metadata"]["name"]  # both can run side by side


def test_kserve_placeholders_are_filled_by_envsubst_style_substitution(projects, cli, tmp_path):
    import yaml

    export_json(cli, projects["odd"], f"{ODD_NAME}/1", "-f", "kserve", "-o", tmp_path / "k")
    triton_text = (tmp_path / "k" / "inferenceservice-triton.yaml").read_text()
    runtime_text = (tmp_path / "k" / "mlopsctl-runtime.yaml").read_text()
    assert yaml.safe_load(triton_text)["spec"]["predictor"]["model"]["storageUri"] == "${STORAGE_URI}"
    filled = string.Template(triton_text).safe_substitute(STORAGE_URI="gs://b/odd")
    isvc = yaml.safe_load(filled)
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "gs://b/odd"
    assert isvc["metadata"]["name"] == "odd-model-2"  # a DNS-1035 label for a name with '_' and '.'
    assert isvc["metadata"]["annotations"]["mlopsctl/model"] == ODD_NAME
    runtime, _ = yaml.safe_load_all(string.Template(runtime_text).safe_substitute(IMAGE="r/x:1"))
    assert runtime["spec"]["containers"][0]["image"] == "r/x:1"
    assert runtime["spec"]["containers"][0]["args"][1] == f"{ODD_NAME}/1"


@pytest.mark.parametrize("name, expected", [
    ("churn", "churn"), ("Odd_Model.2", "odd-model-2"), ("3d-model", "m-3d-model"), ("a." * 60, "a-" * 19 + "a"),
    ("x_", "x"),
])
def test_k8s_names_are_dns_1035_labels(name, expected):
    from mlopsctl.exports.kserve import k8s_name

    assert k8s_name(name) == expected
    assert DNS_1035.match(expected) and len(expected) <= 40


# ---- the container --------------------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        instr, _, args = pending.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        pending = ""
    return out


def fresh_venv(path: Path) -> tuple[Path, Path]:
    """A new virtual environment with pip that sees this environment's third-party packages (through a .pth
    of symlinks), but not mlopsctl: the Dockerfile's `pip install` then installs only the wheel, offline."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True, timeout=300)
    deps = path.parent / "deps"
    deps.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if entry.name.lower().startswith(("mlopsctl", "__editable__", "_mlopsctl")) or entry.suffix == ".pth":
            continue
        (deps / entry.name).symlink_to(entry)
    new_site = Path(subprocess.run([str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
    (new_site / "_outer_deps.pth").write_text(str(deps) + "\n")
    return path, new_site


def test_dockerfile_steps_run_without_docker_and_serve_a_prediction(projects, cli, tmp_path):
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(dist), str(REPO)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("mlopsctl-*.whl")

    out = tmp_path / "image"
    result = export_json(cli, projects["ch"], "ch@production", "-f", "docker", "-o", out, "--wheel", wheel)
    assert result["wheel"] == wheel.name
    assert {"Dockerfile", ".dockerignore", f"wheels/{wheel.name}", "project/.mlops.toml",
            "project/.mlops/mlops.db"} <= set(result["files"])
    sha = registered_sha(projects["ch"], "ch/1")
    assert sha256(out / "project" / ".mlops" / "artifacts" / "sha256" / sha[:2] / sha[2:]) == sha
    assert not [f for f in result["files"] if f.endswith((".lock", "-wal", "-shm"))]

    steps = dockerfile_instructions((out / "Dockerfile").read_text())
    kinds = [k for k, _ in steps]
    assert kinds[0] == "FROM" and re.fullmatch(r"python:3\.\d+-slim", steps[0][1])
    labels = dict(kv.split("=", 1) for kv in shlex.split(dict(steps)["LABEL"]))
    assert (labels["mlopsctl.model"], labels["mlopsctl.version"], labels["mlopsctl.onnx-sha256"]) == ("ch", "1", sha)
    user = dict(steps)["USER"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user)  # numeric and not root: runAsNonRoot can check it
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k in ("RUN", "COPY"))
    assert dict(steps)["EXPOSE"] == "8080"
    health = dict(steps)["HEALTHCHECK"]
    assert "/v2/health/ready" in health
    cmd = json.loads(dict(steps)["CMD"])
    assert cmd == ["mlopsctl", "serve", "ch/1", "--host", "0.0.0.0", "--port", "8080"]

    # the steps, with the image's paths mapped into tmp_path (useradd is skipped: it needs root)
    root = tmp_path / "rootfs"
    venv, venv_site = fresh_venv(tmp_path / "venv")
    before = {p.name for p in venv_site.iterdir()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "PIP_", "PROMETHEUS_MULTIPROC_DIR",
                                                                     "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PIP_NO_INDEX="1")
    for key, value in re.findall(r"(\w+)=(\S+)", dict(steps)["ENV"]):
        env[key] = value
    workdir = None
    copies = [[a for a in shlex.split(args) if not a.startswith("--")] for kind, args in steps if kind == "COPY"]
    image_paths = sorted({dest.rstrip("/") for _src, dest in copies}, key=len, reverse=True)

    def mapped(path: str) -> Path:
        return root / path.lstrip("/")

    for kind, args in steps:
        if kind == "COPY":
            src, dest = [a for a in shlex.split(args) if not a.startswith("--")]
            shutil.copytree(out / src, mapped(dest), dirs_exist_ok=True)
        elif kind == "RUN" and "useradd" not in args:
            command = args
            for path in image_paths:
                command = command.replace(path, str(mapped(path)))
            ran = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=600)
            assert ran.returncode == 0, (command, ran.stdout, ran.stderr)
        elif kind == "WORKDIR":
            workdir = mapped(args)
    assert not mapped("/tmp/wheels").exists()  # the RUN line removed it
    added = {p.name for p in venv_site.iterdir()} - before
    assert {n.split("-")[0] for n in added} == {"mlopsctl"}, added  # the wheel only: its dependencies were found
    installed = subprocess.run([str(venv / "bin" / "python"), "-c", "import mlopsctl; print(mlopsctl.__file__)"],
                               env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(installed).is_relative_to(venv) and shutil.which("mlopsctl", path=env["PATH"]) == str(venv / "bin" / "mlopsctl")

    port = free_port()
    argv = [a.replace("0.0.0.0", "127.0.0.1").replace("8080", str(port)) for a in cmd]
    env["MLOPS_SERVE_TOKEN"] = "s3cret"
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if request(port, "GET", "/v2/health/ready", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        healthcheck = json.loads(health.split(" CMD ", 1)[1])
        probe = subprocess.run([a.replace("8080", str(port)) for a in healthcheck], env=env, timeout=30)
        assert probe.returncode == 0

        records = training_records(projects["ch"], "churned", 5)
        body = json.dumps({"records": records}).encode()
        assert request(port, "POST", "/predict", body)[0] == 401  # the token from the environment is required
        status, _headers, answer = request(port, "POST", "/predict", body, {"Authorization": "Bearer s3cret"})
        assert status == 200, answer
        got = json.loads(answer)
        expected = _local_predict(projects["ch"], records)
        assert (got["model"], got["version"]) == ("ch", 1)
        assert got["predictions"] == expected["predictions"] and got["probabilities"] == expected["probabilities"]
    finally:
        stop_server(proc)

    from mlopsctl.predlog_format import read_requests
    from mlopsctl.store.db import close_all, open_store

    store = open_store(f"sqlite:///{workdir / '.mlops' / 'mlops.db'}")
    try:
        logged = read_requests(store, [got["request_id"]], ["plan"])
    finally:
        close_all()
    assert logged[got["request_id"]]["inputs"]["plan"] == [r["plan"] for r in records]  # the prediction log came along


def _local_predict(project: Path, records: list[dict]) -> dict:
    from mlopsctl.config import load_settings
    from mlopsctl.serving.app import create_app
    from mlopsctl.store.db import close_all

    app = create_app(load_settings({"serve.log_predictions": False}, {}, project), "ch/1", watch=False)
    try:
        r = app.test_client().post("/predict", json={"records": records})
        assert r.status_code == 200
        return r.get_json()
    finally:
        close_all()


def test_docker_export_copies_the_serving_policies_but_never_the_token(projects, cli, tmp_path, monkeypatch):
    import tomllib

    monkeypatch.setenv("MLOPS_SERVE_UNKNOWN_CATEGORY", "reject")
    monkeypatch.setenv("MLOPS_SERVE_TOKEN", "do-not-copy")
    monkeypatch.setenv("MLOPS_SERVE_PORT", "9999")
    result = export_json(cli, projects["ch"], "ch/1", "-f", "docker", "-o", tmp_path / "img")
    assert result["wheel"] is None and "wheels" not in {Path(f).parts[0] for f in result["files"]}
    assert (tmp_path / "img" / "wheels").is_dir()
    text = (tmp_path / "img" / "project" / ".mlops.toml").read_text()
    assert "do-not-copy" not in text
    cfg = tomllib.loads(text)
    assert cfg["serve"] == {"unknown_category": "reject"}
    assert cfg["registry"] == {"model_name": "ch"}
    from mlopsctl.config import load_settings

    s = load_settings({}, {}, tmp_path / "img" / "project")
    assert s.store_url == f"sqlite:///{tmp_path / 'img' / 'project' / '.mlops' / 'mlops.db'}"
    shown = json.loads(cli_ok("-C", tmp_path / "img" / "project", "models", "show", "ch/1", "--json").stdout)
    assert shown["onnx_sha256"] == registered_sha(projects["ch"], "ch/1")
    assert [m["name"] for m in json.loads(cli_ok("-C", tmp_path / "img" / "project", "models", "list", "--json").stdout)] == ["ch"]


# ---- errors ---------------------------------------------------------------------------------------------------

def test_export_errors_are_one_line_with_their_exit_codes(projects, cli, assert_error, tmp_path):
    p = projects["db"]
    assert_error(cli("-C", p, "export", "db/1", "--format", "onnx", "-o", tmp_path / "a"), 2,
                 "format 'onnx' is not one of triton, kserve, docker.")
    assert_error(cli("-C", p, "export", "nope", "--format", "triton", "-o", tmp_path / "a"), 3,
                 "model 'nope' does not exist; registered: db.")
    assert_error(cli("-C", p, "export", "db/9", "--format", "triton", "-o", tmp_path / "a"), 3,
                 "db has no version 9; versions are 1 to 1.")
    assert_error(cli("-C", p, "export", "db/1", "-f", "triton", "-o", tmp_path / "a", "--wheel", "x.whl"), 2,
                 "--wheel applies to --format docker, not triton.")
    assert_error(cli("-C", p, "export", "db/1", "-f", "docker", "-o", tmp_path / "a", "--max-batch-size", 8), 2,
                 "--max-batch-size applies to --format triton or kserve, not docker.")
    assert_error(cli("-C", p, "export", "db/1", "-f", "triton", "-o", tmp_path / "a", "--max-batch-size", 0), 2,
                 "--max-batch-size must be at least 1, got 0.")
    assert_error(cli("-C", p, "export", "db/1", "-f", "docker", "-o", tmp_path / "a", "--wheel", tmp_path / "w.whl"),
                 2, f"--wheel {tmp_path / 'w.whl'} is not an mlopsctl wheel (mlopsctl-<version>-...whl); build one "
                    "with pip wheel --no-deps -w DIR <mlopsctl source folder>.")
    missing = tmp_path / "mlopsctl-0.1.0-py3-none-any.whl"
    assert_error(cli("-C", p, "export", "db/1", "-f", "docker", "-o", tmp_path / "a", "--wheel", missing), 3,
                 f"--wheel {missing} does not exist.")
    (tmp_path / "file").write_text("x")
    assert_error(cli("-C", p, "export", "db/1", "-f", "triton", "-o", tmp_path / "file"), 4,
                 f"{tmp_path / 'file'} exists and is not a folder; choose another -o.")
    assert not (tmp_path / "a").exists()
    for inside in (p, p.parent):  # --force must never replace the project it exports from
        assert_error(cli("-C", p, "export", "db/1", "-f", "triton", "-o", inside, "--force"), 4,
                     f"{inside} holds the project's own files ({p}); choose a folder outside it for -o.")
    assert (p / ".mlops.toml").is_file()

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert_error(cli("-C", p, "export", "db/1", "-f", "triton", "-o", full), 4,
                 f"{full} is not empty; choose a new folder or pass --force to replace its content.")
    assert_error(cli("-C", p, "export", "nope", "-f", "triton", "-o", full, "--force"), 3,
                 "model 'nope' does not exist; registered: db.")
    assert (full / "keep.txt").read_text() == "mine"  # a failed export leaves the folder as it was
    r = cli("-C", p, "export", "db/1", "-f", "triton", "-o", full, "--force")
    assert r.exit_code == 0, r.stderr
    assert sorted(x.relative_to(full).as_posix() for x in full.rglob("*") if x.is_file()) == [
        "db/1/model.onnx", "db/config.pbtxt"]
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".")] == []  # no temporary folder left behind


def test_export_help_loads_no_heavy_library(tmp_path):
    from test_startup_guard import probe

    out = probe(["export", "--help"], tmp_path)
    assert out["loaded"] == [] and out["code"] == 0
