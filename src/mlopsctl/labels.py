"""Class labels keep their type: integer, boolean, float-coded or text, from the training file to every output.

The ONNX graph is trained on labels it can carry: text stays text, and integer, boolean and float-coded classes
become int64 codes equal to their value (``True`` -> 1, ``3.0`` -> 3). The contract records which of the four
types the training file had (``Contract.label_type``); :func:`decoder` turns the graph's label output back into
that type, :func:`coerce` reads labels that arrive later (feedback files, new data, held-out rows) in whatever
text form they come (``1``, ``1.0``, ``true``) as the same type, and :func:`text` writes a label the same way
everywhere a label must be text (JSON object keys, ``proba_<class>`` column names).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

LABEL_TYPES = ("integer", "boolean", "float", "string")
TRUE_TEXT = frozenset({"true", "t", "yes", "y", "1", "1.0"})
FALSE_TEXT = frozenset({"false", "f", "no", "n", "0", "0.0"})


def infer_type(classes: Iterable[Any]) -> str:
    """The label type of stored classes (contracts written before label types were recorded)."""
    values = list(classes)
    if values and all(isinstance(v, bool) for v in values):
        return "boolean"
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "integer"
    if values and all(isinstance(v, float) for v in values):
        return "float"
    return "string"


def of_series(y: Any, had_nulls: bool) -> str:
    """The label type of a target column as pandas read it (nulls already dropped).

    An integer column with a missing value reaches pandas as floats, so a float column of whole numbers
    counts as integer when the target had nulls, and as float-coded (the file wrote ``1.0``) when not."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(y):
        return "boolean"
    if pd.api.types.is_integer_dtype(y):
        return "integer"
    if pd.api.types.is_float_dtype(y):
        return "integer" if had_nulls else "float"
    values = y.dropna()
    if len(values) and all(isinstance(v, bool) or str(v).strip().lower() in ("true", "false") for v in values):
        return "boolean"
    return "string"


def _one(value: Any, label_type: str) -> Any:
    """``value`` as a label of ``label_type``; None when it is null or cannot be one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        value = value.item()
    if label_type == "string":
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if label_type == "boolean":
            return True if low in TRUE_TEXT else False if low in FALSE_TEXT else None
        try:
            value = float(low)
        except ValueError:
            return None
    if isinstance(value, bool):
        return value if label_type == "boolean" else int(value) if label_type == "integer" else float(value)
    if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if label_type == "boolean":
        return bool(value) if value in (0, 1) else None
    if label_type == "integer":
        return int(value) if float(value).is_integer() else None
    return float(value)


def coerce(values: Iterable[Any], label_type: str) -> tuple[Any, Any]:
    """(labels as a typed numpy array, mask of the values that are such a label). Invalid and null
    values are left as None in an object array; callers drop them with the mask."""
    import numpy as np

    out = [_one(v, label_type) for v in values]
    valid = np.fromiter((v is not None for v in out), dtype=bool, count=len(out))
    if valid.all():
        dtype = {"integer": np.int64, "boolean": np.bool_, "float": np.float64}.get(label_type, object)
        return np.array(out, dtype=dtype), valid
    return np.array(out, dtype=object), valid


def decoder(label_type: str | None) -> Callable[[Any], Any] | None:
    """The graph's label output -> the training file's type; None where the graph already has it."""
    import numpy as np

    if label_type == "boolean":
        return lambda codes: np.asarray(codes).astype(np.bool_)
    if label_type == "float":
        return lambda codes: np.asarray(codes).astype(np.float64)
    return None


def text(value: Any) -> str:
    """A typed label written as text the same way everywhere: ``true``/``false``, ``3``, ``1.0``, ``yes``."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)
