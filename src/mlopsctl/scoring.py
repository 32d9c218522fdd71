"""ONNX Runtime scoring shared by the parity check, the gate, batch predict and the server.

Imports onnxruntime and numpy only (never scikit-learn): the server may use it.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from mlopsctl.contract import Contract
from mlopsctl.errors import ConfigError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def available_providers_in_child() -> list[str]:
    """onnxruntime's providers, asked in a child process (for a parent that will fork workers)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import onnxruntime as o; print(','.join(o.get_available_providers()))"],
                         capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise ConfigError(f"onnxruntime cannot be imported: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}.")
    return out.stdout.strip().split(",")


def providers_for(device: str, available: list[str] | None = None) -> list[str]:
    """ONNX Runtime providers for ``cpu | cuda | auto``; ``cuda`` fails loudly when unavailable."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise ConfigError(
                f"--device cuda needs CUDAExecutionProvider, but this onnxruntime offers {', '.join(available)}; "
                "install onnxruntime-gpu (pip install 'mlopsctl[gpu]') on a machine with CUDA, or use --device cpu."
            )
        return [CUDA, CPU]
    if device == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise ConfigError(f"device {device!r} is not one of cpu, cuda, auto.")


def make_session(model_bytes: bytes, providers: list[str] | None = None, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=providers or [CPU])


class Scorer:
    """One ONNX Runtime session for one model version; ``run`` is safe to call from several threads."""

    def __init__(self, model_bytes: bytes, contract: Contract, providers: list[str] | None = None, threads: int = 0):
        self.contract = contract
        self.session = make_session(model_bytes, providers, threads)
        self._outputs = list(contract.outputs.values())
        self._keys = tuple(contract.outputs)
        # InferenceSession.run re-checks the feed names in Python on every call (8 of its 31 µs on a 30-input
        # model, one row) before calling its C++ session. Feeds built from the contract always match the
        # graph (a mismatch still fails in C++, as a RuntimeError), so CPU sessions call that session
        # directly; other providers keep the wrapper, whose EP-failure fallback they may need.
        cpp = getattr(self.session, "_sess", None)
        self._direct = cpp.run if cpp is not None and self.provider == CPU else None

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def run(self, normalized: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw outputs (``label``/``probabilities`` or ``prediction``) for :meth:`Contract.normalize` output."""
        return self.run_feeds(self.contract.onnx_feeds(normalized))

    def run_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw outputs for ready feeds (:meth:`Contract.feeds`)."""
        if self._direct is not None:
            return dict(zip(self._keys, self._direct(self._outputs, feeds, None)))
        return dict(zip(self._keys, self.session.run(self._outputs, feeds)))

    def predict_frame(self, frame: Any) -> dict[str, np.ndarray]:
        return self.run(self.contract.normalize({c: frame[c] for c in self.contract.feature_names}))

