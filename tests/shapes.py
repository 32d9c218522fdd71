"""Data shapes nobody designed: generated tables with every kind of label and column a real CSV file has.

``SHAPES[name](rng)`` returns a :class:`Shape`: the frame, its target column, and what mlopsctl must make of
it (the task, the label type, the V2 datatype of the label output). Tests push each through the whole loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd


@dataclass
class Shape:
    frame: pd.DataFrame
    target: str
    task: str  # classification | regression
    label_type: str | None  # integer | boolean | float | string (classification)
    v2_label: str | None  # V2 datatype of the label output
    excluded: tuple[str, ...] = ()  # columns training must leave out (dates; data.exclude is given by the test)
    notices: tuple[str, ...] = ()  # substrings of notices training must give
    dropped: int = 0  # rows without a target
    exclude: tuple[str, ...] = ()  # what the test passes as --exclude
    extra: dict[str, Any] = field(default_factory=dict)


def _features(rng: np.random.Generator, n: int) -> pd.DataFrame:
    return pd.DataFrame({
        "x1": rng.normal(size=n).round(4),
        "x2": rng.uniform(0, 100, size=n).round(2),
        "plan": rng.choice(["basic", "pro", "team"], size=n),
        "count": rng.integers(0, 20, size=n),
    })


def _signal(df: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    return df["x1"].to_numpy() + (df["plan"] == "pro").to_numpy() + rng.normal(scale=0.5, size=len(df))


def _binary(values: tuple[Any, Any], label_type: str, v2: str, n: int = 240) -> Callable[[np.random.Generator], Shape]:
    def make(rng: np.random.Generator) -> Shape:
        df = _features(rng, n)
        df["y"] = np.where(_signal(df, rng) > 0.3, values[1], values[0])
        return Shape(df, "y", "classification", label_type, v2)

    return make


def int_multiclass_gaps(rng: np.random.Generator) -> Shape:
    df = _features(rng, 300)
    s = _signal(df, rng)
    df["grade"] = np.select([s < -0.3, s < 0.7], [1, 3], 7)
    return Shape(df, "grade", "classification", "integer", "INT64")


def text_labels(rng: np.random.Generator) -> Shape:
    df = _features(rng, 240)
    s = _signal(df, rng)
    df["answer"] = np.select([s < 0, s < 1], ["nö, danke", "yes please"], "peut-être ✓")
    return Shape(df, "answer", "classification", "string", "BYTES")


def int_target_with_gaps_in_rows(rng: np.random.Generator) -> Shape:
    """0/1 labels with some rows missing theirs: pandas reads the column as floats."""
    df = _features(rng, 250)
    df["churned"] = (_signal(df, rng) > 0.3).astype(int).astype(float)
    df.loc[rng.choice(len(df), 9, replace=False), "churned"] = np.nan
    return Shape(df, "churned", "classification", "integer", "INT64", dropped=9, notices=("9 row(s) of",))


def bool_target_with_gaps_in_rows(rng: np.random.Generator) -> Shape:
    df = _features(rng, 250)
    y = pd.Series(_signal(df, rng) > 0.3, dtype=object)
    y[rng.choice(len(df), 5, replace=False)] = None
    df["active"] = y
    return Shape(df, "active", "classification", "boolean", "BOOL", dropped=5)


def regression_int(rng: np.random.Generator) -> Shape:
    df = _features(rng, 240)
    df["visits"] = (200 + 40 * _signal(df, rng)).round().astype(int)
    return Shape(df, "visits", "regression", None, None)


def regression_float(rng: np.random.Generator) -> Shape:
    df = _features(rng, 240)
    df["price"] = (1000 * _signal(df, rng) + 0.01 * df["x2"]).round(3)
    return Shape(df, "price", "regression", None, None)


def odd_column_names(rng: np.random.Generator) -> Shape:
    df = _features(rng, 240).rename(columns={"x1": "mean radius", "x2": "a.b.c", "plan": "größe €", "count": "日本 数"})
    df["label"] = np.where(df["mean radius"] + rng.normal(scale=0.5, size=len(df)) > 0, "hi", "lo")
    return Shape(df, "label", "classification", "string", "BYTES")


def missing_feature_values(rng: np.random.Generator) -> Shape:
    df = _features(rng, 260)
    df["y"] = (_signal(df, rng) > 0.3).astype(int)
    for col, share in (("x1", 0.1), ("plan", 0.15), ("count", 0.05)):
        rows = rng.choice(len(df), int(share * len(df)), replace=False)
        df[col] = df[col].astype(object) if col == "plan" else df[col].astype(float)
        df.loc[rows, col] = None if col == "plan" else np.nan
    return Shape(df, "y", "classification", "integer", "INT64")


def minority_class(rng: np.random.Generator) -> Shape:
    df = _features(rng, 400)
    score = _signal(df, rng)
    df["fraud"] = (score >= np.quantile(score, 0.97)).astype(int)
    return Shape(df, "fraud", "classification", "integer", "INT64")


def tiny(rng: np.random.Generator) -> Shape:
    df = _features(rng, 12)
    df["y"] = ["a", "b"] * 6
    return Shape(df, "y", "classification", "string", "BYTES")


def wide(rng: np.random.Generator) -> Shape:
    n, k = 200, 400
    df = pd.DataFrame(rng.normal(size=(n, k)).round(3), columns=[f"f{i:03d}" for i in range(k)])
    df["y"] = (df["f000"] - df["f001"] + rng.normal(scale=0.5, size=n) > 0).astype(int)
    return Shape(df, "y", "classification", "integer", "INT64")


def high_cardinality(rng: np.random.Generator) -> Shape:
    df = _features(rng, 600)
    df["city"] = rng.choice([f"city-{i:03d}" for i in range(300)], size=len(df))
    df["y"] = (_signal(df, rng) + df["city"].str[-1].astype(int) / 10 > 0.5).astype(int)
    return Shape(df, "y", "classification", "integer", "INT64", notices=("column 'city' has many values",))


def ids_and_dates(rng: np.random.Generator) -> Shape:
    df = _features(rng, 240)
    df.insert(0, "customer_id", np.arange(10_000, 10_000 + len(df)))
    df["order_ref"] = [f"ORD-{i:06d}" for i in rng.permutation(len(df))]
    df["signup_date"] = pd.date_range("2024-01-01", periods=len(df), freq="D").strftime("%Y-%m-%d")
    df["y"] = np.where(_signal(df, rng) > 0.3, "yes", "no")
    return Shape(df, "y", "classification", "string", "BYTES", excluded=("order_ref", "signup_date"),
                 exclude=("order_ref",),
                 notices=("column 'customer_id' has a different value in every row", "column 'signup_date' holds dates"))


def boolean_features(rng: np.random.Generator) -> Shape:
    df = _features(rng, 240)
    df["is_member"] = rng.random(len(df)) < 0.5
    df["y"] = np.where(_signal(df, rng) + df["is_member"] > 0.8, 1, -1)
    return Shape(df, "y", "classification", "integer", "INT64")


SHAPES: dict[str, Callable[[np.random.Generator], Shape]] = {
    "int-0-1": _binary((0, 1), "integer", "INT64"),
    "bool": _binary((False, True), "boolean", "BOOL"),
    "float-0.0-1.0": _binary((0.0, 1.0), "float", "FP64"),
    "int-minus1-1": _binary((-1, 1), "integer", "INT64"),
    "int-multiclass-gaps": int_multiclass_gaps,
    "text-unicode": text_labels,
    "int-missing-target": int_target_with_gaps_in_rows,
    "bool-missing-target": bool_target_with_gaps_in_rows,
    "regression-int": regression_int,
    "regression-float": regression_float,
    "odd-column-names": odd_column_names,
    "nan-features": missing_feature_values,
    "minority-3pct": minority_class,
    "tiny-12-rows": tiny,
    "wide-400-columns": wide,
    "high-cardinality": high_cardinality,
    "ids-and-dates": ids_and_dates,
    "bool-features-minus1-1": boolean_features,
}


def make_shape(name: str, seed: int = 0) -> Shape:
    return SHAPES[name](np.random.default_rng(seed))


def features_of(shape: Shape) -> list[str]:
    return [c for c in shape.frame.columns if c != shape.target]


def json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON records: NaN -> null, numpy scalars -> Python values."""
    out = []
    for row in frame.astype(object).where(frame.notna(), None).to_dict("records"):
        out.append({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
    return out
