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
from tests.flat_export import POST_OUTCOME_COLUMN, telemarketing_export
from training.csv_train import (
    CSV_LEARNING_RATE,
    CsvSpeed,
    CsvTrainingError,
    _trial_scorer,
    bootstrap_auc_difference,
    calibration_drift,
    clean_export,
    cross_validate,
    csv_params_from,
    evaluate_split,
    evaluation_agreement,
    read_export,
    time_validate,
    train_csv,
)
from training.leakage import DOMINANT_MARGIN, run_guard

X_EDUCATION = Path(__file__).resolve().parents[3] / "shared/datasets/x-education-leads/Leads.csv"
OLIST = Path(__file__).resolve().parents[3] / "shared/datasets/olist-marketing-leads"
HONEST_DROP = (
    "Lead Quality", "Lead Profile", "Asymmetrique Activity Index",
    "Asymmetrique Profile Index", "Asymmetrique Activity Score", "Asymmetrique Profile Score",
)
AT_SUBMISSION_DROP = (*HONEST_DROP, "Last Activity", "Last Notable Activity")
FAST = {"n_trials": 2, "inner_folds": 2, "speed": CsvSpeed(workers=1)}


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
    out = capsys.readouterr().out
    assert "roc_auc" in out and "logistic_regression" in out


# ---- the real X Education export ---------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not X_EDUCATION.exists(), reason="shared X Education dataset not present")
def test_real_x_education_export_flags_tags_and_scores_well(tmp_path) -> None:
    """Today's protocol: the sales-filled columns dropped, ``Tags`` found by the guard."""
    started = time.perf_counter()
    report = train_csv(
        X_EDUCATION, "Converted", drop=HONEST_DROP, n_trials=1, inner_folds=2,
        log_to_mlflow=False, plots_dir=tmp_path,
    )
    assert "Tags" in report["guard"]["dropped"]
    assert "Tags" not in report["data"]["columns_used"]
    assert {"Prospect ID", "Lead Number"} <= set(report["guard"]["dropped"])
    assert "Last Activity" in report["data"]["columns_used"]
    assert report["model"]["roc_auc"] > 0.88
    assert report["model"]["ece"] < 0.03
    assert time.perf_counter() - started < 120


@pytest.mark.slow
@pytest.mark.skipif(not X_EDUCATION.exists(), reason="shared X Education dataset not present")
def test_real_x_education_at_submission_forward_by_lead_number(tmp_path) -> None:
    """At submission (the last-activity columns dropped too), rows in ``Lead Number`` order:
    forward in row order beside random 5-fold, both reported."""
    path = tmp_path / "by_number.csv"
    pd.read_csv(X_EDUCATION).sort_values("Lead Number").to_csv(path, index=False)
    report = train_csv(
        path, "Converted", id_col="Prospect ID",
        drop=("Lead Number", *AT_SUBMISSION_DROP), order_is_time=True, n_trials=1,
        inner_folds=2, log_to_mlflow=False, plots_dir=tmp_path,
    )
    used = report["data"]["columns_used"]
    assert "Last Activity" not in used and "Last Notable Activity" not in used
    assert report["evaluation"]["mode"] == "order"
    assert report["evaluation"]["evaluated_rows"] == pytest.approx(0.2 * 9240, abs=10)
    forward_auc = report["comparison"]["ours"]["roc_auc"]
    random_auc = report["evaluation"]["random"]["comparison"]["ours"]["roc_auc"]
    assert forward_auc > 0.8 and random_auc > 0.84  # at submission: less signal than today
    assert report["model"]["ece"] < 0.05
    assert "agreement" in report["evaluation"]


@pytest.mark.slow
@pytest.mark.skipif(not OLIST.exists(), reason="shared Olist dataset not present")
def test_real_olist_drifting_base_rate_is_not_recalibrated_to_its_trend(tmp_path) -> None:
    """Olist: the conversion rate rises through the training period and falls in the test
    period; a calibrator fitted on the forward blocks would carry the rise forward."""
    leads = pd.read_csv(OLIST / "olist_marketing_qualified_leads_dataset.csv")
    deals = pd.read_csv(OLIST / "olist_closed_deals_dataset.csv")
    leads["won"] = leads["mql_id"].isin(deals["mql_id"]).astype(int)
    path = tmp_path / "olist_mql.csv"
    leads.to_csv(path, index=False)
    report = train_csv(path, "won", id_col="mql_id", time_col="first_contact_date",
                       n_trials=2, random_check=False, log_to_mlflow=False, plots_dir=tmp_path)
    (drift,) = report["calibration"]["drift"]
    assert drift["drifts"] and drift["observed_rate"][0] < drift["observed_rate"][-1]
    assert report["calibration"]["methods"] == ["identity"]
    assert "drifts between the time blocks" in report["calibration"]["selections"][0]
    assert report["calibration"]["ece_after"] <= 0.02
    assert any("base rate drifts" in w for w in report["warnings"])
    shipped = report["comparison"]["ours"]["log_loss"]
    assert shipped <= min(report["comparison"][b]["log_loss"]
                          for b in ("lightgbm_default", "logistic_regression")) + 0.002


# ---- forward in time beside random k-fold; the guard's second line -------------------------

@pytest.fixture(scope="module")
def drifting_csv(tmp_path_factory) -> Path:
    """A telemarketing export in time order without a date column (month shocks, a call
    duration known only after the call)."""
    path = tmp_path_factory.mktemp("drifting") / "calls.csv"
    telemarketing_export(3000, seed=1).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def order_report(tmp_path_factory) -> dict:
    """``train --csv --order-is-time`` on an export whose months differ strongly."""
    path = tmp_path_factory.mktemp("shocks") / "calls.csv"
    telemarketing_export(3000, seed=1, shock_sd=1.3).to_csv(path, index=False)
    return train_csv(path, "subscribed", order_is_time=True, drop=[POST_OUTCOME_COLUMN],
                     log_to_mlflow=False, keep_predictions=True, **FAST)


def test_guard_flags_a_column_standing_far_above_the_others(drifting_csv) -> None:
    data = clean_export(read_export(drifting_csv), "subscribed")
    guard = run_guard(data.features, data.y, threshold=0.90)
    assert POST_OUTCOME_COLUMN in guard.kept  # below the hard threshold: kept...
    assert list(guard.flagged) == [POST_OUTCOME_COLUMN]  # ...but named, with the question
    assert "known before the outcome" in guard.flagged[POST_OUTCOME_COLUMN]
    aucs = sorted((c["auc"] for c in guard.to_dict()["columns"] if c["auc"]), reverse=True)
    assert aucs[0] - aucs[1] >= DOMINANT_MARGIN
    allowed = run_guard(data.features, data.y, allow=[POST_OUTCOME_COLUMN])
    assert allowed.flagged == {}  # --allow states it is known before the outcome
    without = run_guard(data.features.drop(columns=[POST_OUTCOME_COLUMN]), data.y)
    assert without.flagged == {}  # the macro columns are close to each other: no flag


def test_agreement_compares_both_evaluations_on_the_same_rows() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 1000)
    sharp = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.2, 1000), 0.01, 0.99)
    vague = np.clip(0.5 + (y - 0.5) * 0.1 + rng.normal(0, 0.2, 1000), 0.01, 0.99)
    models = ("ours", "lightgbm_default", "logistic_regression")
    random = {"y": y, "index": np.arange(1000), **dict.fromkeys(models, sharp)}
    rows = np.arange(800, 1000)
    forward = {"y": y[rows], "index": rows, **dict.fromkeys(models, vague[rows])}
    agreement = evaluation_agreement(forward, random, n_boot=300)
    assert agreement["rows"] == 200 and agreement["disagree"]
    assert agreement["auc_random_minus_forward"]["low"] > 0
    assert agreement["statement"].startswith("random cross-validation flatters")
    same = evaluation_agreement({**forward, **dict.fromkeys(models, sharp[rows])}, random,
                                n_boot=300)
    assert not same["disagree"] and "agree within noise" in same["statement"]


@pytest.mark.slow
def test_order_is_time_reports_forward_and_random_and_warns(order_report: dict) -> None:
    evaluation = order_report["evaluation"]
    assert evaluation["mode"] == "order"
    windows = evaluation["time_windows"]
    assert windows["test"]["start"] == "2400" and windows["test"]["rows"] == 600
    assert order_report["data"]["rows"] == 3000 and evaluation["evaluated_rows"] == 600
    random = evaluation["random"]
    assert random["evaluated_rows"] == 3000 and len(random["folds"]) == 5
    agreement = evaluation["agreement"]
    diff = agreement["auc_random_minus_forward"]
    by_model = agreement["auc_by_model_on_forward_test_rows"]
    # The same rows, scored forward and by random folds: the month shocks flatter random folds.
    assert by_model["ours"]["forward"] == pytest.approx(order_report["comparison"]["ours"][
        "roc_auc"])
    assert diff["difference"] == pytest.approx(
        by_model["ours"]["random"] - by_model["ours"]["forward"])
    assert diff["low"] > 0 and agreement["disagree"]
    assert any("random cross-validation flatters" in w for w in order_report["warnings"])
    predictions = order_report["_predictions"]
    assert predictions["index"].min() == 2400  # the newest rows only


def test_time_column_with_random_check_off_runs_forward_only(tmp_path) -> None:
    frame = telemarketing_export(1500, seed=2, with_date=True)
    path = tmp_path / "dated.csv"
    frame.to_csv(path, index=False)
    report = train_csv(path, "subscribed", time_col="contact_date", random_check=False,
                       drop=[POST_OUTCOME_COLUMN], log_to_mlflow=False, **FAST)
    assert report["evaluation"]["mode"] == "time"
    assert "random" not in report["evaluation"] and "agreement" not in report["evaluation"]
    assert report["source"]["time_column"] == "contact_date"
    assert report["guard"]["flagged"] == {}


def test_calibration_drift_test_separates_a_drifting_rate_from_a_stable_one() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.3, 6000)
    blocks = np.repeat([0, 1, 2], 2000)
    stable = (rng.random(6000) < p).astype(int)
    assert not calibration_drift(p, stable, blocks)["drifts"]
    shifted = np.clip(p * np.repeat([0.3, 1.0, 2.0], 2000), 0, 1)
    drifting = (rng.random(6000) < shifted).astype(int)
    check = calibration_drift(p, drifting, blocks)
    assert check["drifts"] and check["p_value"] < 1e-6
    assert check["offset_logits"][0] < 0 < check["offset_logits"][2]


def test_bootstrap_auc_difference_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 800)
    a, b = (y * 0.4 + rng.random(800)) / 1.4, np.round((y * 0.2 + rng.random(800)) / 1.2, 1)
    diff = bootstrap_auc_difference(y, a, b, n_boot=200)
    assert diff["difference"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    assert diff["low"] < diff["difference"] < diff["high"]


# ---- bad input, found before any work -------------------------------------------------------

def test_future_dates_in_the_time_column_are_refused(tmp_path) -> None:
    frame = synthetic_export(100)
    frame.loc[5, "Created"] = "2091-03-01 10:00:00"
    path = tmp_path / "future.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(CsvTrainingError, match=r"time column 'Created' has 1 date\(s\) in the "
                                               r"future.*2091-03-01"):
        train_csv(path, "Converted", time_col="Created", log_to_mlflow=False)


def test_time_and_order_is_time_exclude_each_other(export_csv) -> None:
    with pytest.raises(CsvTrainingError, match="--time and --order-is-time exclude"):
        train_csv(export_csv, "Converted", time_col="Created", order_is_time=True,
                  log_to_mlflow=False)


def test_one_label_value_in_the_oldest_forward_block_is_refused(tmp_path) -> None:
    frame = synthetic_export(400)
    frame.loc[:100, "Converted"] = 0  # the oldest rows never converted
    path = tmp_path / "late_start.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(CsvTrainingError, match=r"label column: the oldest forward block 1 .*"
                                               r"holds only label 0"):
        train_csv(path, "Converted", order_is_time=True, log_to_mlflow=False)


def test_empty_label_and_empty_columns(tmp_path) -> None:
    frame = synthetic_export(200).assign(Converted=np.nan)
    path = tmp_path / "no_label.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(CsvTrainingError, match="label column 'Converted' is empty on every row"):
        train_csv(path, "Converted", log_to_mlflow=False)
    frame = synthetic_export(200).assign(Notes=np.nan)
    data = clean_export(frame, "Converted", drop=["Created"])
    assert data.dropped["Notes"] == "empty: no values"


def test_unreachable_study_storage_is_refused_naming_it(export_csv) -> None:
    url = "postgresql+psycopg://u:s3cret@127.0.0.1:1/optuna"
    with pytest.raises(CsvTrainingError, match=r"--storage postgresql\+psycopg://u:\*\*\*@"
                                               r"127\.0\.0\.1:1/optuna cannot be used") as info:
        train_csv(export_csv, "Converted", storage=url, log_to_mlflow=False)
    assert "s3cret" not in str(info.value)
