"""Tier cut-offs that buy the most expected conversions for the cost, within daily capacity.

Modelling assumption (the policy's ``probability_reference``): the calibrated probability ``p``
is the conversion under a reference follow-up, and a channel ``c`` multiplies it by its
``relative_conversion``: ``E[conv | c] = min(1, p / rel[reference] × rel[c])``. With
``probability_reference: funnel_step`` the reference is the channel that handled the lead's
funnel step in the training history (the K12 routing), so the AI-bot baseline is
``p / rel[historical channel]``. No truth and no labels are used: only the scored leads of the
tuning slice (`route optimize` takes the earliest days of the hold-out; `route simulate` judges
the policy on the later ones).

Search: every monotone triple (A ≥ B ≥ C) of cut-offs on a grid of probability quantiles
(denser near the top, plus 0 and 1 for empty tiers), then a finer grid around that choice.
Each candidate is scored with the same daily capacity rule as the simulation (per calendar day,
arrival order, a full channel overflows to the next cheaper one), so peak days are priced in;
``strict_capacity=True`` instead keeps only cut-offs whose assignment fits every day without
overflow.

The rule policies (rule_2d, rule_funnel) are priced with the same estimator and capacity rule;
the *best rule* is the one with the most expected conversions. Objectives:

* ``goal_margin`` (default): the routing goal — at least the best rule's conversions at a cost
  per conversion ``goal_reduction`` (15%) below the rule's; against every rule at once (the most
  conversions of any rule, 15% below the cheapest rule's cost per conversion) whenever some
  candidate reaches that on the estimates — met with the largest equal
  room on both sides: maximise ``min(conversions / rule − 1, 1 − CPA / ((1 − g) × rule CPA))``,
  the largest relative error in the estimated conversions *or* cost per conversion that would
  still leave the goal met. Unlike ``cpa_cap`` it stops buying conversions once the extra ones
  cost more room on the CPA side than they add on the conversion side, so the marginal
  expensive follow-ups whose uplift does not pay are left to cheaper channels;
* ``cpa_cap``: the most conversions whose cost per conversion is at least ``cpa_reduction``
  (20%) below the best rule's (spends up to that average-CPA ceiling, so the last leads bought
  can cost thousands of RMB per extra conversion);
* ``match_rules``: the cheapest cut-offs whose expected conversions reach the best rule's
  × (1 + ``conversion_margin``);
* ``net_value``: maximise ``value_per_conversion × conversions − cost``;
* ``budget``: maximise conversions with cost ≤ ``budget_per_lead × leads``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from leadscore.schemas import TIERS
from routing.policy import RoutingPolicy, bump_version
from routing.rules import funnel_channels, rule_2d_channels
from routing.simulate import (
    GOAL_CPA_REDUCTION,
    SCORED_COLUMNS,
    DayIndex,
    apply_daily_capacity,
    channel_positions,
    day_index,
    validate_leads,
)

OBJECTIVES: tuple[str, ...] = ("goal_margin", "cpa_cap", "match_rules", "net_value", "budget")
MAX_FRONTIER_POINTS = 40
CHUNK = 128  # candidates evaluated per vectorised batch
REFINE_POINTS = 9  # extra cut-off values tried around each coarse choice


def expected_conversions(leads: pd.DataFrame, policy: RoutingPolicy) -> np.ndarray:
    """Estimated conversion probability per lead (rows) under each channel (by-cost order)."""
    steps = leads["funnel_step"].to_numpy() if "funnel_step" in leads else None
    reference = policy.reference_conversion(steps, n=len(leads))
    baseline = leads["probability"].to_numpy(dtype=float) / reference
    relative = np.array([policy.channels[c].relative_conversion for c in policy.channels_by_cost])
    return np.minimum(1.0, baseline[:, None] * relative[None, :])


def cutoff_grid(probability: np.ndarray, grid_size: int) -> np.ndarray:
    """Sorted candidate cut-offs: probability quantiles, denser in the top 30%, plus 0 and 1."""
    if grid_size < 3:
        raise ValueError("grid_size: must be at least 3")
    levels = np.concatenate(
        [np.linspace(0.0, 1.0, grid_size), 1.0 - np.geomspace(0.003, 0.3, max(3, grid_size // 2))]
    )
    values = np.round(np.quantile(probability, np.clip(levels, 0.0, 1.0)), 6)
    return np.unique(np.concatenate([[0.0, 1.0], values]))


def _local_values(probability: np.ndarray, grid: np.ndarray, value: float) -> np.ndarray:
    """Up to ``REFINE_POINTS`` probability quantiles between a grid value's neighbours."""
    index = int(np.searchsorted(grid, value))
    low, high = grid[max(0, index - 1)], grid[min(grid.size - 1, index + 1)]
    inside = probability[(probability >= low) & (probability <= high)]
    values = [low, value, high]
    if inside.size:
        values.extend(np.quantile(inside, np.linspace(0.0, 1.0, REFINE_POINTS)))
    return np.unique(np.round(values, 6))


def _monotone_triples(a_values: np.ndarray, b_values: np.ndarray, c_values: np.ndarray
                      ) -> np.ndarray:
    """All (A, B, C) with A ≥ B ≥ C from the three value sets, shape (n, 3)."""
    a, b, c = np.meshgrid(a_values, b_values, c_values, indexing="ij")
    triples = np.stack([a.ravel(), b.ravel(), c.ravel()], axis=1)
    keep = (triples[:, 0] >= triples[:, 1]) & (triples[:, 1] >= triples[:, 2])
    return triples[keep]


def _evaluate_cutoffs(
    evaluate: _Evaluator, probability: np.ndarray, tier_position: np.ndarray,
    triples: np.ndarray,
) -> pd.DataFrame:
    """Figures of every cut-off triple (rows A, B, C), in vectorised batches."""
    chunks = []
    for chunk in np.array_split(triples, max(1, len(triples) // CHUNK)):
        # tier number 0..3 (A..D) = how many of the cut-offs the probability misses
        tier_number = (
            (probability[None, :] < chunk[:, 0, None]).view(np.int8)
            + (probability[None, :] < chunk[:, 1, None]).view(np.int8)
            + (probability[None, :] < chunk[:, 2, None]).view(np.int8)
        )
        figures = pd.DataFrame(evaluate.batch(tier_position[tier_number]))
        figures.insert(0, "A", chunk[:, 0])
        figures.insert(1, "B", chunk[:, 1])
        figures.insert(2, "C", chunk[:, 2])
        chunks.append(figures)
    return pd.concat(chunks, ignore_index=True)


class _Evaluator:
    """Expected conversions and cost of a channel assignment after the capacity cascade."""

    def __init__(self, leads: pd.DataFrame, policy: RoutingPolicy, days: DayIndex) -> None:
        self.policy = policy
        self.days = days
        self.expected = expected_conversions(leads, policy)
        order = policy.channels_by_cost
        self.cost = np.array([policy.channels[c].cost_per_lead for c in order])
        capacity = policy.capacities(days.median_daily_leads)
        self.capacities = np.array([capacity[c] for c in order], dtype=float)
        self.rows = np.arange(len(leads))

    def batch(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """Figures of many assignments at once, ``positions`` shaped (candidates, leads)."""
        outcome = apply_daily_capacity(positions, self.days, self.capacities)
        return {
            "conversions": self.expected[self.rows, outcome.final].sum(axis=-1),
            "cost": self.cost[outcome.final].sum(axis=-1),
            "overflow_leads": outcome.overflow_leads,
            "overflow_day_channel_pairs": outcome.full_day_pairs.sum(axis=-1),
            "capacity_violations": outcome.violation_pairs,
        }

    def __call__(self, positions: np.ndarray) -> dict[str, Any]:
        """Figures of one assignment (``positions`` shaped (leads,))."""
        figures = self.batch(positions[None, :])
        return {key: value[0].item() for key, value in figures.items()}


def goal_slack(
    conversions: Any, cost: Any, rule_conversions: float, rule_cost_per_conversion: float,
    reduction: float,
) -> Any:
    """Room left on the routing goal, the smaller of the two relative slacks (≥ 0: met).

    ``conversions / rule_conversions − 1`` (conversions above the rule's) and
    ``1 − CPA / ((1 − reduction) × rule CPA)`` (cost per conversion below the cap), i.e. the
    largest relative error of either estimate that still leaves the goal met. Vectorised.
    """
    conversions = np.asarray(conversions, dtype=float)
    cost = np.asarray(cost, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        cpa = np.where(conversions > 0, cost / conversions, np.inf)
    conversion_room = conversions / max(rule_conversions, 1e-12) - 1.0
    cpa_room = 1.0 - cpa / max((1.0 - reduction) * rule_cost_per_conversion, 1e-12)
    return np.minimum(conversion_room, cpa_room)


def goal_target(table: pd.DataFrame, limits: dict[str, float | None]) -> str:
    """``"every_rule"`` when some candidate meets the goal against every rule at once on the
    estimates (the most conversions of any rule, 15% below the cheapest rule's cost per
    conversion), else ``"rule"`` (the best rule by conversions, the goal's own wording)."""
    if limits.get("every_rule_conversions") is None:
        return "rule"
    strict = goal_slack(
        table["conversions"], table["cost"], limits["every_rule_conversions"],
        limits["every_rule_cost_per_conversion"], limits["goal_reduction"],
    )
    return "every_rule" if np.max(strict) >= 0 else "rule"


def _select(table: pd.DataFrame, objective: str, limits: dict[str, float | None]
            ) -> tuple[int, bool]:
    """Row index of the chosen candidate and whether its objective's constraint holds."""

    def most(frame: pd.DataFrame) -> int:
        return int(frame.sort_values(["conversions", "cost"], ascending=[False, True]).index[0])

    if objective == "goal_margin":
        target = goal_target(table, limits)
        slack = goal_slack(
            table["conversions"], table["cost"], limits[f"{target}_conversions"],
            limits[f"{target}_cost_per_conversion"], limits["goal_reduction"],
        )
        best = table.assign(slack=slack).sort_values(
            ["slack", "conversions", "cost"], ascending=[False, False, True]
        )
        return int(best.index[0]), bool(best["slack"].iloc[0] >= 0)
    if objective == "net_value":
        net = limits["value_per_conversion"] * table["conversions"] - table["cost"]
        return int(net.idxmax()), True
    if objective == "budget":
        feasible = table[table["cost"] <= limits["budget"]]
        if feasible.empty:
            return int(table["cost"].idxmin()), False
        return most(feasible), True
    if objective == "cpa_cap":
        cpa = table["cost"] / table["conversions"].where(table["conversions"] > 0)
        feasible = table[cpa <= limits["max_cost_per_conversion"]]
        if feasible.empty:
            return int(cpa.idxmin()), False
        return most(feasible), True
    feasible = table[table["conversions"] >= limits["target_conversions"]]
    if feasible.empty:
        return most(table), False
    cheapest = feasible.sort_values(["cost", "conversions"], ascending=[True, False])
    return int(cheapest.index[0]), True


def _frontier(table: pd.DataFrame) -> list[dict[str, float]]:
    """Cost-efficient candidates (no other is cheaper with as many conversions), thinned."""
    ordered = table.sort_values(["cost", "conversions"], ascending=[True, False])
    best = -np.inf
    keep = []
    for index, conversions in zip(ordered.index, ordered["conversions"], strict=True):
        if conversions > best:
            keep.append(index)
            best = conversions
    points = table.loc[keep]
    if len(points) > MAX_FRONTIER_POINTS:
        points = points.iloc[np.linspace(0, len(points) - 1, MAX_FRONTIER_POINTS).astype(int)]
    columns = ["A", "B", "C", "conversions", "cost"]
    return [{k: float(v) for k, v in row.items()} for row in points[columns].to_dict("records")]


def optimize_cutoffs(
    scored: pd.DataFrame,
    policy: RoutingPolicy,
    *,
    objective: str = "goal_margin",
    rule_threshold: float | None = None,
    conversion_margin: float = 0.02,
    cpa_reduction: float = 0.2,
    goal_reduction: float = GOAL_CPA_REDUCTION,
    value_per_conversion: float | None = None,
    budget_per_lead: float | None = None,
    grid_size: int = 16,
    strict_capacity: bool = False,
) -> tuple[RoutingPolicy, dict[str, Any]]:
    """Optimised cut-offs on held-out scored leads; returns the new policy and a report.

    ``scored`` follows the scored-leads contract (``lead_id, person_id, created_at,
    probability, funnel_step, rule_score``). The new policy has ``cutoffs.mode: optimized``,
    a bumped version and absolute daily capacities.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: {objective!r} is not one of {OBJECTIVES}")
    if objective == "net_value" and (value_per_conversion is None or value_per_conversion <= 0):
        raise ValueError("value_per_conversion: a positive RMB value is needed for net_value")
    if objective == "budget" and (budget_per_lead is None or budget_per_lead < 0):
        raise ValueError("budget_per_lead: a non-negative RMB budget is needed for budget")
    for name, value in (("cpa_reduction", cpa_reduction), ("goal_reduction", goal_reduction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name}: must lie in [0, 1)")
    if conversion_margin < 0:
        raise ValueError("conversion_margin: must not be negative")
    leads = validate_leads(scored, SCORED_COLUMNS)
    days = day_index(leads["created_at"], policy.capacity_day_timezone)
    evaluate = _Evaluator(leads, policy, days)

    rules = {
        "rule_2d": evaluate(channel_positions(rule_2d_channels(leads["rule_score"],
                                                               rule_threshold), policy)),
        "rule_funnel": evaluate(channel_positions(funnel_channels(leads["funnel_step"]), policy)),
    }
    best_rule = max(rules, key=lambda n: (rules[n]["conversions"], -rules[n]["cost"]))
    target = rules[best_rule]["conversions"] * (1.0 + conversion_margin)

    probability = leads["probability"].to_numpy(dtype=float)
    tier_position = channel_positions(
        np.array([policy.tier_channel[t] for t in TIERS], dtype=object), policy
    ).astype(np.int8)
    best_conversions = rules[best_rule]["conversions"]
    best_cpa = rules[best_rule]["cost"] / max(best_conversions, 1e-12)
    limits: dict[str, float | None] = {
        "target_conversions": target,
        "max_cost_per_conversion": best_cpa * (1.0 - cpa_reduction),
        "rule_conversions": best_conversions,
        "rule_cost_per_conversion": best_cpa,
        "goal_reduction": goal_reduction,
        # against every rule at once: the most conversions any rule reaches, at 15% below the
        # lowest cost per conversion any rule reaches (the rules trade one for the other)
        "every_rule_conversions": max(r["conversions"] for r in rules.values()),
        "every_rule_cost_per_conversion": min(
            r["cost"] / max(r["conversions"], 1e-12) for r in rules.values()),
        "value_per_conversion": value_per_conversion,
        "budget": None if budget_per_lead is None else budget_per_lead * len(leads),
    }

    def search(triples: np.ndarray) -> tuple[pd.DataFrame, int, bool]:
        table = _evaluate_cutoffs(evaluate, probability, tier_position, triples)
        if strict_capacity:
            table = table[table["overflow_leads"] == 0]
        if table.empty:
            raise ValueError(
                "strict_capacity: no cut-offs fit every day's capacity; raise capacities or "
                "allow overflow down a tier"
            )
        return (table, *_select(table, objective, limits))

    # coarse grid of quantile cut-offs, then a finer grid around the coarse choice
    grid = cutoff_grid(probability, grid_size)
    coarse, chosen_index, _ = search(_monotone_triples(grid, grid, grid))
    chosen_coarse = coarse.loc[chosen_index]
    local = [_local_values(probability, grid, float(chosen_coarse[t])) for t in ("A", "B", "C")]
    fine, _, _ = search(_monotone_triples(*local))
    table = pd.concat([coarse, fine], ignore_index=True).drop_duplicates(["A", "B", "C"])
    table = table.reset_index(drop=True)
    chosen_index, constraint_met = _select(table, objective, limits)
    chosen = table.loc[chosen_index]
    cutoffs = {t: float(chosen[t]) for t in ("A", "B", "C")}

    optimization = {
        "optimized_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "from_version": policy.version,
        "objective": objective,
        "holdout_leads": int(len(leads)),
        "holdout_days": days.n_days,
        # the leads the cut-offs were tuned on: `route simulate` judges only later leads
        "tuned_from": leads["created_at"].iloc[0].isoformat(),
        "tuned_until": leads["created_at"].iloc[-1].isoformat(),
        "estimated_conversions": round(float(chosen["conversions"]), 3),
        "estimated_cost": round(float(chosen["cost"]), 2),
    }
    new_policy = policy.with_absolute_capacities(days.median_daily_leads).with_cutoffs(
        cutoffs, version=bump_version(policy.version), optimization=optimization
    )
    conversions, cost = float(chosen["conversions"]), float(chosen["cost"])
    slack = float(goal_slack(conversions, cost, best_conversions, best_cpa, goal_reduction))
    goal_kind = goal_target(table, limits)
    kind_slack = float(goal_slack(conversions, cost, limits[f"{goal_kind}_conversions"],
                                  limits[f"{goal_kind}_cost_per_conversion"], goal_reduction))
    report = {
        "policy_version": new_policy.version,
        "from_version": policy.version,
        "objective": objective,
        "objective_constraint_met": constraint_met,
        "modelling_assumption": (
            "E[conversion | channel c] = min(1, p / rel[reference] * rel[c]), reference = "
            f"{policy.probability_reference!r}"
            + (" (the K12 channel of the lead's funnel step in the training history)"
               if policy.probability_reference == "funnel_step" else "")
            + "; estimates only, no truth used"
        ),
        "capacity_handling": (
            "strict: only cut-offs whose assignment fits every day" if strict_capacity else
            "per day in arrival order, a full channel overflows to the next cheaper one "
            "(the same rule at serving time: routing.policy.CapacityLedger)"
        ),
        "cutoffs": cutoffs,
        "estimated": {
            "conversions": conversions,
            "total_cost": cost,
            "cost_per_conversion": cost / conversions if conversions > 0 else None,
            "overflow_leads": int(chosen["overflow_leads"]),
            "overflow_day_channel_pairs": int(chosen["overflow_day_channel_pairs"]),
            "capacity_violations": int(chosen["capacity_violations"]),
        },
        "rule_policies_estimated": {
            name: {**r, "cost_per_conversion": r["cost"] / r["conversions"]
                   if r["conversions"] > 0 else None}
            for name, r in rules.items()
        },
        "best_rule_policy": best_rule,
        "goal_reduction": goal_reduction,
        "goal_slack": slack,
        "goal_target": goal_kind,
        "goal_target_slack": kind_slack if objective == "goal_margin" else None,
        "target_conversions": target if objective == "match_rules" else None,
        "conversion_margin": conversion_margin,
        "max_cost_per_conversion": (
            limits["max_cost_per_conversion"] if objective == "cpa_cap" else None),
        "cpa_reduction": cpa_reduction,
        "value_per_conversion": value_per_conversion,
        "budget_per_lead": budget_per_lead,
        "daily_capacity": {
            name: None if np.isinf(v) else v
            for name, v in zip(policy.channels_by_cost, evaluate.capacities, strict=True)
        },
        "holdout": {
            "leads": int(len(leads)),
            "days": days.n_days,
            "median_daily_leads": days.median_daily_leads,
            "peak_daily_leads": int(np.bincount(days.codes).max()),
        },
        "grid_points": int(grid.size),
        "refine_points": [int(v.size) for v in local],
        "candidates_evaluated": int(len(table)),
        "frontier": _frontier(table),
    }
    return new_policy, report
