"""Training: estimators, preprocessing, metrics, ONNX export and parity. scikit-learn + skl2onnx only; no DB."""
