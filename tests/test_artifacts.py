"""Content-addressed artifacts: atomic writes, dedup, and verification on every read."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mlopsctl.artifacts import ArtifactStore, sha256_file
from mlopsctl.errors import CorruptArtifactError
from mlopsctl.errors import NotFoundError


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def flip_a_byte(path: Path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


@pytest.fixture
def arts(tmp_path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def test_put_get_round_trip(arts, tmp_path):
    data = b"hello artifact\n" * 1000
    sha = arts.put_bytes(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert arts.path(sha) == tmp_path / "artifacts" / "sha256" / sha[:2] / sha[2:]
    assert arts.path(sha).read_bytes() == data
    assert arts.get_bytes(sha) == data
    assert arts.verified_path(sha) == arts.path(sha)


def test_put_file_round_trip_in_chunks(arts, tmp_path, monkeypatch):
    import mlopsctl.artifacts as artifacts

    monkeypatch.setattr(artifacts, "CHUNK", 7)  # force many chunks on the streaming path
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(1000))
    sha = arts.put_file(src)
    assert sha == sha256_file(src) == hashlib.sha256(src.read_bytes()).hexdigest()
    assert arts.get_bytes(sha) == src.read_bytes()


def test_empty_blob(arts):
    sha = arts.put_bytes(b"")
    assert sha == hashlib.sha256(b"").hexdigest()
    assert arts.get_bytes(sha) == b""


def test_atomic_write_leaves_no_temp_files(arts, tmp_path):
    shas = {arts.put_bytes(f"blob {i}".encode()) for i in range(20)}
    src = tmp_path / "f.bin"
    src.write_bytes(b"file blob")
    shas.add(arts.put_file(src))
    files = files_under(arts.root)
    assert len(files) == 21
    assert not [p for p in files if p.name.startswith(".tmp-")]
    assert {p.parent.name + p.name for p in files} == shas


def test_failed_write_leaves_no_temp_file_and_no_blob(arts):
    def chunks():
        yield b"partial"
        raise OSError("disk full")

    dest = arts.path("ab" * 32)
    with pytest.raises(OSError, match="disk full"):
        arts._atomic_write(dest, chunks())
    assert not dest.exists()
    assert files_under(arts.root) == []


def test_identical_content_dedups(arts, tmp_path):
    data = b"same bytes"
    first = arts.put_bytes(data)
    mtime = arts.path(first).stat().st_mtime_ns
    src = tmp_path / "same.bin"
    src.write_bytes(data)
    assert arts.put_bytes(data) == first
    assert arts.put_file(src) == first
    assert files_under(arts.root) == [arts.path(first)]
    assert arts.path(first).stat().st_mtime_ns == mtime  # not rewritten


def test_different_content_gets_different_blobs(arts):
    assert arts.put_bytes(b"a") != arts.put_bytes(b"b")
    assert len(files_under(arts.root)) == 2


def test_corrupted_blob_raises_and_is_never_returned(arts):
    data = b"important model bytes" * 50
    sha = arts.put_bytes(data)
    path = arts.path(sha)
    flip_a_byte(path, 10)
    with pytest.raises(CorruptArtifactError) as info:
        arts.get_bytes(sha)
    assert str(info.value) == (
        f"artifact {sha[:12]} at {path} is corrupted (its sha256 no longer matches); "
        "restore it from a backup or retrain the run that produced it."
    )
    with pytest.raises(CorruptArtifactError):
        arts.verified_path(sha)


def test_truncated_blob_is_repaired_by_putting_it_again(arts):
    data = b"x" * 100
    sha = arts.put_bytes(data)
    arts.path(sha).write_bytes(data[:50])
    with pytest.raises(CorruptArtifactError):
        arts.get_bytes(sha)
    assert arts.put_bytes(data) == sha  # a size mismatch is rewritten
    assert arts.get_bytes(sha) == data


def test_missing_blob_is_not_found(arts, tmp_path):
    sha = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(NotFoundError) as info:
        arts.get_bytes(sha)
    assert str(info.value) == (
        f"artifact {sha[:12]} is missing from {tmp_path / 'artifacts'}; the store and the artifact folder "
        "do not match (check store.artifacts)."
    )
    with pytest.raises(NotFoundError):
        arts.verified_path(sha)


@pytest.mark.parametrize("bad", ["", "abc", "A" * 64, "g" * 64, "../" * 21 + "a", "a" * 65])
def test_not_a_digest(arts, bad):
    with pytest.raises(NotFoundError) as info:
        arts.get_bytes(bad)
    assert str(info.value) == f"{bad!r} is not a sha256 digest (64 lowercase hex characters)."


# ---- through a run ------------------------------------------------------------------------------------

def test_corrupted_model_onnx_of_a_run_is_detected(fast_project, cli, settings_of):
    from mlopsctl.services import runs
    from mlopsctl.project import open_project

    assert cli("train", "--json").exit_code == 0
    settings = settings_of(fast_project)
    run = runs.show_run(settings, "1")
    shas = {a["name"]: a["sha256"] for a in run["artifacts"]}
    assert set(shas) == {"model.onnx", "contract.json", "model.joblib", "heldout.parquet"}

    good = runs.run_artifact(settings, "1", "model.onnx")
    assert hashlib.sha256(good).hexdigest() == shas["model.onnx"]
    sizes = {a["name"]: a["size"] for a in run["artifacts"]}
    assert len(good) == sizes["model.onnx"]

    path = open_project(settings).artifacts.path(shas["model.onnx"])
    flip_a_byte(path, len(good) // 2)
    with pytest.raises(CorruptArtifactError) as info:
        runs.run_artifact(settings, "1", "model.onnx")
    assert str(info.value) == (
        f"artifact {shas['model.onnx'][:12]} at {path} is corrupted (its sha256 no longer matches); "
        "restore it from a backup or retrain the run that produced it."
    )
    # the other artifacts of the run are still fine
    assert hashlib.sha256(runs.run_artifact(settings, "run-1", "contract.json")).hexdigest() == shas["contract.json"]


def test_missing_run_artifacts(fast_project, cli, settings_of):
    from mlopsctl.services import runs
    from mlopsctl.project import open_project

    assert cli("train", "--json").exit_code == 0
    settings = settings_of(fast_project)
    with pytest.raises(NotFoundError) as info:
        runs.run_artifact(settings, "1", "model.pkl")
    assert str(info.value) == (
        "run 1 has no artifact 'model.pkl'; it has contract.json, heldout.parquet, model.joblib, model.onnx."
    )
    sha = next(a["sha256"] for a in runs.show_run(settings, "1")["artifacts"] if a["name"] == "model.onnx")
    open_project(settings).artifacts.path(sha).unlink()
    with pytest.raises(NotFoundError) as info:
        runs.run_artifact(settings, "1", "model.onnx")
    assert str(info.value).startswith(f"artifact {sha[:12]} is missing from {settings.artifacts_dir};")
