"""Evaluation metrics, calibration and plots on small inputs with known answers."""

from __future__ import annotations

import json
import pickle

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from training.calibration import Calibrator, fit_calibrator
from training.evaluate import (
    classification_metrics,
    compare_models,
    expected_calibration_error,
    gains_table,
    tier_table,
)
from training.plots import calibration_plot, gains_plot, shap_summary_plot


def test_ece_is_zero_when_each_bin_rate_matches_its_mean_score() -> None:
    # Bin [0.2, 0.3): scores 0.25 x4, one positive → rate 0.25; bin [0.7, 0.8): 0.75, 3 of 4.
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    p = [0.25] * 4 + [0.75] * 4
    assert expected_calibration_error(y, p) == pytest.approx(0.0)


def test_ece_weights_bins_by_size() -> None:
    # Bin 0.1 (6 rows, rate 0.5): gap 0.4; bin 0.9 (2 rows, rate 1.0): gap 0.1.
    y = [1, 1, 1, 0, 0, 0, 1, 1]
    p = [0.1] * 6 + [0.9] * 2
    expected = (6 * 0.4 + 2 * 0.1) / 8
    assert expected_calibration_error(y, p) == pytest.approx(expected)


def test_ece_counts_probability_one_in_the_last_bin() -> None:
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == pytest.approx(0.0)
    assert expected_calibration_error([0], [1.0]) == pytest.approx(1.0)


def test_ece_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        expected_calibration_error([2, 0], [0.5, 0.5])
    with pytest.raises(ValueError, match="2 values but p has 3"):
        expected_calibration_error([1, 0], [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="probabilities"):
        expected_calibration_error([1, 0], [1.5, 0.5])


def test_gains_table_orders_by_score_and_accumulates() -> None:
    # 10 rows, 2 buckets of 5; the top 5 scores hold 4 of the 5 positives.
    p = np.arange(10, 0, -1) / 10.0  # 1.0 … 0.1
    y = np.array([1, 1, 0, 1, 1, 0, 0, 1, 0, 0])
    table = gains_table(y, p, n_bins=2)
    assert table["volume"].tolist() == [5, 5]
    assert table["positives"].tolist() == [4, 1]
    assert table["rate"].tolist() == pytest.approx([0.8, 0.2])
    assert table["lift"].tolist() == pytest.approx([1.6, 0.4])
    assert table["cumulative_gain"].tolist() == pytest.approx([0.8, 1.0])
    assert table["cumulative_lift"].iloc[-1] == pytest.approx(1.0)


def test_gains_table_deciles_by_default() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(size=1000)
    y = (rng.uniform(size=1000) < p).astype(int)
    table = gains_table(y, p)
    assert len(table) == 10 and table["volume"].sum() == 1000
    assert table["rate"].iloc[0] > table["rate"].iloc[-1]
    assert table["cumulative_gain"].is_monotonic_increasing


def test_tier_table_assigns_by_cutoffs_with_inclusive_lower_bounds() -> None:
    p = [0.9, 0.8, 0.6, 0.5, 0.3, 0.2, 0.1, 0.05]
    y = [1, 1, 1, 0, 1, 0, 0, 0]
    table = tier_table(y, p, {"A": 0.8, "B": 0.5, "C": 0.2}).set_index("tier")
    assert table["volume"].to_dict() == {"A": 2, "B": 2, "C": 2, "D": 2}
    assert table.loc["A", "precision"] == pytest.approx(1.0)
    assert table.loc["B", "precision"] == pytest.approx(0.5)
    assert table.loc["A", "recall"] == pytest.approx(0.5)
    assert table.loc["D", "positives"] == 0
    assert table["recall"].sum() == pytest.approx(1.0)


def test_tier_table_rejects_unordered_cutoffs() -> None:
    with pytest.raises(ValueError, match="A >= B >= C"):
        tier_table([1, 0], [0.5, 0.5], {"A": 0.2, "B": 0.5, "C": 0.1})
    with pytest.raises(ValueError, match="lack tier"):
        tier_table([1, 0], [0.5, 0.5], {"A": 0.6, "B": 0.5})


def test_classification_metrics_are_json_ready_and_correct() -> None:
    y = [0, 0, 1, 1]
    p = [0.1, 0.4, 0.35, 0.8]
    metrics = classification_metrics(y, p, {"A": 0.7, "B": 0.3, "C": 0.2})
    json.dumps(metrics)  # plain floats and ints only
    assert metrics["roc_auc"] == pytest.approx(0.75)
    assert metrics["brier"] == pytest.approx(np.mean((np.array(p) - np.array(y)) ** 2))
    assert {"pr_auc", "log_loss", "ece", "gains", "tiers"} <= metrics.keys()
    assert [t["tier"] for t in metrics["tiers"]] == ["A", "B", "C", "D"]


def test_compare_models_scores_each_model_on_the_same_rows() -> None:
    y = np.array([0, 1] * 50)
    result = compare_models(y, {"perfect": y * 0.9 + 0.05, "coin": np.full(100, 0.5)})
    assert result["perfect"]["roc_auc"] == pytest.approx(1.0)
    assert result["coin"]["roc_auc"] == pytest.approx(0.5)
    assert result["perfect"]["log_loss"] < result["coin"]["log_loss"]


def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores pushed towards the extremes: true probability q, reported q**0.3-ish."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.02, 0.98, size=n)
    y = (rng.uniform(size=n) < q).astype(int)
    overconfident = 1 / (1 + np.exp(-3 * np.log(q / (1 - q))))
    return overconfident, y


def test_calibrator_improves_ece_on_held_out_rows() -> None:
    p_fit, y_fit = _miscalibrated(3000, seed=1)
    p_new, y_new = _miscalibrated(3000, seed=2)
    calibrator = fit_calibrator(p_fit, y_fit)
    before = expected_calibration_error(y_new, p_new)
    after = expected_calibration_error(y_new, calibrator.predict(p_new))
    assert before > 0.08
    assert after < 0.03
    assert calibrator.method in {"isotonic", "sigmoid"}
    losses = calibrator.to_dict()["cv_log_loss"]
    assert {"isotonic", "sigmoid", "identity"} <= losses.keys()
    assert losses[calibrator.method] == min(losses["isotonic"], losses["sigmoid"])
    assert calibrator.evidence[calibrator.method]["high"] < 0  # a gain beyond noise


def test_calibrator_chooses_sigmoid_for_a_pure_logit_distortion() -> None:
    # A monotone logit-linear distortion is exactly what Platt scaling undoes.
    p_fit, y_fit = _miscalibrated(400, seed=3)
    calibrator = fit_calibrator(p_fit, y_fit)
    assert calibrator.method == "sigmoid"
    assert calibrator.to_dict()["slope"] == pytest.approx(1 / 3, abs=0.12)


def test_calibrator_is_picklable_clipped_and_forcible() -> None:
    p, y = _miscalibrated(500, seed=4)
    calibrator = fit_calibrator(p, y, method="isotonic")
    assert calibrator.method == "isotonic" and calibrator.selection == "forced"
    restored: Calibrator = pickle.loads(pickle.dumps(calibrator))
    out = restored.predict([0.0, 0.5, 1.0])
    assert np.all(out >= 1e-6) and np.all(out <= 1 - 1e-6)
    np.testing.assert_allclose(out, calibrator.predict([0.0, 0.5, 1.0]))
    json.dumps(restored.to_dict())


def test_calibration_keeps_identity_when_the_scores_are_already_calibrated() -> None:
    """No calibrator is fitted unless it gains beyond noise: calibrated scores stay as they
    are (before: isotonic or sigmoid was always chosen, and made them worse)."""
    rng = np.random.default_rng(21)
    p = rng.beta(1, 9, 2000)
    y = (rng.random(2000) < p).astype(int)
    calibrator = fit_calibrator(p, y)
    assert calibrator.method == "identity", calibrator.selection
    assert "no calibrator gains beyond noise" in calibrator.selection
    np.testing.assert_allclose(calibrator.predict(p), np.clip(p, 1e-6, 1 - 1e-6))
    assert {"isotonic", "sigmoid"} == set(calibrator.evidence)


def test_calibration_compares_forward_in_time_with_blocks() -> None:
    p_fit, y_fit = _miscalibrated(2400, seed=8)
    blocks = np.repeat(np.arange(4), 600)
    calibrator = fit_calibrator(p_fit, y_fit, blocks=blocks)
    assert calibrator.scheme == "forward in time over 4 blocks"
    assert calibrator.method == "sigmoid"
    with pytest.raises(ValueError, match="blocks has 3 values"):
        fit_calibrator(p_fit, y_fit, blocks=[0, 1, 2])


def test_calibration_slope_intercept_and_tiers_predicted_vs_observed() -> None:
    from training.evaluate import calibration_slope_intercept, classification_metrics

    p, y = _miscalibrated(4000, seed=9)  # true logit = logit(p) / 3: slope 1/3
    cox = calibration_slope_intercept(y, p)
    assert cox["slope"] == pytest.approx(1 / 3, abs=0.05)
    metrics = classification_metrics(y, p, {"A": 0.5, "B": 0.2, "C": 0.05})
    assert metrics["calibration_slope"] == pytest.approx(cox["slope"])
    tiers = {t["tier"]: t for t in metrics["tier_calibration"]}
    assert set(tiers) == {"A", "B", "C", "D"}
    top = tiers["A"]
    assert top["predicted"] > top["observed"]  # too extreme at the top
    assert top["gap"] == pytest.approx(top["predicted"] - top["observed"])


def test_paired_bootstrap_interval_of_a_difference() -> None:
    from training.evaluate import paired_bootstrap

    rng = np.random.default_rng(3)
    truth = rng.beta(1, 5, 3000)
    y = (rng.random(3000) < truth).astype(int)
    noisy = np.clip(truth + rng.normal(0, 0.1, 3000), 0.001, 0.999)
    better = paired_bootstrap(y, truth, noisy, n_boot=300)
    assert better["high"] < 0 < -better["low"]  # truth has the lower log loss, beyond noise
    same = paired_bootstrap(y, truth, truth, n_boot=50)
    assert same["difference"] == 0 and same["low"] == same["high"] == 0
    auc = paired_bootstrap(y, truth, noisy, metric="roc_auc", n_boot=200)
    assert auc["low"] > 0


def test_calibrator_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2 rows of each class"):
        fit_calibrator([0.2, 0.4, 0.6], [0, 0, 0])
    with pytest.raises(ValueError, match="not one of"):
        fit_calibrator([0.2, 0.4, 0.6, 0.8], [0, 1, 0, 1], method="beta")


def test_plots_write_png_files(tmp_path) -> None:
    p, y = _miscalibrated(300, seed=5)
    predictions = {"raw": p, "flat": np.full(300, y.mean())}
    for path in (
        calibration_plot(y, predictions, tmp_path / "cal.png"),
        gains_plot(y, predictions, tmp_path / "gains.png"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rng = np.random.default_rng(0)
    X = pd.DataFrame({
        "visits": rng.poisson(3, 300).astype(float),
        "source": pd.Categorical(rng.choice(["ads", "seo", "referral"], 300)),
    })
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "n_jobs": 1, "min_data_in_leaf": 5},
        lgb.Dataset(X, label=y), 20,
    )
    contrib = booster.predict(X, pred_contrib=True)
    path = shap_summary_plot(contrib, list(X.columns), X, tmp_path / "shap.png")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="expected"):
        shap_summary_plot(contrib[:, :1], list(X.columns), X, tmp_path / "bad.png")
