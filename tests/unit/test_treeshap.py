"""``serving.fast_treeshap.TreeTables`` equals LightGBM's own ``predict`` and ``pred_contrib``.

Real boosters trained here on small data with numeric and categorical features, missing values
(NaN), zeros and values outside the training range, for each of LightGBM's missing-value modes.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from serving.fast_treeshap import MAX_TREE_NODES, TreeTables


def _data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.column_stack([
        rng.normal(0, 1, n),  # numeric
        rng.integers(0, 6, n).astype(float),  # categorical codes 0..5
        rng.exponential(2, n).round(),  # counts with many zeros
        rng.uniform(-3, 3, n),
        rng.integers(0, 3, n).astype(float),  # categorical codes 0..2
    ])
    logit = x[:, 0] - 0.4 * x[:, 2] + (x[:, 1] == 3) - 0.8 * (x[:, 4] == 1) + 0.3 * x[:, 3]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    x[rng.random(x.shape) < 0.1] = np.nan
    return x, y


def _booster(num_leaves: int, **params: object) -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(num_leaves)
    x, y = _data(rng, 3000)
    train = lgb.Dataset(x, y, categorical_feature=[1, 4], free_raw_data=False)
    booster = lgb.train({"objective": "binary", "num_leaves": num_leaves, "verbose": -1,
                         "min_data_in_leaf": 20, "seed": 1, **params}, train,
                        num_boost_round=40)
    probe, _ = _data(np.random.default_rng(99), 500)
    odd = probe.copy()
    odd[::7, 1] = 17.0  # a category never seen
    odd[::11, 4] = -1.0  # a negative category code
    odd[::5, 2] = 0.0
    odd[::13, 0] = 1e6  # beyond every threshold
    odd[::17, 3] = -np.inf
    return booster, np.vstack([probe, odd])


@pytest.mark.parametrize(("num_leaves", "params"), [
    (10, {}),
    (6, {"zero_as_missing": True}),
    (8, {"use_missing": False}),
    (12, {"max_cat_to_onehot": 8}),
])
def test_tables_equal_lightgbm(num_leaves: int, params: dict) -> None:
    booster, x = _booster(num_leaves, **params)
    tables = TreeTables.build(booster)
    assert tables is not None
    probability, contrib = tables.predict(x)
    np.testing.assert_allclose(probability, booster.predict(x), rtol=0, atol=1e-12)
    expected = booster.predict(x, pred_contrib=True)[:, :-1]
    np.testing.assert_allclose(contrib, expected, rtol=0, atol=1e-9)
    for i in (0, 3, 250, 999):  # one row at a time (the single-prediction path)
        p1, c1 = tables.predict(x[i:i + 1])
        np.testing.assert_allclose(p1, probability[i:i + 1], rtol=0, atol=1e-12)
        np.testing.assert_allclose(c1, contrib[i:i + 1], rtol=0, atol=1e-9)


def test_large_trees_fall_back_to_lightgbm() -> None:
    booster, _ = _booster(MAX_TREE_NODES + 8)
    assert TreeTables.build(booster) is None
