"""Benchmark One ID: resolve N leads (full run, then an incremental 10% batch), print JSON.

    .venv/bin/python benchmarks/bench_identity.py --leads 1000000

Data come from ``crm_data.generate.generate_crm`` when it is available (``--source
generator``; identities + truth of a synthetic CRM), else from a built-in synthetic identities
table (``--source synthetic``: persons with 1–6 leads, each lead carrying a random subset of its
person's phone / WeChat / e-mail / cookies, a few cookies shared by two persons, a few persons
whose leads share nothing). Only resolution is timed, not data generation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crm_data.identity import resolve_identities  # noqa: E402

LEADS_PER_PERSON_P = np.array([0.62, 0.20, 0.09, 0.05, 0.025, 0.015])
CARRY_P = {"phone": 0.85, "wechat": 0.5, "email": 0.2, "cookie": 0.45}
PERSON_HAS = {"phone": 0.97, "wechat": 0.65, "email": 0.45, "cookie": 1.0}
SHARED_COOKIE_SHARE = 0.002  # cookies of a shared device (two persons)


def _fake_hashes(id_type: str, keys: np.ndarray) -> np.ndarray:
    return np.array(
        [f"{id_type}:" + hashlib.md5(f"{id_type}{k}".encode()).hexdigest() for k in keys],
        dtype=object,
    )


def synthetic_identities(n_leads: int, seed: int) -> tuple[pd.DataFrame, ...]:
    """Leads, identities and truth of a synthetic CRM with ``n_leads`` leads."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice(np.arange(1, 7), p=LEADS_PER_PERSON_P, size=n_leads)
    sizes = sizes[np.cumsum(sizes) <= n_leads]
    sizes = np.append(sizes, np.ones(n_leads - sizes.sum(), dtype=sizes.dtype))
    person = np.repeat(np.arange(len(sizes)), sizes)
    lead_ids = np.array([f"L{i:08d}" for i in range(n_leads)], dtype=object)
    created = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(
        np.sort(rng.integers(0, 365 * 86_400, size=n_leads)), unit="s"
    )
    order = rng.permutation(n_leads)  # a person's leads arrive at random times
    leads = pd.DataFrame({"lead_id": lead_ids, "created_at": created[np.argsort(order)]})

    frames = []
    n_persons = len(sizes)
    for id_type, carry in CARRY_P.items():
        has = rng.random(n_persons) < PERSON_HAS[id_type]
        n_variants = 2 if id_type == "cookie" else 1  # a second device
        variant = rng.integers(0, n_variants, size=n_leads)
        carried = has[person] & (rng.random(n_leads) < carry)
        if id_type == "phone":  # every lead with a phone-owning person keeps one identifier
            carried |= has[person] & (rng.random(n_leads) < 0.5)
        key = person * 2 + variant
        if id_type == "cookie":
            shared = rng.random(n_leads) < SHARED_COOKIE_SHARE
            key = np.where(shared, rng.integers(0, n_persons, size=n_leads) * 2, key)
        rows = np.flatnonzero(carried)
        uniq, inverse = np.unique(key[rows], return_inverse=True)
        frames.append(
            pd.DataFrame(
                {
                    "lead_id": lead_ids[rows],
                    "id_type": id_type,
                    "id_hash": _fake_hashes(id_type, uniq)[inverse],
                }
            )
        )
    identities = pd.concat(frames, ignore_index=True)
    truth = pd.DataFrame({"lead_id": lead_ids, "true_person_id": person})
    return leads, identities, truth


def generated_identities(n_leads: int, seed: int, folder: Path) -> tuple[pd.DataFrame, ...]:
    """Leads, identities and truth from ``crm_data.generate.generate_crm``."""
    from crm_data.generate import generate_crm

    generate_crm(folder, n_leads=n_leads, seed=seed)
    leads = pd.read_parquet(folder / "raw" / "leads.parquet", columns=["lead_id", "created_at"])
    identities = pd.read_parquet(folder / "raw" / "identities.parquet")
    truth = pd.read_parquet(
        folder / "truth" / "leads_truth.parquet", columns=["lead_id", "true_person_id"]
    )
    return leads, identities, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--source", choices=("auto", "generator", "synthetic"), default="auto")
    parser.add_argument("--incremental-share", type=float, default=0.1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = args.source
        if source == "auto":
            try:
                import crm_data.generate as generate

                source = "generator" if hasattr(generate, "generate_crm") else "synthetic"
            except ImportError:
                source = "synthetic"
        started = time.perf_counter()
        if source == "generator":
            leads, identities, truth = generated_identities(args.leads, args.seed, folder)
        else:
            leads, identities, truth = synthetic_identities(args.leads, args.seed)
        data_seconds = time.perf_counter() - started

        full = resolve_identities(identities, leads, folder / "full", truth=truth)

        leads = leads.sort_values(["created_at", "lead_id"], ignore_index=True)
        cut = int(len(leads) * (1 - args.incremental_share))
        old, new = leads.iloc[:cut], leads.iloc[cut:]
        state = folder / "incremental"
        resolve_identities(identities[identities["lead_id"].isin(old["lead_id"])], old, state)
        batch = resolve_identities(
            identities[identities["lead_id"].isin(new["lead_id"])], new, state, truth=truth
        )
        same_ids = bool(batch.state.lead_person.equals(full.state.lead_person))

    print(
        json.dumps(
            {
                "source": source,
                "leads": args.leads,
                "identity_rows": len(identities),
                "seconds": round(full.seconds, 2),
                "precision": round(full.precision, 5),
                "recall": round(full.recall, 5),
                "persons": full.persons,
                "true_persons": int(truth["true_person_id"].nunique()),
                "incremental": {
                    "batch_leads": len(new),
                    "seconds": round(batch.seconds, 2),
                    "joined": batch.joined,
                    "merged": batch.merged,
                    "new": batch.new,
                    "same_ids_as_full_run": same_ids,
                },
                "data_seconds": round(data_seconds, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
