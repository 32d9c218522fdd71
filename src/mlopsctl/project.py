"""An open project: its settings, its store and its artifact folder, built in one place.

Every layer that needs the store gets it from :func:`open_project` (the CLI's use cases, the server, the
watcher, monitoring). The store is cached per process and URL (:func:`mlopsctl.store.db.open_store`), so
opening a project again is cheap. The few reads here that own their transaction (resolving a model
reference, then reading its verified files outside the transaction) are what the server and batch scoring
need without going through the use-case layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlopsctl.artifacts import ArtifactStore
from mlopsctl.config import Settings
from mlopsctl.store.db import Store, open_store

if TYPE_CHECKING:  # imported where used: opening a project costs no ORM, resolving a reference neither
    from mlopsctl.registry_core import LoadedModel, ModelRef


@dataclass(frozen=True)
class Project:
    settings: Settings
    store: Store
    artifacts: ArtifactStore

    def ref(self, ref: str | ModelRef, alias: str | None = None) -> ModelRef:
        """``name`` (at ``alias``, else ``registry.alias``), ``name/3`` or ``name@alias`` as a ModelRef."""
        from mlopsctl.registry_core import ModelRef, parse_ref

        return ref if isinstance(ref, ModelRef) else parse_ref(ref, alias or self.settings.registry.alias)

    def load_model(self, ref: str | ModelRef, alias: str | None = None) -> LoadedModel:
        """Resolve a reference in a read transaction, then read its ONNX file and contract, each verified
        against its sha256."""
        from mlopsctl.contract import Contract
        from mlopsctl.registry_core import LoadedModel, resolve_row

        ref = self.ref(ref, alias)
        with self.store.transaction(write=False) as conn:
            mv = resolve_row(conn, ref)
        return LoadedModel(ref.name, mv.version, mv.onnx_sha256, self.artifacts.get_bytes(mv.onnx_sha256),
                           Contract.from_json(self.artifacts.get_bytes(mv.contract_sha256)), mv.heldout_sha256)

    def current_version(self, ref: ModelRef) -> int:
        """The version ``ref`` points at now (one indexed read; the server's hot reload polls this)."""
        from mlopsctl.registry_core import resolve_row

        with self.store.transaction(write=False) as conn:
            return resolve_row(conn, ref).version

    def latest_monitor_results(self, model: str) -> dict[str, Any]:
        """The newest drift share and live metric recorded for ``model`` (the server's /metrics gauges)."""
        from mlopsctl.registry_core import latest_monitor_results

        with self.store.transaction(write=False) as conn:
            return latest_monitor_results(conn, model)


def open_project(settings: Settings) -> Project:
    return Project(settings, open_store(settings.store_url, settings.store.busy_timeout_ms),
                   ArtifactStore(settings.artifacts_dir))
