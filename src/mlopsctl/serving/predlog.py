"""The prediction log: every served request, written asynchronously in batches.

Requests only append to a bounded buffer; one background thread drains it and inserts rows in batches, so
logging never blocks a request. When the buffer is full the record is dropped, counted (``dropped``,
exposed in /metrics) and logged, never silently lost.

The writer works in time windows: every ``flush_interval`` it takes everything buffered and writes it in
one transaction (one Arrow batch per model version plus one index row per request). A busy worker thus
pays one transaction per window instead of one per few requests.

The writer shares the worker's GIL with the request threads, so a window's Python work (about 7 µs per
record) would stall every request that arrives meanwhile: at ~1,400 requests/s a worker's flush held the
GIL for ~14 ms at a time, which was the server's p99. The buffer is a ``deque`` (append and popleft are
single C calls: no lock, no condition variable per record), and the writer gives the GIL back between
the stages of a flush and every ``CHUNK`` records (:func:`_pause`), so a request waits at most one short
stage for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable, NamedTuple

import numpy as np

from mlopsctl.predlog_format import concat, encode_columns
from mlopsctl.store.models import PredictionBatch, PredictionRecord, utcnow

log = logging.getLogger("mlopsctl.serve")
CHUNK = 256  # records of per-record Python work between two GIL hand-backs (~1 ms)
PAUSE_S = 0.0002  # a real sleep: the GIL is free long enough for a waiting request thread to take it


def _pause() -> None:
    """Let request threads run. ``time.sleep(0)`` would release the GIL too, but the writer usually takes
    it straight back before a woken request thread is scheduled; a short real sleep hands it over."""
    time.sleep(PAUSE_S)


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
        self.maxsize = maxsize
        self._pending: deque[LogRecord] = deque()
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
        self._cycles = threading.Condition()
        self._started = self._done = 0  # writer cycles begun / finished (flush() waits on them)
        self._thread = threading.Thread(target=self._run, name="mlopsctl-predlog", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        return len(self._pending)

    def submit(self, request_id: str, model: str, version: int, endpoint: str, latency_ms: float,
               inputs: dict[str, Any], outputs: dict[str, Any], n_rows: int, *, block: Any = None,
               block_columns: tuple[str, ...] = ()) -> bool:
        # the bound is checked without a lock: concurrent request threads can overshoot it by one record
        # each, which is harmless (it bounds memory, not correctness)
        if len(self._pending) < self.maxsize:
            self._pending.append(LogRecord(request_id, model, version, endpoint, latency_ms, inputs, outputs,
                                           n_rows, utcnow(), block, block_columns))
            return True
        self.dropped += 1
        if self.on_drop:
            self.on_drop()
        now = time.monotonic()
        if now - self._last_warning > 5:
            self._last_warning = now
            log.warning("prediction log queue full (%d): %d record(s) dropped so far", self.maxsize, self.dropped)
        return False

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)  # the window
            self._wake.clear()
            stopping = self._stop.is_set()
            with self._cycles:
                self._started += 1
                cycle = self._started
            try:
                self._drain()
            finally:
                with self._cycles:
                    self._done = cycle
                    self._cycles.notify_all()
            if stopping:
                return

    def _drain(self) -> None:
        """Write everything buffered when the cycle began, ``batch_size`` records a transaction."""
        left = len(self._pending)
        while left > 0:
            take = min(left, self.batch_size)
            pop = self._pending.popleft
            batch = [pop() for _ in range(take)]
            left -= take
            self._write(batch)
            while batch:  # freeing ~40 objects a record is one uninterruptible C cascade: free in chunks
                del batch[-CHUNK:]
                _pause()

    def _write(self, batch: list[LogRecord]) -> None:
        """One transaction per flush: per model version, one columnar batch row plus one row per request.
        Everything but the inserts is prepared before the transaction (the write lock is held briefly)."""
        from sqlalchemy import insert

        groups: dict[tuple[str, int], list[LogRecord]] = {}
        for rec in batch:
            groups.setdefault((rec.model, rec.version), []).append(rec)
        try:
            as_json = _json_index(self.store.engine.dialect)
            prepared = []
            for (model, version), recs in groups.items():
                _pause()
                data = _encode(recs)
                _pause()
                rows = _index_rows(model, version, recs)
                prepared.append((model, version, recs[0].created_at, sum(r.n_rows for r in recs), data, rows,
                                 _index_document(rows) if as_json else None))
            _pause()
            with self.store.engine.begin() as conn:
                for model, version, created_at, n_rows, data, rows, doc in prepared:
                    batch_id = conn.execute(insert(PredictionBatch).values(
                        model=model, version=version, n_rows=n_rows, data=data, created_at=created_at,
                    )).inserted_primary_key[0]
                    if doc is not None:
                        _insert_index_sqlite_json(conn, model, version, batch_id, doc)
                    else:
                        _insert_index_values(conn, rows, batch_id)
            self.written += len(batch)
        except Exception as e:
            self.write_errors += len(batch)
            if self.on_write_error:
                self.on_write_error()
            log.error("prediction log: %d record(s) could not be written: %s", len(batch), e)

    def flush(self, timeout: float = 5.0) -> bool:
        """Write everything submitted so far now; False if that took longer than ``timeout``."""
        with self._cycles:
            target = self._started + 1  # a cycle that begins after this call has seen every record so far
            self._wake.set()
            return self._cycles.wait_for(lambda: self._done >= target or not self._thread.is_alive(), timeout) \
                and self._done >= target

    def close(self, timeout: float = 5.0) -> None:
        """Write what is buffered and stop the writer."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)


INDEX_COLUMNS = ("request_id", "model", "version", "endpoint", "latency_ms", "n_rows", "batch_id", "offset",
                 "created_at")
ROWS_PER_STATEMENT = 1000  # 9,000 parameters (SQLite >= 3.32 takes 32,766; PostgreSQL 65,535)
OLD_SQLITE_ROWS = 100  # 900 parameters: older SQLite libraries stop at 999


def _index_rows(model: str, version: int, recs: list[LogRecord]) -> list[tuple]:
    """One index row per request (``INDEX_COLUMNS`` order; ``batch_id`` is None until the batch row
    exists)."""
    rows, offset = [], 0
    for i, r in enumerate(recs, 1):
        rows.append((r.request_id, model, version, r.endpoint, r.latency_ms, r.n_rows, None, offset, r.created_at))
        offset += r.n_rows
        if i % CHUNK == 0:
            _pause()
    return rows


def _json_index(dialect: Any) -> bool:
    """Whether the index rows go in as one JSON document (SQLite >= 3.38, JSON built in).

    ``executemany`` steps the database once per row, and the sqlite3 module releases and retakes the GIL
    around every step: with request threads busy, each retake waits for a thread switch, so a 1,000-row
    flush took ~0.5 s of wall time and kept interrupting requests. SQLite with JSON support gets one
    statement per flush; other databases multi-row VALUES (one switch per 1,000 rows)."""
    return _sqlite_version(dialect) >= (3, 38)


def _sqlite_version(dialect: Any) -> tuple[int, ...]:
    """The SQLite library's version; (0,) for other databases."""
    return getattr(dialect.dbapi, "sqlite_version_info", (0,)) if dialect.name == "sqlite" else (0,)


def _insert_index_values(conn: Any, rows: list[tuple], batch_id: int) -> None:
    """Any dialect: multi-row ``INSERT ... VALUES``, ``ROWS_PER_STATEMENT`` rows a statement, through the
    column types' own bind processors, so the stored form is SQLAlchemy's."""
    from sqlalchemy import insert

    rows = [r[:6] + (batch_id,) + r[7:] for r in rows]
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
    if dialect.name == "sqlite" and _sqlite_version(dialect) < (3, 32):
        per = OLD_SQLITE_ROWS
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        conn.exec_driver_sql(head + ", ".join([one] * len(chunk)), tuple(v for r in chunk for v in r))


def _index_document(rows: list[tuple]) -> str:
    """The JSON document :func:`_insert_index_sqlite_json` reads: per row request id, endpoint, latency,
    row count, offset and ``created_at`` in SQLAlchemy's SQLite DATETIME format. Built before the
    transaction, ``CHUNK`` rows between GIL hand-backs; orjson serialises it in C."""
    import orjson

    items: list[tuple] = []
    for start in range(0, len(rows), CHUNK):
        items.extend((r[0], r[3], r[4], r[5], r[7], r[8].isoformat(" ", "microseconds"))
                     for r in rows[start:start + CHUNK])
        if start:
            _pause()
    return orjson.dumps(items).decode()


def _insert_index_sqlite_json(conn: Any, model: str, version: int, batch_id: int, doc: str) -> None:
    """SQLite (>= 3.38): every index row of one version's flush in one statement over one JSON document
    (:func:`_index_document`), so the GIL is released once."""
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
    columns), the numeric inputs are joined with one concatenation instead of one per column. The GIL is
    handed back between stages (:func:`_pause`)."""
    first = recs[0]
    inputs: dict[str, Any] = {}
    if first.block is not None and all(r.block is not None and r.block_columns == first.block_columns for r in recs):
        joined = np.concatenate([r.block for r in recs], axis=1) if len(recs) > 1 else first.block
        inputs.update(zip(first.block_columns, joined))
        _pause()
    for name in first.inputs:
        if name not in inputs:
            inputs[name] = concat([r.inputs[name] for r in recs])
            _pause()
    inputs = {name: inputs[name] for name in first.inputs}  # the contract's column order
    outputs = {}
    for key in first.outputs:
        outputs[key] = concat([r.outputs[key] for r in recs])
        _pause()
    return encode_columns(inputs, outputs)
