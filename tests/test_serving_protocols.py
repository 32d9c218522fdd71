"""The two standard protocols of `mlopsctl serve`, through the Flask test client.

Open Inference Protocol V2 (KServe/Triton): metadata that equals the real ONNX graph, versioned paths,
JSON tensors (nested and flat), named inputs, output selection, id echo, no Content-Type, the binary tensor
data extension built by hand (FP32 little-endian; BYTES with 4-byte length prefixes), binary outputs, and
every error as ``{"error": str}`` with a 4xx. MLflow scoring: /invocations in each of its input formats,
CSV and Parquet, Content-Type rules, the exactly-one-key rule, LLM keys, errors as
``{"error_code", "message"}``; /ping, /health and /version. Facts: ../shared/PROTOCOLS.md.

Models (trained once for the module through the CLI): breast-cancer (30 FP32 inputs; bc/1 @production)
and churn (FP32 + BYTES inputs, missing values; ch/1 @production).
"""

from __future__ import annotations

import csv
import io
import json
import re
import struct
from typing import Any

import numpy as np
import pytest
from served_projects import module_isolation
from served_projects import make_served_project as _make_project
from served_projects import training_records

ORT_TO_V2 = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64", "tensor(string)": "BYTES",
             "tensor(bool)": "BOOL", "tensor(int32)": "INT32"}
HEADER = "Inference-Header-Content-Length"
ONE_KEY = ("the input must be a JSON dictionary with exactly one of the input fields "
           "'dataframe_split', 'dataframe_records', 'instances', 'inputs'")


# ---- module projects and apps -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory):
    """{"bc": app, "ch": app, "bc_project": Path, "ch_project": Path}, built once for the module."""
    from mlopsctl.config import load_settings
    from mlopsctl.serving.app import create_app
    from mlopsctl.store import db

    root = tmp_path_factory.mktemp("serving-protocols")
    out: dict[str, Any] = {}
    with module_isolation(root):
        for key, example, params in (("bc", "breast-cancer", "{ n_estimators = 10 }"), ("ch", "churn", "{ max_iter = 20 }")):
            project = _make_project(root, example, key, params)
            out[f"{key}_project"] = project
            out[key] = create_app(load_settings({"serve.log_predictions": False}, {}, project), f"{key}@production",
                                  watch=False)
    yield out
    db.close_all()


@pytest.fixture
def bc(apps):
    return apps["bc"].test_client()


@pytest.fixture
def ch(apps):
    return apps["ch"].test_client()


@pytest.fixture(scope="module")
def bc_rows(apps) -> list[dict[str, Any]]:
    return training_records(apps["bc_project"], "diagnosis", 8)


@pytest.fixture(scope="module")
def ch_rows(apps) -> list[dict[str, Any]]:
    """Complete churn rows (JSON tensors have no null) that get both labels."""
    return training_records(apps["ch_project"], "churned", 40, complete=True)


@pytest.fixture(scope="module")
def session(apps):
    return {k: apps[k].extensions["mlopsctl"].model.scorer.session for k in ("bc", "ch")}


def _predict(client, records) -> dict[str, Any]:
    r = client.post("/predict", json={"records": records})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _v2_inputs(served, records, *, nested: bool = True, datatype: str | None = None) -> list[dict[str, Any]]:
    inputs = []
    for meta in served.inputs:
        col = served.column_by_input[meta["name"]]
        values = [r[col] for r in records]
        if meta["datatype"] == "FP32":
            values = [float(v) for v in values]
        inputs.append({"name": meta["name"], "datatype": datatype or meta["datatype"],
                       "shape": [len(records), 1] if nested else [len(records)],
                       "data": [[v] for v in values] if nested else values})
    return inputs


def _infer(client, body: Any, path: str = "/v2/models/bc/infer", **headers: str):
    return client.post(path, data=json.dumps(body).encode(), headers=headers)


def _proba(out: dict[str, Any]) -> np.ndarray:
    return np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])


# ---- V2: server and model metadata --------------------------------------------------------------------

def test_server_metadata_and_health(bc):
    from mlopsctl import __version__

    r = bc.get("/v2")
    assert (r.status_code, r.get_json()) == (200, {"name": "mlopsctl", "version": __version__,
                                                   "extensions": ["binary_tensor_data"]})
    assert (bc.get("/v2/health/live").status_code, bc.get("/v2/health/live").get_json()) == (200, {"live": True})
    assert (bc.get("/v2/health/ready").status_code, bc.get("/v2/health/ready").get_json()) == (200, {"ready": True})
    for path in ("/v2/models/bc/ready", "/v2/models/bc/versions/1/ready"):
        r = bc.get(path)
        assert (r.status_code, r.get_json()) == (200, {"name": "bc", "ready": True})


@pytest.mark.parametrize("key", ["bc", "ch"])
def test_model_metadata_is_the_real_onnx_graph(apps, session, key):
    client = apps[key].test_client()
    sess = session[key]

    def tensors(nodes):
        return [{"name": n.name, "datatype": ORT_TO_V2[n.type],
                 "shape": [d if isinstance(d, int) else -1 for d in n.shape]} for n in nodes]

    for path in (f"/v2/models/{key}", f"/v2/models/{key}/versions/1"):
        r = client.get(path)
        assert r.status_code == 200
        meta = r.get_json()
        assert meta["name"] == key
        assert meta["versions"] == ["1"]
        assert meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == tensors(sess.get_inputs())
        assert meta["outputs"] == tensors(sess.get_outputs())
        assert meta["parameters"]["execution_provider"] == "CPUExecutionProvider"
        assert meta["parameters"]["placement"] == "CPUExecutionProvider runs every node"
        assert "node_placement" not in meta["parameters"]  # read from the profiler on GPU sessions only
        assert re.fullmatch(r"[0-9a-f]{64}", meta["parameters"]["onnx_sha256"])
    expected = {"ch": {"tenure_months": "FP32", "plan": "BYTES", "region": "BYTES", "contract": "BYTES",
                       "has_support": "FP32", "age": "FP32", "monthly_charges": "FP32"}}
    if key in expected:
        assert {t["name"]: t["datatype"] for t in meta["inputs"]} == expected[key]
    assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [("label", "BYTES"), ("probabilities", "FP32")]


@pytest.mark.parametrize("method, path", [
    ("GET", "/v2/models/bc/versions/2"), ("GET", "/v2/models/bc/versions/2/ready"),
    ("POST", "/v2/models/bc/versions/2/infer"), ("GET", "/v2/models/bc/versions/latest"),
])
def test_wrong_version_is_404(bc, bc_rows, apps, method, path):
    body = {"inputs": _v2_inputs(apps["bc"].extensions["mlopsctl"].model, bc_rows[:1])}
    r = bc.open(path, method=method, data=json.dumps(body) if method == "POST" else None)
    assert r.status_code == 404
    version = path.split("/")[5]
    assert r.get_json() == {"error": f"bc version {version} is not loaded; this server serves version 1."}


@pytest.mark.parametrize("method, path", [
    ("GET", "/v2/models/nope"), ("GET", "/v2/models/nope/ready"), ("POST", "/v2/models/nope/infer"),
    ("GET", "/v2/models/nope/versions/1"), ("POST", "/v2/models/nope/versions/1/infer"),
])
def test_unknown_model_is_404(bc, method, path):
    r = bc.open(path, method=method, data=b'{"inputs": []}' if method == "POST" else None)
    assert r.status_code == 404
    assert r.get_json() == {"error": "model 'nope' is not served here; this server serves 'bc'."}


# ---- V2: JSON inference -------------------------------------------------------------------------------

def test_infer_nested_flat_named_and_versioned_agree_with_predict(apps, bc, bc_rows):
    served = apps["bc"].extensions["mlopsctl"].model
    expected = _predict(bc, bc_rows)
    bodies = {
        "nested": {"inputs": _v2_inputs(served, bc_rows)},
        "flat": {"inputs": _v2_inputs(served, bc_rows, nested=False)},
        "reversed": {"inputs": _v2_inputs(served, bc_rows)[::-1]},  # matched by name, not position
        "fp64": {"inputs": _v2_inputs(served, bc_rows, datatype="FP64")},
        "flat-data-nested-shape": {"inputs": [dict(i, data=[v[0] for v in i["data"]]) for i in _v2_inputs(served, bc_rows)]},
    }
    for label, body in bodies.items():
        for path in ("/v2/models/bc/infer", "/v2/models/bc/versions/1/infer"):
            r = _infer(bc, body, path)
            assert r.status_code == 200, (label, r.get_json())
            assert r.headers["Content-Type"] == "application/json"
            out = r.get_json()
            assert out["model_name"] == "bc"
            assert out["model_version"] == "1"
            assert [o["name"] for o in out["outputs"]] == ["label", "probabilities"]
            label_out, proba_out = out["outputs"]
            assert (label_out["datatype"], label_out["shape"]) == ("BYTES", [8])
            assert label_out["data"] == expected["predictions"], label
            assert (proba_out["datatype"], proba_out["shape"]) == ("FP32", [8, 2])
            want = [[p["benign"], p["malignant"]] for p in expected["probabilities"]]
            assert np.allclose(_proba(proba_out), want, atol=1e-6), label


def test_infer_mixed_types_with_bytes_inputs(apps, ch, ch_rows):
    served = apps["ch"].extensions["mlopsctl"].model
    expected = _predict(ch, ch_rows)
    assert len(set(expected["predictions"])) == 2
    out = _infer(ch, {"inputs": _v2_inputs(served, ch_rows)}, "/v2/models/ch/infer").get_json()
    assert out["outputs"][0]["data"] == expected["predictions"]
    assert np.allclose(_proba(out["outputs"][1]), [[p["no"], p["yes"]] for p in expected["probabilities"]], atol=1e-6)


def test_id_is_echoed_or_made_up(apps, bc, bc_rows):
    inputs = _v2_inputs(apps["bc"].extensions["mlopsctl"].model, bc_rows[:2])
    r = _infer(bc, {"id": "req-42", "inputs": inputs})
    assert r.get_json()["id"] == "req-42"
    r = _infer(bc, {"inputs": inputs})
    assert re.fullmatch(r"[0-9a-f]{32}", r.get_json()["id"])
    assert r.headers["X-Request-ID"] == r.get_json()["id"]


def test_output_selection_returns_exactly_those(apps, bc, bc_rows):
    inputs = _v2_inputs(apps["bc"].extensions["mlopsctl"].model, bc_rows[:3])
    full = _infer(bc, {"inputs": inputs}).get_json()["outputs"]
    out = _infer(bc, {"inputs": inputs, "outputs": [{"name": "probabilities"}]}).get_json()["outputs"]
    assert out == [full[1]]
    out = _infer(bc, {"inputs": inputs, "outputs": [{"name": "label"}]}).get_json()["outputs"]
    assert out == [full[0]]
    out = _infer(bc, {"inputs": inputs, "outputs": [{"name": "probabilities"}, {"name": "label"}]}).get_json()["outputs"]
    assert out == [full[1], full[0]]


def test_no_content_type_header_is_fine(apps, bc, bc_rows):
    """tritonclient sends none (PROTOCOLS.md 4.1): the body is JSON whatever the header says."""
    body = json.dumps({"inputs": _v2_inputs(apps["bc"].extensions["mlopsctl"].model, bc_rows[:2])}).encode()
    r = bc.post("/v2/models/bc/infer", data=body)  # bytes: the test client sends no Content-Type
    assert r.status_code == 200, r.get_json()
    r = bc.post("/v2/models/bc/infer", data=body, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.get_json()


def test_unknown_request_parameters_do_not_break_a_request(apps, bc, bc_rows):
    inputs = _v2_inputs(apps["bc"].extensions["mlopsctl"].model, bc_rows[:2])
    inputs[0]["parameters"] = {"whatever": 1}
    r = _infer(bc, {"inputs": inputs, "parameters": {"priority": 3, "custom": "x"},
                    "outputs": [{"name": "label", "parameters": {"classification": 0}}]})
    assert r.status_code == 200, r.get_json()


# ---- V2: binary tensor data extension -----------------------------------------------------------------

def _binary_request(served, records, *, datatype: str | None = None,
                    outputs: list[dict[str, Any]] | None = None) -> tuple[bytes, int]:
    """The JSON header plus concatenated tensors, as tritonclient builds them (binary_data=True)."""
    inputs, blobs = [], []
    for meta in served.inputs:
        col = served.column_by_input[meta["name"]]
        values = [r[col] for r in records]
        dt = datatype if (datatype and meta["datatype"] != "BYTES") else meta["datatype"]
        if dt == "BYTES":
            blob = b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in values)
        else:
            blob = np.array([np.nan if v is None else float(v) for v in values],
                            dtype={"FP32": "<f4", "FP64": "<f8"}[dt]).tobytes()
        inputs.append({"name": meta["name"], "datatype": dt, "shape": [len(records), 1],
                       "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    header: dict[str, Any] = {"inputs": inputs}
    if outputs is not None:
        header["outputs"] = outputs
    head = json.dumps(header).encode()
    return head + b"".join(blobs), len(head)


def _decode_binary_response(r) -> dict[str, Any]:
    n = int(r.headers[HEADER])
    head = json.loads(r.data[:n])
    pos = n
    for out in head["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if size is None:
            continue
        blob = r.data[pos:pos + size]
        pos += size
        if out["datatype"] == "BYTES":
            values, i = [], 0
            while i < len(blob):
                (k,) = struct.unpack_from("<I", blob, i)
                values.append(blob[i + 4:i + 4 + k].decode())
                i += 4 + k
            out["data"] = values
        else:
            out["data"] = np.frombuffer(blob, dtype={"FP32": "<f4", "INT64": "<i8"}[out["datatype"]]).tolist()
    assert pos == len(r.data)
    return head


@pytest.mark.parametrize("key", ["bc", "ch"])
def test_binary_request_equals_json_request(apps, bc_rows, ch_rows, key):
    served = apps[key].extensions["mlopsctl"].model
    client = apps[key].test_client()
    rows = bc_rows if key == "bc" else ch_rows
    want = _infer(client, {"inputs": _v2_inputs(served, rows)}, f"/v2/models/{key}/infer").get_json()["outputs"]
    for dt in (None, "FP64"):
        body, n = _binary_request(served, rows, datatype=dt)
        r = client.post(f"/v2/models/{key}/infer", data=body, headers={HEADER: str(n)})
        assert r.status_code == 200, r.get_json()
        assert r.headers["Content-Type"] == "application/json"  # no binary output asked for
        assert r.get_json()["outputs"] == want


def test_binary_request_carries_missing_values_as_nan(apps, ch):
    """Missing values reach the model through V2 as FP32 NaN (nullable columns only) and '' for BYTES."""
    served = apps["ch"].extensions["mlopsctl"].model
    rows = training_records(apps["ch_project"], "churned", 60)
    with_nulls = [r for r in rows if r["age"] is None or r["plan"] is None or r["monthly_charges"] is None][:5]
    assert with_nulls
    expected = _predict(ch, with_nulls)
    binary_rows = [{**r, "plan": r["plan"] or ""} for r in with_nulls]
    body, n = _binary_request(served, binary_rows)
    r = ch.post("/v2/models/ch/infer", data=body, headers={HEADER: str(n)})
    assert r.status_code == 200, r.get_json()
    out = r.get_json()["outputs"]
    assert out[0]["data"] == expected["predictions"]
    assert np.allclose(_proba(out[1]), [[p["no"], p["yes"]] for p in expected["probabilities"]], atol=1e-6)


def test_binary_outputs(apps, ch, ch_rows):
    served = apps["ch"].extensions["mlopsctl"].model
    want = _infer(ch, {"inputs": _v2_inputs(served, ch_rows)}, "/v2/models/ch/infer").get_json()["outputs"]

    r = _infer(ch, {"inputs": _v2_inputs(served, ch_rows), "parameters": {"binary_data_output": True}},
               "/v2/models/ch/infer")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/octet-stream"
    head = _decode_binary_response(r)
    assert [o["parameters"]["binary_data_size"] for o in head["outputs"]] == [
        sum(4 + len(s) for s in want[0]["data"]), 4 * 2 * len(ch_rows)]
    assert head["outputs"][0]["data"] == want[0]["data"]
    assert np.allclose(head["outputs"][1]["data"], want[1]["data"], atol=0)
    assert [(o["name"], o["datatype"], o["shape"]) for o in head["outputs"]] == [
        (o["name"], o["datatype"], o["shape"]) for o in want]

    # per output, as tritonclient asks: only probabilities binary, label as JSON
    body, n = _binary_request(served, ch_rows, outputs=[{"name": "label", "parameters": {"binary_data": False}},
                                                        {"name": "probabilities", "parameters": {"binary_data": True}}])
    r = ch.post("/v2/models/ch/infer", data=body, headers={HEADER: str(n)})
    head = _decode_binary_response(r)
    assert head["outputs"][0]["data"] == want[0]["data"]
    assert "parameters" not in head["outputs"][0]
    assert head["outputs"][1]["parameters"] == {"binary_data_size": 8 * len(ch_rows)}
    assert np.allclose(head["outputs"][1]["data"], want[1]["data"], atol=0)


# ---- V2: errors ---------------------------------------------------------------------------------------

def _bc_input(name: str = "mean_radius", **kw: Any) -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": [1], "data": [14.0], **kw}


@pytest.mark.parametrize("body, message", [
    ({"inputs": [_bc_input(datatype="fp32")]},
     "input 'mean_radius' has datatype 'fp32'; use one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, "
     "INT64, FP16, FP32, FP64, BYTES (case-sensitive)."),
    ({"inputs": [_bc_input(datatype="FLOAT32")]},
     "input 'mean_radius' has datatype 'FLOAT32'; use one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, "
     "INT64, FP16, FP32, FP64, BYTES (case-sensitive)."),
    ({"inputs": [_bc_input(shape=[2])]}, "input 'mean_radius': shape [2] needs 2 values, got 1."),
    ({"inputs": [_bc_input(shape=[1], data=[1.0, 2.0, 3.0])]}, "input 'mean_radius': shape [1] needs 1 values, got 3."),
    ({"inputs": [_bc_input(shape=[1, 2], data=[[1.0, 2.0]]), _bc_input("mean_texture")]},
     "input 'mean_radius' must have shape [N, 1] or [N] (one column), got [1, 2]."),
    ({"inputs": [_bc_input(shape=[-1])]}, "input 'mean_radius' needs a 'shape' list of non-negative integers, got [-1]."),
    ({"inputs": [_bc_input(data=["x"])]}, "input 'mean_radius': FP32 data must be numbers."),
    ({"inputs": [_bc_input(data=[[1.0], [2.0, 3.0]], shape=[2, 1])]},
     "input 'mean_radius': 'data' is ragged; send a flat list or a nested list matching shape."),
    ({"inputs": [_bc_input(), _bc_input("mean_texture", shape=[2], data=[1.0, 2.0])]},
     "input 'mean_texture' has 2 rows but the others have 1."),
    ({"inputs": [_bc_input(), _bc_input()]}, "input 'mean_radius' is given twice."),
    ({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1.0]}]}, "inputs[0] has no 'name'."),
    ({"inputs": [{"name": "mean_radius", "datatype": "FP32", "shape": [1]}]},
     "input 'mean_radius' has no 'data' (and no binary_data_size)."),
    ({"inputs": []}, "the inference request needs a non-empty 'inputs' list."),
    ({"inputs": "mean_radius"}, "the inference request needs a non-empty 'inputs' list."),
    ({}, "the inference request needs a non-empty 'inputs' list."),
    ({"inputs": [1]}, "inputs[0] must be an object with name, shape, datatype and data."),
    ([1, 2], "the inference request must be a JSON object with an 'inputs' list."),
], ids=["fp32-case", "float32", "count-short", "count-long", "two-columns", "negative-dim", "strings", "ragged",
        "row-counts", "twice", "no-name", "no-data", "empty-inputs", "inputs-string", "no-inputs", "input-int",
        "top-level-list"])
def test_infer_errors_are_400_with_error_string(bc, body, message):
    r = _infer(bc, body)
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/json"
    assert r.get_json() == {"error": message}


def test_infer_contract_errors_are_v2_shaped(apps, bc, bc_rows):
    served = apps["bc"].extensions["mlopsctl"].model
    names = served.contract.feature_names
    inputs = _v2_inputs(served, bc_rows[:2])
    r = _infer(bc, {"inputs": inputs[1:]})
    assert r.status_code == 400
    assert r.get_json() == {"error": f"missing column(s) 'mean_radius'; the model needs {', '.join(names)}."}
    extra = {"name": "zip", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}
    r = _infer(bc, {"inputs": inputs + [extra]})
    assert r.get_json() == {"error": f"unexpected column(s) 'zip'; the model takes {', '.join(names)}."}
    nan_rows = [{**bc_rows[0], "worst_area": None}]
    body, n = _binary_request(served, nan_rows)
    r = bc.post("/v2/models/bc/infer", data=body, headers={HEADER: str(n)})
    assert r.status_code == 400
    assert r.get_json() == {"error": "column 'worst_area' is null, but it had no nulls in training at row 0."}


def test_unknown_output_name(apps, bc, bc_rows):
    inputs = _v2_inputs(apps["bc"].extensions["mlopsctl"].model, bc_rows[:1])
    r = _infer(bc, {"inputs": inputs, "outputs": [{"name": "output_probability"}]})
    assert r.status_code == 400
    assert r.get_json() == {"error": "unknown output 'output_probability'; the model has label, probabilities."}
    r = _infer(bc, {"inputs": inputs, "outputs": {"name": "label"}})
    assert r.get_json() == {"error": "'outputs' must be a list of {\"name\": ...} objects."}


@pytest.mark.parametrize("name", [["label"], {"x": 1}, 3, None], ids=["list", "object", "int", "null"])
def test_output_name_of_the_wrong_type_is_400(apps, bc, bc_rows, name):
    inputs = _v2_inputs(apps["bc"].extensions["mlopsctl"].model, bc_rows[:1])
    r = _infer(bc, {"inputs": inputs, "outputs": [{"name": name}]})
    assert r.status_code == 400, r.data[:300]
    assert r.get_json() == {"error": f"unknown output {name!r}; the model has label, probabilities."}


def test_binary_errors(apps, bc, ch, bc_rows, ch_rows):
    served = apps["bc"].extensions["mlopsctl"].model
    body, n = _binary_request(served, bc_rows[:2])

    def send(client, data, length, path="/v2/models/bc/infer"):
        r = client.post(path, data=data, headers={HEADER: str(length)})
        assert r.status_code == 400, r.data[:300]
        return r.get_json()

    assert send(bc, body, "abc") == {"error": f"{HEADER} must be an integer, got 'abc'."}
    assert send(bc, body, len(body) + 1) == {"error": f"{HEADER} is {len(body) + 1} but the body has {len(body)} bytes."}
    assert send(bc, body, 0) == {"error": f"{HEADER} is 0 but the body has {len(body)} bytes."}
    assert send(bc, body, n - 1)["error"].startswith("the request body is not valid JSON (")
    assert send(bc, body[:-4], n) == {
        "error": f"input 'worst_fractal_dimension': binary_data_size 8 does not fit the {len(body) - n - 4} bytes sent."}
    # a size that is not a whole number of FP32 elements
    head = json.loads(body[:n])
    head["inputs"][0]["parameters"]["binary_data_size"] = 7
    head["inputs"][1]["parameters"]["binary_data_size"] = 9
    raw = json.dumps(head).encode()
    assert send(bc, raw + body[n:], len(raw)) == {"error": "input 'mean_radius': 7 bytes is not 2 x FP32."}

    ch_served = apps["ch"].extensions["mlopsctl"].model
    body, n = _binary_request(ch_served, ch_rows[:2])
    head = json.loads(body[:n])
    plan = next(i for i, t in enumerate(head["inputs"]) if t["name"] == "plan")
    offset = n + sum(t["parameters"]["binary_data_size"] for t in head["inputs"][:plan])
    size = head["inputs"][plan]["parameters"]["binary_data_size"]
    bad_len = body[:offset] + struct.pack("<I", 1000) + body[offset + 4:]
    assert send(ch, bad_len, n, "/v2/models/ch/infer") == {"error": "input 'plan': binary BYTES data ends early."}
    first = struct.unpack_from("<I", body, offset)[0]
    not_utf8 = body[:offset + 4] + b"\xff" * first + body[offset + 4 + first:]
    assert send(ch, not_utf8, n, "/v2/models/ch/infer") == {"error": "input 'plan': BYTES element is not UTF-8 text."}
    head["inputs"][plan]["parameters"]["binary_data_size"] = size - 1
    raw = json.dumps(head).encode()
    trimmed = raw + body[n:offset + size - 1] + body[offset + size:]
    assert send(ch, trimmed, len(raw), "/v2/models/ch/infer") == {"error": "input 'plan': binary BYTES data ends early."}


# ---- MLflow /invocations ------------------------------------------------------------------------------

def _mlflow_bodies(records: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    rows = [[r[n] for n in names] for r in records]
    return {
        "dataframe_split": {"dataframe_split": {"columns": names, "data": rows}},
        "dataframe_split-index": {"dataframe_split": {"columns": names, "data": rows, "index": list(range(len(rows)))}},
        "dataframe_split-shuffled": {"dataframe_split": {"columns": names[::-1], "data": [r[::-1] for r in rows]}},
        "dataframe_records": {"dataframe_records": records},
        "instances-records": {"instances": records},
        "instances-rows": {"instances": rows},
        "inputs-columnar": {"inputs": {n: [r[n] for r in records] for n in names}},
        "inputs-rows": {"inputs": rows},
        "with-params": {"dataframe_records": records, "params": {"threshold": 0.5}},
        "with-other-key": {"dataframe_records": records, "metadata": {"source": "test"}},
    }


@pytest.mark.parametrize("key", ["bc", "ch"])
def test_invocations_every_json_format_agrees_with_predict(apps, bc_rows, ch_rows, key):
    client = apps[key].test_client()
    served = apps[key].extensions["mlopsctl"].model
    records = bc_rows if key == "bc" else training_records(apps["ch_project"], "churned", 40)  # churn: with nulls
    expected = _predict(client, records)["predictions"]
    for label, body in _mlflow_bodies(records, served.contract.feature_names).items():
        for ctype in ("application/json", "application/json; charset=utf-8", "application/json;charset=UTF-8"):
            r = client.post("/invocations", data=json.dumps(body), headers={"Content-Type": ctype})
            assert r.status_code == 200, (label, ctype, r.get_json())
            assert r.headers["Content-Type"] == "application/json"
            assert r.get_json() == {"predictions": expected}, label
    r = client.post("/invocations", data=json.dumps({"dataframe_records": records}))  # no Content-Type
    assert r.get_json() == {"predictions": expected}


def _csv(records: list[dict[str, Any]], names: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(names)
    w.writerows([["" if r[n] is None else r[n] for n in names] for r in records])
    return buf.getvalue()


@pytest.mark.parametrize("key", ["bc", "ch"])
def test_invocations_csv_and_parquet(apps, bc_rows, key):
    import pyarrow as pa
    import pyarrow.parquet as pq

    client = apps[key].test_client()
    names = apps[key].extensions["mlopsctl"].model.contract.feature_names
    records = bc_rows if key == "bc" else training_records(apps["ch_project"], "churned", 40)
    expected = _predict(client, records)["predictions"]
    for ctype in ("text/csv", "text/csv; charset=utf-8"):
        r = client.post("/invocations", data=_csv(records, names), headers={"Content-Type": ctype})
        assert r.status_code == 200, r.get_json()
        assert r.get_json() == {"predictions": expected}
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buf)
    r = client.post("/invocations", data=buf.getvalue(), headers={"Content-Type": "application/vnd.apache.parquet"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"predictions": expected}


def test_csv_type_errors_match_json(apps, ch, ch_rows):
    """A date in a numeric column is a wrong type in CSV exactly as in JSON, never a number of days."""
    names = apps["ch"].extensions["mlopsctl"].model.contract.feature_names
    rows = [{**ch_rows[0], "tenure_months": "2020-01-01"}]
    r = ch.post("/invocations", json={"dataframe_records": rows})
    assert r.status_code == 400
    assert r.get_json() == {"error_code": "BAD_REQUEST",
                            "message": "column 'tenure_months' must be numeric, got '2020-01-01' at row 0."}
    r = ch.post("/invocations", data=_csv(rows, names), headers={"Content-Type": "text/csv"})
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["message"].startswith("column 'tenure_months' must be numeric, got ")
    rows = [{**ch_rows[0], "has_support": "maybe"}]
    r = ch.post("/invocations", data=_csv(rows, names), headers={"Content-Type": "text/csv"})
    assert r.status_code == 400
    assert r.get_json() == {"error_code": "BAD_REQUEST", "message": "column 'has_support' must be boolean, got 'maybe' at row 0."}


@pytest.mark.parametrize("data", ["mean_radius,r\u00e9gion\n1,2\n".encode("latin-1"), b"\x94\x90\xff\n1\n"],
                         ids=["latin-1-header", "binary"])
def test_csv_that_is_not_utf8_is_a_400(bc, data):
    r = bc.post("/invocations", data=data, headers={"Content-Type": "text/csv"})
    assert r.status_code == 400, r.get_json()
    body = r.get_json()
    assert set(body) == {"error_code", "message"}
    assert body["error_code"] == "BAD_REQUEST"


@pytest.mark.parametrize("ctype, message", [
    ("application/json; charset=latin-1", "the scoring server only supports UTF-8."),
    ("text/csv; charset=iso-8859-1", "the scoring server only supports UTF-8."),
    ("application/xml", "unsupported Content-Type 'application/xml'; use one of application/json, text/csv, "
                        "application/vnd.apache.parquet."),
    ("text/plain", "unsupported Content-Type 'text/plain'; use one of application/json, text/csv, "
                   "application/vnd.apache.parquet."),
    ("application/json; format=pandas-split",
     "unsupported Content-Type parameter 'format=pandas-split'; send application/json without it."),
])
def test_invocations_unsupported_content_type_is_415(bc, bc_rows, ctype, message):
    r = bc.post("/invocations", data=json.dumps({"dataframe_records": bc_rows[:1]}), headers={"Content-Type": ctype})
    assert r.status_code == 415
    assert r.get_json() == {"error_code": "BAD_REQUEST", "message": message}


@pytest.mark.parametrize("body, message", [
    ({}, f"{ONE_KEY}; got none."),
    ({"params": {"a": 1}}, f"{ONE_KEY}; got none."),
    ({"records": []}, f"{ONE_KEY}; got none."),
    ({"instances": [], "inputs": []}, f"{ONE_KEY}; got 'instances', 'inputs'."),
    ({"dataframe_split": {}, "dataframe_records": []}, f"{ONE_KEY}; got 'dataframe_split', 'dataframe_records'."),
    ([{"mean_radius": 1}], f"{ONE_KEY}."),
    ("text", f"{ONE_KEY}."),
    ({"prompt": "hello"}, "LLM-style inputs (input, messages, prompt) are not supported by a tabular model."),
    ({"messages": [{"role": "user", "content": "hi"}]},
     "LLM-style inputs (input, messages, prompt) are not supported by a tabular model."),
    ({"input": "hello"}, "LLM-style inputs (input, messages, prompt) are not supported by a tabular model."),
    ({"dataframe_split": {"columns": ["a"]}}, 'dataframe_split must be {"columns": [...], "data": [[...], ...]}.'),
    ({"dataframe_split": {"columns": ["a", "a"], "data": [[1, 2]]}}, "dataframe_split.columns has duplicate names."),
    ({"dataframe_split": {"columns": "a", "data": [[1]]}}, "dataframe_split.columns must be a list of column names."),
    ({"dataframe_split": {"columns": ["a", "b"], "data": [[1]]}},
     "dataframe_split.data[0] has 1 values; the model takes 2: a, b."),
    ({"dataframe_records": {"a": 1}}, "dataframe_records must be a list of objects, got dict."),
    ({"instances": [[1.0]]}, None),
    ({"inputs": {"mean_radius": [1.0], "mean_texture": [1.0, 2.0]}},
     "inputs as an object must map each column to a list, all of the same length."),
    ({"inputs": {"mean_radius": 1.0}}, "inputs as an object must map each column to a list, all of the same length."),
    ({"instances": []}, "the request holds no rows; send at least one."),
])
def test_invocations_errors_are_mlflow_shaped(apps, bc, body, message):
    names = apps["bc"].extensions["mlopsctl"].model.contract.feature_names
    if message is None:
        message = f"instances[0] has 1 values; the model takes {len(names)}: {', '.join(names)}."
    r = bc.post("/invocations", data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.get_json() == {"error_code": "BAD_REQUEST", "message": message}


def test_invocations_contract_and_parse_errors(apps, bc, bc_rows):
    names = apps["bc"].extensions["mlopsctl"].model.contract.feature_names
    rec = {k: v for k, v in bc_rows[0].items() if k != "mean_area"}
    r = bc.post("/invocations", json={"dataframe_records": [rec]})
    assert r.get_json() == {"error_code": "BAD_REQUEST",
                            "message": f"missing column 'mean_area' in dataframe_records[0]; the model needs {', '.join(names)}."}
    r = bc.post("/invocations", json={"dataframe_records": [{**bc_rows[0], "mean_area": "big"}]})
    assert r.get_json() == {"error_code": "BAD_REQUEST", "message": "column 'mean_area' must be numeric, got 'big' at row 0."}
    r = bc.post("/invocations", data=b'{"dataframe_records": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.get_json() == {"error_code": "BAD_REQUEST", "message":
                            "the request body is not valid JSON (unexpected end of data: line 1 column 24 (char 23))."}
    r = bc.post("/invocations", data=b"", headers={"Content-Type": "application/json"})
    assert r.get_json() == {"error_code": "BAD_REQUEST", "message": "the request body is empty; send a JSON object."}
    r = bc.post("/invocations", data="a,b\n1,2,3\n", headers={"Content-Type": "text/csv"})
    assert r.status_code == 400
    assert r.get_json() == {"error_code": "BAD_REQUEST",
                            "message": "the body could not be parsed as text/csv (CSV parse error: Expected 2 columns, got 3: 1,2,3)."}
    r = bc.post("/invocations", data=b"", headers={"Content-Type": "text/csv"})
    assert r.get_json() == {"error_code": "BAD_REQUEST", "message": "the request body is empty."}
    r = bc.post("/invocations", data=b"PAR1 not really", headers={"Content-Type": "application/vnd.apache.parquet"})
    assert r.status_code == 400
    assert r.get_json()["message"].startswith("the body could not be parsed as application/vnd.apache.parquet (")


def test_ping_health_version(bc):
    from mlopsctl import __version__

    for path in ("/ping", "/health"):
        r = bc.get(path)
        assert r.status_code == 200
        assert r.data == b"\n"
        assert r.headers["Content-Type"] == "application/json"
    r = bc.get("/version")
    assert r.status_code == 200
    assert r.get_data(as_text=True) == __version__  # the raw string, as MLflow sends it
    assert r.headers["Content-Type"] == "application/json"
    r = bc.post("/ping")
    assert r.status_code == 405
    assert r.get_json() == {"error_code": "BAD_REQUEST", "message": "POST is not allowed on /ping; allowed: GET, HEAD, OPTIONS."}
