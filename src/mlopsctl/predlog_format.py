"""The prediction log's storage format, shared by the server (writer) and monitoring (reader).

Each flush of the log becomes, per model version, one ``prediction_batches`` row holding an Arrow IPC
table of every logged row (normalized inputs, outputs), plus one ``predictions`` row per request that says
where its rows are (batch, offset). Columnar storage lets monitoring read 100,000 rows in one pass instead
of decoding 100,000 JSON documents.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

OUT = "@"  # output columns: "@label", "@p0", "@p1", ... or "@prediction"


def concat(parts: list[Any]) -> np.ndarray:
    """Requests' arrays stacked along rows (a scalar counts as one row)."""
    parts = [np.asarray(p) for p in parts]
    parts = [p.reshape(1) if p.ndim == 0 else p for p in parts]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def encode_columns(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> bytes:
    """Arrow IPC bytes for whole columns: ``inputs`` 1-D per column, ``outputs`` by name (``probabilities``
    ``[N, k]``, the others one value per row).

    Numbers are wrapped, not converted (:func:`_numeric`): the server's writer thread calls this while
    request threads run, and every pyarrow call that releases the GIL costs a thread switch to get it back."""
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
        else:
            columns[f"{OUT}{key}"] = pa.array(arr.ravel())
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


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
