"""Pure pieces of training: the time split, the promotion gate, feature preparation, reasons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.synthetic import synthetic_training_set
from training.explain import reason_text, top_reasons
from training.model import FeatureInputError, categorical_levels, prepare_features
from training.registry import decide_promotion
from training.split import time_split


# ---- time split -----------------------------------------------------------------------------
def test_time_split_orders_slices_strictly_and_keeps_ties_together() -> None:
    frame = synthetic_training_set(2000).sample(frac=1.0, random_state=3)  # shuffled input
    frame = pd.concat([frame, frame.iloc[:300].assign(lead_id=lambda d: d.lead_id + "-dup")])
    split = time_split(frame, "created_at")
    assert split.train["created_at"].max() < split.valid["created_at"].min()
    assert split.valid["created_at"].max() < split.test["created_at"].min()
    assert len(split.train) + len(split.valid) + len(split.test) == len(frame)
    assert 0.6 < len(split.train) / len(frame) < 0.8
    assert 0.1 < len(split.test) / len(frame) < 0.2


def test_time_split_with_heavy_ties_never_splits_a_timestamp() -> None:
    times = pd.to_datetime(["2026-01-01"] * 50 + ["2026-01-02"] * 30 + ["2026-01-03"] * 20,
                           utc=True)
    frame = pd.DataFrame({"created_at": times, "x": range(100)})
    split = time_split(frame, "created_at", fractions=(0.6, 0.2, 0.2))
    assert split.train["created_at"].nunique() == 1
    assert split.train["created_at"].max() < split.valid["created_at"].min()
    assert split.valid["created_at"].max() < split.test["created_at"].min()
    assert (len(split.train), len(split.valid), len(split.test)) == (50, 30, 20)


def test_time_split_rejects_bad_input_with_clear_messages() -> None:
    frame = pd.DataFrame({"created_at": pd.to_datetime(["2026-01-01"] * 10, utc=True)})
    with pytest.raises(ValueError, match="slice empty"):
        time_split(frame, "created_at")
    with pytest.raises(ValueError, match="'when' is missing"):
        time_split(frame, "when")
    with pytest.raises(ValueError, match="sum to 1"):
        time_split(frame, "created_at", fractions=(0.5, 0.2, 0.2))


# ---- promotion gate (pure) ------------------------------------------------------------------
def test_gate_promotes_first_model_and_better_models_only() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    good = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.1, y.size), 0.01, 0.99)
    bad = np.full(y.size, 0.5)
    assert decide_promotion(y, good, None).promote
    assert decide_promotion(y, good, bad, champion_version="1").promote
    worse = decide_promotion(y, bad, good, champion_version="1")
    assert not worse.promote and "does not beat" in worse.reason
    tie = decide_promotion(y, good, good.copy(), champion_version="1")
    assert not tie.promote and "tie" in tie.reason
    broken = decide_promotion(y, good, None, champion_version="3",
                              champion_error="KeyError: 'old_feature'")
    assert broken.promote and "cannot score" in broken.reason


# ---- model packaging --------------------------------------------------------------------------
def test_prepare_features_reproduces_training_categories_and_names_bad_columns() -> None:
    frame = synthetic_training_set(300)
    levels = categorical_levels(frame, ["channel", "funnel_step"])
    features = ["channel", "funnel_step", "intent_score"]
    served = frame.head(3).assign(channel=["seo", "never-seen", None])
    prepared = prepare_features(served, features, levels)
    assert list(prepared["channel"].cat.categories) == levels["channel"]
    assert prepared["channel"].isna().tolist() == [False, True, True]
    with pytest.raises(FeatureInputError, match="intent_score"):
        prepare_features(served.drop(columns=["intent_score"]), features, levels)
    with pytest.raises(FeatureInputError, match="'intent_score' must be numeric"):
        prepare_features(served.assign(intent_score="high"), features, levels)


def test_reasons_use_templates_and_a_generic_fallback() -> None:
    assert reason_text("funnel_step", "booked_trial", 0.8) == "booked a trial class"
    assert reason_text("days_since_last_touch", 30.0, -0.4) == "no activity for 30 days"
    assert reason_text("channel", "sem", 0.1).startswith("came through SEM")
    assert reason_text("prior_leads", 3, 0.2) == "3 earlier leads"
    assert "pricing/trial" in reason_text("intent_score", 12.0, 0.5)
    assert reason_text("mystery_signal", 2.5, 0.1) == "mystery signal = 2.50 (raises the chance)"
    assert reason_text("submit_weekday_cn", 0, 0.1) == "submitted on a Monday (China time)"
    reasons = top_reasons([0.5, -0.2, 0.05, -0.6], ["a", "b", "c", "d"],
                          {"a": 1, "b": 2, "c": 3, "d": 4}, top_k=1)
    assert [r["feature"] for r in reasons["positive"]] == ["a"]
    assert [r["feature"] for r in reasons["negative"]] == ["d"]


def test_every_model_feature_has_a_readable_reason() -> None:
    """No served reason falls back to the generic "name = value" text."""
    from features.request import MODEL_FEATURES
    from training.explain import REASON_TEMPLATES

    for feature, kind in MODEL_FEATURES.items():
        known = [k for k in REASON_TEMPLATES.get(feature, {}).get("by_value", {}) if k != "*"]
        value = known[0] if known else ("x" if kind == "string" else 2.0)
        for contribution in (0.3, -0.3):
            text = reason_text(feature, value, contribution)
            assert "the chance)" not in text, f"{feature}: generic reason {text!r}"
