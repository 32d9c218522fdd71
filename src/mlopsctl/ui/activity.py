"""Pages of what happened: ``/events`` (the audit trail, filtered), ``/watch`` (the watcher's jobs and the
files it quarantined)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from mlopsctl.services import activity
from mlopsctl.ui.app import page, settings

bp = Blueprint("activity", __name__)


@page(bp, "/events", "events.html")
def events() -> dict[str, Any]:
    """Query: kind, model, run_id, q (text in the message or actor), before (an event id), limit."""
    a = request.args
    return activity.search_events(settings(), kind=a.get("kind") or None, model=a.get("model") or None,
                                  q=a.get("q"), run_id=a.get("run_id"), before=a.get("before"), limit=a.get("limit"))


@page(bp, "/watch", "watch.html")
def watch() -> dict[str, Any]:
    return activity.watch_activity(settings(), limit=request.args.get("limit"))

