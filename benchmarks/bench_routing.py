"""Routing speed and outcome on synthetic held-out leads: cut-off optimisation and simulation.

Draws leads with known propensities (the generator-like frame of ``tests/test_routing.py``),
times ``optimize_cutoffs`` (coarse + fine grid, vectorised capacity cascade) and ``simulate``,
and prints one JSON line with timings and the goal figures.

    .venv/bin/python benchmarks/bench_routing.py --leads 6000 --days 45
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
for folder in (PROJECT_ROOT, PROJECT_ROOT / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from test_routing import synthetic_leads  # noqa: E402

from routing.optimize import optimize_cutoffs  # noqa: E402
from routing.policy import load_policy  # noqa: E402
from routing.simulate import simulate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=6000)
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid-size", type=int, default=16)
    args = parser.parse_args()

    leads = synthetic_leads(n=args.leads, days=args.days, seed=args.seed)
    policy = load_policy()
    began = time.perf_counter()
    optimized, report = optimize_cutoffs(leads, policy, grid_size=args.grid_size)
    optimize_seconds = time.perf_counter() - began
    began = time.perf_counter()
    simulation = simulate(leads, optimized)
    simulate_seconds = time.perf_counter() - began
    goal = simulation["goal"]
    print(json.dumps({
        "leads": args.leads,
        "days": args.days,
        "candidates": report["candidates_evaluated"],
        "optimize_seconds": round(optimize_seconds, 3),
        "candidates_per_second": round(report["candidates_evaluated"] / optimize_seconds),
        "simulate_seconds": round(simulate_seconds, 3),
        "cutoffs": report["cutoffs"],
        "goal_met": goal["met"],
        "best_rule": goal["best_rule_policy"],
        "conversions_ratio": round(goal["model_conversions"] / goal["best_rule_conversions"], 4),
        "cpa_reduction": round(goal["cpa_reduction"], 4),
        "violations": goal["model_capacity_violations"],
    }))


if __name__ == "__main__":
    main()
