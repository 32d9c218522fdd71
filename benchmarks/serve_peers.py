"""The packaged peers of ``benchmarks/serve_front.py --peers`` (issue 21): ``mlflow models serve``, MLServer (its
scikit-learn runtime) and BentoML, measured in the same rounds and the same way as mlopsctl.

Each runs from its own venv under benchmarks/.work/ (``mlflow-venv``, ``mlserver-venv``, ``bentoml-venv``), created
and pip-installed from PyPI when missing (scikit-learn pinned to the project's version where the peer unpickles the
pipeline itself), never the project's venv. Each serves the project's fitted pipeline (``model.joblib``: the same
fit as the ONNX file that mlopsctl serves) with 2 workers, and is sent one row in its own format:

* MLflow: the pipeline saved by ``serve_bench.mlflow_model``, ``mlflow models serve --env-manager local -w 2``
  (uvicorn workers); ``{"dataframe_records": [row]}`` on ``/invocations``; ready on ``/ping``.
* MLServer: ``mlserver start`` on a folder written under benchmarks/.work/serve/peers/mlserver (``settings.json``
  with ``parallel_workers: 2``, ``models/bc/model-settings.json`` with ``mlserver_sklearn.SKLearnModel``); the V2
  inference protocol, one input per column and ``"content_type": "pd"`` (the pipeline wants a data frame), on
  ``/v2/models/bc/infer``; ready on ``/v2/models/bc/ready``.
* BentoML: ``bentoml serve serve_peer_bento:Forest`` (benchmarks/serve_peer_bento.py, ``workers=2``);
  ``{"records": [row]}`` (mlopsctl's own body) on ``/predict``; ready on ``/readyz``.

Before the rounds each peer is started once and its answer for the row compared with mlopsctl's; a peer that does
not install, start or answer the same is skipped with the reason printed (and shown in the rendered section).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import serve_bench as sb
from _common import MLFLOW_VENV, ensure_venv

PEER_WORK = sb.WORK / "peers"
WORK = sb.BENCH / ".work"
MODEL = "bc"
NO_TELEMETRY = {"DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "BENTOML_DO_NOT_TRACK": "True"}


@dataclass
class PeerSpec(sb.Spec):
    route: str = "/predict"
    ready: str = "/v2/health/ready"

    @property
    def path(self) -> str:
        return self.route

    @property
    def ready_path(self) -> str:
        return self.ready


@dataclass
class Peer:
    key: str  # its short name (--only)
    label: str  # its row in the table
    spec: PeerSpec
    py: Path  # the python of its venv
    body1: Path  # one row, in its format
    body_big: bytes  # 10,000 rows, in its format
    payload: str  # what it is sent where, for the rendered section
    answer: Callable[[Any], Any]  # its first prediction, from its parsed JSON answer
    launch: Callable[[int], tuple[list[str], dict[str, str], Path]] | None = None  # port -> cmd, env, cwd
    model_dir: Path | None = None  # MLflow's saved model
    install_s: float | None = None  # seconds its venv took to install; None: it was there


class PeerServer(sb.Server):
    """A peer's server: ``kind`` "mlflow" is serve_bench's own ``mlflow models serve`` command; other peers bring
    their command in ``launch`` (sb.Server builds an MLflow command for them first, replaced right away)."""

    def __init__(self, peer: Peer, p: sb.Project):
        super().__init__(peer.spec, p, peer.py, peer.model_dir or PEER_WORK)
        if peer.launch is not None:
            self.cmd, extra, self.cwd = peer.launch(self.port)
            self.env = sb.base_env() | extra
            self.env["PATH"] = f"{peer.py.parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.env.update(NO_TELEMETRY)
        self.body1, self.body_big = peer.body1, peer.body_big

    def stop(self) -> None:
        """sb.Server.stop (SIGTERM to the group), then SIGKILL to those of its processes outside the group (BentoML's
        workers) that outlived it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        strays = {pid: f[19] for pid, f in sb.server_stats(self.proc.pid).items() if int(f[2]) != self.proc.pid}
        super().stop()
        for pid, started in strays.items():  # field 19: the start time, so a reused pid is left alone
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[19] != started:
                        continue
                os.kill(pid, signal.SIGKILL)
                sb.say(f"    {self.spec.label}: process {pid} outlived its server; killed")
            except OSError:
                continue


def post(srv: sb.Server, body: bytes, timeout: float = 60) -> tuple[float, bytes]:
    """(client wall seconds, answer) of one POST of ``body`` to the server's predict path; a non-200 raises."""
    conn = http.client.HTTPConnection(sb.HOST, srv.port, timeout=timeout)
    try:
        t0 = time.perf_counter()
        conn.request("POST", srv.spec.path, body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        wall = time.perf_counter() - t0
    finally:
        conn.close()
    if r.status != 200:
        raise RuntimeError(f"{srv.spec.label}: POST {srv.spec.path} answered {r.status}: {data[:300]!r}")
    return wall, data


# ---- the peers ----------------------------------------------------------------------------------------

def sklearn_version() -> str:
    return sb.run([sb.PY, "-c", "import sklearn; print(sklearn.__version__)"]).strip()


def installed(venv: Path, packages: tuple[str, ...], imports: tuple[str, ...]) -> tuple[Path, str, float | None]:
    """(python, version, install seconds or None when it was there) of a peer's venv; RuntimeError when it
    cannot be installed."""
    fresh = not (venv / "bin" / "python").exists()
    t0 = time.perf_counter()
    py, note = ensure_venv(venv, packages, imports, True, sb.base_env(), sb.say)
    if py is None:
        raise RuntimeError(note)
    return py, note, (time.perf_counter() - t0) if fresh else None


def mlflow_peer(p: sb.Project) -> Peer:
    py, version, took = installed(MLFLOW_VENV, ("mlflow", "scikit-learn"), ("mlflow", "sklearn"))
    return Peer("mlflow", f"`mlflow models serve -w 2` (MLflow {version})",
                PeerSpec("mlflow", "mlflow", "uvicorn", route="/invocations", ready="/ping"), py,
                p.mlflow_body1, p.mlflow_big, '`{"dataframe_records": [row]}` on `/invocations`',
                lambda a: a["predictions"][0], model_dir=sb.mlflow_model(py, p), install_s=took)


def v2_body(p: sb.Project, rows: list[dict]) -> bytes:
    """The V2 inference protocol's body for ``rows``: one FP64 input per column, decoded as a data frame."""
    return json.dumps({"parameters": {"content_type": "pd"}, "inputs": [
        {"name": c, "shape": [len(rows)], "datatype": "FP64", "data": [r[c] for r in rows]} for c in p.columns]}
    ).encode()


def mlserver_peer(p: sb.Project, rows: list[dict]) -> Peer:
    venv = WORK / "mlserver-venv"
    # uvloop 0.22 broke MLServer 1.7.1's parallel workers ("There is no current event loop", SeldonIO/MLServer#2286)
    py, version, took = installed(venv, ("mlserver", "mlserver-sklearn", f"scikit-learn=={sklearn_version()}",
                                         "uvloop<0.22"), ("mlserver", "mlserver_sklearn", "sklearn"))
    root = PEER_WORK / "mlserver"
    shutil.rmtree(root, ignore_errors=True)
    (root / "models" / MODEL).mkdir(parents=True)
    shutil.copyfile(p.joblib, root / "models" / MODEL / "model.joblib")
    (root / "models" / MODEL / "model-settings.json").write_text(json.dumps(
        {"name": MODEL, "implementation": "mlserver_sklearn.SKLearnModel",
         "parameters": {"uri": "./model.joblib", "version": "v1"}}))
    body1 = PEER_WORK / "mlserver_body1.json"
    body1.write_bytes(v2_body(p, rows[:1]))

    def launch(port: int) -> tuple[list[str], dict[str, str], Path]:
        (root / "settings.json").write_text(json.dumps(  # its gRPC and metrics ports must be free too
            {"host": sb.HOST, "http_port": port, "grpc_port": sb.free_port(), "metrics_port": sb.free_port(),
             "parallel_workers": 2}))
        return [str(py.parent / "mlserver"), "start", str(root)], {}, root

    return Peer("mlserver", f"MLServer {version} (sklearn runtime, 2 parallel workers)",
                PeerSpec("MLServer", "mlserver", "uvicorn", route=f"/v2/models/{MODEL}/infer",
                         ready=f"/v2/models/{MODEL}/ready"), py, body1, v2_body(p, rows),
                f"V2 inference protocol, one FP64 input per column, `content_type: pd`, on `/v2/models/{MODEL}/infer`",
                lambda a: next(o for o in a["outputs"] if o["name"] == "predict")["data"][0], launch, install_s=took)


def bentoml_peer(p: sb.Project) -> Peer:
    venv = WORK / "bentoml-venv"
    py, version, took = installed(venv, ("bentoml", f"scikit-learn=={sklearn_version()}", "pandas", "joblib"),
                                  ("bentoml", "sklearn", "pandas", "joblib"))

    def launch(port: int) -> tuple[list[str], dict[str, str], Path]:
        cmd = [str(py.parent / "bentoml"), "serve", "serve_peer_bento:Forest", "--working-dir", str(sb.BENCH),
               "--host", sb.HOST, "--port", str(port)]
        return cmd, {"PEER_JOBLIB": str(p.joblib), "BENTOML_HOME": str(PEER_WORK / "bentoml-home")}, sb.BENCH

    return Peer("bentoml", f"BentoML {version} (2 workers)", PeerSpec("BentoML", "bentoml", "uvicorn",
                                                                       ready="/readyz"),
                py, p.body1, p.body_big, '`{"records": [row]}` (mlopsctl\'s own body) on `/predict`',
                lambda a: a["predictions"][0], launch, install_s=took)


def check(peer: Peer, p: sb.Project, expected: Any) -> None:
    """Start the peer once and compare its answer for the row with mlopsctl's; RuntimeError when it differs."""
    srv = PeerServer(peer, p)
    try:
        ready = srv.start(timeout=120)
        got = peer.answer(json.loads(post(srv, peer.body1.read_bytes())[1]))
    finally:
        srv.stop()
    if str(got) != str(expected):
        raise RuntimeError(f"it answered {got!r} for the row, mlopsctl {expected!r}")
    sb.say(f"    {peer.label}: answers {got!r} like mlopsctl (ready in {ready:.1f} s)")


def prepare(p: sb.Project, mlopsctl: sb.Server) -> tuple[list[Peer], dict[str, str]]:
    """The peers that install, start and answer the row as mlopsctl (started once here) does, and the reasons
    of those skipped."""
    PEER_WORK.mkdir(parents=True, exist_ok=True)
    mlopsctl.start()
    try:
        expected = json.loads(post(mlopsctl, mlopsctl.body1.read_bytes())[1])["predictions"][0]
    finally:
        mlopsctl.stop()
    rows = json.loads(p.body_big)["records"]
    makers = {"MLflow": lambda: mlflow_peer(p), "MLServer": lambda: mlserver_peer(p, rows),
              "BentoML": lambda: bentoml_peer(p)}
    peers, skipped = [], {}
    for name, make in makers.items():
        try:
            peer = make()
            sb.say(f"  {peer.label}: " + (f"installed in {peer.install_s:.0f} s" if peer.install_s is not None
                                          else "venv already there"))
            check(peer, p, expected)
            peers.append(peer)
        except (RuntimeError, OSError, KeyError, StopIteration, ValueError, subprocess.SubprocessError) as e:
            skipped[name] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [repr(e)])[-1]}"
            sb.say(f"  skipping {name}: {skipped[name]}")
    return peers, skipped


def lines(peers: list[Peer], skipped: dict[str, str], rps8: Callable[[str], float], mg: str, rounds: int) -> list[str]:
    """The rendered section's lines about the peers: what each is sent, and mlopsctl on granian's throughput as
    a multiple of each one's at 8 clients."""
    out = []
    if peers:
        out.append(f"- peers (their rows above, medians of {rounds} round(s); the same model, one-row payloads in "
                   "each server's own format; the 8-client CPU shares are those of each server's two busiest "
                   "processes): " + "; ".join(f"{peer.label}: {peer.payload}, ready on `{peer.spec.ready_path}`"
                                              for peer in peers) + ".")
        out.append(f"- {mg} at 8 clients / each peer: " + "; ".join(
            f"{rps8(mg) / rps8(peer.label):,.1f}× {peer.label}" for peer in peers) + ".")
    if skipped:
        out.append("- peers skipped: " + "; ".join(f"{k} ({why})" for k, why in skipped.items()) + ".")
    return out
