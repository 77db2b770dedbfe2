"""Every routing policy judged off-policy on later randomised leads (``leadscore route evaluate``).

Held-out leads are split by calendar day: the earliest ``tuning_share`` of days *tunes* (tier
cut-offs, the rule scores' isotonic maps, the uplift policy's cost weight λ), the later days are
*judged*. Each policy assigns a channel to every judged lead, under the same daily capacity
(``routing.simulate.apply_daily_capacity``: a full channel overflows to the next cheaper; a
violation is a day on which even the cheapest channel is over capacity). Only the judged leads
whose channel was drawn at random (arm ``exploration``, with its propensity) are used to
estimate conversions — by IPS, SNIPS and DR (``routing.offpolicy``; DR's outcome model is the
uplift model's per-channel conversion) — and, where the generator's truth is at hand, by the
true propensities of those same leads (``truth``). Intervals: percentile bootstrap over the
judged randomised leads.

Policies: ``uplift`` (the uplift champion's effects, one linear program per day,
``routing.allocate``), ``probability_tiers`` (the conversion model's tiers, cut-offs by
``routing.optimize`` on the tuning days), ``rule_2d`` / ``rule_funnel`` (fixed), their
``_optimised`` variants (the rule score — the 2-D score, the funnel step's rank — mapped to a
probability by isotonic regression on the tuning days' outcomes, then the same cut-off
optimiser) and ``everyone_to_<channel>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from leadscore.schemas import FOLLOWUP_CHANNELS, FUNNEL_STEPS
from routing.allocate import allocate_days, policy_channels, shadow_prices_over_days
from routing.offpolicy import LoggedDecisions, compare_policies, evaluate_policy
from routing.optimize import optimize_cutoffs
from routing.policy import RoutingPolicy
from routing.rules import funnel_channels, rule_2d_channels
from routing.simulate import (
    GOAL_CPA_REDUCTION,
    PROPENSITY_COLUMNS,
    apply_daily_capacity,
    channel_positions,
    day_index,
)
from training.uplift import UpliftModel

COST_WEIGHTS = np.geomspace(2e-4, 2e-2, 21)  # λ grid, conversions per RMB
MIN_TUNING_RANDOMISED = 300  # randomised tuning leads for a doubly robust choice of λ


def channel_matrix(model: UpliftModel, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(uplift over the AI bot, conversion) per lead and channel, in FOLLOWUP_CHANNELS order."""
    position = [model.arms.index(c) for c in FOLLOWUP_CHANNELS]
    uplift = model.uplift(frame)[:, position]
    outcomes = np.clip(model.outcomes(frame)[:, position], 0.0, 1.0)
    return uplift, outcomes


def _day_keys(frame: pd.DataFrame, policy: RoutingPolicy) -> np.ndarray:
    return day_index(frame["created_at"], policy.capacity_day_timezone).codes


def uplift_channels(effects: np.ndarray, frame: pd.DataFrame, policy: RoutingPolicy,
                    cost_weight: float) -> tuple[np.ndarray, dict[str, float]]:
    """The uplift policy: per day, the LP's channel per lead; and the mean shadow prices."""
    names, costs, capacities = policy_channels(policy)
    order = [FOLLOWUP_CHANNELS.index(n) for n in names]
    chosen, by_day = allocate_days(effects[:, order], _day_keys(frame, policy), names, costs,
                                   capacities, cost_weight)
    return chosen, shadow_prices_over_days(by_day)


def isotonic_tier_policy(score_tune: np.ndarray, label_tune: np.ndarray, tuning: pd.DataFrame,
                         policy: RoutingPolicy, rule_threshold: float | None
                         ) -> tuple[IsotonicRegression, RoutingPolicy]:
    """A rule score mapped to a probability on the tuning days, then the cut-off optimiser."""
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(score_tune, label_tune)
    frame = tuning.assign(probability=iso.predict(score_tune))
    tuned, _ = optimize_cutoffs(frame, policy, rule_threshold=rule_threshold)
    return iso, tuned


def _funnel_rank(steps: Any) -> np.ndarray:
    return np.array([FUNNEL_STEPS.index(str(s)) for s in steps], dtype=float)


def policy_assignments(tuning: pd.DataFrame, judged: pd.DataFrame, policy: RoutingPolicy,
                       effects_tune: np.ndarray | None, outcomes_tune: np.ndarray | None,
                       effects_judged: np.ndarray | None, rule_threshold: float | None,
                       goal_reduction: float = GOAL_CPA_REDUCTION,
                       ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Channel per judged lead for every policy (before capacity) and what was tuned."""
    tuned: dict[str, Any] = {}
    out: dict[str, np.ndarray] = {}
    tiers_policy, _ = optimize_cutoffs(tuning, policy, rule_threshold=rule_threshold)
    out["probability_tiers"] = tiers_policy.assign(judged["probability"].to_numpy())[1]
    tuned["probability_tiers"] = tiers_policy.cutoffs
    out["rule_2d"] = rule_2d_channels(judged["rule_score"], rule_threshold)
    out["rule_funnel"] = funnel_channels(judged["funnel_step"])
    label = tuning["label"].to_numpy(dtype=float)
    for name, score in (("rule_2d_optimised", lambda f: f["rule_score"].to_numpy(float)),
                        ("rule_funnel_optimised", lambda f: _funnel_rank(f["funnel_step"]))):
        iso, rule_policy = isotonic_tier_policy(score(tuning), label, tuning, policy,
                                                rule_threshold)
        out[name] = rule_policy.assign(iso.predict(score(judged)))[1]
        tuned[name] = rule_policy.cutoffs
    for channel in FOLLOWUP_CHANNELS:
        out[f"everyone_to_{channel}"] = np.full(len(judged), channel, dtype=object)
    if effects_judged is not None and effects_tune is not None and outcomes_tune is not None:
        weight, search = choose_cost_weight(tuning, policy, effects_tune, outcomes_tune,
                                            {k: v for k, v in out.items()
                                             if k.endswith("_optimised")},
                                            tuned, rule_threshold, goal_reduction)
        out["uplift"], shadow = uplift_channels(effects_judged, judged, policy, weight)
        tuned["uplift"] = {"cost_weight": weight, "shadow_prices": shadow, "search": search}
    return out, tuned


def _final(channels: np.ndarray, frame: pd.DataFrame, policy: RoutingPolicy
           ) -> tuple[np.ndarray, Any]:
    order = policy.channels_by_cost
    capacities = np.array([policy.capacities()[c] for c in order], dtype=float)
    outcome = apply_daily_capacity(channel_positions(channels, policy),
                                   day_index(frame["created_at"], policy.capacity_day_timezone),
                                   capacities)
    return np.asarray(order, dtype=object)[outcome.final], outcome


def choose_cost_weight(tuning: pd.DataFrame, policy: RoutingPolicy, effects: np.ndarray,
                       outcomes: np.ndarray, rule_assignments: Mapping[str, np.ndarray],
                       tuned: Mapping[str, Any], rule_threshold: float | None,
                       goal_reduction: float) -> tuple[float, dict[str, Any]]:
    """λ on the tuning days: the goal margin against the best optimised rule (the most room on
    both sides: at least its conversions, cost per conversion ``goal_reduction`` below).
    Conversions: doubly robust on the tuning days' randomised leads when there are at least
    ``MIN_TUNING_RANDOMISED`` (the uplift model's own expectation favours the leads it
    overrates), else the uplift model's expected conversions of all tuning leads."""
    label = tuning["label"].to_numpy(dtype=float)
    rows = np.arange(len(tuning))
    cost = np.array([policy.channels[c].cost_per_lead for c in FOLLOWUP_CHANNELS])
    index = {c: i for i, c in enumerate(FOLLOWUP_CHANNELS)}
    randomised = ((tuning["arm"] == "exploration").to_numpy()
                  if "arm" in tuning.columns else np.zeros(len(tuning), dtype=bool))
    use_dr = int(randomised.sum()) >= MIN_TUNING_RANDOMISED
    if use_dr:
        logged_rows = tuning[randomised]
        logged = LoggedDecisions.from_columns(
            FOLLOWUP_CHANNELS, logged_rows["followup_channel"], logged_rows["propensity"],
            logged_rows["label"])
        q = outcomes[randomised]
        position = np.array([index[c] for c in logged_rows["followup_channel"]])
        sub = np.arange(len(logged_rows))

    def value(channels: np.ndarray) -> tuple[float, float]:
        final, _ = _final(channels, tuning, policy)
        pos = np.array([index[c] for c in final])
        if not use_dr:
            return float(outcomes[rows, pos].sum()), float(cost[pos].sum())
        target = pos[randomised]
        match = (target == position) / logged.propensity
        dr = q[sub, target] + match * (logged.reward - q[sub, position])
        return float(dr.sum()), float(cost[target].sum())

    rules = {}
    for name in ("rule_2d_optimised", "rule_funnel_optimised"):
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
        score = (tuning["rule_score"].to_numpy(float) if name == "rule_2d_optimised"
                 else _funnel_rank(tuning["funnel_step"]))
        iso.fit(score, label)
        channels = policy.with_cutoffs(tuned[name], policy.version, {}).assign(
            iso.predict(score))[1]
        rules[name] = value(channels)
    best = min(rules, key=lambda n: rules[n][1] / max(rules[n][0], 1e-9))
    rule_conv, rule_cost = rules[best]
    rule_cpa = rule_cost / max(rule_conv, 1e-9)
    table = []
    for weight in COST_WEIGHTS:
        channels, _ = uplift_channels(effects, tuning, policy, float(weight))
        conv, spent = value(channels)
        margin = min(conv / rule_conv - 1.0,
                     1.0 - (spent / max(conv, 1e-9)) / ((1 - goal_reduction) * rule_cpa))
        table.append({"cost_weight": float(weight), "conversions": conv, "cost": spent,
                      "margin": margin})
    chosen = max(table, key=lambda r: r["margin"])
    return chosen["cost_weight"], {"against": best, "rule_conversions": rule_conv,
                                   "rule_cost": rule_cost, "chosen": chosen,
                                   "estimate": ("doubly robust on the tuning days' randomised "
                                                "leads" if use_dr else "uplift model's "
                                                "expected conversions, tuning days")}


def _truth(p: np.ndarray, actions: np.ndarray, spent: np.ndarray, draws: np.ndarray
           ) -> dict[str, Any]:
    rows = np.arange(len(actions))
    conv = p[rows, actions]
    total = float(conv.sum())
    boot_conv = conv[draws].sum(axis=1)
    boot_cost = spent[draws].sum(axis=1)
    ratio = boot_cost / np.maximum(boot_conv, 1e-12)
    return {"conversions": total,
            "conversions_ci": [float(np.quantile(boot_conv, 0.025)),
                               float(np.quantile(boot_conv, 0.975))],
            "total_cost": float(spent.sum()),
            "cost_per_conversion": float(spent.sum()) / total if total > 0 else None,
            "cost_per_conversion_ci": [float(np.quantile(ratio, 0.025)),
                                       float(np.quantile(ratio, 0.975))],
            "leads": int(len(actions))}


def _paired_truth(p: np.ndarray, first: np.ndarray, second: np.ndarray, cost: np.ndarray,
                  draws: np.ndarray) -> dict[str, Any]:
    rows = np.arange(len(first))
    conv_a, conv_b = p[rows, first], p[rows, second]
    all_draws = np.vstack([rows, draws])
    ca, cb = conv_a[all_draws].sum(1), conv_b[all_draws].sum(1)
    sa, sb = cost[first][all_draws].sum(1), cost[second][all_draws].sum(1)
    relative = (sa / ca) / (sb / cb) - 1.0
    return {"estimator": "truth",
            "cost_per_conversion_change": float(relative[0]),
            "cost_per_conversion_change_ci": [float(np.quantile(relative[1:], 0.025)),
                                              float(np.quantile(relative[1:], 0.975))],
            "conversions_difference": float(ca[0] - cb[0]),
            "conversions_difference_ci": [float(np.quantile((ca - cb)[1:], 0.025)),
                                          float(np.quantile((ca - cb)[1:], 0.975))]}


def evaluate_assignments(judged: pd.DataFrame, assignments: Mapping[str, np.ndarray],
                         policy: RoutingPolicy, outcome_model: np.ndarray | None,
                         n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per policy and estimator, conversions / cost / cost per conversion with intervals on
    the judged randomised leads, and the capacity violations over all judged leads; plus the
    paired comparison of ``uplift`` with the best optimised rule."""
    randomised = (judged["arm"] == "exploration").to_numpy()
    logged_rows = judged[randomised]
    logged = LoggedDecisions.from_columns(FOLLOWUP_CHANNELS, logged_rows["followup_channel"],
                                          logged_rows["propensity"], logged_rows["label"])
    q = None if outcome_model is None else np.asarray(outcome_model)[randomised]
    costs = {c: float(policy.channels[c].cost_per_lead) for c in FOLLOWUP_CHANNELS}
    cost = np.array([costs[c] for c in FOLLOWUP_CHANNELS])
    truth = None
    if all(c in judged.columns for c in PROPENSITY_COLUMNS.values()):
        truth = logged_rows[[PROPENSITY_COLUMNS[c] for c in FOLLOWUP_CHANNELS]].to_numpy(float)
    draws = np.random.default_rng(seed).integers(0, len(logged), size=(n_boot, len(logged)))
    index = {c: i for i, c in enumerate(FOLLOWUP_CHANNELS)}
    policies: dict[str, Any] = {}
    finals: dict[str, np.ndarray] = {}
    for name, channels in assignments.items():
        final, outcome = _final(np.asarray(channels, dtype=object), judged, policy)
        finals[name] = final[randomised]
        entry = evaluate_policy(logged, finals[name], costs, q, n_boot=n_boot, seed=seed)
        if truth is not None:
            actions = np.array([index[c] for c in finals[name]])
            entry["truth"] = _truth(truth, actions, cost[actions], draws)
        entry["capacity_violations"] = int(outcome.violation_pairs)
        entry["overflow_leads"] = int(outcome.overflow_leads)
        entry["channel_shares"] = {c: float(np.mean(final == c)) for c in FOLLOWUP_CHANNELS}
        policies[name] = entry
    report: dict[str, Any] = {"policies": policies,
                              "judged_leads": int(len(judged)),
                              "judged_randomised_leads": int(randomised.sum()),
                              "judged_days": int(day_index(
                                  judged["created_at"], policy.capacity_day_timezone).n_days)}
    optimised = [n for n in policies if n.endswith("_optimised")]
    if "uplift" in policies and optimised:
        key = "dr" if q is not None else "snips"
        best = min(optimised, key=lambda n: policies[n][key]["cost_per_conversion"] or np.inf)

        def versus(rule: str) -> dict[str, Any]:
            comparison: dict[str, Any] = {"against": rule}
            for estimator in ("dr", "snips") if q is not None else ("snips",):
                comparison[estimator] = compare_policies(logged, finals["uplift"], finals[rule],
                                                         costs, q, estimator, n_boot, seed)
            if truth is not None:
                first = np.array([index[c] for c in finals["uplift"]])
                second = np.array([index[c] for c in finals[rule]])
                comparison["truth"] = _paired_truth(truth, first, second, cost, draws)
            return comparison

        # the best by the estimate (what a user without truth would pick), and every optimised
        # rule: the estimate may pick a rule that buys fewer conversions than another
        by_rule = {rule: versus(rule) for rule in optimised}
        report["uplift_vs_best_optimised_rule"] = by_rule[best]
        report["uplift_vs_optimised_rules"] = by_rule
    return report
