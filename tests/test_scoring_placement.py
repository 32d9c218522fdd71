"""Which execution provider runs each node: read back from ONNX Runtime's own profiler.

ONNX Runtime quietly puts a node on the CPU when the GPU provider has no kernel for it (the ``ai.onnx.ml``
operators that scikit-learn models export to), so `serve --device cuda|auto` reports the placement it
reads from a real profile of the warm-up runs. CUDA itself is proven on a GPU machine by
benchmarks/serve_gpu.py (RESULTS.md, "Serving on a GPU"); here the profile of a real CPU session, and the
summary and fallback rules on placements of the shape a CUDA session gives.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from skl2onnx import to_onnx

from mlopsctl.scoring import (CPU, CUDA, compute_providers, cuda_missing_message, describe_placement, make_session,
                              placement_from_profile)


@pytest.fixture(scope="module")
def forest_onnx() -> bytes:
    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    model = RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y)
    return to_onnx(model, x[:1], options={"zipmap": False}).SerializeToString()


def test_placement_is_read_from_a_real_profile(forest_onnx, tmp_path: Path):
    sess = make_session(forest_onnx, [CPU], 1, str(tmp_path / "p"))
    sess.run(None, {sess.get_inputs()[0].name: np.zeros((2, 30), np.float32)})
    path = Path(sess.end_profiling())
    assert path.parent == tmp_path
    placement = placement_from_profile(json.loads(path.read_text()))
    assert placement == {CPU: ["TreeEnsembleClassifier"]}
    size = path.stat().st_size
    sess.run(None, {sess.get_inputs()[0].name: np.zeros((2, 30), np.float32)})
    assert path.stat().st_size == size  # the profiler stopped: later requests pay nothing for it


def test_profile_events_other_than_nodes_are_ignored():
    events = [{"cat": "Session", "name": "model_run", "args": {}},
              {"cat": "Node", "args": {"node_index": "2", "provider": CPU, "op_name": "TreeEnsembleClassifier"}},
              {"cat": "Node", "args": {"node_index": "0", "provider": CUDA, "op_name": "Concat"}},
              {"cat": "Node", "args": {"node_index": "0", "provider": CUDA, "op_name": "Concat"}},  # a second run
              {"cat": "Node", "args": {"node_index": "1", "provider": CPU, "op_name": "MemcpyToHost"}},
              {"cat": "Node", "args": {"op_name": "no index"}}]
    assert placement_from_profile(events) == {CUDA: ["Concat"], CPU: ["MemcpyToHost", "TreeEnsembleClassifier"]}


# Placements read on an H100 (onnxruntime-gpu 1.31.1, benchmarks/serve_gpu.py) for three exported models.
FOREST_ON_CUDA = {CUDA: ["Concat", "MemcpyToHost"], CPU: ["Imputer", "TreeEnsembleClassifier"]}
MLP_ON_CUDA = {CUDA: ["Concat", "MatMul", "Add", "Relu", "MatMul", "Add", "Relu", "MatMul", "Add", "Sigmoid", "Sub",
                      "Concat", "ArgMax", "MemcpyFromHost", "MemcpyToHost", "MemcpyToHost"],
               CPU: ["Imputer", "Scaler", "ArrayFeatureExtractor", "Reshape"]}
MIXED_ON_CUDA = {CUDA: ["Concat", "Cast", "Cast", "Cast", "Concat", "Reshape", "Concat", "MemcpyFromHost"],
                 CPU: ["Concat", "LabelEncoder", "ArrayFeatureExtractor", "Imputer", "Where", "OneHotEncoder",
                       "TreeEnsembleClassifier"]}


def test_placement_summary_counts_nodes_not_copies():
    assert describe_placement(FOREST_ON_CUDA) == ("CUDAExecutionProvider runs 1 of 3 nodes (Concat); "
                                                  "CPUExecutionProvider runs 2 of 3 nodes (Imputer, "
                                                  "TreeEnsembleClassifier); 1 device copy")
    assert describe_placement(MLP_ON_CUDA).endswith(
        "CPUExecutionProvider runs 4 of 17 nodes (Imputer, Scaler, ArrayFeatureExtractor, Reshape); 3 device copies")
    assert describe_placement({CPU: ["Imputer", "Imputer"]}) == "CPUExecutionProvider runs 2 of 2 nodes (Imputer)"


@pytest.mark.parametrize("placement, providers", [
    (FOREST_ON_CUDA, [CPU]),  # the GPU only concatenates the inputs: `auto` takes the CPU
    (MIXED_ON_CUDA, [CPU]),  # casts, concatenations and reshapes only
    (MLP_ON_CUDA, [CUDA, CPU]),  # the matrix products run on the GPU
    ({CUDA: ["MemcpyFromHost"], CPU: ["TreeEnsembleClassifier"]}, [CPU]),
    ({}, []),
])
def test_providers_doing_arithmetic(placement, providers):
    assert compute_providers(placement) == providers


# what onnxruntime-gpu 1.31.1 printed on the H100 with CUDA_VISIBLE_DEVICES=-1 (shortened in the middle)
NO_DEVICE = ["EP Error /onnxruntime_src/onnxruntime/core/providers/cuda/cuda_call.cc:154 std::conditional_t<THRW, "
             "void, onnxruntime::common::Status> onnxruntime::CudaCall(ERRTYPE, const char*, const char*, SUCCTYPE, "
             "const char*, const char*, int) [with ERRTYPE = cudaError; bool THRW = true] CUDA failure 100: no "
             "CUDA-capable device is detected ; GPU=-1 ; hostname=vm ; file=/onnxruntime_src/onnxruntime/core/"
             "providers/cuda/cuda_execution_provider.cc ; line=355 ; expr=cudaSetDevice(info_.device_id); "
             "when using ['CUDAExecutionProvider', 'CPUExecutionProvider']",
             "Falling back to ['CPUExecutionProvider'] and retrying."]


@pytest.mark.parametrize("said, why", [
    (NO_DEVICE, "could not start CUDA: no CUDA-capable device is detected (CUDA error 100); check the GPU"),
    (["Failed to load /venv/site-packages/nvidia/cu13/lib/libcudart.so.13: cannot open shared object file",
      "Failed to load libcublasLt.so.13: libcublasLt.so.13: cannot open shared object file",
      "Failed to load libcudart.so.13: cannot open shared object file"],
     "could not start CUDA: libraries not found: libcudart.so.13, libcublasLt.so.13; check"),
    ([], "could not start CUDA: no reason given; check"),
    (["x" * 5000], "could not start CUDA: " + "x" * 200 + "...; check"),
])
def test_cuda_missing_message_is_one_actionable_line(said, why):
    msg = cuda_missing_message(said)
    assert "\n" not in msg and len(msg) < 420
    assert msg.startswith("--device cuda: onnxruntime-gpu")
    assert why in msg
    assert msg.endswith("or use --device cpu.")


def test_loading_cuda_libraries_is_silent_and_harmless_without_onnxruntime_gpu(capsys):
    from mlopsctl.scoring import load_cuda_libraries

    said = load_cuda_libraries()
    assert isinstance(said, list) and all(isinstance(line, str) and line for line in said)
    if CUDA not in ort.get_available_providers():  # a CPU build: nothing to load, nothing said
        assert said == []
    assert capsys.readouterr().out == ""  # what onnxruntime prints is returned, not printed


def test_this_machine_offers_the_providers_the_probe_sees():
    from mlopsctl.errors import ConfigError
    from mlopsctl.scoring import probe_in_child

    assert probe_in_child("cpu") == [CPU]
    if CUDA in ort.get_available_providers():  # a GPU machine: auto takes CUDA
        assert probe_in_child("auto") == [CUDA, CPU]
    else:
        assert probe_in_child("auto") == [CPU]
        with pytest.raises(ConfigError, match="--device cuda needs CUDAExecutionProvider"):
            probe_in_child("cuda", b"not read")


def test_a_gpu_session_that_cannot_be_created_leaves_no_profile_folder(forest_onnx, tmp_path, monkeypatch):
    import tempfile

    from mlopsctl.scoring import Scorer

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the profile folder would be made
    with pytest.raises(Exception, match="(?i)protobuf|not in available provider"):
        Scorer(b"not an onnx model", None, [CUDA, CPU], 1)  # the contract is not read before the session
    assert list(tmp_path.iterdir()) == []
