"""Served AUC at submission and after each later funnel step, for the matured leads.

From the service's lead state (``crm_data.lead_state``: each lead's score history, the cause of
every score) and the CRM's outcomes: the leads submitted in ``[since − window, until −
window)`` (their conversion window closed by the period's end), each scored

* ``at_submission``: its first score (``/predict``, the funnel step its form recorded);
* ``after_<step>`` for ``verified``, ``followed_account``, ``booked_trial``: its score at the
  latest step event up to ``<step>`` (a lead that never reached ``<step>`` keeps its latest
  earlier one: at submission when it reached no later step) — what the CRM knew once the lead
  reached or passed the step, as the training report's ``auc_by_stage`` defines it.

The label: converted within the window (paid by ``submitted + window``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from crm_data.lead_state import DAY_US, LeadStateStore, to_us
from leadscore.schemas import FUNNEL_STEPS

SUBMISSION_CAUSE = "submission"
STEP_RANK = {step: i for i, step in enumerate(FUNNEL_STEPS) if i}


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    if not 0 < y.sum() < y.size:
        return None
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(y, p)), 4)


def stage_auc_summary(store: LeadStateStore, outcomes: pd.DataFrame | None, since: datetime,
                      until: datetime, window_days: int) -> dict[str, Any]:
    """The matured leads' AUC at submission and after each step, side by side."""
    window_us = window_days * DAY_US
    low, high = to_us(since) - window_us, to_us(until) - window_us
    rows = [(h.lead_id, h.at_us, h.probability, h.cause) for h in store.all_history()
            if h.cause == SUBMISSION_CAUSE or h.cause in STEP_RANK]
    history = pd.DataFrame(rows, columns=["lead_id", "at_us", "probability", "cause"])
    first = history[history["cause"] == SUBMISSION_CAUSE].sort_values("at_us").drop_duplicates(
        "lead_id")
    first = first[(first["at_us"] >= low) & (first["at_us"] < high)]
    out: dict[str, Any] = {"cohort_submitted": [str(pd.Timestamp(low, unit="us", tz="UTC")),
                                                str(pd.Timestamp(high, unit="us", tz="UTC"))],
                           "n": int(len(first)), "stages": {}}
    if first.empty:
        return out
    submitted = first.set_index("lead_id")["at_us"]
    paid: dict[str, int] = {}
    if outcomes is not None and not outcomes.empty:
        won = outcomes[outcomes["converted"].astype(bool) & outcomes["converted_at"].notna()]
        paid = {str(lead): to_us(pd.Timestamp(at).to_pydatetime())
                for lead, at in zip(won["lead_id"], won["converted_at"], strict=True)}
    y = np.array([int(lead in paid and paid[lead] <= submitted[lead] + window_us)
                  for lead in submitted.index])
    out["positives"] = int(y.sum())
    mine = history[history["lead_id"].isin(submitted.index)].copy()
    mine["rank"] = mine["cause"].map(STEP_RANK).fillna(0).astype(int)
    for stage, limit in (("at_submission", 0), *((f"after_{s}", r) for s, r in
                                                 STEP_RANK.items())):
        chosen = (mine[mine["rank"] <= limit].sort_values(["lead_id", "rank", "at_us"])
                  .drop_duplicates("lead_id", keep="last").set_index("lead_id"))
        p = chosen["probability"].reindex(submitted.index).to_numpy()
        out["stages"][stage] = {"auc": _auc(y, p),
                                "scored_after_a_step": int((chosen["rank"] > 0).sum())}
    return out
