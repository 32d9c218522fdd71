"""The prediction server: Flask + ONNX Runtime. Never imports scikit-learn, skl2onnx or joblib and never
unpickles: it loads ONNX files whose sha256 it verifies against the registry."""
