"""Batch scoring: ``mlopsctl predict MODEL_REF INPUT --output OUT``.

Streams the input in chunks (Arrow's multi-threaded CSV reader, or Parquet row batches), checks each
chunk against the model's contract, scores the valid rows through ONNX Runtime and appends the input
columns plus ``prediction``, ``proba_<class>`` and ``_error`` to the output. Peak memory follows the
chunk size, not the file size. Rows that fail validation stay in the output with their error and no
prediction (never silently dropped). The output is written to a temporary file and renamed at the end,
so a crash never leaves a half-written result under the output name.

CSV dialects (byte-order mark, CRLF or CR line ends, ``;``/tab/``|`` delimiters, decimal commas, quoted fields
with delimiters, line breaks and ``""``) are read as ``data.read_table`` reads them for training: the delimiter
comes from the same ``data.csv_delimiter``, and the block splitter reads quotes as pandas and Arrow do.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from mlopsctl.common import DATA_SUFFIXES, PARQUET_SUFFIXES, readable_by_all
from mlopsctl.config import Settings
from mlopsctl.contract import Contract, RowError
from mlopsctl.csv_blocks import record_blocks
from mlopsctl.data import NOT_UTF8, csv_delimiter
from mlopsctl.errors import InvalidInputError, NotFoundError, RetryPerRow
from mlopsctl.project import open_project
from mlopsctl.registry import LoadedModel

Progress = Callable[[int, "int | None"], None]
ERROR_COLUMN = "_error"
PREDICTION_COLUMN = "prediction"
BLOCK_BYTES = 16 << 20  # CSV bytes parsed at once: bounds memory per chunk
MAX_REPORTED_ERRORS = 1000


@dataclass
class PredictSummary:
    model: str
    version: int
    input: str
    output: str
    rows: int = 0
    scored: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[dict[str, Any]] = field(default_factory=list)  # first MAX_REPORTED_ERRORS

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _arrow_types(names: list[str], contract: Contract, strict: bool) -> dict[str, Any]:
    """Contract columns typed (strict) or as text (per-row validation); other columns pass through as text."""
    import pyarrow as pa

    kinds = {c.name: c.kind for c in contract.columns}
    types = {}
    for name in names:
        kind = kinds.get(name, "categorical")
        if kind == "categorical" or not strict:
            types[name] = pa.string()
        else:
            types[name] = pa.float64() if kind == "numeric" else pa.bool_()
    return types


def _csv_batches(path: Path, contract: Contract, strict: bool, delimiter: str, decimal: str) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv

    types = None
    numeric = [c.name for c in contract.columns if c.kind == "numeric"]
    for header, block in record_blocks(path, BLOCK_BYTES, delimiter):
        if types is None:
            names = _header_names(header, path, delimiter)
            _check_columns(names, contract, path)
            types = _arrow_types(names, contract, strict)
        data = header + block
        try:
            table = csv.read_csv(
                pa.py_buffer(data),
                read_options=csv.ReadOptions(use_threads=True, block_size=max(BLOCK_BYTES, len(data) + 1)),
                parse_options=csv.ParseOptions(delimiter=delimiter),
                convert_options=csv.ConvertOptions(column_types=types, strings_can_be_null=True, decimal_point=decimal),
            )
        except pa.ArrowInvalid as e:
            if "invalid UTF8" in str(e):
                raise InvalidInputError(NOT_UTF8.format(path=path)) from None
            if strict and "conversion" in str(e).lower():
                raise RetryPerRow() from None
            raise InvalidInputError(f"{path} could not be parsed as CSV ({str(e).splitlines()[0]}); fix the file.") from None
        if not strict and decimal != ".":  # text here; the contract's checker parses numbers with a point
            for name in numeric:
                i = table.schema.get_field_index(name)
                table = table.set_column(i, name, pc.replace_substring(table.column(i), decimal, "."))
        yield from table.to_batches()


def _header_names(header: bytes, path: Path, delimiter: str) -> list[str]:
    import pyarrow as pa
    from pyarrow import csv

    try:
        return csv.read_csv(pa.py_buffer(header), read_options=csv.ReadOptions(autogenerate_column_names=False),
                            parse_options=csv.ParseOptions(delimiter=delimiter)).schema.names
    except UnicodeDecodeError:
        raise InvalidInputError(NOT_UTF8.format(path=path)) from None
    except pa.ArrowInvalid as e:
        raise InvalidInputError(f"{path} has an unreadable header ({str(e).splitlines()[0]}); fix the file.") from None


def _parquet_batches(path: Path, contract: Contract, chunk_rows: int) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InvalidInputError(f"{path} could not be parsed as Parquet ({str(e).splitlines()[0]}); fix the file.") from None
    _check_columns(pf.schema_arrow.names, contract, path)
    yield from pf.iter_batches(batch_size=chunk_rows)


def _check_columns(names: list[str], contract: Contract, path: Path) -> None:
    missing = [c for c in contract.feature_names if c not in names]
    if missing:
        raise InvalidInputError(
            f"{path.name} lacks column(s) {', '.join(map(repr, missing))} that the model needs; "
            f"it has {', '.join(names)}."
        )
    reserved = [n for n in (PREDICTION_COLUMN, ERROR_COLUMN) if n in names]
    if reserved:
        raise InvalidInputError(f"{path.name} already has column(s) {', '.join(reserved)}, which predict writes; rename them.")


def _rechunk(batches: Iterator[Any], chunk_rows: int) -> Iterator[Any]:
    for batch in batches:
        for start in range(0, batch.num_rows, chunk_rows):
            yield batch.slice(start, chunk_rows)


class _Writer:
    """CSV or Parquet writer into a temp file next to the output; ``commit`` renames it into place."""

    def __init__(self, output: Path):
        self.output = output
        self.kind = "parquet" if output.suffix.lower() in PARQUET_SUFFIXES else "csv"
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self._w = None

    def write(self, table: Any) -> None:
        if self._w is None:
            if self.kind == "csv":
                from pyarrow import csv

                self._w = csv.CSVWriter(self.tmp, table.schema)
            else:
                import pyarrow.parquet as pq

                self._w = pq.ParquetWriter(self.tmp, table.schema)
        self._w.write_table(table)

    def commit(self, empty_schema: Any) -> None:
        if self._w is None:
            self.write(empty_schema.empty_table())
        self._w.close()
        readable_by_all(self.tmp)
        os.replace(self.tmp, self.output)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            if self._w is not None:
                self._w.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


def _output_columns(model: LoadedModel) -> list[str]:
    c = model.contract
    if c.task == "classification":
        return [PREDICTION_COLUMN, *[f"proba_{k}" for k in c.class_keys], ERROR_COLUMN]
    return [PREDICTION_COLUMN, ERROR_COLUMN]


def _score_batch(model: LoadedModel, scorer: Any, batch: Any, offset: int, unknown_category: str,
                 summary: PredictSummary) -> Any:
    import pyarrow as pa

    contract = model.contract
    data = {c: batch.column(c).to_numpy(zero_copy_only=False) for c in contract.feature_names}
    checked = contract.check(data, unknown_category=unknown_category,
                             max_errors=max(0, MAX_REPORTED_ERRORS - len(summary.errors)))
    n = batch.num_rows
    bad = checked.bad_rows
    good = ~bad
    n_good = int(good.sum())
    normalized = checked.normalized if n_good == n else {k: v[good] for k, v in checked.normalized.items()}
    outputs = scorer.run(normalized) if n_good else None
    errors_text = np.full(n, None, dtype=object)
    for e in checked.errors:
        summary.errors.append({"row": offset + e.row + 1, "column": e.column, "message": e.message})
    if bad.any():
        msgs = _row_messages(checked.errors, n)
        errors_text[bad] = [msgs.get(i, "row failed validation") for i in np.flatnonzero(bad)]
    arrays = list(batch.columns)
    names = list(batch.schema.names)

    def spread(values: np.ndarray, pa_type: Any) -> Any:
        if n_good == n:
            return pa.array(values, type=pa_type)
        full = np.empty(n, dtype=values.dtype if values.dtype != object else object)
        mask = np.zeros(n, dtype=bool)
        if n_good:
            full[good] = values
        mask[bad] = True
        return pa.array(full, type=pa_type, mask=mask)

    if contract.task == "classification":
        label_type = {"integer": pa.int64(), "boolean": pa.bool_(), "float": pa.float64()}.get(
            contract.label_type or "", pa.string())
        labels = np.asarray(outputs["label"]).ravel() if n_good else np.empty(0, dtype=object)
        arrays.append(spread(labels.astype(object) if label_type == pa.string() else labels, label_type))
        proba = np.asarray(outputs["probabilities"]) if n_good else np.empty((0, len(contract.classes or ())), np.float32)
        for j, _ in enumerate(contract.classes or ()):
            arrays.append(spread(np.ascontiguousarray(proba[:, j]), pa.float32()))
    else:
        pred = np.asarray(outputs["prediction"]).ravel() if n_good else np.empty(0, np.float32)
        arrays.append(spread(pred, pa.float32()))
    arrays.append(pa.array(errors_text, type=pa.string()))
    summary.rows += n
    summary.scored += n_good
    summary.failed += n - n_good
    return pa.Table.from_arrays(arrays, names=names + _output_columns(model))


def _row_messages(errors: list[RowError], n: int) -> dict[int, str]:
    out: dict[int, str] = {}
    for e in errors:
        out[e.row] = f"{out[e.row]}; {e.message}" if e.row in out else e.message
    return out


def predict_file(
    settings: Settings, ref: str, input_path: Path, output_path: Path | None = None, *,
    chunk_rows: int = 65536, unknown_category: str = "accept", progress: Progress = lambda done, total: None,
) -> PredictSummary:
    from mlopsctl.scoring import Scorer

    if chunk_rows < 1:
        raise InvalidInputError(f"--chunk-size must be at least 1, got {chunk_rows}.")
    if unknown_category not in ("accept", "reject"):
        raise InvalidInputError(f"--unknown-category must be accept or reject, got {unknown_category!r}.")
    input_path = settings.resolve(input_path)
    if not input_path.is_file():
        raise NotFoundError(f"input file {input_path} does not exist.")
    suffix = input_path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise InvalidInputError(f"{input_path.name} has an unsupported extension {suffix or '(none)'!r}; use .csv or .parquet.")
    if input_path.stat().st_size == 0:
        raise InvalidInputError(f"{input_path} is empty; add a header row and data rows.")
    output = settings.resolve(output_path) if output_path else input_path.with_name(f"{input_path.stem}.predictions.csv")
    if output.resolve() == input_path.resolve():
        raise InvalidInputError("--output must differ from the input file.")
    delimiter = csv_delimiter(input_path, settings.data.delimiter, settings.data.decimal) if suffix == ".csv" else ","
    model = open_project(settings).load_model(ref)
    scorer = Scorer(model.onnx, model.contract, threads=os.cpu_count() or 1)
    t0 = time.perf_counter()
    total = None
    if suffix != ".csv":
        import pyarrow.parquet as pq

        with contextlib.suppress(Exception):
            total = pq.ParquetFile(input_path).metadata.num_rows
    for strict in ((True, False) if suffix == ".csv" else (False,)):
        summary = PredictSummary(model.name, model.version, str(input_path), str(output))
        writer = _Writer(output)
        try:
            batches = (_csv_batches(input_path, model.contract, strict, delimiter, settings.data.decimal) if suffix == ".csv"
                       else _parquet_batches(input_path, model.contract, chunk_rows))
            schema = None
            for batch in _rechunk(batches, chunk_rows):
                table = _score_batch(model, scorer, batch, summary.rows, unknown_category, summary)
                schema = table.schema
                writer.write(table)
                progress(summary.rows, total)
            if schema is None:
                raise InvalidInputError(f"{input_path} has no data rows; add rows below the header.")
            writer.commit(schema)
            break
        except RetryPerRow:
            writer.abort()
            continue
        except BaseException:
            writer.abort()
            raise
    summary.seconds = time.perf_counter() - t0
    return summary
