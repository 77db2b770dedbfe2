"""Weekly drift report on a week of 100,000 logged predictions: must take at most 60 s.

Builds, in a temporary work folder, a 20k-row reference with the model's real feature columns
(``features.request.MODEL_FEATURES``, synthetic values), writes N predictions of one ISO week to
the SQLite prediction log (timed separately), plus the previous week and the matured cohort's
weeks and their outcomes, then times ``leadscore drift``'s logic end to end
(``run_weekly_report``: read the log, Evidently drift + cohort reports, business view, index).

    .venv/bin/python benchmarks/bench_drift.py --rows 100000

Prints one JSON line: ``{"rows": …, "append_seconds": …, "report_seconds": …, …}``
(``report_cpu_seconds`` too: on a shared machine wall time depends on the neighbours).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from crm_data.prediction_log import PredictionRecord, SqlitePredictionLog  # noqa: E402
from features.request import MODEL_FEATURES  # noqa: E402
from leadscore.config import Settings  # noqa: E402
from pipelines.weekly_report import iso_week, run_weekly_report  # noqa: E402
from training.drift_reference import write_reference  # noqa: E402

WEEK = "2026-W47"
APPEND_BATCH = 1000
TIER_CUTOFFS = (0.25, 0.12, 0.05)
FOLLOWUP = {"A": "top_sales", "B": "sales", "C": "tmk", "D": "ai_bot"}


def feature_frame(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Synthetic values for every model feature: categories, counts and positive floats."""
    columns = {}
    for i, (name, kind) in enumerate(MODEL_FEATURES.items()):
        if kind == "string":
            levels = 40 if name == "campaign" else 4 + i % 8
            columns[name] = rng.choice([f"{name}_{k}" for k in range(levels)], n)
        elif kind == "int":
            columns[name] = rng.poisson(0.5 + i % 5, n)
        else:
            columns[name] = rng.lognormal(i % 3, 1.0, n)
    frame = pd.DataFrame(columns)
    frame["probability"] = 1 / (1 + np.exp(-rng.normal(-2.8, 1.1, n)))
    p = frame["probability"].to_numpy()
    frame["tier"] = np.select([p >= TIER_CUTOFFS[0], p >= TIER_CUTOFFS[1], p >= TIER_CUTOFFS[2]],
                              ["A", "B", "C"], "D")
    return frame


def write_week(log: SqlitePredictionLog, label: str, n: int, rng: np.random.Generator
               ) -> pd.DataFrame:
    """Append ``n`` predictions of ISO week ``label`` in batches; returns their outcomes."""
    since = iso_week(label).since
    frame = feature_frame(n, rng)
    offsets = np.sort(rng.uniform(0, 7 * 86400 - 1, n))
    features = frame[list(MODEL_FEATURES)].to_dict(orient="records")
    records = []
    for i in range(n):
        submitted = since + timedelta(seconds=float(offsets[i]))
        tier = frame["tier"].iat[i]
        records.append(PredictionRecord(
            request_id=f"{label}-{i}-r", lead_id=f"{label}-{i}", person_id=f"pid:{i % 50_000}",
            submitted_at=submitted, scored_at=submitted + timedelta(milliseconds=25),
            probability=float(frame["probability"].iat[i]), tier=tier,
            channel=FOLLOWUP[tier], control=i % 10 == 0, degraded=False,
            model_name="lead-conversion", model_version="1", policy_version="policy-1",
            features={k: (v.item() if hasattr(v, "item") else v)
                      for k, v in features[i].items()},
        ))
        if len(records) == APPEND_BATCH:
            log.append(records)
            records = []
    log.append(records)
    converted = rng.random(n) < frame["probability"].to_numpy()
    return pd.DataFrame({
        "lead_id": [f"{label}-{i}" for i in range(n)],
        "converted": converted,
        "converted_at": pd.to_datetime(
            [since + timedelta(days=3) if c else None for c in converted], utc=True),
        "amount": np.where(converted, 4999.0, 0.0),
        "followup_channel": "tmk",
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="predictions in the week")
    parser.add_argument("--context-rows", type=int, default=10_000,
                        help="predictions in the previous week and in the matured cohort weeks")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings().with_workdir(tmp)
        settings.ensure_dirs()
        write_reference(settings, feature_frame(20_000, rng), "lead-conversion", "1",
                        list(MODEL_FEATURES),
                        [k for k, v in MODEL_FEATURES.items() if v == "string"])
        period = iso_week(WEEK)
        outcomes = []
        with SqlitePredictionLog(settings.prediction_log_path) as log:
            for weeks_back in (5, 4, 1):  # matured cohort (30-day window) and previous week
                year, week, _ = (period.since - timedelta(weeks=weeks_back)).isocalendar()
                outcomes.append(write_week(log, f"{year}-W{week:02d}", args.context_rows, rng))
            started = time.perf_counter()
            write_week(log, WEEK, args.rows, rng)
            append_seconds = time.perf_counter() - started
        pd.concat(outcomes).to_parquet(settings.raw_dir / "outcomes.parquet", index=False)

        started, cpu_started = time.perf_counter(), time.process_time()
        report = run_weekly_report(settings, period)
        report_seconds = time.perf_counter() - started
        report_cpu_seconds = time.process_time() - cpu_started
        print(json.dumps({
            "rows": args.rows,
            "features": len(MODEL_FEATURES),
            "append_seconds": round(append_seconds, 2),
            "report_seconds": round(report_seconds, 2),
            "report_cpu_seconds": round(report_cpu_seconds, 2),
            "budget_seconds": 60,
            "within_budget": report_seconds <= 60,
            "drift_share": report.drift["drift_share"],
            "cohort_n": (report.drift["cohort"] or {}).get("n"),
            "html_mb": round((report.folder / "drift.html").stat().st_size / 1e6, 1),
        }))


if __name__ == "__main__":
    main()
