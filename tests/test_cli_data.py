"""`mlopsctl data add | list | show` and the dataset versions training records, through CliRunner."""

from __future__ import annotations


import pytest


from served_projects import ok, ok_json



# ---- data add / list / show ---------------------------------------------------------------------------

def test_data_add_list_show(cli, assert_error, fast_project):
    first = ok_json(cli("data", "add", "data/train.csv", "--json"))
    assert first["created"] is True
    assert (first["name"], first["version"], first["rows"], first["columns"]) == ("train", 1, 569, 31)
    assert first["source"] == str((fast_project / "data" / "train.csv").resolve())
    assert len(first["fingerprint"]) == 64 and len(first["file_sha256"]) == 64
    assert [c["name"] for c in first["schema"]["columns"]][-1] == "diagnosis"
    assert {c["kind"] for c in first["schema"]["columns"]} == {"numeric", "categorical"}

    again = ok_json(cli("data", "add", "data/train.csv", "--json"))
    assert again["created"] is False
    assert {k: v for k, v in again.items() if k != "created"} == {k: v for k, v in first.items() if k != "created"}

    # the same content as Parquet is the same version
    import pandas as pd

    df = pd.read_csv(fast_project / "data" / "train.csv")
    df.to_parquet(fast_project / "data" / "train.parquet", index=False)
    as_parquet = ok_json(cli("data", "add", "data/train.parquet", "--json"))
    assert (as_parquet["name"], as_parquet["version"], as_parquet["created"]) == ("train", 1, False)

    # changed content is a new version
    df.iloc[:-1].to_csv(fast_project / "data" / "train.csv", index=False)
    second = ok_json(cli("data", "add", "data/train.csv", "--json"))
    assert (second["version"], second["created"], second["rows"]) == (2, True, 568)
    assert second["fingerprint"] != first["fingerprint"]

    other = ok_json(cli("data", "add", "data/train.parquet", "--name", "customers", "--json"))
    assert (other["name"], other["version"], other["created"]) == ("customers", 1, True)

    listed = ok_json(cli("data", "list", "--json"))
    assert listed == [
        {"name": "customers", "versions": 1, "latest": 1, "rows": 569, "fingerprint": first["fingerprint"]},
        {"name": "train", "versions": 2, "latest": 2, "rows": 568, "fingerprint": second["fingerprint"]},
    ]

    latest = ok_json(cli("data", "show", "train", "--json"))
    assert (latest["version"], latest["rows"]) == (2, 568)
    assert [v["version"] for v in latest["versions"]] == [1, 2]
    v1 = ok_json(cli("data", "show", "train:1", "--json"))
    assert (v1["version"], v1["rows"], v1["fingerprint"]) == (1, 569, first["fingerprint"])

    assert_error(cli("data", "show", "nope"), 3, "dataset 'nope' does not exist; known: customers, train.")
    assert_error(cli("data", "show", "train:9"), 3, "dataset 'train' has no version 9; see `mlopsctl data show train`.")
    assert_error(cli("data", "show", "train:x"), 2, "dataset version 'x' must be a number, as in train:2.")


def test_data_text_output(cli, fast_project):
    out = ok(cli("data", "add", "data/train.csv"))
    fp = ok_json(cli("data", "show", "train", "--json"))["fingerprint"]
    assert out == f"Recorded dataset train:1 - 569 rows, 31 columns, fingerprint {fp[:12]}\n"
    assert ok(cli("data", "add", "data/train.csv")) == (
        f"Unchanged: dataset train:1 - 569 rows, 31 columns, fingerprint {fp[:12]}\n")
    listed = ok(cli("data", "list"))
    assert "Datasets" in listed and "train" in listed and fp[:12] in listed
    shown = ok(cli("data", "show", "train:1"))
    assert shown.startswith("train:1 - 569 rows from ")
    assert "Columns" in shown and "diagnosis" in shown and "Versions" in shown


def test_data_list_empty(cli):
    assert ok_json(cli("data", "list", "--json")) == []


def test_data_show_with_no_datasets_exits_3(cli, assert_error):
    assert_error(cli("data", "show", "train"), 3, "dataset 'train' does not exist; known: (none yet).")


@pytest.mark.parametrize("name", ["a:b", "a/b", "x" * 201])
def test_data_add_bad_name_exits_2(cli, assert_error, fast_project, name):
    assert_error(cli("data", "add", "data/train.csv", "--name", name), 2,
                 f"dataset name {name!r} must be 1 to 200 characters without ':', '/' or '\\'.")


def test_training_records_the_dataset_version_once(cli, fast_project):
    first = ok_json(cli("train", "--json"))
    second = ok_json(cli("train", "--json", "-p", "n_estimators=2"))
    [ds] = ok_json(cli("data", "list", "--json"))
    assert (ds["name"], ds["versions"], ds["latest"]) == ("train", 1, 1)
    assert first["dataset"] == second["dataset"] == {
        "name": "train", "version": 1, "fingerprint": ds["fingerprint"], "rows": 569}
    assert ok_json(cli("data", "add", "data/train.csv", "--json"))["created"] is False


def test_artifacts_and_store_live_in_the_project(cli, fast_project):
    ok(cli("train", "--json"))
    assert (fast_project / ".mlops" / "mlops.db").is_file()
    blobs = [p for p in (fast_project / ".mlops" / "artifacts" / "sha256").rglob("*") if p.is_file()]
    assert len(blobs) == 5  # train.csv, model.onnx, contract.json, model.joblib, heldout.parquet
