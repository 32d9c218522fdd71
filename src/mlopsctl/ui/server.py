"""Run the dashboard: gunicorn (gthread workers) by default, Flask's development server with ``--dev``."""

from __future__ import annotations

import errno
import socket
from typing import Any, Callable

from mlopsctl.config import Settings
from mlopsctl.errors import InvalidInputError

THREADS = 4  # pages wait on the store, not the CPU: a few threads per worker keep a slow page from blocking others


def _bindable(host: str, port: int) -> None:
    """Fail in one line before any worker starts when the address is taken or not ours."""
    try:
        socket.create_server((host.strip("[]"), port), family=socket.AF_INET6 if ":" in host else socket.AF_INET).close()
    except OSError as e:
        why = "is already in use; stop the other server or pass --port" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror})"
        raise InvalidInputError(f"{host}:{port} {why}.") from None


def run(settings: Settings, *, host: str, port: int, workers: int = 2, dev: bool = False,
        on_ready: Callable[[str], None] | None = None) -> None:
    from mlopsctl.project import open_project
    from mlopsctl.store.db import close_all

    if workers < 1:
        raise InvalidInputError(f"--workers must be at least 1, got {workers}.")
    open_project(settings)  # migrate (or refuse a newer store) once, before forking
    close_all()
    _bindable(host, port)
    if dev:
        from mlopsctl.ui.app import create_app

        app = create_app(settings, host=host)
        if on_ready:
            on_ready(f"http://{host}:{port} (Flask development server)")
        app.run(host=host, port=port, threaded=True, use_reloader=False)
        return
    _gunicorn(settings, host=host, port=port, workers=workers, on_ready=on_ready)


def _gunicorn(settings: Settings, *, host: str, port: int, workers: int, on_ready: Callable[[str], None] | None) -> None:
    from gunicorn.app.base import BaseApplication

    import mlopsctl.ui.app  # noqa: F401 - imported once in the master; workers inherit it

    def when_ready(_server: Any) -> None:
        if on_ready:
            on_ready(f"http://{host}:{port} ({workers} gunicorn worker(s) × {THREADS} threads)")

    options = {"bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}", "workers": workers,
               "worker_class": "gthread", "threads": THREADS, "timeout": 120, "graceful_timeout": 10,
               "keepalive": 5, "loglevel": "warning", "accesslog": None, "when_ready": when_ready,
               "proc_name": "mlopsctl-ui"}

    class App(BaseApplication):
        def load_config(self) -> None:
            for k, v in options.items():
                self.cfg.set(k, v)

        def load(self) -> Any:
            from mlopsctl.ui.app import create_app

            return create_app(settings, host=host)

    App().run()
