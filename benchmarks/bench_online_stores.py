"""Serving latency with the Redis vs the SQLite online store, side by side in one run.

One built work folder (``--build`` makes a small one: generate → One ID → features → train) has
its features in the SQLite online store (embedded profile). The same offline tables are
materialized, up to the same end, into Redis under the production profile (throw-away
``--redis-url`` database, flushed before and after; throw-away PostgreSQL databases
``bench_stores_<hex>_*`` for the Feast SQL registry and the prediction log, dropped after; the
champion is the work folder's own: ``LEADSCORE_MLFLOW_TRACKING_URI`` points both at it). Then per
store:

1. in-process online read (``serving.fast_online_reader.OnlineFeatureReader.read_snapshots``,
   what ``/predict`` runs against the store): single rows and ``--batch-size``-row batches, p50/p99;
2. served ``POST /predict`` at a fixed moderate rate (``benchmarks/bench_serving.py``'s server
   start and fixed-rate load generator): p50/p99.

Prints a table and writes ``reports/bench_online_stores.json`` in the work folder. Timings on a
shared 2-core machine are noisy: compare the two columns of one run, not runs.

    .venv/bin/python benchmarks/bench_online_stores.py --workdir /tmp/stores_wd --build
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_serving  # noqa: E402 - after the path set-up

from leadscore.config import Settings, get_settings, load_settings  # noqa: E402

BUILD_STAGES = ("generate", "identity", "features", "train")


def build_workdir(settings: Settings, leads: int, seed: int, trials: int) -> None:
    """The demo's build stages (no serving, no drift) on the embedded profile."""
    from pipelines.demo import STAGES, DemoContext

    settings.ensure_dirs()
    ctx = DemoContext(settings=settings, n_leads=leads, seed=seed, trials=trials)
    for name, stage in STAGES:
        if name in BUILD_STAGES:
            ctx.results[name] = stage(ctx)


def use_env(env: dict[str, str]) -> Settings:
    """Set ``env`` in this process (the started servers inherit it) and reload the settings."""
    os.environ.update(env)
    get_settings.cache_clear()
    return load_settings()


def read_latencies(settings: Settings, persons: list[str], calls: int, batch_size: int,
                   batch_repeats: int) -> dict[str, Any]:
    """In-process online reads of single persons and of ``batch_size``-person batches."""
    from features.store import get_store
    from serving.fast_online_reader import OnlineFeatureReader

    reader = OnlineFeatureReader(get_store(settings), settings)
    rng = np.random.default_rng(0)
    try:
        singles = [persons[int(i)] for i in rng.integers(0, len(persons), calls)]
        for pid in singles[:50]:  # warm-up
            reader.read_snapshots([pid])
        times = []
        known = 0
        for pid in singles:
            started = time.perf_counter()
            _, hits = reader.read_snapshots([pid])
            times.append(time.perf_counter() - started)
            known += hits[0]
        batch_times = []
        for _ in range(batch_repeats + 1):
            batch = [persons[int(i)] for i in rng.integers(0, len(persons), batch_size)]
            started = time.perf_counter()
            reader.read_snapshots(batch)
            batch_times.append(time.perf_counter() - started)
    finally:
        reader.close()
    return {"single": {**bench_serving.percentiles(times), "known_share": known / calls},
            "batch": {**bench_serving.percentiles(batch_times[1:]), "size": batch_size}}


def served_latency(workdir: Path, rate: float, duration: float, connections: int,
                   generator: str) -> dict[str, Any]:
    """Served ``POST /predict`` at ``rate``/s for ``duration`` s (server started and stopped)."""
    process, url = bench_serving.start_server(workdir)
    try:
        return bench_serving.fixed_rate(url, rate, duration, connections, generator)
    finally:
        bench_serving.stop_server(process)


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """Side-by-side table: one row per measurement, one column per store."""
    rows = [("online read, 1 row", "read", "single"), ("online read, batch", "read", "batch"),
            ("served POST /predict", "served", None)]
    stores = list(results)
    print(f"{'measurement':<24}" + "".join(f"{s + ' p50/p99 ms':>26}" for s in stores))
    for label, part, key in rows:
        cells = []
        for store in stores:
            figures = results[store][part] if key is None else results[store][part][key]
            cells.append(f"{figures.get('p50_ms', float('nan')):>12.3f} / "
                         f"{figures.get('p99_ms', float('nan')):<10.3f}")
        print(f"{label:<24}" + "".join(f"{c:>26}" for c in cells))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--build", action="store_true",
                        help="build the work folder first when it has no features yet")
    parser.add_argument("--leads", type=int, default=3000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14",
                        help="a Redis database this run may flush (not the shared db 0)")
    parser.add_argument("--calls", type=int, default=2000, help="single-row reads per store")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--batch-repeats", type=int, default=20)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    workdir = args.workdir.expanduser().resolve()
    if args.redis_url.rstrip("/").endswith(":6379") or args.redis_url.endswith("/0"):
        raise SystemExit("--redis-url must name a Redis database other than 0 (it is flushed)")

    from features.build import materialize
    from leadscore.profiles import drop_databases, redis_client, require_services
    from pipelines.demo import replay_start

    for key in ("MLFLOW_TRACKING_URI", "LEADSCORE_PROFILE", "LEADSCORE_DATABASE_PREFIX"):
        os.environ.pop(key, None)
    os.environ["BENTOML_HOME"] = str(workdir / "bentoml_home")
    embedded = use_env({"LEADSCORE_WORKDIR": str(workdir)})
    if not (embedded.features_dir / "person_behaviour.parquet").exists():
        if not args.build:
            raise SystemExit(f"{workdir} has no features: pass --build (or run `leadscore demo`)")
        build_workdir(embedded, args.leads, seed=11, trials=2)
    end = replay_start(embedded)
    behaviour = pd.read_parquet(embedded.features_dir / "person_behaviour.parquet",
                                columns=["person_id"])
    persons = sorted(behaviour["person_id"].astype(str).unique())

    production_env = {
        "LEADSCORE_PROFILE": "production",
        "LEADSCORE_DATABASE_PREFIX": "bench_stores_" + uuid.uuid4().hex[:8],
        "LEADSCORE_REDIS_URL": args.redis_url,
        "LEADSCORE_MLFLOW_TRACKING_URI": embedded.tracking_uri,  # the same champion
        "LEADSCORE_ARTIFACT_ROOT": embedded.artifact_location,
    }
    results: dict[str, dict[str, Any]] = {}
    production = use_env(production_env)
    client = redis_client(production)
    try:
        require_services(production)
        client.flushdb()
        materialized = {"sqlite": materialize(embedded, end=end)}  # no-op when already loaded
        materialized["redis"] = materialize(production, end=end)
        print(f"materialized up to {end.isoformat()}: redis keys {client.dbsize()}", flush=True)
        for store, env in (("sqlite", {}), ("redis", production_env)):
            for key in production_env:
                os.environ.pop(key, None)
            settings = use_env({"LEADSCORE_WORKDIR": str(workdir), **env})
            read = read_latencies(settings, persons, args.calls, args.batch_size,
                                  args.batch_repeats)
            print(f"{store} online read: {read}", flush=True)
            served = served_latency(workdir, args.rate, args.duration, args.connections,
                                    args.generator)
            print(f"{store} served /predict at {args.rate:.0f}/s: {served}", flush=True)
            results[store] = {"read": read, "served": served}
    finally:
        client.flushdb()
        client.close()
        drop_databases(production)
    print_table(results)
    report = {"stores": results, "materialized": materialized, "persons": len(persons),
              "rate": args.rate, "duration_s": args.duration, "machine_cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "at": datetime.now(UTC).isoformat()}
    path = embedded.reports_dir / "bench_online_stores.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
