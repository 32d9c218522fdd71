"""Shared set-up of the monitoring tests (issue 6): two projects trained once per module through the CLI, a real
server on a private copy, traffic, labels.

Two projects are trained once for the module through the CLI: breast-cancer (30 numeric columns; a 10-tree
forest; runs 1 and 2 registered as versions 1 and 2, version 1 at @production, and run 3 trained with
``train.reference_rows = 0`` as version 3) and churn (numeric, categorical and boolean columns with nulls;
HistGradientBoosting with 20 iterations; version 1 keeps the default 1,000-row reference sample, so the small
regime's tests, and version 2 keeps 2,000 rows, so the large regime's). Each test works on a private copy.

Traffic goes through ``create_app(settings).test_client()`` (the real Flask app, ONNX Runtime and the
asynchronous prediction log writing to real SQLite); the monitor commands run through ``CliRunner`` with
``--json``. The HTML report is rendered by headless Chromium (the Debian ``chromium`` package), which must
be installed: the test fails, it does not skip, without it.
"""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from typer.testing import CliRunner

BC, CH = "breast-cancer", "churn"
BC_TARGET, CH_TARGET = "diagnosis", "churned"
MIN_ROWS_MSG = ("only {n} logged row(s) for {ref} in the window ({window}); drift needs at least monitor.min_rows "
                "= {min_rows}. Widen --since or serve more traffic.")
CHROMIUM = "chromium"
CHROMIUM_MISSING = ("headless Chromium is needed to render the HTML report: install the Debian `chromium` package "
                    "(apt-get install -y chromium), which provides /usr/bin/chromium")
PROBE = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-resources', "
         "JSON.stringify(performance.getEntriesByType('resource').map(e => e.name))));</script>")


# ---- module projects ----------------------------------------------------------------------------------

def _cli_ok(*args: Any, env: dict[str, str] | None = None) -> Any:
    from mlopsctl.cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert result.exit_code == 0, (args, result.stdout, result.stderr, result.exception)
    return result


class Server:
    """The real app on a project, driven by its test client."""

    def __init__(self, project: Path, ref: str, **serve: Any):
        from mlopsctl.config import load_settings
        from mlopsctl.serving.app import create_app

        self.settings = load_settings({f"serve.{k}": v for k, v in serve.items()}, {}, project)
        self.app = create_app(self.settings, ref, watch=False)
        self.client = self.app.test_client()
        self.state = self.app.extensions["mlopsctl"]

    def predict(self, records: list[dict[str, Any]], request_id: str | None = None) -> dict[str, Any]:
        headers = {"X-Request-ID": request_id} if request_id else {}
        resp = self.client.post("/predict", json={"records": records}, headers=headers)
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        if request_id:
            assert body["request_id"] == request_id
        return body

    def flush(self) -> None:
        self.state.predlog.flush()
        assert self.state.predlog.dropped == 0 and self.state.predlog.write_errors == 0

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        resp = self.client.get("/metrics")
        assert resp.status_code == 200
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(resp.get_data(as_text=True)) for s in fam.samples}

    def close(self) -> None:
        self.state.holder.stop()
        self.state.predlog.close()


def frame(project: Path):
    import pandas as pd

    return pd.read_csv(project / "data" / "train.csv")


def records(df, target: str) -> list[dict[str, Any]]:
    """Rows as JSON records, as a client sends them (NaN -> null, numpy scalars -> Python)."""
    return json.loads(df.drop(columns=[target]).to_json(orient="records"))


def send(server: Server, recs: list[dict[str, Any]], batch: int = 1, prefix: str | None = None) -> list[dict[str, Any]]:
    """Send ``recs`` in requests of ``batch`` rows (request ids ``prefix-0000`` ...); the response bodies."""
    out = []
    for i in range(0, len(recs), batch):
        rid = f"{prefix}-{i // batch:04d}" if prefix else None
        out.append(server.predict(recs[i:i + batch], rid))
    server.flush()
    return out


def reference_of(project: Path, ref: str) -> dict[str, list]:
    """The version's reference sample straight from its contract: column -> values."""
    from mlopsctl.config import load_settings
    from mlopsctl.project import open_project

    loaded = open_project(load_settings({}, {}, project)).load_model(ref, "production")
    r = loaded.contract.reference
    return {c: [row[i] for row in r["rows"]] for i, c in enumerate(r["columns"])}


def numbers(values) -> np.ndarray:
    a = np.array([np.nan if v is None else float(v) for v in values])
    return a[~np.isnan(a)]


def churn_shifted(project: Path, n: int, seed: int):
    """n churn rows with four of seven columns shifted: tenure +30, charges +40, age +25 (and 30 % null),
    40 % of plans a category never seen in training ("enterprise")."""
    df = frame(project).sample(n=n, random_state=seed).reset_index(drop=True)
    df["tenure_months"] = df["tenure_months"] + 30
    df["monthly_charges"] = df["monthly_charges"] + 40
    df["age"] = df["age"] + 25
    df.loc[df.index[: int(0.3 * n)], "age"] = np.nan
    df.loc[df.index[-int(0.4 * n):], "plan"] = "enterprise"
    return df


def set_logged_at(project: Path, where: str, when: datetime) -> int:
    """Move logged predictions back in time (``created_at``), in the store's own text format."""
    con = sqlite3.connect(project / ".mlops" / "mlops.db")
    try:
        sample = con.execute("SELECT created_at FROM predictions LIMIT 1").fetchone()[0]
        text = when.strftime("%Y-%m-%d %H:%M:%S.%f")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", sample), sample
        n = con.execute(f"UPDATE predictions SET created_at = ? WHERE {where}", (text,)).rowcount
        con.commit()
        return n
    finally:
        con.close()


def utcnow() -> datetime:
    from mlopsctl.store.models import utcnow as now

    return now().replace(tzinfo=None)


def events(cli, kind: str) -> list[dict[str, Any]]:
    result = cli("events", "--json")
    assert result.exit_code == 0, result.stderr
    return [e for e in json.loads(result.stdout) if e["kind"] == kind]


def write_labels(path: Path, rows: list[tuple], header: str = "request_id,label") -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path

def truth_of(df, target: str) -> list[str]:
    return df[target].astype(str).tolist()
