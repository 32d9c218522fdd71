"""Hyperparameter search without a database of ours: search spaces (:mod:`.space`), the Optuna glue and the trial
loop a worker process runs (:mod:`.study`), Katib Experiment files (:mod:`.katib`).

Recording trials as runs is the caller's (``services.tune``); fitting and scoring a trial is too (it passes
``training.cv`` in), so this package sits beside ``training`` and imports neither it nor the store.
"""
