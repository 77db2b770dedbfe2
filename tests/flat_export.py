"""A generated flat CRM export in time order, shared by tests and benchmarks (deterministic).

``telemarketing_export`` imitates a bank or course-sales telemarketing export: one row per call
campaign contact, rows in time order, no date column unless asked for. What makes it realistic
for honest evaluation:

- **time drift**: a macro state (an interest-rate index, a consumer-confidence index and the
  headcount of the sales floor, constant within a month, as such exports carry them) walks over
  the months; the monthly base rate follows the rate index linearly *plus* a month-specific
  shock of its own. A random k-fold split lets a tree model recognise every month by its macro
  values and learn its shock (the same months are in training and test); forward in time the
  months are new, the shocks unknowable, and only the linear part carries over; likewise the
  call script, which changes every month how much a mobile contact helps;
- **a post-outcome column**: ``call_seconds``, the length of the call, known only after the
  call, whose stand-alone AUC stands far above every other column's;
- ordinary person columns (age, job, marital status, education, a housing loan, the contact
  channel, contacts in this campaign, days since the last campaign, the last outcome) with
  modest signal and missing values that depend on the channel.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

JOBS = ("admin", "blue-collar", "technician", "services", "management", "retired",
        "entrepreneur", "self-employed", "housemaid", "unemployed", "student")
JOB_EFFECT = dict(zip(JOBS, (0.1, -0.3, 0.0, -0.2, 0.1, 0.6, -0.1, 0.0, -0.1, 0.2, 0.7),
                      strict=True))
EDUCATION = ("basic", "high.school", "professional", "university")
POST_OUTCOME_COLUMN = "call_seconds"


def telemarketing_export(n: int = 40_000, seed: int = 0, months: int = 26,
                         with_date: bool = False, shock_sd: float = 0.6,
                         script_sd: float = 1.2) -> pd.DataFrame:
    """``n`` contacts over ``months`` months in time order, label ``subscribed`` (0/1).

    With ``with_date`` a ``contact_date`` column (ISO dates) is added; without, the rows'
    order is the only clock (``train --csv --order-is-time``). ``shock_sd`` and ``script_sd``
    (logits) set how much each month's base rate and each month's call script differ.
    """
    rng = np.random.default_rng(seed)
    # Contacts per month vary (campaign waves); the rows are sorted by month, then by day.
    weights = rng.gamma(2.0, 1.0, months)
    month = np.sort(rng.choice(months, n, p=weights / weights.sum()))
    # Macro state: random walks, one value per month.
    rate_index = 4.5 + np.cumsum(rng.normal(-0.12, 0.35, months))
    confidence = -40 + np.cumsum(rng.normal(0.0, 2.0, months))
    headcount = 5100 + np.cumsum(rng.normal(-5.0, 25.0, months)).round()
    shock = rng.normal(0.0, shock_sd, months)  # month-specific, not predictable from the past
    # The call script changes every month: how much a mobile contact helps is the month's own
    # (centred on the month's share of mobile contacts: the month's rate stays the base's).
    script = rng.normal(0.0, script_sd, months)
    base = -3.0 - 0.35 * (rate_index - rate_index.mean()) + shock

    age = np.clip(rng.normal(40, 11, n), 18, 90).round()
    job = rng.choice(JOBS, n, p=[0.25, 0.22, 0.16, 0.1, 0.07, 0.04, 0.04, 0.04, 0.03, 0.03,
                                 0.02])
    marital = rng.choice(["married", "single", "divorced"], n, p=[0.6, 0.28, 0.12])
    education = rng.choice(EDUCATION, n, p=[0.3, 0.23, 0.13, 0.34])
    housing = rng.choice(["yes", "no"], n)
    cell_share = np.clip(0.35 + 0.03 * np.arange(months), 0, 0.95)
    cellular = rng.random(n) < cell_share[month]
    contacts = 1 + rng.poisson(1.5, n)
    previous = rng.poisson(0.2, n)
    before = previous > 0
    last_success = before & (rng.random(n) < 0.3)
    days_since = np.where(before, rng.integers(1, 30, n), 999)

    logit = (base[month] + np.vectorize(JOB_EFFECT.get)(job) + 0.5 * cellular
             + script[month] * (cellular - cell_share[month])
             - 0.12 * (contacts - 1) + 1.6 * last_success + 0.2 * before
             + 0.015 * np.abs(age - 40) + 0.15 * (education == "university"))
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    # Known only after the call: converted calls last longer.
    seconds = rng.gamma(2.0, 110.0, n) * np.where(y == 1, 2.6, 1.0)

    # Missing values that depend on the channel: landline contacts leave education blank more.
    education_shown = np.where(rng.random(n) < np.where(cellular, 0.03, 0.12), None, education)
    outcome = np.where(last_success, "success", np.where(before, "failure", "nonexistent"))
    frame = pd.DataFrame({
        "age": age.astype(int),
        "job": job,
        "marital": marital,
        "education": education_shown,
        "housing": housing,
        "contact": np.where(cellular, "cellular", "telephone"),
        "campaign": contacts,
        "pdays": days_since,
        "previous": previous,
        "poutcome": outcome,
        "rate_index": rate_index[month].round(3),
        "confidence_index": confidence[month].round(1),
        "headcount": headcount[month],
        POST_OUTCOME_COLUMN: seconds.round(),
        "subscribed": y,
    })
    if with_date:
        start = pd.Timestamp("2024-01-01")
        day = rng.integers(0, 28, n)
        order = np.lexsort((day, month))
        frame = frame.iloc[order].reset_index(drop=True)
        dates = [start + pd.DateOffset(months=int(m), days=int(d))
                 for m, d in zip(month[order], day[order], strict=True)]
        frame.insert(0, "contact_date", [d.strftime("%Y-%m-%d") for d in dates])
    return frame
