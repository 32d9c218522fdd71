"""Prometheus metrics for one app. Under gunicorn the launcher sets ``PROMETHEUS_MULTIPROC_DIR`` so that
/metrics aggregates every worker (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import os
from typing import Any

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        # multiprocess: values live in the shared dir and are collected at render time; registry=None keeps
        # several apps in one process (tests) from clashing in the global registry
        kw: dict[str, Any] = {"registry": None if self.multiprocess else self.registry}
        self.requests = Counter("mlops_requests_total", "HTTP requests by endpoint and status.",
                                ["endpoint", "status"], **kw)
        self.latency = Histogram("mlops_request_seconds", "Request latency by endpoint.", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, **kw)
        self.errors = Counter("mlops_errors_total", "Failed requests by kind.", ["kind"], **kw)
        self.rows = Counter("mlops_predicted_rows_total", "Rows scored.", ["model", "version"], **kw)
        gauge_kw = dict(kw, multiprocess_mode="max") if self.multiprocess else kw
        self.model_version = Gauge("mlops_model_version", "Version being served (1 per worker-provider).",
                                   ["model", "provider"], **gauge_kw)
        self.reloads = Counter("mlops_model_reloads_total", "Hot reloads (alias moved).", ["model"], **kw)
        self.queue_depth = Gauge("mlops_prediction_log_queue_depth", "Records waiting to be written.",
                                 **(dict(kw, multiprocess_mode="livesum") if self.multiprocess else kw))
        self.log_dropped = Counter("mlops_prediction_log_dropped_total",
                                   "Prediction-log records dropped because the queue was full.", **kw)
        self.log_write_errors = Counter("mlops_prediction_log_write_errors_total",
                                        "Prediction-log records that failed to be written.", **kw)
        mon_kw = dict(kw, multiprocess_mode="max") if self.multiprocess else kw
        self.drift_share = Gauge("mlops_drift_share", "Share of drifted columns at the latest drift check.",
                                 ["model", "version"], **mon_kw)
        self.live_metric = Gauge("mlops_live_metric", "Latest live metric from labelled predictions.",
                                 ["model", "version", "metric"], **mon_kw)
        self.warnings = Counter("mlops_contract_warnings_total", "Values flagged by the contract (out of range).",
                                ["column"], **kw)

        self._bound: dict[tuple, Any] = {}  # labelled children, looked up once (labels() costs ~2 µs a call)

    def rows_scored(self, model: str, version: int, n: int) -> None:
        key = ("rows", model, version)
        child = self._bound.get(key)
        if child is None:
            child = self._bound[key] = self.rows.labels(model, str(version))
        child.inc(n)

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        children = self._bound.get(key)
        if children is None:
            children = self._bound[key] = (self.requests.labels(endpoint, str(status)), self.latency.labels(endpoint))
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if self.multiprocess:
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
