"""Map MlopsError to one ``Error: ...`` line on stderr and its exit code; anything unexpected is one line too
(exit 1), with the full trace only under the global ``--traceback`` flag."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import typer

from mlopsctl.errors import MlopsError

F = TypeVar("F", bound=Callable)
INTERRUPTED = 130
UNEXPECTED = 1
show_traceback = False  # set by the root command's --traceback flag, for each invocation


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
        except Exception as e:  # a bug or an environment problem: one line, the trace on request
            if show_traceback:
                import traceback

                traceback.print_exc()
            else:
                print(f"Error: {unexpected_text(e)}", file=sys.stderr)
            raise typer.Exit(UNEXPECTED) from None

    return wrapper  # type: ignore[return-value]


def unexpected_text(e: BaseException) -> str:
    """``unexpected ValueError: <first line of the message> (rerun with --traceback for details)``."""
    lines = str(e).strip().splitlines()
    message = lines[0] if lines else "(no message)"
    if len(message) > 300:
        message = message[:297] + "..."
    return f"unexpected {type(e).__name__}: {message} (rerun with --traceback for details)"
