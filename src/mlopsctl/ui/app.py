"""The dashboard's Flask application factory: ``create_app(settings)``.

Every page is a function that returns plain data; :func:`page` registers it twice, as ``/x`` (rendered by
a Jinja template from this package) and as ``/api/x`` (the same data as JSON), so scripts, tests and the
browser read one thing. Errors are a page (or, under ``/api/``, a JSON body ``{"error", "message"}``) with
the error's own 4xx status; an unexpected exception is logged and answered with a plain 500 page that
shows no trace.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from flask import Blueprint, Flask, current_app, g, jsonify, render_template, request
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from mlopsctl._version import __version__
from mlopsctl.config import Settings
from mlopsctl.config_checks import is_loopback
from mlopsctl.errors import MlopsError

log = logging.getLogger("mlopsctl.ui")

# No inline scripts, nothing from another origin; inline SVG charts use attributes, the report its <style>.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


@dataclass(frozen=True)
class UiState:
    """What every request needs: the project's settings, the write token, and whether reading needs it too
    (when the dashboard listens beyond the loopback)."""

    settings: Settings
    token: str
    read_needs_token: bool


def state() -> UiState:
    return current_app.extensions["mlopsctl_ui"]


def settings() -> Settings:
    return state().settings


def create_app(settings: Settings, *, host: str | None = None) -> Flask:
    """The dashboard for ``settings``' project. ``host`` (default ``ui.host``) decides whether reading needs
    the token too: it does when the dashboard listens beyond the loopback and a token is set."""
    from mlopsctl.ui import activity, auth, models, monitor, pipelines, runs, studies

    token = settings.ui.token
    host = settings.ui.host if host is None else host
    app = Flask("mlopsctl.ui", static_folder="static", static_url_path="/static", template_folder="templates")
    app.extensions["mlopsctl_ui"] = UiState(settings, token, bool(token) and not is_loopback(host))
    app.config.update(SESSION_COOKIE_NAME="mlopsctl_ui", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", MAX_CONTENT_LENGTH=1 << 20,
                      SEND_FILE_MAX_AGE_DEFAULT=3600)
    if token:
        app.secret_key = auth.session_key(token)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.jinja_env.globals.update(version=__version__, project=settings.project_dir.name, fmt=fmt,
                                 signed_in=auth.signed_in, writes_enabled=lambda: bool(state().token),
                                 csrf_token=auth.csrf_token, url_with=url_with)
    app.jinja_env.filters.update(fmt=fmt, short=short)
    for bp in (auth.bp, runs.bp, models.bp, monitor.bp, activity.bp, studies.bp, pipelines.bp):
        app.register_blueprint(bp)
    _register_hooks(app)
    return app


def _register_hooks(app: Flask) -> None:
    from mlopsctl.ui import auth

    @app.before_request
    def _start() -> Any:
        g.t0 = time.perf_counter()
        return auth.guard_read()

    @app.after_request
    def _headers(resp: Any) -> Any:
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "same-origin"
        if "t0" in g:
            resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - g.t0) * 1000:.1f}"
        return resp

    @app.errorhandler(MlopsError)
    def _mlops_error(e: MlopsError) -> Any:
        return error_response(e.http_status, type(e).__name__, e.message)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Any:
        messages = {404: f"there is no page at {request.path}; see the links above.",
                    405: f"{request.method} is not allowed on {request.path}."}
        return error_response(e.code or 500, e.name.replace(" ", ""), messages.get(e.code or 0, e.description or e.name))

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Any:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "InternalError", f"unexpected {type(e).__name__}; the server log has the details.")


def wants_json() -> bool:
    return request.path.startswith("/api/")


def error_response(status: int, error: str, message: str) -> Any:
    if wants_json():
        resp = jsonify({"error": error, "message": message})
    else:
        resp = current_app.make_response(render_template("error.html", status=status, error=error, message=message))
    resp.status_code = status
    return resp


def page(bp: Blueprint, rule: str, template: str, *, charts: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Callable:
    """Register ``fn(**url_args) -> data`` as the page ``rule`` (``template`` rendered with the data, plus
    what ``charts(data)`` adds) and as ``/api`` + ``rule`` (the data as JSON)."""

    def register(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        def html_view(**kwargs: Any) -> Any:
            data = fn(**kwargs)
            extra = charts(data) if charts else {}
            return render_template(template, data=data, **extra)

        def api_view(**kwargs: Any) -> Any:
            return jsonify(fn(**kwargs))

        bp.add_url_rule(rule, fn.__name__, html_view)
        bp.add_url_rule("/api" + rule, "api_" + fn.__name__, api_view)
        return fn

    return register


def arg_int(name: str, default: int, *, low: int = 1, high: int = 10_000) -> int:
    """A whole-number query argument in [low, high] (InvalidInputError otherwise)."""
    from mlopsctl.errors import InvalidInputError

    text = request.args.get(name, "").strip() or str(default)
    if not text.isdigit() or not low <= int(text) <= high:
        raise InvalidInputError(f"{name} {text!r} must be a whole number from {low} to {high}.")
    return int(text)


def url_with(**changes: Any) -> str:
    """This page's URL with some query arguments replaced (None removes one)."""
    from urllib.parse import urlencode

    args = [(k, v) for k, v in request.args.items(multi=True) if k not in changes]
    args += [(k, v) for k, v in changes.items() if v is not None]
    return request.path + ("?" + urlencode(args) if args else "")


def fmt(v: Any, digits: int = 4) -> str:
    """Numbers for people: 4 significant digits, '–' for nothing."""
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def short(text: Any, n: int = 12) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= n else s[:n] + "…"


def svg(markup: str) -> Markup:
    """Chart markup built by :mod:`mlopsctl.ui.charts` (which escapes every text it holds)."""
    return Markup(markup)
