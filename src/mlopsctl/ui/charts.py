"""Inline SVG charts for the dashboard: readable without JavaScript, a few KB each, every text escaped.

Time series over buckets reuse the monitoring report's :func:`~mlopsctl.monitoring.report.line_svg` and
its palette; what the report has no use for is here: a metric over steps (numeric x), a scatter of two
run fields, parallel coordinates over many runs, a tuning study's optimisation history and parameter
importance bars, and a pipeline's DAG.
"""

from __future__ import annotations

import html
import math
from typing import Any, Sequence

from mlopsctl.monitoring.report import SERIES, line_svg

MAX_POINTS = 400  # a series with more steps is thinned to this many points (the last one is always kept)


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _n(v: float) -> str:
    return f"{v:.4g}"


def as_number(v: Any) -> float | None:
    """A value as a finite float, or None (text that is not a number, NaN, infinities, booleans)."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


class Axis:
    """Values on one axis: numeric when every value is a number, else categories in first-seen order."""

    def __init__(self, name: str, values: Sequence[Any]) -> None:
        self.name = name
        nums = [as_number(v) for v in values]
        present = [v for v in values if v is not None]
        self.numeric = all(n is not None for n, v in zip(nums, values) if v is not None) and bool(present)
        if self.numeric:
            xs = [n for n in nums if n is not None]
            self.lo, self.hi = min(xs), max(xs)
            margin = (self.hi - self.lo) * 0.05 if self.hi - self.lo > 1e-12 else max(abs(self.hi) * 0.05, 0.5)
            self.lo, self.hi = self.lo - margin, self.hi + margin
            self.categories: list[str] = []
        else:
            self.categories = list(dict.fromkeys(str(v) for v in present))
            self.lo, self.hi = -0.5, max(len(self.categories) - 0.5, 0.5)
        self.values = [(nums[i] if self.numeric else (self.categories.index(str(v)) if v is not None else None))
                       for i, v in enumerate(values)]

    def frac(self, i: int) -> float | None:
        """Where value ``i`` sits on the axis, 0 (low) to 1 (high); None when it has none."""
        v = self.values[i]
        return None if v is None else (v - self.lo) / (self.hi - self.lo)

    def label(self, at: float) -> str:
        if self.numeric:
            return _n(self.lo + at * (self.hi - self.lo))
        k = round(self.lo + at * (self.hi - self.lo))
        return self.categories[k] if 0 <= k < len(self.categories) else ""


def _frame(width: int, height: int, title: str, cls: str) -> str:
    return (f'<svg class="chart {cls}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{_e(title)}"><text x="8" y="15" font-size="12" font-weight="600">{_e(title)}</text>')


def step_chart(title: str, points: list[dict[str, Any]], width: int = 360, height: int = 180) -> str:
    """A metric over its steps (``[{"step", "value"}]``), thinned to ``MAX_POINTS``."""
    pts = [(p["step"], as_number(p["value"])) for p in points]
    pts = [(s, v) for s, v in pts if v is not None]
    if len(pts) > MAX_POINTS:
        stride = math.ceil(len(pts) / MAX_POINTS)
        pts = pts[::stride] + ([pts[-1]] if (len(pts) - 1) % stride else [])
    if not pts:
        return ""
    pad_l, pad_b, pad_t, pad_r = 48, 26, 24, 10
    w, h = width - pad_l - pad_r, height - pad_b - pad_t
    x, y = Axis("step", [s for s, _ in pts]), Axis(title, [v for _, v in pts])
    coords = [(pad_l + w * (x.frac(i) or 0), pad_t + h - h * (y.frac(i) or 0)) for i in range(len(pts))]
    path = " ".join(f"{'M' if i == 0 else 'L'}{cx:.1f},{cy:.1f}" for i, (cx, cy) in enumerate(coords))
    last = pts[-1]
    return (_frame(width, height, title, "steps")
            + f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#999"/>'
            f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" stroke="#999"/>'
            f'<text x="{pad_l - 4}" y="{pad_t + 8}" font-size="9" text-anchor="end">{_n(y.hi)}</text>'
            f'<text x="{pad_l - 4}" y="{pad_t + h}" font-size="9" text-anchor="end">{_n(y.lo)}</text>'
            f'<text x="{pad_l}" y="{height - 8}" font-size="9">step {_e(x.label(0))}</text>'
            f'<text x="{pad_l + w}" y="{height - 8}" font-size="9" text-anchor="end">step {_e(x.label(1))}</text>'
            f'<path class="series" d="{path}" fill="none" stroke="{SERIES[0]}" stroke-width="1.5"/>'
            f'<circle cx="{coords[-1][0]:.1f}" cy="{coords[-1][1]:.1f}" r="3" fill="{SERIES[0]}">'
            f'<title>step {last[0]}: {_n(last[1])}</title></circle></svg>')


def scatter_chart(x: Axis, y: Axis, labels: list[str], links: list[str], width: int = 560, height: int = 360) -> str:
    """One point per run (a link to it), ``x`` against ``y``; categorical axes spread their categories."""
    pad_l, pad_b, pad_t, pad_r = 60, 42, 24, 16
    w, h = width - pad_l - pad_r, height - pad_b - pad_t
    parts = [_frame(width, height, f"{y.name} vs {x.name}", "scatter"),
             f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#999"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" stroke="#999"/>']
    for at in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{pad_l + w * at:.1f}" y="{pad_t + h + 14}" font-size="9" text-anchor="middle">{_e(x.label(at)[:14])}</text>')
        parts.append(f'<text x="{pad_l - 4}" y="{pad_t + h - h * at + 3:.1f}" font-size="9" text-anchor="end">{_e(y.label(at)[:10])}</text>')
    parts.append(f'<text x="{pad_l + w / 2}" y="{height - 6}" font-size="11" text-anchor="middle">{_e(x.name)}</text>')
    parts.append(f'<text x="12" y="{pad_t + h / 2}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 12 {pad_t + h / 2})">{_e(y.name)}</text>')
    for i, (label, link) in enumerate(zip(labels, links)):
        fx, fy = x.frac(i), y.frac(i)
        if fx is None or fy is None:
            continue
        cx, cy = pad_l + w * fx, pad_t + h - h * fy
        parts.append(f'<a href="{_e(link)}"><circle class="point" cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{SERIES[0]}" '
                     f'fill-opacity="0.75"><title>{_e(label)}: {_e(x.label(fx))}, {_e(y.label(fy))}</title></circle></a>')
    return "".join(parts) + "</svg>"


def parallel_chart(axes: list[Axis], labels: list[str], width: int = 900, height: int = 320) -> str:
    """Parallel coordinates: one vertical axis per field, one line per run, coloured by the last axis."""
    if len(axes) < 2:
        return ""
    pad_l, pad_r, pad_t, pad_b = 70, 70, 54, 30
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    xs = [pad_l + w * k / (len(axes) - 1) for k in range(len(axes))]
    parts = [_frame(width, height, "parallel coordinates", "parallel")]
    for k, (ax, x) in enumerate(zip(axes, xs)):
        name = ax.name.split(".", 1)[-1]
        parts.append(f'<line x1="{x:.1f}" y1="{pad_t}" x2="{x:.1f}" y2="{pad_t + h}" stroke="#888"/>'
                     f'<text x="{x:.1f}" y="{pad_t - 8 - 12 * (k % 2)}" font-size="10" text-anchor="middle">'
                     f'<title>{_e(ax.name)}</title>{_e(name if len(name) <= 22 else name[:21] + "…")}</text>'
                     f'<text x="{x + 3:.1f}" y="{pad_t + 8}" font-size="9">{_e(ax.label(1)[:12])}</text>'
                     f'<text x="{x + 3:.1f}" y="{pad_t + h}" font-size="9">{_e(ax.label(0)[:12])}</text>')
    for i, label in enumerate(labels):
        color_at = axes[-1].frac(i)
        color = f"hsl({220 - 190 * color_at:.0f},70%,45%)" if color_at is not None else "#999"
        pts = [(x, ax.frac(i)) for ax, x in zip(axes, xs)]
        path = " ".join(f"{'M' if k == 0 else 'L'}{x:.1f},{pad_t + h - h * f:.1f}"
                        for k, (x, f) in enumerate(p for p in pts if p[1] is not None))
        if path:
            parts.append(f'<path class="line" d="{path}" fill="none" stroke="{color}" stroke-width="1.6" '
                         f'stroke-opacity="0.8"><title>{_e(label)}</title></path>')
    return "".join(parts) + "</svg>"


def time_chart(title: str, series: dict[str, list[tuple[str, float]]], ylabel: str, empty: str) -> str:
    """Values per time bucket, one line per series (the monitoring report's chart); ``empty`` when none."""
    if not any(y is not None for pts in series.values() for _, y in pts):
        return f'<p class="muted">{_e(empty)}</p>'
    return line_svg(title, series, ylabel)


def history_chart(title: str, points: list[dict[str, Any]], width: int = 560, height: int = 260) -> str:
    """A study's optimisation history: each finished trial's value (``{"trial", "value", "best", "state",
    "link"}``, in the order they finished) as a point linking to its run, and the running best as a step line."""
    xs = list(range(len(points)))
    ys = [as_number(p["value"]) for p in points] + [as_number(p["best"]) for p in points]
    if not any(v is not None for v in ys):
        return ""
    pad_l, pad_b, pad_t, pad_r = 56, 30, 24, 90
    w, h = width - pad_l - pad_r, height - pad_b - pad_t
    x, y = Axis("trial", xs), Axis(title, ys)

    def cy(v: float) -> float:
        return pad_t + h - h * (v - y.lo) / (y.hi - y.lo)

    def cx(i: int) -> float:
        return pad_l + w * (x.frac(i) or 0)

    parts = [_frame(width, height, title, "history"),
             f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#999"/>'
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" stroke="#999"/>'
             f'<text x="{pad_l - 4}" y="{pad_t + 8}" font-size="9" text-anchor="end">{_n(y.hi)}</text>'
             f'<text x="{pad_l - 4}" y="{pad_t + h}" font-size="9" text-anchor="end">{_n(y.lo)}</text>'
             f'<text x="{pad_l + w / 2}" y="{height - 8}" font-size="10" text-anchor="middle">trials, in the order they finished</text>']
    best = [(cx(i), cy(b)) for i, p in enumerate(points) if (b := as_number(p["best"])) is not None]
    if best:
        path = f"M{best[0][0]:.1f},{best[0][1]:.1f}" + "".join(f" H{bx:.1f} V{by:.1f}" for bx, by in best[1:])
        path += f" H{pad_l + w:.1f}"
        parts.append(f'<path class="best" d="{path}" fill="none" stroke="{SERIES[1]}" stroke-width="2"/>'
                     f'<text x="{pad_l + w + 4}" y="{best[-1][1] + 3:.1f}" font-size="10" fill="{SERIES[1]}">best {_n(as_number(points[-1]["best"]) or 0)}</text>')
    for i, p in enumerate(points):
        v = as_number(p["value"])
        if v is None:
            continue
        fill = SERIES[0] if p["state"] == "COMPLETE" else "#bbb"
        parts.append(f'<a href="{_e(p["link"])}"><circle class="trial" cx="{cx(i):.1f}" cy="{cy(v):.1f}" r="4" fill="{fill}">'
                     f'<title>trial {_e(p["trial"])} ({_e(p["state"].lower())}): {_n(v)}</title></circle></a>')
    return "".join(parts) + "</svg>"


def bar_chart(title: str, values: dict[str, float], width: int = 420) -> str:
    """Horizontal bars, largest first (a study's parameter importance); empty when there is nothing to draw."""
    rows = sorted(((k, v) for k, v in values.items() if as_number(v) is not None), key=lambda kv: -kv[1])
    if not rows:
        return ""
    pad_l, pad_r, pad_t, row_h = 130, 56, 24, 20
    top = max(max(v for _, v in rows), 1e-12)
    height = pad_t + row_h * len(rows) + 8
    parts = [_frame(width, height, title, "bars")]
    for k, (name, v) in enumerate(rows):
        y0, bw = pad_t + row_h * k, (width - pad_l - pad_r) * max(v, 0) / top
        label = name if len(name) <= 20 else name[:19] + "…"
        parts.append(f'<text x="{pad_l - 6}" y="{y0 + 13}" font-size="11" text-anchor="end"><title>{_e(name)}</title>{_e(label)}</text>'
                     f'<rect class="bar" x="{pad_l}" y="{y0 + 3}" width="{bw:.1f}" height="{row_h - 6}" fill="{SERIES[0]}"/>'
                     f'<text x="{pad_l + bw + 4:.1f}" y="{y0 + 13}" font-size="10">{_n(v)}</text>')
    return "".join(parts) + "</svg>"


DAG_FILL = {"fresh": "#dcfce7", "stale": "#fef9c3", "failed": "#fee2e2"}


def _layers(steps: list[dict[str, Any]]) -> dict[str, int]:
    """Each step's column: the length of the longest chain of steps before it (``steps`` in run order)."""
    layer: dict[str, int] = {}
    for s in steps:
        layer[s["name"]] = 1 + max((layer[u] for u in s["upstream"] if u in layer), default=-1)
    return layer


def dag_chart(steps: list[dict[str, Any]], node_w: int = 150, node_h: int = 42) -> str:
    """A pipeline's DAG, left to right: one box per step (``{"name", "upstream", "label", "state", "link"}``,
    in run order) filled by its state, an arrow from each step to the steps that use its outputs."""
    if not steps:
        return ""
    layer = _layers(steps)
    columns: dict[int, list[str]] = {}
    for s in steps:
        columns.setdefault(layer[s["name"]], []).append(s["name"])
    gap_x, gap_y, pad = 60, 18, 12
    where = {n: (pad + k * (node_w + gap_x), 28 + i * (node_h + gap_y)) for k, names in columns.items()
             for i, n in enumerate(names)}
    width = pad * 2 + len(columns) * node_w + (len(columns) - 1) * gap_x
    height = 28 + max(len(c) for c in columns.values()) * (node_h + gap_y) + pad
    parts = [_frame(width, height, "pipeline", "dag"),
             '<defs><marker id="dag-arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" '
             'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#64748b"/></marker></defs>']
    for s in steps:
        x2, y2 = where[s["name"]]
        for u in s["upstream"]:
            x1, y1 = where[u][0] + node_w, where[u][1] + node_h / 2
            mid = (x1 + x2) / 2
            parts.append(f'<path class="edge" d="M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2 + node_h / 2:.1f} '
                         f'{x2:.1f},{y2 + node_h / 2:.1f}" fill="none" stroke="#64748b" marker-end="url(#dag-arrow)">'
                         f'<title>{_e(u)} → {_e(s["name"])}</title></path>')
    for s in steps:
        x, y = where[s["name"]]
        name = s["name"] if len(s["name"]) <= 20 else s["name"][:19] + "…"
        parts.append(f'<a href="{_e(s["link"])}"><g class="node {_e(s["state"])}" data-step="{_e(s["name"])}">'
                     f'<rect x="{x}" y="{y}" width="{node_w}" height="{node_h}" rx="6" fill="{DAG_FILL.get(s["state"], "#eef2f7")}" '
                     f'stroke="#94a3b8"/><title>{_e(s["name"])}: {_e(s["state"])}</title>'
                     f'<text x="{x + 8}" y="{y + 17}" font-size="12" font-weight="600">{_e(name)}</text>'
                     f'<text x="{x + 8}" y="{y + 33}" font-size="10" fill="#475569">{_e(s["label"])}</text></g></a>')
    return "".join(parts) + "</svg>"
