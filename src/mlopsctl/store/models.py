"""SQLAlchemy 2.x typed models. With :mod:`mlopsctl.store.tables` (the tables a cached pipeline run touches,
as Core ``Table`` objects that the classes here map), the only place that defines tables.

Schema changes go in a new Alembic migration under ``store/migrations/versions``; never edit a merged one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from mlopsctl.store import tables
from mlopsctl.store.tables import utcnow


class Base(DeclarativeBase):
    metadata = tables.metadata
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Experiment(Base):
    __tablename__ = "experiments"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    runs: Mapped[list[Run]] = relationship(back_populates="experiment")


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    versions: Mapped[list[DatasetVersion]] = relationship(back_populates="dataset", order_by="DatasetVersion.version")


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version", name="uq_dataset_versions_dataset_id_version"),
        UniqueConstraint("dataset_id", "fingerprint", name="uq_dataset_versions_dataset_id_fingerprint"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    version: Mapped[int]
    source_path: Mapped[str] = mapped_column(Text)
    file_sha256: Mapped[Optional[str]] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))
    row_count: Mapped[int]
    column_count: Mapped[int]
    schema: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dataset: Mapped[Dataset] = relationship(back_populates="versions")


class Run(Base):
    __table__ = tables.runs
    experiment: Mapped[Experiment] = relationship(back_populates="runs")
    dataset_version: Mapped[Optional[DatasetVersion]] = relationship()
    params: Mapped[list[Param]] = relationship(cascade="all, delete-orphan", order_by="Param.key")
    tags: Mapped[list[Tag]] = relationship(cascade="all, delete-orphan", order_by="Tag.key")
    artifacts: Mapped[list[Artifact]] = relationship(cascade="all, delete-orphan", order_by="Artifact.name")


class Param(Base):
    __tablename__ = "params"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_run_id_key_step", "run_id", "key", "step"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(250))
    value: Mapped[float]
    step: Mapped[int] = mapped_column(default=0)
    timestamp: Mapped[datetime] = mapped_column(default=utcnow)


class Tag(Base):
    __tablename__ = "tags"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("run_id", "name", name="uq_artifacts_run_id_name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(250))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int]
    media_type: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---- registry (m002_registry) -------------------------------------------------------------------------

class RegisteredModel(Base):
    __table__ = tables.registered_models
    versions: Mapped[list[ModelVersion]] = relationship(back_populates="model", order_by="ModelVersion.version")
    aliases: Mapped[list[Alias]] = relationship(back_populates="model", order_by="Alias.name")


class ModelVersion(Base):
    """An immutable version: which run, which ONNX file (by sha256), which contract, which data."""

    __table__ = tables.model_versions
    model: Mapped[RegisteredModel] = relationship(back_populates="versions")


class Alias(Base):
    """A mutable pointer (``production``, ``champion``, ...) to one version of a model."""

    __table__ = tables.aliases
    model: Mapped[RegisteredModel] = relationship(back_populates="aliases")
    version: Mapped[ModelVersion] = relationship()


class AliasMove(Base):
    """Append-only history of every alias move: who, when, from, to, why (never rewritten)."""

    __tablename__ = "alias_history"
    __table_args__ = (Index("ix_alias_history_model_id_alias", "model_id", "alias", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registered_models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(100))
    from_version: Mapped[Optional[int]]
    to_version: Mapped[int]
    action: Mapped[str] = mapped_column(String(20))  # promote | rollback
    forced: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(200))
    gate: Mapped[Optional[dict[str, Any]]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    """The audit trail: trainings, registrations, promotions, rejections, rollbacks."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_model", "model", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    model: Mapped[Optional[str]] = mapped_column(String(100))
    version: Mapped[Optional[int]]
    run_id: Mapped[Optional[int]]
    message: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---- prediction log (m003_prediction_log) --------------------------------------------------------------

class PredictionBatch(Base):
    """A flush of the prediction log for one model version: every logged row's normalized inputs and
    outputs as one Arrow IPC table (columnar, so monitoring reads 100,000 rows in one pass)."""

    __table__ = tables.prediction_batches


class PredictionRecord(Base):
    """One served request: which version answered, when, how fast, and where its rows are (batch, offset)."""

    __table__ = tables.predictions


# ---- continuous training (m004_watch) -----------------------------------------------------------------

class WatchJob(Base):
    """One retraining triggered by new files (coalesced) or a schedule; each stage is recorded so that a
    killed watcher resumes where it stopped instead of redoing or skipping work."""

    __tablename__ = "watch_jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    trigger: Mapped[str] = mapped_column(String(40))  # files | schedule | drift
    status: Mapped[str] = mapped_column(String(20), index=True)  # pending | trained | registered | done | failed
    dataset_version_id: Mapped[Optional[int]] = mapped_column(ForeignKey("dataset_versions.id", ondelete="SET NULL"))
    run_id: Mapped[Optional[int]] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    model_version: Mapped[Optional[int]]
    decision: Mapped[Optional[str]] = mapped_column(String(20))  # promoted | rejected | registered | failed
    reason: Mapped[Optional[str]] = mapped_column(Text)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class WatchedFile(Base):
    """Every file the watcher took, by content: the same bytes are never processed twice."""

    __tablename__ = "watched_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(500))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int]
    rows: Mapped[Optional[int]]
    status: Mapped[str] = mapped_column(String(20), index=True)  # accepted | rejected | processed
    reason: Mapped[Optional[str]] = mapped_column(Text)
    job_id: Mapped[Optional[int]] = mapped_column(ForeignKey("watch_jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---- monitoring (m005_monitoring) ---------------------------------------------------------------------

class Feedback(Base):
    """Ground truth that arrives later, joined to the prediction log by request id (and row)."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("request_id", "row", name="uq_feedback_request_id_row"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[str] = mapped_column(String(100))
    row: Mapped[int] = mapped_column(default=0)
    label: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class MonitorResult(Base):
    """The latest drift checks and live metrics (what /metrics exposes as gauges and reports plot)."""

    __table__ = tables.monitor_results


# ---- pipelines (m007_pipeline) ------------------------------------------------------------------------

class PipelineRun(Base):
    """One `mlopsctl pipeline run` (or `pipeline step`, or a watch retrain): which steps were asked for, how
    it ended. Its steps' executions hang off it."""

    __table__ = tables.pipeline_runs


class PipelineExecution(Base):
    """One step of one pipeline run: its cache key and the inputs it was computed from, whether it ran or was
    restored from the cache, how it ended, the sha256 of each output, its logs, and the run and model version
    it produced (lineage: model version -> register -> train -> the data file -> the step that wrote it)."""

    __table__ = tables.pipeline_executions
