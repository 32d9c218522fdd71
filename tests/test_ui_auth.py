"""Writes in the dashboard: promote and rollback need the token (a bearer header, or a signed-in browser
session whose forms carry the CSRF token), go through the same gate as the CLI, and answer a clear 4xx
otherwise; off the loopback reading needs the token too; `mlopsctl ui` refuses to listen on the network
without one. Real stores (copies of tests/ui_project.py's project), Flask's test client, no mocks."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from ui_project import MODEL, TOKEN, client_for, ui_copy, ui_template  # noqa: F401

BEARER = {"Authorization": f"Bearer {TOKEN}"}


def aliases(client) -> dict[str, int]:
    return client.get(f"/api/models/{MODEL}").get_json()["aliases"]


def history(client) -> list[tuple]:
    return [(h["alias"], h["from_version"], h["to_version"], h["action"], h["forced"], h["reason"])
            for h in client.get(f"/api/models/{MODEL}").get_json()["history"]]


def sign_in(client) -> str:
    """Sign the test client's browser session in; returns the session's CSRF token (read from a page)."""
    resp = client.post("/login", data={"token": TOKEN, "next": f"/models/{MODEL}"})
    assert resp.status_code == 303 and resp.headers["Location"] == f"/models/{MODEL}"
    page = client.get(f"/models/{MODEL}").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


# ---- without a token: read-only ----------------------------------------------------------------------------

def test_without_a_token_every_write_is_403_and_nothing_moves(ui_copy):
    client = client_for(ui_copy)
    for path in (f"/api/models/{MODEL}/promote", f"/models/{MODEL}/promote", f"/api/models/{MODEL}/rollback"):
        resp = client.post(path, json={"version": 2}, headers=BEARER)
        assert resp.status_code == 403, path
    assert client.post(f"/api/models/{MODEL}/promote", json={"version": 2}).get_json() == {
        "error": "Forbidden", "message": "the dashboard is read-only: start it with a token (MLOPS_UI_TOKEN or "
                                         "ui.token) to promote and roll back."}
    assert client.get("/login").status_code == 403
    page = client.get(f"/models/{MODEL}").get_data(as_text=True)
    assert "Promote</button>" not in page and "Read-only: start" in page
    assert aliases(client) == {"production": 1, "staging": 2}


# ---- bearer token (scripts) ----------------------------------------------------------------------------------

def test_a_missing_or_wrong_token_is_401(ui_copy):
    client = client_for(ui_copy, token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}):
        resp = client.post(f"/api/models/{MODEL}/promote", json={"version": 2}, headers=headers)
        assert resp.status_code == 401, headers
        assert resp.get_json()["message"] == ("sign in with the dashboard's token (/login), or send Authorization: "
                                              "Bearer <token>.")
    assert aliases(client) == {"production": 1, "staging": 2}


def test_promote_and_rollback_with_the_bearer_token_go_through_the_gate(ui_copy):
    client = client_for(ui_copy, token=TOKEN)
    resp = client.post(f"/api/models/{MODEL}/promote", json={"version": 2, "reason": "from a script"}, headers=BEARER)
    assert resp.status_code == 200, resp.get_json()
    out = resp.get_json()
    assert (out["decision"], out["from_version"], out["alias"], out["changed"]) == ("promoted", 1, "production", True)
    gate = out["gate"]
    assert gate["metric"] == "roc_auc" and gate["holder"]["version"] == 1 and gate["min_delta"] == 1.0
    assert gate["data"]["rows"] == 114 and 0.5 < gate["candidate"]["score"] <= 1  # both versions were scored
    assert aliases(client) == {"production": 2, "staging": 2}
    assert history(client)[-1] == ("production", 1, 2, "promote", False, "from a script")
    resp = client.post(f"/api/models/{MODEL}/rollback", json={"alias": "production"}, headers=BEARER)
    assert resp.get_json() == {"model": MODEL, "alias": "production", "from_version": 2, "to_version": 1}
    assert aliases(client)["production"] == 1
    assert history(client)[-1] == ("production", 2, 1, "rollback", False, "rollback from version 2")
    events = client.get(f"/api/events?model={MODEL}&limit=2").get_json()["events"]
    assert [e["kind"] for e in events] == ["rolled_back", "promoted"]


def test_the_gate_rejects_in_the_dashboard_as_in_the_cli_and_force_is_recorded(ui_copy):
    cfg = ui_copy / ".mlops.toml"
    cfg.write_text(cfg.read_text().replace("min_delta = 1.0", "min_delta = -1.0"))  # no candidate can pass
    client = client_for(ui_copy, token=TOKEN)
    resp = client.post(f"/api/models/{MODEL}/promote", json={"version": 3}, headers=BEARER)
    assert resp.status_code == 409
    body = resp.get_json()
    assert body["error"] == "ConflictError" and body["message"].startswith(f"gate rejected {MODEL}/3 for @production: roc_auc")
    assert body["message"].endswith("use --force to promote anyway.")
    assert aliases(client)["production"] == 1
    assert client.get("/api/events?kind=rejected").get_json()["events"][0]["version"] == 3
    out = client.post(f"/api/models/{MODEL}/promote", json={"version": 3, "force": True}, headers=BEARER).get_json()
    assert out["decision"] == "forced" and aliases(client)["production"] == 3
    assert history(client)[-1][:5] == ("production", 1, 3, "promote", True)


@pytest.mark.parametrize(("body", "message"), [
    ({"version": "two"}, "version 'two' must be a version number such as 2."),
    ({"version": 0}, "version 0 must be a version number such as 2."),
    ({"version": 9}, f"{MODEL} has no version 9; versions are 1 to 3."),
    ({"version": 2, "alias": "bad alias!"}, "alias 'bad alias!' is invalid; use 1-100 characters: letters, digits, "
                                            "'.', '_' or '-', starting with a letter or digit."),
    ({"version": 2, "reason": "x" * 501}, "reason must be text of at most 500 characters."),
    ([2], "the request body must be a JSON object, as in {\"version\": 2, \"alias\": \"production\"}."),
])
def test_bad_promote_input_is_a_4xx_with_the_reason(ui_copy, body, message):
    client = client_for(ui_copy, token=TOKEN)
    resp = client.post(f"/api/models/{MODEL}/promote", json=body, headers=BEARER)
    assert resp.status_code in (400, 404) and resp.get_json()["message"] == message
    assert aliases(client) == {"production": 1, "staging": 2}


def test_rolling_back_an_alias_with_one_holder_is_409(ui_copy):
    client = client_for(ui_copy, token=TOKEN)
    resp = client.post(f"/api/models/{MODEL}/rollback", json={"alias": "staging"}, headers=BEARER)
    assert resp.status_code == 409
    assert resp.get_json()["message"] == (f"{MODEL}@staging has no previous holder to roll back to (it points at "
                                          "version 2).")


# ---- browser session: login cookie + CSRF ----------------------------------------------------------------------

def test_login_sets_a_strict_httponly_cookie_and_a_wrong_token_is_401(ui_copy):
    client = client_for(ui_copy, token=TOKEN)
    resp = client.post("/login", data={"token": "wrong", "next": "/models"})
    assert resp.status_code == 401 and 'id="login-failed"' in resp.get_data(as_text=True)
    resp = client.post("/login", data={"token": TOKEN, "next": "/models"})
    assert resp.status_code == 303 and resp.headers["Location"] == "/models"
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("mlopsctl_ui=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", ""])
def test_login_never_redirects_off_the_site(ui_copy, target):
    resp = client_for(ui_copy, token=TOKEN).post("/login", data={"token": TOKEN, "next": target})
    assert resp.status_code == 303 and resp.headers["Location"] == "/runs"


def test_a_signed_in_form_needs_its_csrf_token(ui_copy):
    client = client_for(ui_copy, token=TOKEN)
    csrf = sign_in(client)
    for data in ({"version": "2"}, {"version": "2", "csrf_token": "forged"}, {"version": "2", "csrf_token": ""}):
        resp = client.post(f"/models/{MODEL}/promote", data=data)
        assert resp.status_code == 403, data
        assert "the form&#39;s CSRF token is missing or wrong; reload the page and submit it again." in resp.get_data(as_text=True)
    assert aliases(client)["production"] == 1
    resp = client.post(f"/models/{MODEL}/promote", data={"version": "2", "alias": "production", "csrf_token": csrf,
                                                         "reason": "better recall"})
    assert resp.status_code == 303 and resp.headers["Location"] == f"/models/{MODEL}"
    assert aliases(client)["production"] == 2
    page = client.get(f"/models/{MODEL}").get_data(as_text=True)
    assert f"{MODEL}/2 -&gt; @production: the gate passed." in page  # the flash message, once
    assert "the gate passed" not in client.get(f"/models/{MODEL}").get_data(as_text=True)
    assert history(client)[-1] == ("production", 1, 2, "promote", False, "better recall")
    resp = client.post(f"/models/{MODEL}/rollback", data={"alias": "production", "csrf_token": csrf})
    assert resp.status_code == 303 and aliases(client)["production"] == 1


def test_the_csrf_token_of_another_session_is_refused_and_logout_needs_one(ui_copy):
    a, b = client_for(ui_copy, token=TOKEN), client_for(ui_copy, token=TOKEN)
    csrf_a, csrf_b = sign_in(a), sign_in(b)
    assert csrf_a != csrf_b
    assert a.post(f"/models/{MODEL}/promote", data={"version": "2", "csrf_token": csrf_b}).status_code == 403
    assert a.post("/logout", data={}).status_code == 403
    assert a.post("/logout", data={"csrf_token": csrf_a}).status_code == 303
    assert a.post(f"/models/{MODEL}/promote", data={"version": "2", "csrf_token": csrf_a}).status_code == 401
    assert aliases(a)["production"] == 1


def test_a_new_token_signs_everyone_out(ui_copy):
    old = client_for(ui_copy, token=TOKEN)
    csrf = sign_in(old)
    cookie = old.get_cookie("mlopsctl_ui")
    new = client_for(ui_copy, token="another-token")
    new.set_cookie("mlopsctl_ui", cookie.value)
    resp = new.post(f"/models/{MODEL}/promote", data={"version": "2", "csrf_token": csrf})
    assert resp.status_code == 401


# ---- beyond the loopback -----------------------------------------------------------------------------------------

def test_off_the_loopback_reading_needs_the_token_too(ui_copy):
    client = client_for(ui_copy, token=TOKEN, host="0.0.0.0")
    assert client.get("/api/runs").status_code == 401
    assert client.get("/api/runs", headers=BEARER).get_json()["total"] == 12
    resp = client.get("/runs?sort=id")
    assert resp.status_code == 303 and resp.headers["Location"] == "/login?next=%2Fruns%3Fsort%3Did"
    with client.get("/static/ui.css") as css:  # a file response: closed here
        assert css.status_code == 200 and b"table" in css.data
    assert client.get("/login").status_code == 200
    sign_in(client)
    assert client.get("/runs").status_code == 200
    on_loopback = client_for(ui_copy, token=TOKEN, host="127.0.0.1")
    assert on_loopback.get("/api/runs").status_code == 200  # reading on the loopback needs nothing


# ---- configuration and the command --------------------------------------------------------------------------------

def test_ui_settings_defaults_and_environment(tmp_path):
    from mlopsctl.config import load_settings
    from mlopsctl.errors import ConfigError

    s = load_settings({}, {}, tmp_path)
    assert (s.ui.host, s.ui.port, s.ui.token) == ("127.0.0.1", 5000, "")
    s = load_settings({}, {"MLOPS_UI_TOKEN": "t", "MLOPS_UI_PORT": "8501", "MLOPS_UI_HOST": "::1"}, tmp_path)
    assert (s.ui.host, s.ui.port, s.ui.token) == ("::1", 8501, "t")
    with pytest.raises(ConfigError, match=r"^ui.port must be between 1 and 65535, got 0.$"):
        load_settings({"ui.port": 0}, {}, tmp_path)


def test_ui_refuses_the_network_without_a_token(cli, assert_error, tmp_path):
    assert_error(cli("-C", tmp_path, "ui", "--host", "0.0.0.0"), 5,
                 "host '0.0.0.0' is reachable from other machines and ui.token is empty; set MLOPS_UI_TOKEN (or "
                 "ui.token) to require a bearer token, or pass --allow-unauthenticated to accept requests from anyone.")


def test_ui_says_when_its_port_is_taken(cli, assert_error, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_error(cli("-C", tmp_path, "ui", "--port", port), 2,
                     f"127.0.0.1:{port} is already in use; stop the other server or pass --port.")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlopsctl_ui_serves_the_dashboard_with_gunicorn(ui_copy):
    """The real command in a subprocess: gunicorn workers answer a page and the API, then stop on SIGTERM."""
    port = _free_port()
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MLOPS_")}
    proc = subprocess.Popen([sys.executable, "-m", "mlopsctl", "-C", str(ui_copy), "ui", "--port", str(port),
                             "--workers", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs?per_page=1", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=5)
                time.sleep(0.2)
        assert '"total":12' in body
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/models/{MODEL}", timeout=5) as r:
            assert r.status == 200 and "try the shallow forest" in r.read().decode()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"Dashboard on http://127.0.0.1:{port} (1 gunicorn worker(s) × 4 threads); read-only (no ui.token)" \
        in " ".join(err.split())
