"""Off-policy evaluation: what a routing policy would have achieved, estimated from logged leads.

Only leads whose channel was drawn at random (the exploration arm, ``routing.control``) carry
the information: for each of them the log holds the channel it got, the probability of that draw
(``propensity``) and, once known, whether it converted. A target policy's conversions on those
leads are then estimated without any model of the world:

* **IPS** (inverse propensity scoring): ``sum(1[a_i = pi(x_i)] * r_i / p_i)``, unbiased, noisy;
* **SNIPS** (self-normalised IPS): IPS divided by the mean weight ``mean(1[a_i = pi(x_i)] / p_i)``,
  a little biased, much steadier;
* **DR** (doubly robust): ``sum(q(x_i, pi(x_i)) + 1[a_i = pi(x_i)] (r_i - q(x_i, a_i)) / p_i)``
  with an outcome model ``q`` (conversion per lead and channel, e.g. the uplift model); unbiased
  when either the propensities or ``q`` are right, and the steadiest of the three.

Costs are known exactly (a channel's cost per lead handled), so only conversions are estimated.
Intervals are percentile bootstraps over leads; :func:`compare_policies` bootstraps the
difference in cost per conversion of two policies on the same resampled leads (paired).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ESTIMATORS: tuple[str, ...] = ("ips", "snips", "dr")
CI_LEVEL = 0.95


class OffPolicyError(ValueError):
    """The logged decisions cannot support the estimate; the message names the field."""


@dataclass(frozen=True)
class LoggedDecisions:
    """Randomised logged leads: the channel each got (index into ``channels``), the probability
    of that choice, and the outcome (1 converted, 0 not)."""

    channels: tuple[str, ...]
    action: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray

    @classmethod
    def from_columns(cls, channels: Sequence[str], logged_channel: Sequence[Any],
                     propensity: Sequence[float], converted: Sequence[Any]) -> LoggedDecisions:
        """Checked construction from the log's columns (channel names, not indices)."""
        names = tuple(channels)
        position = {name: i for i, name in enumerate(names)}
        logged = list(logged_channel)
        unknown = sorted({str(c) for c in logged if c not in position})
        if unknown:
            raise OffPolicyError(f"followup_channel: unknown channel(s) {unknown}; "
                                 f"known: {list(names)}")
        p = np.asarray(propensity, dtype=float)
        if p.shape != (len(logged),):
            raise OffPolicyError("propensity: one value per logged lead expected")
        if len(p) and (not np.isfinite(p).all() or (p <= 0).any() or (p > 1).any()):
            raise OffPolicyError("propensity: every value must lie in (0, 1]")
        r = np.asarray(converted, dtype=float)
        if r.shape != (len(logged),) or (len(r) and not np.isin(r, (0.0, 1.0)).all()):
            raise OffPolicyError("converted: one 0/1 outcome per logged lead expected")
        action = np.array([position[c] for c in logged], dtype=np.int64)
        return cls(names, action, p, r)

    def __len__(self) -> int:
        return len(self.action)


def _positions(target: Sequence[Any], channels: tuple[str, ...]) -> np.ndarray:
    position = {name: i for i, name in enumerate(channels)}
    unknown = sorted({str(c) for c in target if c not in position})
    if unknown:
        raise OffPolicyError(f"target policy: unknown channel(s) {unknown}")
    return np.array([position[c] for c in target], dtype=np.int64)


def _conversions(match_weight: np.ndarray, reward: np.ndarray, q_target: np.ndarray | None,
                 q_logged: np.ndarray | None) -> dict[str, np.ndarray]:
    """Estimated conversions per estimator; works on (n,) or (B, n) arrays (bootstrap rows)."""
    n = match_weight.shape[-1]
    ips = (match_weight * reward).sum(axis=-1)
    weight_sum = match_weight.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        snips = np.where(weight_sum > 0, ips * n / weight_sum, np.nan)
    out = {"ips": ips, "snips": snips}
    if q_target is not None and q_logged is not None:
        out["dr"] = (q_target + match_weight * (reward - q_logged)).sum(axis=-1)
    return out


def evaluate_policy(
    logged: LoggedDecisions, target: Sequence[Any], cost_per_lead: Mapping[str, float],
    outcome_model: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Conversions, total cost and cost per conversion of ``target`` (one channel per logged
    lead) on the logged leads, per estimator, with bootstrap 95% intervals.

    ``outcome_model``: (n, channels) predicted conversion per lead and channel, for DR.
    """
    n = len(logged)
    if n == 0:
        raise OffPolicyError("logged: no randomised lead with a known outcome to judge on")
    actions = _positions(target, logged.channels)
    if actions.shape != (n,):
        raise OffPolicyError(f"target policy: {len(actions)} channels for {n} logged leads")
    costs = np.array([float(cost_per_lead[c]) for c in logged.channels])
    spent = costs[actions]
    match = (actions == logged.action) / logged.propensity
    q_target = q_logged = None
    if outcome_model is not None:
        q = np.asarray(outcome_model, dtype=float)
        if q.shape != (n, len(logged.channels)):
            raise OffPolicyError(f"outcome_model: shape {q.shape}, expected "
                                 f"({n}, {len(logged.channels)})")
        rows = np.arange(n)
        q_target, q_logged = q[rows, actions], q[rows, logged.action]
    point = _conversions(match, logged.reward, q_target, q_logged)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n))
    boot = _conversions(match[draws], logged.reward[draws],
                        None if q_target is None else q_target[draws],
                        None if q_logged is None else q_logged[draws])
    boot_cost = spent[draws].sum(axis=-1)
    total_cost = float(spent.sum())
    alpha = (1 - CI_LEVEL) / 2
    result: dict[str, dict[str, Any]] = {}
    for name, conversions in point.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(boot[name] > 0, boot_cost / boot[name], np.nan)
        finite = ratio[np.isfinite(ratio)]
        value = float(conversions)
        result[name] = {
            "conversions": value,
            "conversions_ci": _interval(boot[name], alpha),
            "total_cost": total_cost,
            "cost_per_conversion": total_cost / value if value > 0 else None,
            "cost_per_conversion_ci": (
                [float(np.quantile(finite, alpha)), float(np.quantile(finite, 1 - alpha))]
                if len(finite) >= 0.9 * n_boot else None),
            "leads": n,
        }
    return result


def _interval(values: np.ndarray, alpha: float) -> list[float] | None:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    return [float(np.quantile(finite, alpha)), float(np.quantile(finite, 1 - alpha))]


def compare_policies(
    logged: LoggedDecisions, first: Sequence[Any], second: Sequence[Any],
    cost_per_lead: Mapping[str, float], outcome_model: np.ndarray | None = None,
    estimator: str = "dr", n_boot: int = 1000, seed: int = 0,
) -> dict[str, Any]:
    """Paired bootstrap of ``first`` against ``second`` on the same logged leads: the relative
    difference in cost per conversion and the difference in conversions, with 95% intervals."""
    if estimator not in ESTIMATORS:
        raise OffPolicyError(f"estimator: {estimator!r} is not one of {ESTIMATORS}")
    if estimator == "dr" and outcome_model is None:
        raise OffPolicyError("estimator 'dr' needs an outcome_model")
    n = len(logged)
    costs = np.array([float(cost_per_lead[c]) for c in logged.channels])
    q = None if outcome_model is None else np.asarray(outcome_model, dtype=float)
    rows = np.arange(n)
    rng = np.random.default_rng(seed)
    draws = np.vstack([rows, rng.integers(0, n, size=(n_boot, n))])  # row 0: the sample itself
    parts = []
    for target in (first, second):
        actions = _positions(target, logged.channels)
        match = (actions == logged.action) / logged.propensity
        q_target = None if q is None else q[rows, actions][draws]
        q_logged = None if q is None else q[rows, logged.action][draws]
        conv = _conversions(match[draws], logged.reward[draws], q_target, q_logged)[estimator]
        parts.append((conv, costs[actions][draws].sum(axis=-1)))
    (conv_a, cost_a), (conv_b, cost_b) = parts
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = (cost_a / conv_a) / (cost_b / conv_b) - 1.0
    alpha = (1 - CI_LEVEL) / 2
    return {
        "estimator": estimator,
        "cost_per_conversion_change": float(relative[0]),
        "cost_per_conversion_change_ci": _interval(relative[1:], alpha),
        "conversions_difference": float(conv_a[0] - conv_b[0]),
        "conversions_difference_ci": _interval((conv_a - conv_b)[1:], alpha),
    }
