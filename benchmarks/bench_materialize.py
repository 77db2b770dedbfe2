"""Materialization throughput into the SQLite online store: stock Feast paths vs ours.

Builds a throw-away Feast repo (one ``lead`` entity, a Parquet ``FileSource`` read by the DuckDB
offline store, one feature view of N float features) in a temporary folder and, in one run,
times on the same data:

* ``store.materialize`` with Feast's stock ``SqliteOnlineStore`` (what ``feast materialize`` runs);
* ``store.write_to_online_store`` with the stock store;
* ``store.write_to_online_store`` with ``FastSqliteOnlineStore`` (fast ``online_write_batch``,
  Feast still builds the protos);
* ``store.materialize`` with ``FastSqliteOnlineStore`` + ``ArrowBatchComputeEngine``;
* ``materialize_fast`` and ``write_frame_fast`` (Arrow-vectorised, through the online store).

Prints a table and one JSON line. ``--profile`` adds a cProfile of the stock write path.
``--online redis`` times the stock paths into Feast's Redis store (db 12, flushed afterwards) and
adds the mean bytes of one entity key (``redis_bytes_per_entity``).

    .venv/bin/python benchmarks/bench_materialize.py --rows 100000 --features 40
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import pstats
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource  # noqa: E402
from feast.repo_config import RepoConfig  # noqa: E402
from feast.types import Float32, String  # noqa: E402
from feast.value_type import ValueType  # noqa: E402

from features.fast_materialize import materialize_fast, write_frame_fast  # noqa: E402

STOCK_STORE = "sqlite"
FAST_STORE = "features.fast_online_store.FastSqliteOnlineStore"
FAST_ENGINE = "features.fast_materialize.ArrowBatchComputeEngine"
BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)
TEXT_ON = {"numeric_value_text": True}  # rows byte-identical to Feast's (value_text of numbers)
REDIS_STORE = "redis"
REDIS_BENCH_DB = "127.0.0.1:6379,db=12"  # ``--online redis``: this database is flushed after a run


@dataclass
class DemoRepo:
    """A throw-away Feast repo: the store, its feature views and the offline frames."""

    store: FeatureStore
    lead_view: FeatureView
    person_view: FeatureView
    service: FeatureService
    lead_frame: pd.DataFrame
    person_frame: pd.DataFrame


def make_frame(key: str, prefix: str, rows: int, features: int, seed: int) -> pd.DataFrame:
    """``rows`` entities × ``features`` float32 columns with one event timestamp each."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((rows, features), dtype=np.float32)
    frame = pd.DataFrame(values, columns=[f"{prefix}_{i:03d}" for i in range(features)])
    frame.insert(0, key, [f"{prefix}-{i:07d}" for i in range(rows)])
    # microsecond resolution: DuckDB cannot cast Parquet TIMESTAMPTZ_NS in Feast's filters
    stamps = (BASE_TIME + pd.to_timedelta(rng.integers(0, 86_400, rows), unit="s")).astype(
        "datetime64[us, UTC]"
    )
    frame["event_timestamp"] = stamps
    frame["created"] = stamps
    return frame


def build_demo_repo(
    root: Path,
    rows: int,
    features: int,
    online_store_type: str = FAST_STORE,
    batch_engine: str | None = None,
    person_rows: int | None = None,
    person_features: int | None = None,
    frames: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    online_options: dict | None = None,
) -> DemoRepo:
    """Write Parquet sources under ``root``, declare and apply a lead + person repo."""
    root.mkdir(parents=True, exist_ok=True)
    person_rows = rows if person_rows is None else person_rows
    person_features = features if person_features is None else person_features
    if frames is None:
        frames = (
            make_frame("lead_id", "lead", rows, features, seed=1),
            make_frame("person_id", "person", person_rows, person_features, seed=2),
        )
    lead_frame, person_frame = frames
    lead_frame.to_parquet(root / "lead_stats.parquet", index=False)
    person_frame.to_parquet(root / "person_stats.parquet", index=False)

    lead = Entity(name="lead", join_keys=["lead_id"], value_type=ValueType.STRING)
    person = Entity(name="person", join_keys=["person_id"], value_type=ValueType.STRING)

    def view(name: str, entity: Entity, key: str, frame: pd.DataFrame) -> FeatureView:
        source = FileSource(
            name=f"{name}_source",
            path=str(root / f"{name}.parquet"),
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
        )
        columns = [c for c in frame.columns if c not in (key, "event_timestamp", "created")]
        return FeatureView(
            name=name,
            entities=[entity],
            ttl=timedelta(days=3650),
            schema=[Field(name=key, dtype=String)]
            + [Field(name=c, dtype=Float32) for c in columns],
            source=source,
            online=True,
        )

    lead_view = view("lead_stats", lead, "lead_id", lead_frame)
    person_view = view("person_stats", person, "person_id", person_frame)
    service = FeatureService(name="lead_and_person", features=[lead_view, person_view])
    config = RepoConfig(
        project="bench",
        provider="local",
        registry=str(root / "registry.db"),
        offline_store={"type": "duckdb"},
        online_store={
            "type": online_store_type,
            **({} if online_store_type == REDIS_STORE else {"path": str(root / "online.db")}),
            **(online_options or {}),
        },
        batch_engine=batch_engine or "local",
        entity_key_serialization_version=3,
        repo_path=root,
    )
    store = FeatureStore(config=config)
    store.apply([lead, person, lead_view, person_view, service])
    return DemoRepo(store, lead_view, person_view, service, lead_frame, person_frame)


def redis_client(connection_string: str):  # noqa: ANN201 (redis is imported lazily)
    """A redis-py client for a Feast ``host:port,db=N`` connection string."""
    import redis

    host, port = connection_string.split(",")[0].split(":")
    db = int(dict(p.split("=") for p in connection_string.split(",")[1:]).get("db", 0))
    return redis.Redis(host=host, port=int(port), db=db)


def redis_bytes_per_key(connection_string: str, sample: int = 200) -> float:
    """Mean ``MEMORY USAGE`` of up to ``sample`` keys of the Redis database (one key per entity)."""
    client = redis_client(connection_string)
    keys = [key for _, key in zip(range(sample), client.scan_iter(count=sample), strict=False)]
    return sum(client.memory_usage(key, samples=0) for key in keys) / max(len(keys), 1)


def flush_redis(connection_string: str) -> None:
    """``FLUSHDB`` the benchmark's Redis database."""
    redis_client(connection_string).flushdb()


def _timed(action: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and process-CPU seconds of ``action`` (CPU is steadier on a shared machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def _window() -> tuple[datetime, datetime]:
    return BASE_TIME - timedelta(days=1), BASE_TIME + timedelta(days=2)


def run_benchmark(
    rows: int, features: int, skip_stock_materialize: bool = False, redis: str | None = None
) -> dict:
    """Time every path on the same frame, each into a fresh online DB; return the figures.

    ``redis`` (a Feast ``connection_string``): Feast's stock Redis store instead of SQLite.
    """
    frames = (
        make_frame("lead_id", "lead", rows, features, seed=1),
        make_frame("person_id", "person", 1, 1, seed=2),
    )
    start, end = _window()
    lead_frame = frames[0]
    write_fast = lambda r: write_frame_fast(r.store, "lead_stats", lead_frame)  # noqa: E731
    write_stock = lambda r: r.store.write_to_online_store("lead_stats", lead_frame)  # noqa: E731
    engine_materialize = lambda r: r.store.materialize(  # noqa: E731
        start, end, feature_views=["lead_stats"]
    )
    cases: list[tuple[str, str, str | None, dict, Callable[[DemoRepo], object]]] = [
        ("stock write_to_online_store", STOCK_STORE, None, {}, write_stock),
        ("fast store + write_to_online_store", FAST_STORE, None, {}, write_stock),
        ("write_frame_fast", FAST_STORE, None, {}, write_fast),
        ("write_frame_fast, numeric_value_text", FAST_STORE, None, TEXT_ON, write_fast),
        ("fast engine: store.materialize", FAST_STORE, FAST_ENGINE, {}, engine_materialize),
        (
            "materialize_fast",
            FAST_STORE,
            None,
            {},
            lambda r: materialize_fast(r.store, start, end, feature_views=["lead_stats"]),
        ),
    ]
    if not skip_stock_materialize:
        cases.insert(0, ("stock feast materialize", STOCK_STORE, None, {}, engine_materialize))
    if redis:  # no fast Redis store: the stock paths, and the bytes each entity key takes
        stock = ("stock feast materialize", "stock write_to_online_store", "write_frame_fast")
        options = {"connection_string": redis}
        cases = [(c[0], REDIS_STORE, None, options, c[4]) for c in cases if c[0] in stock]
    key_bytes: dict[str, float] = {}
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_mat_") as tmp:
        for index, (label, store_type, engine, options, action) in enumerate(cases):
            repo = build_demo_repo(
                Path(tmp) / f"case{index}",
                rows,
                features,
                store_type,
                engine,
                frames=frames,
                online_options=options,
            )
            results[label] = _timed(lambda repo=repo, action=action: action(repo))
            _check_one_row(repo, rows)
            if redis:
                key_bytes[label] = round(redis_bytes_per_key(redis))
            repo.store.teardown()  # free the disk before the next case
    stock_write = results["stock write_to_online_store"]
    stock_materialize = results.get("stock feast materialize")
    table = []
    for label, (wall, cpu) in results.items():
        row = {
            "path": label,
            "seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2),
            "rows_per_s": round(rows / wall),
            "speedup_vs_stock_write": round(stock_write[0] / wall, 1),
            "cpu_speedup_vs_stock_write": round(stock_write[1] / cpu, 1),
        }
        if stock_materialize is not None:
            row["speedup_vs_stock_materialize"] = round(stock_materialize[0] / wall, 1)
            row["cpu_speedup_vs_stock_materialize"] = round(stock_materialize[1] / cpu, 1)
        if label in key_bytes:
            row["redis_bytes_per_entity"] = key_bytes[label]
        table.append(row)
    return {"rows": rows, "features": features, "cells": rows * features, "results": table}


def _check_one_row(repo: DemoRepo, rows: int) -> None:
    """Read back the last entity through Feast: a benchmark of a broken write is worthless."""
    frame = repo.lead_frame
    last = frame.iloc[rows - 1]
    feature = frame.columns[1]
    got = repo.store.get_online_features(
        features=[f"lead_stats:{feature}"], entity_rows=[{"lead_id": last["lead_id"]}]
    ).to_dict()[feature][0]
    if got is None or abs(got - float(last[feature])) > 1e-6:
        raise RuntimeError(f"read-back mismatch for {feature}: {got} != {last[feature]}")


def profile_stock_write(rows: int, features: int, top: int = 25) -> str:
    """cProfile of stock ``write_to_online_store`` (Feast SqliteOnlineStore), sorted by tottime."""
    frames = (
        make_frame("lead_id", "lead", rows, features, seed=1),
        make_frame("person_id", "person", 1, 1, seed=2),
    )
    with tempfile.TemporaryDirectory(prefix="bench_prof_") as tmp:
        repo = build_demo_repo(Path(tmp), rows, features, STOCK_STORE, frames=frames)
        profiler = cProfile.Profile()
        profiler.enable()
        repo.store.write_to_online_store("lead_stats", frames[0])
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="entity rows (default 100000)")
    parser.add_argument("--features", type=int, default=40, help="float features (default 40)")
    parser.add_argument(
        "--skip-stock-materialize", action="store_true", help="skip the slowest (stock) path"
    )
    parser.add_argument("--profile", action="store_true", help="also cProfile the stock write")
    parser.add_argument(
        "--online",
        choices=("sqlite", "redis"),
        default="sqlite",
        help=f"redis: Feast's Redis store on {REDIS_BENCH_DB} (flushed afterwards)",
    )
    args = parser.parse_args(argv)
    if args.rows < 1 or args.features < 1:
        parser.error("--rows and --features must be positive")
    logging.getLogger("feast").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    if args.profile:
        print(profile_stock_write(args.rows, args.features))
    redis = REDIS_BENCH_DB if args.online == "redis" else None
    try:
        report = run_benchmark(args.rows, args.features, args.skip_stock_materialize, redis)
    finally:
        if redis:
            flush_redis(redis)
    print(f"\n{args.rows} rows x {args.features} float features ({report['cells']} cells)")
    print(
        f"{'path':38} {'wall s':>7} {'cpu s':>7} {'rows/s':>7} {'x write':>8} {'x mat':>6} "
        f"{'cpu x write':>11} {'cpu x mat':>9}"
    )
    for row in report["results"]:
        print(
            f"{row['path']:38} {row['seconds']:7.2f} {row['cpu_seconds']:7.2f} "
            f"{row['rows_per_s']:7d} {row['speedup_vs_stock_write']:8.1f} "
            f"{row.get('speedup_vs_stock_materialize', float('nan')):6.1f} "
            f"{row['cpu_speedup_vs_stock_write']:11.1f} "
            f"{row.get('cpu_speedup_vs_stock_materialize', float('nan')):9.1f}"
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
