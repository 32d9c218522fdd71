"""Map MlopsError to one ``Error: ...`` line on stderr and its exit code."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import typer

from mlopsctl.errors import MlopsError

F = TypeVar("F", bound=Callable)
INTERRUPTED = 130


def reports_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MlopsError as e:
            print(f"Error: {e.message}", file=sys.stderr)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            print("Error: interrupted.", file=sys.stderr)
            raise typer.Exit(INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]
