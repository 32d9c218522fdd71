"""Reading tables, column kinds, task inference, fingerprints and the checks before a split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlopsctl import data
from mlopsctl.errors import InvalidInputError, NotFoundError
from mlopsctl.training import train as training

# ---- read_table: one-line errors ------------------------------------------------------------------------


def write(path, content: bytes | str):
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


def read_error(path) -> tuple[type, str]:
    with pytest.raises((InvalidInputError, NotFoundError)) as info:
        data.read_table(path)
    message = str(info.value)
    assert "\n" not in message
    return type(info.value), message


def test_missing_file(tmp_path):
    p = tmp_path / "nope.csv"
    assert read_error(p) == (
        NotFoundError, f"data file {p} does not exist; check the path or set data.path in .mlops.toml."
    )


def test_directory(tmp_path):
    (tmp_path / "folder.csv").mkdir()
    assert read_error(tmp_path / "folder.csv") == (
        InvalidInputError, f"{tmp_path / 'folder.csv'} is a folder, not a data file; point at a .csv or .parquet file."
    )


@pytest.mark.parametrize(("name", "shown"), [("data.txt", "'.txt'"), ("data.xlsx", "'.xlsx'"), ("data", "'(none)'")])
def test_unsupported_extension(tmp_path, name, shown):
    p = write(tmp_path / name, "a,b\n1,2\n")
    assert read_error(p) == (
        InvalidInputError, f"{name} has an unsupported extension {shown}; use one of .csv, .parquet, .pq."
    )


@pytest.mark.parametrize("content", [b"", "\n\n\n"])
def test_empty_file(tmp_path, content):
    p = write(tmp_path / "empty.csv", content)
    assert read_error(p) == (InvalidInputError, f"{p} is empty; add a header row and data rows.")


def test_header_only(tmp_path):
    p = write(tmp_path / "header.csv", "a,b,label\n")
    assert read_error(p) == (InvalidInputError, f"{p} has no data rows; add rows below the header.")


def test_header_only_parquet(tmp_path):
    p = tmp_path / "header.parquet"
    pd.DataFrame({"a": pd.Series([], dtype="float64")}).to_parquet(p)
    assert read_error(p) == (InvalidInputError, f"{p} has no data rows; add rows below the header.")


def test_ragged_csv(tmp_path):
    p = write(tmp_path / "ragged.csv", "a,b\n1,2\n3,4,5,6\n")
    assert read_error(p) == (
        InvalidInputError,
        f"{p} could not be parsed as CSV (Error tokenizing data. C error: Expected 2 fields in line 3, saw 4); "
        "fix the file.",
    )


def test_binary_junk_csv(tmp_path):
    p = write(tmp_path / "junk.csv", bytes(range(256)) * 4)
    assert read_error(p) == (InvalidInputError, f"{p} is not UTF-8 text; save it as UTF-8 CSV or as Parquet.")


def test_not_utf8(tmp_path):
    p = write(tmp_path / "latin1.csv", "name,city\nJosé,Málaga\n".encode("latin-1"))
    assert read_error(p) == (InvalidInputError, f"{p} is not UTF-8 text; save it as UTF-8 CSV or as Parquet.")


def test_junk_parquet(tmp_path):
    p = write(tmp_path / "junk.parquet", b"definitely not parquet" * 10)
    kind, message = read_error(p)
    assert kind is InvalidInputError
    assert message.startswith(f"{p} could not be parsed as PARQUET (")
    assert "magic bytes" in message  # pyarrow's reason is kept
    assert message.endswith("); fix the file.")


def test_csv_and_parquet_read(tmp_path):
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet", index=False)
    df.to_parquet(tmp_path / "d.PQ", index=False)
    for name in ("d.csv", "d.parquet", "d.PQ"):
        got = data.read_table(tmp_path / name)
        assert got.shape == (2, 2)
        assert list(got.columns) == ["a", "b"]
        assert got["a"].tolist() == [1, 2]


def test_missing_file_via_cli_exits_3(cli, assert_error, tmp_path):
    assert_error(cli("data", "add", "missing.csv"), 3,
                 f"data file {tmp_path.resolve() / 'missing.csv'} does not exist; check the path or set "
                 "data.path in .mlops.toml.")
    assert_error(cli("train", "--json"), 3,
                 f"data file {tmp_path.resolve() / 'data' / 'train.csv'} does not exist; check the path or set "
                 "data.path in .mlops.toml.")


def test_bad_files_via_cli_exit_2(cli, assert_error, tmp_path):
    write(tmp_path / "empty.csv", b"")
    assert_error(cli("data", "add", "empty.csv"), 2,
                 f"{tmp_path.resolve() / 'empty.csv'} is empty; add a header row and data rows.")
    write(tmp_path / "notes.txt", "a\n1\n")
    assert_error(cli("train", "--json", "--data", "notes.txt"), 2,
                 "notes.txt has an unsupported extension '.txt'; use one of .csv, .parquet, .pq.")


# ---- column kinds ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("series", "kind"), [
    (pd.Series([1, 2, 3]), "numeric"),
    (pd.Series([1.5, np.nan, 3.0]), "numeric"),
    (pd.Series([np.nan, np.nan]), "numeric"),  # all-null float column
    (pd.Series(["a", "b", None]), "categorical"),
    (pd.Series(["1", "two"]), "categorical"),
    (pd.Series([True, False, True]), "boolean"),
    (pd.Series(["True", "False", None]), "boolean"),
    (pd.Series([" true", "FALSE "], dtype=object), "boolean"),
    (pd.Series(["True", "maybe"]), "categorical"),
    (pd.Series(["yes", "no"]), "categorical"),  # only true/false spellings are read as booleans
])
def test_column_kind(series, kind):
    assert data.column_kind(series) == kind


def test_column_kinds_of_a_csv(tmp_path):
    write(tmp_path / "k.csv", "n,f,c,b,bs\n1,1.5,x,True,True\n2,,y,False,\n3,2.5,,True,False\n")
    df = data.read_table(tmp_path / "k.csv")
    assert {c: data.column_kind(df[c]) for c in df} == {
        "n": "numeric", "f": "numeric", "c": "categorical", "b": "boolean", "bs": "boolean",
    }
    schema = data.schema_of(df)
    assert [(c["name"], c["kind"], c["null_rate"]) for c in schema["columns"]] == [
        ("n", "numeric", 0.0), ("f", "numeric", 0.333333), ("c", "categorical", 0.333333),
        ("b", "boolean", 0.0), ("bs", "boolean", 0.333333),
    ]


def test_churn_example_kinds():
    from pathlib import Path

    df = data.read_table(Path(__file__).resolve().parents[1] / "examples" / "churn" / "data" / "train.csv")
    assert {c: data.column_kind(df[c]) for c in df} == {
        "tenure_months": "numeric", "monthly_charges": "numeric", "plan": "categorical", "region": "categorical",
        "contract": "categorical", "has_support": "boolean", "age": "numeric", "churned": "categorical",
    }


# ---- task inference -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("y", "requested", "task"), [
    (pd.Series(["yes", "no", "yes"]), "auto", "classification"),
    (pd.Series([True, False]), "auto", "classification"),
    (pd.Series([0, 1, 2] * 10), "auto", "classification"),
    (pd.Series(np.arange(20)), "auto", "classification"),  # 20 distinct integers: still classes
    (pd.Series(np.arange(21)), "auto", "regression"),  # more than 20: a quantity
    (pd.Series([1.0, 2.0, 1.0, np.nan]), "auto", "classification"),  # integral floats (nulls ignored)
    (pd.Series([0.5, 1.25, 3.0]), "auto", "regression"),
    (pd.Series(np.linspace(0, 1, 50)), "auto", "regression"),
    (pd.Series([0, 1, 0, 1]), "regression", "regression"),  # override
    (pd.Series(np.arange(100)), "classification", "classification"),  # override
    (pd.Series(["a", "b"]), "classification", "classification"),
])
def test_infer_task(y, requested, task):
    assert data.infer_task(y, requested) == task


def test_regression_on_a_text_target_is_refused():
    with pytest.raises(InvalidInputError) as info:
        data.infer_task(pd.Series(["a", "b"], name="label"), "regression")
    assert str(info.value) == (
        "task 'regression' needs a numeric target, but 'label' holds text; use task = \"classification\"."
    )


@pytest.mark.parametrize(("example", "target", "task"), [
    ("breast-cancer", "diagnosis", "classification"),
    ("diabetes", "progression", "regression"),
    ("churn", "churned", "classification"),
])
def test_examples_infer_their_task(example, target, task):
    from pathlib import Path

    df = data.read_table(Path(__file__).resolve().parents[1] / "examples" / example / "data" / "train.csv")
    assert data.split_target(df, target).task == task


# ---- fingerprints ---------------------------------------------------------------------------------------

@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 50
    return pd.DataFrame({
        "x": rng.normal(size=n).round(6),
        "n": rng.integers(0, 100, n),
        "s": rng.choice(["a", "b", "c"], n),
        "b": rng.random(n) < 0.5,
        "label": rng.choice(["yes", "no"], n),
    }).assign(x=lambda d: d["x"].where(d.index % 7 != 0))  # some nulls


def test_fingerprint_is_stable_across_rereads(tmp_path, frame):
    frame.to_csv(tmp_path / "f.csv", index=False)
    a = data.fingerprint(data.read_table(tmp_path / "f.csv"))
    b = data.fingerprint(data.read_table(tmp_path / "f.csv"))
    assert a == b
    assert len(a) == 64 and int(a, 16) >= 0


def test_fingerprint_is_the_same_for_csv_and_parquet(tmp_path, frame):
    frame.to_csv(tmp_path / "f.csv", index=False)
    frame.to_parquet(tmp_path / "f.parquet", index=False)
    from_csv = data.read_table(tmp_path / "f.csv")
    from_parquet = data.read_table(tmp_path / "f.parquet")
    assert data.fingerprint(from_csv) == data.fingerprint(from_parquet) == data.fingerprint(frame)


def test_fingerprint_ignores_file_formatting(tmp_path):
    write(tmp_path / "a.csv", "a,b\n1,x\n2,y\n")
    write(tmp_path / "b.csv", "a,b\r\n1,\"x\"\r\n2,y")
    assert data.fingerprint(data.read_table(tmp_path / "a.csv")) == data.fingerprint(data.read_table(tmp_path / "b.csv"))


def test_fingerprint_ignores_the_row_index(frame):
    assert data.fingerprint(frame) == data.fingerprint(frame.set_axis(range(100, 150)))


@pytest.mark.parametrize("change", [
    lambda d: d.assign(x=d["x"].where(d.index != 3, 42.0)),
    lambda d: d.assign(s=d["s"].where(d.index != 3, "zzz")),
    lambda d: d.assign(n=d["n"].where(d.index != 3, -1)),
    lambda d: d.assign(b=d["b"].where(d.index != 3, ~d["b"])),
    lambda d: d.rename(columns={"x": "x2"}),
    lambda d: d.iloc[::-1],  # row order is content
    lambda d: d.iloc[:-1],
])
def test_fingerprint_changes_when_content_changes(frame, change):
    assert data.fingerprint(change(frame.copy())) != data.fingerprint(frame)


def test_fingerprint_changes_when_one_cell_of_a_file_changes(tmp_path, frame):
    frame.to_csv(tmp_path / "f.csv", index=False)
    before = data.fingerprint(data.read_table(tmp_path / "f.csv"))
    frame.loc[10, "n"] += 1
    frame.to_csv(tmp_path / "f.csv", index=False)
    assert data.fingerprint(data.read_table(tmp_path / "f.csv")) != before


# ---- checks before the split ----------------------------------------------------------------------------

def prepare(df: pd.DataFrame, model: str = "sklearn.linear_model.LogisticRegression", **kw):
    spec = training.TrainSpec(model=model, target=kw.pop("target", "label"), source="t.csv", **kw)
    return training.prepare(df, spec)


def prepare_error(df, **kw) -> str:
    with pytest.raises(InvalidInputError) as info:
        prepare(df, **kw)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_target_absent_lists_the_columns():
    df = pd.DataFrame({"age": [1, 2], "income": [3, 4], "churn": [0, 1]})
    assert prepare_error(df) == (
        "target column 'label' is not in t.csv; columns are: age, income, churn (set data.target or pass --target)."
    )


def test_target_all_null():
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "label": [None, None, None]})
    assert prepare_error(df) == "target column 'label' in t.csv has no values (all null); fill it in."


def test_only_the_target_column():
    assert prepare_error(pd.DataFrame({"label": [0, 1] * 10})) == (
        "t.csv has only the target column 'label'; add feature columns."
    )


def test_rows_with_a_null_target_are_dropped():
    df = pd.DataFrame({"a": range(30), "label": (["x", "y", None] * 10)})
    p = prepare(df)
    assert len(p.X) == len(p.y) == 20
    assert set(p.y) == {"x", "y"}


def test_too_few_rows_for_classification():
    df = pd.DataFrame({"a": range(6), "label": ["x", "y"] * 3})
    assert prepare_error(df) == (
        "t.csv has 6 rows, fewer than the split needs (at least 10 for 2 classes with test_size=0.2); "
        "add rows or change train.test_size."
    )


def test_too_few_rows_for_regression():
    df = pd.DataFrame({"a": range(4), "label": [0.5, 1.5, 2.5, 3.7]})
    assert prepare_error(df, model="sklearn.linear_model.LinearRegression") == (
        "t.csv has 4 rows, fewer than the split needs (at least 10 with test_size=0.2); "
        "add rows or change train.test_size."
    )


def test_single_class():
    df = pd.DataFrame({"a": range(20), "label": ["only"] * 20})
    assert prepare_error(df) == (
        "target 'label' in t.csv has a single class ('only'); classification needs at least two."
    )


def test_a_class_with_one_row():
    df = pd.DataFrame({"a": range(21), "label": ["x"] * 10 + ["y"] * 10 + ["z"]})
    assert prepare_error(df) == (
        "class 'z' of 'label' has only 1 row in t.csv; the stratified split needs at least 2 per class "
        "(add rows or drop that class)."
    )


def test_fractional_classes():
    df = pd.DataFrame({"a": range(20), "label": [0.5, 1.5] * 10})
    assert prepare_error(df, task="classification") == (
        "target 'label' has fractional values, which cannot be classes; set data.task = \"regression\"."
    )


def test_a_valid_frame_is_prepared():
    df = pd.DataFrame({"a": range(40), "c": ["p", "q"] * 20, "label": ["x", "y", "y", "x"] * 10})
    p = prepare(df)
    assert p.task == "classification"
    assert list(p.X.columns) == ["a", "c"]
    assert p.y.tolist() == df["label"].tolist()


def test_split_errors_via_cli(cli, assert_error, tmp_path):
    # (--json: the progress display of plain `train` is covered in test_cli_train.py)
    write(tmp_path / "tiny.csv", "a,label\n1,x\n2,y\n3,x\n")
    (tmp_path / ".mlops.toml").write_text('[train]\nmodel = "sklearn.linear_model.LogisticRegression"\n')
    assert_error(cli("train", "--json", "--data", "tiny.csv"), 2,
                 "tiny.csv has 3 rows, fewer than the split needs (at least 10 for 2 classes with test_size=0.2); "
                 "add rows or change train.test_size.")
    assert_error(cli("train", "--json", "--data", "tiny.csv", "--target", "y"), 2,
                 "target column 'y' is not in tiny.csv; columns are: a, label (set data.target or pass --target).")
    # nothing was recorded: input errors come before a run exists
    result = cli("runs", "list", "--json")
    assert result.stdout == "[]\n"
