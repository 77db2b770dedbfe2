"""Routing speed and outcome on held-out leads: cut-off optimisation and simulation.

Leads come from a demo work folder (``--workdir``: ``reports/holdout_scored.parquet`` joined
with ``data/truth/leads_truth.parquet``) or are drawn synthetically with known propensities (the
generator-like frame of ``tests/synthetic.py``). Cut-offs are tuned on the earliest
``--tuning-share`` of days and the policies are simulated on the later days only (no leads in
common; ``--tuning-share 1`` tunes and judges on all leads, an in-sample figure). Prints one JSON
line with timings, the four policies' figures and the goal.

    .venv/bin/python benchmarks/bench_routing.py --workdir /tmp/route_wd
    .venv/bin/python benchmarks/bench_routing.py --leads 6000 --days 45
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from routing.optimize import OBJECTIVES, optimize_cutoffs  # noqa: E402
from routing.policy import load_policy  # noqa: E402
from routing.simulate import join_truth, simulate, split_by_day  # noqa: E402
from tests.synthetic import synthetic_leads  # noqa: E402

POLICIES = ("everyone_to_sales", "rule_2d", "rule_funnel", "model")


def _leads(args: argparse.Namespace) -> pd.DataFrame:
    if args.workdir is None:
        return synthetic_leads(n=args.leads, days=args.days, seed=args.seed)
    scored = pd.read_parquet(args.workdir / "reports" / "holdout_scored.parquet")
    truth = pd.read_parquet(args.workdir / "data" / "truth" / "leads_truth.parquet")
    return join_truth(scored, truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="demo work folder (default: synthetic leads)")
    parser.add_argument("--leads", type=int, default=6000, help="synthetic leads")
    parser.add_argument("--days", type=int, default=45, help="synthetic days")
    parser.add_argument("--seed", type=int, default=0, help="synthetic seed")
    parser.add_argument("--grid-size", type=int, default=16)
    parser.add_argument("--objective", choices=OBJECTIVES, default="goal_margin")
    parser.add_argument("--tuning-share", type=float, default=0.5,
                        help="earliest share of days to tune on; the rest is simulated")
    args = parser.parse_args()

    leads = _leads(args)
    policy = load_policy()
    tuning, test = split_by_day(leads, args.tuning_share, policy.capacity_day_timezone)
    judged = test if len(test) else tuning
    began = time.perf_counter()
    optimized, report = optimize_cutoffs(
        tuning, policy, objective=args.objective, grid_size=args.grid_size
    )
    optimize_seconds = time.perf_counter() - began
    began = time.perf_counter()
    simulation = simulate(judged, optimized)
    simulate_seconds = time.perf_counter() - began
    goal = simulation["goal"]
    print(json.dumps({
        "source": str(args.workdir) if args.workdir else "synthetic",
        "objective": args.objective,
        "tuning_leads": len(tuning),
        "simulated_leads": len(judged),
        "in_sample": not len(test),
        "candidates": report["candidates_evaluated"],
        "optimize_seconds": round(optimize_seconds, 3),
        "candidates_per_second": round(report["candidates_evaluated"] / optimize_seconds),
        "simulate_seconds": round(simulate_seconds, 3),
        "cutoffs": report["cutoffs"],
        "estimated_goal_slack": round(report["goal_slack"], 4),
        "policies": {
            name: {
                "conversions": round(r["conversions"], 1),
                "total_cost": round(r["total_cost"]),
                "cost_per_conversion": round(r["cost_per_conversion"], 1),
                "capacity_violations": r["capacity_violations"],
            }
            for name, r in ((n, simulation["policies"][n]) for n in POLICIES)
        },
        "goal_met": goal["met"],
        "best_rule": goal["best_rule_policy"],
        "conversions_ratio": round(goal["model_conversions"] / goal["best_rule_conversions"], 4),
        "cpa_reduction": round(goal["cpa_reduction"], 4),
        "violations": goal["model_capacity_violations"],
    }))


if __name__ == "__main__":
    main()
