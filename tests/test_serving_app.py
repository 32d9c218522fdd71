"""`mlopsctl serve`, in process: the Flask app of `create_app` driven by its test client.

/predict against the ONNX graph itself and against `mlopsctl predict`; every contract error with its
status and exact body; request size limits; the bearer token; /metrics; the prediction log (including
drops when its queue is full, which must be counted, never silent); /openapi.json against the real URL
map; hot reload through /admin/reload and the background poller.

Two real projects are trained once for the module through the CLI: breast-cancer (30 numeric columns,
no nulls; a 10-tree forest, registered twice as bc/1 and bc/2, bc/1 at @production) and churn
(numeric + categorical + boolean columns with missing values; HistGradientBoosting with 20 iterations,
ch/1 at @production). Nothing of mlopsctl's own is mocked.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner
from served_projects import module_isolation
from served_projects import cli_ok as _cli
from served_projects import make_served_project as _make_project
from served_projects import training_records

BC_TARGET = "diagnosis"
CHURN_TARGET = "churned"
TOKEN_MSG = "missing or wrong bearer token; send 'Authorization: Bearer <serve.token>'."


# ---- module projects ----------------------------------------------------------------------------------





@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from mlopsctl.store import db

    root = tmp_path_factory.mktemp("serving-app")
    with module_isolation(root):
        out = {
            "bc": _make_project(root, "breast-cancer", "bc", "{ n_estimators = 10 }", runs=2),
            "ch": _make_project(root, "churn", "ch", "{ max_iter = 20 }", runs=1),
        }
    db.close_all()
    return out


@pytest.fixture
def make_app(projects):
    """``make_app("bc", "bc@production", token="x")``: a fresh app (serve.* keys as flags); closed after."""
    from mlopsctl.config import load_settings
    from mlopsctl.serving.app import create_app

    apps = []

    def make(project: str = "bc", ref: str | None = None, *, watch: bool = False, **serve: Any):
        settings = load_settings({f"serve.{k}": v for k, v in serve.items()}, {}, projects[project])
        app = create_app(settings, ref or f"{project}@production", watch=watch)
        apps.append(app)
        return app

    yield make
    _close(apps)


def _close(apps: list) -> None:
    closing = []
    for app in apps:
        st = app.extensions["mlopsctl"]
        st.holder.stop()
        if st.predlog is not None:  # each close waits up to one flush interval: close them together
            closing.append(threading.Thread(target=st.predlog.close))
            closing[-1].start()
    for t in closing:
        t.join()


@pytest.fixture(scope="module")
def bc_app(projects):
    """bc@production with the default [serve] settings, shared by the tests that only send requests."""
    from mlopsctl.config import load_settings
    from mlopsctl.serving.app import create_app

    app = create_app(load_settings({}, {}, projects["bc"]), "bc@production", watch=False)
    yield app
    _close([app])


@pytest.fixture
def bc(bc_app):
    return bc_app.test_client()


def _err(message: str, kind: str = "InvalidInputError", rid: str = "t-1") -> dict[str, str]:
    return {"error": kind, "message": message, "request_id": rid}


def _post(client, path: str, body: Any, rid: str = "t-1", **headers: str):
    return client.post(path, data=json.dumps(body), headers={"X-Request-ID": rid, "Content-Type": "application/json",
                                                             **headers})


def _names(projects, project: str = "bc") -> list[str]:
    with open(projects[project] / "data" / "train.csv", newline="") as fh:
        header = next(csv.reader(fh))
    return [h for h in header if h not in (BC_TARGET, CHURN_TARGET)]


# ---- /predict: values -----------------------------------------------------------------------------

def _onnx_session(project: Path, model: str, version: int):
    """The registered ONNX graph itself, read from the content-addressed store and verified."""
    import onnxruntime as ort

    with sqlite3.connect(project / ".mlops" / "mlops.db") as con:
        (sha,) = con.execute(
            "SELECT mv.onnx_sha256 FROM model_versions mv JOIN registered_models m ON m.id = mv.model_id "
            "WHERE m.name = ? AND mv.version = ?", (model, version)).fetchone()
    data = (project / ".mlops" / "artifacts" / "sha256" / sha[:2] / sha[2:]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _feeds(session, records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """One [N, 1] tensor per graph input: strings ('' for null) or float32 (NaN for null, bools as 0/1)."""
    feeds = {}
    for inp in session.get_inputs():
        values = [r[inp.name] for r in records]
        if inp.type == "tensor(string)":
            feeds[inp.name] = np.array(["" if v is None else v for v in values], dtype=object).reshape(-1, 1)
        else:
            feeds[inp.name] = np.array([np.nan if v is None else float(v) for v in values],
                                       dtype=np.float32).reshape(-1, 1)
    return feeds


def test_predict_equals_the_onnx_graph_and_probabilities_sum_to_one(projects, bc):
    records = training_records(projects["bc"], BC_TARGET, 60)
    r = _post(bc, "/predict", {"records": records}, rid="values-1")
    assert r.status_code == 200
    body = r.get_json()
    assert r.headers["X-Request-ID"] == "values-1"
    assert r.headers["Content-Type"] == "application/json"
    assert set(body) == {"request_id", "model", "version", "predictions", "probabilities"}
    assert (body["request_id"], body["model"], body["version"]) == ("values-1", "bc", 1)

    # the server's CPU session is called without InferenceSession.run's Python wrapper; an independent
    # session through the wrapper must agree
    assert bc.application.extensions["mlopsctl"].model.scorer._direct is not None
    sess = _onnx_session(projects["bc"], "bc", 1)
    label, proba = sess.run(["label", "probabilities"], _feeds(sess, records))
    assert body["predictions"] == [str(x) for x in label.ravel()]
    assert len(body["probabilities"]) == 60
    for row, expected in zip(body["probabilities"], proba):
        assert list(row) == ["benign", "malignant"]
        assert [row["benign"], row["malignant"]] == pytest.approx(expected.tolist(), abs=1e-6)
        assert sum(row.values()) == pytest.approx(1.0, abs=2e-6)
    assert len(set(body["predictions"])) == 2  # both classes occur in these rows
    assert any(0.05 < p["benign"] < 0.95 for p in body["probabilities"])  # not only 0/1 probabilities


def test_predict_equals_mlopsctl_predict(projects, bc, tmp_path):
    records = training_records(projects["bc"], BC_TARGET, 25, start=100)
    names = _names(projects)
    src, out = tmp_path / "rows.csv", tmp_path / "scored.csv"
    with open(src, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        w.writerows([[r[n] for n in names] for r in records])
    result = _cli("-C", projects["bc"], "predict", "bc@production", src, "-o", out, "--json")
    assert json.loads(result.stdout)["scored"] == 25
    with open(out, newline="") as fh:
        scored = list(csv.DictReader(fh))

    body = _post(bc, "/predict", {"records": records}).get_json()
    rows = [(i, body["predictions"][i], body["probabilities"][i], s["prediction"], s["proba_benign"], s["proba_malignant"])
            for i, s in enumerate(scored)]
    differ = [r for r in rows if r[1] != r[3] or abs(r[2]["benign"] - float(r[4])) > 1e-6
              or abs(r[2]["malignant"] - float(r[5])) > 1e-6]
    assert differ == []  # (row, served label, served probabilities, batch label, batch probabilities)


def test_request_id_is_made_up_when_absent_and_echoed_in_the_header(projects, bc):
    records = training_records(projects["bc"], BC_TARGET, 1)
    r = bc.post("/predict", json={"records": records})
    rid = r.get_json()["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert r.headers["X-Request-ID"] == rid
    # errors carry it too
    r = bc.post("/predict", json={"records": []})
    assert r.headers["X-Request-ID"] == r.get_json()["request_id"]


def test_mixed_type_model_with_missing_values_equals_the_onnx_graph(projects, make_app):
    client = make_app("ch").test_client()
    records = training_records(projects["ch"], CHURN_TARGET, 80)
    assert any(None in r.values() for r in records)  # the churn data has missing values
    nulls = {"plan": None, "monthly_charges": None, "age": None}  # columns that had nulls in training
    records[0] = {**records[0], **nulls}
    records[1] = {**records[1], "has_support": "yes", "tenure_months": "12"}  # text is parsed per the contract
    r = _post(client, "/predict", {"records": records})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert (body["model"], body["version"]) == ("ch", 1)

    sess = _onnx_session(projects["ch"], "ch", 1)
    expected_input = [dict(rec) for rec in records]
    expected_input[1] = {**records[1], "has_support": True, "tenure_months": 12.0}
    label, proba = sess.run(["label", "probabilities"], _feeds(sess, expected_input))
    assert body["predictions"] == [str(x) for x in label.ravel()]
    for row, exp in zip(body["probabilities"], proba):
        assert [row["no"], row["yes"]] == pytest.approx(exp.tolist(), abs=1e-6)
        assert sum(row.values()) == pytest.approx(1.0, abs=2e-6)
    assert len(set(body["predictions"])) == 2


# ---- /predict: contract errors --------------------------------------------------------------------

@pytest.fixture(scope="module")
def bc_row(projects) -> dict[str, Any]:
    return training_records(projects["bc"], BC_TARGET, 1)[0]


def test_missing_column_is_named(projects, bc, bc_row):
    names = _names(projects)
    rec = {k: v for k, v in bc_row.items() if k != "mean_area"}
    r = _post(bc, "/predict", {"records": [bc_row, rec]})
    assert r.status_code == 400
    assert r.get_json() == _err(f"missing column 'mean_area' in records[1]; the model needs {', '.join(names)}.")


def test_extra_column_rejected_by_default(projects, bc, bc_row):
    names = _names(projects)
    r = _post(bc, "/predict", {"records": [{**bc_row, "zip_code": "12345"}]})
    assert r.status_code == 400
    assert r.get_json() == _err(f"unexpected column(s) 'zip_code'; the model takes {', '.join(names)}.")


def test_extra_column_in_a_later_record_only_is_rejected_too(projects, bc, bc_row):
    names = _names(projects)
    r = _post(bc, "/predict", {"records": [bc_row, {**bc_row, "zip_code": "12345"}]})
    assert r.status_code == 400
    assert r.get_json() == _err(f"unexpected column(s) 'zip_code'; the model takes {', '.join(names)}.")


def test_extra_column_in_the_first_record_only_is_named_as_unexpected(projects, bc, bc_row):
    names = _names(projects)
    r = _post(bc, "/predict", {"records": [{**bc_row, "zip_code": "12345"}, bc_row]})
    assert r.status_code == 400
    assert r.get_json() == _err(f"unexpected column(s) 'zip_code'; the model takes {', '.join(names)}.")


def test_extra_columns_ignored_when_configured(make_app, bc_row):
    client = make_app("bc", extra_columns="ignore").test_client()
    plain = _post(client, "/predict", {"records": [bc_row]}).get_json()
    for records in ([{**bc_row, "zip_code": "1"}], [bc_row, {**bc_row, "zip_code": "1"}]):
        r = _post(client, "/predict", {"records": records})
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["predictions"] == plain["predictions"] * len(records)


def test_extra_column_in_the_first_record_only_is_ignored_when_configured(make_app, bc_row):
    client = make_app("bc", extra_columns="ignore").test_client()
    r = _post(client, "/predict", {"records": [{**bc_row, "zip_code": "1"}, bc_row]})
    assert r.status_code == 200, r.get_json()
    assert len(r.get_json()["predictions"]) == 2


def test_wrong_type_names_column_and_row(bc, bc_row):
    r = _post(bc, "/predict", {"records": [bc_row, {**bc_row, "mean_texture": "high"}]})
    assert r.status_code == 400
    assert r.get_json() == _err("column 'mean_texture' must be numeric, got 'high' at row 1.")
    r = _post(bc, "/predict", {"records": [bc_row, {**bc_row, "mean_texture": "high"},
                                           {**bc_row, "mean_texture": [1]}, {**bc_row, "mean_texture": {}}]})
    assert r.status_code == 400
    assert r.get_json() == _err("column 'mean_texture' must be numeric, got 'high' at row 1 (and 2 more row(s)).")


@pytest.mark.parametrize("value", [[1.0, 2.0], [[3.0]], [4.0], ["a", "b"]], ids=["pair", "nested", "one", "strings"])
@pytest.mark.parametrize("where", ["second-row", "only-row"])
def test_a_list_where_a_number_is_expected_is_a_400(bc, bc_row, value, where):
    """Values are scalars: a list in a cell is a wrong type, never reshaped into extra rows or a 500."""
    records = [bc_row, {**bc_row, "mean_texture": value}] if where == "second-row" else [{**bc_row, "mean_texture": value}]
    row = len(records) - 1
    r = _post(bc, "/predict", {"records": records})
    assert r.status_code == 400, r.get_json()
    assert r.get_json() == _err(f"column 'mean_texture' must be numeric, got {value!r} at row {row}.")


@pytest.mark.parametrize("value", [["basic", "premium"], ["basic"]], ids=["pair", "one"])
def test_a_list_where_a_category_is_expected_is_a_400(projects, make_app, value):
    row = next(r for r in training_records(projects["ch"], CHURN_TARGET, 20) if None not in r.values())
    r = _post(make_app("ch").test_client(), "/predict", {"records": [{**row, "plan": value}]})
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["message"].startswith("column 'plan' ")
    assert r.get_json()["message"].endswith(" at row 0.")


def test_null_where_training_had_none(make_app, bc, bc_row):
    r = _post(bc, "/predict", {"records": [{**bc_row, "worst_area": None}]})
    assert r.status_code == 400
    assert r.get_json() == _err("column 'worst_area' is null, but it had no nulls in training at row 0.")
    client = make_app("bc", unseen_nulls="accept").test_client()
    r = _post(client, "/predict", {"records": [{**bc_row, "worst_area": None}]})
    assert r.status_code == 200, r.get_json()
    assert len(r.get_json()["predictions"]) == 1


def test_unknown_category_accepted_by_default_and_rejected_when_configured(projects, make_app):
    row = next(r for r in training_records(projects["ch"], CHURN_TARGET, 20) if None not in r.values())
    client = make_app("ch").test_client()
    r = _post(client, "/predict", {"records": [row, {**row, "plan": "platinum"}]})
    assert r.status_code == 200, r.get_json()
    assert len(r.get_json()["predictions"]) == 2
    strict = make_app("ch", unknown_category="reject").test_client()
    r = _post(strict, "/predict", {"records": [row, {**row, "plan": "platinum"}]})
    assert r.status_code == 400
    assert r.get_json() == _err("column 'plan' has unknown category 'platinum' (known: basic, premium, standard) at row 1.")
    # a null is not an unknown category (plan had nulls in training)
    assert _post(strict, "/predict", {"records": [{**row, "plan": None}]}).status_code == 200


def test_far_out_of_range_is_flagged_by_default_and_rejected_when_configured(make_app, bc_app, bc, bc_row):
    spec = bc_app.extensions["mlopsctl"].model.contract.column("mean_radius")
    span = spec.max - spec.min
    lo, hi = spec.min - span, spec.max + span
    text = (f"column 'mean_radius' value 1e+06 is far outside the training range [{spec.min:g}, {spec.max:g}] "
            f"(accepted: [{lo:g}, {hi:g}])")
    near = {**bc_row, "mean_radius": hi - 0.01}  # within the tolerance: no warning
    r = _post(bc, "/predict", {"records": [near, {**bc_row, "mean_radius": 1e6}]})
    assert r.status_code == 200
    body = r.get_json()
    assert body["warnings"] == [f"{text} at row 1"]
    assert len(body["predictions"]) == 2
    assert "warnings" not in _post(bc, "/predict", {"records": [near]}).get_json()

    strict = make_app("bc", out_of_range="reject").test_client()
    r = _post(strict, "/predict", {"records": [near, {**bc_row, "mean_radius": 1e6}]})
    assert r.status_code == 400
    assert r.get_json() == _err(f"{text} at row 1.")
    assert _post(strict, "/predict", {"records": [near]}).status_code == 200


def test_numbers_beyond_float32_are_flagged_like_any_far_value(bc_app, bc, bc_row):
    """The ONNX graph takes float32: 1e39 is out of range (a warning by default), not a numpy overflow in the
    cast (an uncaught RuntimeWarning: a 500 under warnings-as-errors, log noise and inf fed to the model
    otherwise)."""
    spec = bc_app.extensions["mlopsctl"].model.contract.column("mean_radius")
    span = spec.max - spec.min
    r = _post(bc, "/predict", {"records": [{**bc_row, "mean_radius": 1e39}]})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["warnings"] == [
        f"column 'mean_radius' value 1e+39 is far outside the training range [{spec.min:g}, {spec.max:g}] "
        f"(accepted: [{spec.min - span:g}, {spec.max + span:g}]) at row 0"]


def test_empty_records(bc):
    r = _post(bc, "/predict", {"records": []})
    assert r.status_code == 400
    assert r.get_json() == _err("the request holds no rows; send at least one.")


def test_too_many_rows_is_413(make_app, bc_row):
    client = make_app("bc", max_batch_rows=3).test_client()
    assert _post(client, "/predict", {"records": [bc_row] * 3}).status_code == 200
    r = _post(client, "/predict", {"records": [bc_row] * 4})
    assert r.status_code == 413
    assert r.get_json() == _err("the request holds 4 rows; the limit is 3 (serve.max_batch_rows).", "PayloadTooLarge")


def test_body_too_large_is_413_json(make_app, bc_row):
    app = make_app("bc", max_body_mb=0.01)  # 10485 bytes
    client = app.test_client()
    assert _post(client, "/predict", {"records": [bc_row] * 5}).status_code == 200
    r = _post(client, "/predict", {"records": [bc_row] * 50})
    assert r.status_code == 413
    assert r.headers["Content-Type"] == "application/json"
    assert r.get_json() == _err("the request body is larger than 0.01 MiB (serve.max_body_mb).", "RequestEntityTooLarge")
    # each protocol keeps its own error shape
    r = client.post("/invocations", json={"dataframe_records": [bc_row] * 50})
    assert r.status_code == 413
    assert r.get_json() == {"error_code": "BAD_REQUEST",
                            "message": "the request body is larger than 0.01 MiB (serve.max_body_mb)."}
    r = client.post("/v2/models/bc/infer", data=b"{" + b" " * 20000 + b"}")
    assert r.status_code == 413
    assert r.get_json() == {"error": "the request body is larger than 0.01 MiB (serve.max_body_mb)."}


@pytest.mark.parametrize("raw, message", [
    (b"", "the request body is empty; send a JSON object."),
    (b'{"records": [', "the request body is not valid JSON (unexpected end of data: line 1 column 14 (char 13))."),
    (b"[1, 2]", 'send {"records": [{"column": value, ...}, ...]}.'),
    (b'"records"', 'send {"records": [{"column": value, ...}, ...]}.'),
    (b'{"rows": []}', 'send {"records": [{"column": value, ...}, ...]}.'),
    (b'{"records": {"a": 1}}', "records must be a list of objects, got dict."),
    (b'{"records": [1]}', "records[0] must be an object mapping column names to values, got int."),
], ids=["empty", "truncated", "list", "string", "no-records", "records-object", "record-int"])
def test_malformed_bodies(bc, raw, message):
    r = bc.post("/predict", data=raw, headers={"X-Request-ID": "t-1"})
    assert r.status_code == 400
    assert r.get_json() == _err(message)


def test_wrong_method_and_unknown_path_are_json(bc):
    r = bc.get("/predict", headers={"X-Request-ID": "t-1"})
    assert r.status_code == 405
    assert r.headers["Content-Type"] == "application/json"
    assert r.get_json() == _err("GET is not allowed on /predict; allowed: OPTIONS, POST.", "MethodNotAllowed")
    r = bc.post("/nope", headers={"X-Request-ID": "t-1"})
    assert r.status_code == 404
    assert r.headers["Content-Type"] == "application/json"
    assert r.get_json() == _err("no endpoint /nope; see /openapi.json.", "NotFound")
    r = bc.get("/invocations")
    assert r.status_code == 405
    assert r.get_json() == {"error_code": "BAD_REQUEST", "message": "GET is not allowed on /invocations; allowed: OPTIONS, POST."}
    r = bc.get("/v2/models/bc/infer")
    assert r.status_code == 405
    assert r.get_json() == {"error": "GET is not allowed on /v2/models/bc/infer; allowed: OPTIONS, POST."}
    r = bc.get("/v2/nope")
    assert r.status_code == 404
    assert r.get_json() == {"error": "no endpoint /v2/nope; see /openapi.json."}


# ---- bearer token -------------------------------------------------------------------------------------

def _protected_requests(row: dict[str, Any], names: list[str]) -> list[tuple[str, str, bytes | None, dict]]:
    v2 = {"inputs": [{"name": n, "datatype": "FP64", "shape": [1, 1], "data": [row[n]]} for n in names]}
    return [
        ("POST", "/predict", json.dumps({"records": [row]}).encode(),
         {"error": "Unauthorized", "message": TOKEN_MSG, "request_id": "t-1"}),
        ("POST", "/invocations", json.dumps({"dataframe_records": [row]}).encode(),
         {"error_code": "UNAUTHENTICATED", "message": TOKEN_MSG}),
        ("POST", "/v2/models/bc/infer", json.dumps(v2).encode(), {"error": TOKEN_MSG}),
        ("POST", "/v2/models/bc/versions/1/infer", json.dumps(v2).encode(), {"error": TOKEN_MSG}),
        ("GET", "/metrics", None, {"error": "Unauthorized", "message": TOKEN_MSG, "request_id": "t-1"}),
        ("POST", "/admin/reload", None, {"error": "Unauthorized", "message": TOKEN_MSG, "request_id": "t-1"}),
    ]


def test_bearer_token(projects, make_app, bc_row):
    client = make_app("bc", token="s3cret-token").test_client()
    for method, path, data, unauthorized in _protected_requests(bc_row, _names(projects)):
        for auth in (None, "Bearer wrong", "Bearer s3cret-token-and-more", "s3cret-token", "Basic s3cret-token"):
            headers = {"X-Request-ID": "t-1", **({"Authorization": auth} if auth else {})}
            r = client.open(path, method=method, data=data, headers=headers)
            assert r.status_code == 401, (path, auth)
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert r.get_json() == unauthorized, (path, auth)
        for auth in ("Bearer s3cret-token", "bearer s3cret-token"):
            r = client.open(path, method=method, data=data, headers={"Authorization": auth})
            assert r.status_code == 200, (path, auth, r.data[:300])
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/bc", "/v2/models/bc/ready", "/ping",
                 "/health", "/version", "/openapi.json"):
        assert client.get(path).status_code == 200, path


# ---- /metrics -----------------------------------------------------------------------------------------

def _metrics(client, **headers: str) -> dict[tuple[str, frozenset], float]:
    from prometheus_client.parser import text_string_to_metric_families

    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(r.get_data(as_text=True)) for s in fam.samples}


def _value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_exist_and_move(make_app, bc_row):
    client = make_app("bc").test_client()
    before = _metrics(client)
    assert _value(before, "mlops_model_version", model="bc", provider="CPUExecutionProvider") == 1.0
    assert _value(before, "mlops_prediction_log_queue_depth") == 0.0
    assert _value(before, "mlops_prediction_log_dropped_total") == 0.0
    assert _value(before, "mlops_prediction_log_write_errors_total") == 0.0
    assert _value(before, "mlops_requests_total", endpoint="predict", status="200") is None

    for _ in range(3):
        assert _post(client, "/predict", {"records": [bc_row, bc_row]}).status_code == 200
    assert _post(client, "/predict", {"records": []}).status_code == 400
    assert _post(client, "/predict", {"records": [{**bc_row, "mean_radius": 1e6}]}).status_code == 200
    assert client.post("/invocations", json={"dataframe_records": [bc_row]}).status_code == 200
    assert client.get("/nope").status_code == 404

    after = _metrics(client)
    assert _value(after, "mlops_requests_total", endpoint="predict", status="200") == 4.0
    assert _value(after, "mlops_requests_total", endpoint="predict", status="400") == 1.0
    assert _value(after, "mlops_requests_total", endpoint="mlflow.invocations", status="200") == 1.0
    assert _value(after, "mlops_requests_total", endpoint="unmatched", status="404") == 1.0
    assert _value(after, "mlops_requests_total", endpoint="metrics", status="200") == 1.0  # the first scrape
    assert _value(after, "mlops_request_seconds_count", endpoint="predict") == 5.0
    assert _value(after, "mlops_request_seconds_bucket", endpoint="predict", le="+Inf") == 5.0
    assert _value(after, "mlops_request_seconds_sum", endpoint="predict") > 0
    assert _value(after, "mlops_errors_total", kind="InvalidInputError") == 1.0
    assert _value(after, "mlops_errors_total", kind="NotFound") == 1.0
    assert _value(after, "mlops_predicted_rows_total", model="bc", version="1") == 8.0
    assert _value(after, "mlops_contract_warnings_total", column="mean_radius") == 1.0
    assert _value(after, "mlops_model_version", model="bc", provider="CPUExecutionProvider") == 1.0
    assert _value(after, "mlops_prediction_log_dropped_total") == 0.0
    assert _value(after, "mlops_model_reloads_total", model="bc") is None


def test_metrics_content_type_is_the_exposition_formats(bc):
    """The version parameter tells Prometheus which text format it reads (prometheus_client's own type)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    r = bc.get("/metrics")
    assert r.headers["Content-Type"] == CONTENT_TYPE_LATEST


# ---- prediction log -----------------------------------------------------------------------------------

def _logged(project: Path, *request_ids: str) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(project / ".mlops" / "mlops.db") as con:
        con.row_factory = sqlite3.Row
        marks = ",".join("?" * len(request_ids))
        rows = con.execute(f"SELECT * FROM predictions WHERE request_id IN ({marks})", request_ids).fetchall()
    return {r["request_id"]: dict(r) for r in rows}


def test_prediction_log_rows(projects, bc_app, bc_row):
    app = bc_app
    client = app.test_client()
    names = _names(projects)
    two = [bc_row, {**bc_row, "mean_radius": 11.5}]
    p = _post(client, "/predict", {"records": two}, rid="log-predict").get_json()
    m = _post(client, "/invocations", {"dataframe_split": {"columns": names, "data": [[bc_row[n] for n in names]]}},
              rid="log-mlflow").get_json()
    v2_body = {"inputs": [{"name": n, "datatype": "FP32", "shape": [1], "data": [bc_row[n]]} for n in names]}
    v = _post(client, "/v2/models/bc/infer", v2_body, rid="log-v2").get_json()
    assert _post(client, "/predict", {"records": []}, rid="log-failed").status_code == 400
    app.extensions["mlopsctl"].predlog.flush()

    logged = _logged(projects["bc"], "log-predict", "log-mlflow", "log-v2", "log-failed")
    assert set(logged) == {"log-predict", "log-mlflow", "log-v2"}  # failed requests score nothing
    row = logged["log-predict"]
    assert (row["model"], row["version"], row["endpoint"], row["n_rows"]) == ("bc", 1, "predict", 2)
    assert row["latency_ms"] > 0
    from mlopsctl.predlog_format import read_requests

    logged_rows = read_requests(app.extensions["mlopsctl"].holder.project.store, ["log-predict", "log-mlflow", "log-v2"], names)
    inputs, outputs = logged_rows["log-predict"]["inputs"], logged_rows["log-predict"]["outputs"]
    assert set(inputs) == set(names)
    assert inputs["mean_radius"] == [bc_row["mean_radius"], 11.5]
    assert inputs["worst_area"] == [bc_row["worst_area"]] * 2
    assert outputs["label"] == p["predictions"]
    assert np.allclose(outputs["probabilities"], [[d["benign"], d["malignant"]] for d in p["probabilities"]], atol=1e-6)
    assert (logged["log-mlflow"]["endpoint"], logged["log-mlflow"]["n_rows"]) == ("invocations", 1)
    assert logged_rows["log-mlflow"]["outputs"]["label"] == m["predictions"]
    assert (logged["log-v2"]["endpoint"], logged["log-v2"]["n_rows"]) == ("v2", 1)
    assert logged_rows["log-v2"]["outputs"]["label"] == v["outputs"][0]["data"]


def test_prediction_log_drops_are_counted_never_silent(projects, make_app, bc_row):
    """A writer blocked by another process's write lock + a queue of 2: a burst of 12 requests all answer
    200 and overflow the queue (counted in /metrics); once the writer is stuck, 3 more fill the queue to
    its bound (depth 2 in /metrics) and the third is counted too. After the lock is released every request
    is either in the predictions table or counted as dropped."""
    app = make_app("bc", log_queue_size=2)
    client = app.test_client()
    predlog = app.extensions["mlopsctl"].predlog
    ids = [f"burst-{i}" for i in range(15)]
    locker = sqlite3.connect(projects["bc"] / ".mlops" / "mlops.db", isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")  # another writer holds the store's write lock
        for rid in ids[:12]:
            assert _post(client, "/predict", {"records": [bc_row]}, rid=rid).status_code == 200
        time.sleep(0.3)  # the writer has taken its first batch and waits for the lock
        burst = _metrics(client)
        assert _value(burst, "mlops_prediction_log_dropped_total") >= 1  # how many the writer took varies
        assert _value(burst, "mlops_prediction_log_dropped_total") == predlog.dropped
        for rid in ids[12:]:
            assert _post(client, "/predict", {"records": [bc_row]}, rid=rid).status_code == 200
        during = _metrics(client)
        assert _value(during, "mlops_prediction_log_queue_depth") == 2.0
        dropped = _value(during, "mlops_prediction_log_dropped_total")
        assert dropped == predlog.dropped
        assert dropped > _value(burst, "mlops_prediction_log_dropped_total")
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    predlog.flush()
    written = _logged(projects["bc"], *ids)
    assert len(written) + dropped == 15
    after = _metrics(client)
    assert _value(after, "mlops_prediction_log_queue_depth") == 0.0
    assert _value(after, "mlops_prediction_log_dropped_total") == dropped
    assert _value(after, "mlops_prediction_log_write_errors_total") == 0.0


def test_serving_and_logging_never_import_pandas_or_scikit_learn(projects):
    """A worker's request and prediction-log paths stay light: pandas (which pyarrow's ``pa.array`` imports
    lazily, ~0.25 s holding the GIL in the writer thread) and scikit-learn are never loaded. Checked in a
    fresh process: the mixed-type churn model (string labels, categorical inputs) and the numeric one."""
    import subprocess
    import sys

    script = """
import json, pathlib, sys
from mlopsctl.config import load_settings
from mlopsctl.serving.app import create_app
project, model, records = pathlib.Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
app = create_app(load_settings({}, {}, project), model + "@production", watch=False)
client = app.test_client()
for i in range(3):
    r = client.post("/predict", json={"records": records})
    assert r.status_code == 200, r.get_json()
assert app.extensions["mlopsctl"].predlog.flush(timeout=30)
assert app.extensions["mlopsctl"].predlog.written == 3
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("pandas", "sklearn", "joblib"))))
"""
    for project, model, target in ((projects["bc"], "bc", BC_TARGET), (projects["ch"], "ch", CHURN_TARGET)):
        records = training_records(project, target, 4)
        out = subprocess.run([sys.executable, "-c", script, str(project), model, json.dumps(records)],
                             capture_output=True, text=True, timeout=300, cwd=project)
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads(out.stdout.strip().splitlines()[-1]) == [], model


def test_prediction_log_can_be_switched_off(projects, make_app, bc_row):
    app = make_app("bc", log_predictions=False)
    assert app.extensions["mlopsctl"].predlog is None
    assert _post(app.test_client(), "/predict", {"records": [bc_row]}, rid="log-off").status_code == 200
    time.sleep(0.3)
    assert _logged(projects["bc"], "log-off") == {}
    assert _value(_metrics(app.test_client()), "mlops_prediction_log_queue_depth") == 0.0


# ---- /openapi.json ------------------------------------------------------------------------------------

def test_openapi_lists_every_route(projects, bc_app):
    app = bc_app
    spec = app.test_client().get("/openapi.json").get_json()
    assert spec["openapi"] == "3.1.0"
    assert spec["info"]["title"] == "mlopsctl serving bc"
    routes = {}
    for rule in app.url_map.iter_rules():
        path = rule.rule.replace("<name>", "{model_name}").replace("<version>", "{model_version}")
        routes.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    documented = {path: set(ops) for path, ops in spec["paths"].items()}
    assert documented == routes
    # the record schema names the model's real columns
    record = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert record["properties"]["records"]["items"]["required"] == _names(projects)
    assert {p for p, ops in spec["paths"].items() for op in ops.values() if op.get("security")} == {
        "/predict", "/invocations", "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer", "/metrics", "/admin/reload"}


# ---- hot reload ---------------------------------------------------------------------------------------

def test_hot_reload_follows_the_alias_and_a_pinned_version_stays(projects, make_app, bc_row):
    from mlopsctl.cli.main import app as cli_app

    runner = CliRunner()
    bc = projects["bc"]

    def promote(version: int) -> None:
        r = runner.invoke(cli_app, ["-C", str(bc), "promote", "bc", str(version), "--alias", "staging", "--force"])
        assert r.exit_code == 0, (r.stdout, r.stderr)

    promote(1)
    follower = make_app("bc", "bc@staging")
    pinned = make_app("bc", "bc/1")
    f, p = follower.test_client(), pinned.test_client()
    assert _post(f, "/predict", {"records": [bc_row]}).get_json()["version"] == 1
    assert f.post("/admin/reload").get_json() == {"model": "bc", "version": 1, "reloaded": False, "error": None}

    promote(2)
    assert _post(f, "/predict", {"records": [bc_row]}).get_json()["version"] == 1  # not until checked
    assert f.post("/admin/reload").get_json() == {"model": "bc", "version": 2, "reloaded": True, "error": None}
    r = _post(f, "/predict", {"records": [bc_row]}).get_json()
    assert (r["model"], r["version"]) == ("bc", 2)
    assert f.get("/v2/models/bc").get_json()["versions"] == ["2"]
    assert f.get("/v2/models/bc/versions/2/ready").status_code == 200
    assert f.get("/v2/models/bc/versions/1/ready").status_code == 404
    samples = _metrics(f)
    assert _value(samples, "mlops_model_version", model="bc", provider="CPUExecutionProvider") == 2.0
    assert _value(samples, "mlops_model_reloads_total", model="bc") == 1.0

    assert p.post("/admin/reload").get_json() == {"model": "bc", "version": 1, "reloaded": False, "error": None}
    assert _post(p, "/predict", {"records": [bc_row]}).get_json()["version"] == 1
    assert pinned.extensions["mlopsctl"].holder.follows_alias is False


def test_background_poller_swaps_without_a_reload_call(projects, make_app, bc_row):
    from mlopsctl.cli.main import app as cli_app

    runner = CliRunner()
    bc = projects["bc"]

    def promote(version: int) -> None:
        r = runner.invoke(cli_app, ["-C", str(bc), "promote", "bc", str(version), "--alias", "canary", "--force"])
        assert r.exit_code == 0, (r.stdout, r.stderr)

    promote(1)
    client = make_app("bc", "bc@canary", watch=True, reload_interval=0.05).test_client()
    assert _post(client, "/predict", {"records": [bc_row]}).get_json()["version"] == 1
    promote(2)
    deadline = time.monotonic() + 10
    versions = []
    while time.monotonic() < deadline:
        r = _post(client, "/predict", {"records": [bc_row]})
        assert r.status_code == 200
        versions.append(r.get_json()["version"])
        if versions[-1] == 2:
            break
        time.sleep(0.02)
    assert versions[-1] == 2
    assert versions == sorted(versions)  # never back


def test_failed_reload_keeps_serving_and_says_why(projects, make_app, bc_row):
    """The alias is deleted out from under the server: it keeps serving the last good version."""
    from mlopsctl.cli.main import app as cli_app

    bc = projects["bc"]
    r = CliRunner().invoke(cli_app, ["-C", str(bc), "promote", "bc", "1", "--alias", "doomed", "--force"])
    assert r.exit_code == 0, r.stderr
    client = make_app("bc", "bc@doomed").test_client()
    with sqlite3.connect(bc / ".mlops" / "mlops.db") as con:
        con.execute("DELETE FROM aliases WHERE name = 'doomed'")
    body = client.post("/admin/reload").get_json()
    error = body.pop("error")
    assert body == {"model": "bc", "version": 1, "reloaded": False}
    assert error.startswith("NotFoundError: bc has no alias 'doomed'; its aliases are ")  # the others vary by test
    assert "production" in error
    r = _post(client, "/predict", {"records": [bc_row]})
    assert r.status_code == 200
    assert r.get_json()["version"] == 1


# ---- /predict on the raw WSGI environ -------------------------------------------------------------------------

def _wsgi(wsgi_app: Any, body: bytes | None, headers: dict[str, str] | None = None, method: str = "POST",
          path: str = "/predict", length: bool = True) -> tuple[str, dict[str, str], bytes]:
    import io

    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080",
               "SERVER_PROTOCOL": "HTTP/1.1", "QUERY_STRING": "", "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(body or b""), "wsgi.errors": io.StringIO(), "CONTENT_TYPE": "application/json"}
    if length and body is not None:
        environ["CONTENT_LENGTH"] = str(len(body))
    elif body is not None:  # a chunked body, as gunicorn passes it
        environ["wsgi.input_terminated"] = True
    for k, v in (headers or {}).items():
        environ["HTTP_" + k.upper().replace("-", "_")] = v
    got: dict[str, Any] = {}

    def start_response(status: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> None:
        got["status"], got["headers"] = status, dict(hdrs)

    it = wsgi_app(environ, start_response)
    try:
        data = b"".join(it)
    finally:
        getattr(it, "close", lambda: None)()
    return got["status"], got["headers"], data


def _predict_cases(projects) -> list[tuple[str, bytes, int, Any]]:
    bc = training_records(projects["bc"], BC_TARGET, 3)
    far = {**bc[0], "mean_radius": 1e6}
    names = ", ".join(_names(projects))
    return [  # (what, body, status, rows predicted or the error's message)
        ("one row", json.dumps({"records": bc[:1]}).encode(), 200, 1),
        ("three rows", json.dumps({"records": bc}).encode(), 200, 3),
        ("flagged far outside the training range", json.dumps({"records": [far]}).encode(), 200, 1),
        ("a missing column", json.dumps({"records": [{k: v for k, v in bc[0].items() if k != "mean_area"}]}).encode(),
         400, f"missing column 'mean_area' in records[0]; the model needs {names}."),
        ("an extra column", json.dumps({"records": [{**bc[0], "zip": 1}]}).encode(), 400,
         f"unexpected column(s) 'zip'; the model takes {names}."),
        ("no rows", b'{"records": []}', 400, "the request holds no rows; send at least one."),
        ("a string for a number", json.dumps({"records": [{**bc[0], "mean_area": "big"}]}).encode(), 400,
         "column 'mean_area' must be numeric, got 'big' at row 0."),
        ("malformed JSON", b'{"records": [', 400,
         "the request body is not valid JSON (unexpected end of data: line 1 column 14 (char 13))."),
        ("binary junk", bytes(range(256)), 400, "the request body is not valid JSON ("),
        ("an empty body", b"", 400, "the request body is empty; send a JSON object."),
        ("a JSON list", b"[1, 2]", 400, 'send {"records": [{"column": value, ...}, ...]}.'),
    ]


def test_predict_answers_every_request_itself(projects, make_app):
    """/predict runs on the raw WSGI environ, in front of Flask: valid requests and every kind of bad one get
    the status line, headers and JSON of mlopsctl's other routes; the scores are the ONNX graph's."""
    app = make_app("bc", log_predictions=False)
    sess = _onnx_session(projects["bc"], "bc", 1)
    for what, body, status, expected in _predict_cases(projects):
        rid = f"same-{len(what)}"
        line, headers, data = _wsgi(app.wsgi_app, body, {"X-Request-ID": rid})
        assert line == {200: "200 OK", 400: "400 BAD REQUEST"}[status], what
        assert headers == {"Content-Type": "application/json", "Content-Length": str(len(data)), "X-Request-ID": rid}, what
        got = json.loads(data)
        if status == 200:
            records = json.loads(body)["records"]
            label, proba = sess.run(["label", "probabilities"], _feeds(sess, records))
            assert (got["request_id"], got["model"], got["version"]) == (rid, "bc", 1), what
            assert got["predictions"] == [str(x) for x in label.ravel()] and len(got["predictions"]) == expected, what
            np.testing.assert_allclose([[p["benign"], p["malignant"]] for p in got["probabilities"]], proba, atol=1e-6)
            assert len(got.get("warnings", [])) == int(what.startswith("flagged")), what
        elif what == "binary junk":  # orjson words the byte it stopped at
            assert got["message"].startswith(expected) and got == _err(got["message"], rid=rid), what
        else:
            assert got == _err(expected, rid=rid), what


def test_predict_checks_token_method_and_body_limit_itself(projects, make_app, bc_row):
    app = make_app("bc", log_predictions=False, token="s3cret", max_body_mb=0.001)
    wsgi = app.wsgi_app
    one = json.dumps({"records": [bc_row]}).encode()
    auth = {"Authorization": "Bearer s3cret", "X-Request-ID": "t-1"}
    assert _wsgi(wsgi, one, auth)[0] == "200 OK"
    for headers in ({"Authorization": "Bearer wrong", "X-Request-ID": "t-1"}, {"X-Request-ID": "t-1"}):
        status, got, data = _wsgi(wsgi, one, headers)
        assert (status, got["WWW-Authenticate"], got["X-Request-ID"]) == ("401 UNAUTHORIZED", "Bearer", "t-1")
        assert json.loads(data) == _err(TOKEN_MSG, "Unauthorized")
    too_big = _err("the request body is larger than 0.001 MiB (serve.max_body_mb).", "RequestEntityTooLarge")
    big = json.dumps({"records": [bc_row] * 10}).encode()  # over the 1 kB body limit
    for length in (True, False):  # by Content-Length, and for a chunked body once 1 kB has arrived
        status, _, data = _wsgi(wsgi, big, auth, length=length)
        assert status == "413 REQUEST ENTITY TOO LARGE" and json.loads(data) == too_big
    status, _, data = _wsgi(wsgi, one, auth, length=False)  # a chunked body within the limit
    assert status == "200 OK" and json.loads(data)["predictions"]
    status, got, data = _wsgi(wsgi, one, auth, method="PUT")  # the token is not asked: no route takes PUT
    assert status == "405 METHOD NOT ALLOWED"
    assert got == {"Content-Type": "application/json", "Content-Length": str(len(data)), "X-Request-ID": "t-1"}
    assert json.loads(data) == _err("PUT is not allowed on /predict; allowed: OPTIONS, POST.", "MethodNotAllowed")
    status, got, data = _wsgi(wsgi, None, {"X-Request-ID": "t-1"}, method="HEAD")  # as Flask: no body, its length
    assert (status, data, got["Content-Length"]) == ("405 METHOD NOT ALLOWED", b"", str(len(json.dumps(_err(
        "HEAD is not allowed on /predict; allowed: OPTIONS, POST.", "MethodNotAllowed"), separators=(",", ":")))))
    assert _wsgi(wsgi, None, {}, method="OPTIONS")[0] == "401 UNAUTHORIZED"
    assert _wsgi(wsgi, None, auth, method="OPTIONS") == (
        "200 OK", {"Content-Type": "text/html; charset=utf-8", "Allow": "OPTIONS, POST", "Content-Length": "0"}, b"")
    assert _wsgi(wsgi, None, auth, method="GET", path="/v2/health/ready")[0] == "200 OK"  # other paths: Flask
    # counted as Flask's hooks count the other routes (a 405 is "unmatched", as for a path no route takes)
    samples = _metrics(app.test_client(), Authorization="Bearer s3cret")
    for (endpoint, status), count in {("predict", "200"): 3, ("predict", "401"): 3, ("predict", "413"): 2,
                                      ("unmatched", "405"): 2}.items():
        assert _value(samples, "mlops_requests_total", endpoint=endpoint, status=status) == count, (endpoint, status)
    assert _value(samples, "mlops_request_seconds_count", endpoint="predict") == 8
    for kind, count in {"Unauthorized": 3, "RequestEntityTooLarge": 2, "MethodNotAllowed": 2}.items():
        assert _value(samples, "mlops_errors_total", kind=kind) == count, kind


def test_an_unexpected_error_in_predict_is_a_json_500_and_the_server_keeps_serving(make_app, bc_row, caplog,
                                                                                   monkeypatch):
    app = make_app("bc", log_predictions=False)
    scorer = app.extensions["mlopsctl"].model.scorer
    one = json.dumps({"records": [bc_row]}).encode()

    def broken(feeds):
        raise RuntimeError("the session broke")

    with monkeypatch.context() as m:  # a fault inside ONNX Runtime, say
        m.setattr(scorer, "run_feeds", broken)
        status, headers, data = _wsgi(app.wsgi_app, one, {"X-Request-ID": "t-1"})
    assert status == "500 INTERNAL SERVER ERROR" and headers["X-Request-ID"] == "t-1"
    assert json.loads(data) == _err("internal server error; see the server log.", "InternalError")
    assert "unexpected error on /predict" in caplog.text and "the session broke" in caplog.text
    assert _wsgi(app.wsgi_app, one, {"X-Request-ID": "t-2"})[0] == "200 OK"
    samples = _metrics(app.test_client())
    assert _value(samples, "mlops_errors_total", kind="internal") == 1.0
    assert _value(samples, "mlops_requests_total", endpoint="predict", status="500") == 1.0


@pytest.mark.parametrize("k", [1, 2, 3, 7, 64, 65])
def test_probability_objects_match_plain_dicts_for_any_class_count(k):
    from mlopsctl.serving.predict import _objects

    keys = [["0", "a b", "é", "true", "x.y", "1.0", "-"][i % 7] + f"#{i}" for i in range(k)]
    rows = np.random.default_rng(k).random((5, k)).round(6).tolist()
    got = _objects(k)(keys, rows)
    assert got == [dict(zip(keys, row)) for row in rows]
    assert [list(d) for d in got] == [keys] * 5  # key order kept: the JSON lists classes in contract order
