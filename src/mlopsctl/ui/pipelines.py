"""The project's pipeline (``mlopsctl pipeline``): ``/pipeline`` shows each step in run order (what it uses,
its inputs and outputs, fresh or stale for the current inputs and why, its last execution), the DAG as
inline SVG, and the recent step executions (filtered by step), read through :mod:`mlopsctl.services.pipeline`.
A project without pipeline steps gets a page saying how to declare them; a pipeline that does not build (a
cycle, an unknown step) gets the reason on the page."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from flask import Blueprint, request

from mlopsctl.errors import ConfigError
from mlopsctl.services import pipeline
from mlopsctl.ui import charts
from mlopsctl.ui.app import arg_int, page, settings, svg

bp = Blueprint("pipelines", __name__)

HOW_TO = ("This project has no pipeline yet. Declare its steps in .mlops.toml as [pipeline.steps.NAME] tables "
          "(a shell command with its deps and outs, or uses = \"train\", \"tune\", \"evaluate\", \"register\", "
          "\"promote\"), "
          "then run mlopsctl pipeline run; README.md, section Pipelines, and .mlops.toml.example show how.")


def _steps() -> list[dict[str, Any]]:
    """Each step (``pipeline.show``) with its state for the current inputs (``pipeline.status``) and its
    last execution (``pipeline.executions``)."""
    s = settings()
    states = {o["step"]: o for o in pipeline.status(s)["steps"]}
    out = []
    for step in pipeline.show(s)["steps"]:
        st = states[step["name"]]
        last = pipeline.executions(s, step=step["name"], limit=1)
        out.append({**step, "state": st["status"], "reasons": st["reasons"], "key": st["key"],
                    "last": last[0] if last else None})
    return out


@page(bp, "/pipeline", "pipeline.html", charts=lambda data: {"dag": svg(_dag(data["steps"]))})
def pipeline_page() -> dict[str, Any]:
    """Query: step (executions of that step only), limit (executions shown, default 50)."""
    s = settings()
    step = (request.args.get("step") or "").strip() or None
    limit = arg_int("limit", 50, high=1000)
    data: dict[str, Any] = {"defined": bool(s.pipeline.steps), "problem": None, "how_to": None, "steps": [],
                            "step": step or "", "limit": limit}
    if not data["defined"]:
        data["how_to"] = HOW_TO
    else:
        try:
            data["steps"] = _steps()
        except ConfigError as e:
            data["problem"] = e.message
    data["executions"] = pipeline.executions(s, step=step, limit=limit)
    return data


def _dag(steps: list[dict[str, Any]]) -> str:
    nodes = []
    for st in steps:
        failed = st["state"] == "stale" and st["last"] is not None and st["last"]["status"] == "failed"
        label = ("command" if st["kind"] == "cmd" else f"uses {st['kind']}") + f" · {st['state']}"
        nodes.append({"name": st["name"], "upstream": st["upstream"], "label": label,
                      "state": "failed" if failed else st["state"], "link": f"/pipeline?step={quote(st['name'])}#executions"})
    return charts.dag_chart(nodes)
