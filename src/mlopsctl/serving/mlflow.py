"""MLflow scoring protocol: ``/invocations`` (dataframe_split, dataframe_records, instances, inputs, CSV,
Parquet), ``/ping``, ``/health``, ``/version``; errors as ``{"error_code", "message"}``."""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, Response, request

from mlopsctl._version import __version__
from mlopsctl.errors import InvalidInputError, UnsupportedMediaType
from mlopsctl.serving.http import json_response, read_body, release_after, request_id
from mlopsctl.serving.inference import infer
from mlopsctl.serving.records import MLFLOW, Decoded, RecordsDecoder
from mlopsctl.serving.state import state

bp = Blueprint("mlflow", __name__)

INPUT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
LLM_KEYS = ("input", "messages", "prompt")
MEDIA = ("application/json", "text/csv", "application/vnd.apache.parquet")


@bp.get("/ping")
@bp.get("/health")
def ping() -> Response:
    state().model  # noqa: B018 - a loaded model is what "healthy" means here
    return Response("\n", status=200, mimetype="application/json")


@bp.get("/version")
def version() -> Response:
    return Response(__version__, status=200, mimetype="application/json")


def _media_type() -> str:
    header = request.headers.get("Content-Type")
    if not header:
        return "application/json"  # MLflow itself crashes here (500); we assume JSON
    parts = [p.strip() for p in header.split(";")]
    media = parts[0].lower()
    for p in parts[1:]:
        key, _, value = p.partition("=")
        if key.strip().lower() == "charset":
            if value.strip().strip('"').lower() not in ("utf-8", "utf8"):
                raise UnsupportedMediaType("the scoring server only supports UTF-8.")
        elif p:
            raise UnsupportedMediaType(f"unsupported Content-Type parameter {p!r}; send {media} without it.")
    if media not in MEDIA:
        raise UnsupportedMediaType(f"unsupported Content-Type {media!r}; use one of {', '.join(MEDIA)}.")
    return media


def _rows_to_columns(rows: Any, names: list[str], what: str) -> Decoded:
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise InvalidInputError(f"{what} must be a list of rows (lists).")
    for i, r in enumerate(rows):
        if len(r) != len(names):
            raise InvalidInputError(f"{what}[{i}] has {len(r)} values; the model takes {len(names)}: {', '.join(names)}.")
    return Decoded({n: [r[j] for r in rows] for j, n in enumerate(names)}, len(rows), keep=rows)


def _columns_from_json(decoder: RecordsDecoder, body: Any) -> Decoded:
    """The general path of a JSON body, whatever the typed decoder declined."""
    names = decoder.names
    if not isinstance(body, dict):
        raise InvalidInputError(
            "the input must be a JSON dictionary with exactly one of the input fields "
            f"{', '.join(map(repr, INPUT_KEYS))}.")
    if any(k in body for k in LLM_KEYS):
        raise InvalidInputError(f"LLM-style inputs ({', '.join(LLM_KEYS)}) are not supported by a tabular model.")
    keys = [k for k in INPUT_KEYS if k in body]
    if len(keys) != 1:
        raise InvalidInputError(
            "the input must be a JSON dictionary with exactly one of the input fields "
            f"{', '.join(map(repr, INPUT_KEYS))}; got {', '.join(map(repr, keys)) or 'none'}.")
    key = keys[0]
    value = body[key]
    if key == "dataframe_split":
        if not isinstance(value, dict) or "columns" not in value or "data" not in value:
            raise InvalidInputError("dataframe_split must be {\"columns\": [...], \"data\": [[...], ...]}.")
        cols = value["columns"]
        if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
            raise InvalidInputError("dataframe_split.columns must be a list of column names.")
        if len(set(cols)) != len(cols):
            raise InvalidInputError("dataframe_split.columns has duplicate names.")
        return _rows_to_columns(value["data"], cols, "dataframe_split.data")
    if key == "dataframe_records":
        return decoder.records(value, "dataframe_records")
    if key == "instances":
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            return decoder.records(value, "instances")
        return _rows_to_columns(value, names, "instances")
    # inputs: {"col": [...]} (columnar) or [[...], ...] (rows in the model's column order)
    if isinstance(value, dict):
        lengths = {len(v) if isinstance(v, list) else -1 for v in value.values()}
        if -1 in lengths or len(lengths) != 1:
            raise InvalidInputError("inputs as an object must map each column to a list, all of the same length.")
        return Decoded(dict(value), lengths.pop(), keep=value)
    return _rows_to_columns(value, names, "inputs")


def _columns_from_table(raw: bytes, media: str) -> Decoded:
    import pyarrow as pa

    if not raw:
        raise InvalidInputError("the request body is empty.")
    try:
        if media == "text/csv":
            from pyarrow import csv

            table = csv.read_csv(pa.py_buffer(raw))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(pa.BufferReader(raw))
        names = table.column_names
    except (pa.ArrowInvalid, OSError) as e:
        raise InvalidInputError(f"the body could not be parsed as {media} ({str(e).splitlines()[0]}).") from None
    except UnicodeDecodeError:
        raise InvalidInputError("the scoring server only supports UTF-8.") from None
    cols = {}
    for n in names:
        col = table.column(n)
        if pa.types.is_temporal(col.type):
            col = col.cast(pa.string())
        cols[n] = col.to_numpy(zero_copy_only=False)
    return Decoded(cols, table.num_rows)


@bp.post("/invocations")
def invocations() -> Response:
    media = _media_type()
    st = state()
    served = st.model  # one snapshot for the whole request, even if the alias moves meanwhile
    decoder = served.records
    raw = read_body(st.body_limit)
    if media == "application/json":
        decoded = decoder.decode(raw, MLFLOW, _columns_from_json)
    else:
        decoded = _columns_from_table(raw, media)
    result = infer(st, served, decoded.columns, decoded.n_rows, "invocations", request_id, block=decoded.block)
    out = result.outputs
    preds = out["label"] if "label" in out else np.asarray(out["prediction"]).ravel()
    return release_after(json_response({"predictions": np.asarray(preds).ravel().tolist()}), decoded.n_rows,
                         decoded.keep, decoded.columns)
