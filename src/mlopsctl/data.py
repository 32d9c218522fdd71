"""Data: reading CSV/Parquet, column kinds, task inference, fingerprints and the contract.

No database here; ``services`` records what this module computes.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlopsctl import labels
from mlopsctl.common import DATA_SUFFIXES
from mlopsctl.contract import ColumnSpec, Contract
from mlopsctl.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

MAX_CLASSES_FOR_INTEGER_TARGET = 20


def read_table(path: Path, *, delimiter: str = "auto", decimal: str = ".", suffix: str | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file with one-line errors for every way it can go wrong.

    CSV files are UTF-8 (a byte-order mark is dropped) with any line ends and RFC 4180 quoting; ``delimiter``
    is one character or "auto" (see :func:`csv_delimiter`), ``decimal`` the decimal mark ("." or ",").
    ``suffix`` gives the format of a file whose name does not show it (a stored blob).
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"data file {path} does not exist; check the path or set data.path in .mlops.toml.")
    if path.is_dir():
        raise InvalidInputError(f"{path} is a folder, not a data file; point at a .csv or .parquet file.")
    suffix = (suffix or path.suffix).lower()
    if suffix not in DATA_SUFFIXES:
        raise InvalidInputError(
            f"{path.name} has an unsupported extension {suffix or '(none)'!r}; use one of {', '.join(DATA_SUFFIXES)}."
        )
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path} is empty; add a header row and data rows.")
    sep = csv_delimiter(path, delimiter, decimal) if suffix == ".csv" else ","
    try:
        if suffix == ".csv":
            df = pd.read_csv(path, low_memory=False, sep=sep, decimal=decimal)
        else:
            df = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise InvalidInputError(f"{path} is empty; add a header row and data rows.") from None
    except UnicodeDecodeError:
        raise InvalidInputError(NOT_UTF8.format(path=path)) from None
    except (pd.errors.ParserError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInputError(f"{path} could not be parsed as {suffix[1:].upper()} ({first}); fix the file.") from None
    except Exception as e:  # pyarrow raises its own hierarchy for junk parquet
        raise InvalidInputError(f"{path} could not be parsed as {suffix[1:].upper()} ({type(e).__name__}: {e}); fix the file.") from None
    if len(df.columns) == 0 or len(df) == 0:
        raise InvalidInputError(f"{path} has no data rows; add rows below the header.")
    unnamed = [str(c) for c in df.columns if str(c).startswith("Unnamed: ")]
    if len(unnamed) == len(df.columns):
        raise InvalidInputError(f"{path} has no header row; add a first line with the column names.")
    return df


CSV_DELIMITERS = "\t;|,"  # what "auto" chooses from, in order of preference on a tie
UTF8_BOM = b"\xef\xbb\xbf"
NOT_UTF8 = "{path} is not UTF-8 text; save it as UTF-8 CSV or as Parquet."
SNIFF_BYTES = 64 << 10
SNIFF_RECORDS = 20
# One token of a CSV head, for any of the candidate delimiters: a quoted field (a quote opens one only at the
# start of a field; "" inside is a quote; it may run to the end of the head), a lone quote, a line end, a delimiter.
_SNIFF_TOKENS = re.compile(r'(?:^|(?<=[\n\r,;\t|]))"(?:[^"]|"")*+(?:"|\Z)|"|\r\n|[\n\r,;\t|]')


def csv_delimiter(path: Path, delimiter: str = "auto", decimal: str = ".") -> str:
    """The field delimiter of a CSV file, for every reader of CSV (``read_table`` and batch predict), so they
    split a file the same way. ``delimiter`` itself unless it is "auto"; else, of , ; tab and |, the one found
    outside quotes in the header line (when several are, the one that splits the most of the next lines into as
    many fields; on a tie tab, ;, | before the comma, which text and decimal commas use too), or "," when none
    is (a one-column file). Raises InvalidInputError when the file does not start as UTF-8 text."""
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    complete = len(head) < SNIFF_BYTES
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head.removeprefix(UTF8_BOM), final=complete)
    except UnicodeDecodeError:
        raise InvalidInputError(NOT_UTF8.format(path=path)) from None
    if delimiter == "auto":
        delimiter = _sniff_delimiter(text, complete)
    if delimiter == decimal:
        raise InvalidInputError(
            f"{path.name} has {delimiter!r} between fields, which cannot also be the decimal mark; "
            f"set data.decimal = \".\" (or data.delimiter, if the fields are split by another character)."
        )
    return delimiter


def _sniff_delimiter(text: str, complete: bool) -> str:
    records: list[dict[str, int]] = []  # delimiter counts outside quotes, per non-blank line
    counts, start = dict.fromkeys(CSV_DELIMITERS, 0), 0
    for m in _SNIFF_TOKENS.finditer(text):
        tok = m.group()
        if tok in counts:
            counts[tok] += 1
        elif tok in ("\n", "\r", "\r\n"):
            if m.start() > start:
                records.append(counts)
                if len(records) > SNIFF_RECORDS:
                    break
            counts, start = dict.fromkeys(CSV_DELIMITERS, 0), m.end()
    else:
        if (complete or not records) and text[start:].strip():
            records.append(counts)  # the last line without a line end, or a header longer than the head
    if not records:
        return ","
    header, rows = records[0], records[1:]
    found = [d for d in CSV_DELIMITERS if header[d]]
    if not found:
        return ","
    return max(found, key=lambda d: (sum(r[d] == header[d] for r in rows), -CSV_DELIMITERS.index(d)))


def column_kind(series: pd.Series) -> str:
    """numeric | categorical | boolean, from the values pandas read."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series):
        return "boolean"
    if pd.api.types.is_numeric_dtype(series):
        return "numeric"
    values = series.dropna()
    if len(values) and values.map(lambda v: str(v).strip().lower()).isin(["true", "false"]).all():
        return "boolean"
    return "categorical"


def infer_task(y: pd.Series, requested: str = "auto") -> str:
    import pandas as pd

    if requested in ("classification", "regression"):
        if requested == "regression" and not pd.api.types.is_numeric_dtype(y):
            raise InvalidInputError(
                f"task 'regression' needs a numeric target, but {y.name!r} holds text; use task = \"classification\"."
            )
        return requested
    if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
        return "classification"
    values = y.dropna()
    integral = bool((values == values.round()).all())
    if integral and values.nunique() <= MAX_CLASSES_FOR_INTEGER_TARGET:
        return "classification"
    return "regression"


def fingerprint(df: pd.DataFrame) -> str:
    """A stable content hash: column names, kinds and cell values (not file formatting or row index)."""
    import pandas as pd

    h = hashlib.sha256()
    for name in df.columns:
        h.update(f"{name}\x1f{column_kind(df[name])}\x1e".encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


def schema_of(df: pd.DataFrame) -> dict[str, Any]:
    return {
        "columns": [
            {"name": str(c), "dtype": str(df[c].dtype), "kind": column_kind(df[c]),
             "null_rate": round(float(df[c].isna().mean()), 6)}
            for c in df.columns
        ]
    }


@dataclass
class TrainingFrame:
    X: pd.DataFrame
    y: pd.Series
    target: str
    task: str
    dropped: int = 0  # rows without a target value, left out


def split_target(df: pd.DataFrame, target: str, task: str = "auto", *, source: str = "the data") -> TrainingFrame:
    """Separate the target; errors for an absent or all-null target. Rows with a null target are dropped."""
    if target not in df.columns:
        raise InvalidInputError(
            f"target column {target!r} is not in {source}; columns are: {', '.join(map(str, df.columns))} "
            "(set data.target or pass --target)."
        )
    y = df[target]
    if y.isna().all():
        raise InvalidInputError(f"target column {target!r} in {source} has no values (all null); fill it in.")
    keep = y.notna()
    X = df.loc[keep].drop(columns=[target]).reset_index(drop=True)
    if X.shape[1] == 0:
        raise InvalidInputError(f"{source} has only the target column {target!r}; add feature columns.")
    y = y[keep].reset_index(drop=True)
    return TrainingFrame(X=X, y=y, target=target, task=infer_task(y, task), dropped=int((~keep).sum()))


ISO_DATE = r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
MIN_ROWS_FOR_ID = 20  # a column unique in fewer rows proves nothing


@dataclass
class Screened:
    """What :func:`screen_columns` found: date columns (left out) and one-line notices about columns."""

    dates: list[str]
    notices: list[str]


def screen_columns(X: pd.DataFrame, max_categories: int, onehot: bool = True) -> Screened:
    """Find columns that are not good features: dates (left out: ONNX cannot parse them), identifiers (unique
    per row) and free text or very many categories (kept, but said)."""
    import pandas as pd

    import shlex

    dates, notices = [], []
    n = len(X)
    for c in X.columns:
        s = X[c]
        values = s.dropna()
        text = s.dtype == object or pd.api.types.is_string_dtype(s)
        sample = values.head(1000).astype(str) if text else None
        if pd.api.types.is_datetime64_any_dtype(s) or (
                text and len(values) and sample.str.fullmatch(ISO_DATE).mean() >= 0.95):
            dates.append(c)
            notices.append(f"column {c!r} holds dates; it is left out of the features (derive numbers from it, such "
                           f"as days since, to use it; list it in data.exclude to silence this).")
            continue
        kind = column_kind(s)
        distinct = values.nunique()
        flag = f"--exclude {shlex.quote(str(c))}"
        if n >= MIN_ROWS_FOR_ID and distinct == n and (kind == "categorical" or pd.api.types.is_integer_dtype(s)):
            notices.append(f"column {c!r} has a different value in every row, like an identifier; a model cannot "
                           f"learn from it: exclude it with {flag} or data.exclude = [\"{c}\"].")
        elif kind == "categorical" and distinct > max_categories:
            prose = distinct > len(values) / 2 and sample is not None and sample.str.contains(" ").mean() > 0.5
            encoded = (f"it is one-hot encoded on its {max_categories} most frequent (train.max_categories), the "
                       "others count as unseen" if onehot else "the booster takes its values as native categories")
            notices.append(f"column {c!r} {'looks like free text' if prose else 'has many values'} ({distinct} "
                           f"different values in {n} rows); {encoded}; exclude it with {flag} if it is not a feature.")
    return Screened(dates, notices)


def build_contract(
    X: pd.DataFrame, y: pd.Series, *, target: str, task: str, classes: Any = None, label_type: str | None = None,
    reference_rows: int = 1000, seed: int = 0, ignored: tuple[str, ...] = (),
) -> Contract:
    """Learn the input contract (types, categories, ranges, null rates, reference sample) from X."""
    cols = []
    for name in X.columns:
        s = X[name]
        kind = column_kind(s)
        spec: dict[str, Any] = {"name": str(name), "kind": kind, "dtype": str(s.dtype),
                                "null_rate": float(s.isna().mean())}
        if kind == "numeric":
            v = s.dropna().astype("float64")
            if len(v):
                spec.update(min=float(v.min()), max=float(v.max()), mean=float(v.mean()),
                            std=float(v.std(ddof=0)))
        elif kind == "categorical":
            spec["categories"] = tuple(sorted({str(x) for x in s.dropna()}))
        cols.append(ColumnSpec(**spec))
    ref = X.sample(n=min(reference_rows, len(X)), random_state=seed) if reference_rows else X.iloc[:0]
    reference = {
        "columns": [str(c) for c in X.columns],
        "rows": ref.astype(object).where(ref.notna(), None).to_numpy().tolist(),
    }
    typed = tuple(_plain(c) for c in classes) if classes is not None else None
    return Contract(
        target=target, task=task, columns=tuple(cols), classes=typed,
        label_type=(label_type or labels.infer_type(typed)) if typed is not None else None, reference=reference,
        ignored=tuple(map(str, ignored)),
    )


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def label_texts(series: pd.Series) -> set[str]:
    """The distinct non-null values of a target column as class labels in text (``1.0`` read from a CSV with
    gaps is ``"1"``), so that classes from two files compare equal."""
    return set(labels.coerce(series.dropna().unique(), "string")[0])


def expected_schema(frame: pd.DataFrame, target: str, task: str = "auto") -> tuple[dict[str, tuple[str, float]], set[str] | None]:
    """What new rows are checked against (:func:`validate_new_rows`): column -> (kind, null rate) of the
    training data, and its target classes as text for a classification (else None)."""
    columns = {str(c): (column_kind(frame[c]), float(frame[c].isna().mean())) for c in frame.columns}
    classes = None
    if target in frame.columns and infer_task(frame[target].dropna(), task) == "classification":
        classes = label_texts(frame[target])
    return columns, classes


def validate_new_rows(frame: pd.DataFrame, expected: dict[str, tuple[str, float]], *, target: str,
                      classes: set[str] | None, min_rows: int, max_null_increase: float) -> str | None:
    """Why ``frame`` (new rows, e.g. a file dropped for ``mlopsctl watch``) cannot join the training data, or
    None when it can.

    ``expected`` is the training data's column -> (kind, null rate); ``classes`` its target classes as text
    (:func:`label_texts`) for a classification, else None. New rows need the same columns (in any order) of
    the same kinds, a target with values, at least ``min_rows`` rows, null rates at most the training data's
    plus ``max_null_increase``, and no class the training data never had."""
    cols = list(map(str, frame.columns))
    missing = [c for c in expected if c not in cols]
    if missing:
        return f"missing column(s) {', '.join(missing)}; expected {', '.join(expected)}"
    extra = [c for c in cols if c not in expected]
    if extra:
        return f"unexpected column(s) {', '.join(extra)}; expected {', '.join(expected)}"
    if frame[target].isna().all():
        return f"target column {target!r} has no values"
    if len(frame) < min_rows:
        return f"{len(frame)} rows, fewer than watch.min_rows = {min_rows}"
    for name, (kind, null_rate) in expected.items():
        s = frame[name]
        if not s.isna().all():
            got = column_kind(s)
            if got != kind and not (kind == "numeric" and got == "boolean"):
                return f"column {name!r} is {got}, but the training data has it {kind}"
        rate = float(s.isna().mean())
        if rate > null_rate + max_null_increase:
            return (f"column {name!r} is {rate:.0%} null, above the training data's {null_rate:.0%} "
                    f"+ watch.max_null_increase {max_null_increase:.0%}")
    if classes is not None:
        new = sorted(label_texts(frame[target]) - classes)
        if new:
            return (f"target {target!r} has class(es) {', '.join(map(repr, new[:10]))} never seen in training "
                    f"(known: {', '.join(sorted(classes)[:20])}); retrain by hand to add a class")
    return None
