"""Use case: hyperparameter search (``mlopsctl tune``), its studies, Katib files, a retrain that tunes.

A study is a run in our store (tag ``tune.role`` = ``study``) holding the search space, the sampler, the pruner, the
best trial and the whole study spec (tag ``tune.spec``, JSON). Each trial is a run of its own: the searched
parameters as ``model.<name>`` params, ``fold_<metric>`` (each fold's score) and ``cv_<metric>`` (the running mean)
per fold as metric steps, its state (status FINISHED / PRUNED / FAILED and tag ``tune.state`` COMPLETE / PRUNED /
FAILED), its duration and, when it failed, the reason.

**Parent and child are linked by a tag**, ``parent_run_id`` on the trial (with ``tune.study`` and ``tune.trial``), as
MLflow links them (``mlflow.parentRunId``), not by a new ``runs`` column: no migration for a shared store to apply
before anyone can tune, nothing to clash with other schema changes, and a study's trials are one join on ``tags``.

Optuna's own state is beside the store, never in it (:mod:`mlopsctl.tuning.study`). The search scores trials by
K-fold CV on the training split only (:mod:`mlopsctl.training.cv`); the best parameters then go through the normal
train path (:func:`mlopsctl.services.runs.train_and_track`: ONNX export, parity, held-out metrics) as the study's
``refit`` run, which ``--register`` registers and promotes through the gate.

Worker processes: ``tune --jobs N`` runs one worker in this process and N-1 ``mlopsctl tune worker STUDY``
subprocesses, which read the study spec from the store and the data from the artifact store (the exact bytes the
study started on). A worker's stdin is a pipe from its parent; when the parent dies (even by SIGKILL) the pipe
closes and the worker stops at the next fold, marking its trial FAILED.
"""

from __future__ import annotations

from mlopsctl.services.tune.spec import RESUMABLE, SPEC_KEYS, SPEC_VERSION  # noqa: F401
from mlopsctl.services.tune.recorder import Recorder  # noqa: F401
from mlopsctl.services.tune.search import tune, work, retrain  # noqa: F401
from mlopsctl.services.tune.read import katib_trial, list_studies, show_study, export_katib, read_katib  # noqa: F401
