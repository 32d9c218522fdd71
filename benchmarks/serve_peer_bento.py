"""The BentoML peer of benchmarks/serve_front.py --peers (issue 21): the project's fitted scikit-learn pipeline
(``model.joblib``, the same fit as the ONNX file mlopsctl serves) behind a BentoML service, 2 workers.

    PEER_JOBLIB=path/to/model.joblib benchmarks/.work/bentoml-venv/bin/bentoml serve serve_peer_bento:Forest \\
        --working-dir benchmarks --host 127.0.0.1 --port 3000

``POST /predict`` takes ``{"records": [{column: value, ...}, ...]}`` (mlopsctl's own body) and answers
``{"predictions": [...]}``. It runs in BentoML's venv (benchmarks/.work/bentoml-venv), never the project's.
"""

from __future__ import annotations

import os

import bentoml
import joblib
import pandas as pd


@bentoml.service(workers=2)
class Forest:
    def __init__(self) -> None:
        self.pipe = joblib.load(os.environ["PEER_JOBLIB"])
        self.columns = list(self.pipe.feature_names_in_)

    @bentoml.api
    def predict(self, records: list[dict]) -> dict:
        frame = pd.DataFrame.from_records(records, columns=self.columns)
        return {"predictions": self.pipe.predict(frame).tolist()}
