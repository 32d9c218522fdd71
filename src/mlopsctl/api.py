"""The Python API for custom training code, recording into the same store as ``mlopsctl train``::

    import mlopsctl

    with mlopsctl.start_run(experiment="churn") as run:
        run.log_params({"C": 0.5})
        for step, loss in enumerate(losses):
            run.log_metric("loss", loss, step=step)
        run.log_model(fitted_pipeline, X_sample)   # ONNX + contract + parity, like `mlopsctl train`

An exception (or Ctrl-C) inside the block marks the run FAILED with the reason; a normal exit FINISHED.
Each call is one short transaction, so a crash loses nothing already logged.
"""

from __future__ import annotations


from pathlib import Path
from typing import Any, Mapping

from mlopsctl.config import Settings, load_settings
from mlopsctl.errors import InvalidInputError


class ActiveRun:
    """A RUNNING run; use through :func:`start_run`."""

    def __init__(self, settings: Settings, run_id: int, name: str):
        from mlopsctl.project import open_project

        self.settings = settings
        self.id = run_id
        self.name = name
        self._store = open_project(settings).store
        self._ended = False

    # ---- logging ------------------------------------------------------------------------------
    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlopsctl import tracking

        with self._store.session() as s:
            tracking.log_params(s, self.id, dict(params))

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        self.log_metrics({key: value}, step=step)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log several metrics at one step in one insert (the cheap way to log many values)."""
        from sqlalchemy import insert

        from mlopsctl import tracking
        from mlopsctl.store.models import Metric

        rows = tracking.metric_rows(self.id, dict(metrics), step)
        with self._store.engine.begin() as conn:
            conn.execute(insert(Metric), rows)

    def log_batch(self, metrics: list[tuple[str, float, int]]) -> None:
        """Log many ``(key, value, step)`` triples in one transaction."""
        from sqlalchemy import insert

        from mlopsctl import tracking
        from mlopsctl.store.models import Metric

        rows = [r for key, value, step in metrics for r in tracking.metric_rows(self.id, {key: value}, step)]
        if rows:
            with self._store.engine.begin() as conn:
                conn.execute(insert(Metric), rows)

    def set_tag(self, key: str, value: Any) -> None:
        from mlopsctl import tracking

        with self._store.session() as s:
            tracking.set_tags(s, self.id, {key: value})

    def log_model(self, pipeline: Any, sample: Any, *, target: str = "target",
                  reference_rows: int | None = None) -> dict[str, Any]:
        """Export a fitted scikit-learn pipeline that takes ``sample``'s columns to ONNX, check parity on
        ``sample`` and store model.onnx, contract.json and model.joblib with this run."""
        import pandas as pd
        from sklearn.base import is_classifier

        from mlopsctl import data, tracking
        from mlopsctl.services import runs
        from mlopsctl.project import open_project
        from mlopsctl.training import export

        if not isinstance(sample, pd.DataFrame) or len(sample) == 0:
            raise InvalidInputError("log_model needs a non-empty pandas DataFrame of input rows as `sample`.")
        task = "classification" if is_classifier(pipeline) else "regression"
        classes = getattr(pipeline, "classes_", None) if task == "classification" else None
        contract = data.build_contract(
            sample, pd.Series(dtype=float), target=target, task=task, classes=classes,
            reference_rows=self.settings.train.reference_rows if reference_rows is None else reference_rows,
            seed=self.settings.train.seed,
        )
        onnx_bytes, contract = export.export_onnx(pipeline, contract)
        normalized = pd.DataFrame(contract.normalize(sample))
        parity = export.parity_check(pipeline, onnx_bytes, contract, normalized)
        files = runs.store_model_files(open_project(self.settings).artifacts, pipeline, onnx_bytes, contract)
        with self._store.session() as s:
            tracking.describe_run(s, self.id, task=task, model_class=type(
                pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline).__name__)
            runs.record_model(s, self.id, files, parity.to_dict())
        return parity.to_dict()

    # ---- lifecycle ----------------------------------------------------------------------------
    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        from mlopsctl import tracking

        if self._ended:
            return
        with self._store.session() as s:
            tracking.finish_run(s, self.id, status, reason)
        self._ended = True

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        from mlopsctl.services import runs

        if exc is None:
            self.end()
            with self._store.session() as s:
                runs.training_event(s, self.id, "trained", f"run {self.id} finished (Python API)", {})
        else:
            reason = runs.describe_failure(exc)[:2000]
            self.end("FAILED", reason)
            with self._store.session() as s:
                runs.training_event(s, self.id, "training_failed", f"run {self.id} failed: {reason[:500]}",
                                        {"reason": reason})
        return False


def start_run(experiment: str | None = None, run_name: str | None = None, *,
              project_dir: str | Path | None = None, settings: Settings | None = None) -> ActiveRun:
    """Start a RUNNING run in the project's store (found like the CLI does: the nearest .mlops.toml)."""
    from mlopsctl import tracking
    from mlopsctl.services import runs
    from mlopsctl.project import open_project

    settings = settings or load_settings(project_dir=Path(project_dir) if project_dir else None)
    with open_project(settings).store.session() as s:
        run = tracking.create_run(s, experiment or settings.train.experiment, run_name,
                                  git_commit=runs.git_commit(settings.project_dir),
                                  environment=runs.environment())
        run_id, name = run.id, run.name
    return ActiveRun(settings, run_id, name)


