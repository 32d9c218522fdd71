"""The dashboard's JSON API and pages through Flask's test client, on a real project (tests/ui_project.py):
every /api route with the values it must hold, every page rendered, and the errors (unknown run, bad sort
key, bad page number, bad filter, ...) as a page or JSON with the right 4xx and never a stack trace."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from ui_project import FAILED_RUN, MODEL, SWEEP_RUNS, TARGET, client_for, ui_copy, ui_template  # noqa: F401


@pytest.fixture
def api(ui_template: Path):
    client = client_for(ui_template)

    def get(url: str, status: int = 200):
        resp = client.get(url)
        assert resp.status_code == status, (url, resp.status_code, resp.get_data(as_text=True)[:500])
        assert resp.is_json, url
        return resp.get_json()

    return get


def ids(body) -> list[int]:
    return [r["id"] for r in body["runs"]]


# ---- /api/runs: search, sort, filter, page --------------------------------------------------------------

def test_runs_default_page_newest_first_with_the_first_metric_columns(api):
    body = api("/api/runs")
    assert body["total"] == 12 and body["pages"] == 1 and body["page"] == 1
    assert ids(body) == list(range(12, 0, -1))
    assert body["columns"] == ["metrics.accuracy", "metrics.auc", "metrics.f1_macro", "metrics.log_loss",
                               "metrics.loss", "metrics.roc_auc"]
    assert body["keys"]["experiments"] == ["default", "sweep", "watch"]
    assert {"owner", "timing.fit"} <= set(body["keys"]["tags"])
    assert {"lr", "depth", "odd key.with dots", "model.max_depth"} <= set(body["keys"]["params"])
    sweep3 = next(r for r in body["runs"] if r["id"] == 3)
    assert sweep3["experiment"] == "sweep" and sweep3["status"] == "FINISHED" and sweep3["name"] == "sweep-0"
    assert sweep3["values"]["metrics.auc"] == 0.8
    assert sweep3["values"]["metrics.loss"] == pytest.approx(1 / (1 + 5 * 3.0))  # the latest step's value
    assert sweep3["values"]["metrics.accuracy"] is None


def test_runs_sorted_by_a_metric_put_runs_without_it_last(api):
    body = api("/api/runs?experiment=sweep&sort=metrics.auc&order=asc")
    assert ids(body) == [*SWEEP_RUNS, FAILED_RUN]
    body = api("/api/runs?experiment=sweep&sort=metrics.auc&order=desc")
    assert ids(body) == [*reversed(SWEEP_RUNS), FAILED_RUN]
    assert "metrics.auc" in body["columns"]


def test_runs_sorted_by_a_param_compare_numbers_as_numbers(api):
    body = api("/api/runs?experiment=sweep&sort=params.lr&order=desc&col=params.lr")
    lrs = [r["values"]["params.lr"] for r in body["runs"]]
    assert lrs == ["9.9", "0.3", "0.3", "0.1", "0.1", "0.03", "0.03", "0.01", "0.01"]  # 9.9 > 0.3 as numbers


@pytest.mark.parametrize(("query", "expected"), [
    ("metrics.auc >= 0.9", [10, 9, 8]),
    ("metrics.auc > 0.86 and metrics.auc < 0.9", [7]),
    ("params.lr = 0.1", [8, 4]),
    ("params.lr > 0.05", [11, 8, 7, 4, 3]),
    ("params.`odd key.with dots` = v1", [10, 8, 6, 4]),
    ("tags.owner ~ an", [9, 7, 5, 3]),
    ("tags.owner != ann and experiment = sweep", [11, 10, 8, 6, 4]),
    ("status = FAILED", [11]),
    ("params.model.max_depth = 3", [2]),
    ("name ~ sweep- and params.depth >= 4", [8, 5]),
])
def test_runs_filter_language(api, query, expected):
    from urllib.parse import quote

    body = api(f"/api/runs?filter={quote(query)}")
    assert ids(body) == expected and body["total"] == len(expected)


def test_runs_search_status_experiment_and_columns(api):
    assert ids(api("/api/runs?q=shallow")) == [2]
    assert ids(api("/api/runs?q=12")) == [12]  # an id
    assert ids(api("/api/runs?status=failed")) == [FAILED_RUN]
    body = api("/api/runs?experiment=default&cols=1&col=params.model.max_depth&col=tags.timing.fit")
    assert ids(body) == [2, 1]
    assert body["columns"] == ["params.model.max_depth", "tags.timing.fit"]
    assert [r["values"]["params.model.max_depth"] for r in body["runs"]] == ["3", "None"]
    assert api("/api/runs?cols=1")["columns"] == []  # an explicit choice of no extra columns


def test_runs_pagination(api):
    pages = [api(f"/api/runs?per_page=5&page={p}") for p in (1, 2, 3)]
    assert [ids(p) for p in pages] == [[12, 11, 10, 9, 8], [7, 6, 5, 4, 3], [2, 1]]
    assert {p["pages"] for p in pages} == {3} and {p["total"] for p in pages} == {12}


# ---- one run, compare -----------------------------------------------------------------------------------

def test_run_detail_by_id_and_by_name(api, ui_template):
    run = api("/api/runs/1")
    assert run["versions"] == [f"{MODEL}/1"]
    assert run["status"] == "FINISHED" and run["experiment"] == "default" and run["task"] == "classification"
    assert run["dataset"]["name"] == "train" and run["dataset"]["rows"] == 569 and len(run["dataset"]["fingerprint"]) == 64
    assert run["parity"]["passed"] is True
    assert {a["name"] for a in run["artifacts"]} == {"model.onnx", "contract.json", "model.joblib", "heldout.parquet"}
    assert run["environment"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert run["params"]["model.n_estimators"] == "10"
    assert api("/api/runs/shallow")["id"] == 2 and api("/api/runs/shallow")["versions"] == [f"{MODEL}/2"]
    sweep = api("/api/runs/3")
    assert [p["step"] for p in sweep["metric_history"]["loss"]] == list(range(6))
    assert sweep["metric_history"]["loss"][0]["value"] == 1.0
    assert sweep["tags"] == {"owner": "ann"} and sweep["versions"] == []
    failed = api(f"/api/runs/{FAILED_RUN}")
    assert failed["status"] == "FAILED" and failed["failure_reason"] == "RuntimeError: diverged at step 3"
    assert api("/api/runs/12")["versions"] == [f"{MODEL}/3"]  # the watcher's run


def test_artifact_download_is_the_verified_blob(ui_template):
    client = client_for(ui_template)
    resp = client.get("/runs/1/artifacts/contract.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="contract.json"'
    contract = json.loads(resp.data)
    assert contract["target"] == TARGET and len(contract["columns"]) == 30
    resp = client.get("/runs/1/artifacts/nope.bin")
    assert resp.status_code == 404 and "has no artifact &#39;nope.bin&#39;" in resp.get_data(as_text=True)


def test_compare_marks_what_differs(api):
    body = api("/api/compare?runs=3,4")
    assert ids(body) == [3, 4]
    rows = {f"{kind}.{r['key']}": r for kind in ("metrics", "params", "tags") for r in body[kind]}
    assert rows["params.lr"]["values"] == ["0.3", "0.1"] and rows["params.lr"]["differs"] is True
    assert rows["params.odd key.with dots"]["values"] == ["v0", "v1"]
    assert rows["metrics.auc"]["values"] == [0.8, 0.82] and rows["metrics.auc"]["differs"]
    assert rows["tags.owner"]["values"] == ["ann", "bob"]
    body = api("/api/compare?runs=1&runs=2&diff=1")  # repeated parameter; diff only changes the page
    assert body["only_differences"] is True
    by_key = {r["key"]: r for r in body["params"]}
    assert by_key["model.max_depth"] == {"key": "model.max_depth", "values": ["None", "3"], "differs": True}
    assert by_key["model.n_estimators"]["differs"] is False
    assert [r["versions"] for r in body["runs"]] == [[f"{MODEL}/1"], [f"{MODEL}/2"]]
    assert api("/api/compare?runs=" + ",".join(map(str, range(1, 13))))["runs"][11]["id"] == 12


# ---- models, monitoring, events, watch, studies, pipeline ---------------------------------------------

def test_models_and_a_models_history(api):
    [m] = api("/api/models")["models"]
    assert m == {"name": MODEL, "versions": 3, "latest": 3, "aliases": {"production": 1, "staging": 2}}
    body = api(f"/api/models/{MODEL}")
    moves = [(h["alias"], h["from_version"], h["to_version"], h["action"], h["forced"]) for h in body["history"]]
    assert moves == [("production", None, 1, "promote", False), ("staging", None, 2, "promote", False),
                     ("production", 1, 2, "promote", True), ("production", 2, 1, "rollback", False)]
    assert body["history"][2]["reason"] == "try the shallow forest"
    assert body["history"][3]["reason"] == "shallow forest misses cases"
    assert [v["gate"]["decision"] if v["gate"] else None for v in body["versions"]] == ["promoted", "forced", None]
    assert body["runs"]["2"]["name"] == "shallow"
    assert body["events"][0]["kind"] == "registered" and body["events"][0]["version"] == 3  # newest first
    assert body["default_alias"] == "production"


def test_monitoring_reads_the_prediction_log_feedback_and_drift_checks(api, ui_template):
    [m] = api("/api/monitoring")["models"]
    assert m["requests"] == 15 and m["drift"]["version"] == 1 and m["name"] == MODEL
    body = api(f"/api/monitoring/{MODEL}?since=24h")
    t = body["traffic"]
    assert (t["requests"], t["rows"], t["bucket_seconds"]) == (15, 150, 3600)
    assert sum(b["requests"] for b in t["buckets"]) == 15 and {b["version"] for b in t["buckets"]} == {1}
    assert all(0 < b["latency_ms_mean"] <= b["latency_ms_max"] for b in t["buckets"])
    [check] = body["drift"]["checks"]
    assert check["rows"] == 150 and check["version"] == 1
    assert check["share"] == pytest.approx(len(check["drifted_columns"]) / 30)
    assert len(body["drift"]["columns"]) == 30 and set(check["drifted_columns"]) <= set(body["drift"]["columns"])
    live = body["live"]
    assert live["metric"] == "roc_auc" and live["labelled_rows"] == 150
    assert live["per_version"]["1"]["rows"] == 150
    assert live["per_version"]["1"]["accuracy"] == pytest.approx(_batch_accuracy(ui_template, 150))


def _batch_accuracy(project: Path, n: int) -> float:
    """The accuracy of breast-cancer/1 on the first ``n`` training rows, by `mlopsctl predict` (batch scoring,
    not the monitoring code): what the live metric over those served rows must equal."""
    from served_projects import cli_ok

    with open(project / "data" / "train.csv", newline="") as fh:
        rows = list(csv.reader(fh))[: n + 1]
    src, out = project.parent / "first.csv", project.parent / "first-scored.csv"
    with open(src, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    cli_ok("-C", project, "predict", f"{MODEL}/1", src, "--output", out)
    with open(out, newline="") as fh:
        scored = list(csv.DictReader(fh))
    return sum(r["prediction"] == r[TARGET] for r in scored) / n


def test_events_filters_and_paging(api):
    promoted = api("/api/events?kind=promoted")["events"]
    assert [e["version"] for e in promoted] == [2, 2, 1]  # newest first
    assert all(e["model"] == MODEL for e in promoted)
    body = api("/api/events?limit=2")
    assert len(body["events"]) == 2 and body["next_before"] == body["events"][-1]["id"]
    older = api(f"/api/events?limit=2&before={body['next_before']}")
    assert older["events"][0]["id"] == body["next_before"] - 1
    assert [e["kind"] for e in api("/api/events?run_id=12")["events"]] == ["registered", "trained"]
    assert [e["kind"] for e in api("/api/events?q=shallow+forest")["events"]] == ["rolled_back", "promoted"]
    assert {"file_rejected", "promoted", "rolled_back", "trained", "registered", "drift_check", "feedback"} <= \
        set(api("/api/events")["kinds"])


def test_watch_jobs_and_quarantined_files(api):
    body = api("/api/watch")
    [job] = body["jobs"]
    assert (job["trigger"], job["status"], job["decision"], job["run_id"], job["model_version"]) == \
        ("files", "done", "registered", 12, 3)
    assert job["files"] == ["batch-1.csv"] and job["reason"] == "watch.auto_promote is off"
    [bad] = body["quarantined"]
    assert bad["name"] == "junk.csv" and bad["reason"].startswith("missing column(s) mean_radius")
    assert [f["name"] for f in body["files"]] == ["batch-1.csv"]
    assert body["quarantine"].endswith("data/quarantine")


def test_a_project_without_studies_or_a_pipeline(api):
    assert api("/api/studies") == {"studies": []}
    assert api("/api/studies/lr-search", 404)["message"].startswith("study 'lr-search' does not exist")
    body = api("/api/pipeline")
    assert (body["defined"], body["steps"], body["executions"]) == (False, [], [])
    assert "[pipeline.steps.NAME]" in body["how_to"]


# ---- pages ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "needle"), [
    ("/runs", 'id="runs-table"'), ("/runs?sort=metrics.auc&experiment=sweep", "sweep-7"),
    ("/runs/3", 'class="chart steps"'), ("/runs/1", "breast-cancer/1"),
    ("/compare?runs=3,4,5", 'class="chart scatter"'), ("/compare?runs=3,4,5&x=params.lr&y=metrics.auc", "auc vs params.lr"),
    ("/models", MODEL), (f"/models/{MODEL}", "try the shallow forest"), ("/monitoring", "15"),
    (f"/monitoring/{MODEL}", 'id="drift-grid"'), ("/events?kind=promoted", "events-table"),
    ("/watch", "junk.csv"), ("/studies", 'id="no-studies"'), ("/pipeline", 'id="no-pipeline"'),
])
def test_every_page_renders(ui_template, path, needle):
    resp = client_for(ui_template).get(path)
    text = resp.get_data(as_text=True)
    assert resp.status_code == 200 and resp.mimetype == "text/html", (path, text[:300])
    assert needle in text and "Traceback" not in text
    assert resp.headers["X-Frame-Options"] == "DENY" and "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["Server-Timing"].startswith("app;dur=")


def test_the_monitoring_report_link(ui_template):
    resp = client_for(ui_template).get(f"/monitoring/{MODEL}/report?since=30d")
    text = resp.get_data(as_text=True)
    assert resp.status_code == 200 and f"<h1>{MODEL} / version 1</h1>" in text and 'id="drift-table"' in text


# ---- errors -----------------------------------------------------------------------------------------------

ERRORS = [
    ("/runs/99", 404, "NotFoundError", "run '99' does not exist; see `mlopsctl runs list`."),
    ("/runs?sort=bogus", 400, "InvalidInputError",
     "'bogus' is not a run field; use metrics.<key>, params.<key>, tags.<key> or one of id, name, status, "
     "experiment, model, started_at, duration_s."),
    ("/runs?sort=metrics.nope", 400, "InvalidInputError",
     "cannot sort by 'metrics.nope': no run has that metric; known metrics: accuracy, auc, f1_macro, log_loss, loss, roc_auc."),
    ("/runs?page=0", 400, "InvalidInputError", "page '0' is not a page number; pages are numbered from 1."),
    ("/runs?page=two", 400, "InvalidInputError", "page 'two' is not a page number; pages are numbered from 1."),
    ("/runs?page=9", 404, "NotFoundError", "page 9 is past the last page (1) of 12 run(s)."),
    ("/runs?per_page=0", 400, "InvalidInputError", "per_page '0' must be a whole number from 1 to 500."),
    ("/runs?order=up", 400, "InvalidInputError", "order 'up' must be asc or desc."),
    ("/runs?experiment=nope", 404, "NotFoundError", "experiment 'nope' does not exist; known: default, sweep, watch."),
    ("/runs?filter=metrics.auc%20>%20high", 400, "InvalidInputError",
     "filter 'metrics.auc > high' compares a metric with 'high'; metrics compare with numbers."),
    ("/runs?filter=auc", 400, "InvalidInputError",
     "filter 'auc' is not <field> <op> <value>; e.g. metrics.roc_auc > 0.9 and params.seed = 42 (operators: <= >= != = < > ~)."),
    ("/runs?col=started_at", 400, "InvalidInputError",
     "column 'started_at': run attributes are always shown; choose metrics.<key>, params.<key> or tags.<key>."),
    ("/compare?runs=3", 400, "InvalidInputError", "compare needs at least two runs, as in /compare?runs=3,4."),
    ("/compare?runs=3,x", 400, "InvalidInputError", "run id 'x' is not a number; compare takes ids, as in ?runs=3,4."),
    ("/compare?runs=3,98,99", 404, "NotFoundError", "run 98, 99 does not exist; see /runs."),
    ("/models/nope", 404, "NotFoundError", f"model 'nope' does not exist; registered: {MODEL}."),
    ("/monitoring/nope", 404, "NotFoundError", f"model 'nope' does not exist; registered: {MODEL}."),
    (f"/monitoring/{MODEL}?since=soon", 400, "InvalidInputError",
     "since 'soon' is not a duration; use e.g. 90s, 30m, 6h or 1d."),
    ("/events?limit=0", 400, "InvalidInputError", "limit '0' must be a whole number from 1 to 1000."),
    ("/events?run_id=x", 400, "InvalidInputError", "run_id 'x' must be a whole number (an id)."),
    ("/nowhere", 404, "NotFound", "there is no page at /nowhere; see the links above."),
]


@pytest.mark.parametrize(("path", "status", "error", "message"), ERRORS)
def test_errors_are_a_page_and_json_with_the_right_status(ui_template, path, status, error, message):
    client = client_for(ui_template)
    resp = client.get("/api" + path)
    assert resp.status_code == status and resp.is_json, (path, resp.get_data(as_text=True)[:300])
    body = resp.get_json()
    assert body["error"] == error
    if message is not None:
        assert body["message"] == message.replace("/nowhere", "/api/nowhere")
    page = client.get(path)
    text = page.get_data(as_text=True)
    assert page.status_code == status and page.mimetype == "text/html"
    assert f"{status} · {error}" in text and "Traceback" not in text
    if message is not None:
        from markupsafe import escape

        assert str(escape(message)) in text


def test_a_wrong_method_is_405_and_a_chart_of_an_unknown_field_is_400(ui_template):
    client = client_for(ui_template)
    resp = client.post("/api/runs")
    assert resp.status_code == 405 and resp.get_json()["message"] == "POST is not allowed on /api/runs."
    page = client.get("/compare?runs=3,4&x=metrics.nope")
    assert page.status_code == 400 and "&#39;metrics.nope&#39; is not a metric or param of these runs" in page.get_data(as_text=True)
    assert client.get("/api/compare?runs=3,4&x=metrics.nope").status_code == 200  # the API draws no chart


def test_an_unexpected_failure_is_a_plain_500_without_a_trace(ui_copy, caplog):
    """A store whose events table is gone (no mocks: the file is changed with sqlite3)."""
    with sqlite3.connect(ui_copy / ".mlops" / "mlops.db") as conn:
        conn.execute("DROP TABLE events")
    client = client_for(ui_copy)
    resp = client.get("/api/events")
    assert resp.status_code == 500
    assert resp.get_json() == {"error": "InternalError", "message": "unexpected OperationalError; the server log has the details."}
    page = client.get("/events").get_data(as_text=True)
    assert "unexpected OperationalError" in page and "Traceback" not in page and "no such table" not in page
    assert "no such table: events" in caplog.text  # the log has it


# ---- the dashboard's process ----------------------------------------------------------------------------------

PROBE = """
import json, sys
from mlopsctl.config import load_settings
from mlopsctl.ui.app import create_app
client = create_app(load_settings({}, {}, sys.argv[1])).test_client()
for path in json.loads(sys.argv[2]):
    assert client.get(path).status_code == 200, path
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "skl2onnx", "joblib")
                        or m.startswith("mlopsctl.training"))))
"""


def test_reading_pages_loads_no_scikit_learn_skl2onnx_joblib_or_training(ui_template):
    """Every page read through the use cases (monitoring's live quality is computed by the monitoring
    package and is left out here) leaves scikit-learn, skl2onnx, joblib and training unloaded (pickle is
    not checked: SQLAlchemy imports it)."""
    paths = ["/runs", "/api/runs?sort=metrics.auc", "/runs/1", "/compare?runs=1,2,3", "/models", f"/models/{MODEL}",
             "/monitoring", "/events", "/watch", "/studies", "/pipeline", "/runs/1/artifacts/model.joblib"]
    out = subprocess.run([sys.executable, "-c", PROBE, str(ui_template), json.dumps(paths)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_wheel_ships_the_templates_and_static_files(tmp_path):
    """hatch packages src/mlopsctl whole: every template and vendored file of the dashboard is in the wheel."""
    import zipfile

    root = Path(__file__).resolve().parents[1]
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path), str(root)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("mlopsctl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    ui = root / "src" / "mlopsctl" / "ui"
    shipped = {f"mlopsctl/ui/{p.relative_to(ui).as_posix()}" for p in ui.rglob("*")
               if p.is_file() and p.suffix in (".html", ".css", ".js", ".svg")}
    assert len(shipped) >= 16 and shipped <= names


def test_stored_nan_and_infinities_never_reach_the_json(ui_copy):
    """Event payloads and version metrics are JSON columns that can hold NaN (Python writes it); every API
    answer must still be strict JSON."""
    from mlopsctl import registry
    from mlopsctl.config import load_settings
    from mlopsctl.project import open_project

    store = open_project(load_settings({}, {}, ui_copy)).store
    with store.session() as s:
        registry.add_event(s, "custom", "a NaN payload", model=MODEL, payload={"auc": float("nan"), "x": float("inf")})
    with sqlite3.connect(ui_copy / ".mlops" / "mlops.db") as conn:
        conn.execute("UPDATE model_versions SET metrics = '{\"roc_auc\": NaN}' WHERE version = 3")
    client = client_for(ui_copy)

    def strict(path: str):
        resp = client.get(path)
        assert resp.status_code == 200, path
        return json.loads(resp.data, parse_constant=lambda c: pytest.fail(f"{path} answered {c}"))

    assert strict("/api/events?kind=custom")["events"][0]["payload"] == {"auc": None, "x": None}
    assert strict(f"/api/models/{MODEL}")["versions"][2]["metrics"] == {"roc_auc": None}
    assert client.get(f"/models/{MODEL}").status_code == 200
