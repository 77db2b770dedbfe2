"""The nurturing figures of the weekly report: fast vs old conversions, upgrades and their worth.

From the service's lead state (``crm_data.lead_state``: every scored lead, its score history
and the notifications sent to the CRM) and the CRM's outcomes table:

* ``conversions``: the period's conversions (paid within the period) of leads the service
  scored, split into fast ones (paid < ``FAST_DAYS`` days after submission) and old, nurtured
  ones (paid later), with the old share and a Wilson 95% interval — the seed documents' "about
  half of conversions from old leads in good nurturing";
* ``first_upgrade``: for leads whose first upgrade (a better tier than their first answer)
  was scored in the period, the time from submission to it (median, p90, in hours);
* ``upgrades_pushed``: upgrade notifications delivered in the period, and how many of those
  leads converted later (within their conversion window), beside leads of the same first tier
  that were never upgraded (the baseline), each with a Wilson 95% interval; only payments by
  the period's end count, and leads whose window has not closed by then are counted as
  ``open``, not as failures.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from crm_data.lead_state import DAY_US, DELIVERED, LeadStateStore, to_us
from leadscore.schemas import TIERS

FAST_DAYS = 30
TIER_RANK = {tier: i for i, tier in enumerate(TIERS)}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score 95% interval of a proportion (None without observations)."""
    if n <= 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"n": n, "converted": k, "rate": None if n == 0 else round(k / n, 4),
            "ci95": wilson(k, n)}


def nurturing_summary(store: LeadStateStore, outcomes: pd.DataFrame | None, since: datetime,
                      until: datetime, window_days: int) -> dict[str, Any]:
    """The period's nurturing figures (see the module's notes)."""
    since_us, until_us = to_us(since), to_us(until)
    leads = {lead_id: row for lead_id, row in _lead_rows(store).items()}
    history = store.all_history()
    paid: dict[str, int] = {}
    if outcomes is not None and not outcomes.empty:
        for lead_id, converted, at in zip(outcomes["lead_id"], outcomes["converted"],
                                          outcomes["converted_at"], strict=True):
            if bool(converted) and not pd.isna(at) and str(lead_id) in leads:
                paid[str(lead_id)] = to_us(pd.Timestamp(at).to_pydatetime())

    # fast vs old conversions in the period
    ages = [(paid_us - leads[lead][0]) / DAY_US for lead, paid_us in paid.items()
            if since_us <= paid_us < until_us]
    old = sum(age >= FAST_DAYS for age in ages)
    conversions = {"n": len(ages), "fast": len(ages) - old, "old": old,
                   "old_share": None if not ages else round(old / len(ages), 4),
                   "old_share_ci95": wilson(old, len(ages)), "fast_days": FAST_DAYS}

    # time from submission to the first upgrade
    first_tier: dict[str, str] = {}
    first_upgrade: dict[str, int] = {}
    for h in history:  # ordered by lead, time
        if h.lead_id not in first_tier:
            first_tier[h.lead_id] = h.tier
            continue
        if h.lead_id not in first_upgrade and TIER_RANK[h.tier] < TIER_RANK[first_tier[h.lead_id]]:
            first_upgrade[h.lead_id] = h.at_us
    hours = np.array([(at - leads[lead][0]) / 3.6e9 for lead, at in first_upgrade.items()
                      if lead in leads and since_us <= at < until_us])
    upgrade_time = {"n": int(hours.size),
                    "median_hours": None if not hours.size else round(float(np.median(hours)), 2),
                    "p90_hours": None if not hours.size
                    else round(float(np.quantile(hours, 0.9)), 2)}

    # upgrades pushed (delivered) and their later conversion, beside never-upgraded leads
    window_us = window_days * DAY_US
    pushed = {m["lead_id"] for m in store.outbox_rows(DELIVERED)
              if m["kind"] == "upgrade" and m["delivered_us"] is not None
              and since_us <= m["delivered_us"] < until_us}
    upgraded_ever = {m["lead_id"] for m in store.outbox_rows() if m["kind"] == "upgrade"}

    def outcome_counts(lead_ids: set[str]) -> tuple[Counter, int]:
        counts: Counter = Counter()
        for lead in lead_ids:
            submitted = leads[lead][0]
            if lead in paid and paid[lead] <= min(submitted + window_us, until_us):
                counts["converted"] += 1  # paid in its window, and known by the period's end
            elif submitted + window_us <= until_us:
                counts["not_converted"] += 1
            else:
                counts["open"] += 1
        return counts, counts["converted"] + counts["not_converted"]

    counts, closed = outcome_counts({lead for lead in pushed if lead in leads})
    tiers = {leads[lead][1] for lead in pushed if lead in leads}
    baseline_ids = {lead for lead, (submitted, tier) in leads.items()
                    if tier in tiers and lead not in upgraded_ever
                    and since_us - window_us <= submitted < until_us}
    base_counts, base_closed = outcome_counts(baseline_ids)
    upgrades = {"pushed": len(pushed), "still_open": counts["open"],
                "later_conversion": _rate(counts["converted"], closed),
                "baseline_same_first_tier_not_upgraded": _rate(base_counts["converted"],
                                                               base_closed)}
    return {"leads_scored": len(leads), "conversions": conversions,
            "first_upgrade": upgrade_time, "upgrades_pushed": upgrades}


def _lead_rows(store: LeadStateStore) -> dict[str, tuple[int, str]]:
    """lead id → (submitted_us, first tier) of every lead in the store."""
    rows = store._query("SELECT lead_id, submitted_us, first_tier FROM lead_state")
    return {r[0]: (int(r[1]), str(r[2])) for r in rows}
