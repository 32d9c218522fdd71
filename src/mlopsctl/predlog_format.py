"""The prediction log's storage format, shared by the server (writer) and monitoring (reader).

Each flush of the log becomes, per model version, one ``prediction_batches`` row holding an Arrow IPC
table of every logged row (normalized inputs, outputs), plus one ``predictions`` row per request that says
where its rows are (batch, offset) — written with the batch, or deferred by a busy server and written by
:func:`index_pending`. Columnar storage lets monitoring read 100,000 rows in one pass instead of decoding
100,000 JSON documents.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

import numpy as np
import orjson

OUT = "@"  # output columns: "@label", "@p0", "@p1", ... or "@prediction"


def concat(parts: list[Any]) -> np.ndarray:
    """Requests' arrays stacked along rows (a scalar counts as one row)."""
    parts = [np.asarray(p) for p in parts]
    parts = [p.reshape(1) if p.ndim == 0 else p for p in parts]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def encode_columns(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> memoryview:
    """Arrow IPC bytes for whole columns: ``inputs`` 1-D per column, ``outputs`` by name (``probabilities``
    ``[N, k]``, the others one value per row).

    Numbers are wrapped, not converted (:func:`_numeric`): the server's writer thread calls this while
    request threads run, and every pyarrow call that releases the GIL costs a thread switch to get it back.
    The bytes are returned as a view of Arrow's buffer, which the database driver stores as a BLOB: no copy
    (a busy window's ~1 MB copy held the GIL)."""
    import pyarrow as pa

    columns: dict[str, Any] = {}
    for name, arr in inputs.items():
        arr = arr.ravel()
        if arr.dtype.kind in "OUS":
            columns[name] = _strings(arr)
        else:
            columns[name] = _numeric(arr, np.float64)
    for key, arr in outputs.items():
        if key == "probabilities":
            arr = arr.reshape(len(arr), -1)
            for j in range(arr.shape[1]):
                columns[f"{OUT}p{j}"] = _numeric(arr[:, j], np.float32)
        elif arr.dtype.kind in "OUS":
            columns[f"{OUT}{key}"] = _strings(arr.ravel())
        elif arr.dtype.kind in "iuf":
            columns[f"{OUT}{key}"] = _numeric(arr.ravel(), arr.dtype)
        elif arr.dtype.kind == "b":  # boolean class labels: Arrow's bit-packed booleans from numpy's bytes
            columns[f"{OUT}{key}"] = pa.Array.from_buffers(
                pa.bool_(), arr.size, [None, pa.py_buffer(np.packbits(arr.ravel(), bitorder="little"))])
        else:
            columns[f"{OUT}{key}"] = pa.array(arr.ravel())
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return memoryview(sink.getvalue())


def _strings(arr: np.ndarray) -> Any:
    """A string Arrow array built from its buffers (UTF-8 bytes and int32 offsets). ``pa.array`` asks
    pyarrow's pandas shim about its argument, which imports pandas (~0.25 s of CPU holding the GIL, ~50
    MiB) in the server's writer thread."""
    import pyarrow as pa

    encoded = [str(v).encode() for v in arr.tolist()]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum(np.array([len(b) for b in encoded], dtype=np.int64), out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def _numeric(arr: np.ndarray, dtype: Any) -> Any:
    """A numeric Arrow array over ``arr``'s memory (``pa.array`` on floats releases and retakes the GIL).
    NaN stays NaN, as with ``pa.array``."""
    import pyarrow as pa

    arr = np.ascontiguousarray(arr, dtype=dtype)
    return pa.Array.from_buffers(pa.from_numpy_dtype(arr.dtype), len(arr), [None, pa.py_buffer(arr)])


def decode(data: bytes) -> Any:
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


@dataclass
class Rows:
    """Logged rows in request order: inputs by column, outputs by name, and each row's request metadata."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]  # "label" / "probabilities" (n, k) / "prediction"
    request_ids: list[str]
    rows: np.ndarray  # row number inside its request
    times: list[Any]
    versions: np.ndarray

    @property
    def n(self) -> int:
        return len(self.request_ids)


def gather(conn: Any, selection: Iterable[tuple[int, int, int, str, Any, int]], columns: list[str]) -> Rows:
    """Read the selected rows. ``selection`` yields ``(batch_id, offset, row, request_id, created_at,
    version)``, one per logged row, in the order wanted; ``conn`` is a SQLAlchemy connection."""
    import pyarrow as pa
    from sqlalchemy import text

    selection = list(selection)
    by_batch: dict[int, list[int]] = defaultdict(list)
    for i, (batch_id, offset, row, *_rest) in enumerate(selection):
        by_batch[batch_id].append(i)
    pieces: list[Any] = []
    order: list[int] = []
    ids = list(by_batch)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ", ".join(f":b{i}" for i in range(len(chunk)))
        result = conn.execute(text(f"SELECT id, data FROM prediction_batches WHERE id IN ({marks})"),
                              {f"b{i}": b for i, b in enumerate(chunk)})
        for batch_id, data in result:
            idx = by_batch[batch_id]
            positions = pa.array([selection[i][1] + selection[i][2] for i in idx], type=pa.int64())
            pieces.append(decode(data).take(positions))
            order.extend(idx)
    n = len(selection)
    if not pieces:
        empty = {c: np.empty(0, dtype=object) for c in columns}
        return Rows(empty, {}, [], np.empty(0, dtype=np.int64), [], np.empty(0, dtype=np.int64))
    table = pa.concat_tables(pieces, promote_options="permissive") if len(pieces) > 1 else pieces[0]
    inverse = np.empty(n, dtype=np.int64)
    inverse[np.asarray(order, dtype=np.int64)] = np.arange(n)
    table = table.take(pa.array(inverse))  # back to the requested order
    inputs = {c: table.column(c).to_numpy(zero_copy_only=False) for c in columns if c in table.column_names}
    outputs: dict[str, np.ndarray] = {}
    probas = sorted((c for c in table.column_names if c.startswith(f"{OUT}p") and c[len(OUT) + 1:].isdigit()),
                    key=lambda c: int(c[len(OUT) + 1:]))
    if probas:
        outputs["probabilities"] = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in probas])
    for c in table.column_names:
        if c.startswith(OUT) and c not in probas:
            outputs[c[len(OUT):]] = table.column(c).to_numpy(zero_copy_only=False)
    return Rows(inputs, outputs, [s[3] for s in selection], np.array([s[2] for s in selection], dtype=np.int64),
                [s[4] for s in selection], np.array([s[5] for s in selection], dtype=np.int64))


def read_requests(store: Any, request_ids: list[str], columns: list[str]) -> dict[str, dict[str, Any]]:
    """What was logged for each request id: ``{"inputs": {col: [...]}, "outputs": {...}}`` (lists)."""
    from sqlalchemy import bindparam, text

    index_pending(store.engine)  # index rows a busy server deferred
    sql = text('SELECT request_id, batch_id, "offset", n_rows, created_at, version FROM predictions '
               "WHERE request_id IN :ids ORDER BY id").bindparams(bindparam("ids", expanding=True))
    with store.engine.connect() as conn:
        reqs = list(conn.execute(sql, {"ids": list(request_ids)}))
        selection = [(b, off, r, rid, at, v) for rid, b, off, n, at, v in reqs for r in range(n)]
        rows = gather(conn, selection, columns)
    out: dict[str, dict[str, Any]] = {}
    start = 0
    for rid, _b, _off, n, _at, _v in reqs:
        sl = slice(start, start + n)
        out[rid] = {"inputs": {c: v[sl].tolist() for c, v in rows.inputs.items()},
                    "outputs": {k: v[sl].tolist() for k, v in rows.outputs.items()}}
        start += n
    return out


# ---- the per-request index (``predictions``) ---------------------------------------------------------------
#
# Every flush stores an index document: a JSON array with one ``[request_id, endpoint, latency_ms, n_rows,
# created_at]`` per request, in request order. A quiet server turns it into ``predictions`` rows in the same
# transaction as the batch; a busy one leaves it in ``prediction_batches.pending_index`` (writing ~1,300
# index rows a second per worker, with their four indexes, was most of the prediction log's cost and the
# bulk of the server's p99 tail), and :func:`index_pending` writes them later: in the server's next quiet
# window, or first thing in every reader (monitoring, feedback, :func:`read_requests`).

PENDING_PER_TRANSACTION = 20  # batches indexed per write transaction (the write lock is held briefly)


INDEX_COLUMNS = ("request_id", "model", "version", "endpoint", "latency_ms", "n_rows", "batch_id", "offset",
                 "created_at")
ROWS_PER_STATEMENT = 1000  # 9,000 parameters (SQLite >= 3.32 takes 32,766; PostgreSQL 65,535)
OLD_SQLITE_ROWS = 100  # 900 parameters: older SQLite libraries stop at 999


def index_rows(model: str, version: int, batch_id: int, doc: str) -> list[tuple]:
    """An index document's rows as ``INDEX_COLUMNS`` tuples (offsets the running sum of the rows before),
    for databases without SQLite's JSON functions."""
    rows, offset = [], 0
    for request_id, endpoint, latency_ms, n_rows, created in orjson.loads(doc):
        rows.append((request_id, model, version, endpoint, latency_ms, n_rows, batch_id, offset,
                     datetime.fromisoformat(created)))
        offset += n_rows
    return rows


def json_index(dialect: Any) -> bool:
    """Whether the index rows go in as one JSON document (SQLite >= 3.38, JSON built in).

    ``executemany`` steps the database once per row, and the sqlite3 module releases and retakes the GIL
    around every step: with request threads busy, each retake waits for a thread switch, so a 1,000-row
    flush took ~0.5 s of wall time and kept interrupting requests. SQLite with JSON support gets one
    statement per flush; other databases multi-row VALUES (one switch per 1,000 rows)."""
    return sqlite_version(dialect) >= (3, 38)


def sqlite_version(dialect: Any) -> tuple[int, ...]:
    """The SQLite library's version; (0,) for other databases."""
    return getattr(dialect.dbapi, "sqlite_version_info", (0,)) if dialect.name == "sqlite" else (0,)


def insert_index_values(conn: Any, rows: list[tuple]) -> None:
    """Any dialect: multi-row ``INSERT ... VALUES``, ``ROWS_PER_STATEMENT`` rows a statement, through the
    column types' own bind processors, so the stored form is SQLAlchemy's."""
    from sqlalchemy import insert

    from mlopsctl.store.tables import predictions as table

    dialect = conn.dialect
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle)
    if mark is None:  # a driver with named parameters: SQLAlchemy's executemany
        conn.execute(insert(table), [dict(zip(INDEX_COLUMNS, r)) for r in rows])
        return
    procs = [table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in INDEX_COLUMNS]
    head = (f"INSERT INTO {dialect.identifier_preparer.format_table(table)} "
            f"({', '.join(dialect.identifier_preparer.quote(c) for c in INDEX_COLUMNS)}) VALUES ")
    one = f"({', '.join([mark] * len(INDEX_COLUMNS))})"
    if any(procs):
        rows = [tuple(p(v) if p else v for p, v in zip(procs, r)) for r in rows]
    per = ROWS_PER_STATEMENT
    if dialect.name == "sqlite" and sqlite_version(dialect) < (3, 32):
        per = OLD_SQLITE_ROWS
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        conn.exec_driver_sql(head + ", ".join([one] * len(chunk)), tuple(v for r in chunk for v in r))


def insert_index_json(conn: Any, model: str, version: int, batch_id: int, doc: str) -> int:
    """SQLite (>= 3.38): every index row of one batch in one statement over its index document, so the
    GIL is released once. A row's offset in the batch is the running sum of the rows before it. Returns
    the number of rows written."""
    from mlopsctl.store.tables import predictions as table

    quote = conn.dialect.identifier_preparer.quote
    columns = ", ".join(quote(c) for c in INDEX_COLUMNS)
    return conn.exec_driver_sql(
        f"INSERT INTO {conn.dialect.identifier_preparer.format_table(table)} ({columns}) "
        "SELECT value ->> 0, ?, ?, value ->> 1, value ->> 2, value ->> 3, ?, "
        "coalesce(sum(value ->> 3) OVER (ORDER BY key ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0), "
        "value ->> 4 FROM json_each(?) ORDER BY key",
        (model, version, batch_id, doc)).rowcount


def write_index(conn: Any, model: str, version: int, batch_id: int, doc: str) -> int:
    """Write one batch's index document as ``predictions`` rows, the fastest way the database allows
    (:func:`json_index`); returns the number of rows."""
    if json_index(conn.dialect):
        return insert_index_json(conn, model, version, batch_id, doc)
    rows = index_rows(model, version, batch_id, doc)
    insert_index_values(conn, rows)
    return len(rows)


def index_pending(engine: Any, max_batches: int | None = None) -> int:
    """Write the deferred index rows of prediction-log batches into ``predictions``, oldest batch first, at
    most ``max_batches`` batches (all when None); returns the number of requests indexed.

    Safe to run from several processes at once: each batch is re-read inside the write transaction (row
    locked where the database has row locks) and its document cleared in the same transaction that writes
    its rows, so no batch is indexed twice or lost."""
    from sqlalchemy import select, update

    from mlopsctl.store.tables import prediction_batches

    B = prediction_batches.c
    indexed = batches = 0
    while max_batches is None or batches < max_batches:
        limit = PENDING_PER_TRANSACTION if max_batches is None else min(PENDING_PER_TRANSACTION, max_batches - batches)
        with engine.connect() as probe:  # a read: no write lock when nothing is pending
            ids = probe.execution_options(mlops_readonly=True).execute(
                select(B.id).where(B.pending_index.is_not(None)).order_by(B.id).limit(limit)).scalars().all()
        if not ids:
            break
        with engine.begin() as conn:
            for batch_id in ids:
                row = conn.execute(select(B.model, B.version, B.pending_index)
                                   .where(B.id == batch_id, B.pending_index.is_not(None)).with_for_update()).first()
                batches += 1
                if row is None:  # another process indexed it meanwhile
                    continue
                model, version, doc = row
                indexed += write_index(conn, model, version, batch_id, doc)
                conn.execute(update(prediction_batches).where(B.id == batch_id).values(pending_index=None))
    return indexed


def has_pending(engine: Any) -> bool:
    """Whether some batch's index rows are still deferred."""
    from sqlalchemy import select

    from mlopsctl.store.tables import prediction_batches as B

    with engine.connect() as conn:
        return conn.execution_options(mlops_readonly=True).execute(
            select(B.c.id).where(B.c.pending_index.is_not(None)).limit(1)).first() is not None
