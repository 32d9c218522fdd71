"""The serving baseline: a bare Flask + ONNX Runtime app, what a user would write by hand (issue 4).

It loads the SAME model.onnx that `mlopsctl serve` serves, parses the same ``POST /predict`` body
(``{"records": [{column: value, ...}, ...]}``), builds the same feeds (one ``[N, 1]`` float32 tensor per
ONNX input), runs the session and returns predictions and per-class probabilities as JSON. No validation, no
prediction logging, no metrics, no request ids: the limit of the stack (Flask + gunicorn + ORT) that
mlopsctl is measured against in benchmarks/serve_bench.py.

Run it (the benchmark does this, with the same worker count/class as the mlopsctl server it is compared to):

    BARE_MODEL=path/to/model.onnx BARE_CLASSES=benign,malignant \\
        .venv/bin/gunicorn -w 2 -k gthread --threads 4 --chdir benchmarks serve_bare_app:app

Environment: ``BARE_MODEL`` (required) the ONNX file; ``BARE_CLASSES`` comma-separated class names in the
order of the model's probability columns; ``BARE_ORT_THREADS`` ORT intra-op threads (default: the same
rule as mlopsctl, ``max(1, cpu_count // BARE_WORKERS)``); ``BARE_WORKERS`` the gunicorn worker count.
JSON is done with orjson, as in mlopsctl, so the baseline is not handicapped by the stdlib json module.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import orjson
from flask import Flask, Response, request

_workers = int(os.environ.get("BARE_WORKERS", "1"))
_opts = ort.SessionOptions()
_opts.intra_op_num_threads = int(os.environ.get("BARE_ORT_THREADS") or max(1, (os.cpu_count() or 1) // _workers))
_opts.inter_op_num_threads = 1
_opts.log_severity_level = 3
session = ort.InferenceSession(os.environ["BARE_MODEL"], sess_options=_opts, providers=["CPUExecutionProvider"])
INPUTS = [i.name for i in session.get_inputs()]
OUTPUTS = [o.name for o in session.get_outputs()]  # label, probabilities (skl2onnx, zipmap off)
CLASSES = [c for c in os.environ.get("BARE_CLASSES", "").split(",") if c]

app = Flask(__name__)


@app.post("/predict")
def predict() -> Response:
    records = orjson.loads(request.get_data())["records"]
    feeds = {name: np.array([r[name] for r in records], dtype=np.float32).reshape(-1, 1) for name in INPUTS}
    label, proba = session.run(OUTPUTS, feeds)
    classes = CLASSES or [str(i) for i in range(proba.shape[1])]
    body = {"predictions": label.ravel().tolist(),
            "probabilities": [dict(zip(classes, row)) for row in proba.round(6).tolist()]}
    return Response(orjson.dumps(body), mimetype="application/json")


@app.get("/v2/health/ready")
def ready() -> Response:
    return Response(b'{"ready":true}', mimetype="application/json")
