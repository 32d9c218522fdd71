"""Content-addressed artifact blobs: ``<root>/sha256/ab/cdef...``.

Writes are atomic (temp file in the same folder, fsync, rename), so a crash never leaves a partial blob
under its final name. Reads verify the sha256; a corrupted blob raises, it is never silently used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mlopsctl.common import atomic_write
from mlopsctl.errors import CorruptArtifactError, NotFoundError

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise NotFoundError(f"{sha256!r} is not a sha256 digest (64 lowercase hex characters).")
        return self.root / "sha256" / sha256[:2] / sha256[2:]

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        dest = self.path(sha)
        if dest.exists() and dest.stat().st_size == len(data):
            return sha
        self._atomic_write(dest, [data])
        return sha

    def put_file(self, src: Path, sha256: str | None = None) -> str:
        """Store a file's bytes; ``sha256``: its digest when the caller just computed it (not hashed again)."""
        sha = sha256 or sha256_file(src)
        dest = self.path(sha)
        if dest.exists() and dest.stat().st_size == Path(src).stat().st_size:
            return sha

        def chunks():
            with open(src, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    yield chunk

        self._atomic_write(dest, chunks())
        return sha

    def _atomic_write(self, dest: Path, chunks) -> None:
        with atomic_write(dest, durable=True) as fh:
            for chunk in chunks:
                fh.write(chunk)

    def get_bytes(self, sha256: str) -> bytes:
        """The blob's bytes, verified against its digest."""
        p = self.path(sha256)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(
                f"artifact {sha256[:12]} is missing from {self.root}; the store and the artifact folder "
                "do not match (check store.artifacts)."
            ) from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise CorruptArtifactError(
                f"artifact {sha256[:12]} at {p} is corrupted (its sha256 no longer matches); "
                "restore it from a backup or retrain the run that produced it."
            )
        return data

    def verified_path(self, sha256: str) -> Path:
        """The blob's path after checking its digest (for readers that need a file name)."""
        p = self.path(sha256)
        if not p.exists():
            self.get_bytes(sha256)  # raises NotFoundError with the standard message
        if sha256_file(p) != sha256:
            self.get_bytes(sha256)  # raises CorruptArtifactError
        return p

