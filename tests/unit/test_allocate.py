"""Allocation under capacity (routing.allocate) against brute force on small days."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from routing.allocate import (
    AllocationError,
    allocate,
    allocate_days,
    choose_one,
    policy_channels,
    shadow_prices_over_days,
)

CHANNELS = ("ai_bot", "tmk", "sales")
COSTS = {"ai_bot": 2.0, "tmk": 15.0, "sales": 60.0}


def brute_force(effects, costs, capacities, cost_weight, forced=None):
    """Best objective over every assignment that respects the capacities."""
    n, k = effects.shape
    cost = np.array([costs[c] for c in CHANNELS])
    cap = np.array([np.inf if capacities.get(c) is None else capacities[c] for c in CHANNELS])
    best, best_assignment = -np.inf, None
    for assignment in itertools.product(range(k), repeat=n):
        a = np.array(assignment)
        if forced is not None and any(f is not None and CHANNELS[a[i]] != f
                                      for i, f in enumerate(forced)):
            continue
        if (np.bincount(a, minlength=k) > cap).any():
            continue
        value = float((effects[np.arange(n), a] - cost_weight * cost[a]).sum())
        if value > best + 1e-12:
            best, best_assignment = value, a
    return best, best_assignment


def random_day(rng, n):
    effects = np.column_stack([np.zeros(n), rng.uniform(0, 0.2, n), rng.uniform(0, 0.4, n)])
    return effects


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    effects = random_day(rng, 7)
    capacities = {"tmk": int(rng.integers(0, 4)), "sales": int(rng.integers(0, 3))}
    cost_weight = float(rng.choice([0.0, 0.002, 0.004]))
    result = allocate(effects, CHANNELS, COSTS, capacities, cost_weight)
    best, _ = brute_force(effects, COSTS, capacities, cost_weight)
    assert result.objective == pytest.approx(best, abs=1e-9)
    for name, limit in capacities.items():
        assert result.counts[name] <= limit
    assert sum(result.counts.values()) == 7


def test_forced_leads_keep_their_channel_and_use_capacity():
    rng = np.random.default_rng(11)
    effects = random_day(rng, 6)
    forced = [None, "sales", None, "ai_bot", None, None]
    capacities = {"tmk": 2, "sales": 2}
    result = allocate(effects, CHANNELS, COSTS, capacities, 0.001, forced=forced)
    assert result.assigned[1] == "sales" and result.assigned[3] == "ai_bot"
    best, _ = brute_force(effects, COSTS, capacities, 0.001, forced=forced)
    assert result.objective == pytest.approx(best, abs=1e-9)
    assert result.counts["sales"] <= 2


def test_shadow_price_is_the_value_of_one_more_slot():
    rng = np.random.default_rng(3)
    effects = random_day(rng, 8)
    capacities = {"tmk": 2, "sales": 1}
    base = allocate(effects, CHANNELS, COSTS, capacities, 0.001)
    assert base.shadow_prices["sales"] > 0  # eight leads compete for one sales slot
    for name in ("tmk", "sales"):
        more = allocate(effects, CHANNELS, COSTS, {**capacities, name: capacities[name] + 1},
                        0.001)
        less = allocate(effects, CHANNELS, COSTS, {**capacities, name: capacities[name] - 1},
                        0.001)
        # the dual is a supergradient of the (concave) optimum in the capacity: it lies between
        # the gain of the next slot and the loss of the last one
        assert more.objective - base.objective <= base.shadow_prices[name] + 1e-9
        assert base.objective - less.objective >= base.shadow_prices[name] - 1e-9
    assert base.shadow_prices["ai_bot"] == 0.0  # unlimited


def test_single_decisions_with_the_days_shadow_prices_follow_the_program():
    rng = np.random.default_rng(5)
    effects = random_day(rng, 40)
    result = allocate(effects, CHANNELS, COSTS, {"tmk": 8, "sales": 4}, 0.001)
    one_at_a_time = [choose_one(row, CHANNELS, COSTS, result.shadow_prices, 0.001)
                     for row in effects]
    agree = np.mean(np.asarray(one_at_a_time, dtype=object) == result.assigned)
    assert agree >= 0.9  # ties at the margin aside
    assert choose_one(effects[0], CHANNELS, COSTS, result.shadow_prices, 0.001,
                      available=[True, False, False]) == "ai_bot"


def test_without_capacity_limits_every_lead_takes_its_best_net_channel():
    rng = np.random.default_rng(8)
    effects = random_day(rng, 30)
    result = allocate(effects, CHANNELS, COSTS, {}, 0.003)
    net = effects - 0.003 * np.array([COSTS[c] for c in CHANNELS])
    assert (result.channel_index == net.argmax(axis=1)).all()
    assert all(v == 0 for v in result.shadow_prices.values())


def test_days_are_solved_separately_and_shadow_prices_average():
    rng = np.random.default_rng(9)
    effects = random_day(rng, 20)
    days = ["2026-01-01"] * 10 + ["2026-01-02"] * 10
    assigned, by_day = allocate_days(effects, days, CHANNELS, COSTS, {"sales": 2}, 0.0)
    for day in by_day:
        rows = [i for i, d in enumerate(days) if d == day]
        assert sum(assigned[i] == "sales" for i in rows) <= 2
    prices = shadow_prices_over_days(by_day)
    assert prices["sales"] == pytest.approx(
        np.mean([a.shadow_prices["sales"] for a in by_day.values()]))


def test_capacity_that_cannot_hold_forced_leads_names_the_field():
    effects = np.zeros((4, 3))
    with pytest.raises(AllocationError, match=r"capacities\.sales: 1 leads/day cannot hold the 2"):
        allocate(effects, CHANNELS, COSTS, {"sales": 1}, forced=["sales", "sales", None, None])


def test_capacities_too_small_for_the_day_name_the_field():
    effects = np.zeros((5, 3))
    with pytest.raises(AllocationError, match="capacities: together 3 leads/day"):
        allocate(effects, CHANNELS, COSTS, {"ai_bot": 1, "tmk": 1, "sales": 1})


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"effects": np.zeros((3, 2))}, "effects"),
    ({"effects": np.full((3, 3), np.nan)}, "effects"),
    ({"costs": {"phone": 1.0}}, "costs/capacities"),
    ({"costs": {"tmk": -1.0}}, r"costs\.tmk"),
    ({"capacities": {"tmk": -2}}, r"capacities\.tmk"),
    ({"cost_weight": -0.1}, "cost_weight"),
    ({"forced": ["email", None, None]}, "forced"),
])
def test_bad_input_names_the_field(kwargs, field):
    args = {"effects": np.zeros((3, 3)), "channels": CHANNELS, "costs": COSTS,
            "capacities": {}, "cost_weight": 0.0, **kwargs}
    with pytest.raises(AllocationError, match=field):
        allocate(**args)


def test_policy_file_gives_the_programs_costs_and_capacities():
    from routing.policy import load_policy

    names, costs, capacities = policy_channels(load_policy())
    assert set(names) == {"ai_bot", "tmk", "sales", "top_sales"}
    assert capacities["ai_bot"] is None and capacities["top_sales"] == 6
    rng = np.random.default_rng(2)
    effects = np.column_stack([np.zeros(130)] + [rng.uniform(0, 0.3, 130) for _ in range(3)])
    order = [names.index(c) for c in ("ai_bot", "tmk", "sales", "top_sales")]
    result = allocate(effects[:, np.argsort(order)], names, costs, capacities, 0.001)
    assert result.counts["top_sales"] <= 6 and result.counts["sales"] <= 20
    assert result.shadow_prices["top_sales"] > 0
