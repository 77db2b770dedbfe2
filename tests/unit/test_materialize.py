"""FastSqliteOnlineStore and the batched materialization path, against real Feast 0.67.

Each test builds a tiny Feast repo in a tmp folder (Parquet sources, DuckDB offline store,
SQLite online store) and reads results back through ``store.get_online_features``.
"""

from __future__ import annotations

import os
import sqlite3
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.infra.online_stores.sqlite import adapt_datetime_epoch
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.repo_config import RepoConfig
from feast.type_map import python_values_to_proto_values
from feast.types import Bool, Float32, Float64, Int32, Int64, String
from feast.value_type import ValueType

from features import fast_online_store as fast
from features.fast_materialize import ARROW_ENGINE_TYPE, materialize_fast, write_frame_fast

warnings.filterwarnings("ignore")

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
FEATURES = {
    "score": Float32,
    "amount": Float64,
    "visits": Int64,
    "rank": Int32,
    "channel": String,
    "active": Bool,
}


def _lead_rows(ids: list[str], when: datetime, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(ids)
    frame = pd.DataFrame(
        {
            "lead_id": ids,
            "score": rng.standard_normal(n).astype(np.float32),
            "amount": rng.standard_normal(n) * 1e3,
            "visits": pd.array(rng.integers(-(2**40), 2**40, n), dtype="Int64"),
            "rank": pd.array(rng.integers(-500, 500, n), dtype="Int32"),
            "channel": [f"ch-é{i % 3}" for i in range(n)],
            "active": pd.array(rng.integers(0, 2, n).astype(bool), dtype="boolean"),
        }
    )
    frame["event_timestamp"] = pd.Series([when] * n, dtype="datetime64[us, UTC]")
    frame["created"] = frame["event_timestamp"]
    return frame


def _with_nulls(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[0, ["score", "amount", "visits", "rank", "channel", "active"]] = None
    frame.loc[1, "score"] = np.nan
    return frame


def _make_store(
    root: Path,
    frame: pd.DataFrame,
    online_type: str = fast.FAST_SQLITE_TYPE,
    batch_engine: str = "local",
    **online_options: object,
) -> tuple[FeatureStore, list]:
    root.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(root / "leads.parquet", index=False)
    pd.DataFrame(
        {
            "person_id": ["p1", "p2"],
            "orders": np.array([3.0, 4.0], dtype=np.float32),
            "event_timestamp": pd.Series([T0, T0], dtype="datetime64[us, UTC]"),
        }
    ).to_parquet(root / "persons.parquet", index=False)
    lead = Entity(name="lead", join_keys=["lead_id"], value_type=ValueType.STRING)
    person = Entity(name="person", join_keys=["person_id"], value_type=ValueType.STRING)
    lead_view = FeatureView(
        name="lead_features",
        entities=[lead],
        ttl=timedelta(days=3650),
        schema=[Field(name="lead_id", dtype=String)]
        + [Field(name=name, dtype=dtype) for name, dtype in FEATURES.items()],
        source=FileSource(
            name="leads",
            path=str(root / "leads.parquet"),
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
        ),
    )
    person_view = FeatureView(
        name="person_features",
        entities=[person],
        ttl=timedelta(days=3650),
        schema=[Field(name="person_id", dtype=String), Field(name="orders", dtype=Float32)],
        source=FileSource(
            name="persons", path=str(root / "persons.parquet"), timestamp_field="event_timestamp"
        ),
    )
    service = FeatureService(name="lead_person", features=[lead_view, person_view])
    objects = [lead, person, lead_view, person_view, service]
    store = FeatureStore(config=_config(root, online_type, batch_engine, **online_options))
    store.apply(objects)
    return store, objects


def _config(
    root: Path, online_type: str, batch_engine: str = "local", **online_options: object
) -> RepoConfig:
    return RepoConfig(
        project="leadtest",
        provider="local",
        registry=str(root / "registry.db"),
        offline_store={"type": "duckdb"},
        online_store={"type": online_type, "path": str(root / "online.db"), **online_options},
        batch_engine=batch_engine,
        entity_key_serialization_version=3,
        repo_path=root,
    )


def _read(store: FeatureStore, ids: list[str]) -> pd.DataFrame:
    refs = [f"lead_features:{name}" for name in FEATURES]
    rows = store.get_online_features(features=refs, entity_rows=[{"lead_id": i} for i in ids])
    return pd.DataFrame(rows.to_dict()).set_index("lead_id").loc[ids]


def _expected(frame: pd.DataFrame) -> pd.DataFrame:
    """Latest row per lead; what Feast should serve."""
    latest = frame.sort_values("event_timestamp").groupby("lead_id").tail(1)
    return latest.set_index("lead_id")


def _assert_served(served: pd.DataFrame, expected: pd.DataFrame) -> None:
    for lead_id in expected.index:
        for name in FEATURES:
            want = expected.at[lead_id, name]
            got = served.at[lead_id, name]
            if pd.isna(want):
                assert got is None or pd.isna(got), (lead_id, name, got)
            elif name == "score":
                assert got == pytest.approx(float(want), rel=1e-6), (lead_id, name)
            else:
                assert got == want, (lead_id, name, got, want)


# ---- byte compatibility ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("array", "value_type"),
    [
        (pa.array([1.5, None, float("nan"), -0.0, 3.4e38, 1e-45], pa.float32()), ValueType.FLOAT),
        (pa.array([0.1, None, float("nan"), -2.5e300, 5e-324]), ValueType.DOUBLE),
        (pa.array([1, -1, None, 0, 2**53, -(2**53), 127, 128]), ValueType.INT64),
        (pa.array([2**63 - 1, -(2**63), 0, 300]), ValueType.INT64),
        (pa.array([5, -5, None, 0, 2**31 - 1, -(2**31)], pa.int32()), ValueType.INT32),
        (pa.array([True, False, None]), ValueType.BOOL),
        (pa.array(["x", "", None, "é" * 200]), ValueType.STRING),
        (pa.array([3, None, -7]), ValueType.FLOAT),  # integers declared as Float32
        (
            pa.array([T0, None, datetime(1970, 1, 1, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
            ValueType.UNIX_TIMESTAMP,
        ),
    ],
)
def test_bulk_encoding_matches_feast_bytes_and_text(array: pa.Array, value_type: ValueType):
    values, texts = fast.encode_column(array, value_type)
    protos = python_values_to_proto_values(array.to_numpy(zero_copy_only=False), value_type)
    assert values == [proto.SerializeToString() for proto in protos]
    assert texts == [extract_text_and_num(proto, False)[0] for proto in protos]


def test_entity_keys_match_feast_serialization():
    version = RepoConfig(
        project="p", registry="r.db", provider="local", entity_key_serialization_version=3
    )
    cases = [
        ({"lead_id": ValueType.STRING}, pa.table({"lead_id": ["a", "é", "lead-000123"]})),
        ({"pid": ValueType.INT64}, pa.table({"pid": pa.array([-3, 0, 2**40])})),
        ({"pid": ValueType.INT32}, pa.table({"pid": pa.array([-3, 7], pa.int32())})),
        (
            {"b": ValueType.STRING, "a": ValueType.INT64},
            pa.table({"b": ["x", "y"], "a": pa.array([1, 2])}),
        ),
    ]
    for join_keys, table in cases:
        got = fast._serialize_entity_keys(table, join_keys, version)
        protos = {
            name: python_values_to_proto_values(table.column(name).to_numpy(), value_type)
            for name, value_type in join_keys.items()
        }
        want = [
            serialize_entity_key(
                EntityKeyProto(join_keys=list(protos), entity_values=list(values)), 3
            )
            for values in zip(*protos.values(), strict=True)
        ]
        assert got == want


def test_timestamps_match_feast_adapter_in_a_non_utc_zone():
    stamps = [T0, datetime(2024, 7, 1, 23, 59, 59, 999_999, tzinfo=UTC)]
    column = pa.chunked_array([pa.array(stamps, pa.timestamp("us", tz="UTC"))])
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Shanghai"
    time.tzset()
    try:
        got = fast._timestamp_seconds(column, "event_timestamp")
        want = [adapt_datetime_epoch(s.astimezone(UTC).replace(tzinfo=None)) for s in stamps]
    finally:
        if previous is None:
            os.environ.pop("TZ")
        else:
            os.environ["TZ"] = previous
        time.tzset()
    assert got == want


# ---- round trips through Feast --------------------------------------------------------------
def test_materialize_fast_serves_latest_row_per_entity(tmp_path: Path):
    ids = [f"lead-{i:03d}" for i in range(30)]
    old = _lead_rows(ids, T0 - timedelta(hours=2), seed=1)
    new = _with_nulls(_lead_rows(ids[:20], T0, seed=2))  # 10 leads only have old rows
    frame = pd.concat([new, old], ignore_index=True)
    store, _ = _make_store(tmp_path, frame)

    stats = materialize_fast(store, T0 - timedelta(days=1), T0 + timedelta(hours=1))

    assert stats.rows == 30 + 2  # latest row per lead + both persons
    _assert_served(_read(store, ids), _expected(frame))
    intervals = store.get_feature_view("lead_features").materialization_intervals
    assert intervals and intervals[-1][1] == T0 + timedelta(hours=1)


def test_older_rows_never_overwrite_newer_ones(tmp_path: Path):
    ids = [f"lead-{i:03d}" for i in range(10)]
    current = _lead_rows(ids, T0, seed=3)
    store, _ = _make_store(tmp_path, current)
    materialize_fast(store, T0 - timedelta(days=1), T0 + timedelta(hours=1))

    stale = _lead_rows(ids, T0 - timedelta(days=2), seed=4)
    write_frame_fast(store, "lead_features", stale)  # arrow path
    store.write_to_online_store("lead_features", stale)  # Feast's proto path, our store
    _assert_served(_read(store, ids), _expected(current))

    newer = _lead_rows(ids[:4], T0 + timedelta(minutes=5), seed=5)
    write_frame_fast(store, "lead_features", newer)
    _assert_served(_read(store, ids), _expected(pd.concat([current, newer])))


def test_full_reload_overwrites_newer_rows(tmp_path: Path):
    """A full reload gives back exactly the offline rows, whatever was written since (the
    service's lead recorder writes rows newer than the build's)."""
    ids = [f"lead-{i:03d}" for i in range(10)]
    offline = _lead_rows(ids, T0, seed=3)
    store, _ = _make_store(tmp_path, offline)
    materialize_fast(store, T0 - timedelta(days=1), T0 + timedelta(hours=1))
    newer = _lead_rows(ids[:4], T0 + timedelta(minutes=5), seed=5)
    write_frame_fast(store, "lead_features", newer)
    materialize_fast(store, T0 - timedelta(days=1), T0 + timedelta(hours=1))
    _assert_served(_read(store, ids), _expected(pd.concat([offline, newer])))  # newer win
    materialize_fast(store, T0 - timedelta(days=1), T0 + timedelta(hours=1), overwrite=True)
    _assert_served(_read(store, ids), _expected(offline))


def test_a_connection_notices_its_file_was_deleted(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch):
    """A deleted online-store file reads as a missing store, not as the unlinked file's rows."""
    ids = [f"lead-{i:03d}" for i in range(5)]
    store, _ = _make_store(tmp_path, _lead_rows(ids, T0, seed=8))
    materialize_fast(store, T0 - timedelta(days=1), T0 + timedelta(hours=1))
    online = store._get_provider().online_store
    conn = online._get_conn(store.config)
    path = Path(online._get_db_path(store.config))
    for name in path.parent.glob(path.name + "*"):
        name.unlink()
    monkeypatch.setattr(fast, "FILE_CHECK_SECONDS", 0.0)
    assert online._get_conn(store.config) is not conn  # reopened on the path
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        _read(store, ids)


def test_incremental_materialization_overwrites_with_newer_rows(tmp_path: Path):
    ids = [f"lead-{i:03d}" for i in range(12)]
    first = _lead_rows(ids, T0, seed=6)
    second = _lead_rows(ids[:5], T0 + timedelta(days=1), seed=7)
    store, _ = _make_store(tmp_path, pd.concat([first, second], ignore_index=True))

    materialize_fast(store, T0 - timedelta(days=1), T0 + timedelta(hours=1))
    _assert_served(_read(store, ids), _expected(first))
    materialize_fast(store, T0 + timedelta(hours=1), T0 + timedelta(days=2))
    _assert_served(_read(store, ids), _expected(pd.concat([first, second])))


def test_stock_store_reads_what_the_fast_store_wrote(tmp_path: Path):
    ids = [f"lead-{i:03d}" for i in range(15)]
    frame = _with_nulls(_lead_rows(ids, T0, seed=8))
    fast_store, _ = _make_store(tmp_path, frame)
    materialize_fast(fast_store, T0 - timedelta(days=1), T0 + timedelta(hours=1))

    stock_store = FeatureStore(config=_config(tmp_path, "sqlite"))
    stock = _read(stock_store, ids)
    ours = _read(fast_store, ids)
    pd.testing.assert_frame_equal(stock, ours)
    _assert_served(stock, _expected(frame))


def test_database_rows_match_the_stock_store_byte_for_byte(tmp_path: Path):
    ids = [f"lead-{i:03d}" for i in range(15)]
    frame = _with_nulls(_lead_rows(ids, T0, seed=9))
    stock_store, _ = _make_store(tmp_path / "stock", frame, online_type="sqlite")
    stock_store.write_to_online_store("lead_features", frame)
    fast_store, _ = _make_store(tmp_path / "fast", frame, numeric_value_text=True)
    write_frame_fast(fast_store, "lead_features", frame)
    proto_store, _ = _make_store(tmp_path / "proto", frame, numeric_value_text=True)
    proto_store.write_to_online_store("lead_features", frame)
    lean_store, _ = _make_store(tmp_path / "lean", frame)  # default: no text for numbers
    write_frame_fast(lean_store, "lead_features", frame)

    def dump(root: Path) -> list[tuple]:
        with sqlite3.connect(root / "online.db") as conn:
            return conn.execute(
                "SELECT entity_key, feature_name, value, value_text, event_ts, created_ts "
                "FROM leadtest_lead_features ORDER BY entity_key, feature_name"
            ).fetchall()

    stock_rows = dump(tmp_path / "stock")
    assert len(stock_rows) == len(ids) * len(FEATURES)
    assert dump(tmp_path / "fast") == stock_rows
    assert dump(tmp_path / "proto") == stock_rows
    numeric = {"score", "amount", "visits", "rank"}
    lean_expected = [
        (*row[:3], None if row[1] in numeric else row[3], *row[4:]) for row in stock_rows
    ]
    assert dump(tmp_path / "lean") == lean_expected


def test_feast_materialize_through_the_arrow_engine(tmp_path: Path):
    ids = [f"lead-{i:03d}" for i in range(10)]
    frame = _lead_rows(ids, T0, seed=10)
    store, _ = _make_store(tmp_path, frame, batch_engine=ARROW_ENGINE_TYPE)
    store.materialize(T0 - timedelta(days=1), T0 + timedelta(hours=1))
    _assert_served(_read(store, ids), _expected(frame))
    service = store.get_feature_service("lead_person")
    served = store.get_online_features(
        features=service, entity_rows=[{"lead_id": ids[0], "person_id": "p2"}]
    ).to_dict()
    assert served["orders"] == [4.0]
    assert served["visits"] == [int(frame.loc[0, "visits"])]


def test_online_read_returns_only_requested_features(tmp_path: Path):
    ids = ["lead-a", "lead-b"]
    store, objects = _make_store(tmp_path, _lead_rows(ids, T0, seed=11))
    write_frame_fast(store, "lead_features", _lead_rows(ids, T0, seed=11))
    online = fast.FastSqliteOnlineStore()

    def key(lead_id: str) -> EntityKeyProto:
        (value,) = python_values_to_proto_values(
            np.array([lead_id], dtype=object), ValueType.STRING
        )
        return EntityKeyProto(join_keys=["lead_id"], entity_values=[value])

    result = online.online_read(
        store.config, objects[2], [key("lead-b"), key("nobody")], ["visits", "channel"]
    )
    assert sorted(result[0][1]) == ["channel", "visits"]
    assert result[0][0] == T0
    assert result[1] == (None, None)


# ---- clear errors ---------------------------------------------------------------------------
def test_bad_input_names_the_problem(tmp_path: Path):
    ids = ["lead-a"]
    frame = _lead_rows(ids, T0, seed=12)
    store, _ = _make_store(tmp_path, frame)
    with pytest.raises(ValueError, match="visits"):
        write_frame_fast(store, "lead_features", frame.drop(columns=["visits"]))
    with pytest.raises(ValueError, match="no_such_view"):
        materialize_fast(store, T0, T0 + timedelta(hours=1), feature_views=["no_such_view"])
    with pytest.raises(ValueError, match="after end"):
        materialize_fast(store, T0 + timedelta(hours=1), T0)
    with pytest.raises(ValueError, match="event_timestamp"):
        write_frame_fast(store, "lead_features", frame.assign(event_timestamp="yesterday"))


def test_tables_are_clustered_whether_created_by_apply_or_by_feast_plan(tmp_path: Path):
    store, _ = _make_store(tmp_path, _lead_rows(["lead-a"], T0, seed=13))
    planned = fast.FastSqliteOnlineStore().plan(store.config, store.registry.proto())
    assert {type(item) for item in planned} == {fast.FastSqliteTable}
    planned[0].teardown()  # drop the table store.apply made, then let the infra object make it
    planned[0].update()
    with sqlite3.connect(tmp_path / "online.db") as conn:
        ddl = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    assert set(ddl) == {"leadtest_lead_features", "leadtest_person_features"}
    assert all("WITHOUT ROWID" in sql for sql in ddl.values())


def test_wide_views_split_into_several_statements(tmp_path: Path):
    """450 features (> 400 per statement), packed doubles mixed with bound ints and nulls."""
    names = [f"f{i:03d}" for i in range(450)]
    dtypes = {name: Int64 if i % 7 == 0 else Float64 for i, name in enumerate(names)}
    rng = np.random.default_rng(14)
    frame = pd.DataFrame(
        {
            name: pd.array(rng.integers(-9, 9, 4), dtype="Int64")
            if dtypes[name] is Int64
            else rng.standard_normal(4)
            for name in names
        }
    )
    frame.loc[2, names[1]] = np.nan
    frame.insert(0, "lead_id", ["w0", "w1", "w2", "w3"])
    frame["event_timestamp"] = pd.Series([T0] * 4, dtype="datetime64[us, UTC]")
    frame.to_parquet(tmp_path / "wide.parquet", index=False)
    lead = Entity(name="lead", join_keys=["lead_id"], value_type=ValueType.STRING)
    view = FeatureView(
        name="wide",
        entities=[lead],
        schema=[Field(name="lead_id", dtype=String)]
        + [Field(name=name, dtype=dtype) for name, dtype in dtypes.items()],
        source=FileSource(path=str(tmp_path / "wide.parquet"), timestamp_field="event_timestamp"),
    )
    store = FeatureStore(config=_config(tmp_path, fast.FAST_SQLITE_TYPE))
    store.apply([lead, view])
    write_frame_fast(store, "wide", frame)
    served = store.get_online_features(
        features=[f"wide:{name}" for name in names],
        entity_rows=[{"lead_id": i} for i in frame["lead_id"]],
    ).to_dict()
    for name in names:
        want = [None if pd.isna(v) else v for v in frame[name]]
        assert served[name] == want, name
