"""Synthetic stand-ins shared by tests and benchmarks (no file, no service, deterministic).

- ``synthetic_training_set``: a stand-in for ``data/training_set.parquet`` (time-ordered leads
  with a label, numeric and categorical features and a rule score);
- ``synthetic_leads``: held-out leads with known propensities under each follow-up channel,
  for the routing optimiser and simulator.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from leadscore.schemas import FUNNEL_STEPS
from routing.simulate import PROPENSITY_COLUMNS

STEP_EFFECT = {"submitted": 0.0, "verified": 0.6, "followed_account": 1.1, "booked_trial": 2.0}
CHANNEL_EFFECT = {"sem": 0.0, "feed_ads": -0.4, "seo": 0.3, "wechat_private": 0.6}


def synthetic_training_set(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """A stand-in for ``data/training_set.parquet``: time-ordered leads with a label."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    # whole minutes: many leads share a timestamp, so the split must handle ties
    minutes = np.sort(rng.integers(0, 150 * 24 * 60, n))
    channel = rng.choice(list(CHANNEL_EFFECT), n)
    step = rng.choice(list(STEP_EFFECT), n, p=[0.4, 0.3, 0.2, 0.1])
    days = np.where(rng.random(n) < 0.2, 9999.0, rng.exponential(20, n))
    intent = rng.gamma(2.0, 2.0, n)
    prior = rng.poisson(0.5, n)
    fit = rng.normal(20, 10, n)
    interest = rng.normal(20, 15, n)
    step_effect = pd.Series(step).map(STEP_EFFECT).to_numpy()
    logit = (-2.8 + step_effect + pd.Series(channel).map(CHANNEL_EFFECT).to_numpy()
             + 0.25 * intent - 0.03 * np.minimum(days, 90) + 0.3 * prior)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
    return pd.DataFrame({
        "lead_id": [f"lead-{i:06d}" for i in range(n)],
        "person_id": [f"person-{i // 2:06d}" for i in range(n)],
        "created_at": start + pd.to_timedelta(minutes, unit="m"),
        "label": label,
        "channel": channel,
        "funnel_step": step,
        "days_since_last_touch": days,
        "intent_score": intent,
        "prior_leads": prior,
        "fit_score": fit,
        "interest_score": interest,
        "rule_score": fit + interest + 10 * step_effect,
    })


UPLIFT = {"ai_bot": 1.0, "tmk": 1.6, "sales": 2.2, "top_sales": 2.6}
K12_BY_STEP = ("ai_bot", "tmk", "sales", "top_sales")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def synthetic_leads(
    n: int = 3000, days: int = 30, seed: int = 0, score_noise: float | None = 0.3
) -> pd.DataFrame:
    """Held-out leads with truth: top_sales > sales > tmk > ai_bot propensities, a funnel step
    and a 2-D rule score that follow intent, and a noisy calibrated-ish probability of conversion
    under the historical (K12 funnel) follow-up. ``score_noise=None`` gives a useless score."""
    rng = np.random.default_rng(seed)
    intent = rng.normal(size=n)
    step = np.searchsorted([-0.25, 0.8, 1.65], 0.9 * intent + rng.normal(0, 0.8, n))
    base = -4.0 + 1.1 * intent + np.array([0.0, 0.35, 0.75, 1.5])[step] + rng.normal(0, 0.5, n)
    exponent = 0.4 + 1.2 * _sigmoid(base + 2.5)  # high-intent leads gain more from people
    propensity = {c: _sigmoid(base + exponent * np.log(u)) for c, u in UPLIFT.items()}
    historical = np.choose(step, [propensity[c] for c in K12_BY_STEP])
    if score_noise is None:
        probability = rng.permutation(historical)
    else:
        logit = np.log(historical / (1 - historical)) + rng.normal(0, score_noise, n)
        probability = _sigmoid(logit)
    rule_score = np.clip(35 + 14 * intent + 10 * step + rng.normal(0, 14, n), 0, 150).round()
    start = pd.Timestamp("2026-06-01", tz="UTC")
    created = start + pd.to_timedelta(np.sort(rng.uniform(0, days * 86_400, n)), unit="s")
    return pd.DataFrame(
        {
            "lead_id": [f"L{i:06d}" for i in range(n)],
            "person_id": [f"person:{i // 2:06d}" for i in range(n)],
            "created_at": created,
            "probability": probability,
            "funnel_step": np.array(FUNNEL_STEPS)[step],
            "rule_score": rule_score,
            **{PROPENSITY_COLUMNS[c]: v for c, v in propensity.items()},
        }
    )
