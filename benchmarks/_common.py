"""What the benchmark scripts share: rewriting their own section of RESULTS.md, and the separate venvs of MLflow
and the other peers."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
MLFLOW_VENV = BENCH / ".work" / "mlflow-venv"
HEADER = "# Benchmark results\n\nEach section is written by the benchmark it names; see README.md.\n\n"


def write_section(section: str, text: str, path: Path = RESULTS, keep: str | None = None) -> None:
    """Replace only the ``section`` ("## ...") of RESULTS.md (read right before writing) with ``text``, or
    append it. ``keep``: the heading of a hand-written "### ..." subsection of the old section that is carried
    over to the end of the new one."""
    current = path.read_text() if path.exists() else HEADER
    old = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M).search(current)
    if old is None:
        new = current.rstrip("\n") + "\n\n" + text
    else:
        kept = keep and re.search(rf"^{re.escape(keep)}.*?(?=^### |\Z)", old.group(0), re.S | re.M)
        if kept:
            text = text.rstrip("\n") + "\n\n" + kept.group(0).rstrip("\n") + "\n"
        new = current[:old.start()] + text + "\n" + current[old.end():]
    path.write_text(new.rstrip("\n") + "\n")


def ensure_mlflow(install: bool, env: dict[str, str], say: Callable[[str], None],
                  packages: tuple[str, ...] = ("mlflow", "scikit-learn"),
                  imports: tuple[str, ...] = ("mlflow", "sklearn")) -> tuple[Path | None, str]:
    """(python of the MLflow venv, MLflow's version) or (None, why not). The venv is ``MLFLOW_VENV``, never
    the project's; it is created and ``packages`` pip-installed when ``imports`` fail and ``install`` is set."""
    return ensure_venv(MLFLOW_VENV, packages, imports, install, env, say)


def ensure_venv(venv: Path, packages: tuple[str, ...], imports: tuple[str, ...], install: bool, env: dict[str, str],
                say: Callable[[str], None]) -> tuple[Path | None, str]:
    """(python of ``venv``, the version of ``imports[0]``) or (None, why not). The venv is a separate one, never
    the project's; it is created and ``packages`` pip-installed when ``imports`` fail and ``install`` is set."""
    py = venv / "bin" / "python"
    check = [str(py), "-c", f"import {', '.join(imports)}; print({imports[0]}.__version__)"]
    if py.exists():
        p = subprocess.run(check, env=env, capture_output=True, text=True)
        if p.returncode == 0:
            return py, p.stdout.strip()
    if not install:
        return None, "not installed (--no-install)"
    say(f"installing {' + '.join(packages)} into {venv} (a separate venv) ...")
    try:
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env,
                           capture_output=True, timeout=300)
        pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages], env=env,
                             capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"install failed ({type(e).__name__}: {e})"
    if pip.returncode != 0:
        lines = pip.stderr.strip().splitlines()  # pip's warnings come first; its error is the last ERROR line
        return None, f"pip install {packages[0]} failed: " + ([x for x in lines if x.startswith("ERROR")] or lines
                                                              or ["?"])[-1]
    p = subprocess.run(check, env=env, capture_output=True, text=True)
    return (py, p.stdout.strip()) if p.returncode == 0 else (None, f"{packages[0]} installed but does not import")


def cpu_model(default: str = "?") -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``default``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def timed(run: Callable[..., Any], *args: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys of finished child processes) of ``run(*args)``, which runs one."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    run(*args)
    elapsed = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the process group of a server started in its own session; SIGKILL to it after ``timeout`` s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def proc_stats() -> dict[int, list[str]]:
    """The /proc/<pid>/stat fields after "comm)" (state ppid pgrp ... utime(11) stime(12)) of every live process,
    by pid."""
    stats: dict[int, list[str]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    stats[int(d)] = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
    return stats
