"""Tuning studies (``mlopsctl tune``): ``/studies`` (every study, its counts and best value) and
``/studies/<name>`` (the spec, the best trial, the refit run and the version it became, the optimisation
history, parameter importance and every trial), read through :mod:`mlopsctl.services.tune`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from mlopsctl.services import browse, tune
from mlopsctl.ui import charts
from mlopsctl.ui.app import page, settings, svg

bp = Blueprint("studies", __name__)

STUDY_FILTER = "tags.tune.role = study"
STUDY_COLUMNS = ["params.direction", "tags.tune.best_trial"]


def _study_extras() -> dict[int, dict[str, Any]]:
    """What ``tune list`` leaves out, per study run id: the direction and the best trial's number (one
    query a page of 500 studies, through the runs search)."""
    out: dict[int, dict[str, Any]] = {}
    page_no, pages = 1, 1
    while page_no <= pages:
        found = browse.search_runs(settings(), filter=STUDY_FILTER, sort="id", order="asc", page=page_no,
                                   per_page=browse.MAX_PER_PAGE, columns=STUDY_COLUMNS)
        for r in found["runs"]:
            best = r["values"]["tags.tune.best_trial"]
            out[r["id"]] = {"direction": r["values"]["params.direction"],
                            "best_trial": int(best) if best not in (None, "") else None}
        page_no, pages = page_no + 1, found["pages"]
    return out


@page(bp, "/studies", "studies.html")
def studies_list() -> dict[str, Any]:
    found = tune.list_studies(settings())
    extras = _study_extras() if found else {}
    studies = [{**s, **extras.get(s["run_id"], {"direction": None, "best_trial": None})} for s in found]
    return {"studies": studies}


def _study_charts(data: dict[str, Any]) -> dict[str, Any]:
    by_trial = {t["trial"]: t for t in data["trials"]}
    points = [{"trial": p["trial"], "best": p["best"], "value": by_trial[p["trial"]]["value"],
               "state": by_trial[p["trial"]]["state"], "link": f"/runs/{by_trial[p['trial']]['run_id']}"}
              for p in data["best_over_time"] if p["trial"] in by_trial]
    title = f"{data['metric']} ({'higher' if data['direction'] == 'maximize' else 'lower'} is better)"
    return {"history": svg(charts.history_chart(title, points)),
            "importance": svg(charts.bar_chart("parameter importance (fANOVA)", data["importance"] or {}))}


@page(bp, "/studies/<name>", "study.html", charts=_study_charts)
def study_detail(name: str) -> dict[str, Any]:
    """:func:`mlopsctl.services.tune.show_study`, plus the model versions its refit run became."""
    s = settings()
    data = tune.show_study(s, name)
    refit = data["refit"]
    data["registered"] = browse.run_page(s, str(refit["run_id"]))["versions"] if refit else []
    return data
