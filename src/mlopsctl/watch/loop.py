"""The watcher's loop: files land, are taken when stable, and start a retrain; triggers start one too.

:meth:`Watcher.process_ready` is the whole path of a landed file, and :meth:`Retrainer.run_job
<mlopsctl.services.retrain.Retrainer.run_job>` the whole path of the job it starts. ``run_forever`` feeds the
debouncer from a watchdog observer (and a scan at start); ``run_once`` processes what is there and returns.
Both first resume what a previous watcher left unfinished.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from mlopsctl.config import Settings
from mlopsctl.config_checks import parse_duration
from mlopsctl.services.retrain import JobOutcome, Retrainer, Say
from mlopsctl.watch.debounce import Debouncer, is_candidate
from mlopsctl.watch.intake import Intake
from mlopsctl.watch.triggers import ScheduleTrigger, Trigger


class Watcher:
    """``say`` receives the progress as plain text lines; ``outcomes`` collects every job's outcome."""

    def __init__(self, settings: Settings, *, say: Say = print, triggers: list[Trigger] | None = None):
        self.settings = settings
        self.say = say
        self.folder = settings.resolve(settings.watch.path)
        self.retrain = Retrainer(settings, say)
        self.intake = Intake(settings, self.retrain.baseline, say)
        self.debouncer = Debouncer(settings.watch.debounce_seconds)
        self.triggers: list[Trigger] = list(triggers or [])
        if settings.watch.every:
            self.triggers.append(ScheduleTrigger(parse_duration(settings.watch.every, "--every")))
        self.stop = threading.Event()
        self.wake = threading.Event()  # set by note(): the idle loop looks at a new file at once
        self.outcomes: list[JobOutcome] = []
        for d in (self.folder, self.intake.quarantine_dir, self.intake.processed_dir):
            d.mkdir(parents=True, exist_ok=True)

    def process_ready(self, now: float | None = None) -> list[JobOutcome]:
        """A landed file's path: stable for ``watch.debounce_seconds`` -> taken by the intake (sha256 seen
        before? validated against the training data? moved to processed/ or quarantine/) -> every file accepted
        in this pass becomes one job -> the job runs: data, train, register, gate, promote. With
        ``watch.pipeline`` the stable files start a job that runs the project's pipeline instead."""
        ready = self.debouncer.ready(now)
        if self.settings.watch.pipeline:  # the files are the pipeline's raw inputs: they stay, its steps read them
            names = ", ".join(p.name for p in ready)
            return [self._run(self.retrain.create_job("pipeline", [], f"new input {names}"))] if ready else []
        accepted = [file_id for file_id in map(self.intake.take, ready) if file_id is not None]
        if not accepted:
            return []
        return [self._run(self.retrain.create_job("files", accepted))]

    def check_triggers(self, now: float | None = None) -> list[JobOutcome]:
        """The first trigger that gives a reason starts a job on the current data."""
        now = time.monotonic() if now is None else now
        for trig in self.triggers:
            reason = trig.check(self, now)
            if reason:
                self.say(f"trigger {trig.name}: {reason}")
                return [self._run(self.retrain.create_job(trig.name, [], reason))]
        return []

    def recover(self) -> None:
        """After a crash: runs whose process died are marked FAILED, unfinished jobs resumed."""
        for job_id in self.retrain.unfinished_jobs():
            self.say(f"resuming job {job_id} left unfinished by a previous watcher")
            self._run(job_id)

    def _run(self, job_id: int) -> JobOutcome:
        outcome = self.retrain.run_job(job_id)
        self.outcomes.append(outcome)
        return outcome

    # ---- discovery -----------------------------------------------------------------------------------------

    def scan(self) -> None:
        for p in sorted(self.folder.iterdir()):
            if is_candidate(p):
                self.note(p)

    def note(self, path: Path) -> None:
        path = Path(path)
        if path.parent.resolve() != self.folder.resolve() or not is_candidate(path):
            return
        self.debouncer.touch(path)
        self.wake.set()

    # ---- loops ---------------------------------------------------------------------------------------------

    def run_once(self, timeout: float | None = None) -> list[JobOutcome]:
        """Process what is pending (waiting for files to settle), then return."""
        self.recover()
        self.scan()
        self.check_triggers()  # e.g. `watch --once --on-drift` from cron
        deadline = time.monotonic() + (timeout if timeout is not None else max(30.0, 10 * self.debouncer.seconds))
        while self.debouncer.pending() and time.monotonic() < deadline and not self.stop.is_set():
            self.process_ready()
            if self.debouncer.pending():
                time.sleep(min(0.1, self.debouncer.seconds or 0.05))
        return self.outcomes

    def run_forever(self, tick: float = 0.1) -> None:
        from watchdog.observers import Observer

        observer = Observer()
        observer.schedule(_events_to(self), str(self.folder), recursive=False)
        observer.start()
        try:
            self.recover()
            self.scan()  # catch-up: files already there
            self.say(f"watching {self.folder} (debounce {self.debouncer.seconds:g} s, mode {self.settings.watch.mode}"
                     + (f", every {self.settings.watch.every}" if self.settings.watch.every else "") + "); Ctrl-C to stop")
            while not self.stop.is_set():
                if not self.debouncer.pending():
                    self.wake.wait(0.5)
                else:
                    time.sleep(tick)
                self.wake.clear()
                self.process_ready()
                self.check_triggers()
        finally:
            observer.stop()
            observer.join(5)


def _events_to(watcher: Watcher) -> Any:
    """A watchdog handler that notes every file written, created or moved into the folder."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.is_directory or event.event_type in ("deleted", "opened", "closed_no_write"):
                return
            target = getattr(event, "dest_path", "") or event.src_path
            watcher.note(Path(os.fsdecode(target)))

    return Handler()


def install_signal_handlers(watcher: Watcher) -> None:
    """First SIGINT/SIGTERM: finish the current step and stop. Second: abandon it (KeyboardInterrupt)."""

    def handler(signum: int, _frame: Any) -> None:
        if watcher.stop.is_set():
            raise KeyboardInterrupt
        watcher.stop.set()
        watcher.say(f"{signal.Signals(signum).name}: finishing the current step, then stopping "
                    "(again to abandon it)")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
