"""Choice by validation: the shipped model is chosen on out-of-time rows of the training period,
a simple model that wins is said plainly and shipped, and the shipped package serves it."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from serving.scoring import FastScorer
from training.baselines import LogisticBaseline
from training.calibration import fit_calibrator
from training.model import BlendedLeadModel, categorical_levels, prepare_features
from training.search_space import BASE_PARAMS
from training.selection import (
    choose_and_calibrate,
    choose_model,
    forward_blocks,
    package_model,
    train_default_lightgbm,
)
from training.split import time_split

FEATURES = ["x1", "x2", "x3", "channel"]
OVERFIT = {**BASE_PARAMS, "num_leaves": 128, "min_child_samples": 2, "learning_rate": 0.3,
           "lambda_l2": 0.0, "n_jobs": 1}


def _linear_frame(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    """Leads whose log-odds are linear in the features: a logistic regression is the truth."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    channel = rng.choice(["sem", "seo", "feed"], n)
    logit = -1.5 + x @ np.array([1.0, -0.7, 0.4]) + np.where(channel == "seo", 0.5, 0.0)
    return pd.DataFrame({
        "created_at": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(
            np.sort(rng.integers(0, 90 * 24 * 60, n)), unit="m"),
        "x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "channel": channel,
        "label": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int),
    })


def test_forward_blocks_follow_time_and_keep_ties_together() -> None:
    times = np.array([5, 1, 1, 2, 3, 3, 3, 4, 6, 7, 8, 9])
    blocks = forward_blocks(times, 3)
    order = np.argsort(times, kind="stable")
    assert (np.diff(blocks[order]) >= 0).all()  # older rows in earlier blocks
    for value in np.unique(times):
        assert np.unique(blocks[times == value]).size == 1
    with pytest.raises(ValueError, match="too few distinct times"):
        forward_blocks(np.zeros(10), 3)


def test_choose_model_takes_the_lowest_log_loss_and_says_when_the_simple_model_wins() -> None:
    rng = np.random.default_rng(1)
    truth = rng.beta(1, 6, 3000)
    y = (rng.random(3000) < truth).astype(int)
    noisy = np.clip(truth * np.exp(rng.normal(0, 0.8, 3000)), 1e-3, 0.999)
    choice = choose_model(y, {"tuned_lightgbm": noisy, "logistic_regression": truth},
                          scheme="test", n_boot=200)
    assert choice.chosen == "logistic_regression" and choice.simple_model_wins
    assert "The simple model wins" in choice.reason
    assert choice.candidates["tuned_lightgbm"]["log_loss_minus_chosen"]["low"] > 0


def test_simple_model_that_wins_forward_in_time_is_packaged_and_served() -> None:
    frame = _linear_frame()
    split = time_split(frame, "created_at")
    cats = ["channel"]
    selection = choose_and_calibrate(split, FEATURES, cats, OVERFIT, rounds=150, seed=0)
    choice = selection.choice
    assert choice.chosen == "logistic_regression", choice.reason
    assert "The simple model wins" in choice.reason
    assert selection.rows > len(split.valid)  # a longer window than the validation slice
    levels = categorical_levels(split.train, cats)
    x_train = prepare_features(split.train, FEATURES, levels)
    y_train = split.train["label"].to_numpy()
    linear = LogisticBaseline(FEATURES, cats).fit(split.train, y_train)
    default = train_default_lightgbm(x_train, y_train, cats, 0)
    model = package_model(choice, selection.calibrator, booster=default,
                          default_booster=default, linear=linear, features=FEATURES,
                          levels=levels, metadata={})
    assert isinstance(model, BlendedLeadModel) and model.kind == "logistic_regression"
    np.testing.assert_allclose(model.raw_scores(split.test), linear.predict_proba(split.test))
    # reasons come from the linear contributions, which add up to the log-odds
    contrib = model.contributions(split.test)
    np.testing.assert_allclose(contrib.sum(axis=1), linear.log_odds(split.test), atol=1e-9)
    # the service's scorer: a batch answers as each lead alone does
    scorer = FastScorer(model)
    rows = split.test.head(6)
    columns = {c: rows[c].tolist() for c in FEATURES}
    batch = scorer.score(columns)
    singles = [scorer.score({c: [v[i]] for c, v in columns.items()})[0] for i in range(6)]
    assert batch == singles
    assert all(b["positive_reasons"] or b["negative_reasons"] for b in batch)
    np.testing.assert_allclose([b["probability"] for b in batch], model.predict_proba(rows))


def test_blend_package_round_trips_through_mlflow(tmp_path) -> None:  # noqa: ANN001
    frame = _linear_frame(800, seed=2)
    split = time_split(frame, "created_at")
    levels = categorical_levels(split.train, ["channel"])
    x_train = prepare_features(split.train, FEATURES, levels)
    y_train = split.train["label"].to_numpy()
    booster = train_default_lightgbm(x_train, y_train, ["channel"], 0)
    linear = LogisticBaseline(FEATURES, ["channel"]).fit(split.train, y_train)
    raw = np.full(len(split.valid), 0.3)
    calibrator = fit_calibrator(raw + np.linspace(0, 0.1, raw.size),
                                split.valid["label"].to_numpy(), method="identity")
    model = BlendedLeadModel(linear, calibrator, FEATURES, levels, weight=0.4,
                             model_string=booster.model_to_string())
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("blend-round-trip")  # not whichever experiment an earlier test set
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=model,
                                       input_example=split.test[FEATURES].head(3))
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    np.testing.assert_allclose(loaded.predict(split.test[FEATURES])["probability"],
                               model.predict_proba(split.test))
    with pytest.raises(ValueError, match="needs the booster"):
        BlendedLeadModel(linear, calibrator, FEATURES, levels, weight=0.5)
