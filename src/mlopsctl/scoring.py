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


def load_cuda_libraries() -> list[str]:
    """Let onnxruntime-gpu find CUDA and cuDNN in NVIDIA's pip packages (PyTorch's CUDA wheels bring them) as
    well as on the library path; returns what onnxruntime said about libraries it could not load.

    Without this, a CUDA session whose libraries are missing quietly runs on the CPU."""
    import contextlib
    import io

    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21; a CPU build returns at once
    if preload is None:
        return []
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        try:
            preload()
        except Exception as e:  # a broken install must not stop a CPU fallback from being reported
            print(f"{type(e).__name__}: {e}")
    return [line.strip() for line in said.getvalue().splitlines() if line.strip()]


_PROBE = """
import contextlib, io, json, sys
from mlopsctl.scoring import load_cuda_libraries, make_session
import onnxruntime as o
said = load_cuda_libraries()
available = o.get_available_providers()
session = []
model = sys.stdin.buffer.read()
if model and "CUDAExecutionProvider" in available:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # onnxruntime prints why a provider failed, then falls back
        session = make_session(model, sys.argv[1:], 1).get_providers()
    said += out.getvalue().splitlines()
print("mlopsctl-probe " + json.dumps({"available": available, "session": session, "said": said}))
"""


def probe_in_child(device: str, model_bytes: bytes = b"") -> list[str]:
    """The providers ``device`` asks for, checked in a child process (for a parent that will fork workers:
    onnxruntime must not be imported before the fork). For ``cuda``, with the model's bytes, the child also
    creates a real CUDA session, so a missing GPU or CUDA library fails here in one line instead of in every
    worker."""
    import json
    import subprocess
    import sys

    providers = [CUDA, CPU] if device in ("cuda", "auto") else [CPU]
    out = subprocess.run([sys.executable, "-c", _PROBE, *providers], input=model_bytes if device == "cuda" else b"",
                         capture_output=True, timeout=120, check=False)
    lines = [ln for ln in out.stdout.decode(errors="replace").splitlines() if ln.startswith("mlopsctl-probe ")]
    if out.returncode != 0 or not lines:
        err = out.stderr.decode(errors="replace").strip()
        raise ConfigError(f"onnxruntime cannot be imported or cannot create a session: "
                          f"{err.splitlines()[-1] if err else out.returncode}.")
    probe = json.loads(lines[-1].split(" ", 1)[1])
    chosen = providers_for(device, available=probe["available"])
    if device == "cuda" and CUDA not in probe["session"]:
        raise ConfigError(cuda_missing_message(probe["said"]))
    return chosen


def cuda_missing_message(said: list[str]) -> str:
    """One line from what onnxruntime printed when CUDA would not start (its errors run to kilobytes)."""
    import re

    text = " ".join(said)
    failure = re.search(r"CUDA failure (\d+): ([^;]+?)\s*;", text)
    libs = re.findall(r"Failed to load (?:\S*/)?(\S+?\.so[.\d]*)", text)
    if failure:
        why = f"{failure.group(2).strip()} (CUDA error {failure.group(1)})"
    elif libs:
        why = f"libraries not found: {', '.join(dict.fromkeys(libs))}"
    else:
        why = (text[:200] + "...") if len(text) > 200 else (text or "no reason given")
    return (f"--device cuda: onnxruntime-gpu could not start CUDA: {why}; check the GPU and driver (nvidia-smi) "
            "and the CUDA and cuDNN libraries that match onnxruntime-gpu, or use --device cpu.")


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
                "install onnxruntime-gpu in place of onnxruntime (README, 'On a GPU') on a machine with CUDA, "
                "or use --device cpu."
            )
        return [CUDA, CPU]
    if device == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise ConfigError(f"device {device!r} is not one of cpu, cuda, auto.")


def make_session(model_bytes: bytes, providers: list[str] | None = None, threads: int = 0, profile_prefix: str = ""):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if profile_prefix:  # to read back which provider ran each node (see Scorer.placement)
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=providers or [CPU])


COPY_OPS = frozenset({"MemcpyFromHost", "MemcpyToHost"})
# operators that move or reshape data without arithmetic: a GPU that runs only these does none of the model's work
DATA_OPS = COPY_OPS | {"Cast", "Concat", "Expand", "Flatten", "Gather", "Identity", "Reshape", "Shape", "Slice",
                       "Split", "Squeeze", "Transpose", "Unsqueeze"}


def placement_from_profile(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    """``{provider: [op type of each node it ran, in node order]}`` from ONNX Runtime's profile events."""
    nodes: dict[int, tuple[str, str]] = {}
    for e in events:
        args = e.get("args") or {}
        if e.get("cat") == "Node" and "provider" in args and "node_index" in args:
            nodes[int(args["node_index"])] = (args["provider"], args.get("op_name", "?"))
    out: dict[str, list[str]] = {}
    for _, (provider, op) in sorted(nodes.items()):
        out.setdefault(provider, []).append(op)
    return out


def describe_placement(placement: Mapping[str, list[str]]) -> str:
    """One line: which provider runs which of the graph's nodes (copies between devices not counted)."""
    total = sum(1 for ops in placement.values() for op in ops if op not in COPY_OPS)
    parts = []
    for provider, ops in placement.items():
        work = [op for op in ops if op not in COPY_OPS]
        if work:
            parts.append(f"{provider} runs {len(work)} of {total} nodes ({', '.join(dict.fromkeys(work))})")
    copies = sum(1 for ops in placement.values() for op in ops if op in COPY_OPS)
    return "; ".join(parts) + (f"; {copies} device cop{'y' if copies == 1 else 'ies'}" if copies else "")


def compute_providers(placement: Mapping[str, list[str]]) -> list[str]:
    """Providers that run some of the model's arithmetic (a node other than one that only moves data)."""
    return [p for p, ops in placement.items() if any(op not in DATA_OPS for op in ops)]


class Scorer:
    """One ONNX Runtime session for one model version; ``run`` is safe to call from several threads.

    A session on a provider other than the CPU records which provider runs each node during its first runs
    (ONNX Runtime's profiler, stopped by :meth:`record_placement`): ONNX Runtime quietly puts a node on the
    CPU when the GPU provider has no kernel for it, as for the ``ai.onnx.ml`` tree and linear operators.
    """

    def __init__(self, model_bytes: bytes, contract: Contract, providers: list[str] | None = None, threads: int = 0):
        self.contract = contract
        providers = providers or [CPU]
        self._profile_dir = ""
        if providers[0] != CPU:
            import tempfile

            if CUDA in providers:
                load_cuda_libraries()
            self._profile_dir = tempfile.mkdtemp(prefix="mlopsctl-placement-")
        try:
            self.session = make_session(model_bytes, providers, threads,
                                        os.path.join(self._profile_dir, "p") if self._profile_dir else "")
        except BaseException:
            if self._profile_dir:
                import shutil

                shutil.rmtree(self._profile_dir, ignore_errors=True)
            raise
        self.placement: dict[str, list[str]] | None = None
        self._outputs = list(contract.outputs.values())
        self._keys = tuple(contract.outputs)
        self._decode = contract.decode_labels if contract.label_type in ("boolean", "float") else None
        # InferenceSession.run re-checks the feed names in Python on every call, a large share of a one-row
        # call on a wide model, before calling its C++ session. Feeds built from the contract always match
        # the graph (a mismatch still fails in C++, as a RuntimeError), so CPU sessions call that session
        # directly; other providers keep the wrapper, whose EP-failure fallback they may need.
        cpp = getattr(self.session, "_sess", None)
        self._direct = cpp.run if cpp is not None and self.provider == CPU else None

    def record_placement(self) -> dict[str, list[str]] | None:
        """Stop the profiler and keep which provider ran each node in the runs so far (None on a CPU-only
        session, whose nodes all run on the CPU)."""
        if self._profile_dir:
            import json
            import shutil

            path = self.session.end_profiling()
            try:
                with open(path, encoding="utf-8") as f:
                    self.placement = placement_from_profile(json.load(f))
            finally:
                shutil.rmtree(self._profile_dir, ignore_errors=True)
                self._profile_dir = ""
        return self.placement

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def run(self, normalized: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs (``label``/``probabilities`` or ``prediction``) for :meth:`Contract.normalize` output."""
        return self.run_feeds(self.contract.onnx_feeds(normalized))

    def run_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs for ready feeds (:meth:`Contract.onnx_feeds`), class labels in the training file's type."""
        if self._direct is not None:
            out = dict(zip(self._keys, self._direct(self._outputs, feeds, None)))
        else:
            out = dict(zip(self._keys, self.session.run(self._outputs, feeds)))
        if self._decode is not None:
            out["label"] = self._decode(out["label"])
        return out

    def predict_frame(self, frame: Any) -> dict[str, np.ndarray]:
        return self.run(self.contract.normalize({c: frame[c] for c in self.contract.feature_names}))

