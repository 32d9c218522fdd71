"""mlopsctl: single-node MLOps from a CSV file to a gated, served, retrained model.

Only ``__version__`` is defined eagerly; the Python API (``start_run``) is resolved lazily so that
``import mlopsctl`` and ``mlopsctl --help`` stay instant.
"""

from mlopsctl._version import __version__

__all__ = ["__version__", "start_run"]


def __getattr__(name: str):
    if name == "start_run":
        from mlopsctl.api import start_run

        return start_run
    raise AttributeError(f"module 'mlopsctl' has no attribute {name!r}")
