"""The dashboard in a real browser: Debian's Chromium (/usr/bin/chromium) driven by Playwright for Python,
on the real app served over HTTP on 127.0.0.1, on the project of tests/ui_project.py.

It loads every page, clicks from the runs list to a run, ticks two runs and compares them, toggles "only
differences", opens a model's history, signs in with the token and promotes, and sees the alias move; goes
from the studies list to a study and its best trial's run, and from the pipeline's DAG to a step's
executions (on tests/ui_tuned_project.py's project); with
JavaScript off it reads the pages and compares through the plain forms and links. No page may log a console
error. Screenshots are written under the test's tmp_path (``screenshots/``); with ``UI_SCREENSHOTS_DIR`` set
they are copied there too (the README's pictures are made that way).

Playwright's own browser download is never used: Chromium must be installed (``apt-get install chromium``;
``.ci/run`` does it). Without it these tests fail, they do not skip.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path
from typing import Iterator

import pytest
from ui_project import MODEL, TOKEN, copy_project, settings_for, ui_template  # noqa: F401
from ui_tuned_project import FAILED_STUDY, STUDY, TUNED_MODEL, XSS, tuned_template  # noqa: F401

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage",
        "--disable-extensions", "--no-first-run", "--disable-sync", "--disable-component-update"]
PAGES = ["/runs", "/runs/1", "/runs/3", "/compare?runs=3,4,5,6", "/models", f"/models/{MODEL}", "/monitoring",
         f"/monitoring/{MODEL}", "/events", "/watch", "/studies", "/pipeline", "/login"]


class Served:
    """The dashboard on a free port of 127.0.0.1 (werkzeug's threaded server, in this process)."""

    def __init__(self, project: Path, token: str = TOKEN):
        from werkzeug.serving import make_server

        from mlopsctl.ui.app import create_app

        self.server = make_server("127.0.0.1", 0, create_app(settings_for(project, **{"ui.token": token})), threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    assert os.path.exists(CHROMIUM), ("the dashboard's browser tests need Debian's chromium at /usr/bin/chromium "
                                      "(apt-get install -y chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path: Path):
    """``shots(page, "name")``: a full-page PNG under tmp_path/screenshots (and UI_SCREENSHOTS_DIR if set)."""
    folder = tmp_path / "screenshots"
    folder.mkdir()

    def take(page, name: str, full_page: bool = True) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        assert path.stat().st_size > 5000  # a picture, not a blank
        extra = os.environ.get("UI_SCREENSHOTS_DIR")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path

    return take


@pytest.fixture
def open_page(browser):
    """``open_page(url, js=True)`` -> a new page that records console errors, page errors and failed
    requests in ``page.problems``; every page is checked for none at the end of the test."""
    contexts, pages = [], []

    def make(js: bool = True):
        ctx = browser.new_context(viewport={"width": 1280, "height": 860}, java_script_enabled=js)
        page = ctx.new_page()
        page.problems = []
        page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: page.problems.append(f"request failed: {r.url} {r.failure}"))
        contexts.append(ctx)
        pages.append(page)
        return page

    yield make
    problems = [p for page in pages for p in page.problems]
    for ctx in contexts:
        ctx.close()
    assert problems == []


@pytest.fixture
def served(ui_template: Path, tmp_path: Path) -> Iterator[Served]:
    s = Served(copy_project(ui_template, tmp_path / "bc"))
    yield s
    s.close()


def test_every_page_loads_without_console_errors(served, open_page, shots):
    page = open_page()
    for path in PAGES:
        resp = page.goto(served.url + path)
        assert resp.status == 200, path
        assert page.locator("header.top nav a").count() == 7
        assert "Traceback" not in page.content()
        name = re.sub(r"[^a-z0-9]+", "-", path.strip("/").lower()) or "root"
        shots(page, f"page-{name}")
    page.goto(served.url + "/studies")
    assert "No tuning studies yet" in page.locator("#no-studies").inner_text()
    page.goto(served.url + "/pipeline")
    assert "no pipeline yet" in page.locator("#no-pipeline").inner_text()


def test_click_from_the_runs_list_to_a_run(served, open_page, shots):
    page = open_page()
    page.goto(served.url + "/runs")
    shots(page, "runs", full_page=False)
    assert page.locator("#runs-table tbody tr").count() == 12
    page.click("#runs-table a.run-link:text-is('shallow')")
    page.wait_for_url(served.url + "/runs/2")
    assert page.locator("h1").inner_text().startswith("Run 2 · shallow")
    assert page.locator("#versions").inner_text() == f"{MODEL}/2"
    assert page.locator("#params").inner_text().count("model.max_depth") == 1
    page.goto(served.url + "/runs/3")
    assert page.locator("#series svg.chart.steps").count() == 1  # the loss series


def test_sort_filter_and_choose_columns(served, open_page):
    page = open_page()
    page.goto(served.url + "/runs")
    page.select_option("select[name=experiment]", "sweep")  # submits by itself (data-autosubmit)
    page.wait_for_url(re.compile(r".*experiment=sweep.*"))
    assert page.locator("#runs-table tbody tr").count() == 9
    page.fill("input[name=filter]", "metrics.auc >= 0.9")
    page.click("#column-chooser summary")
    page.check("#column-chooser input[value='params.lr']")
    page.click("#run-filters button[type=submit]")
    page.wait_for_url(re.compile(r".*filter=metrics.*"))
    rows = page.locator("#runs-table tbody tr")
    assert rows.count() == 3
    assert page.locator("#runs-table thead th[title='params.lr']").count() == 1
    page.click("#runs-table thead th[title='metrics.auc'] a")  # sort by auc, descending
    page.wait_for_url(re.compile(r".*sort=metrics.auc.*"))
    assert [rows.nth(i).locator("td").nth(1).inner_text() for i in range(3)] == ["10", "9", "8"]
    page.click("#runs-table thead th[title='metrics.auc'] a")  # again: ascending
    page.wait_for_url(re.compile(r".*order=asc.*"))
    assert [rows.nth(i).locator("td").nth(1).inner_text() for i in range(3)] == ["8", "9", "10"]


def test_select_two_runs_compare_and_toggle_only_differences(served, open_page, shots):
    page = open_page()
    page.goto(served.url + "/runs?experiment=sweep")
    button = page.locator("#compare-button")
    assert button.is_disabled()
    page.check("input[name=runs][value='3']")
    page.check("input[name=runs][value='7']")
    assert button.is_enabled() and button.inner_text() == "Compare 2 runs"
    button.click()
    page.wait_for_url(served.url + "/compare?runs=7,3")  # in the list's order: newest first
    heads = page.locator("#compare-table thead th a").all_inner_texts()
    assert heads == ["7 · sweep-4", "3 · sweep-0"]
    visible = page.locator("#compare-table tbody tr:visible")
    before = visible.count()
    assert page.locator("#compare-table tr.same").count() > 0
    page.click("#diff-toggle")
    assert page.locator("#diff-toggle").inner_text() == "only differences: on"
    assert page.url.endswith("diff=1")
    assert visible.count() == before - page.locator("#compare-table tr.same").count()
    assert page.locator("#compare-table tr.same:visible").count() == 0
    assert page.locator("#compare-table tr[data-key='params.depth']").is_visible()  # 3 vs 2
    assert not page.locator("#compare-table tr[data-key='params.lr']").is_visible()  # 0.3 in both
    assert not page.locator("#compare-table tr[data-key='tags.owner']").is_visible()  # ann in both
    shots(page, "compare")
    page.reload()  # the state is in the URL
    assert page.locator("#compare-table tr.same:visible").count() == 0
    page.click("#diff-toggle")
    assert visible.count() == before
    assert page.locator("#scatter svg.scatter circle.point").count() == 2
    assert page.locator("#parallel svg.parallel path.line").count() == 2


def test_open_a_models_history_sign_in_promote_and_see_the_alias_move(served, open_page, shots):
    page = open_page()
    page.goto(served.url + "/models")
    page.click(f"#models-table a:text-is('{MODEL}')")
    page.wait_for_url(served.url + f"/models/{MODEL}")
    timeline = page.locator("#timeline li")
    assert timeline.count() == 4
    assert "@production 2 → 1" in timeline.first.inner_text() and "shallow forest misses cases" in timeline.first.inner_text()
    assert "forced" in timeline.nth(1).inner_text()
    assert page.locator("form.promote").count() == 0 and "Sign in" in page.locator("#write-note").inner_text()
    shots(page, "model-history")
    wrong = open_page()  # a wrong token is answered 401, which Chromium logs: on a page of its own
    wrong.goto(served.url + "/login")
    wrong.fill("input[name=token]", "not the token")
    wrong.click("form button[type=submit]")
    assert wrong.locator("#login-failed").is_visible()
    assert wrong.problems == ["console error: Failed to load resource: the server responded with a status of 401 (UNAUTHORIZED)"]
    wrong.problems.clear()
    page.click("#write-note a")
    page.wait_for_url(re.compile(r".*/login\?next=.*"))
    page.fill("input[name=token]", TOKEN)
    page.click("form button[type=submit]")
    page.wait_for_url(served.url + f"/models/{MODEL}")
    assert page.locator("tr[data-alias='production'] .alias-version").inner_text() == "1"
    row = page.locator("#version-2")
    row.locator("input[name=reason]").fill("recall matters more")
    row.locator("button:text-is('Promote')").click()
    page.wait_for_url(served.url + f"/models/{MODEL}")
    assert f"{MODEL}/2 -> @production: the gate passed." in page.locator(".flash").inner_text()
    assert page.locator("tr[data-alias='production'] .alias-version").inner_text() == "2"
    assert timeline.count() == 5
    assert "@production 1 → 2" in timeline.first.inner_text() and "recall matters more" in timeline.first.inner_text()
    shots(page, "model-promoted")
    page.locator("tr[data-alias='production'] button.rollback").click()
    page.wait_for_url(served.url + f"/models/{MODEL}")
    assert page.locator("tr[data-alias='production'] .alias-version").inner_text() == "1"


def test_without_javascript_pages_read_and_compare_works_through_forms(served, open_page):
    page = open_page(js=False)
    page.goto(served.url + "/runs?experiment=sweep")
    assert page.locator("#runs-table tbody tr").count() == 9
    page.check("input[name=runs][value='5']")
    page.check("input[name=runs][value='6']")
    page.click("#compare-button")
    page.wait_for_url(re.compile(r".*/compare\?runs=6&runs=5$"))  # the plain form: one parameter per run
    assert page.locator("#compare-table thead th a").all_inner_texts() == ["6 · sweep-3", "5 · sweep-2"]
    page.click("#diff-toggle")  # a plain link without the script
    page.wait_for_url(re.compile(r".*diff=1$"))
    assert page.locator("#compare-table tr.same:visible").count() == 0
    assert page.locator("#diff-toggle").inner_text() == "only differences: on"
    page.goto(served.url + f"/monitoring/{MODEL}")
    assert page.locator("#drift-grid tbody tr").count() == 30 and page.locator("#traffic svg").count() == 2


# ---- studies and the pipeline (tests/ui_tuned_project.py) ------------------------------------------------------

def settle(page) -> None:
    """Wait until the page has fetched everything (its favicon too) before leaving it: a request that a fast
    navigation cuts off would count as a failed request."""
    page.wait_for_load_state("networkidle")


@pytest.fixture
def served_tuned(tuned_template: Path) -> Iterator[Served]:
    s = Served(tuned_template)  # every test here only reads
    yield s
    s.close()


def test_from_the_studies_list_to_a_study_and_one_of_its_trials(served_tuned, open_page, shots, tuned_template):
    from mlopsctl.services import tune
    from mlopsctl.ui.app import fmt

    study = tune.show_study(settings_for(tuned_template), STUDY)
    page = open_page()
    page.goto(served_tuned.url + "/studies")
    assert page.locator("#studies-table tbody tr").count() == 3  # with the pipeline's tune step's study
    assert page.locator(f"tr[data-study='{STUDY}'] .best-value").inner_text() == fmt(study["best"]["value"])
    assert page.locator(f"tr[data-study='{FAILED_STUDY}'] td.failed").inner_text() == "2"
    shots(page, "studies")
    settle(page)
    page.click(f"#studies-table a:text-is('{STUDY}')")
    page.wait_for_url(served_tuned.url + f"/studies/{STUDY}")
    assert page.locator("#best-value").inner_text() == fmt(study["best"]["value"])
    assert page.locator("#registered").inner_text() == f"{TUNED_MODEL}/1"
    assert page.locator("#trials tbody tr").count() == 4
    assert page.locator("#charts svg.history circle.trial").count() == 4
    assert page.locator("#charts svg.bars rect.bar").count() == len(study["importance"])
    shots(page, "study")
    best = study["best"]
    settle(page)
    page.locator(f"#trial-{best['trial']} a").click()  # the best trial's run
    page.wait_for_url(served_tuned.url + f"/runs/{best['run_id']}")
    assert page.locator("h1").inner_text().startswith(f"Run {best['run_id']}")
    settle(page)
    page.go_back()
    settle(page)
    page.locator(f"#registered a:text-is('{TUNED_MODEL}/1')").click()
    page.wait_for_url(served_tuned.url + f"/models/{TUNED_MODEL}")
    settle(page)
    page.goto(served_tuned.url + f"/studies/{FAILED_STUDY}")
    assert page.locator("#trials tbody tr").count() == 2 and page.locator("svg.history").count() == 0
    assert "n_neighbors" in page.locator("#trial-0 .reason").inner_text()
    settle(page)
    resp = page.goto(served_tuned.url + "/studies/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert resp.status == 404 and "<script>alert(1)</script>" in page.locator("#error-message").inner_text()
    page.problems.remove("console error: Failed to load resource: the server responded with a status of 404 (NOT FOUND)")


def test_the_pipeline_dag_step_states_and_executions_by_step(served_tuned, open_page, shots):
    dialogs: list[str] = []
    page = open_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(served_tuned.url + "/pipeline")
    nodes = page.locator("#dag svg.dag g.node")
    assert nodes.count() == 6 and page.locator("#dag svg.dag path.edge").count() == 3
    states = {n: page.locator(f"#step-{n}").get_attribute("data-state") for n in ("search", "prep", "fit", "reg", "stats", "check")}
    assert states == {"search": "fresh", "prep": "fresh", "fit": "fresh", "reg": "fresh", "stats": "stale", "check": "stale"}
    assert "failed" in page.locator("#step-check .last").inner_text()
    assert XSS in page.locator("#step-prep").inner_text()  # shown as text, never run
    shots(page, "pipeline")
    settle(page)
    page.locator("#step-search a.study").click()  # the tune step's study
    page.wait_for_url(re.compile(r".*/studies/pipeline-search-[0-9a-f]+$"))
    assert page.locator("#trials tbody tr").count() == 2
    settle(page)
    page.go_back()
    settle(page)
    settle(page)
    page.locator("#dag g.node[data-step='check']").click()  # a box links to its step's executions
    page.wait_for_url(re.compile(r".*/pipeline\?step=check#executions$"))
    rows = page.locator("#executions-table tbody tr")
    assert rows.count() == 2 and set(rows.evaluate_all("rs => rs.map(r => r.dataset.step)")) == {"check"}
    settle(page)
    page.select_option("#execution-filters select[name=step]", "prep")  # submits by itself
    page.wait_for_url(re.compile(r".*step=prep.*"))
    assert rows.count() == 2 and [rows.nth(i).locator(".status").inner_text() for i in range(2)] == ["cached", "ran"]
    assert dialogs == []
    plain = open_page(js=False)  # without the script: the filter's button, the study's tables and charts
    plain.goto(served_tuned.url + "/pipeline")
    settle(plain)
    plain.select_option("#execution-filters select[name=step]", "fit")
    plain.click("#execution-filters button[type=submit]")
    plain.wait_for_url(re.compile(r".*/pipeline\?step=fit$"))
    assert plain.locator("#executions-table tbody tr").count() == 2 and plain.locator("#dag svg.dag").count() == 1
    settle(plain)
    plain.goto(served_tuned.url + f"/studies/{STUDY}")
    assert plain.locator("#trials tbody tr").count() == 4 and plain.locator("svg.history circle.trial").count() == 4
