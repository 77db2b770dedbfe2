"""The serving fast paths equal the reference implementations they replace.

* ``serving.scoring.fast_calibration`` vs ``Calibrator.predict`` (both methods, fitted here);
* ``FastScorer.reasons`` (ranking on the whole matrix) vs ``training.explain.top_reasons`` per row;
* ``features.request._map_unique`` small-input path vs the pandas ``factorize`` path.
"""

from __future__ import annotations

import decimal
import random
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from features import request
from serving.scoring import FastScorer, fast_calibration
from training.calibration import fit_calibrator
from training.explain import top_reasons


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_fast_calibration_equals_calibrator(method: str) -> None:
    rng = np.random.default_rng(7)
    raw = rng.beta(1, 8, 600)
    y = (rng.random(600) < raw * 1.5).astype(int)
    calibrator = fit_calibrator(raw, y, method=method)
    fast = fast_calibration(calibrator)
    assert fast is not None
    probe = np.concatenate([rng.random(500), [0.0, 1.0, 1e-9, 1 - 1e-9, raw.min(), raw.max()]])
    np.testing.assert_allclose(fast(probe), calibrator.predict(probe), rtol=1e-12, atol=1e-15)
    for one in probe[:20]:  # the single-lead case the service runs
        np.testing.assert_allclose(fast(np.array([one])), calibrator.predict([one]), rtol=1e-12)


def test_unknown_calibrator_has_no_fast_path() -> None:
    assert fast_calibration(SimpleNamespace(method="beta", model=None)) is None


def test_matrix_reasons_equal_top_reasons_per_row() -> None:
    rng = np.random.default_rng(11)
    columns = [f"feature_{j}" for j in range(12)]
    contrib = rng.normal(0, 0.3, (300, 12)).round(2)  # rounding makes ties
    contrib[rng.random((300, 12)) < 0.2] = 0.0
    contrib[5] = 0.0  # a row without reasons
    contrib[6, :3] = [1e-6, -1e-6, 5e-7]  # at and below the threshold
    features = {c: rng.integers(0, 5, 300).tolist() for c in columns}
    scorer = FastScorer.__new__(FastScorer)
    scorer.columns = columns
    scorer.model = SimpleNamespace(reason_templates={})
    got = scorer.reasons(contrib, features, top_k=3)
    for i in range(300):
        values = {c: features[c][i] for c in columns}
        assert got[i] == top_reasons(contrib[i], columns, values, top_k=3, templates={}), i


def _pandas_map(values: list, fn) -> list:  # noqa: ANN001
    codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)
    table = np.empty(len(uniques) + 1, dtype=object)
    table[:] = [fn(u) for u in uniques] + [fn(None)]
    return table[codes].tolist()


def test_small_input_map_equals_pandas_path() -> None:
    fns = [request._category_fn("channel"), request._free_text_one, request._city_tier_one,
           request._phone_valid_one, request._page_type_one]
    pool = [None, np.nan, pd.NA, pd.NaT, 1, 1.0, True, False, 0, "1", " sem ", "SEM", "", 2,
            2.5, np.int64(2), np.float64("nan"), np.bool_(True), "yes", decimal.Decimal("1"),
            "/pricing", "https://x/home", "unknown", float("inf")]
    rng = random.Random(0)
    for _ in range(2000):
        values = [rng.choice(pool) for _ in range(rng.randint(1, 6))]
        for fn in fns:
            expected = _pandas_map(values, fn)
            got = request._map_unique(values, fn)
            assert got == expected, (values, fn)
            assert [type(v) for v in got] == [type(v) for v in expected]


def test_small_input_map_refuses_unhashable_as_pandas_does() -> None:
    with pytest.raises(TypeError):
        _pandas_map(["sem", [1]], request._free_text_one)
    with pytest.raises(TypeError):
        request._map_unique(["sem", [1]], request._free_text_one)
