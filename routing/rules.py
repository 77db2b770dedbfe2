"""The practitioners' routing rules that the model policy is compared with.

* ``rule_2d``: the two-dimensional rule score at or above ``rule.sales_threshold`` of the
  scoring tables (``leadscore/defaults/scoring.yaml``, where the user configures it) goes to
  sales, everything else to the AI bot;
* ``rule_funnel``: the K12 routing by funnel step (booked_trial → top sales … → AI bot).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from features.score2d import load_scoring_tables
from routing.policy import K12_FUNNEL_CHANNEL


def rule_threshold_or_default(threshold: float | None) -> float:
    """``threshold``, else ``rule.sales_threshold`` of the packaged scoring tables."""
    return float(threshold) if threshold is not None else load_scoring_tables().rule_threshold


def rule_2d_channels(rule_score: Any, threshold: float | None = None) -> np.ndarray:
    """The practitioners' rule: a 2-D score reaching ``threshold`` goes to sales, else the bot."""
    score = np.asarray(rule_score, dtype=float)
    return np.where(score >= rule_threshold_or_default(threshold), "sales", "ai_bot").astype(object)


def funnel_channels(funnel_step: Any) -> np.ndarray:
    """The K12 routing by funnel step: booked_trial → top_sales … submitted → ai_bot."""
    return np.array([K12_FUNNEL_CHANNEL[s] for s in np.asarray(funnel_step)], dtype=object)
