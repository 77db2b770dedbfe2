"""Online read latency: all features of one lead and its person through ``get_online_features``.

Builds a throw-away repo (``lead_stats`` with ``--lead-features`` floats, ``person_stats`` with
``--person-features`` floats, ``--entities`` rows each), fills the online store, then times
``--calls`` in-process ``store.get_online_features`` calls (one lead + one person per call) for
Feast's stock ``SqliteOnlineStore`` and ``FastSqliteOnlineStore``, with the features given as a
list of references and as a prepared ``FeatureService``. Prints wall-clock and thread-CPU
p50/p99 (ms) and one JSON line. ``--online redis``: Feast's Redis store (db 12, flushed after).

    .venv/bin/python benchmarks/bench_online_read.py --calls 2000
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_materialize import (  # noqa: E402
    FAST_STORE,
    REDIS_BENCH_DB,
    REDIS_STORE,
    STOCK_STORE,
    DemoRepo,
    build_demo_repo,
    flush_redis,
    make_frame,
)

from features.fast_materialize import write_frame_fast  # noqa: E402


def _latencies(
    call: Callable[[int], object], calls: int, warmup: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Wall-clock and thread-CPU milliseconds per call.

    On a shared machine the wall-clock tail is mostly time spent preempted; the thread's CPU
    time is the work the call itself does.
    """
    for index in range(warmup):
        call(index)
    gc.collect()  # start clean; the collector stays on, as in a serving process
    wall, cpu = np.empty(calls), np.empty(calls)
    for index in range(calls):
        wall_start, cpu_start = time.perf_counter(), time.thread_time()
        call(index)
        cpu[index] = time.thread_time() - cpu_start
        wall[index] = time.perf_counter() - wall_start
    return wall * 1000.0, cpu * 1000.0


def measure(repo: DemoRepo, calls: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """p50/p99/mean (ms) of one lead + its person, per way of naming the features."""
    rng = np.random.default_rng(seed)
    leads = repo.lead_frame["lead_id"].to_numpy()[rng.integers(0, len(repo.lead_frame), calls)]
    persons = repo.person_frame["person_id"].to_numpy()[
        rng.integers(0, len(repo.person_frame), calls)
    ]
    refs = [f"{repo.lead_view.name}:{f.name}" for f in repo.lead_view.features] + [
        f"{repo.person_view.name}:{f.name}" for f in repo.person_view.features
    ]
    store = repo.store
    service = store.get_feature_service(repo.service.name)
    expected_width = len(refs) + 2

    def by_refs(i: int) -> object:
        row = {"lead_id": leads[i % calls], "person_id": persons[i % calls]}
        return store.get_online_features(features=refs, entity_rows=[row]).to_dict()

    def by_service(i: int) -> object:
        row = {"lead_id": leads[i % calls], "person_id": persons[i % calls]}
        return store.get_online_features(features=service, entity_rows=[row]).to_dict()

    for call in (by_refs, by_service):
        result = call(0)
        if len(result) != expected_width or any(v[0] is None for v in result.values()):
            raise RuntimeError("online read returned missing features")
    results = {}
    for label, call in (("feature refs", by_refs), ("feature service", by_service)):
        wall, cpu = _latencies(call, calls)
        results[label] = {
            "p50_ms": round(float(np.percentile(wall, 50)), 3),
            "p99_ms": round(float(np.percentile(wall, 99)), 3),
            "mean_ms": round(float(wall.mean()), 3),
            "cpu_p50_ms": round(float(np.percentile(cpu, 50)), 3),
            "cpu_p99_ms": round(float(np.percentile(cpu, 99)), 3),
        }
    return results


def run(
    entities: int, lead_features: int, person_features: int, calls: int, redis: str | None = None
) -> dict:
    """Fill a stock and a fast online store with the same rows and time reads from both.

    ``redis`` (a Feast ``connection_string``): Feast's Redis store only.
    """
    frames = (
        make_frame("lead_id", "lead", entities, lead_features, seed=1),
        make_frame("person_id", "person", entities, person_features, seed=2),
    )
    report: dict = {
        "entities": entities,
        "features_per_call": lead_features + person_features,
        "calls": calls,
        "stores": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_read_") as tmp:
        stores = [("stock sqlite", STOCK_STORE), ("fast sqlite", FAST_STORE)]
        for label, store_type in [("redis", REDIS_STORE)] if redis else stores:
            repo = build_demo_repo(
                Path(tmp) / label.replace(" ", "_"),
                entities,
                lead_features,
                store_type,
                person_features=person_features,
                frames=frames,
                online_options={"connection_string": redis} if redis else None,
            )
            for view, frame in (("lead_stats", frames[0]), ("person_stats", frames[1])):
                if store_type != FAST_STORE:
                    repo.store.write_to_online_store(view, frame)
                else:
                    write_frame_fast(repo.store, view, frame)
            report["stores"][label] = measure(repo, calls)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--lead-features", type=int, default=40)
    parser.add_argument("--person-features", type=int, default=20)
    parser.add_argument(
        "--online",
        choices=("sqlite", "redis"),
        default="sqlite",
        help=f"redis: Feast's Redis store on {REDIS_BENCH_DB} (flushed afterwards)",
    )
    args = parser.parse_args(argv)
    if min(args.calls, args.entities, args.lead_features, args.person_features) < 1:
        parser.error("all counts must be positive")
    logging.getLogger("feast").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    redis = REDIS_BENCH_DB if args.online == "redis" else None
    try:
        report = run(args.entities, args.lead_features, args.person_features, args.calls, redis)
    finally:
        if redis:
            flush_redis(redis)
    print(
        f"\none lead ({args.lead_features} features) + its person ({args.person_features}), "
        f"{args.calls} calls each"
    )
    print(
        f"{'store':14} {'features as':16} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} "
        f"{'cpu p50':>8} {'cpu p99':>8}"
    )
    for store, variants in report["stores"].items():
        for variant, figures in variants.items():
            print(
                f"{store:14} {variant:16} {figures['p50_ms']:8.3f} {figures['p99_ms']:8.3f} "
                f"{figures['mean_ms']:8.3f} {figures['cpu_p50_ms']:8.3f} "
                f"{figures['cpu_p99_ms']:8.3f}"
            )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
