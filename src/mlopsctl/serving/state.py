"""The server's state: one :class:`ServerState` per app (settings, the model holder, metrics, the
prediction log, the bearer token), kept in ``app.extensions["mlopsctl"]``."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from mlopsctl.config import Settings
from mlopsctl.serving.metrics import Metrics
from mlopsctl.serving.predlog import PredictionLog
from mlopsctl.serving.runtime import ModelHolder, ServedModel


@dataclass
class ServerState:
    settings: Settings
    holder: ModelHolder
    metrics: Metrics
    predlog: PredictionLog | None
    token: str

    @property
    def model(self) -> ServedModel:
        return self.holder.current

    @property
    def body_limit(self) -> int:
        """``serve.max_body_mb`` in bytes."""
        return int(self.settings.serve.max_body_mb * 1024 * 1024)


def state() -> ServerState:
    """The current Flask app's state (inside a request or app context)."""
    return current_app.extensions["mlopsctl"]
