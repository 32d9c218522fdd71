"""Inference for every protocol: check the columns against the served version's contract, score them,
log the prediction."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from mlopsctl.contract_check import check
from mlopsctl.errors import InvalidInputError, PayloadTooLarge
from mlopsctl.serving.runtime import ServedModel
from mlopsctl.serving.state import ServerState


@dataclass
class Inference:
    served: ServedModel
    outputs: dict[str, np.ndarray]
    n_rows: int
    warnings: list[str]


def infer(st: ServerState, served: ServedModel, columns: dict[str, Any], n_rows: int, endpoint: str,
          request_id: str | Callable[[], str], *, block: Any = None) -> Inference:
    """Check ``columns`` against ``served``'s contract, score them with its session and log the prediction
    under ``request_id``: the request's id, or the function that makes it (a Flask route's
    :func:`~mlopsctl.serving.http.request_id`, whose first call also sends the id back in X-Request-ID),
    called only when a prediction is logged. ``served`` is the snapshot the request read when it started (``st.model``), the
    one its input was decoded for, even if the alias has moved since; ``block``: the numeric and boolean
    columns already converted (float64 ``[k, N]``, in its contract's ``numeric_names`` order). The empty
    batch, a batch over ``serve.max_batch_rows`` and a contract error raise (a 400 or 413 in the route's
    protocol)."""
    serve = st.settings.serve
    if n_rows == 0:
        raise InvalidInputError("the request holds no rows; send at least one.")
    if n_rows > serve.max_batch_rows:
        raise PayloadTooLarge(f"the request holds {n_rows} rows; the limit is {serve.max_batch_rows} (serve.max_batch_rows).")
    t0 = time.perf_counter()
    contract = served.contract
    checked = check(contract, columns, block=block, unknown_category=serve.unknown_category,
                    extra_columns=serve.extra_columns, unseen_nulls=serve.unseen_nulls, out_of_range=serve.out_of_range,
                    range_tolerance=serve.range_tolerance, max_errors=5)
    if checked.errors:
        e = checked.errors[0]
        more = f" (and {checked.n_bad - 1} more row(s))" if checked.n_bad > 1 else ""
        raise InvalidInputError(f"{e.message} at row {e.row}{more}.")
    warnings = [f"{w.message} at row {w.row}" for w in checked.warnings]
    for w in checked.warnings:
        st.metrics.warnings.labels(w.column).inc()
    outputs = served.scorer.run_feeds(contract.onnx_feeds(checked.normalized, checked.block))
    st.metrics.rows_scored(served.name, served.version, n_rows)
    if st.predlog is not None:
        st.predlog.submit(request_id if isinstance(request_id, str) else request_id(), served.name, served.version, endpoint, (time.perf_counter() - t0) * 1000,
                          checked.normalized, outputs, n_rows, block=checked.block, block_columns=checked.block_columns)
    return Inference(served, outputs, n_rows, warnings)
