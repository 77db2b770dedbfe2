"""The weekly report's routing table: what every policy would have achieved on the served leads,
estimated off-policy from the prediction log's exploration rows (``routing.offpolicy``).

Rows: the period's logged leads whose outcome window closed (the matured cohort) with arm
``exploration``: their channel was drawn at random with the logged ``propensity``. Policies:
``probability_tiers`` (the active policy's tiers on the logged probability), ``rule_2d`` (the
logged 2-D rule score), ``rule_funnel`` (the logged funnel step), ``everyone_to_<channel>``, and
``uplift`` when the active policy records a learned allocation and its uplift model loads (its
per-channel conversions are then DR's outcome model). Estimators ``ips``, ``snips`` (and ``dr``
with the uplift model), bootstrap 95% intervals. Per lead, not per day: the served leads of a
week are not a whole day's traffic, so capacity is not replayed here (``route evaluate`` does,
on the held-out days) and the optimised rules, tuned on held-out days, are not re-tuned here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leadscore.config import Settings
from leadscore.schemas import FOLLOWUP_CHANNELS, FUNNEL_STEPS
from routing.offpolicy import LoggedDecisions, OffPolicyError, evaluate_policy
from routing.policy import resolve_active_policy
from routing.rules import funnel_channels, rule_2d_channels

MIN_EXPLORATION_ROWS = 30


def routing_table(cohort: pd.DataFrame, settings: Settings, n_boot: int = 500
                  ) -> dict[str, Any] | None:
    """Per policy and estimator, conversions and cost per conversion with intervals on the
    cohort's exploration rows; None below ``MIN_EXPLORATION_ROWS`` such rows."""
    if cohort is None or "arm" not in cohort.columns:
        return None
    rows = cohort[(cohort["arm"] == "exploration")
                  & cohort["channel"].isin(FOLLOWUP_CHANNELS)].reset_index(drop=True)
    if len(rows) < MIN_EXPLORATION_ROWS:
        return None
    policy = resolve_active_policy(settings).policy
    logged = LoggedDecisions.from_columns(FOLLOWUP_CHANNELS, rows["channel"],
                                          rows["propensity"], rows["converted"])
    costs = {c: float(policy.channels[c].cost_per_lead) for c in FOLLOWUP_CHANNELS}
    targets: dict[str, np.ndarray] = {
        "probability_tiers": policy.assign(rows["probability"].to_numpy(float))[1]}
    if "rule_score" in rows.columns:
        targets["rule_2d"] = rule_2d_channels(rows["rule_score"].fillna(0.0))
    if "funnel_step" in rows.columns and rows["funnel_step"].isin(FUNNEL_STEPS).all():
        targets["rule_funnel"] = funnel_channels(rows["funnel_step"])
    for channel in FOLLOWUP_CHANNELS:
        targets[f"everyone_to_{channel}"] = np.full(len(rows), channel, dtype=object)
    outcome_model = None
    allocation = policy.optimization.get("allocation") or {}
    if allocation.get("source") == "uplift":
        try:
            from routing.control import allocated_channels
            from routing.evaluate import channel_matrix
            from training.uplift_registry import load_uplift_model

            model = load_uplift_model(allocation["model"])
            effects, outcome_model = channel_matrix(model, rows)
            targets["uplift"] = allocated_channels(effects, policy)
        except (OSError, ValueError, KeyError):
            outcome_model = None
    policies = {}
    for name, target in targets.items():
        try:
            policies[name] = evaluate_policy(logged, target, costs, outcome_model,
                                             n_boot=n_boot)
        except OffPolicyError:
            continue
    return {"exploration_leads": int(len(rows)), "policies": policies,
            "estimators": ["ips", "snips"] + (["dr"] if outcome_model is not None else []),
            "note": "per lead on the served week's randomised leads; capacity not replayed"}


def routing_section(settings: Settings, cohort: pd.DataFrame | None, folder: Path,
                    notes: list[str]) -> dict[str, Any] | None:
    """:func:`routing_table` written to ``<folder>/routing.json``; None (and a note) when the
    week has too few matured exploration leads."""
    try:
        table = routing_table(cohort, settings) if cohort is not None else None
    except Exception as exc:  # noqa: BLE001 - a missing table must not stop the report
        notes.append(f"routing table skipped ({type(exc).__name__}: {exc})")
        return None
    if table is None:
        notes.append(f"routing table skipped: fewer than {MIN_EXPLORATION_ROWS} exploration "
                     "leads whose outcome window closed")
        return None
    (folder / "routing.json").write_text(json.dumps(table, indent=2, default=str))
    return table
