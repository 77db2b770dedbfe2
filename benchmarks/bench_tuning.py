"""Benchmark: 30 Optuna trials of LightGBM on 100,000 training leads (target: <= 300 s, 2 cores).

Synthetic leads with the model's real feature names and kinds (``features.request
.MODEL_FEATURES``), a conversion label drawn from a logistic model of a dozen of them, split by
time 70/15/15 so that the train slice holds ``--train-leads`` rows. Tuning runs exactly as
``leadscore train`` runs it (SQLite Optuna storage, TPE, median pruning, early stopping).

    .venv/bin/python benchmarks/bench_tuning.py [--train-leads 100000] [--trials 30]

Prints one JSON object: seconds (dataset construction + tuning), best validation AUC, etc.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from features.request import MODEL_FEATURES
from training.model import categorical_levels, prepare_features
from training.split import time_split
from training.tune import make_datasets, tune_lgbm

CATEGORY_LEVELS = {"campaign": 40, "grade": 12, "channel": 8, "subject": 7, "device": 5,
                   "funnel_step": 4, "landing_page_type": 8, "email_domain_type": 5,
                   "rfm_segment": 9, "rule_grade": 2}


def synthetic_leads(n: int, seed: int = 7) -> pd.DataFrame:
    """``n`` time-ordered synthetic leads with every model feature and a label."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    seconds = np.sort(rng.uniform(0, 180 * 86_400, n)).astype("int64")
    frame: dict[str, object] = {
        "lead_id": [f"lead-{i}" for i in range(n)],
        "person_id": [f"person-{i // 2}" for i in range(n)],
        "created_at": start + pd.to_timedelta(seconds, unit="s"),
    }
    logit = np.full(n, -2.6)
    for name, kind in MODEL_FEATURES.items():
        if kind == "string":
            levels = CATEGORY_LEVELS.get(name, 6)
            codes = rng.integers(0, levels, n)
            frame[name] = np.array([f"{name[:4]}_{c}" for c in range(levels)])[codes]
            logit += rng.normal(0, 0.35, levels)[codes]
        elif kind == "int":
            values = rng.poisson(rng.uniform(0.2, 3.0), n)
            frame[name] = values
            logit += rng.normal(0, 0.08) * np.minimum(values, 6)
        else:
            values = rng.gamma(2.0, rng.uniform(1, 20), n)
            frame[name] = values
            logit += rng.normal(0, 0.3) * (values - values.mean()) / values.std()
    logit += 0.5 * np.sin(np.asarray(frame["intent_score"], dtype=float) / 5.0)  # non-linear
    frame["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
    return pd.DataFrame(frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-leads", type=int, default=100_000)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    total = int(round(args.train_leads / 0.7))
    frame = synthetic_leads(total, seed=args.seed)
    split = time_split(frame, "created_at")
    features = list(MODEL_FEATURES)
    cats = [n for n, kind in MODEL_FEATURES.items() if kind == "string"]
    levels = categorical_levels(split.train, cats)
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{Path(tmp) / 'optuna.db'}"
        started = time.perf_counter()
        dtrain, dvalid = make_datasets(
            prepare_features(split.train, features, levels), split.train["label"],
            prepare_features(split.valid, features, levels), split.valid["label"], cats,
        )
        result = tune_lgbm(dtrain, dvalid, n_trials=args.trials, storage=storage,
                           study_name="bench", seed=args.seed)
        seconds = time.perf_counter() - started
    print(json.dumps({
        "benchmark": "tuning",
        "train_leads": len(split.train),
        "valid_leads": len(split.valid),
        "features": len(features),
        "trials": result.n_trials,
        "trials_pruned": result.n_pruned,
        "seconds": round(seconds, 1),
        "target_seconds": 300,
        "best_valid_auc": round(result.best_auc, 4),
        "best_valid_log_loss": round(result.best_log_loss, 5),
        "best_iteration": result.best_iteration,
    }))


if __name__ == "__main__":
    main()
