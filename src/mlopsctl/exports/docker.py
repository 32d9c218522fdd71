"""A container build context: a Dockerfile that installs the mlopsctl wheel and runs ``mlopsctl serve`` on a
self-contained project baked into the image."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from mlopsctl._version import __version__
from mlopsctl.config import ServeSettings, Settings
from mlopsctl.errors import InvalidInputError, NotFoundError
from mlopsctl.exports.kserve import k8s_name
from mlopsctl.exports.triton import APP_DIR, BUNDLED_SERVE_KEYS, PORT, UID

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
