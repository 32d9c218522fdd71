"""A Triton model repository: ``<name>/config.pbtxt`` + ``<name>/<version>/model.onnx``, with tensor names,
dtypes and shapes read from the ONNX graph and checked against the contract."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlopsctl._version import __version__
from mlopsctl.config import Settings
from mlopsctl.contract import Contract
from mlopsctl.errors import TrainingError

FORMATS = ("triton", "kserve", "docker")
# Triton's per-request row cap and the largest batch the dynamic batcher forms. Measured with ONNX Runtime on
# a 100-tree forest (README, "Serving on Kubernetes"): the cost per row stops falling at a few hundred rows,
# so larger batches add little throughput but make every request merged into them wait longer.
DEFAULT_MAX_BATCH_SIZE = 1024
PORT = 8080
UID = 10001  # numeric, so that Kubernetes' runAsNonRoot can check it
APP_DIR = "/srv/mlops"
# [serve] keys that decide what the server accepts and logs; copied into the container's project when they
# differ from the defaults (host, port, token, device and worker counts belong to where it runs)
BUNDLED_SERVE_KEYS = ("unknown_category", "out_of_range", "range_tolerance", "unseen_nulls", "extra_columns",
                      "max_batch_rows", "max_body_mb", "log_predictions", "log_queue_size", "log_flush_seconds")

_ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
                   6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
                   11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64"}  # onnx.TensorProto element types


@dataclass(frozen=True)
class Tensor:
    """One input or output as Triton sees it: ``dims`` exclude the batch dimension (-1: any size)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def graph_tensors(onnx_bytes: bytes, what: str) -> tuple[list[Tensor], list[Tensor]]:
    """Inputs and outputs of the ONNX graph, each batched on its first dimension (else TrainingError)."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    initializers = {i.name for i in graph.initializer}

    def tensor(v: Any) -> Tensor:
        if not v.type.HasField("tensor_type"):
            raise TrainingError(f"{what}: ONNX value {v.name!r} is not a tensor (a ZipMap output?); Triton "
                                "cannot serve it; retrain with this mlopsctl, which exports plain tensors.")
        t = v.type.tensor_type
        if t.elem_type not in _ONNX_TO_TRITON:
            raise TrainingError(f"{what}: ONNX value {v.name!r} has element type {t.elem_type}, which Triton's "
                                "ONNX Runtime backend does not take.")
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim]
        if not dims or dims[0] != -1:
            raise TrainingError(f"{what}: ONNX value {v.name!r} has shape {dims}, not a variable batch dimension "
                                "first; it cannot be batched.")
        return Tensor(v.name, _ONNX_TO_TRITON[t.elem_type], tuple(dims[1:]))

    return ([tensor(v) for v in graph.input if v.name not in initializers], [tensor(v) for v in graph.output])


def check_against_contract(inputs: list[Tensor], outputs: list[Tensor], contract: Contract, what: str) -> None:
    """The graph takes exactly the contract's columns, ``[N, 1]`` each with the contract's dtype, and has
    the outputs the contract names."""
    numeric = {"float32": "TYPE_FP32", "float64": "TYPE_FP64"}.get(contract.numeric_dtype, contract.numeric_dtype)
    expected = {c.input_name: ("TYPE_STRING" if c.kind == "categorical" else numeric) for c in contract.columns}
    got = {t.name: t for t in inputs}
    problems = [f"input {n!r} missing" for n in expected if n not in got]
    problems += [f"input {n!r} is not a contract column" for n in got if n not in expected]
    problems += [f"input {n!r} is {got[n].data_type} {list(got[n].dims)}, the contract says {t} [1]"
                 for n, t in expected.items() if n in got and (got[n].data_type != t or got[n].dims != (1,))]
    names = {t.name for t in outputs}
    problems += [f"output {n!r} missing" for n in contract.outputs.values() if n not in names]
    if problems:
        raise TrainingError(f"{what}: the ONNX graph does not match the contract ({'; '.join(problems)}); "
                            "retrain and register the model again.")


def _pb_str(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 kept as is)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


def _tensor_block(t: Tensor) -> str:
    dims = t.dims or (1,)
    lines = [f"    name: {_pb_str(t.name)}", f"    data_type: {t.data_type}",
             f"    dims: [ {', '.join(map(str, dims))} ]"]
    if not t.dims:  # [N] in the graph: the API shape is [N, 1]
        lines.append("    reshape: { shape: [ ] }")
    return "  {\n" + "\n".join(lines) + "\n  }"


def triton_config(name: str, version: int, onnx_sha256: str, inputs: list[Tensor], outputs: list[Tensor], *,
                  max_batch_size: int, kind: str, count: int) -> str:
    """``config.pbtxt`` (text-format ``ModelConfig``); the model's name, version and sha256 ride along as
    ``parameters`` (which Triton's ONNX Runtime backend ignores and ``/v2/models/<name>/config`` shows)."""
    params = {"mlopsctl.model": name, "mlopsctl.version": str(version), "mlopsctl.onnx_sha256": onnx_sha256,
              "mlopsctl.mlopsctl_version": __version__}
    return "\n".join([
        f"# {name}/{version} exported by mlopsctl {__version__}; model.onnx sha256 {onnx_sha256}",
        "# One [N, 1] input per column (numbers TYPE_FP32, categories TYPE_STRING); N is the batch dimension.",
        f"name: {_pb_str(name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(_tensor_block(t) for t in inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor_block(t) for t in outputs) + "\n]",
        "# merge requests that are already queued; hold none back waiting for more",
        "dynamic_batching {\n  max_queue_delay_microseconds: 0\n}",
        f"instance_group [\n  {{\n    count: {count}\n    kind: {kind}\n  }}\n]",
        *(f"parameters {{ key: {_pb_str(k)} value: {{ string_value: {_pb_str(v)} }} }}" for k, v in params.items()),
        "",
    ])


def write_triton_repository(root: Path, model: Any, settings: Settings, max_batch_size: int) -> None:
    inputs, outputs = graph_tensors(model.onnx, f"{model.name}/{model.version}")
    check_against_contract(inputs, outputs, model.contract, f"{model.name}/{model.version}")
    gpu = settings.serve.device == "cuda"
    text = triton_config(model.name, model.version, model.onnx_sha256, inputs, outputs,
                         max_batch_size=max_batch_size, kind="KIND_GPU" if gpu else "KIND_CPU",
                         count=1 if gpu else settings.serve.workers)
    (root / model.name / str(model.version)).mkdir(parents=True)
    (root / model.name / "config.pbtxt").write_text(text, encoding="utf-8")
    (root / model.name / str(model.version) / "model.onnx").write_bytes(model.onnx)
