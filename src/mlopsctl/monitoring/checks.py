"""The drift use case (``mlopsctl monitor drift``): the logged inputs and predictions of a version against the
reference sample its contract carries, recorded as a result (the /metrics gauge) and an event."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from mlopsctl.config import Settings
from mlopsctl.contract import Contract
from mlopsctl.errors import InvalidInputError
from mlopsctl.monitoring.drift import ColumnDrift, DriftReport, column_drift, dataset_drift
from mlopsctl.monitoring.window import Window, as_drift_input, load_window, record_result, reference_columns, resolve
from mlopsctl.registry import LoadedModel


def drift(settings: Settings, model_ref: str, *, since: str | None = None, last: int | None = None,
          record: bool = True) -> dict[str, Any]:
    """Drift of the logged inputs (and predictions) of a version against its training reference sample."""
    t0 = time.perf_counter()
    if since is None and last is None:
        since = settings.monitor.window
    if last is not None and last < 1:
        raise InvalidInputError(f"--last must be at least 1, got {last}.")
    store, _, loaded = resolve(settings, model_ref)
    window = load_window(store, loaded.name, loaded.version, loaded.contract, since=since, last=last)
    if window.n < settings.monitor.min_rows:
        raise InvalidInputError(
            f"only {window.n} logged row(s) for {loaded.name}/{loaded.version} in the window "
            f"({'last ' + str(last) if last else since}); drift needs at least monitor.min_rows = "
            f"{settings.monitor.min_rows}. Widen --since or serve more traffic.")
    report = check(settings, loaded, window)
    out = {"model": loaded.name, "version": loaded.version, "window": {"since": since, "last": last, "rows": window.n},
           **report.to_dict(), "seconds": round(time.perf_counter() - t0, 3)}
    if record:
        record_result(store, loaded.name, loaded.version, "drift", report.drift_share,
                      {"drifted": report.drifted, "drifted_columns": report.drifted_columns, "rows": window.n})
        from mlopsctl.registry import add_event

        with store.session() as s:
            add_event(s, "drift_check", f"{loaded.name}/{loaded.version}: {len(report.drifted_columns)} of "
                      f"{len(report.columns)} columns drifted ({report.drift_share:.0%}); "
                      f"{'DRIFT' if report.drifted else 'no drift'} over {window.n} rows",
                      model=loaded.name, version=loaded.version,
                      payload={"drift_share": report.drift_share, "drifted_columns": report.drifted_columns})
    return out


def check(settings: Settings, loaded: LoadedModel, window: Window) -> DriftReport:
    """Every column's drift and the prediction drift (the version's own outputs on its reference sample
    against the logged ones), with histograms: what ``drift`` reports and the HTML report draws."""
    from mlopsctl.scoring import Scorer

    contract = loaded.contract
    reference = reference_columns(contract)
    report = dataset_drift(contract, as_drift_input(contract, reference), as_drift_input(contract, window.columns),
                           drift_share=settings.monitor.drift_share, methods=settings.monitor.stattest,
                           thresholds=settings.monitor.threshold, range_tolerance=settings.serve.range_tolerance)
    report.prediction = _prediction_drift(contract, Scorer(loaded.onnx, contract).run(reference), window.outputs)
    return report


def _prediction_drift(contract: Contract, ref_out: dict[str, Any], cur_out: dict[str, Any]) -> ColumnDrift | None:
    key = "label" if contract.task == "classification" else "prediction"
    if key not in cur_out or len(cur_out[key]) == 0:
        return None
    if contract.task == "classification":
        return column_drift("prediction", "categorical", np.asarray(ref_out["label"]).ravel().astype(str).astype(object),
                            np.asarray(cur_out["label"]).astype(str).astype(object))
    return column_drift("prediction", "numeric", np.asarray(ref_out["prediction"], dtype=np.float64).ravel(),
                        np.asarray(cur_out["prediction"], dtype=np.float64).ravel())
