"""The whole loop on data nobody designed: every shape in ``shapes.SHAPES`` goes through train -> register ->
promote (twice, so the gate compares two versions) -> batch predict -> serve (/predict, V2, /invocations) ->
feedback -> live metrics -> drift, through the real CLI, store, ONNX Runtime and Flask app.

What must hold for every shape: no command prints a traceback, and class labels come back in their own type
(int, bool, float or text) from every output, equal across outputs for the same rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from shapes import SHAPES, Shape, features_of, json_records, make_shape

TYPES = {"integer": (int,), "boolean": (bool,), "float": (float,), "string": (str,)}
ARROW = {"integer": "int64", "boolean": "bool", "float": "float64", "string": "str"}


def _ok(cli, *args: Any) -> Any:
    result = cli(*args)
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def _typed(values: list[Any], shape: Shape) -> None:
    if shape.task == "regression":
        assert all(isinstance(v, float) for v in values), values[:5]
        return
    want = TYPES[shape.label_type]
    assert all(isinstance(v, want) and (bool not in want or isinstance(v, bool)) for v in values), values[:5]
    if shape.label_type in ("integer", "float"):
        assert not any(isinstance(v, bool) for v in values)


def _v2_inputs(contract: Any, frame: pd.DataFrame) -> list[dict[str, Any]]:
    inputs = []
    for c in contract.columns:
        values = frame[c.name].tolist()
        if c.kind == "categorical":
            inputs.append({"name": c.input_name, "shape": [len(values), 1], "datatype": "BYTES",
                           "data": [str(v) for v in values]})
        elif c.kind == "boolean":
            inputs.append({"name": c.input_name, "shape": [len(values), 1], "datatype": "BOOL",
                           "data": [bool(v) for v in values]})
        else:
            inputs.append({"name": c.input_name, "shape": [len(values), 1], "datatype": "FP64",
                           "data": [float(v) for v in values]})
    return inputs


def _feedback_text(value: Any, label_type: str | None) -> Any:
    """A label as another tool would write it: 1 as 1.0, True as 1, 1.0 as 1."""
    if label_type == "integer":
        return f"{float(value):.1f}"
    if label_type == "boolean":
        return int(value)
    if label_type == "float":
        return int(value)
    return value


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_shape_goes_through_the_whole_loop(name: str, cli, tmp_path: Path, monkeypatch) -> None:
    from mlopsctl.config import load_settings
    from mlopsctl.serving.app import create_app

    shape = make_shape(name)
    project = tmp_path / "p"
    _ok(cli, "init", project)
    monkeypatch.chdir(project)
    with open(project / ".mlops.toml", "a") as fh:
        fh.write("\n[monitor]\nmin_rows = 10\n")
    data = project / "data" / "train.csv"
    shape.frame.to_csv(data, index=False)
    excl = [a for c in shape.exclude for a in ("--exclude", c)]

    # train twice (two versions), both FINISHED with parity, the model chosen by the task
    first = _ok(cli, "train", "--target", shape.target, "-p", "n_estimators=8", *excl, "--json")
    for notice in shape.notices:
        assert notice in first.stderr, first.stderr
    run = json.loads(first.stdout)
    assert run["status"] == "FINISHED" and run["parity"]["passed"], run["parity"]
    assert run["task"] == shape.task
    assert run["model"] == ("sklearn.ensemble.RandomForestClassifier" if shape.task == "classification"
                            else "sklearn.ensemble.RandomForestRegressor")
    assert run["params"]["rows_without_target"] == str(shape.dropped)
    assert run["params"].get("excluded_columns", "") == ",".join(shape.excluded)
    _ok(cli, "train", "--target", shape.target, "-p", "n_estimators=5", "--seed", "7", *excl)

    # register both, promote 1, then let the gate compare 2 with 1 on the same held-out rows
    _ok(cli, "register", "1", "--name", "m")
    _ok(cli, "register", "2", "--name", "m")
    _ok(cli, "promote", "m", "1")
    second = cli("promote", "m", "2", "--json")
    assert second.exit_code in (0, 4), (second.stdout, second.stderr)
    assert "Traceback" not in second.stderr
    gate = json.loads(_ok(cli, "models", "show", "m/2", "--json").stdout)["gate"]
    assert gate["holder"]["version"] == 1
    assert isinstance(gate["candidate"]["score"], float) and isinstance(gate["holder"]["score"], float)
    production = 2 if second.exit_code == 0 else 1

    # batch predict: every row scored, the prediction column in the label's own type
    out = project / "scored.parquet"
    _ok(cli, "predict", f"m/{production}", data, "-o", out)
    scored = pd.read_parquet(out)
    assert len(scored) == len(shape.frame) and scored["_error"].isna().all()
    settings = load_settings({}, {}, project)
    from mlopsctl.services.models import load_model

    contract = load_model(settings, f"m/{production}").contract
    assert contract.label_type == shape.label_type
    assert set(contract.ignored) == set(shape.excluded)
    if shape.task == "classification":
        assert str(scored["prediction"].dtype) == ARROW[shape.label_type]
        classes = set(contract.classes)
        assert set(scored["prediction"]) <= classes
        _typed(list(contract.classes), shape)
        assert [c for c in scored.columns if c.startswith("proba_")] == [f"proba_{k}" for k in contract.class_keys]
    batch = scored["prediction"].tolist()

    # serve: /predict, V2 and /invocations on the same rows give the same typed answers
    app = create_app(settings, "m@production", watch=False)
    st = app.extensions["mlopsctl"]
    client = app.test_client()
    rows = shape.frame.drop(columns=[shape.target]).iloc[:20]
    resp = client.post("/predict", json={"records": json_records(rows)})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    _typed(body["predictions"], shape)
    if shape.task == "classification":
        assert body["predictions"] == batch[:20]
        assert list(body["probabilities"][0]) == contract.class_keys
    else:
        np.testing.assert_allclose(body["predictions"], batch[:20], rtol=1e-5)
    complete = rows[[c.name for c in contract.columns]].dropna().iloc[:5]
    v2 = client.post("/v2/models/m/infer", json={"inputs": _v2_inputs(contract, complete)})
    assert v2.status_code == 200, v2.get_json()
    label_out = v2.get_json()["outputs"][0]
    if shape.task == "classification":
        assert label_out["datatype"] == shape.v2_label
        assert label_out["data"] == [batch[i] for i in complete.index]
        _typed(label_out["data"], shape)
        meta = client.get("/v2/models/m").get_json()
        assert meta["outputs"][0]["datatype"] == shape.v2_label
    inv = client.post("/invocations", json={"dataframe_records": json_records(rows)})
    assert inv.status_code == 200, inv.get_json()
    if shape.task == "classification":
        assert inv.get_json()["predictions"] == batch[:20]
    else:
        np.testing.assert_allclose(inv.get_json()["predictions"], batch[:20], rtol=1e-5)
    st.predlog.flush()
    assert st.predlog.write_errors == 0
    st.holder.stop()
    st.predlog.close()

    # feedback in another text form (1 as 1.0, True as 1, ...) joins the logged predictions; live accuracy
    truth = shape.frame[shape.target].iloc[:20].tolist()
    labelled = [(i, t) for i, t in enumerate(truth) if not pd.isna(t)]
    pd.DataFrame({"request_id": body["request_id"], "row": [i for i, _ in labelled],
                  "label": [_feedback_text(t, shape.label_type) for _, t in labelled]}).to_csv("labels.csv", index=False)
    fb = json.loads(_ok(cli, "monitor", "feedback", "labels.csv", "--model", "m@production", "--json").stdout)
    assert fb["matched"] == len(labelled) and fb["unknown"] == 0
    live = fb["live"]["per_version"][str(production)]
    assert live["rows"] == len(labelled)
    if shape.task == "classification":
        expected = np.mean([body["predictions"][i] == t for i, t in labelled])
        assert live["accuracy"] == pytest.approx(expected)
    else:
        err = np.array([body["predictions"][i] - t for i, t in labelled])
        assert live["mae"] == pytest.approx(np.abs(err).mean(), rel=1e-4)

    # drift over what was logged: the /predict rows, the V2 rows, the /invocations rows
    drift = json.loads(_ok(cli, "monitor", "drift", "m@production", "--last", "1000", "--json").stdout)
    assert drift["window"]["rows"] == len(rows) + len(complete) + len(rows)
    assert {c["column"] for c in drift["columns"]} == {c.name for c in contract.columns}
    assert set(features_of(shape)) - set(shape.excluded) == {c.name for c in contract.columns}
