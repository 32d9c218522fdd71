"""ONNX export of the whole fitted pipeline (one graph over raw columns) and the parity check.

Inputs are one ``[N, 1]`` tensor per column: float32 for numeric/boolean columns, string for categorical
ones. Probabilities come out as a plain tensor (no ZipMap). Double-precision inputs were tried and
rejected: ONNX Runtime has no double kernel for the ``Imputer`` op and skl2onnx's tree converters emit
float outputs, so float32 is as close as the converters allow; the parity report records what we got.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlopsctl.contract import Contract
from mlopsctl.errors import TrainingError
from mlopsctl.scoring import Scorer
from mlopsctl.training import boosters

# Parity bounds. Trees compare float32 thresholds, so a borderline row can flip: we allow a small share
# of label disagreements and bound the probability error; regression is bounded relative to the target.
MIN_LABEL_AGREEMENT = 0.99
MAX_PROBA_DIFF = 0.05
MAX_REL_REGRESSION_DIFF = 1e-3
# Training rows checked besides the held-out ones (a seeded sample of them when there are more): rows that
# sit exactly on a learned split point are where float32 and float64 part ways.
TRAINING_PARITY_ROWS = 5000


@functools.cache
def _patch_skl2onnx() -> None:
    """skl2onnx 1.20 passes numpy/Python booleans for ``nodes_missing_value_tracks_true`` when converting
    scikit-learn >= 1.8 HistGradientBoosting trees, which onnx rejects ("Expected an int, got a boolean").
    Cast the flag to int where it is produced. (And :func:`_skip_pipeline_option_search`.)"""
    from skl2onnx.common import tree_ensemble

    _skip_pipeline_option_search()

    original = tree_ensemble.add_node
    if getattr(original, "_mlopsctl_patched", False):
        return

    @functools.wraps(original)
    def add_node(*args, **kwargs):
        if "nodes_missing_value_tracks_true" in kwargs:
            kwargs["nodes_missing_value_tracks_true"] = int(bool(kwargs["nodes_missing_value_tracks_true"]))
        return original(*args, **kwargs)

    add_node._mlopsctl_patched = True  # type: ignore[attr-defined]
    tree_ensemble.add_node = add_node


class FinalStepOptions(dict):
    """Converter options keyed by ``id()`` of a pipeline's final estimator only, which is not a Pipeline."""


def _skip_pipeline_option_search() -> None:
    """Before converting, skl2onnx looks for Pipelines among the option keys, to hand their options to their last
    step: twice per conversion it walks every object of the model and reads each fitted attribute (``dir()`` and
    ``feature_importances_`` of every tree of a forest, the forest's ``estimators_samples_``, which draws every
    tree's bootstrap rows again). For a 61-tree forest that took ~105 of the conversion's 135 ms, for 200 trees
    ~330 of 415 ms. Options that name no Pipeline (:class:`FinalStepOptions`) come out of that search unchanged,
    so it is skipped for them; the graph is the same."""
    from skl2onnx.common import utils_sklearn

    original = utils_sklearn._process_pipeline_options
    if getattr(original, "_mlopsctl_patched", False):
        return

    @functools.wraps(original)
    def process_pipeline_options(model, options):
        return options if isinstance(options, FinalStepOptions) else original(model, options)

    process_pipeline_options._mlopsctl_patched = True  # type: ignore[attr-defined]
    utils_sklearn._process_pipeline_options = process_pipeline_options


def has_converter(cls: type) -> bool:
    from skl2onnx._supported_operators import sklearn_operator_name_map

    return any(issubclass(cls, known) for known in sklearn_operator_name_map)


def _initial_types(contract: Contract):
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    numeric = DoubleTensorType if contract.numeric_dtype == "float64" else FloatTensorType
    return [
        (c.name, StringTensorType([None, 1]) if c.kind == "categorical" else numeric([None, 1]))
        for c in contract.columns
    ]


def export_onnx(pipeline: Any, contract: Contract) -> tuple[bytes, Contract]:
    """Convert the fitted pipeline; returns the serialized model and the contract with output names."""
    from dataclasses import replace

    from skl2onnx import convert_sklearn

    _patch_skl2onnx()
    final = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
    library = boosters.library_of(final)
    target_opset = None
    if library is not None:
        from skl2onnx import get_latest_tested_opset_version

        boosters.register_converters(library)
        # onnxmltools' converters write the ai.onnx.ml v3 tree operators (v5 replaced them with TreeEnsemble)
        target_opset = {"": get_latest_tested_opset_version(), "ai.onnx.ml": 3}
    options = None
    if contract.task == "classification":
        from sklearn.pipeline import Pipeline

        options = (dict if isinstance(final, Pipeline) else FinalStepOptions)({id(final): {"zipmap": False}})
    try:
        onx = convert_sklearn(pipeline, initial_types=_initial_types(contract), options=options,
                              target_opset=target_opset)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainingError(f"ONNX export of {type(final).__name__} failed: {msg[:300]}") from None
    names = [o.name for o in onx.graph.output]
    if contract.task == "classification":
        if len(names) < 2:
            raise TrainingError(f"ONNX export of {type(final).__name__} produced no probability output ({names}).")
        outputs = {"label": names[0], "probabilities": names[1]}
        if library is not None:
            boosters.label_from_probabilities(onx, names[0], names[1], final.classes_)
    else:
        outputs = {"prediction": names[0]}
    inputs = [i.name for i in onx.graph.input]
    if len(inputs) != len(contract.columns):
        raise TrainingError(f"ONNX export produced {len(inputs)} inputs for {len(contract.columns)} columns.")
    columns = tuple(replace(c, input=name) for c, name in zip(contract.columns, inputs))
    onx.doc_string = f"mlopsctl model: {type(final).__name__} on {len(contract.columns)} columns"
    return onx.SerializeToString(), replace(contract, outputs=outputs, columns=columns)


@dataclass
class Parity:
    rows: int
    max_abs_diff: float
    mean_abs_diff: float
    label_agreement: float | None  # classification only: see :func:`label_agreement`
    relative_max_diff: float | None  # regression only
    passed: bool
    numeric_dtype: str
    training: Parity | None = None  # the same check on training rows; ``passed`` covers both

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        if self.training is not None:
            d["training"] = {k: v for k, v in self.training.to_dict().items() if k not in ("bounds", "training")}
        d["bounds"] = (
            {"min_label_agreement": MIN_LABEL_AGREEMENT, "max_proba_diff": MAX_PROBA_DIFF}
            if self.label_agreement is not None
            else {"max_relative_diff": MAX_REL_REGRESSION_DIFF}
        )
        return d


def with_training_rows(held_out: Parity, pipeline: Any, model_bytes: bytes, contract: Contract, frame: Any,
                       seed: int, scorer: Scorer | None = None) -> Parity:
    """``held_out`` with the same check on the training rows ``frame`` (a seeded sample of
    ``TRAINING_PARITY_ROWS`` when there are more); passed only when both pass. ``scorer``: the session that
    checked ``held_out``, if the caller kept it."""
    from dataclasses import replace

    if len(frame) > TRAINING_PARITY_ROWS:
        frame = frame.sample(TRAINING_PARITY_ROWS, random_state=seed)
    training = parity_check(pipeline, model_bytes, contract, frame, scorer)
    return replace(held_out, training=training, passed=held_out.passed and training.passed)


def tree_count(model_bytes: bytes) -> int | None:
    """Trees in the graph's tree-ensemble operators; None when it has none (a linear model, k-NN...)."""
    import onnx

    trees = None
    for node in onnx.load_from_string(model_bytes).graph.node:
        if node.op_type.startswith("TreeEnsemble"):
            attrs = {a.name: a for a in node.attribute}
            ids = attrs["tree_roots"].ints if "tree_roots" in attrs else set(attrs["nodes_treeids"].ints)
            trees = (trees or 0) + len(set(ids))
    return trees


def label_agreement(labels: np.ndarray, ref_labels: np.ndarray, ref_proba: np.ndarray, diff: np.ndarray) -> float:
    """Share of rows whose ONNX label is scikit-learn's, or where scikit-learn's two best classes are tied
    within that row's probability difference: a forest with an even number of trees often scores a row
    exactly 0.5 / 0.5, scikit-learn takes the first class and float32 rounding (0.49999994 / 0.50000006) the
    other. Such a tie-break says nothing about the export; a label that differs past the rounding does."""
    differ = labels.astype(str) != ref_labels.astype(str)
    if ref_proba.shape[1] > 1:
        top2 = np.sort(ref_proba, axis=1)[:, -2:]
        differ &= (top2[:, 1] - top2[:, 0]) > diff.max(axis=1)
    return float(np.mean(~differ))


def parity_check(pipeline: Any, model_bytes: bytes, contract: Contract, frame: Any,
                 scorer: Scorer | None = None) -> Parity:
    """Score ``frame`` (a normalized DataFrame) with scikit-learn and ONNX Runtime and compare; ``scorer``: a
    session of ``model_bytes`` to score with (else one is created)."""
    import pandas as pd

    if len(frame) == 0:
        raise TrainingError("the parity check needs at least one held-out row.")
    normalized = {c: frame[c].to_numpy() for c in contract.feature_names}
    got = (scorer or Scorer(model_bytes, contract)).run(normalized)
    X = pd.DataFrame(normalized)
    if contract.task == "classification":
        ref_proba = np.asarray(pipeline.predict_proba(X), dtype=np.float64)
        ref_labels = contract.decode_labels(np.asarray(pipeline.predict(X)))
        diff = np.abs(np.asarray(got["probabilities"], dtype=np.float64) - ref_proba)
        agreement = label_agreement(np.asarray(got["label"]).ravel(), ref_labels, ref_proba, diff)
        max_diff = float(diff.max())
        passed = agreement >= MIN_LABEL_AGREEMENT and max_diff <= MAX_PROBA_DIFF
        return Parity(len(X), max_diff, float(diff.mean()), agreement, None, passed, contract.numeric_dtype)
    ref = np.asarray(pipeline.predict(X), dtype=np.float64).ravel()
    diff = np.abs(np.asarray(got["prediction"], dtype=np.float64).ravel() - ref)
    scale = max(1.0, float(np.abs(ref).max()))
    rel = float(diff.max() / scale)
    return Parity(len(X), float(diff.max()), float(diff.mean()), None, rel, rel <= MAX_REL_REGRESSION_DIFF,
                  contract.numeric_dtype)
