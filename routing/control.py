"""The arms of live routing: the policy, the control group and exploration.

A person's arm comes from one salted SHA-256 draw of the person id, a uniform number u in [0, 1):
the same person is always in the same arm, across calls, processes and machines, and all leads
of a person share it.

* ``control`` (u < ``control_share``): routed by ``rule_2d`` (2-D score at or above
  ``rule.sales_threshold`` → sales, else the AI bot), so the model can be compared with the
  rule on live traffic;
* ``exploration`` (the next ``exploration_share`` of u): the channel is drawn uniformly among
  the channels, from a salted hash of the lead id (a replay draws the same channel), with
  probability 1 / number of channels: the randomised outcomes channel effects are learned from
  and policies are judged by off-policy;
* ``policy``: the routing policy's tier → channel.

Every routed lead carries its arm and the probability with which its channel was chosen
(``propensity``: 1 for the deterministic arms). :func:`route_leads` is the one routing step of
serving (one lead or a batch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from leadscore.schemas import FOLLOWUP_CHANNELS, ROUTING_ARMS
from routing.policy import RoutingPolicy, check_probabilities
from routing.rules import rule_2d_channels

_SCALE = float(2**64)
ARM_POLICY, ARM_EXPLORATION, ARM_CONTROL = ROUTING_ARMS


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
    draws = person_draws(person_ids, salt)
    return draws < share if share > 0.0 else np.zeros(len(draws), dtype=bool)


class RoutedLeads(NamedTuple):
    """Per lead: tier, channel, control flag, arm and the propensity of its channel."""

    tiers: np.ndarray
    channels: np.ndarray
    control: np.ndarray
    arms: np.ndarray
    propensities: np.ndarray


def person_draws(person_ids: Any, salt: str) -> np.ndarray:
    """:func:`control_draw` per person (one hash per distinct person)."""
    ids = list(person_ids)
    if any(_missing(p) for p in ids):
        raise ValueError("person_id: contains missing or empty values")
    draws: dict[str, float] = {}
    out = np.empty(len(ids), dtype=float)
    for i, pid in enumerate(ids):
        key = str(pid)
        draw = draws.get(key)
        if draw is None:
            draw = draws[key] = control_draw(key, salt)
        out[i] = draw
    return out


def assign_arms(person_ids: Any, policy: RoutingPolicy) -> np.ndarray:
    """``control`` / ``exploration`` / ``policy`` per lead (see the module docstring)."""
    _check(policy.control_share, policy.control_salt)
    if not 0.0 <= policy.exploration_share <= 1.0 - policy.control_share:
        raise ValueError(f"exploration_share: {policy.exploration_share} does not fit beside "
                         f"control_share {policy.control_share}")
    u = person_draws(person_ids, policy.control_salt)
    arms = np.full(len(u), ARM_POLICY, dtype=object)
    arms[u < policy.control_share + policy.exploration_share] = ARM_EXPLORATION
    arms[u < policy.control_share] = ARM_CONTROL
    return arms


def exploration_channels(lead_ids: Sequence[Any], policy: RoutingPolicy,
                         channels: Sequence[str] | None = None) -> tuple[np.ndarray, float]:
    """A uniformly drawn channel per lead (salted hash of the lead id) and its probability."""
    options = tuple(channels if channels is not None else FOLLOWUP_CHANNELS)
    if not options:
        raise ValueError("channels: no channel to explore")
    picks = [options[min(int(control_draw(f"explore:{lead}", policy.control_salt)
                                 * len(options)), len(options) - 1)] for lead in lead_ids]
    return np.array(picks, dtype=object), 1.0 / len(options)


class LearnedAllocation:
    """The learned allocation a policy file records (``optimization.allocation``, written by
    `route optimize` from the uplift champion), read once: per lead the channel of
    ``routing.allocate.choose_one`` (``argmax effect − λ·cost − shadow price``; the same
    arithmetic, in the same order, vectorised over leads) and the tier the policy maps it to.
    """

    def __init__(self, policy: RoutingPolicy) -> None:
        allocation = policy.optimization.get("allocation") or {}
        shadow = allocation.get("shadow_prices")
        if not shadow or allocation.get("source") != "uplift":
            raise ValueError("optimization.allocation: the policy records no learned "
                             "allocation (run `leadscore route optimize` with an uplift "
                             "champion)")
        weight = float(allocation.get("cost_weight", 0.0))
        self.channels = tuple(FOLLOWUP_CHANNELS)
        # choose_one's ``row[j] - cost_weight * cost - shadow``, term by term
        self.weighted_cost = np.array([weight * float(policy.channels[c].cost_per_lead)
                                       for c in self.channels])
        self.shadow = np.array([float(shadow.get(c, 0.0)) for c in self.channels])
        self.names = np.array(self.channels, dtype=object)
        self.tiers = np.array([policy.tier_of_channel(c) for c in self.channels], dtype=object)

    def choose(self, effects: Any) -> np.ndarray:
        """Position in ``channels`` per lead; ``effects``: leads × FOLLOWUP_CHANNELS uplift
        (``routing.allocate.AllocationError`` naming ``effects`` when malformed)."""
        matrix = np.asarray(effects, dtype=float)
        if matrix.size % len(self.channels) or (matrix.ndim == 2
                                                 and matrix.shape[1] != len(self.channels)):
            from routing.allocate import AllocationError

            raise AllocationError(f"effects: expected {len(self.channels)} values per lead (one "
                                  f"per channel {list(self.channels)}), got the shape "
                                  f"{matrix.shape}")
        matrix = matrix.reshape(-1, len(self.channels))
        if not np.isfinite(matrix).all():
            from routing.allocate import AllocationError

            bad = matrix[~np.isfinite(matrix).all(axis=1)][0]
            raise AllocationError(f"effects: expected {len(self.channels)} finite values (one "
                                  f"per channel {list(self.channels)}), got {bad.tolist()}")
        return np.argmax(matrix - self.weighted_cost - self.shadow, axis=1)

    def route(self, effects: Any) -> tuple[np.ndarray, np.ndarray]:
        """(tier, channel) per lead."""
        chosen = self.choose(effects)
        return self.tiers[chosen], self.names[chosen]


def allocated_channels(effects: Any, policy: RoutingPolicy | LearnedAllocation) -> np.ndarray:
    """Per lead, the channel of ``routing.allocate.choose_one`` with the shadow prices and
    cost weight the policy file records (:class:`LearnedAllocation`, built once per call
    unless given); ``effects``: leads × FOLLOWUP_CHANNELS uplift."""
    rule = policy if isinstance(policy, LearnedAllocation) else LearnedAllocation(policy)
    return rule.names[rule.choose(effects)]


def route_leads(
    person_ids: Sequence[Any], probability: Any, rule_score: Any, policy: RoutingPolicy,
    rule_threshold: float | None = None, lead_ids: Sequence[Any] | None = None,
    effects: Any = None, allocation: LearnedAllocation | None = None,
) -> RoutedLeads:
    """Tier, channel, control flag, arm and propensity per lead as served (before capacity).

    Policy leads take the policy's tier and channel — or, given the uplift model's ``effects``
    (leads × FOLLOWUP_CHANNELS) and a policy that records a learned allocation, the channel
    :func:`allocated_channels` chooses (tier: the one the policy maps it to; ``allocation``:
    the policy's :class:`LearnedAllocation` read once by the caller, else read here); control
    leads the rule_2d channel, exploration leads a drawn channel (by ``lead_ids``; the person
    ids when not given), each with the tier that the policy maps to its channel, so tier and
    channel always agree.
    """
    if effects is None:
        tiers, channels = policy.assign(probability)
    else:
        check_probabilities(probability)
        rule = allocation if allocation is not None else LearnedAllocation(policy)
        tiers, channels = rule.route(effects)
    arms = assign_arms(person_ids, policy)
    control = arms == ARM_CONTROL
    explore = arms == ARM_EXPLORATION
    propensities = np.ones(len(arms), dtype=float)
    if control.any():
        rule = rule_2d_channels(rule_score, rule_threshold)
        channels = np.where(control, rule, channels)
    if explore.any():
        keys = np.asarray(list(lead_ids if lead_ids is not None else person_ids), dtype=object)
        drawn, share = exploration_channels(keys[explore], policy)
        channels = channels.copy()
        channels[explore] = drawn
        propensities[explore] = share
    if control.any() or explore.any():
        mapped = np.array([policy.tier_of_channel(c) for c in channels], dtype=object)
        tiers = np.where(control | explore, mapped, tiers)
    return RoutedLeads(tiers, channels, control, arms, propensities)


def route_with_control(
    scored: pd.DataFrame, policy: RoutingPolicy, rule_threshold: float | None = None
) -> pd.DataFrame:
    """:func:`route_leads` over a frame with ``person_id``, ``probability``, ``rule_score``."""
    missing = [c for c in ("person_id", "probability", "rule_score") if c not in scored.columns]
    if missing:
        raise ValueError(f"scored: missing column(s) {missing}")
    lead_ids = scored["lead_id"] if "lead_id" in scored.columns else None
    routed_leads = route_leads(
        scored["person_id"], scored["probability"].to_numpy(), scored["rule_score"], policy,
        rule_threshold, lead_ids=lead_ids)
    routed = pd.DataFrame({"tier": routed_leads.tiers, "channel": routed_leads.channels,
                           "control": routed_leads.control, "arm": routed_leads.arms,
                           "propensity": routed_leads.propensities}, index=scored.index)
    if "lead_id" in scored.columns:
        routed.insert(0, "lead_id", scored["lead_id"].to_numpy())
    return routed
