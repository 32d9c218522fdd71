"""The tables a fully cached ``mlopsctl pipeline run`` and a serving worker read and write, as SQLAlchemy Core
``Table`` objects.

They live in the one ``MetaData`` that :mod:`mlopsctl.store.models` declares every other table in, and the
ORM classes there map these same objects (``__table__``): one schema definition, which the migrations are
tested against. Defining them here, apart from the ORM, lets the pipeline's cache checks and execution
records run without importing ``sqlalchemy.orm`` or mapping the 21 model classes (a third of a cached run's
start-up). Column types, nullability and defaults are spelled out as the ORM's annotations would infer
them (``float`` is ``Double``, ``dict``/``list`` are ``JSON``, ``datetime`` is a naive UTC ``DateTime``).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, Column, DateTime, Double, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Table,
                        Text, UniqueConstraint, text)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _id() -> Column:
    return Column("id", Integer, primary_key=True)


def _created_at(name: str = "created_at") -> Column:
    return Column(name, DateTime, nullable=False, default=utcnow)


def _ref(name: str, target: str, ondelete: str, *, nullable: bool, index: bool | None = None) -> Column:
    return Column(name, Integer, ForeignKey(target, ondelete=ondelete), nullable=nullable, index=index)


runs = Table(
    "runs", metadata,
    _id(),
    _ref("experiment_id", "experiments.id", "CASCADE", nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False, index=True),  # RUNNING | FINISHED | FAILED | PRUNED (a tuning trial)
    Column("failure_reason", Text),
    _created_at("started_at"),
    Column("ended_at", DateTime),
    Column("duration_s", Double),
    _ref("dataset_version_id", "dataset_versions.id", "SET NULL", nullable=True),
    Column("task", String(32)),
    Column("model_class", String(300)),
    Column("seed", Integer),
    Column("git_commit", String(64)),
    Column("environment", JSON, nullable=False, default=dict),
    Column("parity", JSON),
    Column("pid", Integer),
)

# ---- registry (m002_registry) -------------------------------------------------------------------------

registered_models = Table(
    "registered_models", metadata,
    _id(),
    Column("name", String(100), nullable=False, unique=True),
    _created_at(),
)

model_versions = Table(
    "model_versions", metadata,
    _id(),
    _ref("model_id", "registered_models.id", "CASCADE", nullable=False),
    Column("version", Integer, nullable=False),
    _ref("run_id", "runs.id", "RESTRICT", nullable=False, index=True),
    Column("onnx_sha256", String(64), nullable=False),
    Column("contract_sha256", String(64), nullable=False),
    Column("heldout_sha256", String(64)),
    Column("task", String(32), nullable=False),
    _ref("dataset_version_id", "dataset_versions.id", "SET NULL", nullable=True),
    Column("dataset_fingerprint", String(64)),
    Column("git_commit", String(64)),
    Column("metrics", JSON, nullable=False),
    Column("parity", JSON, nullable=False),
    Column("gate", JSON),  # the latest gate report for this version
    Column("created_by", String(200), nullable=False),
    _created_at(),
    UniqueConstraint("model_id", "version", name="uq_model_versions_model_id_version"),
    UniqueConstraint("model_id", "run_id", name="uq_model_versions_model_id_run_id"),
)

aliases = Table(  # a mutable pointer (``production``, ``champion``, ...) to one version of a model
    "aliases", metadata,
    _id(),
    _ref("model_id", "registered_models.id", "CASCADE", nullable=False),
    Column("name", String(100), nullable=False),
    _ref("version_id", "model_versions.id", "RESTRICT", nullable=False),
    Column("updated_at", DateTime, nullable=False, default=utcnow),
    UniqueConstraint("model_id", "name", name="uq_aliases_model_id_name"),
)

# ---- prediction log (m003_prediction_log): what a serving worker writes --------------------------------

prediction_batches = Table(  # a flush of the prediction log for one model version (an Arrow IPC table)
    "prediction_batches", metadata,
    _id(),
    Column("model", String(100), nullable=False),
    Column("version", Integer, nullable=False),
    Column("n_rows", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    _created_at(),
    # the batch's per-request index rows not yet in ``predictions`` (a JSON array; m006_pending_index):
    # a busy server defers them, the next quiet window or the first reader writes them
    Column("pending_index", Text, nullable=True, default=None),
    # A partial index on both dialects (migration m006 creates it with sqlite_where and postgresql_where). Only
    # SQLite's predicate is named here: naming PostgreSQL's imports SQLAlchemy's PostgreSQL dialect in every
    # command (30-60 ms of start-up), and Alembic's autogenerate does not compare index predicates.
    Index("ix_prediction_batches_model_version_id", "model", "version", "id"),
    Index("ix_prediction_batches_pending", "id", sqlite_where=text("pending_index IS NOT NULL")),
)

predictions = Table(  # one served request: which version answered, when, how fast, where its rows are
    "predictions", metadata,
    _id(),
    Column("request_id", String(100), nullable=False, index=True),
    Column("model", String(100), nullable=False),
    Column("version", Integer, nullable=False),
    Column("endpoint", String(40), nullable=False),
    Column("n_rows", Integer, nullable=False),
    Column("latency_ms", Double, nullable=False),
    _ref("batch_id", "prediction_batches.id", "CASCADE", nullable=False, index=True),
    Column("offset", Integer, nullable=False),  # first row of this request inside its batch
    Column("created_at", DateTime, nullable=False, default=utcnow, index=True),
    Index("ix_predictions_model_version_id", "model", "version", "id"),
)

# ---- monitoring (m005_monitoring) ----------------------------------------------------------------------

monitor_results = Table(  # drift checks and live metrics (what /metrics exposes as gauges and reports plot)
    "monitor_results", metadata,
    _id(),
    Column("model", String(100), nullable=False),
    Column("version", Integer),
    Column("kind", String(20), nullable=False),  # drift | live_metric
    Column("value", Double, nullable=False),
    Column("details", JSON, nullable=False, default=dict),
    _created_at(),
    Index("ix_monitor_results_model_kind_id", "model", "kind", "id"),
)

# ---- pipelines (m007_pipeline) ------------------------------------------------------------------------

pipeline_runs = Table(
    "pipeline_runs", metadata,
    _id(),
    Column("trigger", String(20), nullable=False),  # cli | step | watch
    Column("targets", JSON, nullable=False, default=list),  # the steps asked for ([] = all)
    Column("options", JSON, nullable=False, default=dict),  # force, no_cache, jobs
    Column("status", String(20), nullable=False, index=True),  # running | succeeded | failed | interrupted
    Column("message", Text),
    _created_at("started_at"),
    Column("ended_at", DateTime),
    Column("duration_s", Double),
)

pipeline_executions = Table(
    "pipeline_executions", metadata,
    _id(),
    _ref("pipeline_run_id", "pipeline_runs.id", "CASCADE", nullable=False, index=True),
    Column("step", String(100), nullable=False),
    Column("kind", String(20), nullable=False),  # cmd | train | evaluate | register | promote | tune
    Column("key", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # ran | cached | failed | skipped
    Column("exit_code", Integer),
    Column("duration_s", Double, nullable=False, default=0.0),
    Column("inputs", JSON, nullable=False, default=dict),  # what the key was computed from
    Column("outputs", JSON, nullable=False, default=dict),  # path -> {sha256, size} or a folder's files
    Column("result", JSON, nullable=False, default=dict),  # what a built-in step produced (run, version, ...)
    Column("stdout_sha256", String(64)),
    Column("stderr_sha256", String(64)),
    Column("message", Text),
    _ref("run_id", "runs.id", "SET NULL", nullable=True, index=True),
    _ref("model_version_id", "model_versions.id", "SET NULL", nullable=True, index=True),
    _ref("source_id", "pipeline_executions.id", "SET NULL", nullable=True),
    _created_at(),
    Index("ix_pipeline_executions_key", "key", "id"),
    Index("ix_pipeline_executions_step", "step", "id"),
)
