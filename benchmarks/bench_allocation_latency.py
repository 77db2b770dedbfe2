"""What routing by learned effects adds to one /predict: the routing step of one lead, today's
path (tiers by probability) side by side with the uplift path (the uplift model's effects for
the lead's features, then ``choose_one`` with the policy file's shadow prices), in one run.

    nice -n 10 .venv/bin/python benchmarks/bench_allocation_latency.py \\
        --model /tmp/causal_bench/models/lead_uplift \\
        --features /tmp/causal_bench/data/training_set.parquet

Last measured (500 single-lead calls, load 2.0, the 80,000-lead benchmark's model): today's
tiers 0.141 ms p50 (0.177 p95); by learned effects 0.743 ms p50 (0.920 p95) = effects through
the distilled boosters 0.414 ms + choose_one 0.033 ms + set-up; the full cross-fitted model's
effects 68.6 ms p50. Added to the routing step: 0.60 ms p50 (target 0.3 ms: not met).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from leadscore.schemas import FOLLOWUP_CHANNELS
from routing.control import allocated_channels, route_leads
from routing.policy import load_policy
from training.uplift_registry import load_uplift_model


def _timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    model = load_uplift_model(args.model)
    rows = pd.read_parquet(args.features).head(args.repeats)
    base = load_policy()
    policy = base.with_cutoffs(base.cutoffs, base.version, {"allocation": {
        "source": "uplift", "cost_weight": 0.003,
        "shadow_prices": {c: 0.01 for c in FOLLOWUP_CHANNELS}}})
    positions = [model.arms.index(c) for c in FOLLOWUP_CHANNELS]
    columns = {name: [rows[name].iloc[0]] for name in model.feature_columns}
    probability, score = np.array([0.2]), np.array([50.0])

    def today() -> None:
        route_leads(["P1"], probability, score, policy, lead_ids=["L1"])

    def effects() -> np.ndarray:  # the serving path (distilled boosters when present)
        return model.fast_uplift(columns)[:, positions]

    def full_effects() -> np.ndarray:  # the cross-fitted X-learners on a one-row frame
        return model.uplift(pd.DataFrame(columns))[:, positions]

    def uplift_path() -> None:
        route_leads(["P1"], probability, score, policy, lead_ids=["L1"], effects=effects())

    one = effects()

    def allocation_only() -> None:
        allocated_channels(one, policy)

    for fn in (today, uplift_path):
        fn()
    print(f"distilled boosters: {bool(getattr(model, 'serving_models', None))}")
    results = {"today (tiers)": _timed(today, args.repeats),
               "uplift (effects + choose_one)": _timed(uplift_path, args.repeats),
               "effects alone (serving path)": _timed(effects, args.repeats),
               "effects by the full model": _timed(full_effects, max(20, args.repeats // 10)),
               "choose_one alone": _timed(allocation_only, args.repeats)}
    for name, (p50, p95) in results.items():
        print(f"{name:32s} p50 {p50:7.3f} ms  p95 {p95:7.3f} ms")
    print(f"added to the routing step (p50): "
          f"{results['uplift (effects + choose_one)'][0] - results['today (tiers)'][0]:.3f} ms")


if __name__ == "__main__":
    main()
