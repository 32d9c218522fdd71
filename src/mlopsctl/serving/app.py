"""The Flask application factory: ``create_app(settings, "churn@production")``."""

from __future__ import annotations

import hmac
import io
import logging
import os
import time
from typing import Any

import numpy as np
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from mlopsctl.config import Settings
from mlopsctl.errors import InvalidInputError, MlopsError, Unauthorized
from mlopsctl.project import open_project
from mlopsctl.registry import parse_ref
from mlopsctl.serving import mlflow, v2
from mlopsctl.serving.core import (
    RELEASE_AFTER_ROWS, ServerState, dump_json, error_response, infer, json_response, new_request_id,
    parse_json, read_body, records_to_columns, release_after, request_id, state,
)
from mlopsctl.serving.metrics import Metrics
from mlopsctl.serving.openapi import spec
from mlopsctl.serving.predlog import PredictionLog
from mlopsctl.serving.runtime import ModelHolder, ServedModel

log = logging.getLogger("mlopsctl.serve")

# endpoints that need the bearer token when one is configured (health and metadata stay open)
PROTECTED = {"predict", "mlflow.invocations", "v2.model_infer", "metrics", "reload"}


def create_app(settings: Settings, model_ref: str | None = None, *, workers: int = 1, device: str | None = None,
               watch: bool = True) -> Flask:
    """Load the model (verified ONNX, warmed-up session) and build the app. ``model_ref`` defaults to
    ``registry.model_name`` at ``registry.alias``; an alias reference is followed (hot reload)."""
    serve = settings.serve
    ref = parse_ref(model_ref or settings.registry.model_name, settings.registry.alias)
    project = open_project(settings)
    metrics = Metrics()
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))

    def on_swap(new: ServedModel, old: ServedModel | None) -> None:
        if old is not None:
            metrics.model_version.labels(old.name, old.provider).set(new.version)
            metrics.reloads.labels(new.name).inc()
        metrics.model_version.labels(new.name, new.provider).set(new.version)

    holder = ModelHolder(project, ref, device=device or serve.device, threads=threads,
                         reload_interval=serve.reload_interval, on_swap=on_swap)
    log.warning("serving %s version %s on %s (requested device: %s): %s", ref, holder.current.version,
                holder.current.provider, device or serve.device, holder.current.placement)
    predlog = None
    if serve.log_predictions:
        predlog = PredictionLog(project.store, serve.log_queue_size, flush_interval=serve.log_flush_seconds,
                                on_drop=metrics.log_dropped.inc,
                                on_write_error=metrics.log_write_errors.inc)
    if watch:
        holder.start()

    app = Flask("mlopsctl.serving", static_folder=None)
    app.extensions["mlopsctl"] = ServerState(settings, holder, metrics, predlog, serve.token)
    app.register_blueprint(v2.bp)
    app.register_blueprint(mlflow.bp)
    _register_routes(app)
    _register_hooks(app)
    app.wsgi_app = FastPredict(app, app.wsgi_app)  # type: ignore[method-assign]
    return app


def token_ok(authorization: str, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    given = authorization[7:] if authorization[:7].lower() == "bearer " else ""
    return hmac.compare_digest(given.encode(), token.encode())


class FastPredict:
    """WSGI middleware in front of the Flask app for the hottest route: a well-formed ``POST /predict``.

    Flask's request context, routing, hooks and response objects cost more CPU per single-row request than
    the contract check or the model. This path does what the Flask route and hooks do for such a request
    (bearer token, body limit, request id, contract check, scoring, prediction log, metrics, the same JSON and
    headers) on the raw WSGI environ. Anything else — another route or method, no Content-Length, a body the
    typed decoder does not take, a wrong token, any error — goes to the Flask app with the body already read,
    which answers exactly as it always did (errors in the protocol's shape included)."""

    def __init__(self, app: Flask, wsgi_app: Any):
        self.wsgi_app = wsgi_app
        self.state: ServerState = app.extensions["mlopsctl"]
        self.limit = self.state.body_limit
        self.answered = 0  # requests this path answered itself (the rest went to Flask)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != "/predict" or environ.get("REQUEST_METHOD") != "POST":
            return self.wsgi_app(environ, start_response)
        t0 = time.perf_counter()
        st = self.state
        length = environ.get("CONTENT_LENGTH") or ""
        size = int(length) if length.isdigit() else -1
        wrong_token = st.token and not token_ok(environ.get("HTTP_AUTHORIZATION", ""), st.token)
        if not 0 <= size <= self.limit or wrong_token:
            return self.wsgi_app(environ, start_response)
        raw = environ["wsgi.input"].read(size)
        decoded = st.model.records.columns(raw) if len(raw) == size else None
        if decoded is None:
            return self._to_flask(environ, start_response, raw)
        columns, n, parsed = decoded
        rid = (environ.get("HTTP_X_REQUEST_ID") or new_request_id())[:100]
        try:
            result = infer(columns, n, "predict", st, rid)
        except Exception:  # a contract error, an empty or oversized batch...: Flask words the answer
            return self._to_flask(environ, start_response, raw)
        data = dump_json(_predict_body(result, rid))
        st.metrics.request_done("predict", 200, time.perf_counter() - t0)
        self.answered += 1
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                                  ("X-Request-ID", rid)])
        if n >= RELEASE_AFTER_ROWS:  # a big request's parsed input is freed after the answer is sent
            return _KeepUntilClosed([data], parsed, columns)
        return [data]

    def _to_flask(self, environ: dict[str, Any], start_response: Any, raw: bytes) -> Any:
        environ["wsgi.input"] = io.BytesIO(raw)
        environ["CONTENT_LENGTH"] = str(len(raw))
        return self.wsgi_app(environ, start_response)


class _KeepUntilClosed(list):
    """A WSGI body that holds objects until the server closes it (after the last byte is sent)."""

    def __init__(self, body: list[bytes], *keep: Any):
        super().__init__(body)
        self._keep = list(keep)

    def close(self) -> None:
        self._keep.clear()


def _register_hooks(app: Flask) -> None:
    @app.before_request
    def _start() -> Response | None:
        g.t0 = time.perf_counter()
        token = state().token
        if token and request.endpoint in PROTECTED and not token_ok(request.headers.get("Authorization", ""), token):
            raise Unauthorized("missing or wrong bearer token; send 'Authorization: Bearer <serve.token>'.")
        return None

    @app.after_request
    def _finish(resp: Response) -> Response:
        t0 = g.get("t0")
        state().metrics.request_done(request.endpoint or "unmatched", resp.status_code,
                                     time.perf_counter() - t0 if t0 is not None else 0.0)
        if "request_id" in g:
            resp.headers["X-Request-ID"] = g.request_id
        return resp

    @app.errorhandler(MlopsError)
    def _mlops_error(e: MlopsError) -> Response:
        state().metrics.errors.labels(type(e).__name__).inc()
        return error_response(e.http_status, e.message, type(e).__name__)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        status = e.code or 500
        kind = type(e).__name__
        state().metrics.errors.labels(kind).inc()
        if status == 413:
            msg = f"the request body is larger than {state().settings.serve.max_body_mb:g} MiB (serve.max_body_mb)."
        elif status == 404:
            msg = f"no endpoint {request.path}; see /openapi.json."
        elif status == 405:
            msg = f"{request.method} is not allowed on {request.path}; allowed: {', '.join(sorted(e.valid_methods or []))}."
        else:
            msg = e.description or e.name
        return error_response(status, msg, kind)

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Response:
        log.exception("unexpected error on %s", request.path)
        state().metrics.errors.labels("internal").inc()
        return error_response(500, "internal server error; see the server log.", "InternalError")


def _register_routes(app: Flask) -> None:
    @app.post("/predict")
    def predict() -> Response:
        """Plain records in; predictions, probabilities, model and version, request id out."""
        raw = read_body()
        served = state().model
        decoded = served.records.columns(raw)
        if decoded is None:  # anything outside the typed fast path: parsed and checked the general way
            parsed = parse_json(raw)
            if not isinstance(parsed, dict) or "records" not in parsed:
                raise InvalidInputError('send {"records": [{"column": value, ...}, ...]}.')
            columns, n = records_to_columns(parsed["records"], served.contract.feature_names,
                                            numeric=served.contract.numeric_names)
        else:
            columns, n, parsed = decoded
        result = infer(columns, n, "predict")
        return release_after(json_response(_predict_body(result)), n, parsed, columns)

    @app.get("/metrics")
    def metrics() -> Response:
        st = state()
        if st.predlog is not None:
            st.metrics.queue_depth.set(st.predlog.depth())
        _monitor_gauges(st)
        data, ctype = st.metrics.render()
        return Response(data, headers={"Content-Type": ctype})

    @app.get("/openapi.json")
    def openapi() -> Response:
        return json_response(spec(state().model))

    @app.post("/admin/reload")
    def reload() -> Response:
        """Check the alias now instead of waiting for the next poll."""
        st = state()
        swapped = st.holder.check_now()
        return json_response({"model": st.model.name, "version": st.model.version, "reloaded": swapped,
                              "error": st.holder.last_error})


def _monitor_gauges(st: ServerState) -> None:
    """The latest drift share and live metric recorded by `mlopsctl monitor` (one indexed read per scrape)."""
    try:
        latest = st.holder.project.latest_monitor_results(st.model.name)
    except Exception as e:  # a scrape must not fail because the store is busy
        log.warning("could not read monitoring results: %s", e)
        return
    if "drift" in latest:
        d = latest["drift"]
        st.metrics.drift_share.labels(st.model.name, str(d["version"])).set(d["value"])
    if "live_metric" in latest:
        m = latest["live_metric"]
        st.metrics.live_metric.labels(st.model.name, str(m["version"]), m["details"].get("metric", "")).set(m["value"])


def _predict_body(result: Any, rid: str | None = None) -> dict[str, Any]:
    served = result.served
    out = result.outputs
    body: dict[str, Any] = {"request_id": rid or request_id(), "model": served.name, "version": served.version}
    if "label" in out:
        body["predictions"] = np.asarray(out["label"]).ravel().tolist()
        classes = served.contract.class_keys
        proba = np.asarray(out["probabilities"], dtype=np.float64)
        body["probabilities"] = [dict(zip(classes, row)) for row in proba.round(6).tolist()]
    else:
        body["predictions"] = np.asarray(out["prediction"], dtype=np.float64).ravel().tolist()
    if result.warnings:
        body["warnings"] = result.warnings[:20]
    return body
