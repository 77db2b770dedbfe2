"""Benchmark LightGBM on Dask: train on N generated leads with 1 and with 2 worker processes.

    .venv/bin/python benchmarks/bench_dask_training.py --leads 1000000
    .venv/bin/python benchmarks/bench_dask_training.py --leads 1000000 --scheduler tcp://host:8786

The leads come from ``crm_data.generate.simulate_crm`` (in memory). Features are a simple
per-lead frame known at submission: channel, device, grade, subject, funnel step, city tier,
phone valid, e-mail type, hour and weekday of submission, and the count of the lead's events of
each type at or before ``created_at``. Time split: the oldest 80% of leads train, the newest 20%
test. Prints one JSON object: per run the workers, training seconds (data to workers + boosting,
cluster start excluded), cluster start seconds and test ROC-AUC; plus a single-process LightGBM
reference (no Dask, one thread, like one worker) with the same parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from lightgbm import LGBMClassifier
from sklearn.metrics import roc_auc_score

from crm_data.generate import simulate_crm
from leadscore.schemas import (
    CHANNELS,
    DEVICES,
    EMAIL_DOMAIN_TYPES,
    EVENT_TYPES,
    FUNNEL_STEPS,
    GRADES,
    SUBJECTS,
)
from training.distributed import DEFAULT_PARAMS, dask_client, train_distributed

VOCABULARIES: dict[str, tuple[str, ...]] = {
    "channel": CHANNELS, "device": DEVICES, "grade": GRADES, "subject": SUBJECTS,
    "funnel_step": FUNNEL_STEPS, "email_domain_type": EMAIL_DOMAIN_TYPES,
}
CATEGORICAL = [*VOCABULARIES, "city_tier", "weekday"]
TRAIN_SHARE = 0.8


def lead_features(n_leads: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, dict[str, float]]:
    """The per-lead feature frame (sorted by ``created_at``), labels and timings."""
    began = time.perf_counter()
    crm = simulate_crm(n_leads, seed, salt="bench-salt", window_days=30)
    generated = time.perf_counter()
    leads_table = crm.tables["leads"]
    events = crm.tables["events"]
    n_events = events.num_rows
    order = pc.sort_indices(leads_table, [("created_at", "ascending")])
    leads_table = leads_table.take(order)
    # row of each event's lead, and whether the event was known at the lead's submission
    lead_row = pc.index_in(events["lead_id"], value_set=leads_table["lead_id"])
    if lead_row.null_count:
        raise ValueError(f"events: {lead_row.null_count} rows name a lead_id not in leads")
    row = lead_row.to_numpy(zero_copy_only=False)
    created = leads_table["created_at"].cast(pa.int64()).to_numpy()
    event_time = events["event_time"].cast(pa.int64()).to_numpy()
    known = event_time <= created[row]
    type_code = pc.index_in(events["event_type"],
                            value_set=pa.array(EVENT_TYPES)).to_numpy(zero_copy_only=False)
    counts = np.zeros((len(created), len(EVENT_TYPES)), dtype=np.int32)
    np.add.at(counts, (row[known], type_code[known]), 1)
    outcome_row = pc.index_in(leads_table["lead_id"],
                              value_set=crm.tables["outcomes"]["lead_id"])
    outcome_row = outcome_row.fill_null(-1).to_numpy(zero_copy_only=False)
    converted = crm.tables["outcomes"]["converted"].to_numpy(zero_copy_only=False)
    del crm, events
    leads = leads_table.drop_columns(["lead_id", "campaign", "landing_page", "city"]).to_pandas()

    frame = pd.DataFrame({
        name: pd.Categorical(leads[name], categories=vocab).codes.astype(np.int16)
        for name, vocab in VOCABULARIES.items()
    })  # code -1 = missing; LightGBM treats negative categories as missing
    frame["city_tier"] = leads["city_tier"].fillna(-1).astype(np.int16)
    frame["phone_valid"] = leads["phone_valid"].astype(np.int8)
    frame["hour"] = leads["created_at"].dt.hour.astype(np.int8)
    frame["weekday"] = leads["created_at"].dt.weekday.astype(np.int8)
    for j, event_type in enumerate(EVENT_TYPES):
        frame[f"n_{event_type}"] = counts[:, j]
    frame["n_events"] = counts.sum(axis=1)

    # a lead without an outcome row counts as not converted
    has_outcome = outcome_row >= 0
    y = np.zeros(len(leads), dtype=np.int8)
    y[has_outcome] = converted[outcome_row[has_outcome]]
    timings = {
        "generate_seconds": round(generated - began, 2),
        "features_seconds": round(time.perf_counter() - generated, 2),
        "events": n_events,
    }
    return frame, y, timings


def _dask_run(X_train: pd.DataFrame, y_train: np.ndarray, X_test: pd.DataFrame,
              y_test: np.ndarray, params: dict[str, Any], workers: int,
              scheduler: str | None) -> dict[str, Any]:
    began = time.perf_counter()
    with dask_client(workers, scheduler) as client:
        started = time.perf_counter() - began
        n = len(client.scheduler_info(n_workers=-1)["workers"])
        model, seconds = train_distributed(X_train, y_train, params, client=client)
    auc = roc_auc_score(y_test, model.predict_proba(X_test)[:, 1])
    return {"workers": n, "train_seconds": round(seconds, 2),
            "cluster_start_seconds": round(started, 2), "test_auc": round(float(auc), 4)}


def _single_process(X_train: pd.DataFrame, y_train: np.ndarray, X_test: pd.DataFrame,
                    y_test: np.ndarray, params: dict[str, Any]) -> dict[str, Any]:
    local = {k: v for k, v in params.items() if k != "categorical_feature"}
    model = LGBMClassifier(**{**DEFAULT_PARAMS, **local}, n_jobs=1)
    began = time.perf_counter()
    model.fit(X_train, y_train, categorical_feature=params["categorical_feature"])
    seconds = time.perf_counter() - began
    auc = roc_auc_score(y_test, model.predict_proba(X_test)[:, 1])
    return {"threads": 1, "train_seconds": round(seconds, 2),
            "test_auc": round(float(auc), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1_000_000, help="leads to generate")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="LocalCluster sizes to time (ignored with --scheduler)")
    parser.add_argument("--scheduler", default=None,
                        help="train on this Dask scheduler (tcp://host:8786) instead")
    parser.add_argument("--trees", type=int, default=DEFAULT_PARAMS["n_estimators"])
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the single-process LightGBM reference")
    args = parser.parse_args()
    if args.leads < 1000:
        parser.error("--leads: need at least 1000 leads")
    if any(w < 1 for w in args.workers):
        parser.error("--workers: each size must be at least 1")

    X, y, timings = lead_features(args.leads, args.seed)
    cut = int(len(X) * TRAIN_SHARE)  # rows are in creation order: test = newest 20%
    X_train, X_test, y_train, y_test = X.iloc[:cut], X.iloc[cut:], y[:cut], y[cut:]
    params = {"n_estimators": args.trees, "categorical_feature": CATEGORICAL}

    sizes = [None] if args.scheduler else args.workers
    runs = [_dask_run(X_train, y_train, X_test, y_test, params, size or 1, args.scheduler)
            for size in sizes]
    result: dict[str, Any] = {
        "leads": args.leads, "train_rows": len(X_train), "test_rows": len(X_test),
        "features": X.shape[1], "train_base_rate": round(float(y_train.mean()), 4),
        "test_base_rate": round(float(y_test.mean()), 4), **timings,
        "params": {k: v for k, v in {**DEFAULT_PARAMS, **params}.items()
                   if k != "categorical_feature"},
        "dask_runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    if not args.no_reference:
        result["single_process_reference"] = _single_process(X_train, y_train, X_test, y_test,
                                                             params)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
