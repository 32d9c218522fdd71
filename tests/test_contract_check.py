"""The serving hot path (issues 4 and 6; one path each since issue 15).

* The contract checker builds the numeric and boolean columns into one float64 block, in one numpy call
  when every value converts and column by column otherwise (numeric text, booleans as words, the values
  that do not convert marked); either way it normalizes alike, and it words whatever a rule flags with the
  row and the column. A block the caller passes (``block=``) is taken as is.
* The records decoder: its general path (``RecordsDecoder.records``) converts the numeric columns of parsed
  records into that block, and what the contract then decides is exactly what it decides on plain
  per-column lists; its entry point (``RecordsDecoder.decode``) parses bodies inside its strict types
  straight into typed rows, decides alike, and leaves every unusual body (malformed, wrong types, missing
  or extra keys; for MLflow any other member) to the route's general path.
* ``PredictionLog`` writes in time windows (one transaction for a burst), ``flush`` cuts the window short,
  the per-request index rows written with multi-row INSERTs read back through SQLAlchemy unchanged, and
  records with and without a checked block share a batch.
* Request ids are 32 hex digits and sort in the order they were made (the log's index grows at one edge).
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlopsctl.contract import ColumnSpec, Contract
from mlopsctl.contract_check import check
from mlopsctl.errors import InvalidInputError
from mlopsctl.predlog_format import read_requests
from mlopsctl.store.db import open_store
from mlopsctl.store.models import PredictionBatch, PredictionRecord, utcnow

N = 40


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract(target="y", task="classification", classes=("a", "b"), columns=(
        ColumnSpec("x", "numeric", "float64", min=0.0, max=10.0),
        ColumnSpec("gappy", "numeric", "float64", null_rate=0.2, min=-5.0, max=5.0),
        ColumnSpec("flag", "boolean", "bool"),
        ColumnSpec("plan", "categorical", "object", null_rate=0.3, categories=("basic", "pro")),
        ColumnSpec("free", "numeric", "float64"),  # no recorded range: never out of range
    ))


def _data(seed: int = 0) -> dict[str, list[Any]]:
    rng = np.random.default_rng(seed)
    gappy = [None if i % 7 == 0 else float(v) for i, v in enumerate(rng.uniform(-5, 5, N))]
    return {"x": rng.uniform(0, 10, N).tolist(), "gappy": gappy, "flag": [bool(v) for v in rng.integers(0, 2, N)],
            "plan": [["basic", "pro", None][i % 3] for i in range(N)], "free": (rng.normal(size=N) * 1e6).tolist()}


POLICIES = dict(unknown_category="reject", extra_columns="reject", unseen_nulls="reject", out_of_range="reject")


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and (
        a.tolist() == b.tolist() if a.dtype == object else bool(np.array_equal(a, b, equal_nan=True)))


def test_the_block_built_at_once_equals_the_one_built_column_by_column(contract):
    data = _data()
    at_once = contract.check(data, **POLICIES)
    # the same values, with the booleans as words: the block cannot be built in one call, so every numeric
    # column is converted on its own (pandas parses the words) and the columns are stacked
    by_column = contract.check({**data, "flag": ["yes" if v else "no" for v in data["flag"]]}, **POLICIES)
    assert at_once.errors == by_column.errors == [] and at_once.warnings == by_column.warnings == []
    assert at_once.block_columns == by_column.block_columns == ("x", "gappy", "flag", "free")
    assert _same(at_once.block, by_column.block) and at_once.block.shape == (4, N)
    assert list(at_once.normalized) == list(by_column.normalized) == contract.feature_names  # column order kept
    for name in contract.feature_names:
        a, b = at_once.normalized[name], by_column.normalized[name]
        assert _same(a, b) and a.shape == (N,), name
    assert np.isnan(at_once.normalized["gappy"][0]) and at_once.normalized["plan"][2] == ""
    # one feed builder: from the block in one conversion, or column by column; the same feeds
    feeds, reference = contract.onnx_feeds(at_once.normalized, at_once.block), contract.onnx_feeds(by_column.normalized)
    assert list(feeds) == list(reference)
    for name, arr in feeds.items():
        assert arr.shape == (N, 1) and arr.dtype == reference[name].dtype and arr.flags.c_contiguous, name
        np.testing.assert_array_equal(arr, reference[name])


def test_a_block_passed_by_the_caller_is_taken_as_is(contract):
    data = _data()
    built = contract.check(data)
    given = check(contract, data, block=built.block.copy())
    assert _same(given.block, built.block) and given.errors == [] and given.block_columns == built.block_columns
    for name in contract.feature_names:
        assert _same(given.normalized[name], built.normalized[name]), name
    # the block decides, not the lists beside it (the server's decoders build both from the same values)
    data_x = {**data, "x": ["ignored"] * N}
    assert contract.check(data_x).errors and not check(contract, data_x, block=built.block).errors
    with pytest.raises(ValueError, match=r"block must be float64 \[4, N\]"):
        check(contract, data, block=built.block[:3])


@pytest.mark.parametrize("value, row, policy, expect", [
    (25.0, 3, dict(out_of_range="flag"), ("warning", "x", "far outside the training range [0, 10]")),
    (25.0, 3, dict(out_of_range="reject"), ("error", "x", "far outside the training range [0, 10]")),
    (-10.5, 5, dict(out_of_range="reject"), ("error", "x", "(accepted: [-10, 20])")),
    (None, 6, dict(unseen_nulls="reject"), ("error", "x", "is null, but it had no nulls in training")),
    ("abc", 2, {}, ("error", "x", "must be numeric, got 'abc'")),
])
def test_anything_flagged_is_worded_with_its_row_and_column(contract, value, row, policy, expect):
    data = _data()
    data["x"][row] = value
    checked = contract.check(data, **policy)
    kind, column, words = expect
    found = checked.warnings if kind == "warning" else checked.errors
    assert [(e.row, e.column) for e in found] == [(row, column)]
    assert words in found[0].message
    if kind == "error":
        assert checked.bad_rows.tolist() == [i == row for i in range(N)]
    assert _same(checked.block[0], checked.normalized["x"])  # the flagged column is still the block's row


def test_range_edges_are_the_per_column_rule(contract):
    """x spans [0, 10]: with tolerance 0.5 the accepted interval is [-5, 15], edges included."""
    for value, flagged in ((15.0, False), (-5.0, False), (15.000001, True), (-5.000001, True)):
        data = _data()
        data["x"][0] = value
        checked = contract.check(data, out_of_range="flag", range_tolerance=0.5)
        assert len(checked.warnings) == int(flagged), value


def test_nulls_allowed_where_training_had_them_and_accept_policies_flag_nothing(contract):
    data = _data()
    data["x"][1] = None  # x had no nulls in training; accepted under the default policy
    data["x"][2] = 1e9  # far out of range; accepted under the default policy
    checked = contract.check(data)
    assert checked.block is not None and checked.errors == [] and checked.warnings == []
    assert np.isnan(checked.normalized["x"][1]) and checked.normalized["x"][2] == 1e9


def test_ragged_or_nested_columns(contract):
    for short in ("x", "plan"):  # a numeric column (the block cannot be built) and a categorical one
        data = _data()
        data[short] = data[short][:-1]  # one value short
        with pytest.raises(InvalidInputError, match=f"columns of different lengths: '{short}' has {N - 1}"):
            contract.check(data)
    data = _data()
    data["x"][4] = [1.0, 2.0]
    checked = contract.check(data)
    assert (checked.errors[0].row, checked.errors[0].column) == (4, "x") and len(checked.errors) == 1
    # lengths are compared before any rule marks a row: a short column is named as short even when values
    # are flagged in it and beside it (their masks, of different lengths, never meet)
    data = _data()
    data["x"][0], data["free"] = "abc", ["abc", *data["free"][1:-1]]
    with pytest.raises(InvalidInputError, match=f"columns of different lengths: 'free' has {N - 1}"):
        contract.check(data, **POLICIES)


def _records(data: dict[str, list[Any]]) -> list[dict[str, Any]]:
    return [{k: data[k][i] for k in data} for i in range(len(next(iter(data.values()))))]


def _outcome(contract: Contract, records: list[dict[str, Any]], converted: bool, policies: dict,
             decoded: Any = None) -> Any:
    """What the contract decides on the general path's columns (``converted``: with their block; else the
    same columns as plain lists, converted by the check), or on ``decoded``."""
    from mlopsctl.serving.records import RecordsDecoder

    try:
        d = decoded or RecordsDecoder(contract).records(records, "records")
        columns, block = d.columns, d.block
        if not converted:
            columns, block = {k: [r.get(k) for r in records] for k in d.columns}, None
        checked = check(contract, columns, block=block, **policies)
    except InvalidInputError as e:
        return ("raised", str(e))
    norm = {k: [None if isinstance(v, float) and v != v else v for v in a.tolist()] for k, a in checked.normalized.items()}
    block = None if checked.block is None else str(checked.block.tolist())
    return (d.n_rows, norm, checked.errors, checked.warnings, checked.bad_rows.tolist(), block)


def _typed(contract: Contract, body: bytes, envelope: Any = None) -> Any:
    """The typed decoder's answer through the entry point, or None when it declined the body."""
    from mlopsctl.serving.records import PREDICT, RecordsDecoder

    declined = object()
    try:
        decoded = RecordsDecoder(contract).decode(body, envelope or PREDICT, lambda decoder, parsed: declined)
    except InvalidInputError:  # declined, and not JSON: parse_json said why
        return None
    return None if decoded is declined else decoded


def _variant(name: str) -> list[dict[str, Any]]:
    records = _records(_data(3))
    if name == "null in a column without nulls":
        records[5]["x"] = None
    elif name == "numeric strings and a bool in a numeric column":
        records[1]["x"], records[2]["free"], records[3]["x"] = "7.25", "-1e3", True
    elif name == "a word in a numeric column":
        records[9]["gappy"] = "abc"
    elif name == "a nested value":
        records[4]["free"] = [1.0, 2.0]
    elif name == "far out of range":
        records[7]["x"] = 99.0
    elif name == "a record without a column":
        del records[6]["free"]
    elif name == "an extra column in one record":
        records[8]["extra"] = 1.0
    return records


@pytest.mark.parametrize("variant", ["clean", "null in a column without nulls",
                                     "numeric strings and a bool in a numeric column", "a word in a numeric column",
                                     "a nested value", "far out of range", "a record without a column",
                                     "an extra column in one record"])
@pytest.mark.parametrize("policies", [{}, POLICIES, dict(out_of_range="flag")], ids=["defaults", "strict", "flag"])
def test_records_conversion_decides_like_the_per_column_lists(contract, variant, policies):
    import orjson

    records = _variant(variant)
    converted, lists = _outcome(contract, records, True, policies), _outcome(contract, records, False, policies)
    assert converted == lists
    # the typed decoder takes only bodies inside its strict types; what it takes, the contract decides alike
    decoded = _typed(contract, orjson.dumps({"records": records, "id": "ignored"}))
    typed = variant in ("clean", "null in a column without nulls", "far out of range")
    assert (decoded is not None) == typed
    if decoded is not None:
        assert _outcome(contract, records, True, policies, decoded) == lists
        assert len(decoded.keep) == N  # the decoded rows, handed back so the caller frees them after answering
    if variant == "clean":
        from mlopsctl.serving.records import RecordsDecoder

        d = RecordsDecoder(contract).records(records, "records")
        assert [type(d.columns[k]).__name__ for k in contract.feature_names] == ["ndarray"] * 3 + ["list", "ndarray"]
        assert d.block.shape == (4, N) and converted[0] == N  # converted in one pass


def test_records_conversion_single_numeric_column():
    from mlopsctl.serving.records import RecordsDecoder

    one = Contract(target="y", task="regression", columns=(ColumnSpec("v", "numeric", "float64"),
                                                           ColumnSpec("c", "categorical", "object")))
    d = RecordsDecoder(one).records([{"v": 1, "c": "a"}, {"v": None, "c": "b"}], "records")
    assert d.n_rows == 2 and d.columns["v"].tolist()[0] == 1.0 and np.isnan(d.columns["v"][1])
    assert d.columns["c"] == ["a", "b"] and d.block.shape == (1, 2)


@pytest.mark.parametrize("body", [
    b"", b"{", b"[]", b"null", b'{"records": {}}', b'{"records": []}', b'{"rows": []}', b"\xef\xbb\xbf{}",
    b'{"records": [{"x": 1, "gappy": 1, "flag": true, "plan": "\xff", "free": 1}]}',  # invalid UTF-8
    b'{"records": [{"x": 1, "gappy": 1, "flag": true, "plan": "\\ud800", "free": 1}]}',  # lone surrogate
    b'{"records": [{"x": 1, "gappy": 1, "flag": true, "plan": 3, "free": 1}]}',  # a number as category
    b'{"records": [{"x": [1], "gappy": 1, "flag": true, "plan": "pro", "free": 1}]}',
    b'{"records": [{"x": 1, "gappy": 1, "flag": true, "plan": "pro", "free": 1e400}]}',
    b'{"records": [{"x": 1, "gappy": 1, "flag": true, "plan": "pro", "free": 1}]} trailing',
    b'{"records": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
])
def test_records_decoder_leaves_anything_unusual_to_the_general_path(contract, body):
    assert _typed(contract, body) is None


def test_mlflow_bodies_are_typed_only_when_the_records_key_is_alone(contract):
    """/invocations: ``dataframe_records`` or records-shaped ``instances``, and nothing else (MLflow's rules
    about other members, ``params`` and LLM keys included, are the general path's)."""
    import orjson

    from mlopsctl.serving.records import MLFLOW

    records = _records(_data(2))
    for key in ("dataframe_records", "instances"):
        decoded = _typed(contract, orjson.dumps({key: records}), MLFLOW)
        assert decoded is not None and _outcome(contract, records, True, {}, decoded) == _outcome(contract, records, True, {})
    for body in ({"dataframe_records": records, "params": {}}, {"dataframe_records": records, "instances": records},
                 {"dataframe_records": records, "prompt": "hi"}, {"instances": [[1, 2, 3, 4, 5]]}, {"dataframe_records": []}):
        assert _typed(contract, orjson.dumps(body), MLFLOW) is None, list(body)
    assert _typed(contract, orjson.dumps({"records": records, "params": {}})) is not None  # /predict ignores others


def test_records_decoder_columns_in_contract_order_with_odd_column_names():
    import orjson

    odd = Contract(target="y", task="regression", columns=(
        ColumnSpec("mean radius", "numeric", "float64"), ColumnSpec("plané", "categorical", "object"),
        ColumnSpec("f0", "boolean", "bool")))  # a column named like the decoder's own field names
    rows = [{"f0": True, "plané": "a", "mean radius": 2}, {"plané": None, "mean radius": None, "f0": False}]
    decoded = _typed(odd, orjson.dumps({"records": rows}))
    columns = decoded.columns
    assert decoded.n_rows == 2 and list(columns) == ["mean radius", "plané", "f0"]
    assert columns["mean radius"][0] == 2.0 and np.isnan(columns["mean radius"][1])
    assert columns["plané"] == ["a", None] and columns["f0"].tolist() == [1.0, 0.0]


def test_records_decoder_all_numeric_contract_matches_the_general_path():
    """All columns numeric or boolean: the decoder reads each row as a tuple (its fields in block order)."""
    import orjson

    from mlopsctl.serving.records import RecordsDecoder

    nums = Contract(target="y", task="regression", columns=(
        ColumnSpec("b", "numeric", "float64"), ColumnSpec("a", "boolean", "bool"), ColumnSpec("c", "numeric", "int64")))
    rows = [{"c": 3, "a": True, "b": 0.5}, {"a": False, "b": None, "c": -2}, {"b": 1e300, "c": 7, "a": None}]
    decoded = _typed(nums, orjson.dumps({"records": rows}))
    general = RecordsDecoder(nums).records(rows, "records")
    assert decoded.n_rows == general.n_rows == 3 and list(decoded.columns) == list(general.columns) == ["b", "a", "c"]
    assert _same(decoded.block, general.block)
    for name in nums.feature_names:
        np.testing.assert_array_equal(decoded.columns[name], np.array([r[name] for r in rows], dtype=np.float64))
    checked = check(nums, decoded.columns, block=decoded.block)
    feeds, reference = nums.onnx_feeds(checked.normalized, checked.block), nums.onnx_feeds(checked.normalized)
    assert list(feeds) == list(reference) == ["b", "a", "c"]  # all-numeric: the block rows in order
    for name, arr in feeds.items():
        assert arr.shape == (3, 1) and arr.dtype == reference[name].dtype
        np.testing.assert_array_equal(arr, reference[name])


def test_release_after_keeps_a_big_requests_input_until_the_answer_is_closed():
    import gc
    import weakref

    from flask import Response

    from mlopsctl.serving.http import RELEASE_AFTER_ROWS, KeepUntilClosed, release_after

    class Parsed:
        pass

    big, small, raw = Parsed(), Parsed(), Parsed()
    refs = weakref.ref(big), weakref.ref(small), weakref.ref(raw)
    response = release_after(Response(b"{}"), RELEASE_AFTER_ROWS, big)
    release_after(Response(b"{}"), RELEASE_AFTER_ROWS - 1, small)
    body = KeepUntilClosed([b"{}"], raw)  # the same for /predict's raw WSGI answer
    del big, small, raw
    gc.collect()
    assert refs[0]() is not None and refs[1]() is None and refs[2]() is not None  # the big ones wait
    response.close()  # what the WSGI server does after writing the last byte
    body.close()
    assert refs[0]() is None and refs[2]() is None and body == [b"{}"]


# ---- the prediction-log writer ---------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path):
    return open_store(f"sqlite:///{tmp_path / 'log.db'}")


def _record(contract: Contract, checked, rid: str, *, with_block: bool = True) -> dict[str, Any]:
    n = len(checked.bad_rows)
    outputs = {"label": np.array(["a", "b"] * (n // 2) + ["a"] * (n % 2), dtype=object),
               "probabilities": np.tile(np.array([[0.25, 0.75]], dtype=np.float32), (n, 1))}
    block, block_columns = (checked.block, checked.block_columns) if with_block else (None, ())
    return dict(request_id=rid, model="m", version=1, endpoint="predict", latency_ms=1.5, inputs=checked.normalized,
                outputs=outputs, n_rows=n, block=block, block_columns=block_columns)


def test_a_burst_is_one_transaction_and_flush_cuts_the_window_short(store, contract):
    from mlopsctl.predlog_format import ROWS_PER_STATEMENT, has_pending, index_pending
    from mlopsctl.serving.predlog import INDEX_NOW_MAX, PredictionLog

    one = {k: v[:1] for k, v in _data().items()}
    checked = contract.check(one)
    log = PredictionLog(store, flush_interval=30.0)  # a window far longer than this test
    try:
        n = 2 * ROWS_PER_STATEMENT + 37  # several multi-row statements
        before = utcnow()
        for i in range(n):
            assert log.submit(**_record(contract, checked, f"r{i:04d}"))
        t0 = time.monotonic()
        assert log.flush(timeout=60)
        assert time.monotonic() - t0 < 20  # flush woke the writer instead of waiting out the 30 s window
        assert (log.written, log.dropped, log.write_errors, log.depth()) == (n, 0, 0, 0)
    finally:
        log.close()
    assert n > INDEX_NOW_MAX  # a busy window: the batch is written, its index rows deferred
    with store.session() as s:
        assert s.query(PredictionRecord).count() == 0
        assert len(s.query(PredictionBatch).one().pending_index) > 40 * n
    assert has_pending(store.engine)
    assert index_pending(store.engine) == n
    assert not has_pending(store.engine) and index_pending(store.engine) == 0  # once only
    with store.session() as s:
        batches = s.query(PredictionBatch).all()
        rows = s.query(PredictionRecord).order_by(PredictionRecord.id).all()
    assert batches[0].pending_index is None
    assert [(b.model, b.version, b.n_rows) for b in batches] == [("m", 1, n)]
    assert [r.request_id for r in rows] == [f"r{i:04d}" for i in range(n)]
    assert [r.offset for r in rows] == list(range(n))
    assert {(r.model, r.version, r.endpoint, r.n_rows, r.latency_ms, r.batch_id) for r in rows} == {
        ("m", 1, "predict", 1, 1.5, batches[0].id)}
    assert all(before <= r.created_at <= before + timedelta(minutes=5) for r in rows)  # datetimes round-trip
    logged = read_requests(store, ["r0000", f"r{n - 1:04d}"], contract.feature_names)
    assert logged["r0000"]["inputs"]["x"] == one["x"] and logged["r0000"]["inputs"]["plan"] == one["plan"]
    assert logged["r0000"]["outputs"]["label"] == ["a"]


def test_a_cycle_that_wrote_hands_the_freed_heap_back(store, contract):
    """glibc's malloc_trim runs after each writer cycle that wrote records (not after an idle one)."""
    import platform

    from mlopsctl.serving.predlog import PredictionLog

    glibc = platform.libc_ver()[0] == "glibc"
    checked = contract.check({k: v[:1] for k, v in _data().items()})
    log = PredictionLog(store, flush_interval=30.0)
    try:
        assert (log._trim is not None) == glibc
        assert log.flush(timeout=60) and log.trims == 0  # nothing to write: no trim
        for i in range(300):
            assert log.submit(**_record(contract, checked, f"t{i:04d}"))
        assert log.flush(timeout=60)
        assert (log.written, log.trims) == (300, 1 if glibc else 0)
        assert log.flush(timeout=60) and log.trims == (1 if glibc else 0)
        assert log.submit(**_record(contract, checked, "last")) and log.flush(timeout=60)
        assert (log.written, log.trims) == (301, 2 if glibc else 0)
    finally:
        log.close()


def _busy_then_quiet(store, contract, busy: int, quiet: int) -> None:
    from mlopsctl.serving.predlog import PredictionLog

    checked = contract.check({k: v[:1] for k, v in _data().items()})
    log = PredictionLog(store, flush_interval=30.0)
    try:
        for prefix, n in (("busy", busy), ("quiet", quiet)):
            for i in range(n):
                assert log.submit(**_record(contract, checked, f"{prefix}-{i:04d}"))
            assert log.flush(timeout=60)
        assert (log.written, log.write_errors) == (busy + quiet, 0)
    finally:
        log.close()


def test_a_quiet_window_writes_the_deferred_index_rows_first(store, contract):
    """A busy window defers its index rows; the next quiet one writes them, then its own, in request order."""
    from mlopsctl.predlog_format import has_pending
    from mlopsctl.serving.predlog import INDEX_NOW_MAX

    _busy_then_quiet(store, contract, INDEX_NOW_MAX + 50, 3)
    assert not has_pending(store.engine)
    with store.session() as s:
        rows = s.query(PredictionRecord).order_by(PredictionRecord.id).all()
        batches = {b.id: b for b in s.query(PredictionBatch).all()}
    assert [r.request_id for r in rows] == [f"busy-{i:04d}" for i in range(INDEX_NOW_MAX + 50)] + [
        f"quiet-{i:04d}" for i in range(3)]
    assert [r.offset for r in rows] == list(range(INDEX_NOW_MAX + 50)) + [0, 1, 2]
    assert [batches[r.batch_id].n_rows for r in (rows[0], rows[-1])] == [INDEX_NOW_MAX + 50, 3]


def test_readers_write_the_deferred_index_rows(store, contract):
    """Nothing reads the index before the rows a busy server deferred are in it."""
    from mlopsctl.predlog_format import has_pending
    from mlopsctl.serving.predlog import INDEX_NOW_MAX

    _busy_then_quiet(store, contract, INDEX_NOW_MAX + 1, 0)
    assert has_pending(store.engine)
    logged = read_requests(store, [f"busy-{INDEX_NOW_MAX:04d}"], contract.feature_names)
    assert logged[f"busy-{INDEX_NOW_MAX:04d}"]["outputs"]["label"] == ["a"]
    assert not has_pending(store.engine)


def test_a_failed_catch_up_still_writes_the_quiet_window(store, contract):
    """A deferred batch that cannot be indexed (here a corrupt document) fails the catch-up: the quiet
    window's records are still written, their index rows deferred behind it (the order is kept)."""
    from sqlalchemy import insert

    from mlopsctl.serving.predlog import PredictionLog

    with store.engine.begin() as conn:
        conn.execute(insert(PredictionBatch).values(model="m", version=1, n_rows=1, data=b"", pending_index="[not json"))
    checked = contract.check({k: v[:1] for k, v in _data().items()})
    log = PredictionLog(store, flush_interval=30.0)
    try:
        for i in range(3):
            assert log.submit(**_record(contract, checked, f"q{i}"))
        assert log.flush(timeout=60)
    finally:
        log.close()
    assert (log.written, log.write_errors) == (3, 0)
    with store.session() as s:
        batches = s.query(PredictionBatch).order_by(PredictionBatch.id).all()
        assert s.query(PredictionRecord).count() == 0
    assert [b.n_rows for b in batches] == [1, 3] and batches[1].pending_index.count('"q') == 3


def test_concurrent_indexers_write_each_deferred_row_once(store, contract):
    import threading

    from mlopsctl.predlog_format import index_pending
    from mlopsctl.serving.predlog import INDEX_NOW_MAX, PredictionLog

    checked = contract.check({k: v[:1] for k, v in _data().items()})
    log = PredictionLog(store, flush_interval=30.0)
    try:
        for b in range(6):  # six busy windows: six deferred batches
            for i in range(INDEX_NOW_MAX + 1):
                log.submit(**_record(contract, checked, f"b{b}-{i:04d}"))
            assert log.flush(timeout=60)
    finally:
        log.close()
    counts: list[int] = []
    threads = [threading.Thread(target=lambda: counts.append(index_pending(store.engine))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = 6 * (INDEX_NOW_MAX + 1)
    assert sum(counts) == total
    with store.session() as s:
        ids = [r.request_id for r in s.query(PredictionRecord).order_by(PredictionRecord.id)]
    assert len(ids) == len(set(ids)) == total


def test_records_with_and_without_a_block_share_a_batch(store, contract):
    from mlopsctl.serving.predlog import PredictionLog

    data = _data(1)
    fast = contract.check(data)
    slow = contract.check({**data, "flag": ["true" if v else "false" for v in data["flag"]]})
    log = PredictionLog(store, flush_interval=30.0)
    try:  # "slow": its columns one by one, as for a contract without numeric columns
        for rid, checked, with_block in (("fast-1", fast, True), ("slow", slow, False), ("fast-2", fast, True)):
            assert log.submit(**_record(contract, checked, rid, with_block=with_block))
        assert log.flush(timeout=60)
    finally:
        log.close()
    with store.session() as s:  # one batch, the requests in the order they came
        assert s.query(PredictionBatch).count() == 1
        rows = s.query(PredictionRecord).order_by(PredictionRecord.id).all()
    assert [(r.request_id, r.offset) for r in rows] == [("fast-1", 0), ("slow", N), ("fast-2", 2 * N)]
    logged = read_requests(store, ["fast-1", "slow", "fast-2"], contract.feature_names)
    expected = {k: [None if isinstance(v, float) and v != v else v for v in arr.tolist()]
                for k, arr in fast.normalized.items()}
    for rid in ("fast-1", "slow", "fast-2"):
        got = logged[rid]["inputs"]
        got = {k: [None if isinstance(v, float) and v != v else v for v in vals] for k, vals in got.items()}
        assert got == expected, rid
        assert np.allclose(logged[rid]["outputs"]["probabilities"], [[0.25, 0.75]] * N)


def test_a_window_of_many_slices_keeps_every_request_in_order(store, contract):
    """The writer joins a window a slice of records at a time (``SLICE``): requests of 1-3 rows, the two
    layouts (block or column by column) interleaved, over several slices and a slice boundary inside a run
    of one layout: every request's rows come back as it sent them, at its offset."""
    from mlopsctl.serving.predlog import SLICE, PredictionLog

    n_requests = 2 * SLICE + 37
    requests = []
    for i in range(n_requests):
        rows = 1 + i % 3
        data = {k: v[i % 5:i % 5 + rows] for k, v in _data(i % 4).items()}
        with_block = (i // 7) % 2 == 0  # runs of seven of one layout, then seven of the other
        checked = contract.check(data if with_block else {**data, "flag": ["true" if v else "false" for v in data["flag"]]})
        requests.append((f"q{i:04d}", data, checked, with_block))
    log = PredictionLog(store, flush_interval=30.0)
    try:
        for rid, _data_, checked, with_block in requests:
            assert log.submit(**_record(contract, checked, rid, with_block=with_block))
        assert log.flush(timeout=60)
        assert (log.written, log.write_errors) == (n_requests, 0)
    finally:
        log.close()
    with store.session() as s:
        assert s.query(PredictionBatch).count() == 1
    logged = read_requests(store, [r[0] for r in requests], contract.feature_names)
    offset = 0
    for rid, data, checked, _with_block in requests:
        got = logged[rid]
        want = {k: [None if isinstance(v, float) and v != v else v for v in arr.tolist()]
                for k, arr in contract.check(data).normalized.items()}
        assert {k: [None if isinstance(v, float) and v != v else v for v in vals]
                for k, vals in got["inputs"].items()} == want, rid
        rows = len(checked.bad_rows)
        assert got["outputs"]["label"] == (["a", "b"] * 2)[:rows], rid
        offset += rows
    with store.session() as s:
        assert s.query(PredictionBatch).one().n_rows == offset


def test_close_writes_what_is_queued(store, contract):
    from mlopsctl.serving.predlog import PredictionLog

    checked = contract.check({k: v[:2] for k, v in _data().items()})
    log = PredictionLog(store, flush_interval=30.0)
    for i in range(5):
        log.submit(**_record(contract, checked, f"c{i}"))
    log.close(timeout=60)
    assert log.written == 5
    with store.session() as s:
        assert s.query(PredictionRecord).count() == 5


# ---- request ids -------------------------------------------------------------------------------------------

def test_request_ids_are_hex_unique_and_time_ordered():
    from mlopsctl.serving.http import new_request_id

    ids = []
    for _ in range(5):
        ids += [new_request_id() for _ in range(2000)]
        time.sleep(0.002)  # the next ones fall in a later millisecond
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)
    stamps = [int(i[:12], 16) for i in ids]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] / 1000 - time.time()) < 60


def test_both_index_insert_paths_store_what_sqlalchemy_would(store):
    """SQLite >= 3.38 writes the index from one JSON document; other databases (and older SQLite) use
    multi-row VALUES. On this SQLite both run: the raw stored rows must equal SQLAlchemy's own insert."""
    import datetime as dt

    from sqlalchemy import insert, text

    from mlopsctl.predlog_format import INDEX_COLUMNS, index_rows, insert_index_json, insert_index_values
    from mlopsctl.serving.predlog import _index_document, make_record

    def rows(prefix: str, batch_id: int | None) -> list[tuple]:
        times = [dt.datetime(2026, 11, 26, 23, 5, 7, 0), dt.datetime(2026, 1, 2, 3, 4, 5, 60),
                 dt.datetime(2026, 12, 31, 23, 59, 59, 999999)]
        return [(f"{prefix}-{i}" if i != 1 else f"{prefix}-\u00e9 \"quoted\" 12", "m", 1, ["predict", "v2", "invocations"][i],
                 0.125 * (i + 1), i + 1, batch_id, (0, 1, 3)[i], times[i]) for i in range(3)]

    with store.engine.begin() as conn:
        ids = [conn.execute(insert(PredictionBatch).values(model="m", version=1, n_rows=6, data=b"")).inserted_primary_key[0]
               for _ in range(3)]
        docs = {p: _index_document([make_record(r[0], "m", 1, r[3], r[4], {"x": np.zeros(r[5])}, {"y": np.zeros(r[5])},
                                                r[5], created_at=r[8]) for r in rows(p, None)])
                for p in ("json", "values")}
        insert_index_json(conn, "m", 1, ids[0], docs["json"])
        insert_index_values(conn, index_rows("m", 1, ids[1], docs["values"]))
        conn.execute(insert(PredictionRecord), [dict(zip(INDEX_COLUMNS, r)) for r in rows("orm", ids[2])])
    with store.engine.connect() as conn:  # raw stored values, not parsed back
        got = {p: [tuple(r) for r in conn.execute(text(
            "SELECT replace(request_id, :p, ''), model, version, endpoint, latency_ms, n_rows, \"offset\", created_at, "
            "typeof(latency_ms), typeof(n_rows), typeof(\"offset\") FROM predictions WHERE batch_id = :b ORDER BY id"), {"p": p, "b": b})]
            for p, b in zip(("json", "values", "orm"), ids)}
    assert got["json"] == got["values"] == got["orm"]
    assert got["orm"][0][7] == "2026-11-26 23:05:07.000000" and got["orm"][0][8:] == ("real", "integer", "integer")
