"""Validating a new file against the training data (data.validate_new_rows through the watcher's intake): what is
accepted, what is quarantined and why, on odd shapes."""

from pathlib import Path
from typing import Any

import pytest
from watch_helpers import (
    bad_files, make_watcher, fresh_rows, drop,
)


# ---- validation ---------------------------------------------------------------------------------------


BAD_NAMES = ["missing.csv", "no-label.csv", "extra.csv", "types.csv", "target-type.parquet", "target-null.csv",
             "few.csv", "nulls.csv", "binary.csv", "empty.csv", "latin1.csv", "nul.csv", "junk.parquet",
             "notes.txt", "README"]


def test_validate_accepts_files_matching_the_contract(bc_project: Path):
    w, _ = make_watcher(bc_project)
    df = fresh_rows(bc_project, 40, 3)
    assert w.intake.validate(drop(df, w.folder / "ok.csv")) == (True, None, 40)
    assert w.intake.validate(drop(df, w.folder / "ok.parquet")) == (True, None, 40)
    # a few nulls, within max_null_increase, and rows in another column order are fine
    df.loc[:3, "mean_radius"] = None
    assert w.intake.validate(drop(df[list(reversed(df.columns))], w.folder / "ok2.csv")) == (True, None, 40)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_validate_rejects_with_the_exact_reason(bc_project: Path, name: str):
    w, _ = make_watcher(bc_project)
    write, reason = bad_files(bc_project)[name]
    path = w.folder / name
    write(path)
    ok, got, _rows = w.intake.validate(path)
    assert (ok, got) == (False, reason.format(path=path))


ODD = {"size (cm)": ("numeric", 0.0), "v.2": ("numeric", 0.25), "ünï code": ("categorical", 0.0),
       "flag": ("boolean", 0.0), "label": ("numeric", 0.34)}


def _odd_rows(n: int = 12, **changes: Any):
    """n rows matching ODD (the label column: integer classes read back as floats, with a gap)."""
    import pandas as pd

    df = pd.DataFrame({"size (cm)": [float(i) for i in range(n)], "v.2": [None if i % 4 == 0 else i for i in range(n)],
                       "ünï code": (["α", "β", "γ"] * n)[:n], "flag": [i % 2 == 0 for i in range(n)],
                       "label": ([1.0, 2.0, None] * n)[:n]})
    return df.assign(**changes)


@pytest.mark.parametrize("frame, classes, reason", [
    (_odd_rows(), {"1", "2"}, None),  # 1.0 and 2.0 are the classes "1" and "2"
    (_odd_rows()[["label", "flag", "ünï code", "v.2", "size (cm)"]], {"1", "2"}, None),  # another column order
    (_odd_rows(), None, None),  # regression: no class check
    (_odd_rows(label=[1.0, 3.0, 2.0] * 4), {"1", "2"},
     "target 'label' has class(es) '3' never seen in training (known: 1, 2); retrain by hand to add a class"),
    (_odd_rows(label=[True, False, True] * 4), {"True", "False"}, None),  # boolean labels as text
    (_odd_rows(flag=[0, 1] * 6), {"1", "2"}, "column 'flag' is numeric, but the training data has it boolean"),
    (_odd_rows().assign(**{"size (cm)": [True, False] * 6}), {"1", "2"}, None),  # ... but booleans are numbers
    (_odd_rows().rename(columns={"v.2": "v 2"}), {"1", "2"},
     "missing column(s) v.2; expected size (cm), v.2, ünï code, flag, label"),
    (_odd_rows().assign(**{"id.x": range(12)}), {"1", "2"},
     "unexpected column(s) id.x; expected size (cm), v.2, ünï code, flag, label"),
    (_odd_rows(label=[None] * 12), {"1", "2"}, "target column 'label' has no values"),
    (_odd_rows(9), {"1", "2"}, "9 rows, fewer than watch.min_rows = 10"),
    (_odd_rows().assign(**{"v.2": [None] * 6 + [1.0] * 6}), {"1", "2"},
     "column 'v.2' is 50% null, above the training data's 25% + watch.max_null_increase 20%"),
    (_odd_rows().assign(**{"ünï code": [None] * 12}), {"1", "2"},
     "column 'ünï code' is 100% null, above the training data's 0% + watch.max_null_increase 20%"),
    (_odd_rows().assign(**{"size (cm)": ["x"] * 12}), {"1", "2"},
     "column 'size (cm)' is categorical, but the training data has it numeric"),
])
def test_validate_new_rows_on_odd_shapes(frame, classes, reason):
    """The data layer's check of new rows, without a store: odd column names, integer classes that a CSV gap
    turned into floats, boolean labels and columns, all-null columns."""
    from mlopsctl import data

    assert data.validate_new_rows(frame, ODD, target="label", classes=classes, min_rows=10,
                                  max_null_increase=0.2) == reason
