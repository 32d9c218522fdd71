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


class StoreError(MlopsError):
    """The store cannot be used: locked, unreachable, or written by a newer mlopsctl."""

    exit_code = 7
    http_status = 503


EXIT_CODES = {cls.__name__: cls.exit_code for cls in (
    MlopsError, InvalidInputError, NotFoundError, ConflictError, ConfigError, TrainingError, StoreError
)}
