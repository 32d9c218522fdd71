"""Model sessions and hot reload.

A :class:`ServedModel` is an immutable snapshot (one ONNX Runtime session per version, warmed up before it
is exposed). :class:`ModelHolder` keeps the current one and, when it follows an alias, polls the store and
swaps in a new snapshot atomically (a single reference assignment): requests in flight keep the snapshot
they started with and finish on it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable


from mlopsctl.contract import Contract
from mlopsctl.project import Project
from mlopsctl.registry_core import ModelRef
from mlopsctl.errors import ConfigError
from mlopsctl.scoring import (CPU, CUDA, Scorer, compute_providers, cuda_missing_message, describe_placement,
                               providers_for)
from mlopsctl.serving.records import RecordsDecoder

log = logging.getLogger("mlopsctl.serve")

ORT_TO_V2 = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64", "tensor(int32)": "INT32",
    "tensor(bool)": "BOOL", "tensor(string)": "BYTES", "tensor(float16)": "FP16", "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
}
# V2's numeric datatypes, as little-endian numpy dtypes (the binary tensor data extension's byte order)
NUMERIC = {"BOOL": "<?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
           "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: int
    onnx_sha256: str
    contract: Contract
    scorer: Scorer
    provider: str
    loaded_at: float
    records: RecordsDecoder  # records into columns, for /predict and /invocations
    inputs: list[dict[str, Any]] = field(default_factory=list)  # V2 metadata, from the real ONNX graph
    outputs: list[dict[str, Any]] = field(default_factory=list)
    column_by_input: dict[str, str] = field(default_factory=dict)
    # which provider ran each node, read from ONNX Runtime's profiler (sessions on a GPU only)
    node_placement: dict[str, list[str]] | None = None

    @property
    def placement(self) -> str:
        if self.node_placement is None:
            return f"{self.provider} runs every node"
        return describe_placement(self.node_placement)

    @property
    def all_numeric(self) -> bool:
        """No categorical column: V2 then also takes every feature as one ``[N, F]`` tensor."""
        return len(self.contract.numeric_names) == len(self.contract.columns)

    def describe_inputs(self) -> str:
        """The per-column V2 inputs as ``name (DATATYPE), ...`` (for messages and /openapi.json)."""
        return ", ".join(f"{t['name']} ({t['datatype']})" for t in self.inputs)

    def metadata(self) -> dict[str, Any]:
        params: dict[str, Any] = {"execution_provider": self.provider, "placement": self.placement,
                                  "onnx_sha256": self.onnx_sha256, "task": self.contract.task,
                                  "feature_order": self.contract.feature_names}
        if self.all_numeric:
            params["single_tensor_input"] = {"shape": [-1, len(self.contract.columns)], "datatypes": list(NUMERIC)}
        if self.node_placement is not None:
            params["node_placement"] = self.node_placement
        return {"name": self.name, "versions": [str(self.version)], "platform": "onnxruntime_onnx",
                "inputs": self.inputs, "outputs": self.outputs, "parameters": params}


# the V2 datatype of the label output, for labels the Scorer decodes from the graph's int64 codes
LABEL_V2 = {"boolean": "BOOL", "float": "FP64"}


def _tensor_meta(nodes: Any, contract: Contract | None = None) -> list[dict[str, Any]]:
    label = contract.outputs.get("label") if contract is not None else None
    label_type = LABEL_V2.get(contract.label_type or "") if contract is not None else None
    out = []
    for n in nodes:
        shape = [d if isinstance(d, int) else -1 for d in (n.shape or [])]
        datatype = label_type if label_type and n.name == label else ORT_TO_V2.get(n.type, n.type)
        out.append({"name": n.name, "datatype": datatype, "shape": shape})
    return out


def build(project: Project, ref: ModelRef, device: str, threads: int) -> ServedModel:
    """Load (sha256-verified), create the session and warm it up before anyone can use it.

    On a GPU the warm-up also records which provider runs each node. ``--device cuda`` fails when ONNX Runtime
    could not start CUDA (it would quietly run on the CPU), and warns when CUDA would only move data (none of
    the model's arithmetic has a CUDA kernel); ``auto`` then uses a CPU session and says so."""
    loaded = project.load_model(ref)
    providers = providers_for(device)
    scorer = Scorer(loaded.onnx, loaded.contract, providers, threads)
    served = _served(loaded, scorer)
    if CUDA in providers:
        placement = scorer.record_placement() or {}
        on_cuda = CUDA in scorer.session.get_providers()
        if device == "cuda" and not on_cuda:
            raise ConfigError(cuda_missing_message([]))
        arithmetic_on_cuda = CUDA in compute_providers(placement)
        if device == "auto" and not arithmetic_on_cuda:
            why = (f"CUDA would only move data: {describe_placement(placement)}" if on_cuda
                   else "onnxruntime could not start CUDA")
            log.warning("--device auto: using the CPU for %s version %s (%s)", loaded.name, loaded.version, why)
            served = _served(loaded, Scorer(loaded.onnx, loaded.contract, [CPU], threads))
        else:
            if not arithmetic_on_cuda:
                log.warning("--device cuda: none of the arithmetic of %s version %s runs on CUDA (%s); --device cpu "
                            "or auto avoids the copies to and from the GPU", loaded.name, loaded.version,
                            describe_placement(placement))
            served = replace(served, node_placement=placement, provider=CUDA if arithmetic_on_cuda else CPU)
    return served


def _served(loaded: Any, scorer: Scorer) -> ServedModel:
    served = ServedModel(
        name=loaded.name, version=loaded.version, onnx_sha256=loaded.onnx_sha256, contract=loaded.contract,
        scorer=scorer, provider=scorer.provider, loaded_at=time.time(),
        inputs=_tensor_meta(scorer.session.get_inputs()), outputs=_tensor_meta(scorer.session.get_outputs(), loaded.contract),
        column_by_input={c.input_name: c.name for c in loaded.contract.columns},
        records=RecordsDecoder(loaded.contract),
    )
    warm_up(served)
    return served


def warm_up(served: ServedModel) -> None:
    """Score a few reference rows (or one all-null row) so the first real request pays no lazy init."""
    ref = served.contract.reference or {}
    rows = (ref.get("rows") or [])[:8]
    cols = ref.get("columns") or served.contract.feature_names
    if rows:
        data = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
    else:
        data = {c.name: [None] for c in served.contract.columns}
    data = {c: data.get(c, [None] * max(1, len(rows))) for c in served.contract.feature_names}
    served.scorer.run(served.contract.normalize(data))
    single = {c: v[:1] for c, v in data.items()}
    served.scorer.run(served.contract.normalize(single))


class ModelHolder:
    """The current ServedModel; follows ``name@alias`` when asked to."""

    def __init__(self, project: Project, ref: ModelRef, *, device: str = "cpu", threads: int = 1,
                 reload_interval: float = 1.0, on_swap: Callable[[ServedModel, ServedModel | None], None] | None = None):
        self.project, self.ref = project, ref
        self.device, self.threads, self.reload_interval = device, threads, reload_interval
        self.on_swap = on_swap
        self.current: ServedModel = build(project, ref, device, threads)
        self.reloads = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        if on_swap:
            on_swap(self.current, None)

    @property
    def follows_alias(self) -> bool:
        return self.ref.version is None

    def check_now(self) -> bool:
        """Reload if the alias moved; returns whether a swap happened. Errors keep the old model serving."""
        if not self.follows_alias:
            return False
        with self._lock:
            try:
                version = self.project.current_version(self.ref)
                if version == self.current.version:
                    return False
                new = build(self.project, ModelRef(self.ref.name, version=version), self.device, self.threads)
            except Exception as e:  # keep serving the old version; say why
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("hot reload of %s failed, still serving version %s: %s", self.ref, self.current.version, e)
                return False
            old = self.current
            self.current = new  # atomic swap: in-flight requests hold `old`
            self.reloads += 1
            self.last_error = None
            log.warning("hot reload: %s now serves version %s (was %s) on %s: %s", self.ref, new.version,
                        old.version, new.provider, new.placement)
            if self.on_swap:
                self.on_swap(new, old)
            return True

    def start(self) -> None:
        if not self.follows_alias or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="mlopsctl-reload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.reload_interval):
            self.check_now()

    def stop(self) -> None:
        self._stop.set()


