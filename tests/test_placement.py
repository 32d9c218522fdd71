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


def test_placement_summary_counts_nodes_not_copies():
    mixed = {CUDA: ["Concat", "MemcpyToHost"], CPU: ["Imputer", "TreeEnsembleClassifier", "Imputer"]}
    assert describe_placement(mixed) == ("CUDAExecutionProvider runs 1 of 4 nodes (Concat); "
                                         "CPUExecutionProvider runs 3 of 4 nodes (Imputer, TreeEnsembleClassifier); "
                                         "1 device copies")
    assert compute_providers(mixed) == [CUDA, CPU]
    # only copies on the GPU: the model does not run there, and `--device auto` takes the CPU
    assert compute_providers({CUDA: ["MemcpyFromHost"], CPU: ["TreeEnsembleClassifier"]}) == [CPU]
    assert compute_providers({}) == []


def test_cuda_missing_message_is_one_actionable_line():
    msg = cuda_missing_message("Failed to load libcudart.so.13: cannot open shared object file")
    assert "\n" not in msg
    assert msg.startswith("--device cuda: onnxruntime-gpu is installed but could not start CUDA")
    assert "libcudart.so.13" in msg and msg.endswith("or use --device cpu.")


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
