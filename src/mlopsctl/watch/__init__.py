"""Continuous training: new data in, validated, retrained, gated, promoted — exactly once per file.

How ``mlopsctl watch`` goes from a file landing to a promotion:

1. :mod:`~mlopsctl.watch.loop`: a watchdog observer (and a scan at start) reports files in ``watch.path``;
   :meth:`Watcher.process_ready` reads as the rest of this list.
2. :mod:`~mlopsctl.watch.debounce`: a file is taken once its size and mtime have been stable for
   ``watch.debounce_seconds``, so a half-copied file is never read.
3. :mod:`~mlopsctl.watch.intake`: the file's sha256 is recorded (the same content is never processed twice);
   it is validated against the training data (:func:`mlopsctl.data.validate_new_rows`) and moved to
   ``watch.processed``, or to ``watch.quarantine`` with ``<name>.reason.txt``.
4. :mod:`mlopsctl.services.retrain`: the files accepted in one pass (coalesced while a training runs) become
   one job whose stages — data, train, register, gate and promote — are each committed to the store before
   the next, so a watcher killed at any point resumes at the stage it reached.
5. :mod:`~mlopsctl.watch.triggers`: a schedule (``--every``) starts a job without files; drift
   (``--on-drift``) drops the labelled predictions into the folder, which then take the path above.

Progress is reported as plain text lines through ``say``; the command line decides how to show them.
"""

from mlopsctl.services.retrain import JobOutcome
from mlopsctl.watch.debounce import Debouncer, is_candidate
from mlopsctl.watch.loop import Watcher, install_signal_handlers
from mlopsctl.watch.triggers import DriftTrigger, ScheduleTrigger, Trigger

__all__ = ["Debouncer", "DriftTrigger", "JobOutcome", "ScheduleTrigger", "Trigger", "Watcher", "install_signal_handlers",
           "is_candidate"]
