"""``/openapi.json``: every endpoint of the three protocols, with the served model's columns."""

from __future__ import annotations

from typing import Any

from mlopsctl._version import __version__

_ERR_V2 = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_ERR_MLFLOW = {"type": "object", "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}}}
_ERR = {"type": "object", "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                                         "request_id": {"type": "string"}}}


def _op(summary: str, *, body: dict | None = None, ok: dict | None = None, err: dict = _ERR, tag: str = "mlopsctl",
        secured: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {
        "200": {"description": "OK", "content": {"application/json": {"schema": ok or {"type": "object"}}}},
        "400": {"description": "Invalid input", "content": {"application/json": {"schema": err}}},
        "404": {"description": "Not found", "content": {"application/json": {"schema": err}}},
    }}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if secured:
        op["security"] = [{"bearer": []}]
        op["responses"]["401"] = {"description": "Missing or wrong token", "content": {"application/json": {"schema": err}}}
    return op


def spec(served: Any) -> dict[str, Any]:
    kinds = {"numeric": {"type": ["number", "null"]}, "boolean": {"type": ["boolean", "number", "string", "null"]}}
    record = {"type": "object", "properties": {
        c.name: (kinds.get(c.kind) or {"type": ["string", "null"], **({"examples": list(c.categories[:5])} if c.categories else {})})
        for c in served.contract.columns}, "required": served.contract.feature_names}
    tensor = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string"}, "data": {"type": "array"}, "parameters": {"type": "object"}}}
    inputs_doc = f"one [N, 1] (or [N]) tensor per column, named by its ONNX input: {served.describe_inputs()}"
    if served.all_numeric:
        inputs_doc += (f"; or one [N, {len(served.contract.columns)}] tensor of any name and numeric datatype whose "
                       f"columns are, in this order: {', '.join(served.contract.feature_names)}")
    v2_req = {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "inputs": {"type": "array", "items": tensor, "minItems": 1, "description": inputs_doc},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
        "parameters": {"type": "object"}}}
    mlflow_req = {"type": "object", "description": "exactly one of dataframe_split, dataframe_records, instances, inputs",
                  "properties": {"dataframe_split": {"type": "object"}, "dataframe_records": {"type": "array", "items": record},
                                 "instances": {"type": "array"}, "inputs": {}, "params": {"type": "object"}}}
    m = "/v2/models/{model_name}"
    vm = "/v2/models/{model_name}/versions/{model_version}"
    paths: dict[str, Any] = {
        "/predict": {"post": _op("Score records", body={"type": "object", "required": ["records"],
                                                        "properties": {"records": {"type": "array", "items": record}}},
                                 secured=True)},
        "/v2": {"get": _op("Server metadata", err=_ERR_V2, tag="v2")},
        "/v2/health/live": {"get": _op("Server live", err=_ERR_V2, tag="v2")},
        "/v2/health/ready": {"get": _op("Server ready", err=_ERR_V2, tag="v2")},
        m: {"get": _op("Model metadata", err=_ERR_V2, tag="v2")},
        vm: {"get": _op("Model version metadata", err=_ERR_V2, tag="v2")},
        f"{m}/ready": {"get": _op("Model ready", err=_ERR_V2, tag="v2")},
        f"{vm}/ready": {"get": _op("Model version ready", err=_ERR_V2, tag="v2")},
        f"{m}/infer": {"post": _op("Inference (JSON or binary tensors)", body=v2_req, err=_ERR_V2, tag="v2", secured=True)},
        f"{vm}/infer": {"post": _op("Inference on a version", body=v2_req, err=_ERR_V2, tag="v2", secured=True)},
        "/invocations": {"post": _op("MLflow scoring (JSON, text/csv, parquet)", body=mlflow_req, err=_ERR_MLFLOW,
                                     tag="mlflow", secured=True)},
        "/ping": {"get": _op("MLflow health", err=_ERR_MLFLOW, tag="mlflow")},
        "/health": {"get": _op("MLflow health", err=_ERR_MLFLOW, tag="mlflow")},
        "/version": {"get": _op("Server version (raw string)", err=_ERR_MLFLOW, tag="mlflow")},
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": [{"bearer": []}],
                             "responses": {"200": {"description": "text/plain exposition format"}}}},
        "/openapi.json": {"get": _op("This document")},
        "/admin/reload": {"post": _op("Check the served alias now", secured=True)},
    }
    for path, ops in paths.items():
        if "{model_name}" in path:
            params = [{"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}]
            if "{model_version}" in path:
                params.append({"name": "model_version", "in": "path", "required": True, "schema": {"type": "string"}})
            for op in ops.values():
                op["parameters"] = params
    return {"openapi": "3.1.0",
            "info": {"title": f"mlopsctl serving {served.name}", "version": __version__,
                     "description": f"{served.name} version {served.version} ({served.contract.task}) on {served.provider}"},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "paths": paths}
