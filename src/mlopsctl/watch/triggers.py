"""Triggers: what asks for a retrain besides new files. Files are the built-in path; a trigger either returns
a reason (the watcher then runs a job without files) or, like the drift trigger, drops a file into the watched
folder so that the retrain takes the same validated, gated path as any other file."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from mlopsctl.common import atomic_path
from mlopsctl.config import Settings
from mlopsctl.errors import MlopsError

if TYPE_CHECKING:  # pragma: no cover
    from mlopsctl.watch.loop import Watcher


class Trigger(Protocol):
    """Something that can ask for a retrain without new files. ``check`` returns a reason, or None."""

    name: str

    def check(self, watcher: Watcher, now: float) -> str | None: ...


@dataclass
class ScheduleTrigger:
    """``watch --every 6h``: a retrain on the current data every ``every_s`` seconds."""

    every_s: float
    name: str = "schedule"
    last: float = field(default_factory=time.monotonic)

    def check(self, watcher: Watcher, now: float) -> str | None:
        if now - self.last >= self.every_s:
            self.last = now
            return f"scheduled retrain (every {self.every_s:g} s)"
        return None


@dataclass
class DriftTrigger:
    """``watch --on-drift``: every ``every_s`` check drift over the monitoring window; when the data set has
    drifted and enough labelled predictions exist, drop them (features + label) into the watched folder as
    a Parquet file, so the retrain takes the same validated, gated path as any new file. Each label is queued
    once: the newest feedback id queued is kept as the model's ``drift_queued`` monitoring result."""

    settings: Settings
    model_ref: str
    every_s: float
    name: str = "drift"
    last: float = 0.0

    def check(self, watcher: Watcher, now: float) -> str | None:
        from mlopsctl.monitoring import checks

        if self.last and now - self.last < self.every_s:
            return None
        self.last = now
        try:
            result = checks.drift(self.settings, self.model_ref)
        except MlopsError as e:
            watcher.say(f"drift check skipped: {e.message}")
            return None
        watcher.say(f"drift check: {len(result['drifted_columns'])} of {len(result['columns'])} columns drifted "
                    f"({result['drift_share']:.0%}) over {result['window']['rows']} rows")
        if result["drifted"]:
            self._queue_labelled_rows(watcher, result["model"], result["version"], result["drifted_columns"])
        return None

    def _queue_labelled_rows(self, watcher: Watcher, model: str, version: int, drifted: list[str]) -> None:
        from mlopsctl.monitoring import feedback
        from mlopsctl.project import open_project
        from mlopsctl.registry import add_event

        store = open_project(self.settings).store
        frame, last_id = feedback.training_rows_from_log(self.settings, self.model_ref,
                                                         feedback.queued_feedback_id(store, model))
        if len(frame) < self.settings.monitor.min_labels:
            msg = (f"drift detected but only {len(frame)} labelled prediction(s); need monitor.min_labels = "
                   f"{self.settings.monitor.min_labels} to retrain")
            watcher.say(msg)
            with store.session() as s:
                add_event(s, "drift_no_retrain", msg, model=model, version=version)
            return
        path = watcher.folder / f"drift-{time.strftime('%Y%m%dT%H%M%S')}.parquet"
        with atomic_path(path) as tmp:  # a hidden temporary name: never taken half-written
            frame.to_parquet(tmp, index=False)
        feedback.mark_queued(store, model, version, f"drift in {', '.join(drifted[:10])}: {len(frame)} labelled rows "
                             f"queued for retraining as {path.name}", last_id)
        watcher.say(f"drift: queued {len(frame)} labelled rows as {path.name}")
        watcher.note(path)
