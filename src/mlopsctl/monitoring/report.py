"""The monitoring report (``mlopsctl monitor report``): one self-contained HTML file, inline SVG charts and CSS,
nothing fetched when opened. :func:`write_report` gathers what it shows (the drift of a window, the live quality
per version, the promotion history), each computed once; the rest renders it."""

from __future__ import annotations

import html
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlopsctl._version import __version__
from mlopsctl.common import atomic_write
from mlopsctl.config import Settings
from mlopsctl.errors import InvalidInputError
from mlopsctl.monitoring.checks import check
from mlopsctl.monitoring.feedback import live_quality
from mlopsctl.monitoring.window import load_window, resolve

REF_COLOR, CUR_COLOR = "#4C78A8", "#F58518"
SERIES = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D"]


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def histogram_svg(title: str, hist: dict[str, Any], width: int = 360, height: int = 170) -> str:
    """Reference vs current frequencies as paired bars (categories) or overlaid bars (numeric bins)."""
    ref, cur = hist.get("reference") or [], hist.get("current") or []
    if not ref:
        return ""
    labels = hist.get("categories")
    if labels is None:
        edges = hist["edges"]
        labels = [f"{edges[i]:.3g}" for i in range(len(edges) - 1)]
    n = len(ref)
    top = max(max(ref), max(cur), 1e-9)
    pad_l, pad_b, pad_t = 34, 30, 22
    w, h = width - pad_l - 6, height - pad_b - pad_t
    bw = w / n
    bars = []
    for i in range(n):
        x = pad_l + i * bw
        for j, (vals, color) in enumerate(((ref, REF_COLOR), (cur, CUR_COLOR))):
            bh = h * vals[i] / top
            bars.append(f'<rect x="{x + j * bw / 2 + 0.5:.1f}" y="{pad_t + h - bh:.1f}" width="{max(bw / 2 - 1, 0.5):.1f}" '
                        f'height="{bh:.1f}" fill="{color}"><title>{_e(labels[i])}: reference {ref[i]:.3f}, '
                        f'current {cur[i]:.3f}</title></rect>')
    ticks = []
    step = max(1, n // 5)
    for i in range(0, n, step):
        ticks.append(f'<text x="{pad_l + i * bw + bw / 2:.1f}" y="{height - 14}" font-size="9" text-anchor="middle">'
                     f'{_e(str(labels[i])[:10])}</text>')
    return (f'<svg class="chart hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{_e(title)}"><text x="{pad_l}" y="14" font-size="12" font-weight="600">{_e(title)}</text>'
            f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#999"/>'
            f'<text x="{pad_l - 4}" y="{pad_t + 8}" font-size="9" text-anchor="end">{top:.2f}</text>'
            + "".join(bars) + "".join(ticks) + "</svg>")


def line_svg(title: str, series: dict[str, list[tuple[str, float]]], ylabel: str, width: int = 740, height: int = 240) -> str:
    """One line per version over time buckets."""
    xs = sorted({x for pts in series.values() for x, _ in pts})
    ys = [y for pts in series.values() for _, y in pts if y is not None]
    if not xs or not ys:
        return '<p class="muted">No labelled predictions yet: run <code>mlopsctl monitor feedback labels.csv</code>.</p>'
    lo, hi = min(ys), max(ys)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.05, hi + 0.05
    pad_l, pad_b, pad_t, pad_r = 46, 40, 24, 110
    w, h = width - pad_l - pad_r, height - pad_b - pad_t
    pos = {x: pad_l + (i + 0.5) * w / len(xs) for i, x in enumerate(xs)}

    def yy(v: float) -> float:
        return pad_t + h - h * (v - lo) / (hi - lo)

    parts = [f'<text x="{pad_l}" y="15" font-size="12" font-weight="600">{_e(title)}</text>',
             f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#999"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" stroke="#999"/>',
             f'<text x="{pad_l - 4}" y="{pad_t + 4}" font-size="9" text-anchor="end">{hi:.3f}</text>',
             f'<text x="{pad_l - 4}" y="{pad_t + h}" font-size="9" text-anchor="end">{lo:.3f}</text>',
             f'<text x="12" y="{pad_t + h / 2}" font-size="10" transform="rotate(-90 12 {pad_t + h / 2})">{_e(ylabel)}</text>']
    for i, x in enumerate(xs):
        if i % max(1, len(xs) // 6) == 0:
            parts.append(f'<text x="{pos[x]:.1f}" y="{height - 22}" font-size="9" text-anchor="middle">{_e(x[5:16])}</text>')
    for k, (name, pts) in enumerate(sorted(series.items())):
        color = SERIES[k % len(SERIES)]
        pts = [(x, y) for x, y in pts if y is not None]
        path = " ".join(f"{'M' if i == 0 else 'L'}{pos[x]:.1f},{yy(y):.1f}" for i, (x, y) in enumerate(pts))
        parts.append(f'<path class="series" d="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in pts:
            parts.append(f'<circle cx="{pos[x]:.1f}" cy="{yy(y):.1f}" r="3" fill="{color}"><title>{_e(name)} {x}: {y:.4f}</title></circle>')
        parts.append(f'<rect x="{pad_l + w + 12}" y="{pad_t + k * 16}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{pad_l + w + 26}" y="{pad_t + k * 16 + 9}" font-size="10">{_e(name)}</text>')
    return (f'<svg class="chart line" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{_e(title)}">' + "".join(parts) + "</svg>")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:2px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#777} .cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{border:1px solid #ddd;border-radius:8px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:20px} .bad{color:#c0392b} .ok{color:#1e8449}
table{border-collapse:collapse;font-size:12.5px;width:100%} th,td{border-bottom:1px solid #eee;padding:4px 6px;text-align:left}
th{background:#fafafa} tr.drift td{background:#fdecea}
.grid{display:flex;flex-wrap:wrap;gap:10px} .legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}
"""


def render(*, model: str, version: int, drift: dict[str, Any], report: Any, live: dict[str, Any],
           history: list[dict[str, Any]], window_label: str) -> str:
    """The whole page. ``drift`` is DriftReport.to_dict(); ``report`` the DriftReport (histograms)."""
    drifted = drift["drifted"]
    cards = [
        ("Data drift", f'<b class="{"bad" if drifted else "ok"}">{"DRIFT" if drifted else "no drift"}</b>'
                       f'{len(drift["drifted_columns"])} of {len(drift["columns"])} columns ({drift["drift_share"]:.0%}, '
                       f'threshold {drift["threshold_share"]:.0%})'),
        ("Rows compared", f'<b>{drift["current_rows"]}</b>logged vs {drift["reference_rows"]} reference'),
    ]
    if drift.get("prediction"):
        p = drift["prediction"]
        cards.append(("Prediction drift", f'<b class="{"bad" if p["drifted"] else "ok"}">{"DRIFT" if p["drifted"] else "stable"}</b>'
                                          f'{p["method"]} {_num(p["statistic"])}'))
    metric = live.get("metric")
    current = (live.get("per_version") or {}).get(str(version), {})
    if metric:
        cards.append((f"Live {metric} (v{version})", f'<b>{_num(current.get(metric))}</b>{current.get("rows", 0)} labelled rows'))
    rows = []
    for c in drift["columns"]:
        rows.append(f'<tr class="{"drift" if c["drifted"] else ""}"><td>{_e(c["column"])}</td><td>{_e(c["kind"])}</td>'
                    f'<td>{_e(c["method"])}</td><td>{_num(c["statistic"])}</td><td>{_num(c["threshold"])}</td>'
                    f'<td>{"yes" if c["drifted"] else "no"}</td><td>{_num(c["effect_size"])}</td><td>{_num(c["psi"])}</td>'
                    f'<td>{c["missing_share"]:.1%}</td><td>{c["out_of_contract_share"]:.1%}</td></tr>')
    hists = [histogram_svg(c.column + (" (drift)" if c.drifted else ""), c.histogram) for c in
             sorted(report.columns, key=lambda c: (not c.drifted, c.column))]
    if report.prediction is not None:
        hists.insert(0, histogram_svg("prediction" + (" (drift)" if report.prediction.drifted else ""), report.prediction.histogram))
    series: dict[str, list[tuple[str, float]]] = {}
    for point in live.get("series") or []:
        series.setdefault(f"version {point['version']}", []).append((point["start"], point.get(metric)))
    hist_rows = "".join(
        f'<tr><td>{_e(h["at"])}</td><td>@{_e(h["alias"])}</td><td>{_e(h["from_version"] or "–")}</td><td>{_e(h["to_version"])}</td>'
        f'<td>{_e(h["action"])}{" (forced)" if h["forced"] else ""}</td><td>{_e(h["actor"])}</td><td>{_e(h["reason"])}</td></tr>'
        for h in history)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(model)}/{version} monitoring report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>{_e(model)} / version {version}</h1>
<div class="muted">Window: {_e(window_label)} · generated {generated} by mlopsctl {__version__}</div>
<div class="cards">{"".join(f'<div class="card">{_e(t)}{body}</div>' for t, body in cards)}</div>
<h2>Live quality over time</h2>
{line_svg(f"{metric or 'metric'} per version", series, metric or "")}
<h2>Feature distributions: reference vs current</h2>
<div class="legend muted"><span style="background:{REF_COLOR}"></span>reference (training sample)<span style="background:{CUR_COLOR}"></span>current (logged requests)</div>
<div class="grid" id="histograms">{"".join(hists)}</div>
<h2>Drift statistics</h2>
<table id="drift-table"><thead><tr><th>column</th><th>kind</th><th>method</th><th>statistic</th><th>threshold</th><th>drift</th>
<th>effect size</th><th>PSI</th><th>missing</th><th>out of contract</th></tr></thead><tbody>{"".join(rows)}</tbody></table>
<h2>Promotion history</h2>
<table id="history"><thead><tr><th>at</th><th>alias</th><th>from</th><th>to</th><th>action</th><th>who</th><th>why</th></tr></thead>
<tbody>{hist_rows or '<tr><td colspan="7" class="muted">no alias moves</td></tr>'}</tbody></table>
</body></html>
"""


def write_report(settings: Settings, model_ref: str, output: Path, *, since: str | None = None,
                 last: int | None = None, bucket: str = "1d") -> dict[str, Any]:
    """The report of a version (drift of the window, live quality, promotion history) written to ``output``
    (a temporary file beside it, then renamed)."""
    from mlopsctl.services import models

    t0 = time.perf_counter()
    store, _, loaded = resolve(settings, model_ref)
    window = load_window(store, loaded.name, loaded.version, loaded.contract, since=since or settings.monitor.window,
                         last=last)
    if window.n == 0:
        raise InvalidInputError(f"no logged predictions for {loaded.name}/{loaded.version} in the window; serve some "
                                "traffic first or widen --since.")
    report = check(settings, loaded, window)
    live = live_quality(settings, store, loaded, bucket=bucket, record=False)
    history = models.show_model(settings, loaded.name)["history"]
    page = render(model=loaded.name, version=loaded.version, drift=report.to_dict(), report=report, live=live,
                  history=history, window_label=f"last {last} rows" if last else f"last {since or settings.monitor.window}")
    output = Path(output)
    with atomic_write(output, "w", encoding="utf-8") as fh:
        fh.write(page)
    return {"model": loaded.name, "version": loaded.version, "output": str(output), "bytes": len(page.encode()),
            "drifted": report.drifted, "drift_share": report.drift_share, "rows": window.n,
            "seconds": round(time.perf_counter() - t0, 3)}
