"""Fast twin of Feast's materialization (``store.materialize``, ``store.write_to_online_store``).

Batched materialization into the online store through Feast's public store interfaces.

Three entry points, all ending in ``FastSqliteOnlineStore.online_write_arrow`` (Arrow columns
serialised in bulk) when the repo uses that store, and in Feast's stock write otherwise:

* :func:`materialize_fast` — ``store.materialize`` without the per-cell proto conversion: pulls the
  latest row per entity with the offline store's ``pull_latest_from_table_or_query`` and records
  the materialized interval in the registry like ``store.materialize`` does;
* :func:`write_frame_fast` — ``store.write_to_online_store`` for a frame of feature rows;
* :class:`ArrowBatchComputeEngine` — a Feast compute engine (``batch_engine:
  {type: features.fast_materialize.ArrowBatchComputeEngine}``) so ``store.materialize`` and
  ``feast materialize`` take the same path.

Kept for: materialization into SQLite at ≥ 10× Feast's stock rate on the same data (issue
"Feature store"); with the stock ``SqliteOnlineStore`` the stock paths wrote 356-1,150 rows/s
here, 6-15× below these depending on the machine's load (``benchmarks/bench_library_paths.py``;
table and date in ``docs/scaling.md``, "Library paths and the fast twins we keep"). Into Redis
the same entry points end in Feast's own ``online_write_batch`` (0.7-1.7× the stock entry
points: no twin code of their own). Equivalence: ``tests/unit/test_materialize.py`` (the stock
store reads what these wrote; rows byte for byte equal to the stock store's).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
from feast import FeatureStore, FeatureView
from feast.infra.common.materialization_job import (
    MaterializationJobStatus,
    MaterializationTask,
)
from feast.infra.compute_engines.local.compute import LocalComputeEngine
from feast.infra.compute_engines.local.job import LocalMaterializationJob
from feast.infra.offline_stores.offline_store import OfflineStore
from feast.infra.offline_stores.offline_utils import get_offline_store_from_config
from feast.infra.online_stores.helpers import get_online_store_from_config
from feast.infra.online_stores.online_store import OnlineStore
from feast.infra.registry.base_registry import BaseRegistry
from feast.repo_config import FeastConfigBaseModel, RepoConfig

from features.fast_online_store import FastSqliteOnlineStore

ARROW_ENGINE_TYPE = "features.fast_materialize.ArrowBatchComputeEngine"


@dataclass
class ViewStats:
    """Rows written for one feature view and the time it took."""

    feature_view: str
    rows: int
    seconds: float


@dataclass
class MaterializeStats:
    """Outcome of one :func:`materialize_fast` call."""

    start: datetime
    end: datetime
    views: list[ViewStats] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(view.rows for view in self.views)

    @property
    def seconds(self) -> float:
        return sum(view.seconds for view in self.views)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def materialize_fast(
    store: FeatureStore,
    start: datetime,
    end: datetime,
    feature_views: Iterable[str] | None = None,
    overwrite: bool = False,
) -> MaterializeStats:
    """Materialize the latest value per entity with event time in ``[start, end]``.

    ``feature_views`` names the views (default: every online view with a batch source). Times
    without a timezone are taken as UTC. ``overwrite`` (a full reload) replaces what the online
    store holds for these entities whatever its timestamps (rows written since, e.g. by the
    service's lead recorder, would otherwise win). Raises ``ValueError`` for unknown views or
    bad windows.
    """
    start, end = _utc(start), _utc(end)
    if start > end:
        raise ValueError(f"start {start.isoformat()} is after end {end.isoformat()}")
    views = _views_to_materialize(store, feature_views)
    offline = get_offline_store_from_config(store.config.offline_store)
    online = get_online_store_from_config(store.config.online_store)
    stats = MaterializeStats(start=start, end=end)
    try:
        for view in views:
            began = time.perf_counter()
            rows = materialize_view(store.config, offline, online, view, start, end, overwrite)
            stats.views.append(ViewStats(view.name, rows, time.perf_counter() - began))
            store.registry.apply_materialization(view, store.project, start, end)
    finally:
        _close(online)
    return stats


def materialize_view(
    config: RepoConfig,
    offline: OfflineStore,
    online: OnlineStore,
    view: FeatureView,
    start: datetime,
    end: datetime,
    overwrite: bool = False,
) -> int:
    """Pull the latest rows of one view from the offline store and write them online
    (``overwrite``: whatever the online store holds, see :func:`materialize_fast`)."""
    source = view.batch_source
    if source is None:
        raise ValueError(f"feature view '{view.name}' has no batch source to materialize from")
    mapping = dict(source.field_mapping or {})
    reverse = {target: name for name, target in mapping.items()}
    join_keys = [entity.name for entity in view.entity_columns]
    features = [feature.name for feature in view.features]
    timestamp = reverse.get(source.timestamp_field, source.timestamp_field)
    created = source.created_timestamp_column or None
    created = reverse.get(created, created) if created else None
    job = offline.pull_latest_from_table_or_query(
        config=config,
        data_source=source,
        join_key_columns=[reverse.get(key, key) for key in join_keys],
        feature_name_columns=[reverse.get(name, name) for name in features],
        timestamp_field=timestamp,
        created_timestamp_column=created,
        start_date=start,
        end_date=end,
    )
    table = _apply_field_mapping(job.to_arrow(), mapping)
    return write_arrow(
        config,
        online,
        view,
        table,
        timestamp_column=mapping.get(timestamp, timestamp),
        created_timestamp_column=mapping.get(created, created) if created else None,
        overwrite=overwrite,
    )


def write_frame_fast(
    store: FeatureStore, feature_view_name: str, frame: pd.DataFrame | pa.Table
) -> int:
    """Write feature rows (join keys, timestamps, features; source column names) online.

    The batched counterpart of ``store.write_to_online_store``; returns the rows written. Rows
    older than what is stored for an entity do not overwrite it (with ``FastSqliteOnlineStore``).
    """
    view = store.get_feature_view(feature_view_name)
    table = (
        frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    )
    mapping = dict(view.batch_source.field_mapping or {}) if view.batch_source else {}
    table = _apply_field_mapping(table, mapping)
    online = get_online_store_from_config(store.config.online_store)
    try:
        timestamp = view.batch_source.timestamp_field if view.batch_source else None
        return write_arrow(
            store.config, online, view, table, timestamp_column=mapping.get(timestamp, timestamp)
        )
    finally:
        _close(online)


def write_arrow(
    config: RepoConfig,
    online: OnlineStore,
    view: FeatureView,
    table: pa.Table,
    timestamp_column: str | None = None,
    created_timestamp_column: str | None = None,
    overwrite: bool = False,
) -> int:
    """Arrow rows → online store: bulk path on ``FastSqliteOnlineStore``, stock path otherwise.

    ``overwrite``: replace stored rows whatever their timestamps (Redis: Feast's ``skip_dedup``
    write; other stores without such an option refuse it).
    """
    if isinstance(online, FastSqliteOnlineStore):
        return online.online_write_arrow(
            config,
            view,
            table,
            timestamp_column=timestamp_column,
            created_timestamp_column=created_timestamp_column,
            overwrite=overwrite,
        )
    from feast.utils import _convert_arrow_to_proto

    if overwrite:
        config = _overwriting(config)

    if view.batch_source is not None and timestamp_column not in (
        None,
        view.batch_source.timestamp_field,
    ):
        table = table.rename_columns(
            [
                view.batch_source.timestamp_field if c == timestamp_column else c
                for c in table.column_names
            ]
        )
    join_keys = {entity.name: entity.dtype.to_value_type() for entity in view.entity_columns}
    for batch in table.to_batches():
        online.online_write_batch(
            config, view, _convert_arrow_to_proto(batch, view, join_keys), None
        )
    return table.num_rows


class ArrowBatchComputeEngineConfig(FeastConfigBaseModel):
    """Config of :class:`ArrowBatchComputeEngine` (no options besides ``type``)."""

    type: Literal["features.fast_materialize.ArrowBatchComputeEngine"] = ARROW_ENGINE_TYPE


class ArrowBatchComputeEngine(LocalComputeEngine):
    """Feast's local engine, with plain feature views materialized through :func:`materialize_view`.

    Views with transformations or aggregations, and ``disable_event_timestamp`` runs, keep the
    local engine's DAG.
    """

    def __init__(self, **kwargs: Any):
        kwargs.pop("type", None)
        super().__init__(**kwargs)

    def _materialize_one(
        self, registry: BaseRegistry, task: MaterializationTask, **kwargs: Any
    ) -> LocalMaterializationJob:
        view = task.feature_view
        if (
            task.disable_event_timestamp
            or not isinstance(view, FeatureView)
            or getattr(view, "aggregations", None)
            or getattr(view, "feature_transformation", None) is not None
            or not view.online
        ):
            return super()._materialize_one(registry, task, **kwargs)
        job_id = f"{view.name}-{task.start_time}-{task.end_time}"
        try:
            materialize_view(
                self.repo_config,
                self.offline_store,
                self.online_store,
                view,
                _utc(task.start_time),
                _utc(task.end_time),
            )
        except Exception as error:  # reported through the job, as Feast's engines do
            return LocalMaterializationJob(
                job_id=job_id, status=MaterializationJobStatus.ERROR, error=error
            )
        return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.SUCCEEDED)


def _overwriting(config: RepoConfig) -> RepoConfig:
    """A copy of ``config`` whose online store writes without comparing timestamps."""
    store_config = config.online_store
    if "skip_dedup" not in type(store_config).model_fields:
        raise ValueError(
            f"online store type '{getattr(store_config, 'type', type(store_config).__name__)}' "
            "cannot overwrite newer rows; a full reload needs Redis or the fast SQLite store"
        )
    copy = config.model_copy()
    copy._online_store = store_config.model_copy(update={"skip_dedup": True})
    return copy


def _views_to_materialize(store: FeatureStore, names: Iterable[str] | None) -> list[FeatureView]:
    views = {view.name: view for view in store.list_feature_views() if view.online}
    if names is None:
        return [view for view in views.values() if view.batch_source is not None]
    wanted = list(names)
    unknown = [name for name in wanted if name not in views]
    if unknown:
        raise ValueError(
            f"unknown or offline-only feature view(s): {', '.join(unknown)} "
            f"(online views: {', '.join(sorted(views)) or 'none'})"
        )
    return [views[name] for name in wanted]


def _apply_field_mapping(table: pa.Table, mapping: dict[str, str]) -> pa.Table:
    if not mapping:
        return table
    return table.rename_columns([mapping.get(name, name) for name in table.column_names])


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _close(online: OnlineStore) -> None:
    conn = getattr(online, "_conn", None)
    if conn is not None:
        conn.close()
        online._conn = None  # type: ignore[attr-defined]
