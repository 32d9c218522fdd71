"""Monitoring: is the served version still right for the data it sees? One module per use case.

- :mod:`~mlopsctl.monitoring.window`: what every use case starts from: the version, its logged predictions in
  a window (``--since 24h`` / ``--last N``), the reference sample in its contract; recording a result.
- :mod:`~mlopsctl.monitoring.checks`: ``monitor drift``: per-column and prediction drift, recorded as a result
  (the ``/metrics`` gauge) and an event. The statistics themselves are in :mod:`~mlopsctl.monitoring.drift`.
- :mod:`~mlopsctl.monitoring.feedback`: ``monitor feedback``: late labels joined to the log, the live quality
  of each version (the metrics of :mod:`mlopsctl.training.metrics`, the gate's primary metric recorded for
  ``/metrics``), and the labelled rows a drift retrain queues (each label once).
- :mod:`~mlopsctl.monitoring.report`: ``monitor report``: the self-contained HTML report.

The drift trigger of ``watch --on-drift`` lives with the other triggers in :mod:`mlopsctl.watch.triggers`.
"""
