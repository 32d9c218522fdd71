"""The use cases, one module per use case; each owns its transactions and returns plain dicts or dataclasses.

- :mod:`~mlopsctl.services.project`: ``mlopsctl init``
- :mod:`~mlopsctl.services.datasets`: dataset versions
- :mod:`~mlopsctl.services.runs`: train and track a run; list, show, compare runs
- :mod:`~mlopsctl.services.models`: register, promote, roll back; models and the audit trail
- :mod:`~mlopsctl.services.gate`: the quality gate a promotion passes
- :mod:`~mlopsctl.services.browse`: the dashboard's runs: search (filter, sort, page in SQL), compare many
- :mod:`~mlopsctl.services.activity`: the dashboard's audit trail, watcher jobs and quarantined files
- :mod:`~mlopsctl.services.monitor_history`: the dashboard's monitoring: request volume and latency, drift checks
- :mod:`~mlopsctl.services.tune`: hyperparameter search (``mlopsctl tune``), studies, Katib files
"""
