"""Time the offline feature build: ``python benchmarks/bench_features.py --leads N``.

Generates a synthetic CRM of N leads (``crm_data.generate``) and resolves it (One ID) in a
work folder (default: a temporary one; reused when it already holds data), then times
``features.build.build_features`` and prints the timings as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from leadscore.config import Settings


def prepare(settings: Settings, n_leads: int, seed: int) -> float:
    """Generate and resolve the data unless the work folder already has it; seconds spent."""
    started = time.perf_counter()
    if not (settings.identity_dir / "lead_person.parquet").exists():
        from crm_data.generate import generate_crm
        from crm_data.identity import resolve_identities

        generate_crm(settings.data_dir, n_leads=n_leads, seed=seed, salt=settings.hash_salt)
        leads = pd.read_parquet(
            settings.raw_dir / "leads.parquet", columns=["lead_id", "created_at"]
        )
        identities = pd.read_parquet(settings.raw_dir / "identities.parquet")
        resolve_identities(identities, leads, settings.identity_dir)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_features_"))
    settings = Settings().with_workdir(workdir)
    settings.ensure_dirs()
    prep_seconds = prepare(settings, args.leads, args.seed)

    from features.build import build_features

    summary = build_features(settings, apply=False)
    print(
        json.dumps(
            {
                "leads": summary.leads,
                "events": summary.events,
                "snapshots": summary.snapshots,
                "build_seconds": summary.seconds,
                "step_seconds": summary.step_seconds,
                "data_prep_seconds": round(prep_seconds, 1),
                "workdir": str(workdir),
            }
        )
    )


if __name__ == "__main__":
    main()
