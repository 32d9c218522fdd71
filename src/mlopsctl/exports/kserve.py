"""KServe manifests: an InferenceService on KServe's Triton runtime, and a ServingRuntime + InferenceService
pair that runs ``mlopsctl serve`` from the container export's image."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from mlopsctl._version import __version__
from mlopsctl.config import Settings
from mlopsctl.exports.triton import PORT, UID

def k8s_name(name: str, limit: int = 40) -> str:
    """A DNS-1035 label from a model name (lowercase letters, digits, '-'; a letter first). At most ``limit``
    characters: KServe derives Service names such as ``<name>-predictor-00001-private`` (63 at most)."""
    text = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not text or not text[0].isalpha():
        text = "m-" + text
    return text[:limit].rstrip("-")


def _y(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(text)


def _metadata(name: str, model: Any, indent: str = "  ") -> str:
    return "\n".join([
        f"{indent}name: {_y(name)}",
        f"{indent}labels:",
        f"{indent}  app.kubernetes.io/name: {_y(k8s_name(model.name))}",
        f"{indent}  app.kubernetes.io/version: {_y(str(model.version))}",
        f"{indent}annotations:",
        f"{indent}  mlopsctl/model: {_y(model.name)}",
        f"{indent}  mlopsctl/version: {_y(str(model.version))}",
        f"{indent}  mlopsctl/onnx-sha256: {_y(model.onnx_sha256)}",
        f"{indent}  mlopsctl/exported-by: {_y('mlopsctl ' + __version__)}",
    ])


def _memory_mi(base: int, copies: int, model_bytes: int, floor: int) -> int:
    """A memory size for ``copies`` ONNX Runtime sessions of the model: about 4x the file each, on top of
    ``base``; rounded up to 64 MiB, at least ``floor``."""
    need = base + copies * 4 * model_bytes / 2**20
    return max(floor, int(math.ceil(need / 64) * 64))


def triton_isvc(model: Any, storage_uri: str, settings: Settings) -> str:
    count = 1 if settings.serve.device == "cuda" else settings.serve.workers
    mem = _memory_mi(1024, count, len(model.onnx), 2048)
    gpu = '\n          nvidia.com/gpu: "1"' if settings.serve.device == "cuda" else ""
    return f"""\
# {model.name}/{model.version} on KServe's Triton runtime (kserve-tritonserver), Open Inference Protocol V2.
# storageUri: the folder holding repository/'s content ({model.name}/config.pbtxt, {model.name}/{model.version}/model.onnx),
# e.g. after `aws s3 cp --recursive repository/ s3://BUCKET/PATH/`; set it with `mlopsctl export --storage-uri`
# or here (envsubst: STORAGE_URI=s3://BUCKET/PATH envsubst < inferenceservice-triton.yaml | kubectl apply -f -).
# Clients call /v2/models/{model.name}/infer: the model name on the wire is the repository folder's name.
# Triton does not check requests against the model's contract (types, categories, ranges): the mlopsctl
# runtime in mlopsctl-runtime.yaml does.
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
{_metadata(k8s_name(model.name), model)}
spec:
  predictor:
    model:
      modelFormat:
        name: onnx
      runtime: kserve-tritonserver
      protocolVersion: v2
      storageUri: {_y(storage_uri)}
      resources:
        requests:
          cpu: "1"
          memory: {mem}Mi
        limits:
          cpu: "{max(2, count)}"
          memory: {mem}Mi{gpu}
"""


def mlopsctl_runtime(model: Any, image: str, settings: Settings) -> str:
    name = k8s_name(model.name)
    runtime = f"mlopsctl-{k8s_name(model.name, 30 - len(str(model.version)))}-{model.version}"
    workers = settings.serve.workers
    mem = _memory_mi(384, workers, len(model.onnx), 1024)
    secret = f"{name}-serve-token"
    args = ["serve", f"{model.name}/{model.version}", "--host", "0.0.0.0", "--port", str(PORT)]
    probe = "\n".join(["        httpGet:", "          path: {path}", f"          port: {PORT}",
                       "        periodSeconds: 10", "        timeoutSeconds: 3", "        failureThreshold: 3"])
    return _runtime_comment(model, secret) + f"""\
apiVersion: serving.kserve.io/v1alpha1
kind: ServingRuntime
metadata:
{_metadata(runtime, model)}
spec:
  supportedModelFormats:
    - name: mlopsctl
      version: "1"
      autoSelect: false
  protocolVersions:
    - v2
  containers:
    - name: kserve-container
      image: {_y(image)}
      command: ["mlopsctl"]
      args: {json.dumps(args)}
      ports:
        - containerPort: {PORT}
          protocol: TCP
      env:
        - name: MLOPS_SERVE_TOKEN
          valueFrom:
            secretKeyRef:
              name: {_y(secret)}
              key: token
      resources:
        requests:
          cpu: "1"
          memory: {mem}Mi
        limits:
          cpu: "{max(2, workers)}"
          memory: {mem}Mi
      securityContext:
        runAsNonRoot: true
        runAsUser: {UID}
        allowPrivilegeEscalation: false
      readinessProbe:
{probe.format(path="/v2/health/ready")}
      livenessProbe:
{probe.format(path="/v2/health/live")}
---
""" + _runtime_isvc(model, name, runtime)


def _runtime_comment(model: Any, secret: str) -> str:
    return f"""\
# {model.name}/{model.version} served by mlopsctl itself: the same server as `mlopsctl serve` (contract checks,
# /predict, MLflow's /invocations, Open Inference Protocol V2, the prediction log, /metrics).
# image: the image built from `mlopsctl export {model.name}/{model.version} --format docker` (it holds the model);
# set it with `mlopsctl export --image` or here (envsubst: IMAGE=registry/x:tag envsubst < mlopsctl-runtime.yaml).
# The bearer token comes from a Secret; create it first:
#   kubectl create secret generic {secret} --from-literal=token="$(openssl rand -hex 32)"
# The prediction log is the container's own SQLite file (lost with the pod) unless MLOPS_STORE_URL and
# MLOPS_STORE_ARTIFACTS point at the team's shared store, which must then hold {model.name}/{model.version}.
"""


def _runtime_isvc(model: Any, name: str, runtime: str) -> str:
    return f"""\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
{_metadata(f"{name[:31].rstrip('-')}-mlopsctl", model)}
spec:
  predictor:
    model:
      modelFormat:
        name: mlopsctl
      runtime: {_y(runtime)}
      protocolVersion: v2
"""
