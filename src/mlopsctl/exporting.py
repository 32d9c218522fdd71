"""Export a registered version to the engines a team moves to: a Triton model repository, KServe manifests,
or a container build context that runs ``mlopsctl serve``.

Every format starts from the version's registered ``model.onnx`` (its bytes, verified against the registry's
sha256, are written unchanged) and its contract. Tensor names, dtypes and shapes come from the ONNX graph
itself and are checked against the contract, so what Triton is told is what ONNX Runtime will see.

- ``triton``: ``<name>/config.pbtxt`` + ``<name>/<version>/model.onnx``. One ``[N, 1]`` input per column
  (``TYPE_FP32`` numeric, ``TYPE_STRING`` categorical), the batch dimension implicit (``max_batch_size > 0``);
  a rank-1 output such as a classifier's ``label`` is ``dims: [1]`` + ``reshape: { shape: [] }``, since Triton
  allows no empty ``dims``. Dynamic batching on, with no queue delay: requests that are already waiting are
  merged, none is held back to wait for others.
- ``kserve``: that repository under ``repository/``, an ``InferenceService`` on KServe's Triton runtime, and a
  ``ServingRuntime`` + ``InferenceService`` pair running ``mlopsctl serve`` from the ``docker`` export's image
  (contract checks, ``/predict``, the prediction log and ``/metrics`` come along).
- ``docker``: a ``Dockerfile`` + ``.dockerignore``, and ``project/``: a self-contained mlopsctl project (a
  ``.mlops.toml``, a SQLite store holding only this version, its two artifacts) baked into the image, which
  runs ``mlopsctl serve NAME/VERSION`` on 0.0.0.0:8080 with the token from ``MLOPS_SERVE_TOKEN``.

The output folder is written in a temporary sibling and renamed into place, so it is never half-written;
each export is recorded as an ``exported`` event.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlopsctl._version import __version__
from mlopsctl.config import CONFIG_FILE, ServeSettings, Settings
from mlopsctl.contract import Contract
from mlopsctl.errors import ConflictError, InvalidInputError, NotFoundError, TrainingError

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


# ---- Triton ---------------------------------------------------------------------------------------------

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


# ---- Kubernetes -----------------------------------------------------------------------------------------

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
    return f"""\
# {model.name}/{model.version} served by mlopsctl itself: the same server as `mlopsctl serve` (contract checks,
# /predict, MLflow's /invocations, Open Inference Protocol V2, the prediction log, /metrics).
# image: the image built from `mlopsctl export {model.name}/{model.version} --format docker` (it holds the model);
# set it with `mlopsctl export --image` or here (envsubst: IMAGE=registry/x:tag envsubst < mlopsctl-runtime.yaml).
# The bearer token comes from a Secret; create it first:
#   kubectl create secret generic {secret} --from-literal=token="$(openssl rand -hex 32)"
# The prediction log is the container's own SQLite file (lost with the pod) unless MLOPS_STORE_URL and
# MLOPS_STORE_ARTIFACTS point at the team's shared store, which must then hold {model.name}/{model.version}.
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


# ---- the container ----------------------------------------------------------------------------------------

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return json.dumps(v)


def bundle_config(settings: Settings, name: str) -> str:
    defaults = ServeSettings()
    serve = [f"{k} = {_toml_value(getattr(settings.serve, k))}" for k in BUNDLED_SERVE_KEYS
             if getattr(settings.serve, k) != getattr(defaults, k)]
    return "\n".join([
        f"# The project `mlopsctl export --format docker` wrote for {name}: a store holding one version.",
        "[store]", 'url = "sqlite:///.mlops/mlops.db"', 'artifacts = ".mlops/artifacts"', "",
        "[registry]", f"model_name = {_toml_value(name)}", "",
        "# copied from the exporting project: what the server accepts and logs",
        "[serve]", *serve, "",
    ])


def write_bundle(project: Path, settings: Settings, model: Any, row: dict[str, Any], run: dict[str, Any]) -> None:
    """A self-contained project: the version (same number, same blobs) in a fresh SQLite store."""
    from mlopsctl import registry, tracking
    from mlopsctl.artifacts import ArtifactStore
    from mlopsctl.services import artifacts_for
    from mlopsctl.store.db import open_store
    from mlopsctl.store.models import ModelVersion

    (project / ".mlops").mkdir(parents=True)
    (project / CONFIG_FILE).write_text(bundle_config(settings, model.name), encoding="utf-8")
    contract_bytes = artifacts_for(settings).get_bytes(row["contract_sha256"])
    arts = ArtifactStore(project / ".mlops" / "artifacts")
    arts.put_bytes(model.onnx)
    arts.put_bytes(contract_bytes)
    db_path = project / ".mlops" / "mlops.db"
    store = open_store(f"sqlite:///{db_path}")
    try:
        with store.session() as s:
            r = tracking.create_run(s, run["experiment"], run["name"], task=row["task"], model_class=run["model_class"],
                                    seed=run["seed"], git_commit=row["git_commit"], environment=run["environment"])
            r.parity = row["parity"]
            tracking.add_artifact(s, r.id, "model.onnx", row["onnx_sha256"], len(model.onnx), "application/onnx")
            tracking.add_artifact(s, r.id, "contract.json", row["contract_sha256"], len(contract_bytes),
                                  "application/json")
            tracking.finish_run(s, r.id)
            m = registry.get_or_create_model(s, model.name)
            s.add(ModelVersion(model_id=m.id, run_id=r.id, heldout_sha256=None, dataset_version_id=None, **row))
            registry.add_event(s, "imported", f"{model.name}/{model.version} copied by mlopsctl export from "
                               f"{settings.project_dir}", model=model.name, version=model.version,
                               payload={"onnx_sha256": model.onnx_sha256})
    finally:
        store.dispose()  # the last connection checkpoints the WAL into the file
    for leftover in db_path.parent.glob(db_path.name + ".migrate.lock"):
        leftover.unlink()


def dockerfile(model: Any) -> str:
    ref = f"{model.name}/{model.version}"
    tag = f"mlopsctl-{k8s_name(model.name)}:{model.version}"
    cmd = ["mlopsctl", "serve", ref, "--host", "0.0.0.0", "--port", str(PORT)]
    health = ["python", "-c", "import urllib.request; "
              f"urllib.request.urlopen('http://127.0.0.1:{PORT}/v2/health/ready', timeout=2)"]
    labels = {"org.opencontainers.image.title": f"mlopsctl {ref}", "mlopsctl.model": model.name,
              "mlopsctl.version": str(model.version), "mlopsctl.onnx-sha256": model.onnx_sha256,
              "mlopsctl.mlopsctl-version": __version__}
    label_lines = " \\\n      ".join(f"{k}={json.dumps(v)}" for k, v in labels.items())
    return f"""\
# {ref} served by `mlopsctl serve` (model.onnx sha256 {model.onnx_sha256}).
# The model is baked in: project/ is a one-version mlopsctl project copied to {APP_DIR}.
#   docker build -t {tag} .
#   docker run -p {PORT}:{PORT} -e MLOPS_SERVE_TOKEN="$(openssl rand -hex 32)" {tag}
# Off the loopback mlopsctl serve refuses to start without a token (MLOPS_SERVE_TOKEN).
FROM python:{sys.version_info.major}.{sys.version_info.minor}-slim
LABEL {label_lines}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --create-home --uid {UID} --user-group mlops
COPY wheels/ /tmp/wheels/
RUN ls /tmp/wheels/mlopsctl-*.whl >/dev/null 2>&1 || {{ echo "wheels/ holds no mlopsctl wheel: export with --wheel, or run pip wheel --no-deps -w wheels <mlopsctl source folder>" >&2; exit 1; }}; pip install /tmp/wheels/mlopsctl-*.whl && rm -rf /tmp/wheels
COPY --chown={UID}:{UID} project/ {APP_DIR}/
USER {UID}:{UID}
WORKDIR {APP_DIR}
EXPOSE {PORT}
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 CMD {json.dumps(health)}
CMD {json.dumps(cmd)}
"""


DOCKERIGNORE = """\
# the build context is this folder: send only the wheel and the project
*
!wheels/
!project/
**/__pycache__
project/.mlops/*.db-wal
project/.mlops/*.db-shm
"""


def _wheel_file(wheel: Path) -> Path:
    if not re.fullmatch(r"mlopsctl-[^-]+-.+\.whl", wheel.name):
        raise InvalidInputError(f"--wheel {wheel} is not an mlopsctl wheel (mlopsctl-<version>-...whl); build one "
                                "with pip wheel --no-deps -w DIR <mlopsctl source folder>.")
    if not wheel.is_file():
        raise NotFoundError(f"--wheel {wheel} does not exist.")
    return wheel


# ---- the use case -----------------------------------------------------------------------------------------

def _check_target(out: Path, force: bool, settings: Settings) -> None:
    target = out.resolve()
    for own in (settings.project_dir, settings.artifacts_dir):
        if own.resolve() == target or target in own.resolve().parents:
            raise ConflictError(f"{out} holds the project's own files ({own}); choose a folder outside it for -o.")
    if out.exists() and not out.is_dir():
        raise ConflictError(f"{out} exists and is not a folder; choose another -o.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConflictError(f"{out} is not empty; choose a new folder or pass --force to replace its content.")


def _move_into_place(tmp: Path, out: Path) -> None:
    """``tmp`` becomes ``out`` by renames (same file system): ``out`` is never half-written, and an old ``out``
    is deleted only once the new one is in place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    try:
        os.rename(out, old / "content")
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old / "content", out)
            raise
    finally:
        if out.exists():  # else the old content could not be put back: keep it where it is
            shutil.rmtree(old, ignore_errors=True)


def _version_rows(settings: Settings, ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The version ``ref`` points at now, and its run: the fields a copy of it needs."""
    from mlopsctl import registry
    from mlopsctl.services import store_for
    from mlopsctl.store.models import Run

    with store_for(settings).read() as s:
        mv = registry.resolve(s, registry.parse_ref(ref, settings.registry.alias))
        row = {k: getattr(mv, k) for k in ("version", "onnx_sha256", "contract_sha256", "task", "dataset_fingerprint",
                                            "git_commit", "metrics", "parity", "gate", "created_by", "created_at")}
        run = s.get(Run, mv.run_id)
        run_fields = {"experiment": run.experiment.name, "name": run.name, "model_class": run.model_class,
                      "seed": run.seed, "environment": run.environment}
        return row, run_fields


def export_model(settings: Settings, ref: str, fmt: str, out: Path, *, force: bool = False,
                 max_batch_size: int | None = None, wheel: Path | None = None, storage_uri: str | None = None,
                 image: str | None = None) -> dict[str, Any]:
    """Write ``ref`` (``name``, ``name/3``, ``name@alias``) in ``fmt`` to the folder ``out``; returns what was
    written. ``out`` must be empty or missing unless ``force`` (then its content is replaced)."""
    from mlopsctl import registry
    from mlopsctl.services import load_model, store_for

    if fmt not in FORMATS:
        raise InvalidInputError(f"format {fmt!r} is not one of {', '.join(FORMATS)}.")
    for flag, value, formats in (("--max-batch-size", max_batch_size, ("triton", "kserve")),
                                 ("--wheel", wheel, ("docker",)), ("--storage-uri", storage_uri, ("kserve",)),
                                 ("--image", image, ("kserve",))):
        if value is not None and fmt not in formats:
            raise InvalidInputError(f"{flag} applies to --format {' or '.join(formats)}, not {fmt}.")
    if max_batch_size is not None and max_batch_size < 1:
        raise InvalidInputError(f"--max-batch-size must be at least 1, got {max_batch_size}.")
    out = Path(out)
    _check_target(out, force, settings)
    if wheel is not None:
        wheel = _wheel_file(Path(wheel))

    row, run = _version_rows(settings, ref)
    name = registry.parse_ref(ref, settings.registry.alias).name
    model = load_model(settings, f"{name}/{row['version']}")  # the bytes, verified against the sha256
    what = f"{model.name}/{model.version}"
    batch = max_batch_size or DEFAULT_MAX_BATCH_SIZE

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise InvalidInputError(f"cannot write {out}: {e.strerror}; choose another -o.") from None
    try:
        if fmt == "triton":
            write_triton_repository(tmp, model, settings, batch)
        elif fmt == "kserve":
            write_triton_repository(tmp / "repository", model, settings, batch)
            (tmp / "inferenceservice-triton.yaml").write_text(
                triton_isvc(model, storage_uri or "${STORAGE_URI}", settings), encoding="utf-8")
            (tmp / "mlopsctl-runtime.yaml").write_text(
                mlopsctl_runtime(model, image or "${IMAGE}", settings), encoding="utf-8")
        else:
            write_bundle(tmp / "project", settings, model, row, run)
            (tmp / "wheels").mkdir()
            if wheel is not None:
                shutil.copyfile(wheel, tmp / "wheels" / wheel.name)
            (tmp / "Dockerfile").write_text(dockerfile(model), encoding="utf-8")
            (tmp / ".dockerignore").write_text(DOCKERIGNORE, encoding="utf-8")
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    result = {"model": model.name, "version": model.version, "ref": what, "format": fmt,
              "onnx_sha256": model.onnx_sha256, "output": str(out.resolve()), "files": files}
    if fmt in ("triton", "kserve"):
        result["max_batch_size"] = batch
    if fmt == "docker":
        result["wheel"] = wheel.name if wheel is not None else None
    with store_for(settings).session() as s:
        registry.add_event(s, "exported", f"{what} exported as {fmt} to {result['output']}", model=model.name,
                           version=model.version, payload={k: v for k, v in result.items() if k != "files"})
    return result
