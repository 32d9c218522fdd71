"""The prediction log under gunicorn: workers hand their records to one log writer process.

A writer thread inside a worker shares that worker's GIL with the request thread: preparing and writing a
second's records (concatenating them, building the Arrow batch and the index, freeing ~40 objects per
record) kept requests waiting for the GIL, and measured live it was most of the gap between the server's
p99 with logging on and off. So under gunicorn the master forks one log writer process before the workers
(:func:`start_sink`). In a worker the request thread packs its record into a few hundred bytes
(:func:`pack`: typed msgspec, no pickle, ~5 µs) and appends them to a bounded buffer (:class:`LogClient`);
a sender thread ships the buffer every ``SEND_INTERVAL`` over a Unix socket, one ``sendall`` per batch,
which runs without the GIL. The writer process unpacks the frames (:func:`unpack`) into the same
:class:`~mlopsctl.serving.predlog.PredictionLog` that ``--dev`` and the tests use in-process, so batching,
the stored format and the drop and failure counts are one code.

Nothing is lost at a stop: each worker sends what it holds when it exits (gunicorn's ``worker_exit``), and
the writer process keeps reading until the master and every worker have gone (the control pipe's write
end is open in all of them), then writes what it holds and exits. A full buffer in a worker or in the
writer drops the record and counts it (``mlops_prediction_log_dropped_total``); a writer that cannot be
reached counts the records as write errors and the worker reconnects on its next send.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from datetime import datetime
from itertools import chain
from typing import Any, Callable

import msgspec
import numpy as np

from mlopsctl.predlog_format import concat, encode_columns
from mlopsctl.serving.predlog import LogRecord, PredictionLog, RecordBuffer, encode_records
from mlopsctl.store.models import utcnow

log = logging.getLogger("mlopsctl.serve")

SEND_INTERVAL = 0.05  # seconds between a worker's sends (one syscall per batch)
SEND_TIMEOUT = 10.0  # a writer that takes no data for this long counts as gone
HEADER = 4  # little-endian frame length
MAX_FRAME = 1 << 30  # a longer length means a corrupt stream
NICE = 10  # the writer's CPU priority below the workers': see start_sink
STOP_GRACE_S = 30.0  # after the master stops: how long to wait for workers that still hold a connection
SOCKET_NAME = "predlog.sock"


class _Array(msgspec.Struct, array_like=True):
    dtype: str  # numpy's dtype string; "O" for Python objects, sent as a list of values
    shape: tuple[int, ...]
    data: bytes = b""
    values: list[Any] = []


class _Frame(msgspec.Struct, array_like=True):
    """One request's record. It has the attributes the writer's index rows read (``_index_rows``)."""
    request_id: str
    model: str
    version: int
    endpoint: str
    latency_ms: float
    n_rows: int
    created_at: datetime  # naive UTC (utcnow()'s form)
    names: list[str]  # the input columns, in the contract's order
    block_columns: list[str]
    block: _Array | None  # the checked numeric block, sent as [rows, columns] so that requests join by bytes
    columns: dict[str, _Array]  # the inputs outside the block
    outputs: dict[str, _Array]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Frame)


def _array(a: Any) -> _Array:
    a = np.asarray(a)
    if a.dtype.kind == "O":
        return _Array("O", a.shape, values=a.ravel().tolist())
    return _Array(a.dtype.str, a.shape, data=a.tobytes())


def _dtype(name: str) -> np.dtype:
    dtype = np.dtype(name)
    if dtype.kind not in "biufcUSmM":
        raise ValueError(f"unexpected array type {name!r}")
    return dtype


def _numpy(a: _Array) -> np.ndarray:
    if a.dtype == "O":
        out = np.empty(len(a.values), dtype=object)
        out[:] = a.values
        return out.reshape(a.shape)
    return np.frombuffer(a.data, dtype=_dtype(a.dtype)).reshape(a.shape)


def _joined(arrays: list[_Array]) -> np.ndarray:
    """Several requests' arrays stacked along rows, from their buffers (one join, one ``frombuffer``)."""
    first = arrays[0]
    rest = first.shape[1:]
    if any(a.dtype != first.dtype or a.shape[1:] != rest for a in arrays):
        return concat([_numpy(a) for a in arrays])
    if first.dtype == "O":
        values = list(chain.from_iterable(a.values for a in arrays))
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out.reshape((-1, *rest))
    return np.frombuffer(b"".join([a.data for a in arrays]), dtype=_dtype(first.dtype)).reshape((-1, *rest))


def pack(request_id: str, model: str, version: int, endpoint: str, latency_ms: float, inputs: dict[str, Any],
         outputs: dict[str, Any], n_rows: int, block: Any = None, block_columns: tuple[str, ...] = ()) -> bytes:
    """One record as a length-prefixed frame (what :meth:`PredictionLog.submit` takes, stamped now)."""
    in_block = frozenset(block_columns) if block is not None else frozenset()
    frame = _Frame(request_id, model, version, endpoint, latency_ms, n_rows, utcnow(), list(inputs),
                   list(block_columns) if block is not None else [],
                   _array(block.T) if block is not None else None,
                   {k: _array(v) for k, v in inputs.items() if k not in in_block},
                   {k: _array(v) for k, v in outputs.items()})
    body = _encoder.encode(frame)
    return len(body).to_bytes(HEADER, "little") + body


def unpack(body: bytes | bytearray) -> LogRecord:
    """A frame's body (without its length) back as the record :meth:`PredictionLog.submit` makes."""
    return _record(_decoder.decode(body))


def _record(f: _Frame) -> LogRecord:
    block = np.ascontiguousarray(_numpy(f.block).T) if f.block is not None else None
    values: dict[str, Any] = dict(zip(f.block_columns, block)) if block is not None else {}
    values.update((k, _numpy(a)) for k, a in f.columns.items())
    return LogRecord(f.request_id, f.model, f.version, f.endpoint, f.latency_ms, {n: values[n] for n in f.names},
                     {k: _numpy(a) for k, a in f.outputs.items()}, f.n_rows, f.created_at, block,
                     tuple(f.block_columns))


def encode_frames(frames: list[_Frame]) -> bytes:
    """What :func:`~mlopsctl.serving.predlog.encode_records` makes of the same requests' records, built from the frames' buffers: per
    column one join of bytes instead of one array per request and column."""
    first = frames[0]
    if not all(f.names == first.names and f.block_columns == first.block_columns
               and (f.block is None) == (first.block is None) and f.outputs.keys() == first.outputs.keys()
               for f in frames):
        return encode_records([_record(f) for f in frames])
    inputs: dict[str, Any] = {}
    if first.block is not None:
        inputs.update(zip(first.block_columns, np.ascontiguousarray(_joined([f.block for f in frames]).T)))
    for name in first.names:
        if name not in inputs:
            inputs[name] = _joined([f.columns[name] for f in frames])
    outputs = {key: _joined([f.outputs[key] for f in frames]) for key in first.outputs}
    return encode_columns({name: inputs[name] for name in first.names}, outputs)


class FrameLog(PredictionLog):
    """The writer process's log: it holds the frames as they arrived and encodes each flush from them."""

    def encode(self, recs: list[Any]) -> bytes:
        return encode_frames(recs)


class LogClient(RecordBuffer):
    """A worker's side: records packed in the request thread, sent to the log writer process in batches."""

    def __init__(self, path: str, maxsize: int = 10_000, *, interval: float = SEND_INTERVAL,
                 on_drop: Callable[[], None] | None = None, on_write_error: Callable[[int], None] | None = None):
        self.path = path
        self._sock: socket.socket | None = None
        super().__init__(maxsize, interval, on_drop, on_write_error)

    def submit(self, request_id: str, model: str, version: int, endpoint: str, latency_ms: float,
               inputs: dict[str, Any], outputs: dict[str, Any], n_rows: int, *, block: Any = None,
               block_columns: tuple[str, ...] = ()) -> bool:
        try:
            frame = pack(request_id, model, version, endpoint, latency_ms, inputs, outputs, n_rows, block,
                         block_columns)
        except (TypeError, ValueError, msgspec.EncodeError) as e:  # a value msgpack cannot carry
            self.failed(1, e)
            return False
        return self.offer(frame)

    def _drain(self) -> None:
        n = len(self._pending)
        if not n:
            return
        pop = self._pending.popleft
        data = b"".join([pop() for _ in range(n)])
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(SEND_TIMEOUT)
                self._sock.connect(self.path)
            self._sock.sendall(data)
            self.written += n
        except OSError as e:
            self._disconnect()
            self.failed(n, OSError(f"the log writer process at {self.path} is not reachable ({e})"))

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _stopped(self) -> None:
        self._disconnect()


# ---- the writer process -------------------------------------------------------------------------------

class Sink:
    """The master's handle on the log writer process."""

    def __init__(self, pid: int, path: str, control: int):
        self.pid, self.path, self._control = pid, path, control

    def stop(self, timeout: float = STOP_GRACE_S + 10) -> int | None:
        """Let the writer finish (it writes what it holds once every worker has gone); its exit status,
        or None when it had to be killed. Call after the workers have stopped."""
        os.close(self._control)
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # already reaped (gunicorn's master reaps any child that exits)
                return 0
            if pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                log.error("prediction log writer (pid %d) did not finish in %.0f s; killed", self.pid, timeout)
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                return None
            time.sleep(0.05)


def start_sink(settings: Any, directory: str) -> Sink:
    """Fork the log writer process, listening on ``directory``/predlog.sock. Call in the master before the
    workers exist: they inherit the control pipe's write end, so the writer stops only after all of them."""
    path = os.path.join(directory, SOCKET_NAME)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer process
        code = 1
        try:
            os.close(write_end)
            # Ctrl-C and SIGTERM reach the whole process group: the writer outlives the workers' last sends
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            # a flush is a burst of CPU (~15 µs a record, once a second): at the workers' priority it took a
            # core from them for its length and the requests meanwhile made the p99; at a lower priority it
            # runs in the gaps (nice 10: still ~10 % of a busy core, several times what it needs)
            os.nice(NICE)
            serve_sink(listener, read_end, settings)
            code = 0
        except BaseException:
            log.exception("prediction log writer failed")
        finally:
            os._exit(code)
    os.close(read_end)
    listener.close()
    return Sink(pid, path, write_end)


def serve_sink(listener: socket.socket, control: int, settings: Any) -> None:
    """The writer process's loop: accept workers, read their frames into a PredictionLog, and stop once the
    control pipe reports end of file and every worker connection has closed."""
    from mlopsctl.serving.metrics import Metrics
    from mlopsctl.store.db import open_store

    serve = settings.serve
    store = open_store(settings.store_url, settings.store.busy_timeout_ms)
    metrics = Metrics()
    plog = FrameLog(store, serve.log_queue_size, flush_interval=serve.log_flush_seconds,
                         on_drop=metrics.log_dropped.inc, on_write_error=metrics.log_write_errors.inc)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(control, selectors.EVENT_READ)
    buffers: dict[socket.socket, bytearray] = {}
    give_up = None  # set once the control pipe closes
    try:
        while give_up is None or buffers:
            for key, _ in sel.select(timeout=0.5):
                if key.fileobj is listener:
                    conn, _ = listener.accept()
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                    buffers[conn] = bytearray()
                elif key.fileobj == control:
                    if not os.read(control, 1):
                        sel.unregister(control)
                        give_up = time.monotonic() + STOP_GRACE_S
                else:
                    _receive(key.fileobj, buffers, sel, plog)  # type: ignore[arg-type]
            metrics.queue_depth.set(plog.depth())
            if give_up is not None and buffers and time.monotonic() > give_up:
                log.error("prediction log writer: %d worker connection(s) still open after the stop; not waiting",
                          len(buffers))
                break
    finally:
        plog.close(timeout=60)
        store.dispose()
        if metrics.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


def _receive(conn: socket.socket, buffers: dict[socket.socket, bytearray], sel: selectors.BaseSelector,
             plog: PredictionLog) -> None:
    buf = buffers[conn]
    try:
        data = conn.recv(1 << 20)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if data:
        buf += data
        try:
            _frames(buf, plog)
            return
        except (ValueError, msgspec.DecodeError, KeyError) as e:
            plog.failed(1, ValueError(f"a worker sent a corrupt frame ({e}); its connection is closed"))
    elif buf:
        plog.failed(1, ValueError(f"a worker's connection ended inside a frame ({len(buf)} bytes)"))
    sel.unregister(conn)
    conn.close()
    del buffers[conn]


def _frames(buf: bytearray, plog: PredictionLog) -> None:
    """Hand every complete frame in ``buf`` to ``plog`` and keep the incomplete rest."""
    pos = 0
    while len(buf) - pos >= HEADER:
        n = int.from_bytes(buf[pos:pos + HEADER], "little")
        if n > MAX_FRAME:
            raise ValueError(f"frame length {n}")
        if len(buf) - pos - HEADER < n:
            break
        plog.offer(_decoder.decode(buf[pos + HEADER:pos + HEADER + n]))
        pos += HEADER + n
    del buf[:pos]
