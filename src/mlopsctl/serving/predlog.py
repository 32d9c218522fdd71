"""The prediction log: every served request, written asynchronously in batches.

Requests only ``put_nowait`` into a bounded queue; one background thread drains it and inserts rows in
batches, so logging never blocks a request. When the queue is full the record is dropped, counted
(``dropped``, exposed in /metrics) and logged, never silently lost.

The writer works in time windows: once a record arrives it waits ``flush_interval`` and then writes
everything queued in one transaction (one Arrow batch per model version plus one index row per request).
A busy worker thus pays one transaction per window instead of one per few requests, and its request
threads are not interrupted by a writer that wakes on every record.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, NamedTuple

import numpy as np

from mlopsctl.predlog_format import concat, encode_columns
from mlopsctl.store.models import PredictionBatch, PredictionRecord, utcnow

log = logging.getLogger("mlopsctl.serve")
_STOP = object()  # queued by close()


class LogRecord(NamedTuple):
    request_id: str
    model: str
    version: int
    endpoint: str
    latency_ms: float
    inputs: dict[str, Any]  # normalized columns
    outputs: dict[str, Any]
    n_rows: int
    created_at: Any
    block: Any = None  # the checked float64 [k, n] block (Contract.check's fast path): one concat per batch
    block_columns: tuple[str, ...] = ()


class PredictionLog:
    def __init__(self, store: Any, maxsize: int = 10_000, *, batch_size: int = 5_000, flush_interval: float = 1.0,
                 on_drop: Callable[[], None] | None = None, on_write_error: Callable[[], None] | None = None):
        import pyarrow  # noqa: F401 - imported now, not by the first write (an import holds the GIL ~0.3 s)

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
        self._wake = threading.Event()  # cuts the window short: flush() and close()
        self._thread = threading.Thread(target=self._run, name="mlopsctl-predlog", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        return self.q.qsize()

    def submit(self, request_id: str, model: str, version: int, endpoint: str, latency_ms: float,
               inputs: dict[str, Any], outputs: dict[str, Any], n_rows: int, *, block: Any = None,
               block_columns: tuple[str, ...] = ()) -> bool:
        try:
            self.q.put_nowait(LogRecord(request_id, model, version, endpoint, latency_ms, inputs, outputs, n_rows,
                                        utcnow(), block, block_columns))
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
        while True:
            try:
                first = self.q.get(timeout=1.0)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            batch, taken = ([] if first is _STOP else [first]), 1
            if batch and self.q.qsize() < self.batch_size and not self._stop.is_set():
                self._wake.wait(self.flush_interval)  # let the window fill
            try:
                while len(batch) < self.batch_size:
                    item = self.q.get_nowait()
                    taken += 1
                    if item is not _STOP:
                        batch.append(item)
            except queue.Empty:
                pass
            if batch:
                self._write(batch)
            for _ in range(taken):
                self.q.task_done()
            if self.q.empty():
                self._wake.clear()
                if self._stop.is_set():
                    return

    def _write(self, batch: list[LogRecord]) -> None:
        """One transaction per flush: per model version, one columnar batch row plus one row per request."""
        from sqlalchemy import insert

        groups: dict[tuple[str, int], list[LogRecord]] = {}
        for rec in batch:
            groups.setdefault((rec.model, rec.version), []).append(rec)
        try:
            encoded = [(model, version, recs, _encode(recs)) for (model, version), recs in groups.items()]
            with self.store.engine.begin() as conn:  # the write lock is held for the inserts only
                for model, version, recs, data in encoded:
                    batch_id = conn.execute(insert(PredictionBatch).values(
                        model=model, version=version, n_rows=sum(r.n_rows for r in recs), data=data,
                        created_at=recs[0].created_at,
                    )).inserted_primary_key[0]
                    rows, offset = [], 0
                    for r in recs:
                        rows.append((r.request_id, model, version, r.endpoint, r.latency_ms, r.n_rows, batch_id,
                                     offset, r.created_at))
                        offset += r.n_rows
                    _insert_index(conn, rows)
            self.written += len(batch)
        except Exception as e:
            self.write_errors += len(batch)
            if self.on_write_error:
                self.on_write_error()
            log.error("prediction log: %d record(s) could not be written: %s", len(batch), e)

    def flush(self, timeout: float = 5.0) -> bool:
        """Write everything submitted so far now; False if that took longer than ``timeout``."""
        self._wake.set()
        with self.q.all_tasks_done:
            return self.q.all_tasks_done.wait_for(lambda: self.q.unfinished_tasks == 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the writer."""
        self._stop.set()
        self._wake.set()
        try:
            self.q.put_nowait(_STOP)  # wakes a writer waiting for its first record
        except queue.Full:
            pass  # the writer is busy and will see the stop flag once the queue is empty
        self._thread.join(timeout)


INDEX_COLUMNS = ("request_id", "model", "version", "endpoint", "latency_ms", "n_rows", "batch_id", "offset",
                 "created_at")
ROWS_PER_STATEMENT = 1000  # 9,000 parameters (SQLite >= 3.32 takes 32,766; PostgreSQL 65,535)
OLD_SQLITE_ROWS = 100  # 900 parameters: older SQLite libraries stop at 999


def _insert_index(conn: Any, rows: list[tuple]) -> None:
    """The per-request index rows of one model version's flush, in few statements.

    ``executemany`` steps the database once per row, and the sqlite3 module releases and retakes the GIL
    around every step: with request threads busy, each retake waits for a thread switch, so a 1,000-row
    flush took ~0.5 s of wall time and kept interrupting requests. SQLite with JSON support gets one
    statement per flush; other databases multi-row VALUES (one switch per 1,000 rows), through the column
    types' own bind processors, so the stored form is SQLAlchemy's."""
    if conn.dialect.name == "sqlite" and getattr(conn.dialect.dbapi, "sqlite_version_info", (0,)) >= (3, 38):
        _insert_index_sqlite_json(conn, rows)
    else:
        _insert_index_values(conn, rows)


def _insert_index_values(conn: Any, rows: list[tuple]) -> None:
    """Any dialect: multi-row ``INSERT ... VALUES``, ``ROWS_PER_STATEMENT`` rows a statement."""
    from sqlalchemy import insert

    dialect = conn.dialect
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle)
    if mark is None:  # a driver with named parameters: SQLAlchemy's executemany
        conn.execute(insert(PredictionRecord), [dict(zip(INDEX_COLUMNS, r)) for r in rows])
        return
    table = PredictionRecord.__table__
    procs = [table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in INDEX_COLUMNS]
    head = (f"INSERT INTO {dialect.identifier_preparer.format_table(table)} "
            f"({', '.join(dialect.identifier_preparer.quote(c) for c in INDEX_COLUMNS)}) VALUES ")
    one = f"({', '.join([mark] * len(INDEX_COLUMNS))})"
    if any(procs):
        rows = [tuple(p(v) if p else v for p, v in zip(procs, r)) for r in rows]
    per = ROWS_PER_STATEMENT
    if dialect.name == "sqlite" and getattr(dialect.dbapi, "sqlite_version_info", (0,)) < (3, 32):
        per = OLD_SQLITE_ROWS
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        conn.exec_driver_sql(head + ", ".join([one] * len(chunk)), tuple(v for r in chunk for v in r))


def _insert_index_sqlite_json(conn: Any, rows: list[tuple]) -> None:
    """SQLite (>= 3.38, JSON built in): every index row of the flush in one statement over one JSON
    document, so the Python side does almost nothing per row (orjson builds the document in C) and the
    GIL is released once. ``created_at`` is stored in SQLAlchemy's SQLite DATETIME format."""
    import orjson

    model, version, batch_id = rows[0][1], rows[0][2], rows[0][6]  # shared: _write calls this per group
    doc = orjson.dumps([(r[0], r[3], r[4], r[5], r[7], r[8].isoformat(" ", "microseconds")) for r in rows]).decode()
    table = PredictionRecord.__table__
    quote = conn.dialect.identifier_preparer.quote
    columns = ", ".join(quote(c) for c in INDEX_COLUMNS)
    conn.exec_driver_sql(
        f"INSERT INTO {conn.dialect.identifier_preparer.format_table(table)} ({columns}) "
        "SELECT json_extract(value, '$[0]'), ?, ?, json_extract(value, '$[1]'), json_extract(value, '$[2]'), "
        "json_extract(value, '$[3]'), ?, json_extract(value, '$[4]'), json_extract(value, '$[5]') "
        "FROM json_each(?) ORDER BY CAST(key AS INTEGER)",
        (model, version, batch_id, doc))


def _encode(recs: list[LogRecord]) -> bytes:
    """Arrow IPC bytes for one version's records. When every record carries its checked block (same
    columns), the numeric inputs are joined with one concatenation instead of one per column."""
    first = recs[0]
    inputs: dict[str, Any] = {}
    if first.block is not None and all(r.block is not None and r.block_columns == first.block_columns for r in recs):
        joined = np.concatenate([r.block for r in recs], axis=1) if len(recs) > 1 else first.block
        inputs.update(zip(first.block_columns, joined))
    for name in first.inputs:
        if name not in inputs:
            inputs[name] = concat([r.inputs[name] for r in recs])
    inputs = {name: inputs[name] for name in first.inputs}  # the contract's column order
    return encode_columns(inputs, {key: concat([r.outputs[key] for r in recs]) for key in first.outputs})
