"""The loopback rule of `mlopsctl serve`: off 127.0.0.0/8, ::1 and localhost it refuses to start without a
token (exit 5) unless --allow-unauthenticated, which prints one warning line. The check runs before the store
is opened or the model loaded, so these tests need no server: a refusal is exit 5; a host that passes goes
on to resolve a model that does not exist (exit 3)."""

from __future__ import annotations

import pytest
from test_serving_server import free_port


@pytest.fixture
def empty_project(tmp_path, cli):
    r = cli("init", tmp_path / "p")
    assert r.exit_code == 0, r.stderr
    return tmp_path / "p"


REFUSED = ("host {host!r} is reachable from other machines and serve.token is empty; set MLOPS_SERVE_TOKEN (or "
           "serve.token) to require a bearer token, or pass --allow-unauthenticated to accept requests from anyone.")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.com", "", "::ffff:10.0.0.1"])
def test_serve_refuses_a_network_address_without_a_token_before_loading_anything(cli, assert_error, tmp_path, host):
    # no project here: a refusal that came after opening the store or loading the model would say so
    assert_error(cli("serve", "no-such-model", "--host", host, "--port", free_port()), 5, REFUSED.format(host=host))
    assert not (tmp_path / ".mlops").exists()


def test_the_rule_follows_the_setting_wherever_it_comes_from(cli, assert_error, tmp_path):
    (tmp_path / ".mlops.toml").write_text('[serve]\nhost = "0.0.0.0"\n')
    assert_error(cli("serve", "m"), 5, REFUSED.format(host="0.0.0.0"))
    assert_error(cli("serve", "m", env={"MLOPS_SERVE_TOKEN": ""}), 5, REFUSED.format(host="0.0.0.0"))
    (tmp_path / ".mlops.toml").write_text("")
    assert_error(cli("serve", "m", env={"MLOPS_SERVE_HOST": "172.17.0.2"}), 5, REFUSED.format(host="172.17.0.2"))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LocalHost", "::ffff:127.0.0.1"])
def test_loopback_hosts_need_no_token(empty_project, cli, assert_error, host):
    # the check passes: serve goes on to resolve the model, which does not exist (exit 3), and says nothing else
    assert_error(cli("-C", empty_project, "serve", "nope", "--host", host, "--port", free_port()), 3,
                 "model 'nope' does not exist; registered: (none yet).")


def test_a_token_or_allow_unauthenticated_lets_serve_go_on(empty_project, cli, assert_error):
    p = empty_project
    assert_error(cli("-C", p, "serve", "nope", "--host", "0.0.0.0", "--port", free_port(),
                     env={"MLOPS_SERVE_TOKEN": "t0ken"}), 3, "model 'nope' does not exist; registered: (none yet).")
    r = cli("-C", p, "serve", "nope", "--host", "0.0.0.0", "--port", free_port(), "--allow-unauthenticated")
    assert r.exit_code == 3
    assert r.stderr == ("Warning: listening on 0.0.0.0 without a token (--allow-unauthenticated): anyone who can "
                        "reach this port can use it; set MLOPS_SERVE_TOKEN to require one.\n"
                        "Error: model 'nope' does not exist; registered: (none yet).\n")


def test_check_exposure_is_one_function_for_every_listening_command():
    from mlopsctl.config_checks import check_exposure
    from mlopsctl.errors import ConfigError

    assert check_exposure("127.0.0.1", "", False) is None
    assert check_exposure("0.0.0.0", "t", False) is None
    with pytest.raises(ConfigError, match=r"ui\.token is empty; set MLOPS_UI_TOKEN \(or ui\.token\)"):
        check_exposure("0.0.0.0", "", False, token_key="ui.token")
    assert check_exposure("0.0.0.0", "", True, token_key="ui.token").endswith("set MLOPS_UI_TOKEN to require one.")
