"""The serving path of routing by learned effects equals its reference.

``serving.fast_forest.ForestWalker`` against LightGBM's own ``Booster.predict`` (real boosters
trained here on small data: numeric and categorical splits, missing values, zeros, unseen and
negative category codes, values beyond every threshold, each of LightGBM's missing-value
modes), ``DistilledEffects`` against ``UpliftModel.fast_uplift``, ``encode_columns`` against
``encode_features``, and ``LearnedAllocation`` against ``routing.allocate.choose_one``.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from leadscore.schemas import FOLLOWUP_CHANNELS
from routing.allocate import AllocationError, choose_one
from routing.control import LearnedAllocation, allocated_channels, route_leads
from routing.policy import load_policy
from serving.fast_forest import MAX_LEAVES, DistilledEffects, ForestWalker
from training.uplift import UpliftModel


def _data(rng: np.random.Generator, n: int) -> np.ndarray:
    x = np.column_stack([
        rng.normal(0, 1, n),  # numeric
        rng.integers(0, 6, n).astype(float),  # categorical codes 0..5
        rng.exponential(2, n).round(),  # counts with many zeros
        rng.uniform(-3, 3, n),
        rng.integers(0, 3, n).astype(float),  # categorical codes 0..2
    ])
    x[rng.random(x.shape) < 0.1] = np.nan
    return x


def _target(x: np.ndarray, shift: float) -> np.ndarray:
    z = np.nan_to_num(x)
    return z[:, 0] - 0.4 * z[:, 2] + (z[:, 1] == 3) - 0.8 * (z[:, 4] == 1) + shift * z[:, 3]


def _boosters(num_leaves: int, n_boosters: int = 3, **params: object
              ) -> tuple[list[lgb.Booster], np.ndarray]:
    rng = np.random.default_rng(num_leaves)
    x = _data(rng, 3000)
    boosters = []
    for k in range(n_boosters):
        y = _target(x, 0.3 * k) + rng.normal(0, 0.5, len(x))
        train = lgb.Dataset(x, y, categorical_feature=[1, 4], free_raw_data=False)
        boosters.append(lgb.train(
            {"objective": "regression", "num_leaves": num_leaves, "verbose": -1,
             "min_data_in_leaf": 20, "seed": k, "num_threads": 1, **params},
            train, num_boost_round=30 + 10 * k))
    probe = _data(np.random.default_rng(99), 400)
    odd = probe.copy()
    odd[::7, 1] = 17.0  # a category never seen
    odd[::11, 4] = -1.0  # a negative category code
    odd[::9, 1] = 2.7  # fractional codes: truncated towards 0, as LightGBM casts them
    odd[::23, 1] = -0.5
    odd[::5, 2] = 0.0
    odd[::13, 0] = 1e6  # beyond every threshold
    odd[::17, 3] = -np.inf
    odd[::19] = np.nan  # a row with nothing known
    return boosters, np.vstack([probe, odd])


def _reference(boosters: list[lgb.Booster], x: np.ndarray) -> np.ndarray:
    return np.column_stack([b.predict(x, num_threads=1) for b in boosters])


@pytest.mark.parametrize(("num_leaves", "params"), [
    (31, {}),
    (8, {"zero_as_missing": True}),
    (12, {"use_missing": False}),
    (16, {"max_cat_to_onehot": 8}),
    (MAX_LEAVES, {"min_data_in_leaf": 5}),
])
def test_walker_equals_booster_predict(num_leaves: int, params: dict) -> None:
    boosters, x = _boosters(num_leaves, **params)
    walker = ForestWalker.build(boosters)
    assert walker is not None
    assert len(walker.cat_nodes) > 0  # categorical splits are exercised
    expected = _reference(boosters, x)
    np.testing.assert_allclose(walker.predict(x), expected, rtol=0, atol=1e-9)
    for i in (0, 7, 19, 401, len(x) - 1):  # one row at a time (the single-lead path)
        np.testing.assert_allclose(walker.predict(x[i:i + 1]), expected[i:i + 1], rtol=0,
                                   atol=1e-9)


def test_single_leaf_trees_and_best_iteration() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3))
    flat = lgb.train({"objective": "regression", "verbose": -1, "min_data_in_leaf": 500},
                     lgb.Dataset(x, np.full(200, 0.25)), num_boost_round=3)  # no split at all
    boosters, _ = _boosters(6, n_boosters=1)
    boosters[0].best_iteration = 5  # predict (and so the walker) then uses 5 iterations
    probe = _data(np.random.default_rng(5), 50)
    walker = ForestWalker.build(boosters)
    assert walker is not None and walker.n_trees == 5
    np.testing.assert_allclose(walker.predict(probe), _reference(boosters, probe), atol=1e-9)
    flat_walker = ForestWalker.build([flat])
    assert flat_walker is not None
    np.testing.assert_allclose(flat_walker.predict(x[:4]), _reference([flat], x[:4]), atol=1e-12)


def test_models_the_walker_does_not_cover_are_refused() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 4))
    y = (x[:, 0] > 0).astype(int)
    binary = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y), 3)
    wide = lgb.train({"objective": "regression", "verbose": -1, "num_leaves": MAX_LEAVES + 8,
                      "min_data_in_leaf": 2}, lgb.Dataset(x, x[:, 0] + x[:, 1] ** 2), 3)
    assert ForestWalker.build([binary]) is None
    assert ForestWalker.build([wide]) is None
    walker = ForestWalker.build(_boosters(6, n_boosters=1)[0])
    with pytest.raises(ValueError, match="x: expected rows of 5 feature values"):
        walker.predict(np.zeros((1, 4)))


def _uplift_model() -> tuple[UpliftModel, pd.DataFrame]:
    rng = np.random.default_rng(11)
    n = 1500
    frame = pd.DataFrame({"a": rng.normal(size=n), "kind": rng.choice(["x", "y", "z"], n),
                          "b": rng.exponential(2, n).round(),
                          "size": rng.choice(["s", "m", "l"], n)})
    frame.loc[rng.random(n) < 0.1, "a"] = np.nan
    frame.loc[rng.random(n) < 0.1, "kind"] = None
    arms = ["ai_bot", "sales", "tmk", "top_sales"]
    model = UpliftModel([], arms, ["a", "kind", "b", "size"],
                        {"kind": ["x", "y", "z"], "size": ["l", "m", "s"]},
                        dict.fromkeys(arms, 0.0), 1.0)
    x = model.matrix(frame)
    model.serving_models = [
        lgb.train({"objective": "regression", "verbose": -1, "num_leaves": 31, "seed": k,
                   "num_threads": 1},
                  lgb.Dataset(x, np.nan_to_num(x[:, 0]) * (k + 1) * 0.01
                              + (x[:, 1] == k) * 0.05 + rng.normal(0, 0.01, n)), 40)
        for k in range(3)]
    return model, frame


def test_distilled_effects_equal_fast_uplift_and_encoding_equals_training() -> None:
    model, frame = _uplift_model()
    rows = frame.head(60).astype(object)
    rows.loc[0, "kind"] = "unseen"  # unknown level → NaN, as in training
    rows.loc[1, "a"] = None
    rows.loc[2, "b"] = float("nan")
    columns = {c: rows[c].tolist() for c in rows.columns}
    np.testing.assert_array_equal(model.encode_columns(columns), model.matrix(rows))
    served = DistilledEffects(model, FOLLOWUP_CHANNELS)
    assert served.walker is not None
    positions = [model.arms.index(c) for c in FOLLOWUP_CHANNELS]
    expected = model.fast_uplift(columns)[:, positions]
    np.testing.assert_allclose(served(columns), expected, rtol=0, atol=1e-9)
    one = {c: values[:1] for c, values in columns.items()}
    np.testing.assert_allclose(served(one), expected[:1], rtol=0, atol=1e-9)
    assert (served(columns)[:, FOLLOWUP_CHANNELS.index("ai_bot")] == 0).all()
    # a model without distilled boosters keeps fast_uplift (no walker)
    model.serving_models = []
    assert DistilledEffects(model, FOLLOWUP_CHANNELS).walker is None


def _learned_policy():
    base = load_policy()
    return base.with_cutoffs(base.cutoffs, base.version, {"allocation": {
        "source": "uplift", "cost_weight": 0.003,
        "shadow_prices": {"top_sales": 0.02, "sales": 0.01, "tmk": 0.0, "ai_bot": 0.0}}})


def test_learned_allocation_equals_choose_one() -> None:
    policy = _learned_policy()
    allocation = policy.optimization["allocation"]
    costs = {c: policy.channels[c].cost_per_lead for c in FOLLOWUP_CHANNELS}
    rng = np.random.default_rng(2)
    effects = rng.normal(0, 0.2, (400, len(FOLLOWUP_CHANNELS)))
    effects[:, FOLLOWUP_CHANNELS.index("ai_bot")] = 0.0
    effects[:5] = 0.0  # ties: the first channel with the best score, as np.argmax
    expected = [choose_one(row, FOLLOWUP_CHANNELS, costs, allocation["shadow_prices"],
                           allocation["cost_weight"]) for row in effects]
    rule = LearnedAllocation(policy)
    assert allocated_channels(effects, policy).tolist() == expected
    assert allocated_channels(effects, rule).tolist() == expected
    tiers, channels = rule.route(effects)
    assert channels.tolist() == expected
    assert tiers.tolist() == [policy.tier_of_channel(c) for c in expected]
    routed = route_leads([f"P{i}" for i in range(400)], np.full(400, 0.5), np.zeros(400),
                         policy, lead_ids=[f"L{i}" for i in range(400)], effects=effects,
                         allocation=rule)
    by_policy = routed.arms == "policy"
    assert (routed.channels[by_policy] == np.array(expected, dtype=object)[by_policy]).all()


def test_bad_effects_name_the_field() -> None:
    rule = LearnedAllocation(_learned_policy())
    with pytest.raises(AllocationError, match="effects: expected 4 finite values"):
        rule.choose(np.array([[0.1, np.nan, 0.0, 0.0]]))
    with pytest.raises(AllocationError, match="effects: expected 4 values per lead"):
        rule.choose(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="probability"):
        route_leads(["P1"], np.array([1.5]), np.zeros(1), _learned_policy(),
                    effects=np.zeros((1, 4)))
