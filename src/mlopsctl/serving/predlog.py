"""The prediction log: every served request, written asynchronously in batches.

Requests only ``put_nowait`` into a bounded queue; one background thread drains it and inserts rows in
batches, so logging never blocks a request. When the queue is full the record is dropped, counted
(``dropped``, exposed in /metrics) and logged, never silently lost.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

from mlopsctl.predlog_format import encode
from mlopsctl.store.models import PredictionBatch, PredictionRecord, utcnow

log = logging.getLogger("mlopsctl.serve")


class PredictionLog:
    def __init__(self, store: Any, maxsize: int = 10_000, *, batch_size: int = 500, flush_interval: float = 0.25,
                 on_drop: Callable[[], None] | None = None, on_write_error: Callable[[], None] | None = None):
        self.store = store
        self.q: queue.Queue = queue.Queue(maxsize=maxsize)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self.on_drop = on_drop
        self.on_write_error = on_write_error
        self._last_warning = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlopsctl-predlog", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        return self.q.qsize()

    def submit(self, request_id: str, model: str, version: int, endpoint: str, latency_ms: float,
               inputs: dict[str, Any], outputs: dict[str, Any], n_rows: int) -> bool:
        try:
            self.q.put_nowait((request_id, model, version, endpoint, latency_ms, inputs, outputs, n_rows, utcnow()))
            return True
        except queue.Full:
            self.dropped += 1
            if self.on_drop:
                self.on_drop()
            now = time.monotonic()
            if now - self._last_warning > 5:
                self._last_warning = now
                log.warning("prediction log queue full (%d): %d record(s) dropped so far", self.q.maxsize, self.dropped)
            return False

    def _run(self) -> None:
        while not (self._stop.is_set() and self.q.empty()):
            batch = []
            try:
                batch.append(self.q.get(timeout=self.flush_interval))
                while len(batch) < self.batch_size:
                    batch.append(self.q.get_nowait())
            except queue.Empty:
                pass
            if batch:
                self._write(batch)

    def _write(self, batch: list[tuple]) -> None:
        """One transaction per flush: per model version, one columnar batch row plus one row per request."""
        from sqlalchemy import insert

        groups: dict[tuple[str, int], list[tuple]] = {}
        for rec in batch:
            groups.setdefault((rec[1], rec[2]), []).append(rec)
        try:
            with self.store.engine.begin() as conn:
                for (model, version), recs in groups.items():
                    data = encode([(inp, out, n) for _rid, _m, _v, _ep, _lat, inp, out, n, _at in recs])
                    n_total = sum(r[7] for r in recs)
                    batch_id = conn.execute(insert(PredictionBatch).values(
                        model=model, version=version, n_rows=n_total, data=data, created_at=recs[0][8],
                    )).inserted_primary_key[0]
                    rows, offset = [], 0
                    for rid, _m, _v, ep, lat, _inp, _out, n, at in recs:
                        rows.append({"request_id": rid, "model": model, "version": version, "endpoint": ep,
                                     "latency_ms": lat, "n_rows": n, "batch_id": batch_id, "offset": offset,
                                     "created_at": at})
                        offset += n
                    conn.execute(insert(PredictionRecord), rows)
            self.written += len(batch)
        except Exception as e:
            self.write_errors += len(batch)
            if self.on_write_error:
                self.on_write_error()
            log.error("prediction log: %d record(s) could not be written: %s", len(batch), e)

    def flush(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.q.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(self.flush_interval + 0.05)

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
