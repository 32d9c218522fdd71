"""HTTP helpers shared by every route (the Flask ones and the raw-WSGI ``/predict``): JSON bodies, errors in
each protocol's own shape, reading a body under ``serve.max_body_mb``, request ids, and freeing a big
request's parsed input after its answer is sent."""

from __future__ import annotations

import hmac
import os
import time
from typing import Any, BinaryIO

import orjson
from flask import Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from mlopsctl.errors import InvalidInputError

# ---- JSON ---------------------------------------------------------------------------------------------

def dump_json(body: Any) -> bytes:
    """An answer's JSON (numpy values and non-string keys allowed)."""
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    resp = Response(dump_json(body), status=status, mimetype="application/json")
    if headers:
        resp.headers.update(headers)
    return resp


def parse_json(raw: bytes) -> Any:
    """The request body as JSON whatever the Content-Type (tritonclient sends none)."""
    if not raw:
        raise InvalidInputError("the request body is empty; send a JSON object.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidInputError(f"the request body is not valid JSON ({e}).") from None


# ---- bodies -------------------------------------------------------------------------------------------

def read_limited(stream: BinaryIO, length: int | None, limit: int) -> bytes:
    """A request body of at most ``limit`` bytes: a 413 by ``length`` (Content-Length) before reading, or,
    for a body sent without one, once more than ``limit`` bytes arrived.

    The limit is enforced here rather than with Flask's ``MAX_CONTENT_LENGTH``: under gunicorn that wraps
    the input in werkzeug's ``LimitedStream``, which reads a large body in small chunks. A body with a
    Content-Length is read with exactly that size: werkzeug's ``LimitedStream`` (the development server,
    the test client, WSGI servers that do not mark their input as terminated) is an ``io.RawIOBase``, whose
    ``read(n)`` first allocates ``n`` bytes, so ``read(limit + 1)`` would allocate and free the whole limit
    on every request."""
    if length is not None:
        if length > limit:
            raise RequestEntityTooLarge()
        return stream.read(length)
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise RequestEntityTooLarge()
    return data


def read_body(limit: int) -> bytes:
    """The current Flask request's body (:func:`read_limited`)."""
    return read_limited(request.stream, request.content_length, limit)


RELEASE_AFTER_ROWS = 1_000  # requests this big free their parsed input after the answer is sent


def release_after(response: Response, n_rows: int, *parsed: Any) -> Response:
    """Keep a big request's parsed input alive until ``response`` is closed (after its last byte is
    written): freeing 10,000 parsed records is some 300,000 objects, uninterruptible work that would
    otherwise come before the answer."""
    if n_rows >= RELEASE_AFTER_ROWS:
        keep = list(parsed)
        response.call_on_close(keep.clear)
    return response


class KeepUntilClosed(list):
    """A raw WSGI body (a list of byte strings) that holds objects until the server closes it, after the
    last byte is sent: :func:`release_after` for a route outside Flask."""

    def __init__(self, body: list[bytes], *keep: Any):
        super().__init__(body)
        self._keep = list(keep)

    def close(self) -> None:
        self._keep.clear()


# ---- request ids and the bearer token -----------------------------------------------------------------

def new_request_id() -> str:
    """32 hex digits, time-ordered: 48 bits of Unix milliseconds, then 80 random bits (UUIDv7's layout,
    without its version bits). Ordered ids land at the right edge of the prediction log's request-id index,
    which makes it much cheaper to write than random uuid4 ids."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def request_id_from(header: str | None) -> str:
    """The client's ``X-Request-ID`` (at most 100 characters), or a new id."""
    return (header or new_request_id())[:100]


def request_id() -> str:
    """The current Flask request's id (:func:`request_id_from`), made once and kept in ``g``."""
    rid = getattr(g, "request_id", None)
    if rid is None:
        rid = g.request_id = request_id_from(request.headers.get("X-Request-ID"))
    return rid


def token_ok(authorization: str, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    given = authorization[7:] if authorization[:7].lower() == "bearer " else ""
    return hmac.compare_digest(given.encode(), token.encode())


# ---- protocol-shaped errors ---------------------------------------------------------------------------

def protocol_for(path: str) -> str:
    if path.startswith("/v2"):
        return "v2"
    if path in ("/invocations", "/ping", "/health", "/version"):
        return "mlflow"
    return "mlops"


MLFLOW_CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 404: "RESOURCE_DOES_NOT_EXIST", 405: "BAD_REQUEST",
                413: "BAD_REQUEST", 415: "BAD_REQUEST", 503: "TEMPORARILY_UNAVAILABLE"}


def error_body(protocol: str, status: int, message: str, kind: str, rid: str | None) -> dict[str, Any]:
    """An error in ``protocol``'s shape: V2 ``{"error"}``, MLflow ``{"error_code", "message"}``, mlopsctl's
    own ``{"error", "message", "request_id"}`` (``rid`` is read for that one only)."""
    if protocol == "v2":
        return {"error": message}
    if protocol == "mlflow":
        return {"error_code": MLFLOW_CODES.get(status, "INTERNAL_ERROR"), "message": message}
    return {"error": kind, "message": message, "request_id": rid}


def error_headers(status: int) -> dict[str, str] | None:
    return {"WWW-Authenticate": "Bearer"} if status == 401 else None


def http_error_message(e: HTTPException, method: str, path: str, max_body_mb: float) -> str:
    """One sentence for werkzeug's HTTP errors (its own texts are HTML-minded and name no setting)."""
    status = e.code or 500
    if status == 413:
        return f"the request body is larger than {max_body_mb:g} MiB (serve.max_body_mb)."
    if status == 404:
        return f"no endpoint {path}; see /openapi.json."
    if status == 405:
        return f"{method} is not allowed on {path}; allowed: {', '.join(sorted(e.valid_methods or []))}."
    return e.description or e.name


def error_response(status: int, message: str, kind: str) -> Response:
    """The current Flask request's error, in its route's protocol shape."""
    proto = protocol_for(request.path)
    body = error_body(proto, status, message, kind, request_id() if proto == "mlops" else None)
    return json_response(body, status, error_headers(status))
