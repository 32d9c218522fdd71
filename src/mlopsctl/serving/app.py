"""The application factory: ``create_app(settings, "churn@production")``.

The app is Flask, with ``/predict`` answered in front of it on the raw WSGI environ
(:mod:`mlopsctl.serving.predict`); the other routes are Flask's: the V2 and MLflow blueprints, ``/metrics``,
``/openapi.json`` and ``/admin/reload``, with the bearer token, metrics and protocol-shaped errors in the
hooks below.
"""

from __future__ import annotations

import logging
import os
import time

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from mlopsctl.config import Settings
from mlopsctl.errors import MlopsError, Unauthorized
from mlopsctl.project import open_project
from mlopsctl.registry_core import parse_ref
from mlopsctl.serving import mlflow, predict, v2
from mlopsctl.serving.http import error_response, http_error_message, json_response, token_ok
from mlopsctl.serving.metrics import Metrics
from mlopsctl.serving.openapi import spec
from mlopsctl.serving.predlog import PredictionLog
from mlopsctl.serving.runtime import ModelHolder, ServedModel
from mlopsctl.serving.state import ServerState, state

log = logging.getLogger("mlopsctl.serve")

# Flask endpoints that need the bearer token when one is configured (health and metadata stay open;
# /predict checks it itself)
PROTECTED = {"mlflow.invocations", "v2.model_infer", "metrics", "reload"}


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
    st = app.extensions["mlopsctl"] = ServerState(settings, holder, metrics, predlog, serve.token)
    app.register_blueprint(v2.bp)
    app.register_blueprint(mlflow.bp)
    _register_routes(app)
    _register_hooks(app)
    # /predict is in the URL map (the app's list of routes) but answered before Flask routes a request
    app.add_url_rule(predict.PATH, endpoint="predict", methods=["POST"])
    app.wsgi_app = predict.PredictRoute(st, app.wsgi_app)  # type: ignore[method-assign]
    return app


def _register_hooks(app: Flask) -> None:
    @app.before_request
    def _start() -> Response | None:
        g.t0 = time.perf_counter()
        token = state().token
        if token and request.endpoint in PROTECTED and not token_ok(request.headers.get("Authorization", ""), token):
            raise Unauthorized(predict.TOKEN_MESSAGE)
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
        kind = type(e).__name__
        state().metrics.errors.labels(kind).inc()
        msg = http_error_message(e, request.method, request.path, state().settings.serve.max_body_mb)
        return error_response(e.code or 500, msg, kind)

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Response:
        log.exception("unexpected error on %s", request.path)
        state().metrics.errors.labels("internal").inc()
        return error_response(500, "internal server error; see the server log.", "InternalError")


def _register_routes(app: Flask) -> None:
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
