"""CSV dialects (issue 14): the files Excel and other tools write, in both readers.

``data.read_table`` (train, data add, watch; pandas) and batch predict (``mlopsctl predict``; Arrow, the file
split into blocks between records) must read a dialect file exactly as they read the plain comma/LF file
holding the same data: a UTF-8 byte-order mark, CRLF, mixed and old-Mac line ends, a last line without a line
end, quoted fields holding delimiters, newlines and doubled quotes, ``;``, tab and ``|`` delimiters (found
in the header, or set with data.delimiter) and decimal commas (data.decimal). Every file is generated here. The
model is a real 10-tree forest trained through the CLI on the plain file; predictions go through the real CLI
and ONNX Runtime.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from served_projects import cli_ok, module_isolation, private_copy

from mlopsctl import batch, csv_blocks, data
from mlopsctl.errors import InvalidInputError

ROWS = 150
HEADER = ["num a", "n.int", "città", "flag", "label"]
TEXTS = ["plain", "with, comma", "semi; colon", "tab\there", "pipe | bar", 'say "hi"', "two\nlines",
         "crlf\r\ninside", "émoji ✓", '"quoted"', " spaced ", "a,b;c\t|d"]


def table() -> list[list[str]]:
    """ROWS rows as text: a float column with a decimal point (blank now and then), an integer, a text column
    holding delimiters, quotes, newlines and unicode, a boolean and a 0/1 label that depends on the float."""
    rng = np.random.default_rng(7)
    rows = []
    for i in range(ROWS):
        x = float(rng.normal())
        label = int(x + 0.3 * rng.normal() > 0)
        rows.append([repr(round(x, 6)) if i % 17 else "", str(int(rng.integers(0, 50))), TEXTS[i % len(TEXTS)],
                     "True" if i % 3 else "False", str(label)])
    return rows


def csv_text(rows: list[list[str]], *, delimiter: str = ",", line_end: str = "\n", quote_all: bool = False,
             decimal: str = ".", header_end: str | None = None, last_end: bool = True) -> str:
    """RFC 4180 text: a field holding the delimiter, a quote or a line end (any, unlike Python's csv.writer
    with lineterminator="\\r") is quoted, its quotes doubled."""
    def field(value: str) -> str:
        if quote_all or any(c in value for c in (delimiter, '"', "\n", "\r")):
            return '"' + value.replace('"', '""') + '"'
        return value

    def lines(records: list[list[str]], end: str) -> str:
        return "".join(delimiter.join(map(field, r)) + end for r in records)

    body = [[r[0].replace(".", decimal), *r[1:]] for r in rows]
    text = lines([HEADER], header_end or line_end) + lines(body, line_end)
    return text if last_end else text[: -len(line_end)]


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


# id -> (csv_text options, byte-order mark, settings the file needs: (data.delimiter, data.decimal))
DIALECTS = {
    "bom": (dict(), True, ("auto", ".")),
    "crlf": (dict(line_end="\r\n"), False, ("auto", ".")),
    "excel-utf8": (dict(line_end="\r\n"), True, ("auto", ".")),
    "crlf-header-lf-rows-no-last-newline": (dict(header_end="\r\n", last_end=False), False, ("auto", ".")),
    "crlf-no-last-newline": (dict(line_end="\r\n", last_end=False), True, ("auto", ".")),
    "old-mac-cr": (dict(line_end="\r"), False, ("auto", ".")),
    "quote-all-crlf": (dict(quote_all=True, line_end="\r\n"), False, ("auto", ".")),
    "semicolon": (dict(delimiter=";"), False, ("auto", ".")),
    "semicolon-decimal-comma-excel": (dict(delimiter=";", decimal=",", line_end="\r\n"), True, ("auto", ",")),
    "tab": (dict(delimiter="\t"), False, ("auto", ".")),
    "pipe": (dict(delimiter="|", quote_all=True), False, ("auto", ".")),
    "semicolon-set-explicitly": (dict(delimiter=";"), False, (";", ".")),
}


def dialect_file(folder: Path, name: str) -> tuple[Path, tuple[str, str]]:
    options, bom, dialect = DIALECTS[name]
    return write(folder / f"{name}.csv", csv_text(table(), **options), bom), dialect


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project trained on the plain file data/train.csv (comma, LF, quotes only where needed): run 1 = m/1, a
    10-tree forest; plain.65536.csv and plain.1.csv are its predictions for that file."""
    from mlopsctl.store import db

    root = tmp_path_factory.mktemp("dialects")
    project = root / "p"
    with module_isolation(root):
        cli_ok("init", project)
        cfg = project / ".mlops.toml"
        cfg.write_text(re.sub(r"(?m)^params = .*$", "params = { n_estimators = 10 }", cfg.read_text()))
        write(project / "data" / "train.csv", csv_text(table()))
        cli_ok("-C", project, "train")
        cli_ok("-C", project, "register", 1, "--name", "m")
        for chunk in (65536, 1):  # batches of one row: what tiny blocks are compared with (ONNX Runtime's float
            # sums can differ in the last bit between batch sizes)
            cli_ok("-C", project, "predict", "m/1", project / "data" / "train.csv", "-o", project / f"plain.{chunk}.csv",
                   "--chunk-size", chunk)
    db.close_all()
    return project


@pytest.fixture
def proj(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return private_copy(template, tmp_path, monkeypatch)


def settings_env(dialect: tuple[str, str]) -> dict[str, str]:
    return {"MLOPS_DATA_DELIMITER": dialect[0], "MLOPS_DATA_DECIMAL": dialect[1]}


def predict(project: Path, ref: str, src: Path, out: Path, env: dict[str, str], chunk: int = 65536) -> dict:
    from mlopsctl.cli.main import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["-C", str(project), "predict", ref, str(src), "-o", str(out), "--json",
                                      "--chunk-size", str(chunk)], env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


# ---- both readers read every dialect as the plain file ----------------------------------------------------

@pytest.mark.parametrize("name", list(DIALECTS))
def test_read_table_reads_the_dialect_as_the_plain_file(proj: Path, name: str):
    path, (delimiter, decimal) = dialect_file(proj, name)
    plain = data.read_table(proj / "data" / "train.csv")
    got = data.read_table(path, delimiter=delimiter, decimal=decimal)
    assert list(got.columns) == HEADER  # no "\ufeffnum a"
    pd.testing.assert_frame_equal(got, plain)
    assert got["città"].tolist()[:len(TEXTS)] == TEXTS  # quoted delimiters, "", \n and \r\n kept as written
    assert str(got["num a"].dtype) == "float64" and str(got["flag"].dtype) == "bool"


@pytest.mark.parametrize("block", [None, 1, 7, 64])
@pytest.mark.parametrize("name", list(DIALECTS))
def test_batch_predict_scores_the_dialect_as_the_plain_file(proj: Path, name: str, block: int | None,
                                                            monkeypatch: pytest.MonkeyPatch):
    """Every row scored, and the output (input columns, predictions, probabilities) byte for byte the plain
    file's; with tiny blocks too, so block boundaries fall inside quoted fields, "" pairs and CRLFs (then in
    batches of one row on both sides)."""
    chunk = 65536 if block is None else 1
    if block is not None:
        monkeypatch.setattr(batch, "BLOCK_BYTES", block)
    path, dialect = dialect_file(proj, name)
    summary = predict(proj, "m/1", path, proj / "out.csv", settings_env(dialect), chunk)
    assert (summary["rows"], summary["scored"], summary["failed"]) == (ROWS, ROWS, 0)
    assert (proj / "out.csv").read_bytes() == (proj / f"plain.{chunk}.csv").read_bytes()


@pytest.mark.parametrize("name", ["semicolon-decimal-comma-excel", "quote-all-crlf", "old-mac-cr"])
def test_training_on_a_dialect_file_is_training_on_the_plain_file(proj: Path, name: str):
    """train reads the dialect file (data.decimal from .mlops.toml, the delimiter found) into the plain file's
    data (same fingerprint, hence the same seeded model), and predict scores that same file with it."""
    path, (delimiter, decimal) = dialect_file(proj, name)
    cfg = proj / ".mlops.toml"
    cfg.write_text(cfg.read_text().replace('target = "label"\n', f'target = "label"\ndecimal = "{decimal}"\n'))
    run = json.loads(cli_ok("train", "--data", path, "--json").stdout)
    first = json.loads(cli_ok("runs", "show", "1", "--json").stdout)
    assert run["dataset"]["name"] == name and run["dataset"]["rows"] == ROWS
    assert run["dataset"]["fingerprint"] == first["dataset"]["fingerprint"]
    cli_ok("register", run["id"], "--name", "m")
    summary = predict(proj, "m/2", path, proj / "out.csv", {})
    assert (summary["rows"], summary["scored"], summary["failed"]) == (ROWS, ROWS, 0)
    scored = pd.read_csv(proj / "out.csv", keep_default_na=False)
    plain = pd.read_csv(proj / "plain.65536.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(scored, plain)
    assert set(scored["prediction"]) == {0, 1} and (scored["_error"] == "").all()


def test_data_add_and_watch_read_dialect_files(proj: Path):
    from mlopsctl.config import load_settings
    from mlopsctl.watch import Watcher

    path, _ = dialect_file(proj, "excel-utf8")
    added = json.loads(cli_ok("data", "add", path, "--json").stdout)
    first = json.loads(cli_ok("runs", "show", "1", "--json").stdout)
    assert added["fingerprint"] == first["dataset"]["fingerprint"]
    # the watcher validates a ;-file against the training data (itself read back from the artifact store) and
    # reads the file's stored bytes (as it does for training) into the same rows
    w = Watcher(load_settings({}, {}, proj), say=lambda line: None)
    src, _ = dialect_file(w.folder, "semicolon")
    assert w.intake.validate(src) == (True, None, ROWS)
    sha = w.retrain.arts.put_file(src)
    pd.testing.assert_frame_equal(w.retrain._read_blob(sha, ".csv"), data.read_table(proj / "data" / "train.csv"))


# ---- the delimiter --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("a,b\n1,2\n", ","),
    ("a;b\n1,5;2\n", ";"),
    ("a\tb\n1\t2\n", "\t"),
    ("a|b\n1|2\n", "|"),
    ("only\n1\n2\n", ","),  # one column: nothing to split
    ("only\n1,5\n", ","),
    ('"x;y",b\n1,2\n', ","),  # ; inside a quoted name does not count
    ('"x,y";b\n1;2\n', ";"),
    ("id;price, eur\n1;3,5\n2;4,25\n", ";"),  # a comma in a ;-file's header: the ; wins the tie
    ("id;price, eur\n1;3\n2;4\n", ";"),  # the rows decide
    ("a,b;c\n1,2;3\n4,5;6\n", ";"),  # both split every row the same: ; before ,
    ("a,b;c\n1,2\n4,5\n", ","),  # only , splits the rows as the header
    ("\n\na;b\n1;2\n", ";"),  # blank lines before the header
    ('"multi\nline";b\n1;2\n', ";"),
    ("a;b", ";"),  # no line end at all
    ("", ","),
])
def test_the_delimiter_is_found_in_the_header(tmp_path: Path, text: str, expected: str):
    assert data.csv_delimiter(write(tmp_path / "f.csv", text, bom=True)) == expected
    assert data.csv_delimiter(write(tmp_path / "g.csv", text)) == expected


def test_a_header_longer_than_what_is_sniffed(tmp_path: Path):
    """A wide file whose header line alone is longer than the 64 KiB read: the part read decides."""
    names = [f"col {i}" for i in range(12000)]
    path = write(tmp_path / "wide.csv", ";".join(names) + "\n" + ";".join("1,5" for _ in names) + "\n")
    assert len(";".join(names)) > data.SNIFF_BYTES
    assert data.csv_delimiter(path) == ";"
    df = data.read_table(path, decimal=",")
    assert df.shape == (1, 12000) and df["col 11999"].tolist() == [1.5]


def test_a_one_column_file_is_one_column_to_both_readers(proj: Path):
    path = write(proj / "one.csv", "num a\n" + "".join(f"{v}\n" for v in (1.5, 2.25, "", 3)))
    df = data.read_table(path)
    assert list(df.columns) == ["num a"] and df["num a"].tolist()[:2] == [1.5, 2.25]
    # the model needs five columns: the error names what is missing, on one line
    from mlopsctl.cli.main import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["predict", "m/1", str(path), "-o", "o.csv"])
    assert result.exit_code == 2
    assert result.stderr == ("Error: one.csv lacks column(s) 'n.int', 'città', 'flag' that the model needs; "
                             "it has num a.\n")


def test_decimal_commas_without_data_decimal_are_text(proj: Path):
    """Documented: numbers must use a decimal point unless data.decimal = ","; otherwise they are text."""
    path, _ = dialect_file(proj, "semicolon-decimal-comma-excel")
    df = data.read_table(path)
    assert not pd.api.types.is_numeric_dtype(df["num a"]) and data.column_kind(df["num a"]) == "categorical"
    assert df["num a"].dropna().iloc[0] == table()[1][0].replace(".", ",")


def test_decimal_comma_rows_failing_validation_keep_the_others_scored(proj: Path):
    """A bad value sends predict to its per-row path (text columns); decimal commas are still numbers there."""
    rows = table()
    rows[5][1] = "many"  # n.int is numeric in the contract
    path = write(proj / "bad.csv", csv_text(rows, delimiter=";", decimal=","))
    summary = predict(proj, "m/1", path, proj / "out.csv", {"MLOPS_DATA_DECIMAL": ","}, chunk=1)
    assert (summary["rows"], summary["scored"], summary["failed"]) == (ROWS, ROWS - 1, 1)
    assert summary["errors"][0]["row"] == 6 and summary["errors"][0]["column"] == "n.int"
    scored = pd.read_csv(proj / "out.csv")
    plain = pd.read_csv(proj / "plain.1.csv")
    keep = scored.index != 5
    assert scored["prediction"][keep].tolist() == plain["prediction"][keep].tolist()
    assert scored["proba_1"][keep].tolist() == plain["proba_1"][keep].tolist()
    assert pd.isna(scored["prediction"][5]) and scored["_error"][5] == "column 'n.int' must be numeric, got 'many'"


# ---- quotes that are not RFC 4180 ---------------------------------------------------------------------------

def test_quotes_inside_unquoted_fields_are_text_in_both_readers(proj: Path, monkeypatch: pytest.MonkeyPatch):
    """`5" screen` unquoted is text to pandas and to Arrow; the block splitter must read it so too (counting
    quotes would take the next quoted newline for a record end), at every block size."""
    rows = table()
    loose = ['5" screen', 'x"y', 'end"', 'a""b']
    lines = [",".join(HEADER) + "\n"]
    for i, r in enumerate(rows):
        if i % 5 == 0:
            r[2] = loose[(i // 5) % len(loose)]
            lines.append(",".join(r) + "\n")  # written as is: the quote is inside an unquoted field
        else:
            lines.append(csv_text([r]).split("\n", 1)[1])
    path = write(proj / "loose.csv", "".join(lines))
    clean = write(proj / "clean.csv", csv_text(rows))
    pd.testing.assert_frame_equal(data.read_table(path), data.read_table(clean))
    predict(proj, "m/1", clean, proj / "expected.csv", {}, chunk=1)
    for block in (1, 5, 64, 1 << 20):
        monkeypatch.setattr(batch, "BLOCK_BYTES", block)
        summary = predict(proj, "m/1", path, proj / "out.csv", {}, chunk=1)
        assert (summary["rows"], summary["failed"]) == (ROWS, 0), block
        assert (proj / "out.csv").read_bytes() == (proj / "expected.csv").read_bytes(), block


def _records(rng: np.random.Generator, n: int, loose: bool) -> tuple[str, list[int]]:
    """n records written RFC 4180 style (or, with ``loose``, with quotes inside some unquoted fields), and the
    offset just past each record's line end."""
    alphabet = ["a", "b", ",", '"', "\n", "\r\n", " ", "é"]
    text, ends = "", []
    for _ in range(n):
        fields = []
        for _ in range(3):
            value = "".join(rng.choice(alphabet) for _ in range(int(rng.integers(0, 6))))
            if loose and rng.random() < 0.3:
                fields.append("x" + value.replace(",", "").replace("\n", "").replace("\r", ""))  # quotes stay text
            elif any(c in value for c in ',"\n\r') or rng.random() < 0.2:
                fields.append('"' + value.replace('"', '""') + '"')
            else:
                fields.append(value)
        text += ",".join(fields) + rng.choice(["\n", "\r\n"])
        ends.append(len(text.encode()))
    return text, ends


@pytest.mark.parametrize("loose", [False, True])
def test_record_ends_match_what_arrow_and_pandas_read(loose: bool):
    """The splitter's record ends, for every prefix of random records, are the true ones; so are those of
    each of its two ways (counting paired quotes, walking quote to quote) wherever the first one answers."""
    import pyarrow as pa
    from pyarrow import csv as pacsv

    rng = np.random.default_rng(1 + loose)
    answered = 0
    for _ in range(30):
        text, ends = _records(rng, 12, loose)
        buf = text.encode()
        assert pacsv.read_csv(pa.py_buffer(buf), read_options=pacsv.ReadOptions(autogenerate_column_names=True),
                              parse_options=pacsv.ParseOptions(newlines_in_values=True)).num_rows == len(ends)
        assert len(pd.read_csv(io.BytesIO(buf), header=None, skip_blank_lines=False)) == len(ends)
        for size in range(1, len(buf) + 1):
            prefix = buf[:size]
            truth = max([e for e in ends if e <= size], default=-1)
            assert csv_blocks._record_end(prefix, ord(","), b"\n") == truth, (prefix, truth)
            assert csv_blocks._scanned_record_end(prefix, ord(","), b"\n", False) == truth, (prefix, truth)
            cut = prefix.rfind(b"\n")
            if cut != -1:
                paired = csv_blocks._paired_quotes_record_end(prefix, cut, ord(","), b"\n")
                if paired is not None:
                    answered += 1
                    assert paired == truth, (prefix, truth)
            first = csv_blocks._record_end(prefix, ord(","), b"\n", first=True)
            assert first == (ends[0] if ends[0] <= size else -1)
    assert answered > 1000  # the vectorised way does the work on these files


# ---- one-line errors, the same in both readers --------------------------------------------------------------

def reader_errors(project: Path, path: Path, env: dict[str, str] | None = None) -> tuple[str, str]:
    from mlopsctl.cli.main import app
    from typer.testing import CliRunner

    runner = CliRunner()
    train = runner.invoke(app, ["-C", str(project), "data", "add", str(path)], env=env)
    scored = runner.invoke(app, ["-C", str(project), "predict", "m/1", str(path), "-o", "o.csv"], env=env)
    for result in (train, scored):
        assert result.exit_code == 2, (result.stdout, result.stderr)
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert not (project / "o.csv").exists()
    return train.stderr, scored.stderr


def test_not_utf8_in_the_header_or_far_below_it(proj: Path):
    expected = "Error: {} is not UTF-8 text; save it as UTF-8 CSV or as Parquet.\n"
    latin = proj / "latin.csv"
    latin.write_bytes(csv_text(table()).encode("cp1252", "replace"))  # Excel's plain "CSV" on Windows
    assert reader_errors(proj, latin) == (expected.format(latin),) * 2
    utf16 = proj / "utf16.csv"
    utf16.write_bytes(csv_text(table(), delimiter="\t").encode("utf-16"))  # Excel's "Unicode Text"
    assert reader_errors(proj, utf16) == (expected.format(utf16),) * 2
    rows = table() * 30  # past the 64 KiB the delimiter is looked for in
    rows[-3][2] = "caf\udce9"
    late = proj / "late.csv"
    late.write_bytes(csv_text(rows).encode("utf-8", "surrogateescape"))
    assert late.stat().st_size > 2 * data.SNIFF_BYTES
    assert reader_errors(proj, late) == (expected.format(late),) * 2


def rows_below(rows: list[list[str]]) -> str:
    """The rows of csv_text without its header line; with plain texts, so no quote can close an open one."""
    return csv_text([[*r[:2], "plain", *r[3:]] for r in rows]).split("\n", 1)[1]


def test_an_unterminated_quote(proj: Path):
    rows = table()
    path = write(proj / "open.csv", csv_text(rows[:40]) + '0.5,3,"never closed,True,1\n' + rows_below(rows))
    train, scored = reader_errors(proj, path)
    assert re.fullmatch(rf"Error: {re.escape(str(path))} could not be parsed as CSV \(Error tokenizing data\. "
                        r"C error: EOF inside string starting at row \d+\); fix the file\.\n", train), train
    assert scored == f'Error: {path} ends inside a quoted field (a " that is never closed); fix the file.\n'


def test_an_unterminated_quote_in_a_big_file_stops_at_max_record_bytes(proj: Path, monkeypatch: pytest.MonkeyPatch):
    """Peak memory stays bounded: the splitter gives up once the open record is longer than MAX_RECORD_BYTES."""
    monkeypatch.setattr(batch, "BLOCK_BYTES", 64 << 10)
    monkeypatch.setattr(csv_blocks, "MAX_RECORD_BYTES", 1 << 20)
    path = write(proj / "open.csv", csv_text(table()[:3]) + '0.5,3,"never closed,True,1\n' + rows_below(table() * 600))
    assert path.stat().st_size > 2 * csv_blocks.MAX_RECORD_BYTES
    blocks = csv_blocks.record_blocks(path, batch.BLOCK_BYTES, ",")
    assert next(blocks)[1].count(b"\n") == 3  # the rows before the open quote
    with pytest.raises(InvalidInputError) as info:
        next(blocks)
    assert str(info.value) == (f"{path} has a record longer than 1 MiB, most likely a quoted field whose closing \" "
                               "is missing; fix the file.")


def test_a_comma_delimited_file_with_data_decimal_comma(proj: Path):
    train, scored = reader_errors(proj, proj / "data" / "train.csv", {"MLOPS_DATA_DECIMAL": ","})
    expected = ("Error: train.csv has ',' between fields, which cannot also be the decimal mark; set data.decimal = "
                "\".\" (or data.delimiter, if the fields are split by another character).\n")
    assert (train, scored) == (expected, expected)


@pytest.mark.parametrize(("value", "shown"), [("ab", "'ab'"), ('"', "'\"'"), ("\n", "'\\n'"), ("", "''"), ("§", "'§'")])
def test_data_delimiter_must_be_auto_or_one_character(proj: Path, cli, assert_error, value: str, shown: str):
    result = cli("data", "add", "data/train.csv", env={"MLOPS_DATA_DELIMITER": value})
    assert_error(result, 5, "data.delimiter must be auto or one ASCII character such as \";\" or \"\\t\" (not a quote or a "
                            f"line end), got {shown}.")


def test_data_delimiter_and_decimal_cannot_both_be_a_comma(proj: Path, cli, assert_error):
    result = cli("data", "add", "data/train.csv", env={"MLOPS_DATA_DELIMITER": ",", "MLOPS_DATA_DECIMAL": ","})
    assert_error(result, 5, "data.delimiter and data.decimal are both ','; a decimal comma needs another delimiter, "
                            "such as \";\".")


def test_an_explicit_delimiter_overrides_what_the_header_suggests(proj: Path):
    """A ;-file read with data.delimiter = "," is one column per line to both readers (no guessing past it)."""
    path = write(proj / "semi.csv", "a;b\n1;2\n3;4\n")
    df = data.read_table(path, delimiter=",")
    assert list(df.columns) == ["a;b"] and df["a;b"].tolist() == ["1;2", "3;4"]
    assert batch._header_names(b"a;b\n", path, ",") == ["a;b"]
    from mlopsctl.config import load_settings

    assert load_settings({}, {"MLOPS_DATA_DELIMITER": "\t"}, proj).data.delimiter == "\t"
    assert load_settings({}, {}, proj).data.delimiter == "auto"
