"""The prediction log: every served request, written asynchronously in batches.

Requests only append to a bounded buffer; one background thread drains it and inserts rows in batches, so
logging never blocks a request. When the buffer is full the record is dropped, counted (``dropped``,
exposed in /metrics) and logged, never silently lost.

The writer works in time windows: every ``flush_interval`` it takes everything buffered and writes it in
one transaction: one Arrow batch per model version, and the per-request index rows (``predictions``). A
window of more than ``INDEX_NOW_MAX`` records leaves its index rows in the batch's ``pending_index``
document instead; the next quiet window, or the first reader, writes them
(:func:`mlopsctl.predlog_format.index_pending`). Writing ~1,300 index rows a second per worker with their
four indexes took ~8 ms of CPU per window, against ~1 ms for the batch itself, and every such burst on a
saturated machine delays the requests running beside it: it was most of the server's p99 tail.

The writer shares the worker's GIL with the request threads. The buffer is a ``deque`` (append and
popleft are single C calls: no lock per record), and a buffered record is compact (:func:`make_record`):
its index row already serialised to JSON bytes by the request thread, the checked float64 block, the other
columns' and the outputs' arrays, and the layout key. The writer thus does almost no per-record Python
work: records leave the buffer, are grouped, joined (the index document is one ``bytes.join``, the inputs
one concatenation per block or column) and freed by C loops (``islice``, ``groupby``, ``map``), and it is
handed back between the stages of a flush (:func:`_pause`).

A C call holds the GIL until it returns, however long it runs: over a whole busy window (~4,000 records a
worker a second at 8 clients) each of those loops and concatenations held it 1-3 ms (thread CPU time, a
flush ~18 ms in all), and a request arriving meanwhile waited that long. So every loop and concatenation
over records runs on slices of :data:`SLICE` records (:func:`_slices`), each a fraction of a millisecond;
between them the request threads get the GIL within the worker's switch interval (0.1 ms,
``serving.server.GIL_SWITCH_S``). The parts are joined once at the end: a few arrays per column.

After a cycle that wrote something the writer hands the freed heap back to the system (glibc's ``malloc_trim``,
called through ctypes, which releases the GIL): a window's arrays, Arrow buffers and statement parameters are
freed in pieces that glibc otherwise keeps, ~23 MB of a worker's memory after load (PSS of a 2-worker server
212 -> 199 MB in alternating runs; benchmarks/RESULTS.md, issue 21).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import datetime
from itertools import groupby, islice
from operator import itemgetter
from typing import Any, Callable

import numpy as np
import orjson

from mlopsctl.predlog_format import concat, encode_columns, has_pending, index_pending, write_index
from mlopsctl.store.tables import prediction_batches, utcnow

log = logging.getLogger("mlopsctl.serve")
INDEX_NOW_MAX = 256  # a window of at most this many records writes its index rows at once; a busier one defers them
CATCH_UP_BATCHES = 20  # deferred batches a quiet window indexes
SLICE = 256  # records per C loop or concatenation in the writer (see the module's text)
PAUSE_S = 0.0002  # a real sleep: the GIL is free long enough for a waiting request thread to take it


def _heap_trimmer() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none (musl, macOS)."""
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


def _slices(seq: list[Record], n: int = SLICE) -> Any:
    """``seq`` in consecutive slices of at most ``n`` records."""
    return (seq[i:i + n] for i in range(0, len(seq), n))


def _pause() -> None:
    """Let request threads run. ``time.sleep(0)`` would release the GIL too, but the writer usually takes
    it straight back before a woken request thread is scheduled; a short real sleep hands it over."""
    time.sleep(PAUSE_S)


# a record: (index JSON, layout key, rows, block or None, other input columns, outputs); the key is
# (model, version, block columns, input names, output names)
Record = tuple
_META, _KEY, _ROWS, _BLOCK, _OTHERS, _OUTS = range(6)
_others_cache: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[bool, ...]] = {}


def make_record(request_id: str, model: str, version: int, endpoint: str, latency_ms: float,
                inputs: dict[str, Any], outputs: dict[str, Any], n_rows: int, *, block: Any = None,
                block_columns: tuple[str, ...] = (), created_at: datetime | None = None) -> Record:
    """One request's log record, in the compact form the writer joins without per-record Python work.

    ``inputs`` are the normalized columns (``Contract.check``); when ``block`` (the checked float64
    ``[k, N]`` array) is given, the ``block_columns`` are taken from it and only the other columns are kept.
    The index row (request id, endpoint, latency, rows, time) is serialised here, in the request thread."""
    created = (created_at or utcnow()).isoformat(" ", "microseconds")
    meta = orjson.dumps((request_id, endpoint, latency_ms, n_rows, created), option=orjson.OPT_SERIALIZE_NUMPY)
    names = tuple(inputs)
    if block is None:
        block_columns = ()
        others = tuple(inputs.values())
    elif len(block_columns) == len(names):
        others = ()
    else:
        keep = _others_cache.get((names, block_columns))
        if keep is None:
            cols = set(block_columns)
            keep = _others_cache.setdefault((names, block_columns), tuple(n not in cols for n in names))
        others = tuple(v for v, k in zip(inputs.values(), keep) if k)
    return (meta, (model, version, block_columns, names, tuple(outputs)), n_rows, block, others,
            tuple(outputs.values()))


class PredictionLog:
    def __init__(self, store: Any, maxsize: int = 10_000, *, batch_size: int = 5_000, flush_interval: float = 1.0,
                 on_drop: Callable[[], None] | None = None, on_write_error: Callable[[], None] | None = None):
        import pyarrow  # noqa: F401 - imported now, not by the first write (an import holds the GIL ~0.3 s)

        self.store = store
        self.maxsize = maxsize
        self._pending: deque[Record] = deque()
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self.trims = 0  # cycles after which the freed heap went back to the system
        self._trim = _heap_trimmer()
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
            self._pending.append(make_record(request_id, model, version, endpoint, latency_ms, inputs, outputs,
                                             n_rows, block=block, block_columns=block_columns))
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
                if self._drain() and self._trim is not None:
                    self._trim()
                    self.trims += 1
            finally:
                with self._cycles:
                    self._done = cycle
                    self._cycles.notify_all()
            if stopping:
                return

    def _drain(self) -> int:
        """Write everything buffered when the cycle began, ``batch_size`` records a transaction; the number of
        records taken."""
        left = taken = len(self._pending)
        while left > 0:
            take = min(left, self.batch_size)
            left -= take
            # poplefts in C, a slice at a time (a record is never None, so the sentinel never ends it early)
            batch: list[Record] = []
            pop = iter(self._pending.popleft, None)
            while take > 0:
                batch.extend(islice(pop, min(take, SLICE)))
                take -= SLICE
            self._write(batch)
            batch.clear()  # compact records: freeing a window of them takes ~0.1 ms
        return taken

    def _write(self, batch: list[Record]) -> None:
        """One transaction per flush: per model version, one columnar batch row, plus one index row per
        request in a quiet window (a busy one stores them in the batch's ``pending_index``). Everything but
        the inserts is prepared before the transaction (the write lock is held briefly)."""
        from sqlalchemy import insert

        groups: dict[tuple[str, int], list[Record]] = {}  # by model version, in request order
        for part in _slices(batch):
            for key, run in groupby(part, itemgetter(_KEY)):  # C per record, Python once per run of one layout
                groups.setdefault(key[:2], []).extend(run)
        engine = self.store.engine
        defer = len(batch) > INDEX_NOW_MAX
        if not defer:  # a quiet window: catch up on deferred batches first, so the index stays in order
            try:
                index_pending(engine, CATCH_UP_BATCHES)
                defer = has_pending(engine)
            except Exception as e:  # the window's own records are still written (their index rows deferred)
                defer = True
                log.warning("prediction log: deferred index rows not written yet: %s", e)
        try:
            prepared = []
            for (model, version), recs in groups.items():
                data = _encode(recs)
                _pause()
                doc = _index_document(recs)
                created_at = datetime.fromisoformat(orjson.loads(recs[0][_META])[4])
                prepared.append((model, version, created_at, sum(map(itemgetter(_ROWS), recs)), data, doc))
            _pause()
            with engine.begin() as conn:
                for model, version, created_at, n_rows, data, doc in prepared:
                    batch_id = conn.execute(insert(prediction_batches).values(
                        model=model, version=version, n_rows=n_rows, data=data, created_at=created_at,
                        pending_index=doc if defer else None,
                    )).inserted_primary_key[0]
                    if not defer:
                        write_index(conn, model, version, batch_id, doc)
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


def _index_document(recs: list[Record]) -> str:
    """The JSON array of the records' index rows (``[request_id, endpoint, latency_ms, n_rows, created_at]``
    each, serialised by :func:`make_record`): one join a slice, no per-record Python."""
    return (b"[" + b",".join([b",".join(map(itemgetter(_META), part)) for part in _slices(recs)]) + b"]").decode()


def _encode(recs: list[Record]) -> memoryview:
    """Arrow IPC bytes for one model version's records, in order. Consecutive records of one layout (a
    request checked on the vectorised path carries a block; one checked column by column does not) are
    joined with one concatenation per block, other column and output, a slice of :data:`SLICE` records at a
    time (:func:`_add_run`); the slices' parts are joined once per column."""
    _model, _version, _block, names, out_keys = recs[0][_KEY]
    inputs: dict[str, list[Any]] = {name: [] for name in names}
    outputs: dict[str, list[Any]] = {name: [] for name in out_keys}
    for part in _slices(recs):
        for layout, run in groupby(part, itemgetter(_KEY)):
            _add_run(list(run), layout, names, out_keys, inputs, outputs)
    _pause()
    return encode_columns({name: _join(parts) for name, parts in inputs.items()},
                          {name: _join(parts) for name, parts in outputs.items()})


def _add_run(run: list[Record], layout: tuple, names: tuple[str, ...], out_keys: tuple[str, ...],
             inputs: dict[str, list[Any]], outputs: dict[str, list[Any]]) -> None:
    """Append a run of records of one layout (at most :data:`SLICE`) to the columns' parts."""
    _model, _version, block_columns, run_names, run_outs = layout
    if run_names != names or run_outs != out_keys:
        raise ValueError(f"records of one model version with different columns: {run_names} / {run_outs}, "
                         f"then {names} / {out_keys}")
    if block_columns:
        blocks = list(map(itemgetter(_BLOCK), run))
        joined = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
        for name, values in zip(block_columns, joined):
            inputs[name].append(values)
    others = [n for n in names if n not in block_columns]
    for j, name in enumerate(others):
        inputs[name].append(_join(list(map(itemgetter(j), map(itemgetter(_OTHERS), run)))))
    for j, name in enumerate(out_keys):
        outputs[name].append(_join(list(map(itemgetter(j), map(itemgetter(_OUTS), run)))))


def _join(parts: list[Any]) -> np.ndarray:
    """Requests' arrays along rows: one C call when they are arrays, else :func:`concat` (lists, scalars)."""
    if len(parts) > 1:
        try:
            return np.concatenate(parts)
        except ValueError:  # a 0-d part
            pass
    return concat(parts)
