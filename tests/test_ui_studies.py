"""The dashboard's tuning and pipeline pages (/studies, /studies/<name>, /pipeline) through Flask's test
client, on real studies run by `mlopsctl tune` and a real pipeline run by `mlopsctl pipeline run`
(tests/ui_tuned_project.py): the values shown are the services' own (list_studies, show_study, pipeline
status, show and executions), odd and hostile names are 404s or escaped, an empty project and a pipeline that
does not build are explained on the page, never a 500."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from markupsafe import escape
from test_ui_api import PROBE
from ui_project import client_for, settings_for
from ui_tuned_project import (FAILED_STUDY, PIPED_MODEL, STUDY, TUNED_MODEL, XSS, XSS_STDERR,  # noqa: F401
                              tuned_template)

from mlopsctl.services import pipeline, tune
from mlopsctl.ui.app import fmt


@pytest.fixture
def client(tuned_template: Path):
    return client_for(tuned_template)


def get_json(client, url: str, status: int = 200):
    resp = client.get(url)
    assert resp.status_code == status, (url, resp.status_code, resp.get_data(as_text=True)[:500])
    return resp.get_json()


def get_html(client, url: str, status: int = 200) -> str:
    resp = client.get(url)
    text = resp.get_data(as_text=True)
    assert resp.status_code == status and resp.mimetype == "text/html", (url, resp.status_code, text[:500])
    assert "Traceback" not in text
    return text


def esc(text: str) -> str:
    """``text`` as the templates write it (Jinja's escaping)."""
    return str(escape(text))


def row(text: str, attr: str) -> str:
    """The <tr ...> element of ``text`` carrying ``attr`` (e.g. ``data-study="x"``)."""
    m = re.search(rf"<tr[^>]*{re.escape(attr)}[^>]*>(.*?)</tr>", text, re.S)
    assert m, attr
    return m.group(1)


def cell(row_html: str, cls: str) -> str:
    m = re.search(rf'<td class="[^"]*\b{re.escape(cls)}\b[^"]*">(.*?)</td>', row_html, re.S)
    assert m, cls
    return m.group(1).strip()


# ---- /studies -------------------------------------------------------------------------------------------------

def test_the_studies_list_shows_what_the_services_return(client, tuned_template):
    s = settings_for(tuned_template)
    listed = {x["study"]: x for x in tune.list_studies(s)}
    body = get_json(client, "/api/studies")
    piped = pipeline.executions(s, step="search")[-1]["result"]["study"]  # the pipeline's tune step's study
    assert [x["study"] for x in body["studies"]] == list(listed) and set(listed) == {STUDY, FAILED_STUDY, piped}
    shown = {x["study"]: x for x in body["studies"]}
    best = tune.show_study(s, STUDY)["best"]
    assert shown[STUDY] == {**listed[STUDY], "direction": "maximize", "best_trial": best["trial"]}
    assert shown[STUDY]["complete"] + shown[STUDY]["pruned"] == 4 and shown[STUDY]["best_value"] == best["value"]
    assert shown[FAILED_STUDY] == {**listed[FAILED_STUDY], "direction": "maximize", "best_trial": None}
    assert (shown[FAILED_STUDY]["failed"], shown[FAILED_STUDY]["complete"], shown[FAILED_STUDY]["status"]) == (2, 0, "FAILED")

    text = get_html(client, "/studies")
    ok = row(text, f'data-study="{STUDY}"')
    assert f'href="/studies/{STUDY}"' in ok
    assert cell(ok, "best-value") == fmt(best["value"]) and cell(ok, "best-trial") == str(best["trial"])
    assert [cell(ok, k) for k in ("complete", "pruned", "failed", "running")] == \
        [str(listed[STUDY][k]) for k in ("complete", "pruned", "failed", "running")]
    bad = row(text, f'data-study="{FAILED_STUDY}"')
    assert cell(bad, "failed") == "2" and cell(bad, "best-value") == "–" and "FAILED" in bad


def test_a_study_page_is_show_study_plus_the_version_its_refit_became(client, tuned_template):
    expected = tune.show_study(settings_for(tuned_template), STUDY)
    body = get_json(client, f"/api/studies/{STUDY}")
    assert body.pop("registered") == [f"{TUNED_MODEL}/1"]
    assert body == json.loads(json.dumps(expected))
    assert len(body["trials"]) == 4 and body["refit"]["status"] == "FINISHED" and body["importance"]

    text = get_html(client, f"/studies/{STUDY}")
    assert f'<td class="num" id="best-value">{fmt(expected["best"]["value"])}</td>' in text
    assert f'href="/runs/{expected["refit"]["run_id"]}"' in text and f'href="/models/{TUNED_MODEL}">{TUNED_MODEL}/1</a>' in text
    for key, spec in expected["space"].items():
        assert f"<th>{key}</th><td><code>{esc(spec)}</code>" in text
    for t in expected["trials"]:
        r = row(text, f'id="trial-{t["trial"]}"')
        assert cell(r, "value") == fmt(t["value"]) and f'href="/runs/{t["run_id"]}"' in r
    # the history: one point per finished trial (linking to its run), the running best line; importance bars
    assert text.count('class="trial"') == len(expected["best_over_time"]) == 4
    assert 'class="best"' in text and f"best {fmt(expected['best']['value'])}" in text
    assert text.count('class="bar"') == len(expected["importance"])


def test_a_study_whose_every_trial_failed(client, tuned_template):
    expected = tune.show_study(settings_for(tuned_template), FAILED_STUDY)
    body = get_json(client, f"/api/studies/{FAILED_STUDY}")
    assert body["registered"] == [] and body["best"] is None and body["refit"] is None and body["importance"] is None
    assert body["counts"] == {"COMPLETE": 0, "PRUNED": 0, "FAILED": 2, "RUNNING": 0} == expected["counts"]
    text = get_html(client, f"/studies/{FAILED_STUDY}")
    assert "No complete trial yet." in text and "Not refitted yet" in text and "No trial has a value yet." in text
    assert 'class="chart history"' not in text and 'class="chart bars"' not in text
    for t in expected["trials"]:
        assert t["state"] == "FAILED" and "Expected n_neighbors <= n_samples_fit" in t["reason"]
        assert esc(t["reason"]) in row(text, f'id="trial-{t["trial"]}"')
    assert esc(expected["reason"]) in text


@pytest.mark.parametrize("path", [
    "/studies/nope", "/studies/no%20such%20study", "/studies/%C3%A9t%C3%A9-%E2%9C%93", "/studies/dt-search%2Fextra",
    f"/studies/{STUDY}/extra", "/studies/%3Cscript%3Ealert(1)%3C%2Fscript%3E", "/studies/%3Cb%3Ebold%3C%2Fb%3E",
])
def test_unknown_and_odd_study_names_are_404s_with_every_text_escaped(client, path):
    body = get_json(client, "/api" + path, 404)
    assert body["error"] in ("NotFoundError", "NotFound") and body["message"]
    text = get_html(client, path, 404)
    assert "404 · " in text and "<script>alert" not in text and "<b>bold" not in text
    if body["error"] == "NotFoundError":  # the study's name is in the message, escaped
        assert esc(body["message"]) in text and "does not exist" in body["message"]


# ---- /pipeline -------------------------------------------------------------------------------------------------

def test_the_pipeline_page_shows_each_steps_state_and_last_execution(client, tuned_template):
    s = settings_for(tuned_template)
    shown, states = pipeline.show(s)["steps"], {o["step"]: o for o in pipeline.status(s)["steps"]}
    body = get_json(client, "/api/pipeline")
    assert body["defined"] is True and body["problem"] is None
    names = ["search", "prep", "fit", "reg", "stats", "check"]
    assert [st["name"] for st in body["steps"]] == [st["name"] for st in shown] == names
    for st, want in zip(body["steps"], shown):
        assert {k: st[k] for k in want} == json.loads(json.dumps(want))
        assert (st["state"], st["reasons"]) == (states[st["name"]]["status"], states[st["name"]]["reasons"])
        assert st["last"] == json.loads(json.dumps(pipeline.executions(s, step=st["name"], limit=1)[0]))
    by = {st["name"]: st for st in body["steps"]}
    assert [by[n]["state"] for n in names] == ["fresh", "fresh", "fresh", "fresh", "stale", "stale"]
    assert by["fit"]["upstream"] == ["prep"] and by["check"]["upstream"] == ["stats"]
    assert by["prep"]["last"]["status"] == "cached" and by["check"]["last"]["status"] == "failed"
    assert XSS_STDERR in by["check"]["last"]["message"] and by["stats"]["reasons"]
    assert body["executions"] == json.loads(json.dumps(pipeline.executions(s, limit=50)))
    assert len(body["executions"]) == 12  # two runs of six steps (cached ones recorded too)

    text = get_html(client, "/pipeline")
    assert text.count('class="node fresh"') == 4 and text.count('class="node stale"') == 1
    assert text.count('class="node failed"') == 1  # check: stale, and its last execution failed
    assert text.count('class="edge"') == sum(len(st["upstream"]) for st in shown) == 3
    for name in names:
        assert f'id="step-{name}" data-state="{by[name]["state"]}"' in text
    assert f"{fmt(by['fit']['last']['duration_s'], 3)} s" in row(text, 'id="step-fit"')
    # what a step made links to it: the tune step's study, the register step's version
    study = by["search"]["last"]["result"]["study"]
    assert f'<a class="study" href="/studies/{study}">{study}</a>' in row(text, 'id="step-search"')
    assert get_json(client, f"/api/studies/{study}")["counts"]["COMPLETE"] + \
        get_json(client, f"/api/studies/{study}")["counts"]["PRUNED"] == 2
    assert f'<a class="version" href="/models/{PIPED_MODEL}">{PIPED_MODEL}/1</a>' in row(text, 'id="step-reg"')
    # HTML in a param, a command's stderr: shown as text
    assert XSS not in text and esc(XSS) in text
    assert "<script>alert" not in text and esc(XSS_STDERR) in text


def test_executions_filtered_by_step(client, tuned_template):
    s = settings_for(tuned_template)
    body = get_json(client, "/api/pipeline?step=prep")
    assert body["step"] == "prep" and [e["status"] for e in body["executions"]] == ["cached", "ran"]
    assert body["executions"] == json.loads(json.dumps(pipeline.executions(s, step="prep")))
    assert get_json(client, "/api/pipeline?step=check&limit=1")["executions"][0]["status"] == "failed"
    text = get_html(client, "/pipeline?step=fit")
    assert text.count('<tr data-step="fit">') == 2 and '<tr data-step="prep">' not in text and "<option selected>fit</option>" in text
    none = get_json(client, "/api/pipeline?step=no%20such%20step")
    assert none["executions"] == [] and len(none["steps"]) == 6
    assert "No executions of no such step yet." in get_html(client, "/pipeline?step=no%20such%20step")
    assert get_json(client, "/api/pipeline?limit=0", 400)["error"] == "InvalidInputError"


# ---- projects with nothing, or a pipeline that does not build ---------------------------------------------------

@pytest.fixture
def empty_project(tmp_path: Path) -> Path:
    from served_projects import cli_ok

    project = tmp_path / "empty"
    cli_ok("init", project)
    return project


def test_an_empty_project_says_how_to_start(empty_project):
    client = client_for(empty_project)
    assert get_json(client, "/api/studies") == {"studies": []}
    assert 'id="no-studies"' in get_html(client, "/studies")
    body = get_json(client, "/api/pipeline")
    assert (body["defined"], body["steps"], body["executions"], body["problem"]) == (False, [], [], None)
    assert "[pipeline.steps.NAME]" in body["how_to"] and "README.md" in body["how_to"]
    text = get_html(client, "/pipeline")
    assert 'id="no-pipeline"' in text and "README.md, section Pipelines" in text and 'class="chart dag"' not in text
    assert get_json(client, "/api/studies/anything", 404)["error"] == "NotFoundError"


def test_a_pipeline_that_does_not_build_is_explained_not_a_500(empty_project):
    cfg = empty_project / ".mlops.toml"
    cfg.write_text(cfg.read_text() + '\n[pipeline.steps.a]\ncmd = "true"\nneeds = ["b"]\n\n'
                   '[pipeline.steps.b]\ncmd = "true"\nneeds = ["a"]\n')
    client = client_for(empty_project)
    body = get_json(client, "/api/pipeline")
    assert body["defined"] is True and body["steps"] == [] and "cycle" in body["problem"]
    text = get_html(client, "/pipeline")
    assert 'id="pipeline-problem"' in text and esc(body["problem"]) in text


def test_these_pages_load_no_scikit_learn(tuned_template):
    """The list, the pipeline and the studies read without scikit-learn: a finished study's importance (Optuna's
    fANOVA fits scikit-learn's random forest) was stored when it finished, so its page does not compute it."""
    paths = ["/studies", "/api/studies", "/pipeline", "/api/pipeline?step=fit", f"/studies/{FAILED_STUDY}",
             f"/studies/{STUDY}", f"/api/studies/{STUDY}"]
    out = subprocess.run([sys.executable, "-c", PROBE, str(tuned_template), json.dumps(paths)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
