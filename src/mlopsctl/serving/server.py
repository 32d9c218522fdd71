"""Run the app: granian (the default), gunicorn (``serve.server = "gunicorn"``) or Flask's development server
(``--dev``).

Both fronts start the same way: the preflight (the model resolves and verifies, the CUDA check in a child
process) and the port check run in the parent, then the front forks its workers and each worker builds its
own app (:func:`worker_app`): its own ONNX Runtime session, reload poller and prediction-log writer. The
workers' Prometheus values live in one ``PROMETHEUS_MULTIPROC_DIR`` that /metrics sums over."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import socket
import tempfile
import time
from typing import Any, Callable, Iterator

from mlopsctl.config import Settings
from mlopsctl.errors import ConfigError, InvalidInputError

log = logging.getLogger("mlopsctl.serve")

# Worker GIL switch interval (CPython's default is 5 ms): a request thread that wants the GIL while the
# prediction-log writer or the reload poller holds it waits at most this long for the holder to drop it.
# Measured with sync workers (alternating live runs; benchmarks/RESULTS.md, profiling findings): p99 7.0 ms
# at 5 ms, 6.1 ms at 0.5 ms, 5.4 ms at 0.1 ms.
GIL_SWITCH_S = 0.0001
GRACEFUL_TIMEOUT_S = 10  # a stopping worker's requests in flight get this long to finish


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

    project = open_project(settings)
    ref = project.ref(model_ref or settings.registry.model_name)
    loaded = project.load_model(ref)  # unknown model/alias, corrupt blob
    if device != "cpu":
        # asked in a child process: onnxruntime must not be imported in the gunicorn master, or the
        # forked workers abort at exit (its thread pools do not survive fork)
        probe_in_child(device, loaded.onnx)
    # the pooled connections closed, the store kept open: the workers open their own connections after the
    # fork, on this engine (the store is opened and its schema checked once, here; ~15 ms of each worker's start)
    project.store.dispose()
    return str(ref)


FRONTS = ("granian", "gunicorn")


def run(settings: Settings, model_ref: str | None, *, host: str, port: int, workers: int, threads: int,
        device: str, dev: bool = False, on_ready: Callable[[str], None] | None = None,
        front: str = "granian") -> None:
    if device not in ("cpu", "cuda", "auto"):
        raise ConfigError(f"--device must be cpu, cuda or auto, got {device!r}.")
    if front not in FRONTS:
        raise ConfigError(f"--server must be granian or gunicorn, got {front!r}.")
    if dev:
        ref = preflight(settings, model_ref, device)
        check_port(host, port)
        from mlopsctl.serving.app import create_app

        app = create_app(settings, ref, workers=1, device=device)
        if on_ready:
            on_ready(f"http://{host}:{port} (Flask development server)")
        app.run(host=host, port=port, threaded=True, use_reloader=False)
        return
    parent = os.getpid()
    metrics_dir = ""
    try:
        with _gc_paused():
            ref = preflight(settings, model_ref, device)
            check_port(host, port)
            metrics_dir = _metrics_dir()  # before prometheus_client is imported: it reads the variable then
            _preload(settings, front)
        launch = _run_granian if front == "granian" else _run_gunicorn
        launch(settings, ref, host=host, port=port, workers=workers, device=device, on_ready=on_ready, threads=threads)
    finally:
        if metrics_dir and os.getpid() == parent:  # gunicorn's workers leave through this frame too
            shutil.rmtree(metrics_dir, ignore_errors=True)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while the server starts, and what the start built frozen out of later
    passes when it succeeds: the passes over the objects that importing SQLAlchemy, numpy, Flask and ONNX
    Runtime creates were ~10 % of that import time (alternating runs), and the first pass after the pause
    would have walked them all (~30 ms). They live as long as the process: the modules, the app, the model."""
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        if enabled:
            gc.enable()


def worker_app(settings: Settings, ref: str, workers: int, device: str) -> Any:
    """One worker's app, built after the fork."""
    import sys

    from mlopsctl.serving.app import create_app

    with _gc_paused():  # the app, model and modules live as long as the worker: frozen out of GC passes
        app = create_app(settings, ref, workers=workers, device=device)
    sys.setswitchinterval(GIL_SWITCH_S)
    return app


def _worker_exit(st: Any) -> None:
    """A worker's last act: stop polling the alias and write what the prediction log holds."""
    st.holder.stop()
    if st.predlog is not None:
        st.predlog.close()


def _catch_stops() -> list[int]:
    """While a granian worker builds its app, remember SIGTERM / SIGINT instead of losing them.

    granian installs a worker's own signal handlers only after the app is built; until then the worker runs
    the handlers inherited from the parent, which set a flag in the parent's server object (a copy, in the
    worker) and nothing else. A stop that came while the worker loaded its model (the server answers once
    one worker is up) was lost, and the worker served on until granian killed it after
    ``workers_kill_timeout``."""
    import signal

    stops: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stops.append(signum))
    return stops


def _resend(signum: int) -> None:
    """Send ``signum`` to this worker again once granian's own handlers are in place (they are installed
    right after the app is returned): every 0.1 s, from a daemon thread, until the worker exits."""
    import threading

    def again() -> None:
        while True:
            time.sleep(0.1)
            os.kill(os.getpid(), signum)

    threading.Thread(target=again, name="mlopsctl-stop", daemon=True).start()


def _forget_dead_workers() -> None:
    """Drop the live-gauge files of workers that are gone (a crashed worker's queue depth must not be
    summed any more); gunicorn's ``child_exit`` does this as each worker exits, granian has no such hook,
    so each new worker does it as it starts."""
    from prometheus_client import multiprocess

    from mlopsctl.common import pid_alive

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return
    for name in os.listdir(path):
        if name.startswith("gauge_live") and name.endswith(".db"):
            pid = name[:-3].rsplit("_", 1)[-1]
            if pid.isdigit() and not pid_alive(int(pid)):
                multiprocess.mark_process_dead(int(pid), path)


def _preload(settings: Settings, front: str) -> None:
    """Import in the parent what every worker imports, so that the workers share those pages (forked
    copy-on-write) instead of each importing its own: the front, the app's modules and, when predictions are logged,
    pyarrow (~22 MB less for 2 workers), with its buffers from malloc (Arrow's default pool, mimalloc,
    held ~10 MB more per worker after load; the ``ARROW_DEFAULT_MEMORY_POOL`` environment variable still
    chooses). Never onnxruntime: its thread pools do not survive a fork."""
    import msgspec  # noqa: F401 - the records decoder's, imported when a worker builds its model
    import prometheus_client.multiprocess  # noqa: F401 - each new granian worker's first import (_forget_dead_workers)

    import mlopsctl.serving.app  # noqa: F401

    if front == "granian":
        import granian.server  # noqa: F401
    else:
        import gunicorn.app.base  # noqa: F401

    if settings.serve.log_predictions:
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")  # read once, when pyarrow is imported
        import pyarrow  # noqa: F401


def _metrics_dir() -> str:
    """A fresh ``PROMETHEUS_MULTIPROC_DIR`` for this server's workers (set in the environment they inherit)."""
    path = tempfile.mkdtemp(prefix="mlopsctl-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def _run_granian(settings: Settings, ref: str, *, host: str, port: int, workers: int, device: str,
                 on_ready: Callable[[str], None] | None, threads: int) -> None:
    """granian's WSGI interface: a Rust HTTP/1.1 server (keep-alive) in each worker, ``threads`` Python
    threads per worker running the app. A worker that dies is replaced; SIGTERM lets the requests in flight
    finish, then each worker flushes its prediction log (a ``multiprocessing`` finalizer: granian's workers
    end through ``multiprocessing``, which runs those and not ``atexit`` handlers)."""
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server import Server

    def load(_target: str) -> Any:
        from multiprocessing.util import Finalize

        stops = _catch_stops()
        _forget_dead_workers()
        app = worker_app(settings, ref, workers, device)
        Finalize(None, _worker_exit, args=(app.extensions["mlopsctl"],), exitpriority=10)
        if stops:
            _resend(stops[0])
        return app

    server = Server("mlopsctl", address=host, port=port, interface=Interfaces.WSGI, workers=workers,
                    blocking_threads=threads, respawn_failed_workers=True, workers_kill_timeout=GRACEFUL_TIMEOUT_S,
                    log_level=LogLevels.warning)

    @server.on_startup
    def ready() -> None:
        if on_ready:
            on_ready(f"http://{host}:{port} ({workers} granian worker(s) × {threads} thread(s))")

    server.serve(target_loader=load)


def _run_gunicorn(settings: Settings, ref: str, *, host: str, port: int, workers: int, device: str,
                  on_ready: Callable[[str], None] | None, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

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
        "timeout": 60, "graceful_timeout": GRACEFUL_TIMEOUT_S, "keepalive": 5, "loglevel": "warning",
        "accesslog": None, "child_exit": child_exit, "worker_exit": worker_exit, "when_ready": when_ready, "proc_name": "mlopsctl-serve",
    }

    class App(BaseApplication):
        def load_config(self) -> None:
            for k, v in options.items():
                self.cfg.set(k, v)

        def load(self):
            return worker_app(settings, ref, workers, device)

    App().run()
