"""Fast twin of Feast's ``SqliteOnlineStore``: the same table layout, bulk writes, lean reads.

Kept for: materialization at ≥ 10× Feast's stock rate (issue "Feature store"; with
``features.fast_materialize``) and the ``/predict_batch`` of 1,000 in ≤ 150 ms, whose online read
``online_read_columns`` does in a third of the stock ``online_read``'s time
(``benchmarks/bench_library_paths.py``; ratios and date in ``docs/scaling.md``, "Library paths
and the fast twins we keep"). The module path is the ``online_store.type`` that
``features/store.py`` and every work folder's ``feature_store.yaml`` name. Equivalence:
``tests/unit/test_materialize.py`` (Feast's bytes, keys and timestamps; the stock store reads
what this one writes).

Select it in ``feature_store.yaml`` (or a ``RepoConfig``) with::

    online_store:
      type: features.fast_online_store.FastSqliteOnlineStore
      path: data/online.db

Same tables as Feast's store: one row per (entity_key, feature_name) holding the serialised
``ValueProto``, ``value_text``, ``event_ts``/``created_ts`` as Unix seconds, keys serialised with
Feast's entity-key encoding. Feast's stock store reads what this one writes and vice versa.

What is faster, and why (profile of the stock path: one ``conn.execute`` per feature cell, a
Python ``ValueProto`` built per cell by ``_convert_arrow_to_proto``, ``extract_text_and_num`` and
two datetime adapters per cell):

* writes bind one multi-row ``INSERT … VALUES (…), (…)`` per entity (feature names are SQL
  literals, key and timestamps bound once) through ``executemany``, entities in key order,
  WAL journal, ``synchronous=NORMAL``, a large page cache, one transaction per chunk;
* ``online_write_arrow`` serialises whole Arrow columns at once (templated protobuf bytes for
  float/double/int/bool, varints with numpy) instead of building one ``ValueProto`` per cell;
  float and double features of an entity travel as one packed blob that SQL cuts with
  ``substr`` (binding 40 parameters per entity cost more than SQLite's own insert work);
* tables this store creates are clustered on the primary key (``WITHOUT ROWID``) and skip the
  ``<table>_ek`` index, which duplicates the primary key's leading column;
* ``value_text`` of numeric features is left NULL unless ``numeric_value_text: true`` (Feast's
  reads never use it; with the option on, rows are byte-identical to Feast's);
* an upsert only replaces a stored value with one whose event timestamp is not older (ties go to
  the newer created timestamp), so late or replayed batches never roll features back; a full
  reload (``online_write_arrow(..., overwrite=True)``) replaces stored values whatever their
  timestamps;
* a connection notices, at most once a second, that the file at ``path`` is no longer the file
  it opened (deleted or replaced): it reopens the path, so a store that lost its file reads as
  empty (``features.online_epoch``) instead of serving from the unlinked file for ever;
* ``online_read`` parses only the requested features and converts one timestamp per entity.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast import Entity
from feast.feature_view import FeatureView
from feast.infra.infra_object import InfraObject
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import compute_table_id, extract_text_and_num
from feast.infra.online_stores.sqlite import (
    SqliteOnlineStore,
    SqliteOnlineStoreConfig,
    SqliteTable,
)
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
from pydantic import StrictBool, StrictInt, StrictStr

FAST_SQLITE_TYPE = "features.fast_online_store.FastSqliteOnlineStore"
_MAX_CELLS_PER_STATEMENT = 400  # keeps bound parameters far below SQLITE_MAX_VARIABLE_NUMBER
_PACKED_WIDTH = {ValueType.FLOAT: 5, ValueType.DOUBLE: 9}  # tag byte + IEEE little-endian
_EPOCH = datetime(1970, 1, 1)
_NUMERIC_TYPES = {ValueType.FLOAT, ValueType.DOUBLE, ValueType.INT32, ValueType.INT64}
FILE_CHECK_SECONDS = 1.0  # how often a connection checks that its file is still at ``path``

# ValueProto wire tags (field number << 3 | wire type) of the scalar kinds encoded in bulk.
_TAG_STRING = 0x12  # string_val = 2, length-delimited
_TAG_INT32 = 0x18  # int32_val = 3, varint
_TAG_INT64 = 0x20  # int64_val = 4, varint
_TAG_DOUBLE = 0x29  # double_val = 5, fixed64
_TAG_FLOAT = 0x35  # float_val = 6, fixed32
_BOOL_TRUE, _BOOL_FALSE = b"\x38\x01", b"\x38\x00"  # bool_val = 7

Row = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]


class FastSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Config of :class:`FastSqliteOnlineStore`: Feast's SQLite options plus write tuning."""

    type: Literal["features.fast_online_store.FastSqliteOnlineStore"] = FAST_SQLITE_TYPE
    path: StrictStr = "data/online.db"
    write_chunk_rows: StrictInt = 10_000
    """Entity rows per transaction: bounds the WAL and memory of one big write."""
    cache_size_mib: StrictInt = 256
    """SQLite page cache of the store's connection."""
    numeric_value_text: StrictBool = False
    """Fill ``value_text`` of numeric features with ``str(value)`` as Feast's store does. Off by
    default: reads never use it (only string filters of ``retrieve_online_documents_v2`` would),
    and ``str`` of 4 M floats costs ~2 s and a quarter of the table's size. Strings and bools
    always get their text."""


class FastSqliteOnlineStore(SqliteOnlineStore):
    """Feast's SQLite online store with bulk writes, an Arrow write path and a lean read."""

    _sql_cache: dict[tuple, str] | None = None
    _file_id: tuple[int, int] | None = None  # (device, inode) of the file the connection opened
    _file_checked: float = 0.0  # monotonic time of the last check

    # ---- connection and tables ------------------------------------------------------
    def _get_conn(self, config: RepoConfig) -> sqlite3.Connection:
        if self._conn is not None and self._file_replaced(config):
            self._conn.close()
            self._conn = None
        fresh = self._conn is None
        conn = super()._get_conn(config)
        if fresh:
            cache_kib = int(getattr(config.online_store, "cache_size_mib", 256)) * 1024
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA cache_size=-{cache_kib}")
            conn.execute("PRAGMA temp_store=MEMORY")
            self._file_id = _file_identity(self._get_db_path(config))
            self._file_checked = time.monotonic()
        return conn

    def _file_replaced(self, config: RepoConfig) -> bool:
        """True when the file at the store's path is gone or is another file than the one the
        connection opened (checked at most every ``FILE_CHECK_SECONDS``)."""
        now = time.monotonic()
        if now - self._file_checked < FILE_CHECK_SECONDS or self._get_db_path(config) == ":memory:":
            return False
        self._file_checked = now
        return _file_identity(self._get_db_path(config)) != self._file_id

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        """Create missing tables clustered on (entity_key, feature_name); drop deleted ones."""
        if _needs_stock_path(config):
            super().update(
                config,
                tables_to_delete,
                tables_to_keep,
                entities_to_delete,
                entities_to_keep,
                partial,
            )
            return
        conn = self._get_conn(config)
        versioning = config.registry.enable_online_feature_view_versioning
        with conn:
            for view in tables_to_keep:
                _create_table(conn, compute_table_id(config.project, view, versioning))
            for view in tables_to_delete:
                name = _quote_id(compute_table_id(config.project, view, versioning))
                conn.execute(f"DROP TABLE IF EXISTS {name}")

    def plan(self, config: RepoConfig, desired_registry_proto: RegistryProto) -> list[InfraObject]:
        """Feast's plan, with tables that ``feast apply`` creates in this store's layout."""
        planned = super().plan(config, desired_registry_proto)
        if _needs_stock_path(config):
            return planned
        return [
            FastSqliteTable(path=item.path, name=item.name)
            if isinstance(item, SqliteTable)
            else item
            for item in planned
        ]

    # ---- writes -----------------------------------------------------------------------
    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[Row],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Feast's write entry point (materialize, ``write_to_online_store``, push), batched."""
        if _needs_stock_path(config):
            super().online_write_batch(config, table, data, progress)
            return
        version = config.entity_key_serialization_version
        want_text = getattr(config.online_store, "numeric_value_text", False)
        groups: dict[tuple[str, ...], list[list[Any]]] = {}
        # a ValueProto object shared by many cells (callers reuse one per distinct value) is
        # serialised once; ``data`` keeps every proto alive, so ids are not reused meanwhile
        encoded: dict[int, tuple[bytes, str | None]] = {}
        for entity_key, values, event_ts, created_ts in data:
            names = tuple(sorted(values))
            params: list[Any] = [
                serialize_entity_key(entity_key, entity_key_serialization_version=version),
                _sqlite_seconds(event_ts),
                None if created_ts is None else _sqlite_seconds(created_ts),
            ]
            for name in names:
                value = values[name]
                cell = encoded.get(id(value))
                if cell is None:
                    cell = encoded[id(value)] = (value.SerializeToString(),
                                                 _value_text(value, want_text))
                params.extend(cell)
            groups.setdefault(names, []).append(params)
        conn = self._get_conn(config)
        table_name = self._table_name(config, table)
        chunk = _chunk_rows(config)
        for names, rows in groups.items():
            rows.sort(key=_first)  # stable: for one key, later rows stay later
            slots = [_Slot(name) for name in names]
            for first in range(0, len(rows), chunk):
                columns = [
                    list(column) for column in zip(*rows[first : first + chunk], strict=True)
                ]
                statements = []
                for start in range(0, len(slots), _MAX_CELLS_PER_STATEMENT):
                    group = slots[start : start + _MAX_CELLS_PER_STATEMENT]
                    bound = columns[3 + 2 * start : 3 + 2 * (start + len(group))]
                    statements.append(
                        (
                            self._upsert_sql(table_name, group),
                            [*columns[:3], [None] * len(columns[0]), *bound],
                        )
                    )
                self._execute(conn, table, statements)
        if progress:
            progress(len(data))

    def online_write_arrow(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: pa.Table | pa.RecordBatch,
        timestamp_column: str | None = None,
        created_timestamp_column: str | None = None,
        overwrite: bool = False,
    ) -> int:
        """Write an Arrow table of feature rows (columns named as in the feature view).

        The batched equivalent of ``_convert_arrow_to_proto`` + ``online_write_batch``: needs the
        view's join keys, its features and the event-timestamp column (default: the batch
        source's ``timestamp_field``); the created-timestamp column is optional. Rows are sorted
        by entity key (appends to the B-tree) and written one transaction per chunk of
        ``write_chunk_rows``. Float and double features (when their ``value_text`` is not
        wanted) travel as one packed blob per entity that SQL slices with ``substr``; other
        features are bound cell by cell. ``overwrite`` (a full reload) replaces stored values
        whatever their timestamps. Returns the number of entity rows written.
        """
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        source = table.batch_source
        timestamp_column = timestamp_column or (source.timestamp_field if source else None)
        if created_timestamp_column is None and source is not None:
            created_timestamp_column = source.created_timestamp_column or None
        if created_timestamp_column and created_timestamp_column not in data.column_names:
            created_timestamp_column = None
        join_keys = {f.name: f.dtype.to_value_type() for f in table.entity_columns}
        features = {f.name: f.dtype.to_value_type() for f in table.features}
        required = [*join_keys, *features, timestamp_column or "<timestamp_field>"]
        missing = [c for c in required if c not in data.column_names]
        if missing:
            raise ValueError(
                f"feature view '{table.name}': input lacks column(s) {', '.join(missing)} "
                f"(has {', '.join(data.column_names)})"
            )
        if data.num_rows == 0:
            return 0
        if _needs_stock_path(config):
            if overwrite:
                raise ValueError(f"feature view '{table.name}': overwrite needs the fast path "
                                 "(no vector or value_num columns)")
            return self._write_arrow_via_protos(config, table, data, join_keys, timestamp_column)
        want_text = getattr(config.online_store, "numeric_value_text", False)
        keys = pa.array(_serialize_entity_keys(data, join_keys, config), pa.binary())
        order = pc.sort_indices(keys)  # stable: for one key, later rows stay later
        keys, data = keys.take(order), data.take(order)
        event_ts = _timestamp_seconds(data.column(timestamp_column), timestamp_column)
        created_ts = (
            _timestamp_seconds(data.column(created_timestamp_column), created_timestamp_column)
            if created_timestamp_column
            else [None] * data.num_rows
        )
        names = sorted(features)
        floats = {name: _as_float_array(data.column(name), features[name]) for name in names}
        slots = [_slot_for(name, floats[name], want_text) for name in names]
        groups = _assign_offsets(slots)
        table_name = self._table_name(config, table)
        sqls = [self._upsert_sql(table_name, group, overwrite) for group in groups]

        def encode(first: int, count: int) -> list[tuple[str, list[list[Any]]]]:
            head = [
                keys.slice(first, count).to_pylist(),
                event_ts[first : first + count],
                created_ts[first : first + count],
            ]
            statements = []
            for sql, group in zip(sqls, groups, strict=True):
                packed = [slot for slot in group if slot.width]
                columns = [*head, _pack(packed, floats, first, len(head[0]))]
                for slot in group:
                    if not slot.width:
                        part = data.column(slot.name).slice(first, count)
                        columns.extend(encode_column(part, features[slot.name], want_text))
                statements.append((sql, columns))
            return statements

        conn = self._get_conn(config)
        chunk = _chunk_rows(config)
        for first in range(0, data.num_rows, chunk):
            self._execute(conn, table, encode(first, chunk))
        return data.num_rows

    def _write_arrow_via_protos(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: pa.Table,
        join_keys: dict[str, ValueType],
        timestamp_column: str,
    ) -> int:
        """Vector/value_num tables: convert to protos the stock way and use the stock write."""
        from feast.utils import _convert_arrow_to_proto

        if timestamp_column != table.batch_source.timestamp_field:
            data = data.rename_columns(
                [
                    table.batch_source.timestamp_field if c == timestamp_column else c
                    for c in data.column_names
                ]
            )
        for batch in data.to_batches():
            rows = _convert_arrow_to_proto(batch, table, join_keys)
            super().online_write_batch(config, table, rows, None)
        return data.num_rows

    @staticmethod
    def _table_name(config: RepoConfig, table: FeatureView) -> str:
        return compute_table_id(
            config.project, table, config.registry.enable_online_feature_view_versioning
        )

    @staticmethod
    def _execute(
        conn: sqlite3.Connection,
        table: FeatureView,
        statements: list[tuple[str, list[list[Any]]]],
    ) -> None:
        """One transaction; each statement's columns: key, event_ts, created_ts, blob, cells."""
        try:
            with conn:
                for sql, columns in statements:
                    conn.executemany(sql, zip(*columns, strict=True))
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                raise ValueError(
                    f"the online table of feature view '{table.name}' does not exist;"
                    " apply the feature view first (store.apply / feast apply)"
                ) from error
            raise

    def _upsert_sql(self, table_name: str, slots: list[_Slot], overwrite: bool = False) -> str:
        """Multi-row upsert of one entity: ?1 key, ?2 event_ts, ?3 created_ts, ?4 packed blob,
        then (value, text) pairs of the bound features (``overwrite``: whatever is stored)."""
        if self._sql_cache is None:
            self._sql_cache = {}
        key = (table_name, tuple(slots), overwrite)
        sql = self._sql_cache.get(key)
        if sql is None:
            quoted = _quote_id(table_name)
            rows, param = [], 5
            for slot in slots:
                if slot.width:
                    value, text = slot.sql_value(), "NULL"
                else:
                    value, text, param = f"?{param}", f"?{param + 1}", param + 2
                rows.append(f"(?1, {_quote_literal(slot.name)}, {value}, {text}, ?2, ?3)")
            sql = (
                f"INSERT INTO {quoted} (entity_key, feature_name, value, value_text, event_ts, "
                f"created_ts) VALUES {', '.join(rows)} ON CONFLICT(entity_key, feature_name) "
                "DO UPDATE SET value = excluded.value, value_text = excluded.value_text, "
                "event_ts = excluded.event_ts, created_ts = excluded.created_ts"
            )
            if not overwrite:
                sql += (
                    f" WHERE {quoted}.event_ts IS NULL OR excluded.event_ts > {quoted}.event_ts "
                    f"OR (excluded.event_ts = {quoted}.event_ts AND (excluded.created_ts IS NULL "
                    f"OR {quoted}.created_ts IS NULL OR excluded.created_ts >= "
                    f"{quoted}.created_ts))"
                )
            self._sql_cache[key] = sql
        return sql

    # ---- reads ------------------------------------------------------------------------
    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        """Read the requested features of each key; parses only those ``ValueProto``s."""
        version = config.entity_key_serialization_version
        keys = [
            serialize_entity_key(key, entity_key_serialization_version=version)
            for key in entity_keys
        ]
        return self.online_read_serialized(config, table, keys, requested_features)

    def online_read_serialized(
        self,
        config: RepoConfig,
        table: FeatureView,
        keys: list[bytes],
        requested_features: list[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        """``online_read`` of keys serialised already (``string_entity_keys``)."""
        conn = self._get_conn(config)
        table_name = compute_table_id(
            config.project, table, config.registry.enable_online_feature_view_versioning
        )
        placeholders = ",".join("?" * len(keys))
        # ``event_ts + 0`` bypasses the per-row timestamp converter; one conversion per entity.
        rows = conn.execute(
            f"SELECT entity_key, feature_name, value, event_ts + 0 FROM {_quote_id(table_name)} "
            f"WHERE entity_key IN ({placeholders})",
            keys,
        ).fetchall()
        wanted = set(requested_features) if requested_features else None
        found: dict[bytes, tuple[dict[str, ValueProto], list[Any]]] = {}
        parse = ValueProto.FromString
        for key, name, blob, seconds in rows:
            if wanted is not None and name not in wanted:
                continue
            entry = found.get(key)
            if entry is None:
                entry = found[key] = ({}, [seconds])
            elif seconds is not None and (entry[1][0] is None or seconds > entry[1][0]):
                entry[1][0] = seconds
            entry[0][name] = parse(blob)
        result: list[tuple[datetime | None, dict[str, ValueProto] | None]] = []
        for key in keys:
            entry = found.get(key)
            if entry is None:
                result.append((None, None))
            else:
                result.append((_read_timestamp(entry[1][0]), entry[0]))
        return result

    def online_read_columns(
        self,
        config: RepoConfig,
        table: FeatureView,
        keys: list[bytes],
        requested_features: list[str],
    ) -> tuple[list[datetime | None], list[bool], dict[str, list[Any]]]:
        """``online_read_serialized`` as columns of Python values, for a batch of keys.

        Returns per key the event timestamp, whether the store has any requested feature of
        it (``online_read`` reports a key without as ``(None, None)``), and per feature the
        values (``ValueProto``'s set field; None when unset or absent), without building a
        ``ValueProto`` dict per key: small serialised values (counts, flags, timestamps …
        repeat a lot) are decoded once per distinct bytes.
        """
        conn = self._get_conn(config)
        table_name = compute_table_id(
            config.project, table, config.registry.enable_online_feature_view_versioning
        )
        n = len(keys)
        columns: dict[str, list[Any]] = {name: [None] * n for name in requested_features}
        seconds: list[Any] = [None] * n
        found = [False] * n
        if n:
            placeholders = ",".join("?" * n)
            rows = conn.execute(
                f"SELECT entity_key, feature_name, value, event_ts + 0 FROM "
                f"{_quote_id(table_name)} WHERE entity_key IN ({placeholders})",
                keys,
            ).fetchall()
            slot: dict[bytes, int] = {}
            for i, key in enumerate(keys):
                slot.setdefault(key, i)
            decoded = _DECODED
            for key, name, blob, stamp in rows:
                column = columns.get(name)
                if column is None:
                    continue
                i = slot[key]
                if not found[i]:
                    found[i] = True
                    seconds[i] = stamp
                elif stamp is not None and (seconds[i] is None or stamp > seconds[i]):
                    seconds[i] = stamp
                value = decoded.get(blob, decoded)
                if value is decoded:
                    value = _decode_value(blob)
                column[i] = value
            for i, key in enumerate(keys):  # a key listed twice: the same answer twice
                first = slot[key]
                if first != i:
                    found[i], seconds[i] = found[first], seconds[first]
                    for column in columns.values():
                        column[i] = column[first]
        stamps = [_read_timestamp(s) if f else None for s, f in zip(seconds, found, strict=True)]
        return stamps, found, columns


class FastSqliteTable(SqliteTable):
    """Feast's SQLite infra object, creating its table clustered on the primary key."""

    def update(self) -> None:
        with self.conn:
            _create_table(self.conn, self.name)


def _create_table(conn: sqlite3.Connection, table_name: str) -> None:
    """Feast's columns and primary key, ``WITHOUT ROWID`` and no ``<table>_ek`` index.

    The ``_ek`` index Feast adds duplicates the primary key's leading column, so lookups by
    entity key use the primary key either way. Existing tables are kept as they are.
    """
    name = _quote_id(table_name)
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {name} (entity_key BLOB, feature_name TEXT, value BLOB, "
        "value_text TEXT, vector_value BLOB, event_ts timestamp, created_ts timestamp, "
        "PRIMARY KEY(entity_key, feature_name)) WITHOUT ROWID"
    )
    columns = {row[1] for row in conn.execute(f"PRAGMA table_info({name})")}
    if "value_text" not in columns:
        conn.execute(f"ALTER TABLE {name} ADD COLUMN value_text TEXT")


# ---- packed fixed-width features ------------------------------------------------------------
@dataclass(frozen=True)
class _Slot:
    """Where one feature's cells travel: bound per cell (width 0) or inside the packed blob."""

    name: str
    width: int = 0  # bytes per cell in the blob: 5 (float) or 9 (double)
    offset: int = 0  # 1-based position in the blob, as SQL's substr counts
    nullable: bool = False  # null cells hold zero bytes (tag 0) and become an empty value

    def sql_value(self) -> str:
        cut = f"substr(?4, {self.offset}, {self.width})"
        if not self.nullable:
            return cut
        return f"CASE WHEN substr(?4, {self.offset}, 1) = x'00' THEN x'' ELSE {cut} END"


def _as_float_array(column: pa.ChunkedArray, value_type: ValueType) -> np.ndarray | None:
    """The column as float32/float64 numpy (NaN for nulls) if it can travel packed."""
    width = _PACKED_WIDTH.get(value_type)
    if width is None or not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        return None
    target = pa.float32() if value_type == ValueType.FLOAT else pa.float64()
    numbers = pc.cast(column, target, safe=False).to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(numbers.astype("<f4" if width == 5 else "<f8"))


def _slot_for(name: str, numbers: np.ndarray | None, want_text: bool) -> _Slot:
    if numbers is None or want_text:
        return _Slot(name)
    width = 5 if numbers.dtype.itemsize == 4 else 9
    return _Slot(name, width=width, nullable=bool(np.isnan(numbers).any()))


def _assign_offsets(slots: list[_Slot]) -> list[list[_Slot]]:
    """Split into statements of at most 400 features; number blob offsets per statement."""
    groups = []
    for start in range(0, len(slots), _MAX_CELLS_PER_STATEMENT):
        group, offset = [], 1
        for slot in slots[start : start + _MAX_CELLS_PER_STATEMENT]:
            if slot.width:
                slot = _Slot(slot.name, slot.width, offset, slot.nullable)
                offset += slot.width
            group.append(slot)
        groups.append(group)
    return groups


def _pack(
    slots: list[_Slot], floats: dict[str, np.ndarray | None], first: int, rows: int
) -> list[bytes | None]:
    """One blob per row: each packed feature's serialised ValueProto, zero bytes for nulls."""
    if not slots:
        return [None] * rows
    width = sum(slot.width for slot in slots)
    cells = np.empty((rows, width), dtype=np.uint8)
    for slot in slots:
        part = floats[slot.name][first : first + rows]
        start = slot.offset - 1
        cells[:, start] = _TAG_FLOAT if slot.width == 5 else _TAG_DOUBLE
        cells[:, start + 1 : start + slot.width] = part.view(np.uint8).reshape(rows, -1)
        if slot.nullable:
            cells[np.isnan(part), start : start + slot.width] = 0
    return cells.view(f"V{width}").ravel().tolist()


# ---- bulk encoding ------------------------------------------------------------------------
def encode_column(
    column: pa.ChunkedArray | pa.Array, value_type: ValueType, want_text: bool = True
) -> tuple[list[bytes], list[str | None]]:
    """Serialised ``ValueProto`` bytes and ``value_text`` of every cell of one Arrow column.

    Byte-for-byte what Feast's ``python_values_to_proto_values`` + ``SerializeToString`` give
    (nulls and NaN become an empty ``ValueProto``); float, double, int32, int64, bool and string
    columns are encoded in bulk, other types cell by cell through Feast's own converter.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoder = _BULK_ENCODERS.get(value_type)
    if encoder is not None:
        encoded = encoder(column, want_text or value_type not in _NUMERIC_TYPES)
        if encoded is not None:
            return encoded
    protos = python_values_to_proto_values(column.to_numpy(zero_copy_only=False), value_type)
    values = [proto.SerializeToString() for proto in protos]
    texts = [extract_text_and_num(proto, False)[0] for proto in protos]
    return values, texts


def _encode_float(column: pa.Array, want_text: bool, double: bool = False):
    target = pa.float64() if double else pa.float32()
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        return None
    cast = pc.cast(column, target, safe=False)
    numbers = cast.to_numpy(zero_copy_only=False)
    null = np.isnan(numbers)
    width = 8 if double else 4
    cells = np.empty((len(numbers), width + 1), dtype=np.uint8)
    cells[:, 0] = _TAG_DOUBLE if double else _TAG_FLOAT
    cells[:, 1:] = (
        np.ascontiguousarray(numbers.astype("<f8" if double else "<f4"))
        .view(np.uint8)
        .reshape(-1, width)
    )
    values = _fixed_width_cells(cells)
    texts: list[str | None]
    if want_text:
        texts = list(map(str, numbers.astype(np.float64).tolist()))
    else:
        texts = [None] * len(numbers)
    for index in np.flatnonzero(null).tolist():
        values[index] = b""
        texts[index] = None
    return values, texts


def _encode_int(column: pa.Array, want_text: bool, tag: int, arrow_type: pa.DataType):
    if not pa.types.is_integer(column.type):
        return None
    try:
        cast = pc.cast(column, arrow_type)  # safe: overflow raises, then the stock path decides
    except pa.ArrowInvalid:
        return None
    null = np.asarray(cast.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    numbers = cast.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = _varint_cells(tag, numbers.view(np.uint64))
    texts: list[str | None] = (
        list(map(str, numbers.tolist())) if want_text else [None] * len(numbers)
    )
    for index in np.flatnonzero(null).tolist():
        values[index] = b""
        texts[index] = None
    return values, texts


def _encode_bool(column: pa.Array, want_text: bool):
    if not pa.types.is_boolean(column.type):
        return None
    items = column.to_pylist()
    values = [b"" if v is None else (_BOOL_TRUE if v else _BOOL_FALSE) for v in items]
    texts = [None if v is None else str(v) for v in items]
    return values, texts


def _encode_string(column: pa.Array, want_text: bool):
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return None
    items = column.to_pylist()
    values = []
    for text in items:
        if text is None:
            values.append(b"")
        else:
            payload = text.encode("utf-8")
            values.append(bytes((_TAG_STRING,)) + _varint(len(payload)) + payload)
    return values, items


_BULK_ENCODERS: dict[ValueType, Callable[[pa.Array, bool], Any]] = {
    ValueType.FLOAT: lambda c, t: _encode_float(c, t, double=False),
    ValueType.DOUBLE: lambda c, t: _encode_float(c, t, double=True),
    ValueType.INT64: lambda c, t: _encode_int(c, t, _TAG_INT64, pa.int64()),
    ValueType.INT32: lambda c, t: _encode_int(c, t, _TAG_INT32, pa.int32()),
    ValueType.BOOL: _encode_bool,
    ValueType.STRING: _encode_string,
}


def _fixed_width_cells(cells: np.ndarray) -> list[bytes]:
    """Rows of a (n, width) uint8 matrix as bytes (a void view keeps trailing zero bytes)."""
    return np.ascontiguousarray(cells).view(f"V{cells.shape[1]}").ravel().tolist()


def _varint_cells(tag: int, numbers: np.ndarray) -> list[bytes]:
    """``tag`` + protobuf varint of each uint64 (negative ints arrive two's complement)."""
    count = len(numbers)
    cells = np.zeros((count, 11), dtype=np.uint8)
    cells[:, 0] = tag
    lengths = np.ones(count, dtype=np.int64)
    rest = numbers.copy()
    for position in range(10):
        cells[:, 1 + position] = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest = rest >> np.uint64(7)
        lengths += (rest != 0).astype(np.int64)
    continuation = np.arange(10)[None, :] < (lengths[:, None] - 1)
    cells[:, 1:] |= (continuation * 0x80).astype(np.uint8)
    buffer = cells.tobytes()
    starts = np.arange(count, dtype=np.int64) * 11
    ends = starts + 1 + lengths
    return [buffer[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low = number & 0x7F
        number >>= 7
        if number:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _single_key_head(name: str) -> bytes:
    """Feast's (version 3) entity-key bytes up to the value type: one key, its name."""
    encoded_name = name.encode("utf-8")
    return (
        (1).to_bytes(4, "little")
        + ValueType.STRING.value.to_bytes(4, "little")
        + len(encoded_name).to_bytes(4, "little")
        + encoded_name
    )


def string_entity_keys(join_key: str, values: Sequence[str], version: int) -> list[bytes]:
    """Feast's ``serialize_entity_key`` bytes of single string-keyed entities, in bulk."""
    if version < 3:
        return [
            serialize_entity_key(
                EntityKeyProto(join_keys=[join_key],
                               entity_values=[ValueProto(string_val=value)]),
                entity_key_serialization_version=version,
            )
            for value in values
        ]
    prefix = _single_key_head(join_key) + ValueType.STRING.value.to_bytes(4, "little")
    return [
        prefix + len(raw).to_bytes(4, "little") + raw
        for raw in (value.encode("utf-8") for value in values)
    ]


def _serialize_entity_keys(
    data: pa.Table, join_keys: dict[str, ValueType], config: RepoConfig
) -> list[bytes]:
    """Feast's entity-key bytes for every row, built in bulk for one string or integer key."""
    version = config.entity_key_serialization_version
    if len(join_keys) == 1 and version >= 3:
        ((name, value_type),) = join_keys.items()
        column = data.column(name)
        if column.null_count:
            raise ValueError(f"join key column '{name}' has {column.null_count} null value(s)")
        head = _single_key_head(name)
        if value_type == ValueType.STRING and pa.types.is_string(column.type):
            return string_entity_keys(name, column.to_pylist(), version)
        if value_type in (ValueType.INT64, ValueType.INT32) and pa.types.is_integer(column.type):
            width, dtype = (8, "<i8") if value_type == ValueType.INT64 else (4, "<i4")
            prefix = head + value_type.value.to_bytes(4, "little") + width.to_bytes(4, "little")
            numbers = column.to_numpy(zero_copy_only=False).astype(dtype)
            raw = numbers.tobytes()
            return [prefix + raw[i : i + width] for i in range(0, len(raw), width)]
    columns = {
        name: python_values_to_proto_values(
            data.column(name).to_numpy(zero_copy_only=False), value_type
        )
        for name, value_type in join_keys.items()
    }
    names = list(columns)
    return [
        serialize_entity_key(
            EntityKeyProto(join_keys=names, entity_values=list(values)),
            entity_key_serialization_version=version,
        )
        for values in zip(*columns.values(), strict=True)
    ]


def _timestamp_seconds(column: pa.ChunkedArray, name: str) -> list[int]:
    """Unix seconds of each cell exactly as Feast's SQLite datetime adapter stores them."""
    if not pa.types.is_timestamp(column.type):
        raise ValueError(f"timestamp column '{name}' has type {column.type}, not a timestamp")
    if column.null_count:
        raise ValueError(f"timestamp column '{name}' has {column.null_count} null value(s)")
    micros = pc.cast(column, pa.timestamp("us", tz=column.type.tz), safe=False).cast(pa.int64())
    seconds = np.floor_divide(micros.to_numpy(zero_copy_only=False), 1_000_000)
    if _local_time_is_utc():
        return seconds.tolist()
    # Feast's adapter calls ``naive_utc.timestamp()``, which reads naive times as local time.
    unique, inverse = np.unique(seconds, return_inverse=True)
    shifted = np.array(
        [int((_EPOCH + timedelta(seconds=int(s))).timestamp()) for s in unique.tolist()],
        dtype=np.int64,
    )
    return shifted[inverse].tolist()


def _file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; None when there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _local_time_is_utc() -> bool:
    return time.timezone == 0 and time.altzone == 0


def _sqlite_seconds(moment: datetime) -> int:
    """What Feast's ``adapt_datetime_epoch`` stores for ``to_naive_utc(moment)``."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return int(moment.timestamp())


def _read_timestamp(seconds: Any) -> datetime | None:
    """Mirror of Feast's read: ``datetime.fromtimestamp(int(v))`` tagged as UTC."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(int(seconds)).replace(tzinfo=UTC)


def _value_text(value: ValueProto, want_numeric_text: bool) -> str | None:
    kind = value.WhichOneof("val")
    if kind == "string_val":
        return value.string_val
    if kind in ("int64_val", "int32_val", "double_val", "float_val"):
        return str(getattr(value, kind)) if want_numeric_text else None
    if kind == "bool_val":
        return str(value.bool_val)
    return None


# serialised ValueProto bytes → Python value, for small scalar values (``online_read_columns``)
_DECODED: dict[bytes, Any] = {}
_MAX_DECODED = 100_000
_MAX_DECODED_BYTES = 64


def _decode_value(blob: bytes) -> Any:
    """The set field of a serialised ``ValueProto`` (None when unset or null), remembered
    for small scalar values."""
    proto = ValueProto.FromString(blob)
    kind = proto.WhichOneof("val")
    value = None if kind is None or kind == "null_val" else getattr(proto, kind)
    if len(blob) <= _MAX_DECODED_BYTES and type(value) in _SCALAR_TYPES:
        if len(_DECODED) >= _MAX_DECODED:
            _DECODED.clear()
        _DECODED[blob] = value
    return value


_SCALAR_TYPES = frozenset({int, float, str, bool, bytes, type(None)})


def _needs_stock_path(config: RepoConfig) -> bool:
    """Vector columns and ``value_num`` are left to Feast's own (slower) implementation."""
    store = config.online_store
    return bool(
        getattr(store, "vector_enabled", False)
        or getattr(store, "enable_openai_compatible_store", False)
    )


def _chunk_rows(config: RepoConfig) -> int:
    return max(1, int(getattr(config.online_store, "write_chunk_rows", 10_000)))


def _first(row: list[Any]) -> Any:
    return row[0]


def _quote_id(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
