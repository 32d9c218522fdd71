"""`mlopsctl monitor report` (monitoring/report.py): one model load and one reference scoring, and the HTML file
rendered by headless Chromium (the Debian package must be installed: the test fails, it does not skip)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from monitoring_helpers import (
    BC, BC_TARGET, CHROMIUM, CHROMIUM_MISSING, PROBE,
    frame, records, send, reference_of, set_logged_at, utcnow, truth_of,
)


def test_report_loads_the_version_once_and_scores_its_reference_once(monitor_copy, monitor_server, cli, monkeypatch,
                                                                     tmp_path: Path) -> None:
    from mlopsctl.config import load_settings
    from mlopsctl.monitoring.report import write_report
    from mlopsctl.project import Project
    from mlopsctl.scoring import Scorer

    p = monitor_copy("bc")
    server = monitor_server(p, f"{BC}@production")
    df = frame(p).sample(n=30, random_state=8).reset_index(drop=True)
    send(server, records(df, BC_TARGET), batch=1, prefix="w")
    loads, scored = [], []
    load_model, run = Project.load_model, Scorer.run
    monkeypatch.setattr(Project, "load_model", lambda self, ref, alias=None: loads.append(ref) or load_model(self, ref, alias))
    monkeypatch.setattr(Scorer, "run", lambda self, normalized: scored.append(len(next(iter(normalized.values()))))
                        or run(self, normalized))
    out = write_report(load_settings({}, {}, p), f"{BC}@production", tmp_path / "r.html")
    assert (out["version"], out["rows"]) == (1, 30)
    assert loads == [f"{BC}@production"]
    assert scored == [len(reference_of(p, BC)["mean_radius"])]  # the reference sample, once


# ---- the HTML report ----------------------------------------------------------------------------------------

def _chromium_exe() -> str:
    exe = shutil.which(CHROMIUM)
    if exe is None:
        pytest.fail(CHROMIUM_MISSING, pytrace=False)
    return exe


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    exe = _chromium_exe()
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


def test_html_report_renders_its_charts_in_headless_chromium(monitor_copy, monitor_server, cli, tmp_path: Path) -> None:
    _chromium_exe()  # fail first, with the install hint, when the browser is missing
    p = monitor_copy("bc")
    server = monitor_server(p, f"{BC}@production")
    df = frame(p).sample(n=240, random_state=5).reset_index(drop=True)
    truth = truth_of(df, BC_TARGET)
    shifted = df.copy()
    for col in ("mean_radius", "mean_texture", "worst_area"):
        shifted[col] = shifted[col] * 1.6
    send(server, records(shifted.iloc[:120], BC_TARGET), batch=1, prefix="a")
    assert set_logged_at(p, "request_id < 'a-0040'", utcnow() - timedelta(days=2)) == 40
    assert set_logged_at(p, "request_id >= 'a-0040' AND request_id < 'a-0080'", utcnow() - timedelta(days=1)) == 40
    assert cli("promote", BC, "2").exit_code == 0
    assert server.client.post("/admin/reload").get_json()["version"] == 2
    send(server, records(shifted.iloc[120:], BC_TARGET), batch=10, prefix="b")
    rows = [(f"a-{i:04d}", truth[i]) for i in range(120)]
    rows += [(f"b-{i // 10:04d}", i % 10, truth[120 + i]) for i in range(120)]
    labels = p / "labels.csv"
    labels.write_text("request_id,row,label\n" + "".join(
        f"{r[0]},{r[1] if len(r) == 3 else 0},{r[-1]}\n" for r in rows))
    fed = json.loads(cli("monitor", "feedback", labels, "--model", f"{BC}@production", "--json").stdout)
    assert fed["matched"] == 240

    out_file = tmp_path / "out" / "report.html"
    result = cli("monitor", "report", f"{BC}@production", "--output", out_file, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    html = out_file.read_text()
    assert (out["model"], out["version"], out["rows"], out["output"]) == (BC, 2, 120, str(out_file))
    assert out["bytes"] == len(html.encode()) and out["drifted"] is False
    assert out["drift_share"] == pytest.approx(3 / 30)
    text = cli("monitor", "report", f"{BC}@production", "-o", tmp_path / "r2.html")
    assert text.stdout == (f"wrote {tmp_path / 'r2.html'} ({(tmp_path / 'r2.html').stat().st_size} bytes) for "
                           f"{BC}/2: no drift (10% of columns) over 120 rows\n")

    # self-contained: nothing to fetch
    assert not re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"<(script|link|img|iframe|object|embed)\b", html, re.I)
    assert not re.search(r"url\(|@import", html, re.I)

    dom = _chromium("--dump-dom", out_file.as_uri(), tmp=tmp_path).stdout
    assert dom.count('<svg class="chart hist"') == 31  # 30 features + the prediction
    assert dom.count('<svg class="chart line"') == 1
    assert dom.count('<path class="series"') == 2  # one line per version
    for element_id in ("histograms", "drift-table", "history"):
        assert f'id="{element_id}"' in dom
    histograms = dom.split('id="histograms"', 1)[1].split("</div>", 1)[0]
    assert histograms.count("<svg") == 31 and histograms.count("<rect") > 31 * 20
    table = dom.split('id="drift-table"', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr") == 31 and table.count('<tr class="drift">') == 3
    history = dom.split('id="history"', 1)[1].split("</table>", 1)[0]
    assert history.count("<tr") == 3  # header + two promotions
    assert "<title>breast-cancer/2 monitoring report</title>" in dom
    v1_line = re.search(r'<path class="series" d="([^"]+)"', dom).group(1)
    assert v1_line.count("L") == 2  # version 1 has three daily points

    # no request of any kind once loaded: the Resource Timing API lists every fetch the page made (failed
    # ones included); a probe copy with a one-line script writes it into the DOM
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    probe_dom = _chromium("--dump-dom", probe.as_uri(), tmp=tmp_path).stdout
    fetched = re.search(r'data-resources="([^"]*)"', probe_dom)
    assert fetched is not None and json.loads(fetched.group(1).replace("&quot;", '"')) == []

    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", out_file.as_uri(), tmp=tmp_path)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1280, 2000)
    assert len(png) > 50_000  # charts drawn, not a blank page


def test_report_without_traffic_is_an_error(monitor_copy, cli, assert_error) -> None:
    monitor_copy("bc")
    assert_error(cli("monitor", "report", f"{BC}@production", "-o", "r.html"), 2,
                 f"no logged predictions for {BC}/1 in the window; serve some traffic first or widen --since.")
    assert not Path("r.html").exists()
