"""Benchmark ``leadscore generate``: seconds and rows/s for N leads with their events.

    .venv/bin/python benchmarks/bench_generate.py --leads 1000000

Writes into a temporary folder (removed afterwards) unless ``--out`` is given; prints one JSON
object: the timing and the generation summary. Goal: 1,000,000 leads in ≤ 180 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from crm_data.generate import generate_crm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1_000_000, help="leads to generate")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--drift", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="keep the files in this folder")
    args = parser.parse_args()
    if args.leads < 1:
        parser.error("--leads must be positive")

    stages: list[tuple[str, float]] = []
    began = time.perf_counter()

    def progress(stage: str) -> None:
        stages.append((stage, round(time.perf_counter() - began, 2)))

    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        out = args.out or Path(tmp)
        summary = generate_crm(
            out,
            args.leads,
            args.seed,
            drift=args.drift,
            salt="bench-salt",
            window_days=30,
            progress=progress,
        )
        seconds = time.perf_counter() - began
        size_mb = sum(p.stat().st_size for p in out.rglob("*.parquet")) / 1e6
    rows = summary.n_leads + summary.n_identities + summary.n_events + summary.n_orders
    print(
        json.dumps(
            {
                "leads": args.leads,
                "seconds": round(seconds, 2),
                "leads_per_second": round(args.leads / seconds),
                "rows_per_second": round((rows + 2 * summary.n_leads) / seconds),
                "parquet_mb": round(size_mb, 1),
                "goal_seconds": 180,
                "within_goal": seconds <= 180 if args.leads == 1_000_000 else None,
                "stage_started_at_seconds": dict(stages),
                "summary": summary.to_dict(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
