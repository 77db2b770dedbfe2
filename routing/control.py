"""The control group: a stable share of persons routed by the rule policy instead of the model.

Membership is a salted SHA-256 of the person id mapped to a uniform number in [0, 1): the same
person is always in (or out of) the control group, across calls, processes and machines, and
all leads of a person share the decision. Control leads are routed by ``rule_2d`` (2-D score at
or above ``rule.sales_threshold`` → sales, else the AI bot) and marked ``control=True``, so the
model can be compared with the rule on live traffic. :func:`route_leads` is the one routing step
of serving (one lead or a batch) and of the simulation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from routing.policy import RoutingPolicy
from routing.rules import rule_2d_channels

_SCALE = float(2**64)


def control_draw(person_id: str, salt: str) -> float:
    """Uniform number in [0, 1) from ``sha256(salt + ':' + person_id)`` (first 8 bytes)."""
    digest = hashlib.sha256(f"{salt}:{person_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def _check(share: float, salt: str) -> None:
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"control_share: {share} lies outside [0, 1]")
    if not salt:
        raise ValueError("control_salt: must not be empty")


def is_control(person_id: str, share: float, salt: str) -> bool:
    """True when the person belongs to the control group of size ``share``."""
    _check(share, salt)
    if person_id is None or str(person_id) == "":
        raise ValueError("person_id: must not be empty")
    return control_draw(str(person_id), salt) < share


def _missing(person_id: Any) -> bool:
    return person_id is None or person_id != person_id or str(person_id) == ""


def control_mask(person_ids: Any, share: float, salt: str) -> np.ndarray:
    """Vectorised :func:`is_control` over a Series/sequence of person ids (boolean array)."""
    _check(share, salt)
    ids = list(person_ids)
    if any(_missing(p) for p in ids):
        raise ValueError("person_id: contains missing or empty values")
    if share == 0.0:
        return np.zeros(len(ids), dtype=bool)
    draws: dict[str, float] = {}
    out = np.empty(len(ids), dtype=bool)
    for i, pid in enumerate(ids):
        key = str(pid)
        draw = draws.get(key)
        if draw is None:
            draw = draws[key] = control_draw(key, salt)
        out[i] = draw < share
    return out


def route_leads(
    person_ids: Sequence[Any], probability: Any, rule_score: Any, policy: RoutingPolicy,
    rule_threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tier, channel and control flag per lead as served (before daily capacity).

    Model leads take the policy's tier and channel; control leads take the rule_2d channel and
    the tier that the policy maps to that channel, so tier and channel always agree.
    """
    tiers, channels = policy.assign(probability)
    control = control_mask(person_ids, policy.control_share, policy.control_salt)
    if not control.any():
        return tiers, channels, control
    rule = rule_2d_channels(rule_score, rule_threshold)
    rule_tiers = np.array([policy.tier_of_channel(c) for c in rule], dtype=object)
    return np.where(control, rule_tiers, tiers), np.where(control, rule, channels), control


def route_with_control(
    scored: pd.DataFrame, policy: RoutingPolicy, rule_threshold: float | None = None
) -> pd.DataFrame:
    """:func:`route_leads` over a frame with ``person_id``, ``probability``, ``rule_score``."""
    missing = [c for c in ("person_id", "probability", "rule_score") if c not in scored.columns]
    if missing:
        raise ValueError(f"scored: missing column(s) {missing}")
    tiers, channels, control = route_leads(
        scored["person_id"], scored["probability"].to_numpy(), scored["rule_score"], policy,
        rule_threshold)
    routed = pd.DataFrame({"tier": tiers, "channel": channels, "control": control},
                          index=scored.index)
    if "lead_id" in scored.columns:
        routed.insert(0, "lead_id", scored["lead_id"].to_numpy())
    return routed
