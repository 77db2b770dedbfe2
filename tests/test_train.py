"""Code tests of training: time split, promotion gate, report schema, model packaging, CLI.

The end-to-end part trains on a small synthetic stand-in of the training set (time-ordered
leads, numeric and categorical features, a rule score) with real LightGBM, Optuna and MLflow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from leadscore.config import Settings
from training.calibration import fit_calibrator
from training.explain import reason_text, top_reasons
from training.model import (
    FeatureInputError,
    LeadConversionModel,
    categorical_levels,
    prepare_features,
)
from training.registry import CHALLENGER, CHAMPION, alias_version, decide_promotion, setup_tracking
from training.split import time_split
from training.train import load_training_inputs, publish_model, train_model

STEP_EFFECT = {"submitted": 0.0, "verified": 0.6, "followed_account": 1.1, "booked_trial": 2.0}
CHANNEL_EFFECT = {"sem": 0.0, "feed_ads": -0.4, "seo": 0.3, "wechat_private": 0.6}


def synthetic_training_set(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """A stand-in for ``data/training_set.parquet``: time-ordered leads with a label."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    # whole minutes: many leads share a timestamp, so the split must handle ties
    minutes = np.sort(rng.integers(0, 150 * 24 * 60, n))
    channel = rng.choice(list(CHANNEL_EFFECT), n)
    step = rng.choice(list(STEP_EFFECT), n, p=[0.4, 0.3, 0.2, 0.1])
    days = np.where(rng.random(n) < 0.2, 9999.0, rng.exponential(20, n))
    intent = rng.gamma(2.0, 2.0, n)
    prior = rng.poisson(0.5, n)
    fit = rng.normal(20, 10, n)
    interest = rng.normal(20, 15, n)
    step_effect = pd.Series(step).map(STEP_EFFECT).to_numpy()
    logit = (-2.8 + step_effect + pd.Series(channel).map(CHANNEL_EFFECT).to_numpy()
             + 0.25 * intent - 0.03 * np.minimum(days, 90) + 0.3 * prior)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
    return pd.DataFrame({
        "lead_id": [f"lead-{i:06d}" for i in range(n)],
        "person_id": [f"person-{i // 2:06d}" for i in range(n)],
        "created_at": start + pd.to_timedelta(minutes, unit="m"),
        "label": label,
        "channel": channel,
        "funnel_step": step,
        "days_since_last_touch": days,
        "intent_score": intent,
        "prior_leads": prior,
        "fit_score": fit,
        "interest_score": interest,
        "rule_score": fit + interest + 10 * step_effect,
    })


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


# ---- end to end: train, register, gate, report ---------------------------------------------
def _weak_model(settings: Settings, frame: pd.DataFrame) -> LeadConversionModel:
    """A near-useless model on the real features: trained on shuffled labels, 3 rounds."""
    inputs = load_training_inputs(settings)
    split = time_split(frame, "created_at")
    levels = categorical_levels(split.train, inputs.categorical_columns)
    x_train = prepare_features(split.train, inputs.feature_columns, levels)
    shuffled = np.random.default_rng(0).permutation(split.train["label"].to_numpy())
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_leaves": 4, "seed": 1},
                        lgb.Dataset(x_train, shuffled), num_boost_round=3)
    raw_valid = booster.predict(prepare_features(split.valid, inputs.feature_columns, levels))
    calibrator = fit_calibrator(raw_valid, split.valid["label"].to_numpy(), method="sigmoid")
    return LeadConversionModel(booster.model_to_string(), calibrator, inputs.feature_columns,
                               levels)


def _publish_weak(settings: Settings, frame: pd.DataFrame, promote: bool = True):
    model = _weak_model(settings, frame)
    test = time_split(frame, "created_at").test
    setup_tracking(settings)
    with mlflow.start_run(run_name="weak"):
        return publish_model(settings, model, test, test["label"].to_numpy(),
                             model.predict_proba(test), promote=promote,
                             feature_service_version="test")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A workdir where a weak model was champion and a tuned model then replaced it."""
    workdir = tmp_path_factory.mktemp("train")
    settings = Settings().with_workdir(workdir)
    settings.ensure_dirs()
    frame = synthetic_training_set(3000)
    frame.to_parquet(settings.data_dir / "training_set.parquet", index=False)
    weak = _publish_weak(settings, frame)
    summary = train_model(settings, trials=3, max_rounds=200)
    return {"settings": settings, "frame": frame, "weak": weak, "summary": summary}


def test_first_model_becomes_champion_and_better_model_replaces_it(trained: dict) -> None:
    weak, summary = trained["weak"], trained["summary"]
    assert weak.promoted and "first model" in weak.reason
    assert summary["promoted"], summary["promotion_reason"]
    assert summary["champion_before"] == weak.version
    client = MlflowClient(trained["settings"].tracking_uri)
    name = trained["settings"].model_name
    assert str(alias_version(client, name, CHAMPION).version) == summary["model_version"]
    assert str(alias_version(client, name, CHALLENGER).version) == summary["model_version"]


def test_worse_model_does_not_move_the_champion(trained: dict) -> None:
    settings = trained["settings"]
    champion_before = trained["summary"]["model_version"]
    worse = _publish_weak(settings, trained["frame"])
    assert not worse.promoted
    assert "does not beat" in worse.reason
    client = MlflowClient(settings.tracking_uri)
    assert str(alias_version(client, settings.model_name, CHAMPION).version) == champion_before
    assert str(alias_version(client, settings.model_name, CHALLENGER).version) == worse.version
    run = client.search_runs([client.get_experiment_by_name(settings.model_name).experiment_id],
                             filter_string=f"tags.model_version = '{worse.version}'")[0]
    assert run.data.tags["promoted"] == "False"
    assert run.data.tags["promotion_reason"] == worse.reason


def test_report_schema_and_side_by_side_metrics(trained: dict) -> None:
    settings, summary = trained["settings"], trained["summary"]
    report = json.loads(Path(summary["report_path"]).read_text())
    for key in ("model_name", "model_version", "run_id", "promoted", "promotion",
                "feature_service_version", "data_windows", "tuning", "calibration",
                "ece_before_calibration", "ece_after_calibration", "cutoffs", "test_metrics",
                "metrics_side_by_side", "outputs"):
        assert key in report, key
    assert set(report["test_metrics"]) == {"lightgbm", "rule_score", "logistic_regression"}
    for metrics in report["test_metrics"].values():
        assert {"roc_auc", "pr_auc", "log_loss", "brier", "ece", "gains", "tiers"} <= set(metrics)
    assert report["cutoffs"] == {"A": 0.35, "B": 0.15, "C": 0.05}
    windows = report["data_windows"]
    assert windows["train"]["end"] < windows["valid"]["start"] < windows["test"]["start"]
    assert report["promotion"]["rule"].startswith("lower test log loss")
    # the model beats the practitioners' score on this data
    side = report["metrics_side_by_side"]
    assert side["lightgbm"]["roc_auc"] > side["rule_score"]["roc_auc"]
    holdout = pd.read_parquet(settings.reports_dir / "holdout_scored.parquet")
    assert {"lead_id", "person_id", "created_at", "probability", "funnel_step",
            "rule_score"} <= set(holdout.columns)
    assert len(holdout) == windows["test"]["rows"]
    reference = pd.read_parquet(settings.reports_dir / "reference.parquet")
    meta = json.loads((settings.reports_dir / "reference.json").read_text())
    assert set(meta["feature_columns"]) | {"probability", "tier"} == set(reference.columns)
    assert "lead_id" not in reference.columns and "person_id" not in reference.columns
    client = MlflowClient(settings.tracking_uri)
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"], "plots")}
    assert {"plots/calibration.png", "plots/gains.png", "plots/shap_summary.png"} <= artifacts
    children = client.search_runs(
        [client.get_run(summary["run_id"]).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{summary['run_id']}'")
    assert len(children) == 3


def test_champion_loads_in_a_fresh_process_with_reasons(trained: dict) -> None:
    settings = trained["settings"]
    rows = trained["frame"].tail(3)
    rows_path = settings.workdir / "rows.parquet"
    rows.to_parquet(rows_path)
    code = (
        "import json, sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({settings.tracking_uri!r})\n"
        f"m = mlflow.pyfunc.load_model('models:/{settings.model_name}@champion')\n"
        f"rows = pd.read_parquet({str(rows_path)!r})\n"
        "features = rows[m.metadata.get_input_schema().input_names()]\n"
        "p = m.predict(features)['probability'].tolist()\n"
        "r = m.unwrap_python_model().predict_with_reasons(rows, top_k=2)\n"
        "print(json.dumps({'p': p, 'r': r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True, cwd="/")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(result["p"]) == 3 and all(0 < p < 1 for p in result["p"])
    for p, row in zip(result["p"], result["r"], strict=True):
        assert row["probability"] == pytest.approx(p)
        assert len(row["positive_reasons"]) <= 2 and len(row["negative_reasons"]) <= 2
        assert all(isinstance(reason["text"], str) for reason in row["positive_reasons"])


def test_cli_train_rejects_csv_options_without_csv(tmp_path: Path) -> None:
    import typer

    from commands.train import train_command

    app = typer.Typer()
    app.command()(train_command)
    result = CliRunner().invoke(app, ["--workdir", str(tmp_path), "--label", "y"])
    assert result.exit_code == 2
    assert "only apply with --csv" in result.output


def test_bad_training_set_fails_with_the_column_named(tmp_path: Path) -> None:
    settings = Settings().with_workdir(tmp_path)
    settings.ensure_dirs()
    frame = synthetic_training_set(300)
    frame.assign(label=2).to_parquet(settings.data_dir / "training_set.parquet")
    with pytest.raises(ValueError, match="'label' must hold only 0 and 1"):
        load_training_inputs(settings)
    frame.drop(columns=["created_at"]).to_parquet(settings.data_dir / "training_set.parquet")
    with pytest.raises(ValueError, match="lacks a time column"):
        load_training_inputs(settings)
