"""Run the app: gunicorn (the default) or Flask's development server (``--dev``)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import tempfile
from typing import Any, Callable

from mlopsctl.config import Settings
from mlopsctl.errors import ConfigError, InvalidInputError

log = logging.getLogger("mlopsctl.serve")

# Worker GIL switch interval (CPython's default is 5 ms): a request thread that wants the GIL while the
# prediction-log writer or the reload poller holds it waits at most this long for the holder to drop it.
# Measured with sync workers (alternating live runs; benchmarks/RESULTS.md, profiling findings): p99 7.0 ms
# at 5 ms, 6.1 ms at 0.5 ms, 5.4 ms at 0.1 ms.
GIL_SWITCH_S = 0.0001


def worker_class(threads: int) -> str:
    """gunicorn's worker class for ``serve.threads``: one thread, ``sync`` workers (one request at a time per
    process, no keep-alive; the lowest p99 in benchmarks/serve_bench.py's worker matrix, throughput within
    ~15 % of the best gthread setting, and gunicorn hands each new connection to whichever worker is free);
    more, ``gthread`` (keep-alive, and a slow client holds one thread instead of a whole worker)."""
    return "sync" if threads == 1 else "gthread"


def check_port(host: str, port: int) -> None:
    """Fail with a clear message before starting workers if the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InvalidInputError(f"{host}:{port} is already in use; stop the other server or pass --port.") from None
            raise InvalidInputError(f"cannot listen on {host}:{port}: {e.strerror}.") from None


def preflight(settings: Settings, model_ref: str | None, device: str) -> str:
    """Everything that can be wrong before forking: the reference resolves, the ONNX file verifies, the
    device exists. Returns the resolved reference text."""
    from mlopsctl.project import open_project
    from mlopsctl.scoring import probe_in_child
    from mlopsctl.store.db import close_all

    project = open_project(settings)
    ref = project.ref(model_ref or settings.registry.model_name)
    loaded = project.load_model(ref)  # unknown model/alias, corrupt blob
    if device != "cpu":
        # asked in a child process: onnxruntime must not be imported in the gunicorn master, or the
        # forked workers abort at exit (its thread pools do not survive fork)
        probe_in_child(device, loaded.onnx)
    close_all()  # workers open their own connections after the fork
    return str(ref)


def run(settings: Settings, model_ref: str | None, *, host: str, port: int, workers: int, threads: int,
        device: str, dev: bool = False, on_ready: Callable[[str], None] | None = None) -> None:
    if device not in ("cpu", "cuda", "auto"):
        raise ConfigError(f"--device must be cpu, cuda or auto, got {device!r}.")
    ref = preflight(settings, model_ref, device)
    check_port(host, port)
    if dev:
        from mlopsctl.serving.app import create_app

        app = create_app(settings, ref, workers=1, device=device)
        if on_ready:
            on_ready(f"http://{host}:{port} (Flask development server)")
        app.run(host=host, port=port, threaded=True, use_reloader=False)
        return
    _run_gunicorn(settings, ref, host=host, port=port, workers=workers, device=device, on_ready=on_ready,
                  threads=threads)


def _run_gunicorn(settings: Settings, ref: str, *, host: str, port: int, workers: int, device: str,
                  on_ready: Callable[[str], None] | None, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    import mlopsctl.serving.app  # noqa: F401 - import once in the master; workers inherit the modules

    metrics_dir = tempfile.mkdtemp(prefix="mlopsctl-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    def child_exit(_server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

    def worker_exit(_server: Any, worker: Any) -> None:
        """Flush the prediction log's queue before a worker goes (records are never lost at a stop)."""
        state = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("mlopsctl")
        if state is not None and state.predlog is not None:
            state.predlog.close()

    kind = worker_class(threads)

    def when_ready(_server: Any) -> None:
        if on_ready:
            each = f" × {threads} thread(s)" if kind == "gthread" else ""
            on_ready(f"http://{host}:{port} ({workers} gunicorn {kind} worker(s){each})")

    options = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers, "worker_class": kind, "threads": threads,
        "timeout": 60, "graceful_timeout": 10, "keepalive": 5, "loglevel": "warning",
        "accesslog": None, "child_exit": child_exit, "worker_exit": worker_exit, "when_ready": when_ready, "proc_name": "mlopsctl-serve",
    }

    class App(BaseApplication):
        def load_config(self) -> None:
            for k, v in options.items():
                self.cfg.set(k, v)

        def load(self):
            import gc
            import sys

            from mlopsctl.serving.app import create_app

            app = create_app(settings, ref, workers=workers, device=device)
            sys.setswitchinterval(GIL_SWITCH_S)
            gc.freeze()  # the app, model and modules live as long as the worker: keep them out of GC passes
            return app

    master = os.getpid()
    try:
        App().run()
    finally:
        if os.getpid() == master:  # workers leave run() through this frame too (SystemExit after fork)
            shutil.rmtree(metrics_dir, ignore_errors=True)
