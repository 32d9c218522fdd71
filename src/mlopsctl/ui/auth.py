"""Who may write (and, off the loopback, read): one token, ``ui.token``.

- Scripts send ``Authorization: Bearer <token>`` with each request. A browser never attaches that header
  by itself, so a bearer request needs no CSRF token.
- People sign in once with the token on ``/login``; the answer is a session cookie (signed with a key
  derived from the token, so every gunicorn worker accepts it and changing the token signs everyone out;
  HttpOnly, SameSite=Strict). Each session gets a random CSRF token that every form posts back
  (``csrf_token``; or the ``X-CSRF-Token`` header), compared in constant time.
- Without a token the dashboard is read-only: every write answers 403 and says how to enable writes.
- Reading needs no token on the loopback (whoever can reach 127.0.0.1 can read the store's file anyway);
  when the dashboard listens beyond it, every page but ``/login`` and ``/static`` needs the token too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, redirect, render_template, request, session

from mlopsctl.errors import Forbidden, Unauthorized

bp = Blueprint("auth", __name__)
OPEN_ENDPOINTS = {"auth.login", "static"}


def session_key(token: str) -> bytes:
    """The cookie-signing key: derived from the token (the same in every worker; a new token, new key)."""
    return hmac.new(token.encode(), b"mlopsctl-ui-session-v1", hashlib.sha256).digest()


def _token() -> str:
    from mlopsctl.ui.app import state

    return state().token


def bearer_ok() -> bool:
    token = _token()
    header = request.headers.get("Authorization", "")
    given = header[7:] if header[:7].lower() == "bearer " else ""
    return bool(token) and bool(given) and hmac.compare_digest(given.encode(), token.encode())


def signed_in() -> bool:
    """A browser session signed in with the token (or a script's bearer token)."""
    return bool(_token()) and (bool(session.get("auth")) or bearer_ok())


def csrf_token() -> str:
    """This session's CSRF token (for the forms of a signed-in page)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def require_write() -> None:
    """Allow the write this request asks for, or raise: 403 when writes are off or the CSRF token is
    missing or wrong, 401 when the request is not signed in."""
    if not _token():
        raise Forbidden("the dashboard is read-only: start it with a token (MLOPS_UI_TOKEN or ui.token) to "
                        "promote and roll back.")
    if bearer_ok():
        return
    if not session.get("auth"):
        raise Unauthorized("sign in with the dashboard's token (/login), or send Authorization: Bearer <token>.")
    given = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf", "")
    if not given or not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Forbidden("the form's CSRF token is missing or wrong; reload the page and submit it again.")


def guard_read() -> Any:
    """Before every request: beyond the loopback, reading needs the token too."""
    from mlopsctl.ui.app import state, wants_json

    if not state().read_needs_token or request.endpoint in OPEN_ENDPOINTS or signed_in():
        return None
    if wants_json():
        raise Unauthorized("this dashboard needs its token: send Authorization: Bearer <token>.")
    return redirect("/login?" + urlencode({"next": request.full_path.rstrip("?")}), 303)


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no ``//host`` or ``scheme:``): no open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/runs"
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if not _token():
        raise Forbidden("the dashboard has no token, so there is nothing to sign in to: it is read-only. Start it "
                        "with MLOPS_UI_TOKEN (or ui.token) to enable promote and rollback.")
    target = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("login.html", next=target, failed=False)
    given = request.form.get("token", "")
    if not hmac.compare_digest(given.encode(), _token().encode()):
        return render_template("login.html", next=target, failed=True), 401
    session.clear()
    session["auth"] = True
    session["csrf"] = secrets.token_urlsafe(32)
    return redirect(target, 303)


@bp.post("/logout")
def logout() -> Any:
    require_write()  # a signed-in form with its CSRF token (no one else can sign a browser out)
    session.clear()
    return redirect("/runs", 303)
