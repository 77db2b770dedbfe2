"""Training end to end: registry, promotion, report schema, model packaging, CLI.

Training runs on a small synthetic stand-in of the training set (time-ordered leads, numeric
and categorical features, a rule score) with real LightGBM, Optuna and MLflow. The pure pieces
(time split, gate decision, feature preparation, reasons) are in
``tests/unit/test_split_gate_reasons.py``.
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
from tests.synthetic import synthetic_training_set
from training.calibration import fit_calibrator
from training.model import (
    LeadConversionModel,
    categorical_levels,
    prepare_features,
)
from training.registry import CHALLENGER, CHAMPION, alias_version, setup_tracking
from training.split import time_split
from training.train import load_training_inputs, publish_model, train_model


# ---- end to end: train, register, gate, report ---------------------------------------------
def windows_rows(report: dict, name: str) -> int:
    return int(report["data_windows"][name]["rows"])


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
    # the decision, the difference and its interval are on the registry version
    tags = client.get_model_version(settings.model_name, worse.version).tags
    assert tags["promotion_decision"] == "keep champion"
    assert tags["promotion_reason"] == worse.reason
    assert tags["champion_before"] == champion_before
    low, high = (float(v) for v in tags["log_loss_difference_ci95"].split(" .. "))
    assert 0 < low <= float(tags["log_loss_difference"]) <= high  # worse beyond noise
    assert worse.decision.interval == pytest.approx((low, high), rel=1e-5)


def test_report_schema_and_side_by_side_metrics(trained: dict) -> None:
    settings, summary = trained["settings"], trained["summary"]
    report = json.loads(Path(summary["report_path"]).read_text())
    for key in ("model_name", "model_version", "run_id", "promoted", "promotion",
                "feature_service_version", "data_windows", "tuning", "calibration",
                "ece_before_calibration", "ece_after_calibration", "cutoffs", "test_metrics",
                "metrics_side_by_side", "outputs"):
        assert key in report, key
    assert set(report["test_metrics"]) == {
        "shipped", "shipped_uncalibrated", "tuned_lightgbm", "default_lightgbm",
        "logistic_regression", "blend", "rule_score"}
    for metrics in report["test_metrics"].values():
        assert {"roc_auc", "pr_auc", "log_loss", "brier", "ece", "gains", "tiers",
                "calibration_slope", "calibration_intercept", "tier_calibration"} <= set(metrics)
    # the choice: made on out-of-time rows of the training period, every candidate side by side
    choice = report["model_choice"]
    assert choice["chosen"] == report["chosen_model"] == summary["chosen_model"]
    assert set(choice["candidates"]) == {"tuned_lightgbm", "default_lightgbm",
                                         "logistic_regression", "blend"}
    assert choice["rows"] > windows_rows(report, "valid")  # a longer window than validation
    assert report["calibration"]["method"] in {"identity", "isotonic", "sigmoid"}
    assert "gain_over_identity" in report["calibration"]
    for name in ("shipped", "shipped_uncalibrated"):
        check = report["calibration_check"][name]
        assert {"ece", "calibration_slope", "calibration_intercept"} <= set(check)
        assert [t["tier"] for t in check["tier_calibration"]] == ["A", "B", "C", "D"]
    assert report["cutoffs"] == {"A": 0.35, "B": 0.15, "C": 0.05}
    windows = report["data_windows"]
    assert windows["train"]["end"] < windows["valid"]["start"] < windows["test"]["start"]
    assert report["promotion"]["rule"].startswith("paired bootstrap")
    # the embargo: validation labels close one conversion window before the test period
    embargo = report["embargo"]
    assert embargo["gap_days"] == settings.conversion_window_days
    assert embargo["valid_to_test_days"] >= settings.conversion_window_days
    assert embargo["rows_dropped"]["before_test"] > 0
    # the model beats the practitioners' score on this data
    side = report["metrics_side_by_side"]
    assert side["shipped"]["roc_auc"] > side["rule_score"]["roc_auc"]
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


def test_drift_reference_is_the_champions_and_only_a_champion_writes_it(trained: dict) -> None:
    """A challenger that loses never becomes the drift baseline; a stale one is refused."""
    from monitoring.drift import DriftInputError, load_reference

    settings = trained["settings"]
    champion = trained["summary"]["model_version"]
    meta_path = settings.reports_dir / "reference.json"
    assert json.loads(meta_path.read_text())["model_version"] == champion
    before = meta_path.read_bytes()
    challenger = train_model(settings, trials=1, max_rounds=30, promote=False)
    assert not challenger["promoted"] and challenger["model_version"] != champion
    assert meta_path.read_bytes() == before  # untouched by the challenger
    _, info = load_reference(settings)
    assert info.model_version == champion
    stale = json.loads(before) | {"model_version": challenger["model_version"]}
    meta_path.write_text(json.dumps(stale))
    with pytest.raises(DriftInputError, match=f"the champion is version {champion}"):
        load_reference(settings)
    meta_path.write_bytes(before)


def test_each_window_has_its_own_study_warm_started_with_the_champion(trained: dict) -> None:
    """A retrain on another window tunes in a new study whose first trial is the champion's."""
    import optuna

    from training.registry import champion_params
    from training.tune import search_space

    settings, summary = trained["settings"], trained["summary"]
    path = settings.data_dir / "training_set.parquet"
    original = path.read_bytes()
    client = MlflowClient(settings.tracking_uri)
    champion_version, logged = champion_params(client, settings.model_name)
    assert champion_version == summary["model_version"]
    try:  # the next window: the newest 150 leads are not labelled yet
        trained["frame"].iloc[:-150].to_parquet(path, index=False)
        later = train_model(settings, trials=2, max_rounds=50, promote=False)
    finally:
        path.write_bytes(original)
    assert later["study_name"] != summary["study_name"]
    assert later["warm_start"]["enqueued"], later["warm_start"]
    assert later["warm_start"]["champion_version"] == champion_version
    study = optuna.load_study(study_name=later["study_name"], storage=settings.optuna_storage)
    first = min(study.trials, key=lambda t: t.number)
    space = search_space()
    assert set(first.params) == set(space)
    for name, value in first.params.items():
        assert value == pytest.approx(float(logged[name])), name
    assert first.user_attrs.get("warm_start") is True
    # the first window's study holds only its own trials
    earlier = optuna.load_study(study_name=summary["study_name"],
                                storage=settings.optuna_storage)
    assert all(t.user_attrs.get("warm_start") is not True for t in earlier.trials)


def test_old_champion_is_replaced_by_an_equal_challenger_within_the_margin(
        tmp_path: Path) -> None:
    """The same model published again: kept while the champion is young, replaced once the
    champion is older than ``champion_max_age_days`` (its interval is then within the margin)."""
    settings = Settings().with_workdir(tmp_path)
    settings.ensure_dirs()
    frame = synthetic_training_set(1500)
    frame.to_parquet(settings.data_dir / "training_set.parquet", index=False)
    first = _publish_weak(settings, frame)
    assert first.promoted
    young = _publish_weak(settings, frame)
    assert not young.promoted and "not better beyond noise" in young.reason
    assert young.decision.log_loss_difference == 0.0
    old = _publish_weak(settings.with_(champion_max_age_days=0), frame)
    assert old.promoted and "days old" in old.reason and "within 1.0%" in old.reason
    client = MlflowClient(settings.tracking_uri)
    assert str(alias_version(client, settings.model_name, CHAMPION).version) == old.version
    tags = client.get_model_version(settings.model_name, old.version).tags
    assert tags["promotion_decision"] == "promote"
    assert tags["champion_before"] == young.decision.champion_version == first.version
    assert float(tags["champion_age_days"]) >= 0


def test_too_short_a_history_for_the_embargo_is_refused_before_any_run(tmp_path: Path) -> None:
    """40 days of leads and a 30-day conversion window: the validation slice cannot hold 50
    leads whose labels close before the test period; nothing reaches MLflow."""
    from training.split import InsufficientDataError

    settings = Settings().with_workdir(tmp_path)
    settings.ensure_dirs()
    frame = synthetic_training_set(1000)
    start = frame["created_at"].min()
    frame["created_at"] = start + (frame["created_at"] - start) * (40 / 150)
    frame.to_parquet(settings.data_dir / "training_set.parquet", index=False)
    refused = r"leaves the (train|validation) slice .*embargo \(30 days before test"
    with pytest.raises(InsufficientDataError, match=refused):
        train_model(settings, trials=1, max_rounds=20)
    assert not (settings.mlruns_dir / "mlflow.db").exists()
    assert not (settings.reports_dir / "training_report.json").exists()
