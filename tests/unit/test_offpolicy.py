"""Off-policy estimators against a world whose truth is known (``routing.offpolicy``)."""

from __future__ import annotations

import numpy as np
import pytest

from routing.offpolicy import (
    LoggedDecisions,
    OffPolicyError,
    compare_policies,
    evaluate_policy,
)

CHANNELS = ("top_sales", "sales", "tmk", "ai_bot")
COST = {"top_sales": 150.0, "sales": 60.0, "tmk": 15.0, "ai_bot": 2.0}


def world(n: int = 20_000, seed: int = 1) -> tuple[np.ndarray, LoggedDecisions]:
    """True conversion per lead and channel, and a uniformly randomised log of it."""
    rng = np.random.default_rng(seed)
    base = rng.beta(1, 12, n)
    # persuadables gain most from people; sure things gain little
    persuadable = rng.random(n) < 0.3
    lift = np.where(persuadable[:, None], [0.25, 0.18, 0.08, 0.0], [0.02, 0.01, 0.005, 0.0])
    truth = np.clip(base[:, None] + lift, 0, 1)
    action = rng.integers(0, 4, n)
    reward = (rng.random(n) < truth[np.arange(n), action]).astype(float)
    logged = LoggedDecisions.from_columns(CHANNELS, [CHANNELS[a] for a in action],
                                          np.full(n, 0.25), reward)
    return truth, logged


def test_estimates_cover_the_truth() -> None:
    truth, logged = world()
    rng = np.random.default_rng(5)
    target = np.array(CHANNELS)[rng.integers(0, 4, len(logged))]
    positions = np.array([CHANNELS.index(c) for c in target])
    true_conversions = truth[np.arange(len(logged)), positions].sum()
    noisy_model = np.clip(truth + rng.normal(0, 0.02, truth.shape), 0, 1)
    result = evaluate_policy(logged, target, COST, outcome_model=noisy_model, n_boot=400)
    for name in ("ips", "snips", "dr"):
        low, high = result[name]["conversions_ci"]
        assert low <= true_conversions <= high, name
        assert result[name]["total_cost"] == pytest.approx(sum(COST[c] for c in target))
    width = {k: np.diff(result[k]["conversions_ci"])[0] for k in ("ips", "dr")}
    assert width["dr"] < width["ips"]  # a good outcome model narrows the interval


def test_a_better_policy_is_told_apart() -> None:
    truth, logged = world()
    n = len(logged)
    persuadable = truth[:, 0] - truth[:, 3] > 0.1
    targeted = np.where(persuadable, "sales", "ai_bot")  # people only where they matter
    everyone = np.full(n, "sales")
    diff = compare_policies(logged, targeted, everyone, COST, outcome_model=truth, n_boot=400)
    low, high = diff["cost_per_conversion_change_ci"]
    assert high < 0  # cheaper per conversion, and the interval says so
    assert diff["cost_per_conversion_change"] < -0.2


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"logged_channel": ["sales", "fax"]}, "followup_channel"),
    ({"propensity": [0.0, 0.5]}, "propensity"),
    ({"converted": [0, 2]}, "converted"),
])
def test_bad_logs_are_refused(kwargs: dict, field: str) -> None:
    values = {"logged_channel": ["sales", "tmk"], "propensity": [0.25, 0.25],
              "converted": [0, 1]} | kwargs
    with pytest.raises(OffPolicyError, match=field):
        LoggedDecisions.from_columns(CHANNELS, **values)


def test_nothing_to_judge_on_is_an_error() -> None:
    empty = LoggedDecisions.from_columns(CHANNELS, [], [], [])
    with pytest.raises(OffPolicyError, match="no randomised lead"):
        evaluate_policy(empty, [], COST)
