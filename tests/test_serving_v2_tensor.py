"""V2's single-tensor input: one ``[N, F]`` tensor holding every feature in contract order, for models
without categorical columns (what KServe's sklearn server, MLServer and Triton take for a default skl2onnx
model), beside the per-column ``[N, 1]`` inputs.

Each answer is compared with the per-column answer for the same rows: JSON (nested and flat) and binary,
FP32, FP64, integer datatypes and BOOL, the prediction log and the metrics; then stock ``tritonclient.http``
against a real gunicorn server on 127.0.0.1 sends one FP32/FP64 ``InferInput`` as JSON and as binary. A
mixed-type model, a wrong width, BYTES, no rows, ragged data, lying sizes, huge shapes and too many rows
answer a 4xx ``{"error"}`` that says what to send, and the server keeps serving.

Models (trained once for the module through the CLI): breast-cancer bc/1 (30 numeric columns), churn ch/1
(numeric and categorical columns), and ``odd/1``, generated here: columns named with spaces, dots, unicode
and a leading digit (so ONNX input names differ from column names), a boolean column and integer labels
(three classes).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from served_projects import cli_ok, make_served_project, module_isolation, training_records

HEADER = "Inference-Header-Content-Length"
NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]
LITTLE = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT64": "<i8", "INT32": "<i4", "INT16": "<i2", "INT8": "<i1",
          "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "BOOL": "<?"}
ODD_COLUMNS = ["mean radius", "ratio.x", "is active", "größe µ", "1st", "Weight (kg)"]


# ---- module projects and apps -------------------------------------------------------------------------

def _odd_project(root: Path) -> Path:
    """An all-numeric project with odd column names, a boolean column and int labels 0/1/2, at odd/1."""
    import pandas as pd
    from sklearn.datasets import make_classification

    project = root / "odd"
    cli_ok("init", project, "--example", "breast-cancer")
    x, y = make_classification(n_samples=300, n_features=5, n_informative=4, n_redundant=0, n_classes=3,
                               random_state=0)
    frame = pd.DataFrame(x, columns=[c for c in ODD_COLUMNS if c != "is active"])
    frame.insert(2, "is active", x[:, 0] > 0)
    frame["label"] = y
    frame.to_csv(project / "data" / "train.csv", index=False)
    cfg = project / ".mlops.toml"
    cfg.write_text(cfg.read_text().replace('target = "diagnosis"', 'target = "label"')
                   .replace("n_estimators = 100", "n_estimators = 10"))
    cli_ok("-C", project, "train")
    cli_ok("-C", project, "register", 1, "--name", "odd")
    return project


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from mlopsctl.store import db

    root = tmp_path_factory.mktemp("serving-v2-tensor")
    with module_isolation(root):
        out = {"bc": make_served_project(root, "breast-cancer", "bc", "{ n_estimators = 10 }"),
               "ch": make_served_project(root, "churn", "ch", "{ max_iter = 20 }"),
               "odd": _odd_project(root)}
    db.close_all()
    return out


REFS = {"bc": "bc@production", "ch": "ch@production", "odd": "odd/1"}
TARGETS = {"bc": "diagnosis", "ch": "churned", "odd": "label"}


@pytest.fixture(scope="module")
def apps(projects):
    """In-process apps without the prediction log (the log has its own test)."""
    from mlopsctl.config import load_settings
    from mlopsctl.serving.app import create_app

    out = {key: create_app(load_settings({"serve.log_predictions": False}, {}, projects[key]), REFS[key], watch=False)
           for key in projects}
    yield out
    for app in out.values():
        app.extensions["mlopsctl"].holder.stop()


@pytest.fixture(scope="module")
def rows(projects) -> dict[str, list[dict[str, Any]]]:
    """40 complete training rows of each model (JSON tensors carry no null), with more than one label."""
    return {key: training_records(projects[key], TARGETS[key], 40, complete=True) for key in projects}


def _served(app):
    return app.extensions["mlopsctl"].model


def _matrix(served, records) -> list[list[float]]:
    """The rows as an [N, F] list, columns in contract order (booleans as 0/1)."""
    return [[float(r[name]) for name in served.contract.feature_names] for r in records]


def _per_column(served, records) -> list[dict[str, Any]]:
    """One [N, 1] FP32 input per column, named by its ONNX input name."""
    return [{"name": meta["name"], "datatype": "FP32", "shape": [len(records), 1],
             "data": [[float(r[served.column_by_input[meta["name"]]])] for r in records]} for meta in served.inputs]


def _post(app, body: Any, path: str | None = None, **headers: str):
    served = _served(app)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return app.test_client().post(path or f"/v2/models/{served.name}/infer", data=raw, headers=headers)


def _outputs(r) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.get_json()
    return r.get_json()["outputs"]


def _binary(name: str, matrix: np.ndarray, datatype: str) -> tuple[bytes, int]:
    """One input as the binary tensor data extension sends it: a JSON header, then the raw bytes."""
    blob = np.ascontiguousarray(matrix, dtype=LITTLE[datatype]).tobytes()
    head = json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": list(matrix.shape),
                                   "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return head + blob, len(head)


# ---- metadata and /openapi.json -----------------------------------------------------------------------

def test_metadata_gives_the_column_order_and_the_single_tensor(apps, projects):
    import csv

    for key in ("bc", "odd"):
        meta = apps[key].test_client().get(f"/v2/models/{key}").get_json()
        with open(projects[key] / "data" / "train.csv", newline="") as fh:
            header = [h for h in next(csv.reader(fh)) if h != TARGETS[key]]
        assert meta["parameters"]["feature_order"] == header
        assert meta["parameters"]["single_tensor_input"] == {"shape": [-1, len(header)], "datatypes": NUMERIC}
    assert ODD_COLUMNS == apps["odd"].test_client().get("/v2/models/odd").get_json()["parameters"]["feature_order"]
    # the ONNX input names differ from the column names: the order is the columns', not the names'
    assert [t["name"] for t in _served(apps["odd"]).inputs] == ["mean_radius", "ratio_x", "is_active", "größe_µ",
                                                                "_1st", "Weight__kg_"]
    meta = apps["ch"].test_client().get("/v2/models/ch").get_json()
    assert meta["parameters"]["feature_order"] == _served(apps["ch"]).contract.feature_names
    assert "single_tensor_input" not in meta["parameters"]


def test_openapi_describes_both_input_forms(apps):
    def doc(key: str) -> str:
        spec = apps[key].test_client().get("/openapi.json").get_json()
        schema = spec["paths"]["/v2/models/{model_name}/infer"]["post"]["requestBody"]["content"]["application/json"]
        return schema["schema"]["properties"]["inputs"]["description"]

    assert doc("odd") == ("one [N, 1] (or [N]) tensor per column, named by its ONNX input: mean_radius (FP32), "
                          "ratio_x (FP32), is_active (FP32), größe_µ (FP32), _1st (FP32), Weight__kg_ (FP32); or one "
                          "[N, 6] tensor of any name and numeric datatype whose columns are, in this order: mean radius, "
                          "ratio.x, is active, größe µ, 1st, Weight (kg)")
    assert doc("ch").startswith("one [N, 1] (or [N]) tensor per column, named by its ONNX input: tenure_months (FP32), ")
    assert "[N, 7]" not in doc("ch") and "or one" not in doc("ch")


# ---- values: the single tensor answers as the per-column inputs do ------------------------------------

@pytest.mark.parametrize("key", ["bc", "odd"])
def test_json_tensor_equals_per_column_inputs(apps, rows, key):
    app, records = apps[key], rows[key]
    served = _served(app)
    want = _outputs(_post(app, {"inputs": _per_column(served, records)}))
    assert len(set(map(str, want[0]["data"]))) > 1  # the rows get different labels: the order matters
    matrix = _matrix(served, records)
    n, f = len(records), len(served.contract.columns)
    bodies = {
        "nested FP32": {"name": "input-0", "datatype": "FP32", "shape": [n, f], "data": matrix},
        "flat FP32": {"name": "input-0", "datatype": "FP32", "shape": [n, f], "data": sum(matrix, [])},
        "nested FP64": {"name": "X", "datatype": "FP64", "shape": [n, f], "data": matrix},
        # any name, even a column's own
        "a column's name": {"name": served.inputs[0]["name"], "datatype": "FP32", "shape": [n, f], "data": matrix},
    }
    for label, tensor in bodies.items():
        for path in (f"/v2/models/{key}/infer", f"/v2/models/{key}/versions/1/infer"):
            assert _outputs(_post(app, {"inputs": [tensor]}, path)) == want, label


def test_tensor_columns_are_taken_in_contract_order(apps, rows):
    """Swapping two columns of the tensor gives what the per-column form gives for the swapped values."""
    app, records = apps["bc"], rows["bc"]
    served = _served(app)
    swapped = [{**r, "mean_radius": r["worst_area"], "worst_area": r["mean_radius"]} for r in records]
    want = _outputs(_post(app, {"inputs": _per_column(served, swapped)}))
    assert want != _outputs(_post(app, {"inputs": _per_column(served, records)}))
    tensor = {"name": "x", "datatype": "FP32", "shape": [len(records), 30], "data": _matrix(served, swapped)}
    assert _outputs(_post(app, {"inputs": [tensor]})) == want


@pytest.mark.parametrize("key", ["bc", "odd"])
@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_binary_tensor_equals_per_column_inputs(apps, rows, key, datatype):
    app, records = apps[key], rows[key]
    served = _served(app)
    want = _outputs(_post(app, {"inputs": _per_column(served, records)}))
    body, n = _binary("input-0", np.array(_matrix(served, records)), datatype)
    r = _post(app, body, **{HEADER: str(n)})
    assert r.headers["Content-Type"] == "application/json"
    assert _outputs(r) == want
    # and binary outputs hold the same numbers
    head = json.loads(body[:n])
    head["parameters"] = {"binary_data_output": True}
    raw = json.dumps(head).encode()
    r = _post(app, raw + body[n:], **{HEADER: str(len(raw))})
    assert r.status_code == 200
    k = int(r.headers[HEADER])
    proba_meta = json.loads(r.data[:k])["outputs"][1]
    proba = np.frombuffer(r.data[len(r.data) - proba_meta["parameters"]["binary_data_size"]:], dtype="<f4")
    assert proba.tolist() == want[1]["data"]


def test_integer_and_bool_tensors_equal_per_column_inputs(apps, rows):
    app = apps["odd"]
    served = _served(app)
    rounded = [{k: (round(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows["odd"]]
    want = _outputs(_post(app, {"inputs": _per_column(served, rounded)}))
    matrix = np.array(_matrix(served, rounded))
    for datatype in ("INT64", "INT32", "INT16", "INT8", "FP16"):
        tensor = {"name": "input-0", "datatype": datatype, "shape": list(matrix.shape),
                  "data": matrix.astype(int).tolist()}
        assert _outputs(_post(app, {"inputs": [tensor]})) == want, datatype
        body, n = _binary("input-0", matrix, datatype)
        assert _outputs(_post(app, body, **{HEADER: str(n)})) == want, datatype
    ones = np.abs(matrix) >= 1  # a BOOL tensor is 0/1 per feature
    as_bool = [dict(zip(served.contract.feature_names, map(float, row))) for row in ones]
    want = _outputs(_post(app, {"inputs": _per_column(served, as_bool)}))
    tensor = {"name": "input-0", "datatype": "BOOL", "shape": list(ones.shape), "data": ones.tolist()}
    assert _outputs(_post(app, {"inputs": [tensor]})) == want
    body, n = _binary("input-0", ones, "BOOL")
    assert _outputs(_post(app, body, **{HEADER: str(n)})) == want
    # UINT8 of the booleans' 0/1 and of the absolute values, through binary
    body, n = _binary("input-0", np.abs(matrix), "UINT8")
    absolute = [dict(zip(served.contract.feature_names, map(float, row))) for row in np.abs(matrix)]
    assert _outputs(_post(app, body, **{HEADER: str(n)})) == _outputs(_post(app, {"inputs": _per_column(served, absolute)}))


def test_one_row_and_nan_rows_are_checked_like_per_column_inputs(apps, rows):
    app, records = apps["bc"], rows["bc"]
    served = _served(app)
    one = records[:1]
    want = _outputs(_post(app, {"inputs": _per_column(served, one)}))
    assert _outputs(_post(app, {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 30],
                                            "data": _matrix(served, one)[0]}]})) == want
    # a NaN where training had no nulls: the contract's own message, row and column
    matrix = np.array(_matrix(served, records[:3]))
    matrix[2, served.contract.feature_names.index("worst_area")] = np.nan
    body, n = _binary("x", matrix, "FP32")
    r = _post(app, body, **{HEADER: str(n)})
    assert (r.status_code, r.get_json()) == (400, {
        "error": "column 'worst_area' is null, but it had no nulls in training at row 2."})


def test_prediction_log_and_metrics_are_those_of_the_per_column_form(projects, rows):
    """Both forms go through the same ``infer``: the same logged inputs and outputs, rows counted."""
    from prometheus_client.parser import text_string_to_metric_families

    from mlopsctl.config import load_settings
    from mlopsctl.predlog_format import read_requests
    from mlopsctl.serving.app import create_app

    app = create_app(load_settings({}, {}, projects["bc"]), "bc@production", watch=False)
    try:
        served = _served(app)
        records = rows["bc"][:5]
        per_column = _post(app, {"inputs": _per_column(served, records)}, **{"X-Request-ID": "log-columns"})
        tensor = _post(app, _bc_tensor([5, 30], _matrix(served, records)), **{"X-Request-ID": "log-tensor"})
        body, n = _binary("x", np.array(_matrix(served, records)), "FP32")
        binary = _post(app, body, **{HEADER: str(n), "X-Request-ID": "log-binary"})
        assert _outputs(tensor) == _outputs(binary) == _outputs(per_column)
        assert app.extensions["mlopsctl"].predlog.flush(timeout=30)
        names = served.contract.feature_names
        logged = read_requests(app.extensions["mlopsctl"].holder.project.store, ["log-columns", "log-tensor", "log-binary"],
                               names)
        assert logged["log-tensor"]["inputs"] == logged["log-columns"]["inputs"]
        assert logged["log-tensor"]["inputs"]["mean_radius"] == [r["mean_radius"] for r in records]
        # binary FP32 carries float32 values, and that is what is logged
        assert logged["log-binary"]["inputs"] == {k: np.float32(v).tolist() for k, v in logged["log-columns"]["inputs"].items()}
        for rid in ("log-tensor", "log-binary"):
            assert logged[rid]["outputs"] == logged["log-columns"]["outputs"]
        assert logged["log-tensor"]["outputs"]["label"] == _outputs(tensor)[0]["data"]
        text = app.test_client().get("/metrics").get_data(as_text=True)
        samples = {(s.name, frozenset(s.labels.items())): s.value
                   for fam in text_string_to_metric_families(text) for s in fam.samples}
        assert samples[("mlops_predicted_rows_total", frozenset({"model": "bc", "version": "1"}.items()))] == 15.0
    finally:
        app.extensions["mlopsctl"].holder.stop()
        app.extensions["mlopsctl"].predlog.close()


# ---- errors -------------------------------------------------------------------------------------------

def _bc_tensor(shape: list[int], data: Any, datatype: str = "FP32", name: str = "input-0") -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


def test_mixed_type_model_says_to_send_one_input_per_column(apps, rows):
    app = apps["ch"]
    served = _served(app)
    records = rows["ch"][:2]
    message = ("input 'input-0' of shape [2, 7] is read as one [N, F] tensor of every feature, but ch has categorical "
               "column(s) (plan, region, contract) and takes one [N, 1] input per column: tenure_months (FP32), "
               "monthly_charges (FP32), plan (BYTES), region (BYTES), contract (BYTES), has_support (FP32), age (FP32).")
    assert [t["name"] for t in served.inputs] == served.contract.feature_names
    values = [[r[c] for c in served.contract.feature_names] for r in records]
    for body in (_bc_tensor([2, 7], values, "BYTES"),
                 _bc_tensor([2, 7], [[1.0] * 7] * 2, "FP32")):
        r = _post(app, body)
        assert (r.status_code, r.get_json()) == (400, {"error": message})
    body, n = _binary("input-0", np.ones((2, 7)), "FP32")
    r = _post(app, body, **{HEADER: str(n)})
    assert (r.status_code, r.get_json()) == (400, {"error": message})
    # the per-column form still answers
    inputs = [{"name": t["name"], "datatype": t["datatype"], "shape": [2, 1],
               "data": [[r[t["name"]] if t["datatype"] == "BYTES" else float(r[t["name"]])] for r in records]}
              for t in served.inputs]
    assert len(_outputs(_post(app, {"inputs": inputs}))[0]["data"]) == 2


def _order(app) -> str:
    return ", ".join(_served(app).contract.feature_names)


def test_wrong_width_says_how_many_columns_in_which_order(apps, rows):
    app = apps["bc"]
    matrix = _matrix(_served(app), rows["bc"][:2])
    for width in (29, 31, 2):
        data = [(row * 2)[:width] for row in matrix]
        r = _post(app, _bc_tensor([2, width], data))
        assert (r.status_code, r.get_json()) == (400, {"error": (
            f"input 'input-0' has {width} column(s); a single [N, F] tensor needs 30, the features in this order: "
            f"{_order(app)}.")})
    # one [N, 1] input that is no column's own is read as a tensor of one column
    r = _post(app, _bc_tensor([2, 1], [[1.0], [2.0]], name="radius"))
    assert r.get_json() == {"error": f"input 'radius' has 1 column(s); a single [N, F] tensor needs 30, the features "
                                     f"in this order: {_order(app)}."}
    odd = apps["odd"]
    r = _post(odd, _bc_tensor([1, 5], [[1.0] * 5]))
    assert r.get_json() == {"error": "input 'input-0' has 5 column(s); a single [N, F] tensor needs 6, the features in "
                                     "this order: mean radius, ratio.x, is active, größe µ, 1st, Weight (kg)."}


BYTES_MESSAGE = ("input 'input-0': a single [N, F] tensor holds numbers; send it as FP32 or FP64 (or another numeric "
                 "datatype), not BYTES.")


@pytest.mark.parametrize("body, message", [
    (_bc_tensor([1, 30], [["1.5"] * 30], "BYTES"), BYTES_MESSAGE),
    (_bc_tensor([1, 30], [[1.5] * 30], "fp32"),
     "input 'input-0' has datatype 'fp32'; use one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, "
     "FP16, FP32, FP64, BYTES (case-sensitive)."),
    (_bc_tensor([0, 30], []), "the request holds no rows; send at least one."),
    (_bc_tensor([2, 30], [[1.0] * 30, [1.0] * 29]),
     "input 'input-0': 'data' is ragged; send a flat list or a nested list matching shape."),
    (_bc_tensor([3, 30], [[1.0] * 30] * 2), "input 'input-0': shape [3, 30] needs 90 values, got 60."),
    (_bc_tensor([2, 30], [[1.0] * 30] * 3), "input 'input-0': shape [2, 30] needs 60 values, got 90."),
    (_bc_tensor([2**63, 30], []), f"input 'input-0': shape [{2**63}, 30] needs {2**63 * 30} values, got 0."),
    (_bc_tensor([2**32, 2**32], []), f"input 'input-0': shape [{2**32}, {2**32}] needs {2**64} values, got 0."),
    (_bc_tensor([1, -30], []), "input 'input-0' needs a 'shape' list of non-negative integers, got [1, -30]."),
    (_bc_tensor([1, 30], [["x"] * 30]), "input 'input-0': FP32 data must be numbers."),
    (_bc_tensor([1, 30], [[None] * 30]), "input 'input-0': FP32 data must be numbers."),
    (_bc_tensor([1, 1], [[1.0]], name=["x"]), "inputs[0] has no 'name'."),
    ({"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, 30]}]},
     "input 'input-0' has no 'data' (and no binary_data_size)."),
], ids=["bytes", "datatype-case", "no-rows", "ragged", "too-few-values", "too-many-values", "huge-n", "2**64-values",
        "negative-width", "strings", "nulls", "name-not-a-string", "no-data"])
def test_bad_tensors_are_400_and_the_server_keeps_serving(apps, rows, body, message):
    app = apps["bc"]
    r = _post(app, body)
    assert (r.status_code, r.headers["Content-Type"], r.get_json()) == (400, "application/json", {"error": message})
    served = _served(app)
    good = _bc_tensor([3, 30], _matrix(served, rows["bc"][:3]))
    assert _outputs(_post(app, good)) == _outputs(_post(app, {"inputs": _per_column(served, rows["bc"][:3])}))


def test_lying_binary_sizes_are_400(apps, rows):
    app = apps["bc"]
    body, n = _binary("input-0", np.array(_matrix(_served(app), rows["bc"][:2])), "FP32")
    head = json.loads(body[:n])
    head["inputs"][0]["parameters"]["binary_data_size"] = 4 * 59
    raw = json.dumps(head).encode()
    r = _post(app, raw + body[n:n + 4 * 59], **{HEADER: str(len(raw))})
    assert (r.status_code, r.get_json()) == (400, {"error": "input 'input-0': 236 bytes is not 60 x FP32."})
    r = _post(app, body[:-4], **{HEADER: str(n)})
    assert (r.status_code, r.get_json()) == (400, {
        "error": f"input 'input-0': binary_data_size 240 does not fit the {240 - 4} bytes sent."})
    bytes_head = json.dumps({"inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [1, 30],
                                         "parameters": {"binary_data_size": 8}}]}).encode()
    r = _post(app, bytes_head + struct.pack("<I", 4) + b"1.50", **{HEADER: str(len(bytes_head))})
    assert (r.status_code, r.get_json()) == (400, {"error": BYTES_MESSAGE})


def test_more_rows_than_max_batch_rows_is_413(projects, rows):
    from mlopsctl.config import load_settings
    from mlopsctl.serving.app import create_app

    app = create_app(load_settings({"serve.log_predictions": False, "serve.max_batch_rows": 5}, {}, projects["bc"]),
                     "bc@production", watch=False)
    try:
        served = _served(app)
        r = _post(app, _bc_tensor([6, 30], _matrix(served, rows["bc"][:6])))
        assert (r.status_code, r.get_json()) == (413, {
            "error": "the request holds 6 rows; the limit is 5 (serve.max_batch_rows)."})
        body, n = _binary("x", np.array(_matrix(served, rows["bc"][:5])), "FP64")
        assert len(_outputs(_post(app, body, **{HEADER: str(n)}))[0]["data"]) == 5
    finally:
        app.extensions["mlopsctl"].holder.stop()


# ---- a real server, stock tritonclient ----------------------------------------------------------------

def test_tritonclient_sends_one_tensor_to_a_real_server(projects, apps, rows):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from test_serving_server import _clean_env, serving

    app = apps["bc"]
    served = _served(app)
    records = training_records(projects["bc"], "diagnosis", 40)
    want = _outputs(_post(app, {"inputs": _per_column(served, records)}))
    want_labels = [s.encode() for s in want[0]["data"]]
    want_proba = np.asarray(want[1]["data"], dtype=np.float32).reshape(want[1]["shape"])
    matrix = np.array(_matrix(served, records))
    with serving(projects["bc"], "bc@production", "--workers", "1",
                 env=_clean_env(MLOPS_SERVE_MAX_BATCH_ROWS="50")) as server:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            meta = client.get_model_metadata("bc")
            assert meta["parameters"]["single_tensor_input"] == {"shape": [-1, 30], "datatypes": NUMERIC}
            assert meta["parameters"]["feature_order"] == served.contract.feature_names
            for datatype, dtype in (("FP32", np.float32), ("FP64", np.float64)):
                for binary in (True, False):
                    inp = httpclient.InferInput("input-0", list(matrix.shape), datatype)
                    inp.set_data_from_numpy(matrix.astype(dtype), binary_data=binary)
                    result = client.infer("bc", [inp], request_id=f"t-{datatype}-{binary}")
                    assert result.get_response()["id"] == f"t-{datatype}-{binary}"
                    labels = [x if isinstance(x, bytes) else x.encode() for x in result.as_numpy("label").ravel()]
                    assert labels == want_labels, (datatype, binary)
                    np.testing.assert_array_equal(result.as_numpy("probabilities"), want_proba)

            def refused(inp) -> InferenceServerException:
                with pytest.raises(InferenceServerException) as e:
                    client.infer("bc", [inp])
                return e.value

            wrong = httpclient.InferInput("input-0", [2, 29], "FP32")
            wrong.set_data_from_numpy(matrix[:2, :29].astype(np.float32))
            e = refused(wrong)
            assert (e.status(), e.message()) == ("400", "input 'input-0' has 29 column(s); a single [N, F] tensor "
                                                        f"needs 30, the features in this order: {_order(app)}.")
            text = httpclient.InferInput("input-0", [2, 30], "BYTES")
            text.set_data_from_numpy(matrix[:2].astype(str).astype(np.object_))
            e = refused(text)
            assert (e.status(), e.message()) == ("400", BYTES_MESSAGE)
            huge = httpclient.InferInput("input-0", [51, 30], "FP32")
            huge.set_data_from_numpy(np.resize(matrix, (51, 30)).astype(np.float32))
            e = refused(huge)
            assert (e.status(), e.message()) == ("413", "the request holds 51 rows; the limit is 50 "
                                                        "(serve.max_batch_rows).")
            # still serving, both forms
            inp = httpclient.InferInput("input-0", list(matrix.shape), "FP32")
            inp.set_data_from_numpy(matrix.astype(np.float32))
            np.testing.assert_array_equal(client.infer("bc", [inp]).as_numpy("probabilities"), want_proba)
            columns = []
            for meta_in in served.inputs:
                column = httpclient.InferInput(meta_in["name"], [len(records), 1], "FP32")
                j = served.contract.feature_names.index(served.column_by_input[meta_in["name"]])
                column.set_data_from_numpy(matrix[:, j:j + 1].astype(np.float32))
                columns.append(column)
            np.testing.assert_array_equal(client.infer("bc", columns).as_numpy("probabilities"), want_proba)
        finally:
            client.close()
    assert server.returncode == 0, server.output
    assert not re.search(r"Traceback|Internal Server Error", server.output), server.output
