"""Shared request machinery: the server state, JSON helpers, protocol-shaped errors, and ``infer``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import orjson
from flask import Response, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from mlopsctl.config import Settings
from mlopsctl.errors import InvalidInputError, PayloadTooLarge
from mlopsctl.serving.metrics import Metrics
from mlopsctl.serving.predlog import PredictionLog
from mlopsctl.serving.records import in_order, numeric_columns
from mlopsctl.serving.runtime import ModelHolder, ServedModel


@dataclass
class ServerState:
    settings: Settings
    holder: ModelHolder
    metrics: Metrics
    predlog: PredictionLog | None
    token: str

    @property
    def model(self) -> ServedModel:
        return self.holder.current

    @property
    def body_limit(self) -> int:
        """``serve.max_body_mb`` in bytes."""
        return int(self.settings.serve.max_body_mb * 1024 * 1024)


def state() -> ServerState:
    return current_app.extensions["mlopsctl"]


# ---- JSON ---------------------------------------------------------------------------------------------

def dump_json(body: Any) -> bytes:
    """An answer's JSON (numpy values and non-string keys allowed)."""
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    resp = Response(dump_json(body), status=status, mimetype="application/json")
    if headers:
        resp.headers.update(headers)
    return resp


RELEASE_AFTER_ROWS = 1_000  # requests this big free their parsed input after the answer is sent


def release_after(response: Response, n_rows: int, *parsed: Any) -> Response:
    """Keep a big request's parsed input alive until ``response`` is closed (after its last byte is
    written): freeing 10,000 parsed records is ~300,000 objects and 5-10 ms of uninterruptible work that
    would otherwise come before the answer."""
    if n_rows >= RELEASE_AFTER_ROWS:
        keep = list(parsed)
        response.call_on_close(keep.clear)
    return response


def read_body() -> bytes:
    """The request body; above ``serve.max_body_mb`` a 413 (by Content-Length before reading, or once the
    limit is passed for a body sent without one).

    The limit is enforced here, not with Flask's ``MAX_CONTENT_LENGTH``: under gunicorn that wraps the input
    in werkzeug's ``LimitedStream``, which reads a large body in small chunks (+13 ms on a 10,000-row request)."""
    limit = state().body_limit
    length = request.content_length
    if length is not None:
        if length > limit:
            raise RequestEntityTooLarge()
        # exactly the announced size: where werkzeug wraps the input in its LimitedStream (the development
        # server, the test client, WSGI servers that do not mark their input as terminated), that is an
        # io.RawIOBase, whose read(n) first allocates n bytes: read(limit + 1) cost a 32 MiB allocation and
        # release on every request (+150 µs of CPU per /predict in process). gunicorn's input never did.
        return request.stream.read(length)
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise RequestEntityTooLarge()
    return data


def parse_json(raw: bytes) -> Any:
    """The request body as JSON whatever the Content-Type (tritonclient sends none)."""
    if not raw:
        raise InvalidInputError("the request body is empty; send a JSON object.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidInputError(f"the request body is not valid JSON ({e}).") from None


def new_request_id() -> str:
    """32 hex digits, time-ordered: 48 bits of Unix milliseconds, then 80 random bits (UUIDv7's layout,
    without its version bits). Ordered ids land at the right edge of the prediction log's request-id index,
    which halves the cost of writing it compared with random uuid4 ids."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def request_id() -> str:
    rid = getattr(g, "request_id", None)
    if rid is None:
        rid = request.headers.get("X-Request-ID") or new_request_id()
        g.request_id = rid[:100]
    return g.request_id


# ---- protocol-shaped errors ---------------------------------------------------------------------------

def protocol_for(path: str) -> str:
    if path.startswith("/v2"):
        return "v2"
    if path in ("/invocations", "/ping", "/health", "/version"):
        return "mlflow"
    return "mlops"


MLFLOW_CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 404: "RESOURCE_DOES_NOT_EXIST", 405: "BAD_REQUEST",
                413: "BAD_REQUEST", 415: "BAD_REQUEST", 503: "TEMPORARILY_UNAVAILABLE"}


def error_response(status: int, message: str, kind: str) -> Response:
    proto = protocol_for(request.path)
    if proto == "v2":
        body: dict[str, Any] = {"error": message}
    elif proto == "mlflow":
        body = {"error_code": MLFLOW_CODES.get(status, "INTERNAL_ERROR"), "message": message}
    else:
        body = {"error": kind, "message": message, "request_id": request_id()}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return json_response(body, status, headers)


# ---- inference ----------------------------------------------------------------------------------------

@dataclass
class Inference:
    served: ServedModel
    outputs: dict[str, np.ndarray]
    n_rows: int
    warnings: list[str]


def infer(columns: dict[str, Any], n_rows: int, endpoint: str, st: ServerState | None = None,
          rid: str | None = None) -> Inference:
    """Check ``columns`` against the served version's contract, score them, log the prediction. ``st`` and
    ``rid`` are given by a caller outside Flask's request context (``serving.app.FastPredict``)."""
    if st is None:
        st = state()
    served = st.model  # one snapshot for the whole request, even if the alias moves meanwhile
    serve = st.settings.serve
    if n_rows == 0:
        raise InvalidInputError("the request holds no rows; send at least one.")
    if n_rows > serve.max_batch_rows:
        raise PayloadTooLarge(f"the request holds {n_rows} rows; the limit is {serve.max_batch_rows} (serve.max_batch_rows).")
    t0 = time.perf_counter()
    checked = served.contract.check(
        columns, unknown_category=serve.unknown_category, extra_columns=serve.extra_columns,
        unseen_nulls=serve.unseen_nulls, out_of_range=serve.out_of_range, range_tolerance=serve.range_tolerance,
        max_errors=5,
    )
    if checked.errors:
        e = checked.errors[0]
        more = f" (and {checked.n_bad - 1} more row(s))" if checked.n_bad > 1 else ""
        raise InvalidInputError(f"{e.message} at row {e.row}{more}.")
    warnings = [f"{w.message} at row {w.row}" for w in checked.warnings]
    for w in checked.warnings:
        st.metrics.warnings.labels(w.column).inc()
    outputs = served.scorer.run_feeds(served.contract.feeds(checked))
    st.metrics.rows_scored(served.name, served.version, n_rows)
    if st.predlog is not None:
        st.predlog.submit(rid or request_id(), served.name, served.version, endpoint,
                          (time.perf_counter() - t0) * 1000, checked.normalized, outputs, n_rows, block=checked.block,
                          block_columns=checked.block_columns)
    return Inference(served, outputs, n_rows, warnings)


def records_to_columns(records: Any, names: list[str], what: str = "records",
                       numeric: tuple[str, ...] = ()) -> tuple[dict[str, Any], int]:
    """``[{"a": 1, "b": "x"}, ...]`` -> ``{"a": [1], "b": ["x"]}``; extra keys are kept (the contract
    decides whether they are allowed). The ``numeric`` columns (the contract's numeric and boolean ones)
    come back as float64 arrays when every value converts (:func:`_numeric_records`), else as lists."""
    if not isinstance(records, list):
        raise InvalidInputError(f"{what} must be a list of objects, got {type(records).__name__}.")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise InvalidInputError(f"{what}[{i}] must be an object mapping column names to values, got {type(r).__name__}.")
    fast = _numeric_records(records, numeric) if numeric and records else {}
    try:
        columns = in_order(fast, names, {k: [r[k] for r in records] for k in names if k not in fast})
    except KeyError as e:
        col = e.args[0]
        row = next(i for i, r in enumerate(records) if col not in r)
        raise InvalidInputError(f"missing column {col!r} in {what}[{row}]; the model needs {', '.join(names)}.") from None
    if any(len(r) != len(names) for r in records):  # extra keys somewhere (in any record, not only the first)
        for k in dict.fromkeys(k for r in records for k in r if k not in columns):
            columns[k] = [r.get(k) for r in records]
    return columns, len(records)


def _numeric_records(records: list[dict], names: tuple[str, ...]) -> dict[str, Any]:
    """:func:`~mlopsctl.serving.records.numeric_columns` of parsed records; ``{}`` when a record lacks a
    column or a value does not convert: the general path then names the problem."""
    try:
        return numeric_columns(records, itemgetter(*names), names)
    except (KeyError, TypeError, ValueError, OverflowError):
        return {}
