"""Records (``[{"column": value, ...}, ...]``) into columns: the one decoder of ``/predict`` and of
``/invocations``' ``dataframe_records`` and records-shaped ``instances``.

:meth:`RecordsDecoder.decode` is the entry point, typed first. A body ``{key: [records]}`` inside the
contract's strict types (numbers, booleans or null in numeric and boolean columns, text or null in
categorical ones, every column and no other in each record) is parsed straight into typed rows by msgspec,
with one struct type per model version and no dict per record. Anything else (numeric text, a missing or
extra column, another shape, malformed JSON) the typed decoder declines: the body is parsed as JSON
(:func:`~mlopsctl.serving.http.parse_json` words a malformed one) and handed to the route's ``general``
function, which finds the records in it and calls :meth:`RecordsDecoder.records`, the general path: it
takes whatever JSON arrived and names every problem.

Both paths give a :class:`Decoded`: the columns in contract order, the numeric and boolean ones converted
together in one ``np.fromiter`` pass into the float64 ``[k, N]`` block that the contract check takes as
``block=`` (the general path leaves the conversion to the check when a value does not convert), so what
the contract decides never depends on which path ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any, Callable, Iterable

import numpy as np

from mlopsctl.contract import Contract
from mlopsctl.errors import InvalidInputError
from mlopsctl.serving.http import parse_json


@dataclass
class Decoded:
    """A request's input as columns: every contract column in contract order (the numeric ones as the rows
    of ``block`` when it is given), then any other key the records had (the contract decides about those)."""

    columns: dict[str, Any]
    n_rows: int
    block: np.ndarray | None = None  # float64 [k, N], the contract's numeric_names: the check's ``block=``
    keep: Any = None  # the parsed input: the caller frees it after answering (release_after)


@dataclass(frozen=True, eq=False)
class Envelope:
    """Where a JSON body holds its records: under one of ``keys``. ``alone``: the typed decoder takes the
    body only when that key is its only member; else other members are ignored."""

    keys: tuple[str, ...]
    alone: bool = False


# /predict: {"records": [...]}; other members are ignored, as its general path ignores them
PREDICT = Envelope(("records",))
# /invocations: MLflow's records inputs, typed only alone (the rules about any other body, two input members,
# "params" or LLM keys, are the general path's)
MLFLOW = Envelope(("dataframe_records", "instances"), alone=True)
ENVELOPES = (PREDICT, MLFLOW)  # compiled with each decoder: no request pays for it


def numeric_block(rows: Iterable[Any], n_rows: int, get: Callable[[Any], Any], names: tuple[str, ...]) -> np.ndarray:
    """``names``' values of ``rows`` (``get(row)`` gives a row's values in ``names`` order: a tuple, or the
    value itself for one name) as the rows of one C-contiguous float64 ``[k, N]`` block. The conversion is
    numpy's float64 conversion, the check's own (None -> NaN, booleans and numeric strings convert).
    Raises KeyError / TypeError / ValueError / OverflowError when a row lacks a column or a value does not
    convert."""
    values: Iterable[Any] = map(get, rows) if len(names) == 1 else chain.from_iterable(map(get, rows))
    flat = np.fromiter(values, np.float64, count=n_rows * len(names))
    return np.ascontiguousarray(flat.reshape(n_rows, len(names)).T)


class RecordsDecoder:
    """The records decoder of one contract (see the module's text)."""

    def __init__(self, contract: Contract) -> None:
        import msgspec

        self.names = contract.feature_names
        self.numeric = contract.numeric_names
        field = {name: f"f{i}" for i, name in enumerate(self.names)}  # column names need not be identifiers
        self._row = msgspec.defstruct(
            "Row", [(field[c.name], (str | None) if c.kind == "categorical" else (float | bool | None))
                    for c in contract.columns],
            rename={f: name for name, f in field.items()}, forbid_unknown_fields=True, gc=False)
        self._bodies = {envelope: self._body_decoder(envelope) for envelope in ENVELOPES}
        self._errors = (msgspec.DecodeError, ValueError, RecursionError)  # ValueError: invalid UTF-8
        self._typed_numeric: Callable[[Any], Any] | None = None
        if len(self.numeric) > 1 and len(self.numeric) == len(self.names):  # all numeric: fields in block order
            self._typed_numeric = msgspec.structs.astuple  # one C call a row
        elif self.numeric:
            self._typed_numeric = attrgetter(*(field[n] for n in self.numeric))
        self._typed_categorical = [(c.name, attrgetter(field[c.name])) for c in contract.columns
                                   if c.kind == "categorical"]
        self._record_numeric = itemgetter(*self.numeric) if self.numeric else None
        self._categorical = [c.name for c in contract.columns if c.kind == "categorical"]

    def decode(self, raw: bytes, envelope: Envelope, general: Callable[[RecordsDecoder, Any], Decoded]) -> Decoded:
        """The records of a body shaped as ``envelope`` (:data:`PREDICT`, :data:`MLFLOW`), typed first; when
        the typed decoder declines, ``general(self, the body parsed as JSON)``: the route's general path, which
        finds the records (or another input) in whatever arrived and words what is wrong."""
        typed = self._typed(raw, envelope)
        return typed if typed is not None else general(self, parse_json(raw))

    def records(self, records: Any, what: str) -> Decoded:
        """The general path: parsed records (``[{"a": 1, "b": "x"}, ...]``) into columns. Extra keys are
        kept (the contract decides whether they are allowed); a missing key is named with its record."""
        if not isinstance(records, list):
            raise InvalidInputError(f"{what} must be a list of objects, got {type(records).__name__}.")
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise InvalidInputError(f"{what}[{i}] must be an object mapping column names to values, got {type(r).__name__}.")
        block = None
        if self._record_numeric is not None and records:
            try:
                block = numeric_block(records, len(records), self._record_numeric, self.numeric)
            except (KeyError, TypeError, ValueError, OverflowError):
                pass  # the lists below, converted (or marked) by the check; a missing key named below
        try:
            columns = self._in_order(block, {k: [r[k] for r in records]
                                             for k in (self.names if block is None else self._categorical)})
        except KeyError as e:
            col = e.args[0]
            row = next(i for i, r in enumerate(records) if col not in r)
            raise InvalidInputError(f"missing column {col!r} in {what}[{row}]; the model needs {', '.join(self.names)}.") from None
        if any(len(r) != len(self.names) for r in records):  # extra keys somewhere (in any record, not only the first)
            for k in dict.fromkeys(k for r in records for k in r if k not in columns):
                columns[k] = [r.get(k) for r in records]
        return Decoded(columns, len(records), block, records)

    def _typed(self, raw: bytes, envelope: Envelope) -> Decoded | None:
        try:
            body = self._bodies[envelope](raw)
        except self._errors:
            return None
        keys = envelope.keys
        if len(keys) == 1:
            rows = getattr(body, keys[0])
        else:
            given = [rows for rows in map(body.__getattribute__, keys) if rows is not None]
            rows = given[0] if len(given) == 1 else None
        if not rows:
            return None  # no records key, two of them, or no rows: the general path words it
        block = numeric_block(rows, len(rows), self._typed_numeric, self.numeric) if self._typed_numeric else None
        return Decoded(self._in_order(block, {name: list(map(get, rows)) for name, get in self._typed_categorical}),
                       len(rows), block, rows)

    def _body_decoder(self, envelope: Envelope) -> Callable[[bytes], Any]:
        import msgspec

        body = msgspec.defstruct("Body", [(k, list[self._row] | None, None) for k in envelope.keys],
                                 forbid_unknown_fields=envelope.alone)
        return msgspec.json.Decoder(body).decode

    def _in_order(self, block: np.ndarray | None, other: dict[str, Any]) -> dict[str, Any]:
        """The block's rows and the ``other`` columns, in contract order."""
        if block is None:
            return {name: other[name] for name in self.names}
        if not other:  # all numeric: the block rows are the columns, in order
            return dict(zip(self.names, block))
        rows = dict(zip(self.numeric, block))
        return {name: rows[name] if name in rows else other[name] for name in self.names}
