"""The serving fast paths equal the reference implementations they replace.

* ``serving.fast_calibration.fast_calibration`` vs ``Calibrator.predict`` (every method training
  can choose: identity, sigmoid, isotonic);
* ``FastScorer.reasons`` (ranking on the whole matrix) vs ``training.explain.top_reasons`` per row;
* ``features.request._map_unique`` small-input path vs the pandas ``factorize`` path;
* ``features.history.at_request_time`` / ``snapshots_at`` (a batch's histories at their
  request times, grouped) vs ``features.history.snapshot_at`` row by row, bit for bit;
* ``TreeTables`` rank-based decisions vs float comparisons, and a batch's rows vs each row alone;
* ``features.online.submission_requests`` vs ``features.online.submission_request``;
* ``serving.fast_linear.FastLinear`` vs ``LogisticBaseline.log_odds`` / ``.contributions``, and
  ``FastScorer`` on a ``BlendedLeadModel`` vs its ``predict_with_reasons``.
"""

from __future__ import annotations

import decimal
import json
import random
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from features import history as hist
from features import request
from features.online import submission_request, submission_requests
from serving.fast_calibration import fast_calibration
from serving.fast_linear import FastLinear
from serving.scoring import FastScorer
from training.baselines import LogisticBaseline
from training.calibration import fit_calibrator
from training.explain import top_reasons
from training.model import (
    BlendedLeadModel,
    FeatureInputError,
    categorical_levels,
    prepare_features,
)


@pytest.mark.parametrize("method", ["identity", "sigmoid", "isotonic"])
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


DAY = hist.DAY_US
BASE_US = 1_780_000_000_000_000
EVENT_TYPES = ["web_visit", "live_class", "email_open", "whitepaper_download", "offline_event",
               "pricing_page", "trial_class", "app_open", "something_else"]


def _history(rng: random.Random) -> dict:
    history = hist.empty_history()
    for _ in range(rng.randint(0, 150)):
        history["t"].append(BASE_US - rng.randint(0, 200 * DAY))
        history["y"].append(rng.choice(EVENT_TYPES))
        history["u"].append(rng.choice(["/a", "/b", "/pricing", "", "/c?x=1"]))
        history["w"].append(rng.choice([1.0, 0.5, 2.25, 3, 0.1]))
    for j in range(rng.randint(0, 30)):
        history["lt"].append(BASE_US - rng.randint(0, 100 * DAY))
        history["lc"].append(rng.choice(["sem", "app"]))
        history["li"].append(f"L{j}")
    if rng.random() < 0.5:
        history.update(n0=rng.randint(1, 30), i0=rng.random() * 5, a0=BASE_US - 300 * DAY,
                       f0=BASE_US - 400 * DAY, l0=BASE_US - 250 * DAY)
    return json.loads(json.dumps(history))  # as stored


def test_grouped_snapshots_equal_snapshot_at_bit_for_bit() -> None:
    rng = random.Random(5)
    for _ in range(60):
        history = _history(rng)
        ats = [BASE_US + rng.randint(-150 * DAY, 5 * DAY) for _ in range(rng.randint(2, 25))]
        ats += [ats[0], ats[0] + 1, *history["t"][:3], *(t + 7 * DAY for t in history["t"][:3]),
                *history["lt"][:2]]  # on the thresholds of the windows
        half_life = rng.choice([14.0, 7.5, 30])
        got = hist.snapshots_at(history, ats, half_life)
        expected = [hist.snapshot_at(history, at, half_life) for at in ats]
        assert got == expected
        assert [list(row) for row in got] == [list(row) for row in expected]


def test_grouped_snapshots_leave_float_times_to_snapshot_at() -> None:
    history = _history(random.Random(1))
    history["t"] = [float(t) for t in history["t"]]
    assert hist.snapshots_at(history, [BASE_US, BASE_US + 1], 14.0) is None


def test_batch_at_request_times_equal_at_request_time() -> None:
    rng = random.Random(9)
    shared, other = _history(rng), _history(rng)
    other["t"] = [t + 0.5 for t in other["t"]]  # float times: row by row
    texts = [hist.dumps(shared)] * 6 + [hist.dumps(other)] * 2 + [None, "not json", ""]
    n = len(texts)
    snapshot = hist.snapshot_at(shared, BASE_US - 3 * DAY, 14.0)
    inputs = {name: [value] * n for name, value in snapshot.items()}
    inputs[hist.HISTORY_FIELD] = texts
    request = [BASE_US + rng.randint(-20 * DAY, DAY) / 1e6 * 1e6 for _ in range(n)]
    request[3] = snapshot["snap_ts_s"] * 1e6  # requested at the snapshot's own time
    inputs["request_ts_s"] = [us / 1e6 for us in request]
    inputs["request_ts_s"][4] = None  # no request time
    inputs["form_channel"] = ["sem"] * n
    # reference: every row on its own (one row never takes the grouped path)
    rows = [hist.at_request_time({k: [v[i]] for k, v in inputs.items()}, 1, 14.0)
            for i in range(n)]
    expected = {name: [row[name][0] for row in rows] for name in rows[0]}
    got = hist.at_request_time(inputs, n, 14.0)
    assert list(got) == list(expected)
    for name in expected:
        assert list(got[name]) == list(expected[name]), name
    # the view's own pass then finds nothing left to do
    assert hist.at_request_time(got, n, 14.0) == got


def _reference_codes(tables, x: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """Decision codes by float comparisons (the tables' former implementation)."""
    values = np.take(x, tables.feature, axis=1)
    left = values <= tables.threshold
    missing = np.isnan(values)
    left = np.where(missing, tables.nan_left, left)
    if tables.any_zero_missing:
        zero = tables.zero_missing & (np.abs(values) <= 1e-35)
        left = np.where(zero, tables.default_left, left)
    if len(tables.cat_pos):
        t, k = tables.cat_pos[:, 0], tables.cat_pos[:, 1]
        raw = values[:, t, k]
        top = tables.cat_lut.shape[1] - 1
        index = np.where((raw >= 0) & (raw < top), raw, top).astype(np.intp)
        left[:, t, k] = tables.cat_lut[tables.cat_rows, index]
    left &= tables.real
    return np.einsum("ntw,w->nt", left.view(np.uint8), tables.pow2)


@pytest.mark.parametrize("params", [{}, {"zero_as_missing": True}, {"use_missing": False}])
def test_tree_tables_batch_rows_equal_single_rows(params: dict) -> None:
    from serving.fast_treeshap import TreeTables
    from tests.unit.test_treeshap import _booster

    booster, x = _booster(10, **params)
    tables = TreeTables.build(booster)
    assert tables is not None
    np.testing.assert_array_equal(tables.codes(x), _reference_codes(tables, x))
    probability, contrib = tables.predict(x)  # two threads from 256 rows
    for i in range(0, len(x), 37):
        one_p, one_c = tables.predict(x[i:i + 1])
        assert one_p[0] == probability[i]
        np.testing.assert_array_equal(one_c[0], contrib[i])


def test_request_columns_equal_submission_request() -> None:
    now = datetime.now(UTC)
    forms = [
        {"channel": "sem", "campaign": "x", "landing_page": "/p", "funnel_step": "verified",
         "grade": "G5", "subject": "math", "city_tier": 2, "device": "ios", "phone_valid": True,
         "email_domain_type": "free"},
        {"channel": 3, "city_tier": 2.0, "phone_valid": 1, "grade": None},
        {"city_tier": float("nan"), "phone_valid": "yes", "device": ["x"]},
        {},
    ]
    times = [now - timedelta(days=i, microseconds=7 * i) for i in range(len(forms))]
    rows = [submission_request(form, at) for form, at in zip(forms, times, strict=True)]
    expected = {name: [row[name] for row in rows] for name in rows[0]}
    got = submission_requests(forms, times)
    assert list(got) == list(expected)
    for name in expected:
        assert [(type(v), v) for v in got[name]] == [(type(v), v) for v in expected[name]]


# ---- the logistic regression and the blend ---------------------------------------------------
NUMERIC = ["visits", "score", "empty", "constant", "flag"]
CATEGORICAL = ["channel", "grade"]
COLUMNS = ["channel", "visits", "score", "grade", "empty", "constant", "flag"]
CHANNELS = ["sem", "seo", "feed", "app", "rare_a", "rare_b"]  # the rare ones: infrequent


def _lead_frame(n: int, seed: int) -> pd.DataFrame:
    """Leads with missing values, a column empty in training, a constant one, a 0/1 flag, rare
    levels (grouped as infrequent by the encoder) and missing levels."""
    rng = np.random.default_rng(seed)
    channel = rng.choice(CHANNELS, n, p=[0.4, 0.3, 0.17, 0.11, 0.01, 0.01]).astype(object)
    grade = rng.choice([f"G{i}" for i in range(1, 10)], n).astype(object)
    grade[rng.random(n) < 0.1] = None
    visits = rng.poisson(3, n).astype(float)
    visits[rng.random(n) < 0.15] = np.nan
    score = rng.normal(50, 10, n)
    flag = rng.integers(0, 2, n)
    logit = (-1.2 + 0.3 * np.nan_to_num(visits) - 0.04 * (score - 50) + 0.8 * flag
             + np.where(channel == "seo", 0.6, 0.0) - np.where(grade == "G1", 0.7, 0.0))
    return pd.DataFrame({
        "channel": channel, "visits": visits, "score": score, "grade": grade,
        "empty": np.full(n, np.nan), "constant": np.full(n, 3.0), "flag": flag,
        "label": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int),
    })


def _probe_columns(seed: int, n: int = 300) -> dict[str, list]:
    """Columns as the service sends them: Python values, ints and booleans for numbers,
    missing values of every kind, unknown and rare levels, a level spelled like a number."""
    rng = random.Random(seed)
    frame = _lead_frame(n, seed + 100)
    columns: dict[str, list] = {c: frame[c].tolist() for c in COLUMNS}
    odd_numbers = [None, float("nan"), True, False, 0, 7, -2.5, 1e6, np.int64(4)]
    odd_levels = [None, float("nan"), "missing", "never-seen", "rare_a", "rare_b", 3, "", "SEM"]
    for i in range(n):
        if rng.random() < 0.3:
            for column in NUMERIC:
                if rng.random() < 0.5:
                    columns[column][i] = rng.choice(odd_numbers)
            for column in CATEGORICAL:
                if rng.random() < 0.5:
                    columns[column][i] = rng.choice(odd_levels)
    return columns


@pytest.fixture(scope="module")
def fitted() -> tuple[pd.DataFrame, LogisticBaseline]:
    train = _lead_frame(1200, 0)
    return train, LogisticBaseline(COLUMNS, CATEGORICAL).fit(train, train["label"])


def test_fast_linear_equals_logistic_baseline(fitted) -> None:  # noqa: ANN001
    _, baseline = fitted
    fast = FastLinear.from_baseline(baseline)
    assert fast is not None
    encoder = baseline.pipeline.named_steps["columns"].named_transformers_["categorical"]
    assert encoder.infrequent_categories_[0] is not None  # the rare channels are grouped
    for seed in range(4):
        columns = _probe_columns(seed)
        frame = pd.DataFrame(columns)
        log_odds, contrib = fast.predict(columns)
        np.testing.assert_allclose(log_odds, baseline.log_odds(frame), rtol=0, atol=1e-9)
        np.testing.assert_allclose(contrib, baseline.contributions(frame), rtol=0, atol=1e-9)
        np.testing.assert_allclose(contrib.sum(axis=1), log_odds, rtol=0, atol=1e-9)
        for i in range(0, 300, 7):  # one row alone gives the bits it gives in the batch
            one_odds, one_contrib = fast.predict({c: [v[i]] for c, v in columns.items()})
            assert one_odds[0] == log_odds[i]
            np.testing.assert_array_equal(one_contrib[0], contrib[i])
    empty_odds, empty_contrib = fast.predict({c: [] for c in COLUMNS})
    assert empty_odds.shape == (0,) and empty_contrib.shape == (0, len(COLUMNS) + 1)


def test_fast_linear_refuses_bad_input_naming_the_column(fitted) -> None:  # noqa: ANN001
    _, baseline = fitted
    fast = FastLinear.from_baseline(baseline)
    assert fast is not None
    columns = {c: v[:2] for c, v in _probe_columns(0).items()}
    with pytest.raises(FeatureInputError, match="'score'"):
        fast.predict({**columns, "score": [1.0, "high"]})
    with pytest.raises(FeatureInputError, match="grade"):
        fast.predict({c: v for c, v in columns.items() if c != "grade"})
    assert FastLinear.from_baseline(LogisticBaseline(COLUMNS, CATEGORICAL)) is None  # unfitted


def _blend(fitted, weight: float, num_leaves: int, method: str) -> BlendedLeadModel:  # noqa: ANN001
    import lightgbm as lgb

    train, baseline = fitted
    levels = categorical_levels(train, CATEGORICAL)
    model_string = None
    if weight > 0:
        data = lgb.Dataset(prepare_features(train, COLUMNS, levels), train["label"],
                           categorical_feature=CATEGORICAL)
        booster = lgb.train({"objective": "binary", "num_leaves": num_leaves, "verbose": -1,
                             "min_data_in_leaf": 10, "seed": 1, "num_threads": 1}, data,
                            num_boost_round=30)
        model_string = booster.model_to_string()
    raw = np.random.default_rng(3).beta(1, 4, 800)
    y = (np.random.default_rng(4).random(800) < raw).astype(int)
    calibrator = fit_calibrator(raw, y, method=method)
    return BlendedLeadModel(baseline, calibrator, COLUMNS, levels, weight=weight,
                            model_string=model_string)


def _reasons(answer: dict) -> list:
    return [[(r["feature"], r["text"], r["contribution"]) for r in answer[side]]
            for side in ("positive_reasons", "negative_reasons")]


@pytest.mark.parametrize(("weight", "num_leaves", "method"), [
    (0.0, 0, "sigmoid"),  # the logistic regression alone
    (0.3, 8, "isotonic"),  # booster scored by the tree tables
    (0.3, 40, "identity"),  # trees too large for the tables: LightGBM's own predict
    (0.999, 8, "sigmoid"),
    (1.0, 8, "identity"),  # LightGBM alone inside the blend
])
def test_fast_scorer_serves_blend_as_predict_with_reasons(
    fitted, weight: float, num_leaves: int, method: str,  # noqa: ANN001
) -> None:
    model = _blend(fitted, weight, num_leaves, method)
    scorer = FastScorer(model)
    assert scorer.fast and scorer.linear is not None
    assert (scorer.tables is None) == (num_leaves > 12 or weight == 0)
    columns = _probe_columns(11, 400)
    expected = model.predict_with_reasons(pd.DataFrame(columns), top_k=3)
    got = scorer.score(columns, top_k=3)
    np.testing.assert_allclose([g["probability"] for g in got],
                               [e["probability"] for e in expected], rtol=0, atol=1e-9)
    np.testing.assert_allclose([g["raw_score"] for g in got],
                               [e["raw_score"] for e in expected], rtol=0, atol=1e-9)
    assert [_reasons(g) for g in got] == [_reasons(e) for e in expected]
    singles = [scorer.score({c: [v[i]] for c, v in columns.items()}, top_k=3)[0]
               for i in range(len(got))]
    assert singles == got
    assert scorer.score({c: [] for c in COLUMNS}) == []
