"""Pure pieces of training: the time split, the promotion gate, feature preparation, reasons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.synthetic import synthetic_training_set
from training.explain import reason_text, top_reasons
from training.model import FeatureInputError, categorical_levels, prepare_features
from training.registry import decide_promotion, paired_bootstrap
from training.split import InsufficientDataError, time_split
from training.tune import fit_to_space, study_name_for


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


# ---- embargo ----------------------------------------------------------------------------------
GAP = pd.Timedelta(days=30)


def test_embargo_keeps_every_label_window_out_of_the_next_slice() -> None:
    frame = synthetic_training_set(3000)  # 150 days of leads
    plain = time_split(frame, "created_at")
    split = time_split(frame, "created_at", gap=GAP)
    # the validation labels close before the test period; the test slice is the same leads
    assert split.valid["created_at"].max() + GAP <= split.test["created_at"].min()
    assert split.train["created_at"].max() + GAP <= split.valid["created_at"].min()
    assert split.test["lead_id"].tolist() == plain.test["lead_id"].tolist()
    assert len(split.valid) == pytest.approx(len(plain.valid), abs=5)
    embargo = split.embargo()
    dropped = embargo["rows_dropped"]
    assert dropped["before_test"] > 0 and dropped["before_valid"] > 0
    kept = len(split.train) + len(split.valid) + len(split.test)
    assert kept + dropped["before_test"] + dropped["before_valid"] == len(frame)
    assert embargo["gap_days"] == 30 and embargo["valid_gap_days"] == 30
    assert embargo["valid_to_test_days"] >= 30 and embargo["train_to_valid_days"] >= 30
    # no gap: nothing dropped, slices adjacent
    assert plain.embargo()["rows_dropped"] == {"before_valid": 0, "before_test": 0}


def test_embargo_before_test_only_and_window_closing_on_the_boundary() -> None:
    frame = synthetic_training_set(3000)
    split = time_split(frame, "created_at", gap=GAP, valid_gap=pd.Timedelta(0))
    assert split.embargo()["rows_dropped"]["before_valid"] == 0
    assert split.valid["created_at"].max() + GAP <= split.test["created_at"].min()
    assert split.train["created_at"].max() < split.valid["created_at"].min()
    # a label window that closes exactly when the next slice starts is kept
    days = pd.to_datetime(["2026-01-01"] * 6 + ["2026-01-05"] * 2 + ["2026-01-11"] * 2, utc=True)
    tiny = pd.DataFrame({"created_at": days, "x": range(10)})
    cut = time_split(tiny, "created_at", fractions=(0.6, 0.2, 0.2), gap=pd.Timedelta(days=6),
                     valid_gap=pd.Timedelta(days=4))
    assert (len(cut.train), len(cut.valid), len(cut.test)) == (6, 2, 2)
    assert cut.embargo()["rows_dropped"] == {"before_valid": 0, "before_test": 0}


def test_embargo_refuses_when_too_little_data_remains() -> None:
    frame = synthetic_training_set(3000)
    with pytest.raises(InsufficientDataError, match=r"train slice empty .*embargo \(100 days"):
        time_split(frame, "created_at", gap=pd.Timedelta(days=100))
    with pytest.raises(InsufficientDataError, match="train slice with .* rows .at least 2000"):
        time_split(frame, "created_at", gap=GAP, min_rows=2000)
    with pytest.raises(ValueError, match="gap must not be negative"):
        time_split(frame, "created_at", gap=-GAP)


# ---- promotion gate (pure) ------------------------------------------------------------------
def _labels_and_good(n: int = 1400, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logit = rng.normal(-2.5, 1.5, n)
    p = 1 / (1 + np.exp(-logit))
    return (rng.random(n) < p).astype(int), p


def test_gate_promotes_first_model_and_better_models_only() -> None:
    y, good = _labels_and_good()
    bad = np.full(y.size, y.mean())  # base rate only
    assert decide_promotion(y, good, None).promote
    better = decide_promotion(y, good, bad, champion_version="1")
    assert better.promote and "better beyond noise" in better.reason
    assert better.interval is not None and better.interval[1] < 0
    worse = decide_promotion(y, bad, good, champion_version="1")
    assert not worse.promote and "does not beat" in worse.reason and worse.interval[0] > 0
    broken = decide_promotion(y, good, None, champion_version="3",
                              champion_error="KeyError: 'old_feature'")
    assert broken.promote and "cannot score" in broken.reason


def test_gate_keeps_the_champion_against_an_equal_challenger() -> None:
    """Two equally good models (the truth plus independent noise): the old rule (1e-4 lower
    log loss) promoted about half of such challengers; the interval keeps the champion."""
    rng0 = np.random.default_rng(1)
    logit = rng0.normal(-2.5, 1.5, 1400)
    y = (rng0.random(logit.size) < 1 / (1 + np.exp(-logit))).astype(int)
    rng = np.random.default_rng(7)
    promoted = 0
    for trial in range(20):
        champion, challenger = (1 / (1 + np.exp(-(logit + rng.normal(0, 0.3, logit.size))))
                                for _ in range(2))
        decision = decide_promotion(y, challenger, champion, champion_version="1", seed=trial)
        low, high = decision.interval
        assert low < decision.log_loss_difference < high
        promoted += decision.promote
        if decision.promote:  # only when the whole interval lies below zero
            assert high < 0
        else:
            assert "beyond noise" in decision.reason
    assert promoted <= 2  # ~2.5% expected; the old rule: ~10 of 20
    same = decide_promotion(y, champion, champion.copy(), champion_version="1")
    assert not same.promote and same.interval == (0.0, 0.0)


def test_gate_replaces_an_old_champion_within_the_margin_only() -> None:
    y, good = _labels_and_good()
    rng = np.random.default_rng(3)
    equal = np.clip(good * np.exp(rng.normal(0, 0.03, y.size)), 1e-4, 0.999)
    young = decide_promotion(y, equal, good, "4", champion_age_days=5, max_age_days=30,
                             margin=0.01)
    old = decide_promotion(y, equal, good, "4", champion_age_days=45, max_age_days=30,
                           margin=0.01)
    assert not young.promote
    assert old.promote and "45 days old" in old.reason and "replaces champion v4" in old.reason
    worse = np.clip(good * 1.6, 1e-4, 0.999)
    stale_but_worse = decide_promotion(y, worse, good, "4", champion_age_days=45,
                                       max_age_days=30, margin=0.01)
    assert not stale_but_worse.promote and "exceeds the 1.0% margin" in stale_but_worse.reason


def test_gate_is_seeded_and_its_tags_carry_the_interval() -> None:
    y, good = _labels_and_good()
    other = np.clip(good * 1.1, 1e-4, 0.999)
    first = decide_promotion(y, other, good, "2", seed=11)
    again = decide_promotion(y, other, good, "2", seed=11)
    assert first.interval == again.interval and first.resamples == 1000
    tags = first.tags()
    assert {"promotion_decision", "promotion_reason", "promotion_rule", "champion_before",
            "log_loss_difference", "log_loss_difference_ci95", "bootstrap_resamples"} <= set(tags)
    low, high = (float(v) for v in tags["log_loss_difference_ci95"].split(" .. "))
    assert low == pytest.approx(first.interval[0], rel=1e-5)
    assert high == pytest.approx(first.interval[1], rel=1e-5)
    assert "log_loss_difference" not in decide_promotion(y, good, None).tags()
    with pytest.raises(ValueError, match="same 1400 test rows"):
        paired_bootstrap(y, good[:-1], good)


def test_bootstrap_blocks_give_the_plain_resampling() -> None:
    """Blocks of resamples (memory bound) draw the same indices as one big draw."""
    import training.registry as registry

    y, good = _labels_and_good(300)
    other = np.clip(good * 1.2, 1e-4, 0.999)
    whole = paired_bootstrap(y, other, good, seed=5)
    saved = registry._BOOTSTRAP_CELLS
    try:
        registry._BOOTSTRAP_CELLS = 300 * 7  # 7 resamples per block
        blocked = paired_bootstrap(y, other, good, seed=5)
    finally:
        registry._BOOTSTRAP_CELLS = saved
    assert blocked == whole


# ---- study per window, warm start -------------------------------------------------------------
def test_study_name_follows_the_data_window_and_the_feature_version() -> None:
    frame = synthetic_training_set(3000)
    windows = time_split(frame, "created_at", gap=GAP).windows()
    later = time_split(frame.iloc[100:], "created_at", gap=GAP).windows()
    name = study_name_for("lead-conversion", "svc@abc", windows)
    assert name == study_name_for("lead-conversion", "svc@abc", windows)
    assert name != study_name_for("lead-conversion", "svc@abc", later)
    assert name != study_name_for("lead-conversion", "svc@def", windows)
    assert name.startswith("lead-conversion__svc-abc__20260101-")
    assert len(name) < 100 and all(c.isalnum() or c in "_.-" for c in name)


def test_champion_parameters_fit_the_search_space_or_are_refused() -> None:
    logged = {"learning_rate": "0.05", "num_leaves": "31", "min_child_samples": "20",
              "feature_fraction": "0.8", "bagging_fraction": "0.9", "lambda_l1": "1e-05",
              "lambda_l2": "0.001", "min_split_gain": "0.0", "cat_smooth": "10.0",
              "bagging_freq": "1", "seed": "42"}  # as MLflow stores them: text
    fitted, why = fit_to_space(logged)
    assert fitted is not None, why
    assert fitted["num_leaves"] == 31 and isinstance(fitted["num_leaves"], int)
    assert fitted["learning_rate"] == 0.05 and "seed" not in fitted
    out, why = fit_to_space({**logged, "num_leaves": "4096"})
    assert out is None and "'num_leaves'" in why and "outside" in why
    out, why = fit_to_space({k: v for k, v in logged.items() if k != "cat_smooth"})
    assert out is None and "lack 'cat_smooth'" in why
    assert fit_to_space(None)[0] is None and fit_to_space({})[0] is None


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
