"""Generated-like weeks of logged predictions for the drift and weekly-report tests.

The data follow the generator's mechanism (``crm_data.generate_mechanism``): quiet weeks draw
channels and behaviour like the reference; drifted weeks use its ``--drift`` channel mix and
behaviour (fewer pricing visits, many more app opens). Probabilities are the true conversion
probabilities, so the matured cohort's AUC/ECE are known in advance.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from crm_data import generate_mechanism as gm
from crm_data.prediction_log import PredictionRecord, SqlitePredictionLog
from leadscore.config import Settings
from leadscore.schemas import CHANNELS, DEVICES, EVENT_TYPES, FUNNEL_STEPS, GRADES
from pipelines.weekly_report import iso_week
from routing.policy import load_policy, save_policy
from training.drift_reference import write_reference

REFERENCE_ROWS = 2000
SEED = 20261116

# This file's own additive outcome model (independent of the generator's tuned effects).
BASE_LOGIT = -5.5
INTENT_WEIGHT = 0.55
BEHAVIOUR_WEIGHT = 0.35
FUNNEL_EFFECT = np.array([0.0, 0.3, 0.6, 1.2])
CATEGORICAL = ["channel", "funnel_step", "grade", "device"]
COUNT_FEATURES = {
    "pricing_page": "pricing_page_30d", "app_open": "app_open_30d",
    "course_page": "course_page_30d", "recruitment_page": "recruitment_page_30d",
}
NUMERIC = ["city_tier", "phone_valid", "events_30d", *COUNT_FEATURES.values(), "intent_score",
           "days_since_last_touch", "prior_leads"]
FEATURES = CATEGORICAL + NUMERIC
TIER_CUTOFFS = (0.25, 0.12, 0.05)
FOLLOWUP = {"A": "top_sales", "B": "sales", "C": "tmk", "D": "ai_bot"}
COSTS = {"top_sales": 120.0, "sales": 60.0, "tmk": 15.0, "ai_bot": 1.0}
QUIET_WEEKS = ["2026-W36", "2026-W37", "2026-W38", "2026-W39", "2026-W40"]
DRIFT_WEEKS = ["2026-W41", "2026-W42"]
WEEK_ROWS = 1500


def generated_leads(n: int, rng: np.random.Generator, drift: bool = False) -> pd.DataFrame:
    """Features, probability and tier of ``n`` leads drawn like ``leadscore generate``."""
    mix = gm.CHANNEL_MIX_DRIFT if drift else gm.CHANNEL_MIX
    channel = rng.choice(len(CHANNELS), n, p=mix / mix.sum())
    intent = rng.normal(0.0, 1.0, n)
    funnel = gm.funnel_index(gm.FUNNEL_INTENT_WEIGHT * intent
                             + gm.by_channel(gm.CHANNEL_FUNNEL_EFFECT)[channel]
                             + rng.normal(0.0, gm.FUNNEL_NOISE_SD, n))
    mixes = np.where((intent > 0.5)[:, None], gm.EVENT_MIX_HIGH,
                     np.where((intent < -1)[:, None], gm.EVENT_MIX_LOW, gm.EVENT_MIX_BROWSE))
    if drift:
        mixes = np.apply_along_axis(gm.drifted_mix, 1, mixes)
    counts = rng.poisson(gm.PRE_EVENTS_MEAN * np.exp(0.3 * intent)[:, None] * mixes)
    frame = pd.DataFrame({
        "channel": np.array(CHANNELS)[channel],
        "funnel_step": np.array(FUNNEL_STEPS)[funnel],
        "grade": rng.choice(GRADES, n, p=gm.GRADE_P),
        "device": rng.choice(DEVICES, n, p=gm.DEVICE_P),
        "city_tier": rng.choice([1, 2, 3, 4], n, p=gm.CITY_TIER_P),
        "phone_valid": (rng.random(n) > 0.05).astype(int),
        "events_30d": counts.sum(axis=1),
    })
    for event_type, name in COUNT_FEATURES.items():
        frame[name] = counts[:, EVENT_TYPES.index(event_type)]
    frame["intent_score"] = counts @ gm.type_weight()
    frame["days_since_last_touch"] = np.where(
        counts.sum(axis=1) > 0, rng.exponential(gm.PRE_ACTIVE_MEAN_DAYS, n), 9999.0)
    frame["prior_leads"] = rng.poisson(0.4, n)
    logit = (BASE_LOGIT + 1.2 + INTENT_WEIGHT * intent
             + BEHAVIOUR_WEIGHT * np.log1p(frame["intent_score"].to_numpy())
             + gm.by_channel(gm.CHANNEL_EFFECT)[channel] + FUNNEL_EFFECT[funnel])
    frame["probability"] = gm.sigmoid(logit)
    p = frame["probability"].to_numpy()
    frame["tier"] = np.select([p >= TIER_CUTOFFS[0], p >= TIER_CUTOFFS[1], p >= TIER_CUTOFFS[2]],
                              ["A", "B", "C"], "D")
    return frame


def week_records(label: str, n: int, rng: np.random.Generator, drift: bool
                 ) -> tuple[list[PredictionRecord], pd.DataFrame]:
    """Logged predictions of one week and the outcomes the CRM will record for them."""
    period = iso_week(label)
    leads = generated_leads(n, rng, drift)
    seconds = np.sort(rng.uniform(0, 7 * 86400 - 1, n))
    records, outcomes = [], []
    for i, row in enumerate(leads.to_dict(orient="records")):
        submitted = period.since + timedelta(seconds=float(seconds[i]))
        lead_id = f"{label}-L{i}"
        control = bool(rng.random() < 0.1)
        records.append(PredictionRecord(
            request_id=f"{lead_id}-r", lead_id=lead_id, person_id=f"pid:{i % 997}",
            submitted_at=submitted, scored_at=submitted + timedelta(milliseconds=30),
            probability=float(row["probability"]), tier=row["tier"],
            channel="tmk" if control else FOLLOWUP[row["tier"]], control=control,
            degraded=False, model_name="lead-conversion", model_version="3",
            policy_version="policy-1",
            features={name: (row[name].item() if hasattr(row[name], "item") else row[name])
                      for name in FEATURES},
        ))
        converted = bool(rng.random() < row["probability"])
        outcomes.append({
            "lead_id": lead_id, "converted": converted,
            "converted_at": submitted + timedelta(days=float(rng.uniform(1, 25)))
            if converted else None,
            "amount": 4999.0 if converted else 0.0, "followup_channel": "tmk",
        })
    return records, pd.DataFrame(outcomes)


def write_drift_reference(settings: Settings, rng: np.random.Generator) -> None:
    """The reference of model version 3: ``REFERENCE_ROWS`` quiet leads."""
    reference = generated_leads(REFERENCE_ROWS, rng)
    write_reference(settings, reference, "lead-conversion", "3", FEATURES, CATEGORICAL)


def build_drift_workdir(root: Path) -> Path:
    """A work folder in ``root`` with a reference, a prediction log of 7 weeks, outcomes and
    a policy with channel costs."""
    settings = Settings().with_workdir(root)
    settings.ensure_dirs()
    rng = np.random.default_rng(SEED)
    write_drift_reference(settings, rng)
    all_outcomes = []
    with SqlitePredictionLog(settings.prediction_log_path) as log:
        for label in QUIET_WEEKS + DRIFT_WEEKS:
            records, outcomes = week_records(label, WEEK_ROWS, rng, label in DRIFT_WEEKS)
            log.append(records)
            all_outcomes.append(outcomes)
    outcomes = pd.concat(all_outcomes, ignore_index=True)
    outcomes["converted_at"] = pd.to_datetime(outcomes["converted_at"], utc=True)
    outcomes.to_parquet(settings.raw_dir / "outcomes.parquet", index=False)
    base = load_policy(None)
    channels = {name: replace(spec, cost_per_lead=float(COSTS[name]))
                for name, spec in base.channels.items()}
    save_policy(replace(base, version="test-costs", channels=channels),
                settings.reports_dir / "routing_policy.yaml")
    return root
