"""Open Inference Protocol V2 (KServe / Triton), JSON tensors and the binary tensor data extension.

Facts and pitfalls: ../shared/PROTOCOLS.md. tritonclient sends no Content-Type and binary tensors by
default; errors are ``{"error": str}`` with a 4xx, never an HTML page.

Inputs come in one of two forms, told apart once per request by the number and shape of the inputs:
one ``[N, 1]`` (or ``[N]``) tensor per column, named by the column's ONNX input name; or, for a model without
categorical columns, one ``[N, F]`` tensor of any name and numeric datatype whose columns are the features in
contract order (what KServe's sklearn server, MLServer and Triton take for a default skl2onnx model). Both go
through the same ``infer``.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson
from flask import Blueprint, Response, request

from mlopsctl._version import __version__
from mlopsctl.errors import InvalidInputError, NotFoundError
from mlopsctl.serving.http import json_response, parse_json, read_body, request_id
from mlopsctl.serving.inference import infer
from mlopsctl.serving.records import Decoded
from mlopsctl.serving.runtime import NUMERIC, ServedModel
from mlopsctl.serving.state import state

bp = Blueprint("v2", __name__, url_prefix="/v2")

DATATYPES = (*NUMERIC, "BYTES")
HEADER = "Inference-Header-Content-Length"


@bp.get("")
def server_metadata() -> Response:
    return json_response({"name": "mlopsctl", "version": __version__, "extensions": ["binary_tensor_data"]})


@bp.get("/health/live")
def live() -> Response:
    return json_response({"live": True})


@bp.get("/health/ready")
def ready() -> Response:
    state().model  # noqa: B018 - raises if nothing is loaded
    return json_response({"ready": True})


def _served(name: str, version: str | None):
    served = state().model
    if name != served.name:
        raise NotFoundError(f"model {name!r} is not served here; this server serves {served.name!r}.")
    if version is not None and version != str(served.version):
        raise NotFoundError(f"{name} version {version} is not loaded; this server serves version {served.version}.")
    return served


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    return json_response(_served(name, version).metadata())


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    served = _served(name, version)
    return json_response({"name": served.name, "ready": True})


# ---- infer --------------------------------------------------------------------------------------------

def _split_body() -> tuple[dict[str, Any], bytes]:
    raw = read_body(state().body_limit)
    header_len = request.headers.get(HEADER)
    if header_len is None:
        body = parse_json(raw)
        blobs = b""
    else:
        try:
            n = int(header_len)
        except ValueError:
            raise InvalidInputError(f"{HEADER} must be an integer, got {header_len!r}.") from None
        if not 0 < n <= len(raw):
            raise InvalidInputError(f"{HEADER} is {n} but the body has {len(raw)} bytes.")
        body = parse_json(raw[:n])
        blobs = raw[n:]
    if not isinstance(body, dict):
        raise InvalidInputError("the inference request must be a JSON object with an 'inputs' list.")
    return body, blobs


def _decode_bytes(blob: bytes, count: int, name: str) -> np.ndarray:
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(blob):
            raise InvalidInputError(f"input {name!r}: binary BYTES data ends early.")
        (size,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if pos + size > len(blob):
            raise InvalidInputError(f"input {name!r}: binary BYTES data ends early.")
        try:
            out.append(blob[pos:pos + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInputError(f"input {name!r}: BYTES element is not UTF-8 text.") from None
        pos += size
    if pos != len(blob):
        raise InvalidInputError(f"input {name!r}: binary_data_size does not match {count} BYTES elements.")
    return np.array(out, dtype=object)


def _input_values(inp: Any, i: int, blobs: bytes, offset: int, *,
                  one_column: bool = True) -> tuple[str, np.ndarray, int]:
    """(name, flat values, offset of the next binary input) of ``inputs[i]``; ``one_column``: it must be
    one column's ``[N, 1]`` or ``[N]`` tensor."""
    if not isinstance(inp, dict):
        raise InvalidInputError(f"inputs[{i}] must be an object with name, shape, datatype and data.")
    name, shape, datatype = inp.get("name"), inp.get("shape"), inp.get("datatype")
    if not isinstance(name, str):
        raise InvalidInputError(f"inputs[{i}] has no 'name'.")
    if datatype not in DATATYPES:
        raise InvalidInputError(f"input {name!r} has datatype {datatype!r}; use one of {', '.join(DATATYPES)} (case-sensitive).")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInputError(f"input {name!r} needs a 'shape' list of non-negative integers, got {shape!r}.")
    count = math.prod(shape)  # exact (np.prod wraps around at 2**64)
    params = inp.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(blobs):
            raise InvalidInputError(f"input {name!r}: binary_data_size {size!r} does not fit the {len(blobs)} bytes sent.")
        blob = blobs[offset:offset + size]
        offset += size
        if datatype == "BYTES":
            values = _decode_bytes(blob, count, name)
        else:
            dt = np.dtype(NUMERIC[datatype])
            if size != count * dt.itemsize:
                raise InvalidInputError(f"input {name!r}: {size} bytes is not {count} x {datatype}.")
            values = np.frombuffer(blob, dtype=dt)
    else:
        if "data" not in inp:
            raise InvalidInputError(f"input {name!r} has no 'data' (and no binary_data_size).")
        try:
            values = np.asarray(inp["data"], dtype=object if datatype == "BYTES" else None).ravel()
        except ValueError:
            raise InvalidInputError(f"input {name!r}: 'data' is ragged; send a flat list or a nested list matching shape.") from None
        if values.size != count:
            raise InvalidInputError(f"input {name!r}: shape {shape} needs {count} values, got {values.size}.")
        if datatype != "BYTES" and values.dtype.kind not in "biuf":
            raise InvalidInputError(f"input {name!r}: {datatype} data must be numbers.")
    if one_column and (len(shape) > 2 or (len(shape) == 2 and shape[1] != 1)):
        raise InvalidInputError(f"input {name!r} must have shape [N, 1] or [N] (one column), got {shape}.")
    return name, values, offset


def _is_single_tensor(inp: Any, served: ServedModel) -> bool:
    """Whether the request's only input is one ``[N, F]`` tensor rather than one column's ``[N, 1]`` input."""
    if not isinstance(inp, dict):
        return False
    shape, name = inp.get("shape"), inp.get("name")
    return (isinstance(shape, list) and len(shape) == 2
            and (shape[1] != 1 or not isinstance(name, str) or name not in served.column_by_input))


def _single_tensor(inp: dict[str, Any], blobs: bytes, served: ServedModel) -> Decoded:
    """The columns of one ``[N, F]`` tensor, taken as the features in contract order, as the float64
    ``[F, N]`` block the contract's check takes as is. A model with categorical columns takes none."""
    contract = served.contract
    if not served.all_numeric:
        categorical = ", ".join(c.name for c in contract.columns if c.kind == "categorical")
        raise InvalidInputError(
            f"input {inp.get('name')!r} of shape {inp.get('shape')!r} is read as one [N, F] tensor of every feature, "
            f"but {served.name} has categorical column(s) ({categorical}) and takes one [N, 1] input per column: "
            f"{served.describe_inputs()}.")
    if inp.get("datatype") == "BYTES":
        raise InvalidInputError(f"input {inp.get('name')!r}: a single [N, F] tensor holds numbers; send it as "
                                "FP32 or FP64 (or another numeric datatype), not BYTES.")
    name, values, _ = _input_values(inp, 0, blobs, 0, one_column=False)
    n_rows, width = inp["shape"]
    names = contract.numeric_names  # every feature, in contract order
    if width != len(names):
        raise InvalidInputError(f"input {name!r} has {width} column(s); a single [N, F] tensor needs {len(names)}, "
                                f"the features in this order: {', '.join(names)}.")
    block = np.ascontiguousarray(values.reshape(n_rows, width).T, dtype=np.float64)
    return Decoded(dict(zip(names, block)), n_rows, block)


def _per_column(inputs: list[Any], blobs: bytes, served: ServedModel) -> Decoded:
    """The columns of one ``[N, 1]`` (or ``[N]``) input per column, named by the column's ONNX input name."""
    columns: dict[str, Any] = {}
    offset, n_rows = 0, None
    for i, inp in enumerate(inputs):
        iname, values, offset = _input_values(inp, i, blobs, offset)
        column = served.column_by_input.get(iname, iname)
        if column in columns:
            raise InvalidInputError(f"input {iname!r} is given twice.")
        if n_rows is not None and len(values) != n_rows:
            raise InvalidInputError(f"input {iname!r} has {len(values)} rows but the others have {n_rows}.")
        n_rows = len(values)
        columns[column] = values
    return Decoded(columns, n_rows or 0)


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def model_infer(name: str, version: str | None = None) -> Response:
    served = _served(name, version)
    body, blobs = _split_body()
    if "id" in body and not isinstance(body["id"], str):
        raise InvalidInputError(f"'id' must be a string, got {type(body['id']).__name__}.")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInputError("the inference request needs a non-empty 'inputs' list.")
    if len(inputs) == 1 and _is_single_tensor(inputs[0], served):
        decoded = _single_tensor(inputs[0], blobs, served)
    else:
        decoded = _per_column(inputs, blobs, served)
    st = state()
    result = infer(st, served, decoded.columns, decoded.n_rows, "v2", request_id, block=decoded.block)
    req_params = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
    binary_all = bool(req_params.get("binary_data_output"))
    wanted = body.get("outputs")
    available = {o["name"]: o for o in result.served.outputs}
    if wanted is None:
        selected = [(name_, binary_all) for name_ in available]
    else:
        if not isinstance(wanted, list):
            raise InvalidInputError("'outputs' must be a list of {\"name\": ...} objects.")
        selected = []
        for o in wanted:
            oname = o.get("name") if isinstance(o, dict) else None
            if not isinstance(oname, str) or oname not in available:
                raise InvalidInputError(f"unknown output {oname!r}; the model has {', '.join(available)}.")
            p = o.get("parameters") or {}
            selected.append((oname, bool(p.get("binary_data", binary_all)) if isinstance(p, dict) else binary_all))
    by_name = {result.served.contract.outputs[k]: v for k, v in result.outputs.items()}
    out_json, blobs_out = [], []
    for oname, binary in selected:
        arr = np.asarray(by_name[oname])
        datatype = available[oname]["datatype"]
        entry: dict[str, Any] = {"name": oname, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            blob = _encode(arr, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs_out.append(blob)
        else:
            entry["data"] = arr.ravel().tolist() if datatype != "BYTES" else [str(x) for x in arr.ravel()]
        out_json.append(entry)
    resp_body: dict[str, Any] = {"model_name": result.served.name, "model_version": str(result.served.version),
                                 "id": body["id"] if "id" in body else request_id(),
                                 "outputs": out_json}
    if result.warnings:
        resp_body["parameters"] = {"warnings": "; ".join(result.warnings[:20])}
    if not blobs_out:
        return json_response(resp_body)
    header = orjson.dumps(resp_body, option=orjson.OPT_SERIALIZE_NUMPY)
    resp = Response(header + b"".join(blobs_out), mimetype="application/octet-stream")
    resp.headers[HEADER] = str(len(header))
    return resp


def _encode(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for x in arr.ravel():
            b = str(x).encode("utf-8")
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=np.dtype(NUMERIC[datatype])).tobytes()


