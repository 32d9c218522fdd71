"""The prediction log's writer process (serving/logsink.py): workers pack records and send them over a Unix
socket; the writer unpacks them into the store. Real sockets, a real store, the real writer loop (run in a
thread here; the server forks it — tests/test_serving_server.py drives that through gunicorn)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from served_projects import make_served_project, module_isolation, training_records


@pytest.fixture(scope="module")
def ch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The churn example (numbers, categories, missing values) trained, registered, promoted."""
    from mlopsctl.store import db

    root = tmp_path_factory.mktemp("logsink")
    with module_isolation(root):
        project = make_served_project(root, "churn", "ch", "{ max_iter = 20 }")
    db.close_all()
    return project


@pytest.fixture
def run_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="ls-")  # short: a Unix socket path has ~100 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@contextmanager
def writer(settings: Any, directory: str) -> Iterator[str]:
    """``serve_sink`` on ``directory``/predlog.sock in a thread; leaving the block closes the control pipe,
    as the master does, and waits for the writer to finish."""
    from mlopsctl.serving.logsink import SOCKET_NAME, serve_sink

    path = os.path.join(directory, SOCKET_NAME)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    read_end, write_end = os.pipe()
    t = threading.Thread(target=serve_sink, args=(listener, read_end, settings), daemon=True)
    t.start()
    try:
        yield path
    finally:
        os.close(write_end)
        t.join(60)
        assert not t.is_alive(), "the writer did not stop after the control pipe closed"
        listener.close()
        os.close(read_end)


def _record(i: int, rows: int = 1, model: str = "m") -> dict[str, Any]:
    """The arguments a request hands to ``submit``: a numeric block, a category with a null, a label."""
    block = np.arange(2 * rows, dtype=np.float64).reshape(2, rows) + i
    plan = np.empty(rows, dtype=object)
    plan[:] = [None if (i + r) % 3 == 0 else f"plan-{i + r}" for r in range(rows)]
    return dict(request_id=f"req-{i:04d}", model=model, version=3, endpoint="predict", latency_ms=0.5 + i,
                inputs={"age": block[0], "plan": plan, "tenure": block[1]},
                outputs={"label": np.array(["yes"] * rows, dtype=object),
                         "probabilities": np.full((rows, 2), 0.25, dtype=np.float32)},
                n_rows=rows, block=block, block_columns=("age", "tenure"))


def _pack(rec: dict[str, Any]) -> bytes:
    from mlopsctl.serving.logsink import pack

    return pack(**rec)


def test_pack_unpack_keeps_every_value_type_and_order():
    from mlopsctl.serving.logsink import HEADER, unpack
    from mlopsctl.serving.predlog import encode_records
    from mlopsctl.store.models import utcnow

    for rec in (_record(1), _record(2, rows=7),
                {**_record(3), "block": None, "block_columns": (),  # the general path: no block
                 "outputs": {"label": np.array([1], dtype=np.int64), "probabilities": np.array([[0.5, 0.5]])}}):
        frame = _pack(rec)
        assert int.from_bytes(frame[:HEADER], "little") == len(frame) - HEADER
        got = unpack(frame[HEADER:])
        assert (got.request_id, got.model, got.version, got.endpoint, got.latency_ms, got.n_rows) == (
            rec["request_id"], "m", 3, "predict", rec["latency_ms"], rec["n_rows"])
        assert list(got.inputs) == ["age", "plan", "tenure"]  # the contract's order survives
        for name, want in rec["inputs"].items():
            assert got.inputs[name].dtype == want.dtype and got.inputs[name].tolist() == want.tolist(), name
        for key, want in rec["outputs"].items():
            assert got.outputs[key].dtype == want.dtype and got.outputs[key].tolist() == want.tolist(), key
        assert got.block_columns == rec["block_columns"]
        assert (got.block is None) == (rec["block"] is None)
        assert abs((utcnow() - got.created_at).total_seconds()) < 5
        # what the store receives is the same bytes either way
        from mlopsctl.serving.predlog import LogRecord

        original = LogRecord(**{k: v for k, v in rec.items()}, created_at=got.created_at)
        assert encode_records([got]) == encode_records([original])


def test_a_flush_encoded_from_frames_is_what_the_records_encode_to():
    """The writer process encodes a flush straight from the frames' buffers; the stored bytes are those the
    in-process log makes of the same records — uniform batches and mixed ones (the general way)."""
    from mlopsctl.serving.logsink import HEADER, _decoder, encode_frames, unpack
    from mlopsctl.serving.predlog import encode_records

    uniform = [_record(i, rows=1 + i % 3) for i in range(12)]
    no_block = [{**r, "block": None, "block_columns": ()} for r in uniform[:3]]
    int_label = {**_record(20), "outputs": {"label": np.array([7], dtype=np.int64),
                                           "probabilities": np.array([[0.5, 0.5]], dtype=np.float32)}}
    for batch in (uniform, uniform[:1], no_block, uniform[:4] + no_block, uniform[:2] + [int_label]):
        bodies = [_pack(r)[HEADER:] for r in batch]
        frames = [_decoder.decode(b) for b in bodies]
        assert encode_frames(frames) == encode_records([unpack(b) for b in bodies])


def test_frames_split_anywhere_in_the_stream_come_out_whole_and_in_order():
    from mlopsctl.serving.logsink import _frames

    class Sink(list):
        def offer(self, rec):
            self.append(rec)

    stream = b"".join(_pack(_record(i, rows=1 + i % 4)) for i in range(30))
    rng = random.Random(7)
    for _ in range(5):
        out, buf, pos = Sink(), bytearray(), 0
        while pos < len(stream):
            step = rng.choice([1, 2, 3, 17, 100, 4096])
            buf += stream[pos:pos + step]
            pos += step
            _frames(buf, out)
        assert [r.request_id for r in out] == [f"req-{i:04d}" for i in range(30)] and not buf


def test_unpack_refuses_object_memory_and_bad_lengths():
    import msgspec

    from mlopsctl.serving.logsink import HEADER, _frames, unpack

    frame = bytearray(_pack(_record(1)))
    frame = frame.replace(b"<f8", b"|O8", 1)  # the block claims to hold Python objects
    with pytest.raises(ValueError):
        unpack(bytes(frame[HEADER:]))
    with pytest.raises((ValueError, msgspec.DecodeError)):
        unpack(b"\x93junk")
    with pytest.raises(ValueError, match="frame length"):
        _frames(bytearray(b"\xff\xff\xff\xff" + b"x" * 10), None)


def test_two_workers_records_reach_the_store_through_the_writer(ch, run_dir):
    """Two apps (as two gunicorn workers) log through one writer: every request is in the store when the
    writer stops, under its id, and reads back exactly as the in-process log stores the same request
    (numbers, categories, nulls, outputs)."""
    from mlopsctl.config import load_settings
    from mlopsctl.predlog_format import read_requests
    from mlopsctl.serving.app import create_app
    from mlopsctl.serving.logsink import LogClient
    from mlopsctl.serving.predlog import PredictionLog
    from mlopsctl.store.db import open_store

    settings = load_settings({}, {}, ch)
    records = training_records(ch, "churned", 60)
    assert any(v is None for r in records for v in r.values())
    bodies: dict[int, list] = {}
    with writer(settings, run_dir) as path:
        apps = [create_app(settings, "ch@production", watch=False, log_sink=path) for _ in range(2)]
        local = create_app(settings, "ch@production", watch=False)  # the in-process log: the reference
        assert all(isinstance(a.extensions["mlopsctl"].predlog, LogClient) for a in apps)
        assert isinstance(local.extensions["mlopsctl"].predlog, PredictionLog)
        for i in range(0, 60, 3):
            bodies[i] = records[i:i + 3] if i else records[:1] * 4000  # and one request of 4,000 rows
            for app, rid in ((apps[(i // 3) % 2], f"w-{i}"), (local, f"p-{i}")):
                resp = app.test_client().post("/predict", json={"records": bodies[i]}, headers={"X-Request-ID": rid})
                assert resp.status_code == 200, resp.get_json()
        for app in (*apps, local):
            app.extensions["mlopsctl"].holder.stop()
            log = app.extensions["mlopsctl"].predlog
            log.close()
            assert (log.written, log.dropped, log.write_errors) == ((10, 0, 0) if app is not local else (20, 0, 0))
    store = open_store(settings.store_url, settings.store.busy_timeout_ms)
    names = list(records[0])
    logged = read_requests(store, [f"{k}-{i}" for i in bodies for k in "wp"], names)
    assert len(logged) == 2 * len(bodies)
    for i, body in bodies.items():
        via_writer, in_process = logged[f"w-{i}"], logged[f"p-{i}"]
        assert via_writer["outputs"] == in_process["outputs"] and len(via_writer["outputs"]["label"]) == len(body)
        assert _nan_as_none(via_writer["inputs"]) == _nan_as_none(in_process["inputs"]), i
        assert _nan_as_none(via_writer["inputs"])["age"] == [r["age"] for r in body]


def _nan_as_none(columns: dict[str, list]) -> dict[str, list]:
    return {k: [None if isinstance(v, float) and v != v else v for v in vs] for k, vs in columns.items()}


def test_unreachable_writer_counts_write_errors_then_the_worker_reconnects(ch, run_dir, caplog):
    from mlopsctl.config import load_settings
    from mlopsctl.serving.logsink import SOCKET_NAME, LogClient
    from mlopsctl.store.db import open_store

    failed: list[int] = []
    client = LogClient(os.path.join(run_dir, SOCKET_NAME), on_write_error=failed.append, interval=3600)
    try:
        for i in range(3):
            assert client.submit(**_record(i, model="unreachable"))  # buffered: the request never sees the writer's state
        assert client.flush()
        assert (client.written, client.write_errors, failed) == (0, 3, [3])
        client.submit(**_record(9, model="unreachable"))
        assert client.flush()
        assert (client.write_errors, failed) == (4, [3, 1])
        said = [r.getMessage() for r in caplog.records if "could not be written" in r.getMessage()]
        assert len(said) == 1 and "not reachable" in said[0]  # counted every time, said once per 5 s
        settings = load_settings({}, {}, ch)
        with writer(settings, run_dir):
            for i in range(3, 5):
                client.submit(**_record(i, model="unreachable"))
            assert client.flush()
            assert (client.written, client.write_errors) == (2, 4)
            client.close()
    finally:
        client.close()
    store = open_store(settings.store_url, settings.store.busy_timeout_ms)
    with store.engine.connect() as conn:
        ids = [r[0] for r in conn.exec_driver_sql("SELECT request_id FROM predictions WHERE model = 'unreachable'")]
    assert sorted(ids) == ["req-0003", "req-0004"]


def test_full_buffer_drops_and_counts_and_unencodable_values_are_counted(run_dir):
    from mlopsctl.serving.logsink import LogClient

    drops: list[int] = []
    errors: list[int] = []
    client = LogClient(os.path.join(run_dir, "none.sock"), maxsize=2, interval=3600,
                       on_drop=lambda: drops.append(1), on_write_error=errors.append)
    try:
        assert [client.submit(**_record(i)) for i in range(5)] == [True, True, False, False, False]
        assert (client.dropped, len(drops), client.depth()) == (3, 3, 2)
        odd = _record(9)
        odd["inputs"]["plan"] = np.array([object()], dtype=object)  # not something msgpack carries
        assert client.submit(**odd) is False
        assert (client.write_errors, errors) == (1, [1])
    finally:
        client.close(timeout=1)


def test_a_corrupt_stream_closes_only_that_connection(ch, run_dir):
    from mlopsctl.config import load_settings
    from mlopsctl.serving.logsink import LogClient
    from mlopsctl.store.db import open_store

    settings = load_settings({}, {}, ch)
    with writer(settings, run_dir) as path:
        bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bad.connect(path)
        bad.sendall(b"\x05\x00\x00\x00xxxxx")
        assert bad.recv(1) == b""  # the writer hung up on it
        bad.close()
        good = LogClient(path, interval=3600)
        good.submit(**_record(42, model="corrupt"))
        good.close()
        assert good.written == 1
    store = open_store(settings.store_url, settings.store.busy_timeout_ms)
    with store.engine.connect() as conn:
        assert [r[0] for r in conn.exec_driver_sql("SELECT request_id FROM predictions WHERE model = 'corrupt'")] == [
            "req-0042"]
