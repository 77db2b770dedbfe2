"""``train --csv``: cleaning, leakage guard, honest evaluation, report, errors, real data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from commands.train import train_csv_command
from leadscore.config import Settings, get_settings
from training.csv_train import (
    CSV_LEARNING_RATE,
    CsvTrainingError,
    _trial_scorer,
    clean_export,
    cross_validate,
    csv_params_from,
    evaluate_split,
    read_export,
    time_validate,
    train_csv,
)
from training.leakage import run_guard

X_EDUCATION = Path(__file__).resolve().parents[3] / "shared/datasets/x-education-leads/Leads.csv"
HONEST_DROP = (
    "Lead Quality", "Lead Profile", "Asymmetrique Activity Index",
    "Asymmetrique Profile Index", "Asymmetrique Activity Score", "Asymmetrique Profile Score",
)
FAST = {"n_trials": 2, "inner_folds": 2}


def synthetic_export(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A small CRM export with signal, a planted leak, identifiers and form placeholders."""
    rng = np.random.default_rng(seed)
    source = rng.choice(["Google", "Reference", "Direct", "Chat"], n, p=[0.4, 0.1, 0.3, 0.2])
    visits = rng.poisson(3, n).astype(float)
    seconds = rng.gamma(2.0, 300.0, n).round()
    working = rng.choice(["Yes", "No"], n)
    logit = -1.0 + 1.5 * (source == "Reference") + 0.002 * seconds + 0.8 * (working == "Yes")
    converted = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    # The planted leak: a sales status that agrees with the outcome 97% of the time.
    agrees = rng.uniform(size=n) < 0.97
    status = np.where(converted == agrees.astype(int), "Will revert", "Ringing")
    city = rng.choice(["Mumbai", "Select", "Pune", ""], n)
    created = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(
        np.sort(rng.uniform(0, 365, n)), unit="D"
    )
    return pd.DataFrame({
        "Prospect Ref": [f"p-{i:05d}-{rng.integers(1e6)}" for i in range(n)],
        "Lead Number": rng.permutation(np.arange(600000, 600000 + n)),
        "Lead Source": source,
        "TotalVisits": visits,
        "Total Time": seconds,
        "Working": working,
        "City": city,
        "Sales Status": status,
        "Created": created.strftime("%Y-%m-%d %H:%M:%S"),
        "Magazine": "No",
        "Converted": converted,
    })


@pytest.fixture(scope="module")
def export_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "crm_export.csv"
    synthetic_export().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def cv_settings(tmp_path_factory) -> Settings:
    return Settings().with_workdir(tmp_path_factory.mktemp("workdir"))


@pytest.fixture(scope="module")
def cv_report(export_csv: Path, cv_settings: Settings) -> dict:
    return train_csv(
        export_csv, "Converted", time_col=None, drop=["Created"], settings=cv_settings,
        plots_dir=cv_settings.workdir / "plots", keep_predictions=True, **FAST,
    )


# ---- cleaning --------------------------------------------------------------------------------

def test_cleaning_turns_placeholders_into_missing_and_yes_no_into_numbers(export_csv) -> None:
    data = clean_export(read_export(export_csv), "Converted", drop=["Created"])
    assert data.features["City"].isna().sum() > 0
    assert set(data.features["City"].cat.categories) == {"Mumbai", "Pune"}
    assert data.features["Working"].dtype == float
    assert set(data.features["Working"].unique()) == {0.0, 1.0}
    assert isinstance(data.features["Lead Source"].dtype, pd.CategoricalDtype)
    assert data.dropped["Magazine"].startswith("constant")
    assert data.dropped["Created"] == "dropped by --drop"


def test_rows_without_label_are_left_out_and_counted(tmp_path) -> None:
    frame = synthetic_export()
    frame.loc[:9, "Converted"] = np.nan
    path = tmp_path / "gaps.csv"
    frame.to_csv(path, index=False)
    data = clean_export(read_export(path), "Converted")
    assert data.rows_without_label == 10 and len(data.y) == len(frame) - 10


def test_semicolon_export_is_read(tmp_path) -> None:
    path = tmp_path / "semi.csv"
    synthetic_export(60).to_csv(path, index=False, sep=";")
    assert "Lead Source" in read_export(path).columns


# ---- leakage guard ---------------------------------------------------------------------------

def test_guard_flags_planted_leak_and_identifiers(export_csv) -> None:
    data = clean_export(read_export(export_csv), "Converted", drop=["Created"])
    guard = run_guard(data.features, data.y, threshold=0.90)
    assert "possible leak" in guard.dropped["Sales Status"]
    assert "identifier" in guard.dropped["Prospect Ref"]
    assert "identifier" in guard.dropped["Lead Number"]
    aucs = {c["column"]: c["auc"] for c in guard.to_dict()["columns"]}
    assert aucs["Sales Status"] > 0.95
    assert 0.5 < aucs["Total Time"] < 0.9
    assert "Lead Source" in guard.kept and "Total Time" in guard.kept


def test_allow_keeps_a_flagged_column(export_csv) -> None:
    data = clean_export(read_export(export_csv), "Converted", drop=["Created"])
    guard = run_guard(data.features, data.y, allow=["Sales Status", "Lead Number"])
    assert "Sales Status" in guard.kept and "Lead Number" in guard.kept
    assert "Prospect Ref" in guard.dropped


# ---- honest evaluation -----------------------------------------------------------------------

def test_cross_validation_never_tunes_or_calibrates_on_its_test_fold(export_csv) -> None:
    data = clean_export(read_export(export_csv), "Converted", drop=["Created"])
    X = data.features[["Lead Source", "TotalVisits", "Total Time", "Working", "City"]]
    categorical = ["Lead Source", "City"]
    results = cross_validate(X, data.y, categorical, n_trials=1, timeout=None, seed=7,
                             inner_folds=2)
    all_test = np.concatenate([r.test_idx for r in results])
    assert np.array_equal(np.sort(all_test), np.arange(len(data.y)))  # each row tested once
    for result in results:
        assert np.intersect1d(result.calibration_idx, result.test_idx).size == 0
        assert np.intersect1d(result.tuning_idx, result.test_idx).size == 0
        assert result.calibrator.n_rows == result.calibration_idx.size
        # The calibration set is the whole training part (inner out-of-fold predictions).
        assert result.calibration_idx.size + result.test_idx.size == len(data.y)
    with pytest.raises(ValueError, match="overlap"):
        evaluate_split(X, data.y, np.arange(0, 300), np.arange(250, 400), fold=1,
                       categorical=categorical, n_trials=1, timeout=None, seed=7)


def test_csv_search_fixes_the_learning_rate_and_scores_without_a_trial(export_csv) -> None:
    sampled = {"num_leaves": 8, "min_child_samples": 20, "feature_fraction": 0.5,
               "bagging_fraction": 0.8, "lambda_l1": 1e-3, "lambda_l2": 1e-3,
               "min_data_per_group": 20, "cat_l2": 5.0, "cat_smooth": 5.0,
               "max_cat_threshold": 8}
    params = {**csv_params_from(sampled), "n_jobs": 1, "seed": 3}
    assert params["learning_rate"] == CSV_LEARNING_RATE  # not part of the search
    data = clean_export(read_export(export_csv), "Converted", drop=["Created"])
    X = data.features[["Lead Source", "TotalVisits", "Total Time", "Working"]]
    rows = np.arange(len(data.y))
    folds = [(rows[rows % 2 == 0], rows[rows % 2 == 1]), (rows[rows % 2 == 1], rows[rows % 2 == 0])]
    loss, auc, rounds = _trial_scorer(X, data.y, ["Lead Source"], folds=folds)(params)
    assert 0 < loss < 0.7 and 0.5 < auc <= 1 and rounds >= 1


def test_time_mode_tests_on_the_newest_rows(export_csv) -> None:
    data = clean_export(read_export(export_csv), "Converted", time_col="Created")
    X = data.features[["Lead Source", "TotalVisits", "Total Time"]]
    (result,), windows = time_validate(X, data.y, data.times, ["Lead Source"], n_trials=2,
                                       timeout=None, seed=1)
    times = data.times.to_numpy()
    assert times[result.test_idx].min() > times[result.tuning_idx].max()
    assert times[result.calibration_idx].min() > np.delete(
        times, np.concatenate([result.calibration_idx, result.test_idx])).max()
    assert np.intersect1d(result.calibration_idx, result.test_idx).size == 0
    assert windows["test"]["rows"] == result.test_idx.size


def test_report_schema_and_metrics(cv_report: dict) -> None:
    report = cv_report
    assert {"source", "data", "guard", "evaluation", "model", "baselines", "comparison",
            "calibration", "plots", "mlflow", "seconds"} <= report.keys()
    assert set(report["comparison"]) == {
        "ours", "ours_uncalibrated", "lightgbm_default", "logistic_regression"}
    assert set(report["baselines"]) == {"lightgbm_default", "logistic_regression"}
    assert {"roc_auc", "pr_auc", "log_loss", "brier", "ece", "gains", "tiers"} <= set(
        report["model"])
    assert report["data"]["rows"] == 400
    assert "Sales Status" in report["guard"]["dropped"]
    assert "Sales Status" not in report["data"]["columns_used"]
    assert len(report["evaluation"]["folds"]) == 5
    assert {"ece_before", "ece_after"} <= report["calibration"].keys()
    # Signal is real and learnt without the leak (the leak alone would give AUC ~0.97).
    assert 0.6 < report["model"]["roc_auc"] < 0.9
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    text = json.dumps(public)
    assert "p-00001" not in text and "600001" not in text  # no raw identifiers
    predictions = report["_predictions"]
    assert predictions["y"].size == 400 and np.isfinite(predictions["ours"]).all()


def test_run_is_logged_to_mlflow_with_report_and_plots(
    cv_report: dict, cv_settings: Settings
) -> None:
    run_info = cv_report["mlflow"]
    assert run_info["experiment"] == "csv-crm_export"
    client = MlflowClient(tracking_uri=cv_settings.tracking_uri)
    run = client.get_run(run_info["run_id"])
    assert run.data.metrics["ours.roc_auc"] == pytest.approx(cv_report["comparison"]["ours"][
        "roc_auc"])
    artifacts = {a.path for a in client.list_artifacts(run_info["run_id"])}
    assert "report.json" in artifacts
    plots = {a.path for a in client.list_artifacts(run_info["run_id"], "plots")}
    assert {"plots/calibration.png", "plots/gains.png"} <= plots


# ---- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label": "Outcome"}, r"--label names column\(s\) not in the CSV: 'Outcome'"),
        ({"id_col": "Prospect"}, r"--id names column\(s\) not in the CSV: 'Prospect'"),
        ({"time_col": "When"}, r"--time names column\(s\) not in the CSV: 'When'"),
        ({"drop": ["Lead Quality"]}, r"--drop names column\(s\) not in the CSV: 'Lead Quality'"),
        ({"allow": ["Tagz"]}, r"--allow names column\(s\) not in the CSV: 'Tagz'"),
        ({"label": "Lead Source"}, r"label column 'Lead Source' is not binary.*'Chat'"),
        ({"time_col": "City"}, r"time column 'City'"),
        ({"n_trials": 0}, r"--trials must be at least 1"),
    ],
)
def test_bad_options_get_clear_errors(export_csv, kwargs, message) -> None:
    arguments = {"label": "Converted", "log_to_mlflow": False, **kwargs}
    with pytest.raises(CsvTrainingError, match=message):
        train_csv(export_csv, **arguments)


def test_unparseable_time_column_names_examples(tmp_path) -> None:
    frame = synthetic_export(100)
    frame.loc[3, "Created"] = "last tuesday"
    path = tmp_path / "times.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(CsvTrainingError, match=r"time column 'Created' has 1 value.*last tuesday"):
        train_csv(path, "Converted", time_col="Created", log_to_mlflow=False)


def test_missing_and_empty_files_get_clear_errors(tmp_path) -> None:
    with pytest.raises(CsvTrainingError, match="does not exist"):
        train_csv(tmp_path / "nope.csv", "Converted", log_to_mlflow=False)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(CsvTrainingError, match="is empty"):
        train_csv(empty, "Converted", log_to_mlflow=False)
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b,Converted\n")
    with pytest.raises(CsvTrainingError, match="no data rows"):
        train_csv(header_only, "Converted", log_to_mlflow=False)


def test_single_class_label_is_refused(tmp_path) -> None:
    frame = synthetic_export(100).assign(Converted=0)
    path = tmp_path / "one_class.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(CsvTrainingError, match="1 positive|0 positive"):
        train_csv(path, "Converted", log_to_mlflow=False)


def test_command_prints_error_and_returns_exit_code(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("LEADSCORE_WORKDIR", str(tmp_path))  # restored after the test
    try:
        code = train_csv_command(
            csv_path=tmp_path / "missing.csv", label="Converted", report=tmp_path / "r.json",
            workdir=tmp_path,
        )
    finally:
        get_settings.cache_clear()
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "missing.csv does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


def test_command_writes_the_report(tmp_path, capsys, monkeypatch, cv_settings) -> None:
    monkeypatch.setenv("LEADSCORE_WORKDIR", str(cv_settings.workdir))  # MLflow DB already made
    small_csv = tmp_path / "small.csv"
    synthetic_export(160, seed=3).to_csv(small_csv, index=False)
    report = tmp_path / "out" / "report.json"
    try:
        code = train_csv_command(
            csv_path=small_csv, label="Converted", report=report, drop=["Created,City"],
            trials=1, workdir=cv_settings.workdir,
        )
    finally:
        get_settings.cache_clear()
    assert code == 0
    written = json.loads(report.read_text())
    assert "City" in written["data"]["columns_dropped"]
    assert (tmp_path / "out" / "report_plots" / "calibration.png").exists()
    assert "roc_auc=" in capsys.readouterr().out


# ---- the real X Education export ---------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not X_EDUCATION.exists(), reason="shared X Education dataset not present")
def test_real_x_education_export_flags_tags_and_scores_well(tmp_path) -> None:
    started = time.perf_counter()
    report = train_csv(
        X_EDUCATION, "Converted", drop=HONEST_DROP, n_trials=1, inner_folds=2,
        log_to_mlflow=False, plots_dir=tmp_path,
    )
    assert "Tags" in report["guard"]["dropped"]
    assert "Tags" not in report["data"]["columns_used"]
    assert {"Prospect ID", "Lead Number"} <= set(report["guard"]["dropped"])
    assert report["model"]["roc_auc"] > 0.88
    assert report["model"]["ece"] < 0.03
    assert time.perf_counter() - started < 120
