"""`mlopsctl serve` as a real server on 127.0.0.1: both fronts, granian (the default) and gunicorn
(``--server gunicorn``), and Flask's `--dev` server, started as subprocesses of the real CLI, driven by stock
tritonclient[http] (JSON and binary tensors) and by MLflow payloads over http.client; the CLI's start-up
errors; on each front: hot reload under load (zero non-200 responses while the alias moves twice), metrics
summed over workers, the bearer token, the body limit, request ids, the prediction log complete after
SIGTERM, a slow request in flight at SIGTERM answered, a killed worker replaced, keep-alive connections
spread over the workers, a clean SIGTERM shutdown.

Models (trained once for the module through the CLI): breast-cancer bc/1..3 (10-tree forests;
bc/1 at @production and @staging) and churn ch/1 (mixed types with missing values, @production).
Every server is stopped with SIGTERM in a ``finally`` and its whole process group is checked to be gone.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from typer.testing import CliRunner
from served_projects import module_isolation
from served_projects import cli_ok as _cli
from served_projects import make_served_project as _make_project
from served_projects import training_records

START_TIMEOUT = 60.0
FRONTS = ("granian", "gunicorn")
READY = {"granian": "(2 granian worker(s) × 1 thread(s))", "gunicorn": "(2 gunicorn sync worker(s))"}


# ---- module projects ----------------------------------------------------------------------------------





def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "PROMETHEUS_MULTIPROC_DIR"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from mlopsctl.store import db

    root = tmp_path_factory.mktemp("serving-server")
    with module_isolation(root):
        bc = _make_project(root, "breast-cancer", "bc", "{ n_estimators = 10 }", runs=3)
        _cli("-C", bc, "promote", "bc", 1, "--alias", "staging")
        ch = _make_project(root, "churn", "ch", "{ max_iter = 20 }", runs=1)
    db.close_all()
    return {"bc": bc, "ch": ch}


@pytest.fixture(scope="module")
def reference(projects):
    """In-process apps on the same stores: what the real servers must answer."""
    from mlopsctl.config import load_settings
    from mlopsctl.serving.app import create_app

    return {key: create_app(load_settings({"serve.log_predictions": False}, {}, projects[key]), f"{key}@production",
                            watch=False) for key in ("bc", "ch")}


# ---- processes ----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log
        self.returncode: int | None = None
        self.stop_seconds: float | None = None

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")


def stop_server(proc: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM to a server we started (its own session), SIGKILL to its whole group if it has not stopped
    after ``timeout`` s; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=10)


def _gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@contextmanager
def serving(project: Path, ref: str, *args: str, env: dict[str, str] | None = None,
            log: Path | None = None, stop_timeout: float = 30.0) -> Iterator[Server]:
    """`python -m mlopsctl -C PROJECT serve REF --port N ARGS...` until ready; on exit SIGTERM, wait up to
    ``stop_timeout`` (then SIGKILL the process group) and check that no process of it is left."""
    port = free_port()
    log = log or project.parent / f"serve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlopsctl", "-C", str(project), "serve", ref, "--port", str(port),
                                 *args], stdout=out, stderr=subprocess.STDOUT, env=env or _clean_env(), cwd=project,
                                start_new_session=True)
    server = Server(proc, port, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode} before it was ready:\n{server.output}")
            try:
                if request(port, "GET", "/v2/health/ready", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not ready after {START_TIMEOUT} s:\n{server.output}")
            time.sleep(0.1)
        yield server
    finally:
        t0 = time.monotonic()
        server.returncode = stop_server(proc, stop_timeout)
        server.stop_seconds = time.monotonic() - t0
        deadline = time.monotonic() + 10
        while not _gone(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _gone(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"processes of the server were left behind after SIGTERM:\n{server.output}")


@pytest.fixture(scope="module", params=FRONTS)
def bc_server(projects, request) -> Iterator[Server]:
    """Each front (2 workers) serving bc@production for the whole module."""
    with serving(projects["bc"], "bc@production", "--server", request.param) as server:
        assert READY[request.param] in " ".join(server.output.split())  # rich wraps
        yield server


@pytest.fixture
def triton(request):
    import tritonclient.http as httpclient

    clients = []

    def make(port: int):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


def _v2_reference(app, records, outputs: list[str] | None = None) -> dict[str, Any]:
    """The in-process app's V2 JSON answer for ``records``."""
    served = app.extensions["mlopsctl"].model
    inputs = []
    for meta in served.inputs:
        col = served.column_by_input[meta["name"]]
        values = [r[col] for r in records]
        if meta["datatype"] == "FP32":
            values = [float(np.nan if v is None else v) for v in values]
        inputs.append({"name": meta["name"], "datatype": meta["datatype"], "shape": [len(records), 1], "data": values})
    r = app.test_client().post(f"/v2/models/{served.name}/infer", data=json.dumps({"inputs": inputs}))
    assert r.status_code == 200, r.get_json()
    return {o["name"]: o for o in r.get_json()["outputs"]}


def _triton_inputs(served, records, *, binary: bool):
    import tritonclient.http as httpclient

    inputs = []
    for meta in served.inputs:
        col = served.column_by_input[meta["name"]]
        values = [r[col] for r in records]
        if meta["datatype"] == "BYTES":
            arr = np.array([[("" if v is None else v).encode()] for v in values], dtype=np.object_)
        else:
            arr = np.array([[np.nan if v is None else float(v)] for v in values], dtype=np.float32)
        inp = httpclient.InferInput(meta["name"], [len(records), 1], meta["datatype"])
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    return inputs


def _check_triton(client, app, records, model: str) -> None:
    """Health, metadata and inference in JSON and binary modes equal the in-process app's answers."""
    import tritonclient.http as httpclient

    served = app.extensions["mlopsctl"].model
    ref_client = app.test_client()
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(model)
    assert client.is_model_ready(model, "1")
    assert not client.is_model_ready(model, "7")
    assert client.get_server_metadata() == ref_client.get("/v2").get_json()
    assert client.get_model_metadata(model) == ref_client.get(f"/v2/models/{model}").get_json()
    assert client.get_model_metadata(model, "1") == ref_client.get(f"/v2/models/{model}").get_json()

    want = _v2_reference(app, records)
    want_labels = [s.encode() for s in want["label"]["data"]]
    want_proba = np.asarray(want["probabilities"]["data"], dtype=np.float32).reshape(want["probabilities"]["shape"])
    for binary_in in (True, False):
        for binary_out in (True, False):
            outputs = [httpclient.InferRequestedOutput("label", binary_data=binary_out),
                       httpclient.InferRequestedOutput("probabilities", binary_data=binary_out)]
            result = client.infer(model, _triton_inputs(served, records, binary=binary_in), outputs=outputs,
                                  request_id=f"tc-{binary_in}-{binary_out}")
            assert result.get_response()["id"] == f"tc-{binary_in}-{binary_out}"
            assert result.get_response()["model_version"] == "1"
            # tritonclient hands BYTES back as bytes from binary outputs and as str from JSON ones
            labels = [x if isinstance(x, bytes) else x.encode() for x in result.as_numpy("label").ravel()]
            assert labels == want_labels, (binary_in, binary_out)
            np.testing.assert_array_equal(result.as_numpy("probabilities"), want_proba)
    # only one output, on a versioned path
    result = client.infer(model, _triton_inputs(served, records, binary=True), model_version="1",
                          outputs=[httpclient.InferRequestedOutput("probabilities")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities"]
    assert result.as_numpy("label") is None
    np.testing.assert_array_equal(result.as_numpy("probabilities"), want_proba)


# ---- both fronts, tritonclient -------------------------------------------------------------------------

def test_tritonclient_against_each_front(projects, reference, bc_server, triton):
    records = training_records(projects["bc"], "diagnosis", 30)
    _check_triton(triton(bc_server.port), reference["bc"], records, "bc")


def test_tritonclient_errors_are_v2_errors(bc_server, triton):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = triton(bc_server.port)
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("nope")
    assert e.value.status() == "404"
    assert e.value.message() == "model 'nope' is not served here; this server serves 'bc'."
    inp = httpclient.InferInput("mean_radius", [1, 1], "FP32")
    inp.set_data_from_numpy(np.array([[14.0]], dtype=np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("bc", [inp])
    assert e.value.status() == "400"
    assert e.value.message().startswith("missing column(s) 'mean_texture', ")


# ---- both fronts, MLflow payloads ----------------------------------------------------------------------

def _json(port: int, method: str, path: str, body: Any = None, ctype: str | None = "application/json",
          raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    status, headers, payload = request(port, method, path, data, {"Content-Type": ctype} if ctype else {})
    return status, headers, json.loads(payload) if payload.strip() else payload


def test_mlflow_payloads_against_each_front(projects, reference, bc_server):
    from mlopsctl import __version__

    port = bc_server.port
    records = training_records(projects["bc"], "diagnosis", 12)
    names = reference["bc"].extensions["mlopsctl"].model.contract.feature_names
    want = reference["bc"].test_client().post("/predict", json={"records": records}).get_json()["predictions"]
    rows = [[r[n] for n in names] for r in records]
    for body in ({"dataframe_split": {"columns": names, "data": rows}}, {"dataframe_records": records},
                 {"instances": records}, {"instances": rows}, {"inputs": {n: [r[n] for r in records] for n in names}},
                 {"inputs": rows}):
        status, headers, payload = _json(port, "POST", "/invocations", body)
        assert (status, payload) == (200, {"predictions": want}), body.keys()
        assert headers["content-type"] == "application/json"
    status, _, payload = _json(port, "POST", "/invocations", {"dataframe_records": records},
                               ctype="application/json; charset=utf-8")
    assert (status, payload) == (200, {"predictions": want})
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([names, *rows])
    status, _, payload = _json(port, "POST", "/invocations", ctype="text/csv", raw=buf.getvalue().encode())
    assert (status, payload) == (200, {"predictions": want})

    status, _, payload = _json(port, "POST", "/invocations", {"dataframe_records": records},
                               ctype="application/json; charset=latin-1")
    assert (status, payload) == (415, {"error_code": "BAD_REQUEST", "message": "the scoring server only supports UTF-8."})
    status, _, payload = _json(port, "POST", "/invocations", {"instances": rows, "inputs": rows})
    assert status == 400
    assert payload == {"error_code": "BAD_REQUEST", "message": (
        "the input must be a JSON dictionary with exactly one of the input fields 'dataframe_split', "
        "'dataframe_records', 'instances', 'inputs'; got 'instances', 'inputs'.")}
    status, _, payload = _json(port, "POST", "/invocations", raw=b"{nope")
    assert status == 400
    assert payload["error_code"] == "BAD_REQUEST"
    assert payload["message"].startswith("the request body is not valid JSON (")
    for path in ("/ping", "/health"):
        assert request(port, "GET", path)[::2] == (200, b"\n")
    assert request(port, "GET", "/version")[::2] == (200, __version__.encode())


def test_predict_and_metrics_across_workers(projects, bc_server):
    """/metrics on either front sums every worker (prometheus_client multiprocess mode); each answer carries
    the client's request id."""
    from prometheus_client.parser import text_string_to_metric_families

    def predict_200s() -> float:
        status, _, body = request(bc_server.port, "GET", "/metrics")
        assert status == 200
        return sum(s.value for fam in text_string_to_metric_families(body.decode()) for s in fam.samples
                   if s.name == "mlops_requests_total" and s.labels == {"endpoint": "predict", "status": "200"})

    before = predict_200s()
    record = json.dumps({"records": training_records(projects["bc"], "diagnosis", 1)}).encode()
    for i in range(20):
        status, headers, body = request(bc_server.port, "POST", "/predict", record, {"X-Request-ID": f"gun-{i}"})
        assert status == 200
        assert headers["x-request-id"] == f"gun-{i}"
        assert json.loads(body)["version"] == 1
    assert predict_200s() - before == 20
    status, headers, body = request(bc_server.port, "GET", "/nope")
    assert (status, headers["content-type"]) == (404, "application/json")


@pytest.mark.parametrize("args, ready", [
    ((), "(1 gunicorn sync worker(s))"),  # serve.threads = 1 by default: sync workers
    (("--threads", "3"), "(1 gunicorn gthread worker(s) × 3 thread(s))"),
])
def test_workers_and_threads_reach_gunicorn(projects, args, ready):
    """--workers / --threads (serve.threads) are what gunicorn runs, and the server answers; sync workers
    close the connection after each answer, gthread workers keep it alive."""
    record = json.dumps({"records": training_records(projects["bc"], "diagnosis", 1)}).encode()
    with serving(projects["bc"], "bc@production", "--server", "gunicorn", "--workers", "1", *args) as server:
        assert ready in " ".join(server.output.split())  # rich wraps
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("POST", "/predict", record)
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["version"] == 1
        assert (resp.getheader("Connection") == "close") == (not args)
        conn.close()


@pytest.mark.parametrize("front", FRONTS)
def test_predictions_reach_the_store(projects, front):
    """On either front (2 workers, one log writer each) every request answered — the last ones just before
    SIGTERM too — is in the prediction log after the stop, with the inputs it was sent."""
    from mlopsctl.config import load_settings
    from mlopsctl.predlog_format import read_requests
    from mlopsctl.store.db import open_store

    records = training_records(projects["bc"], "diagnosis", 5)
    ids = []
    with serving(projects["bc"], "bc@production", "--server", front) as server:
        assert READY[front] in " ".join(server.output.split())
        for i in range(40):
            rid = f"logged-{i}"
            status, headers, _ = request(server.port, "POST", "/predict",
                                         json.dumps({"records": records[:1 + i % 5]}).encode(), {"X-Request-ID": rid})
            assert status == 200 and headers["x-request-id"] == rid
            ids.append(rid)
    assert server.returncode in (0, -signal.SIGTERM)
    settings = load_settings({}, {}, projects["bc"])
    logged = read_requests(open_store(settings.store_url, settings.store.busy_timeout_ms), ids, list(records[0]))
    assert set(logged) == set(ids)
    for i, rid in enumerate(ids):
        assert logged[rid]["inputs"]["mean_radius"] == [r["mean_radius"] for r in records[:1 + i % 5]]


# ---- --dev --------------------------------------------------------------------------------------------

def test_dev_server_mixed_types_with_tritonclient_and_mlflow(projects, reference, triton):
    records = training_records(projects["ch"], "churned", 40)
    complete = [r for r in records if None not in r.values()]
    with serving(projects["ch"], "ch@production", "--dev") as server:
        assert "Flask development server" in server.output
        _check_triton(triton(server.port), reference["ch"], complete, "ch")
        # missing values through V2 binary tensors (NaN / '') and through MLflow CSV
        with_nulls = [r for r in records if r["age"] is None or r["plan"] is None][:6]
        want = reference["ch"].test_client().post("/predict", json={"records": with_nulls}).get_json()
        result = triton(server.port).infer("ch", _triton_inputs(reference["ch"].extensions["mlopsctl"].model,
                                                                 with_nulls, binary=True))
        assert [s.decode() for s in result.as_numpy("label")] == want["predictions"]
        names = list(records[0])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([names, *[["" if r[n] is None else r[n] for n in names]
                                                                  for r in with_nulls]])
        status, _, payload = _json(server.port, "POST", "/invocations", ctype="text/csv", raw=buf.getvalue().encode())
        assert (status, payload) == (200, {"predictions": want["predictions"]})
    assert server.returncode in (0, -signal.SIGTERM)


# ---- CLI errors ---------------------------------------------------------------------------------------

def test_unknown_model_exits_3(projects, cli, assert_error):
    result = cli("-C", projects["bc"], "serve", "nope@production", "--port", free_port())
    assert_error(result, 3, "model 'nope' does not exist; registered: bc.")
    result = cli("-C", projects["bc"], "serve", "bc@nowhere", "--port", free_port())
    assert_error(result, 3, "bc has no alias 'nowhere'; its aliases are production, staging.")
    result = cli("-C", projects["bc"], "serve", "bc/9", "--port", free_port())
    assert_error(result, 3, "bc has no version 9; versions are 1 to 3.")


@pytest.mark.parametrize("front", FRONTS)
def test_cuda_on_a_cpu_only_machine_exits_5(projects, cli, assert_error, front):
    """The CUDA check runs before any worker starts, whichever the front (in-process here: a front that
    started workers would not return)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        pytest.skip("this machine has CUDA")
    result = cli("-C", projects["bc"], "serve", "bc@production", "--device", "cuda", "--server", front,
                 "--port", free_port())
    assert_error(result, 5, f"--device cuda needs CUDAExecutionProvider, but this onnxruntime offers "
                            f"{', '.join(available)}; install onnxruntime-gpu in place of onnxruntime (README, "
                            "'On a GPU') on a machine with CUDA, or use --device cpu.")
    result = cli("-C", projects["bc"], "serve", "bc@production", "--device", "tpu", "--port", free_port())
    assert_error(result, 5, "serve.device in a command-line flag must be one of cpu, cuda, auto; got 'tpu'.")
    result = cli("-C", projects["bc"], "serve", "bc@production", "--server", "uwsgi", "--port", free_port())
    assert_error(result, 5, "serve.server in a command-line flag must be one of granian, gunicorn; got 'uwsgi'.")


def test_port_in_use_exits_2(projects):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "mlopsctl", "-C", str(projects["bc"]), "serve", "bc@production",
                               "--port", str(port)], capture_output=True, text=True, env=_clean_env(), timeout=60,
                              start_new_session=True)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr == f"Error: 127.0.0.1:{port} is already in use; stop the other server or pass --port.\n"
    assert proc.stdout == ""


# ---- what the server loads ------------------------------------------------------------------------------

# the ORM and what maps or uses it: the server resolves, polls, logs and reads monitoring results through
# SQLAlchemy Core (mlopsctl.registry_core, mlopsctl.store.tables); and rich (the ready line is plain text)
NOT_IN_THE_SERVER = ("sqlalchemy.orm", "mlopsctl.store.models", "mlopsctl.registry", "rich")


def _imported(output: str) -> set[str]:
    """The modules that ``PYTHONPROFILEIMPORTTIME`` reports in a server's log (parent and workers)."""
    return {m.group(1) for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", output, re.MULTILINE)}


def test_the_server_loads_no_orm(projects):
    """From the preflight to the stop (a hot reload, the prediction log written, /metrics scraped with a
    recorded drift result), no process of the server imports SQLAlchemy's ORM or the mapped classes (~0.18 s
    of start-up and their memory in every process), nor rich; the same run answers, reloads and logs."""
    from mlopsctl.config import load_settings
    from mlopsctl.monitoring.window import record_result
    from mlopsctl.predlog_format import read_requests
    from mlopsctl.store.db import open_store

    bc = projects["bc"]
    settings = load_settings({}, {}, bc)
    store = open_store(settings.store_url, settings.store.busy_timeout_ms)
    record_result(store, "bc", 1, "drift", 0.25, {"features": 1})
    body = json.dumps({"records": training_records(bc, "diagnosis", 2)}).encode()
    _cli("-C", bc, "promote", "bc", 1, "--alias", "staging", "--force")
    env = _clean_env(MLOPS_SERVE_RELOAD_INTERVAL="0.2", PYTHONPROFILEIMPORTTIME="1")
    ids = []
    with serving(bc, "bc@staging", env=env) as server:
        for i in range(6):
            status, _, payload = request(server.port, "POST", "/predict", body, {"X-Request-ID": f"orm-{i}"})
            assert status == 200 and json.loads(payload)["version"] == 1
            ids.append(f"orm-{i}")
        _cli("-C", bc, "promote", "bc", 2, "--alias", "staging", "--force")
        deadline = time.monotonic() + 20
        while json.loads(request(server.port, "POST", "/predict", body)[2])["version"] != 2:
            assert time.monotonic() < deadline, server.output[-2000:]
            time.sleep(0.05)
        status, _, metrics = request(server.port, "GET", "/metrics")
        assert status == 200
        assert 'mlops_drift_share{model="bc",version="1"} 0.25' in metrics.decode()
    assert server.returncode in (0, -signal.SIGTERM)
    logged = read_requests(store, ids, list(training_records(bc, "diagnosis", 1)[0]))
    assert set(logged) == set(ids)
    imported = _imported(server.output)
    assert {"sqlalchemy", "mlopsctl.registry_core", "mlopsctl.store.tables", "onnxruntime", "flask"} <= imported
    assert sorted(m for m in imported if any(m == n or m.startswith(n + ".") for n in NOT_IN_THE_SERVER)) == []
    _cli("-C", bc, "promote", "bc", 1, "--alias", "staging", "--force")


# ---- hot reload under load ----------------------------------------------------------------------------

@pytest.mark.parametrize("front", FRONTS)
def test_hot_reload_under_load(projects, front):
    """4 clients send /predict without pause to each front following bc@staging (polled every 0.2 s) while the
    alias moves 1 -> 2 -> 3 through the CLI: every response is a 200, and all clients end on version 3."""
    bc = projects["bc"]
    body = json.dumps({"records": training_records(bc, "diagnosis", 3)}).encode()
    env = _clean_env(MLOPS_SERVE_RELOAD_INTERVAL="0.2")
    stop = threading.Event()
    seen: list[list[tuple[int, int | None]]] = [[] for _ in range(4)]
    failures: list[str] = []

    def client(k: int, port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            while not stop.is_set():
                try:
                    conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
                    r = conn.getresponse()
                    payload = r.read()
                except (OSError, http.client.HTTPException) as e:  # a dropped connection is a failure too
                    failures.append(f"client {k}: {type(e).__name__}: {e}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    continue
                version = json.loads(payload).get("version") if r.status == 200 else None
                if r.status != 200:
                    failures.append(f"client {k}: {r.status} {payload[:200]!r}")
                seen[k].append((r.status, version))
        finally:
            conn.close()

    def wait_for(predicate, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; failures: {failures[:5]}"
            time.sleep(0.05)

    def promote(version: int) -> None:
        r = CliRunner().invoke(__import__("mlopsctl.cli.main", fromlist=["app"]).app,
                               ["-C", str(bc), "promote", "bc", str(version), "--alias", "staging", "--force"])
        assert r.exit_code == 0, (r.stdout, r.stderr)

    _cli("-C", bc, "promote", "bc", 1, "--alias", "staging", "--force")
    with serving(bc, "bc@staging", "--server", front, env=env) as server:
        threads = [threading.Thread(target=client, args=(k, server.port)) for k in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: all(len(s) >= 5 for s in seen), "every client to get answers")
            promote(2)
            wait_for(lambda: any(v == 2 for s in seen for _, v in s), "a response from version 2")
            promote(3)
            wait_for(lambda: all(len(s) >= 5 and all(v == 3 for _, v in s[-5:]) for s in seen),
                     "every client to get version 3")
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    total = sum(len(s) for s in seen)
    assert total >= 40
    assert {st for s in seen for st, _ in s} == {200}
    assert {v for s in seen for _, v in s} <= {1, 2, 3}
    assert all(s[-1] == (200, 3) for s in seen)
    assert "hot reload: bc@staging now serves version 3" in server.output


# ---- worker lifecycle and shutdown ---------------------------------------------------------------------

def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the workers")
@pytest.mark.parametrize("front, sig", [("granian", signal.SIGKILL), ("gunicorn", signal.SIGKILL),
                                        ("gunicorn", signal.SIGTERM)])
def test_a_worker_exit_leaves_the_server_serving(projects, front, sig):
    """Either front replaces a worker that dies (kill -9: a crash) or, on gunicorn, exits (max-requests,
    an operator's SIGTERM): the other worker keeps answering, the replacement boots, and /metrics still
    aggregates."""
    record = json.dumps({"records": training_records(projects["bc"], "diagnosis", 1)}).encode()
    with serving(projects["bc"], "bc@production", "--server", front) as server:
        master = server.proc.pid
        deadline = time.monotonic() + 30
        while len(_children(master)) < 2:
            assert time.monotonic() < deadline, "the two workers did not start"
            time.sleep(0.1)
        first = sorted(_children(master))
        os.kill(first[0], sig)
        deadline = time.monotonic() + 30
        while not (first[0] not in _children(master) and len(_children(master)) == 2):
            assert server.proc.poll() is None, f"the server stopped:\n{server.output}"
            assert time.monotonic() < deadline, f"no replacement worker:\n{server.output}"
            time.sleep(0.1)
        answers = []
        for method, path, body in [("POST", "/predict", record)] * 20 + [("GET", "/metrics", None)]:
            try:
                answers.append(request(server.port, method, path, body, timeout=5)[0])
            except OSError as e:
                answers.append(type(e).__name__)
            if answers[-1] != 200:
                break  # a broken server can hold each request until the timeout: one failure is enough
        assert answers == [200] * 21, server.output[-3000:]


# ---- shutdown -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("front", FRONTS)
def test_sigterm_shuts_down_cleanly(projects, front):
    """SIGTERM: the workers finish and exit normally, in seconds (no abort at exit, no kill after the 10 s
    graceful timeout)."""
    record = json.dumps({"records": training_records(projects["bc"], "diagnosis", 1)}).encode()
    with serving(projects["bc"], "bc@production", "--server", front, stop_timeout=6) as server:
        assert request(server.port, "POST", "/predict", record)[0] == 200
    assert server.returncode == 0, (server.returncode, server.stop_seconds, server.output)
    out = server.output
    assert "SIGABRT" not in out and "terminate called" not in out, out
    assert "SIGKILL" not in out, out
    assert server.stop_seconds < 5, (server.stop_seconds, out)


# ---- the token, the body limit, draining, keep-alive, on each front ------------------------------------

@pytest.mark.parametrize("front", FRONTS)
def test_token_and_body_limit_on_each_front(projects, front):
    """serve.token guards /predict, /invocations and /metrics (health stays open); serve.max_body_mb answers
    413 in the route's protocol, by Content-Length and for a chunked body; the server keeps serving."""
    records = training_records(projects["bc"], "diagnosis", 2)
    small = json.dumps({"records": records}).encode()
    big = json.dumps({"records": records * 200}).encode()  # ~ 0.2 MB
    env = _clean_env(MLOPS_SERVE_TOKEN="s3cret", MLOPS_SERVE_MAX_BODY_MB="0.05")
    auth = {"Authorization": "Bearer s3cret"}
    with serving(projects["bc"], "bc@production", "--server", front, env=env) as server:
        port = server.port
        status, headers, body = request(port, "POST", "/predict", small, {"X-Request-ID": "no-token"})
        assert (status, headers["www-authenticate"], headers["x-request-id"]) == (401, "Bearer", "no-token")
        assert json.loads(body)["error"] == "Unauthorized"
        assert request(port, "POST", "/predict", small, {"Authorization": "Bearer nope"})[0] == 401
        assert request(port, "GET", "/metrics")[0] == 401
        assert request(port, "POST", "/invocations", json.dumps({"dataframe_records": records}).encode(),
                       {"Content-Type": "application/json"})[0] == 401
        assert request(port, "GET", "/v2/health/live")[0] == 200
        status, _, body = request(port, "POST", "/predict", small, auth)
        assert status == 200 and len(json.loads(body)["predictions"]) == 2
        status, headers, body = request(port, "POST", "/predict", big, {**auth, "X-Request-ID": "too-big"})
        assert status == 413
        assert json.loads(body) == {"error": "RequestEntityTooLarge", "request_id": "too-big",
                                    "message": "the request body is larger than 0.05 MiB (serve.max_body_mb)."}
        status, _, body = request(port, "POST", "/invocations",
                                  json.dumps({"dataframe_records": records * 200}).encode(),
                                  {**auth, "Content-Type": "application/json"})
        assert (status, json.loads(body)["error_code"]) == (413, "BAD_REQUEST")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:  # no Content-Length: the limit holds on the bytes that arrive
            try:
                conn.request("POST", "/predict", body=iter([big[i:i + 8192] for i in range(0, len(big), 8192)]),
                             headers=auth, encode_chunked=True)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may answer and close before the rest arrives: its answer is read below
            r = conn.getresponse()
            assert (r.status, json.loads(r.read())["error"]) == (413, "RequestEntityTooLarge")
        finally:
            conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:  # a chunked body under the limit is read whole
            conn.request("POST", "/predict", body=iter([small[:10], small[10:]]), headers=auth, encode_chunked=True)
            r = conn.getresponse()
            assert (r.status, len(json.loads(r.read())["predictions"])) == (200, 2)
        finally:
            conn.close()
        status, _, body = request(port, "GET", "/metrics", headers=auth)
        assert status == 200 and b'mlops_requests_total{endpoint="predict",status="413"} 2.0' in body


@pytest.mark.parametrize("front", FRONTS)
def test_sigterm_lets_a_request_in_flight_finish(projects, front):
    """A big request whose body is still arriving when SIGTERM comes gets its answer, and it is in the
    prediction log after the stop."""
    from mlopsctl.config import load_settings
    from mlopsctl.predlog_format import read_requests
    from mlopsctl.store.db import open_store

    records = training_records(projects["bc"], "diagnosis", 20) * 500  # 10,000 rows, ~ 8 MB
    body = json.dumps({"records": records}).encode()
    rid = f"in-flight-{front}"
    with serving(projects["bc"], "bc@production", "--server", front) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        try:
            sock.sendall(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\nX-Request-ID: {rid}\r\n\r\n".encode() + body[:4096])
            time.sleep(0.5)
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert server.proc.poll() is None, "the server exited with a request in flight"
            sock.sendall(body[4096:])
            reply = http.client.HTTPResponse(sock)
            reply.begin()
            payload = json.loads(reply.read())
        finally:
            sock.close()
        assert reply.status == 200, payload
        assert payload["request_id"] == rid and len(payload["predictions"]) == 10_000
        with pytest.raises(OSError):  # no new connection is taken once the stop began
            request(server.port, "GET", "/v2/health/ready", timeout=2)
    assert server.returncode in (0, -signal.SIGTERM), server.output
    settings = load_settings({}, {}, projects["bc"])
    logged = read_requests(open_store(settings.store_url, settings.store.busy_timeout_ms), [rid], list(records[0]))
    assert logged[rid]["inputs"]["mean_radius"] == [r["mean_radius"] for r in records]


def _socket_owner(workers: set[int], server_port: int, client_port: int) -> int | None:
    """The worker process holding the server side of the loopback connection from ``client_port``."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":"), fields[2].split(":")
        if int(local[1], 16) == server_port and int(remote[1], 16) == client_port:
            inode = fields[9]
    assert inode is not None, f"no server socket for client port {client_port}"
    for pid in workers:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs /proc to find the sockets' workers")
def test_keep_alive_connections_spread_over_workers(projects):
    """granian: 16 keep-alive clients, each connection open over several requests, are held by both workers
    (which process holds each server socket, read from /proc). gunicorn's sync workers close every
    connection; its gthread workers put all 16 on one worker (measured: benchmarks/RESULTS.md)."""
    record = json.dumps({"records": training_records(projects["bc"], "diagnosis", 1)}).encode()
    with serving(projects["bc"], "bc@production", "--server", "granian") as server:
        workers = _children(server.proc.pid)
        assert len(workers) == 2, workers
        conns = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(16)]
        try:
            for _ in range(3):
                for c in conns:
                    c.request("POST", "/predict", record)
                    r = c.getresponse()
                    assert r.status == 200 and json.loads(r.read())["version"] == 1
            ports = [c.sock.getsockname()[1] for c in conns]  # still the first connection: kept alive
            owners = [_socket_owner(workers, server.port, p) for p in ports]
        finally:
            for c in conns:
                c.close()
    assert None not in owners
    assert set(owners) == workers, owners


def test_a_new_granian_worker_drops_the_live_gauges_of_dead_workers_only(tmp_path, monkeypatch):
    """granian has no child_exit hook: each new worker removes the live-gauge files of workers that are gone
    (their queue depth must not be summed any more), and keeps the live ones' and every counter (a dead
    worker's requests still count)."""
    from mlopsctl.serving.server import _forget_dead_workers

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead, alive = int(gone.stdout), os.getpid()
    files = [f"gauge_livesum_{dead}.db", f"gauge_liveall_{dead}.db", f"gauge_livesum_{alive}.db",
             f"counter_{dead}.db", f"gauge_all_{dead}.db"]
    for name in files:
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    _forget_dead_workers()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files[2:])


def test_the_start_runs_without_gc_and_leaves_it_on(projects, monkeypatch, cli, assert_error):
    """The preflight, the imports before the fork and a worker's app build run with the cyclic GC off (its
    passes over the start-up's objects were ~10 % of the imports' time); after them, and after a start
    that fails, it is on again, and a worker's objects are frozen out of later passes."""
    import gc

    from mlopsctl.config import load_settings
    from mlopsctl.serving import app as app_module, server

    seen: dict[str, bool] = {}
    preflight, create_app = server.preflight, app_module.create_app

    def watched_preflight(*args, **kwargs):
        seen["preflight"] = gc.isenabled()
        return preflight(*args, **kwargs)

    def watched_create_app(*args, **kwargs):
        seen["create_app"] = gc.isenabled()
        return create_app(*args, **kwargs)

    monkeypatch.setattr(server, "preflight", watched_preflight)
    monkeypatch.setattr(app_module, "create_app", watched_create_app)
    assert gc.isenabled()
    result = cli("-C", projects["bc"], "serve", "bc@nowhere", "--port", free_port())
    assert_error(result, 3, "bc has no alias 'nowhere'; its aliases are production, staging.")
    assert seen == {"preflight": False} and gc.isenabled()

    frozen = gc.get_freeze_count()
    try:
        app = server.worker_app(load_settings({"serve.log_predictions": False}, {}, projects["bc"]), "bc/1", 1, "cpu")
        assert seen == {"preflight": False, "create_app": False} and gc.isenabled()
        assert gc.get_freeze_count() > frozen
        assert app.test_client().post("/predict", json={"records": training_records(projects["bc"], "diagnosis", 1)}
                                      ).get_json()["version"] == 1
    finally:
        gc.unfreeze()
        sys.setswitchinterval(0.005)
