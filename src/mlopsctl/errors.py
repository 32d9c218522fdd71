"""One error hierarchy for the whole tool; each class carries its CLI exit code and HTTP status.

Messages are one sentence: the bad value, what is allowed, and how to fix it.
"""

from __future__ import annotations


class MlopsError(Exception):
    """Base class: anything mlopsctl raises on purpose."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInputError(MlopsError, ValueError):
    exit_code = 2
    http_status = 400


class UnsupportedMediaType(InvalidInputError):
    """A request body in a media type the endpoint does not take."""

    http_status = 415


class PayloadTooLarge(InvalidInputError):
    """A request over ``serve.max_body_mb`` or ``serve.max_batch_rows``."""

    http_status = 413


class Unauthorized(MlopsError):
    """A missing or wrong bearer token."""

    exit_code = 2
    http_status = 401


class Forbidden(MlopsError):
    """An authenticated request the server refuses: a form without its CSRF token, a write while writes are off."""

    exit_code = 2
    http_status = 403


class NotFoundError(MlopsError, LookupError):
    exit_code = 3
    http_status = 404


class ConflictError(MlopsError):
    exit_code = 4
    http_status = 409


class ConfigError(MlopsError):
    exit_code = 5
    http_status = 500


class TrainingError(MlopsError):
    """Training or ONNX export failed (including unsupported estimators)."""

    exit_code = 6
    http_status = 500


class PipelineStepError(TrainingError):
    """A pipeline step failed: its command exited non-zero or a built-in step raised; its dependants did not run."""


class StoreError(MlopsError):
    """The store cannot be used: locked, unreachable, or written by a newer mlopsctl."""

    exit_code = 7
    http_status = 503


class CorruptArtifactError(MlopsError):
    """A blob's content no longer matches its sha256 (a watch job that meets one fails; the watcher goes on)."""

    exit_code = 7
    http_status = 500


class StepNotFinished(Exception):
    """Inside a pipeline run: a step that did not finish, with its command's return code (None for a built-in
    step) and its last line of output. The runner records it as the step's failure; it never leaves the run."""

    def __init__(self, message: str, returncode: int | None = None):
        super().__init__(message)
        self.message, self.returncode = message, returncode


class RetryPerRow(Exception):
    """Inside batch predict: a value Arrow could not convert to the contract's type in the fast typed read; the
    file is read again with per-row validation. It never leaves batch predict."""


class Stopped(Exception):
    """Inside a tuning worker: asked to stop mid-trial (its parent process ended); the trial is marked FAILED."""
