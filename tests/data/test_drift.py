"""Weekly drift + business reports on generated-like predictions.

The data follow the generator's mechanism (``crm_data.generate_mechanism``): quiet weeks draw
channels and behaviour like the reference; drifted weeks use its ``--drift`` channel mix and
behaviour (fewer pricing visits, many more app opens). Probabilities are the true conversion
probabilities, so the matured cohort's AUC/ECE are known in advance.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from commands.drift import drift
from crm_data import generate_mechanism as gm
from crm_data.prediction_log import PredictionRecord, SqlitePredictionLog
from leadscore.config import Settings, get_settings
from leadscore.schemas import CHANNELS, DEVICES, EVENT_TYPES, FUNNEL_STEPS, GRADES
from monitoring.business import lead_velocity_rate, load_channel_costs, two_proportion_p_value
from monitoring.drift import (
    DriftInputError,
    drift_report,
    load_reference,
)
from pipelines.weekly_report import custom_period, iso_week, last_week, resolve_period
from routing.policy import load_policy, save_policy
from training.drift_reference import ReferenceFileError, write_reference

# This file's own additive outcome model (independent of the generator's tuned effects).
BASE_LOGIT = -5.5
INTENT_WEIGHT = 0.55
BEHAVIOUR_WEIGHT = 0.35
FUNNEL_EFFECT = np.array([0.0, 0.3, 0.6, 1.2])
CATEGORICAL = ["channel", "funnel_step", "grade", "device"]
COUNT_FEATURES = {
    "pricing_page": "pricing_page_30d", "app_open": "app_open_30d",
    "course_page": "course_page_30d", "recruitment_page": "recruitment_page_30d",
}
NUMERIC = ["city_tier", "phone_valid", "events_30d", *COUNT_FEATURES.values(), "intent_score",
           "days_since_last_touch", "prior_leads"]
FEATURES = CATEGORICAL + NUMERIC
TIER_CUTOFFS = (0.25, 0.12, 0.05)
FOLLOWUP = {"A": "top_sales", "B": "sales", "C": "tmk", "D": "ai_bot"}
COSTS = {"top_sales": 120.0, "sales": 60.0, "tmk": 15.0, "ai_bot": 1.0}
QUIET_WEEKS = ["2026-W36", "2026-W37", "2026-W38", "2026-W39", "2026-W40"]
DRIFT_WEEKS = ["2026-W41", "2026-W42"]
WEEK_ROWS = 1500


def generated_leads(n: int, rng: np.random.Generator, drift: bool = False) -> pd.DataFrame:
    """Features, probability and tier of ``n`` leads drawn like ``leadscore generate``."""
    mix = gm.CHANNEL_MIX_DRIFT if drift else gm.CHANNEL_MIX
    channel = rng.choice(len(CHANNELS), n, p=mix / mix.sum())
    intent = rng.normal(0.0, 1.0, n)
    funnel = gm.funnel_index(gm.FUNNEL_INTENT_WEIGHT * intent
                             + gm.by_channel(gm.CHANNEL_FUNNEL_EFFECT)[channel]
                             + rng.normal(0.0, gm.FUNNEL_NOISE_SD, n))
    mixes = np.where((intent > 0.5)[:, None], gm.EVENT_MIX_HIGH,
                     np.where((intent < -1)[:, None], gm.EVENT_MIX_LOW, gm.EVENT_MIX_BROWSE))
    if drift:
        mixes = np.apply_along_axis(gm.drifted_mix, 1, mixes)
    counts = rng.poisson(gm.PRE_EVENTS_MEAN * np.exp(0.3 * intent)[:, None] * mixes)
    frame = pd.DataFrame({
        "channel": np.array(CHANNELS)[channel],
        "funnel_step": np.array(FUNNEL_STEPS)[funnel],
        "grade": rng.choice(GRADES, n, p=gm.GRADE_P),
        "device": rng.choice(DEVICES, n, p=gm.DEVICE_P),
        "city_tier": rng.choice([1, 2, 3, 4], n, p=gm.CITY_TIER_P),
        "phone_valid": (rng.random(n) > 0.05).astype(int),
        "events_30d": counts.sum(axis=1),
    })
    for event_type, name in COUNT_FEATURES.items():
        frame[name] = counts[:, EVENT_TYPES.index(event_type)]
    frame["intent_score"] = counts @ gm.type_weight()
    frame["days_since_last_touch"] = np.where(
        counts.sum(axis=1) > 0, rng.exponential(gm.PRE_ACTIVE_MEAN_DAYS, n), 9999.0)
    frame["prior_leads"] = rng.poisson(0.4, n)
    logit = (BASE_LOGIT + 1.2 + INTENT_WEIGHT * intent
             + BEHAVIOUR_WEIGHT * np.log1p(frame["intent_score"].to_numpy())
             + gm.by_channel(gm.CHANNEL_EFFECT)[channel] + FUNNEL_EFFECT[funnel])
    frame["probability"] = gm.sigmoid(logit)
    p = frame["probability"].to_numpy()
    frame["tier"] = np.select([p >= TIER_CUTOFFS[0], p >= TIER_CUTOFFS[1], p >= TIER_CUTOFFS[2]],
                              ["A", "B", "C"], "D")
    return frame


def week_records(label: str, n: int, rng: np.random.Generator, drift: bool
                 ) -> tuple[list[PredictionRecord], pd.DataFrame]:
    """Logged predictions of one week and the outcomes the CRM will record for them."""
    period = iso_week(label)
    leads = generated_leads(n, rng, drift)
    seconds = np.sort(rng.uniform(0, 7 * 86400 - 1, n))
    records, outcomes = [], []
    for i, row in enumerate(leads.to_dict(orient="records")):
        submitted = period.since + timedelta(seconds=float(seconds[i]))
        lead_id = f"{label}-L{i}"
        control = bool(rng.random() < 0.1)
        records.append(PredictionRecord(
            request_id=f"{lead_id}-r", lead_id=lead_id, person_id=f"pid:{i % 997}",
            submitted_at=submitted, scored_at=submitted + timedelta(milliseconds=30),
            probability=float(row["probability"]), tier=row["tier"],
            channel="tmk" if control else FOLLOWUP[row["tier"]], control=control,
            degraded=False, model_name="lead-conversion", model_version="3",
            policy_version="policy-1",
            features={name: (row[name].item() if hasattr(row[name], "item") else row[name])
                      for name in FEATURES},
        ))
        converted = bool(rng.random() < row["probability"])
        outcomes.append({
            "lead_id": lead_id, "converted": converted,
            "converted_at": submitted + timedelta(days=float(rng.uniform(1, 25)))
            if converted else None,
            "amount": 4999.0 if converted else 0.0, "followup_channel": "tmk",
        })
    return records, pd.DataFrame(outcomes)


def make_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """test root"""

    app.command()(drift)
    return app


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work folder with a reference, a prediction log of 7 weeks, outcomes and a policy."""
    root = tmp_path_factory.mktemp("drift")
    settings = Settings().with_workdir(root)
    settings.ensure_dirs()
    rng = np.random.default_rng(20261116)
    reference = generated_leads(2000, rng)
    write_reference(settings, reference, "lead-conversion", "3", FEATURES, CATEGORICAL)
    all_outcomes = []
    with SqlitePredictionLog(settings.prediction_log_path) as log:
        for label in QUIET_WEEKS + DRIFT_WEEKS:
            records, outcomes = week_records(label, WEEK_ROWS, rng, label in DRIFT_WEEKS)
            log.append(records)
            all_outcomes.append(outcomes)
    outcomes = pd.concat(all_outcomes, ignore_index=True)
    outcomes["converted_at"] = pd.to_datetime(outcomes["converted_at"], utc=True)
    outcomes.to_parquet(settings.raw_dir / "outcomes.parquet", index=False)
    base = load_policy(None)
    channels = {name: replace(spec, cost_per_lead=float(COSTS[name]))
                for name, spec in base.channels.items()}
    save_policy(replace(base, version="test-costs", channels=channels),
                settings.reports_dir / "routing_policy.yaml")
    return root


@pytest.fixture(scope="module")
def cli_runs(workdir: Path) -> dict[str, object]:
    """``leadscore drift --week W`` for every week, in order; results by week."""
    runner = CliRunner()
    results = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEADSCORE_WORKDIR", str(workdir))
        get_settings.cache_clear()
        for label in QUIET_WEEKS + DRIFT_WEEKS:
            results[label] = runner.invoke(make_app(), ["drift", "--week", label,
                                                        "--workdir", str(workdir)])
    get_settings.cache_clear()
    return results


def read_json(workdir: Path, label: str, name: str) -> dict:
    return json.loads((workdir / "reports" / "drift" / label / name).read_text())


def test_quiet_weeks_pass_and_shifted_weeks_are_flagged(cli_runs: dict) -> None:
    codes = {label: result.exit_code for label, result in cli_runs.items()}
    for label, result in cli_runs.items():
        assert result.exit_code in (0, 3), (label, result.output)
    assert sum(codes[w] == 3 for w in QUIET_WEEKS) <= 1, codes
    assert all(codes[w] == 3 for w in DRIFT_WEEKS), codes


def test_drifted_columns_are_the_shifted_ones(workdir: Path, cli_runs: dict) -> None:
    drifted = {c["column"] for c in read_json(workdir, DRIFT_WEEKS[0], "drift.json")
               ["drifted_columns"]}
    assert {"channel", "app_open_30d", "pricing_page_30d"} <= drifted
    assert not drifted & {"grade", "device", "city_tier", "phone_valid", "prior_leads"}
    quiet = read_json(workdir, QUIET_WEEKS[0], "drift.json")
    assert quiet["drift_share"] < quiet["threshold"]


def test_drift_json_schema(workdir: Path, cli_runs: dict) -> None:
    report = read_json(workdir, DRIFT_WEEKS[1], "drift.json")
    for key in ("week", "since", "until", "n_current", "n_reference", "dataset_drift",
                "drift_share", "drifted_columns", "prediction_drift", "cohort", "model",
                "exit_code"):
        assert key in report, key
    assert report["week"] == DRIFT_WEEKS[1]
    assert datetime.fromisoformat(report["since"]) == iso_week(DRIFT_WEEKS[1]).since
    assert datetime.fromisoformat(report["until"]) == iso_week(DRIFT_WEEKS[1]).until
    assert report["n_current"] == WEEK_ROWS and report["n_reference"] == 2000
    assert report["dataset_drift"] is True and report["exit_code"] == 3
    assert 0 < report["drift_share"] <= 1
    for column in report["drifted_columns"]:
        assert set(column) == {"column", "score", "method"}
        assert isinstance(column["score"], float) and column["method"]
    for name in ("probability", "tier"):
        entry = report["prediction_drift"][name]
        assert {"score", "method", "threshold", "drifted"} <= set(entry)
    assert set(report["prediction_drift"]["tier"]["share_current"]) == {"A", "B", "C", "D"}
    assert report["model"] == {"name": "lead-conversion", "version": "3"}
    assert (workdir / "reports" / "drift" / DRIFT_WEEKS[1] / "drift.html").stat().st_size > 10_000
    text = json.dumps(report)
    assert "-L1" not in text and "pid:" not in text  # no lead or person ids in the report


def test_cohort_quality_of_leads_whose_window_closed(workdir: Path, cli_runs: dict) -> None:
    settings = Settings().with_workdir(workdir)
    period = iso_week(DRIFT_WEEKS[1])
    window = timedelta(days=settings.conversion_window_days)
    with SqlitePredictionLog(settings.prediction_log_path) as log:
        matured = log.read(period.since - window, period.until - window)
    cohort = read_json(workdir, DRIFT_WEEKS[1], "drift.json")["cohort"]
    assert cohort["n"] == len(matured) > 500
    assert 0.65 < cohort["auc"] < 0.95  # true probabilities: good, not perfect
    assert cohort["ece"] < 0.05  # and calibrated
    # the first week has no lead whose window closed: no cohort, said in the output
    assert read_json(workdir, QUIET_WEEKS[0], "drift.json")["cohort"] is None
    assert "outcome window closed" in cli_runs[QUIET_WEEKS[0]].output


def test_business_view(workdir: Path, cli_runs: dict) -> None:
    settings = Settings().with_workdir(workdir)
    label = DRIFT_WEEKS[0]
    business = read_json(workdir, label, "business.json")
    with SqlitePredictionLog(settings.prediction_log_path) as log:
        now = log.read(iso_week(label).since, iso_week(label).until)
        before = log.read(iso_week(QUIET_WEEKS[-1]).since, iso_week(QUIET_WEEKS[-1]).until)
    qualified_now = int(now["tier"].isin(["A", "B"]).sum())
    qualified_before = int(before["tier"].isin(["A", "B"]).sum())
    lvr = business["lvr"]
    assert (lvr["qualified_this_period"], lvr["qualified_previous_period"]) == (
        qualified_now, qualified_before)
    assert lvr["lvr_percent"] == pytest.approx(
        (qualified_now - qualified_before) / qualified_before * 100, abs=1e-3)
    assert sum(r["leads"] for r in business["by_tier"]) == WEEK_ROWS
    expected_cost = sum(COSTS[c] for c in now["channel"])
    assert business["cost"] == pytest.approx(expected_cost)
    assert business["cost_source"].endswith("routing_policy.yaml")
    arms = business["control_vs_policy"]
    assert arms["control"]["n"] + arms["policy"]["n"] == business["cohort"]["n"]
    assert 0 <= arms["p_value"] <= 1
    assert (workdir / "reports" / "drift" / label / "business.png").stat().st_size > 5_000


def test_index_lists_every_week_written(workdir: Path, cli_runs: dict) -> None:
    index = (workdir / "reports" / "index.html").read_text()
    for label in QUIET_WEEKS + DRIFT_WEEKS:
        assert f'href="drift/{label}/drift.html"' in index
    assert index.count("(DRIFT)") == sum(r.exit_code == 3 for r in cli_runs.values())
    assert (workdir / "reports" / "drift_trends.png").stat().st_size > 5_000


def test_cli_bad_input_exits_2_with_a_clear_message(workdir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.setenv("LEADSCORE_WORKDIR", str(workdir))
    get_settings.cache_clear()
    try:
        empty = runner.invoke(make_app(), ["drift", "--week", "2027-W05", "--workdir",
                                           str(workdir)])
        assert empty.exit_code == 2
        assert "no predictions logged" in empty.output
        bad = runner.invoke(make_app(), ["drift", "--week", "2026-W60"])
        assert bad.exit_code == 2 and "no ISO week 60" in bad.output
        both = runner.invoke(make_app(), ["drift", "--week", "2026-W41", "--last-week"])
        assert both.exit_code == 2 and "exactly one" in both.output
        no_model = runner.invoke(make_app(), ["drift", "--week", "2026-W41", "--workdir",
                                              str(tmp_path)])
        assert no_model.exit_code == 2
        assert "no reference: train a model first" in no_model.output
        assert "Traceback" not in empty.output + bad.output + no_model.output
    finally:
        get_settings.cache_clear()


def test_an_all_missing_feature_counts_as_drift(workdir: Path, tmp_path: Path) -> None:
    """A feature the service stopped sending is a broken pipeline: drifted, not skipped."""
    settings = Settings().with_workdir(workdir)
    reference, info = load_reference(settings)
    current = generated_leads(300, np.random.default_rng(5))
    current["intent_score"] = np.nan
    current = current.rename(columns={"channel": "feature.channel"})
    current["submitted_at"] = iso_week("2026-W45").since
    result = drift_report(current, reference, info.feature_columns, info.categorical_columns,
                          None, tmp_path, threshold=0.5)
    by_column = {c.column: c for c in result.columns}
    assert by_column["intent_score"].drifted
    assert by_column["intent_score"].method == "all values missing"
    # a 300-row week is tested with p-values (K-S, chi-square), not effect sizes
    assert by_column["events_30d"].method == "ks"
    assert by_column["channel"].method == "chisquare"
    assert result.exit_code == 0  # threshold 0.5 not reached


def test_reference_contract_errors(tmp_path: Path) -> None:
    settings = Settings().with_workdir(tmp_path)
    with pytest.raises(DriftInputError, match="no reference: train a model first"):
        load_reference(settings)
    frame = generated_leads(50, np.random.default_rng(1))
    with pytest.raises(ReferenceFileError, match="lacks column"):
        write_reference(settings, frame.drop(columns=["tier"]), "m", "1", FEATURES, CATEGORICAL)
    with pytest.raises(ReferenceFileError, match="categorical column"):
        write_reference(settings, frame, "m", "1", NUMERIC, CATEGORICAL)


def test_periods() -> None:
    week = iso_week("2026-W47")
    assert week.since == datetime(2026, 11, 16, tzinfo=UTC)
    assert week.until == datetime(2026, 11, 23, tzinfo=UTC)
    assert last_week(datetime(2026, 11, 25, 12, tzinfo=UTC)).label == "2026-W47"
    assert last_week(datetime(2027, 1, 4, tzinfo=UTC)).label == "2026-W53"
    custom = custom_period("2026-11-16", "2026-11-19T12:00:00+08:00")
    assert custom.until == datetime(2026, 11, 19, 4, tzinfo=UTC)
    assert custom.label == "2026-11-16_2026-11-19"
    with pytest.raises(DriftInputError, match="--until"):
        custom_period("2026-11-16", "2026-11-10")
    with pytest.raises(DriftInputError, match="ISO week"):
        resolve_period("week 47", None, None, False)
    with pytest.raises(DriftInputError, match="go together"):
        resolve_period(None, "2026-11-16", None, False)
    assert resolve_period(None, None, None, True).length == timedelta(days=7)
    assert date(2026, 11, 16).isocalendar()[1] == 47


def test_business_helpers(tmp_path: Path) -> None:
    assert lead_velocity_rate(120, 100) == 20.0
    assert lead_velocity_rate(80, 100) == -20.0
    assert lead_velocity_rate(5, 0) is None
    assert two_proportion_p_value(50, 100, 50, 100) == 1.0
    assert two_proportion_p_value(80, 100, 20, 100) < 1e-6
    settings = Settings().with_workdir(tmp_path)
    costs, source = load_channel_costs(settings)
    assert costs is not None and source.endswith("routing_policy.yaml")  # the packaged default
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "routing_policy.yaml").write_text("channels: [1, 2]\n")
    costs, source = load_channel_costs(settings)
    assert costs is None and "routing_policy.yaml" in source and "costs unknown" in source


def test_reports_are_logged_to_mlflow_when_a_store_exists(workdir: Path, cli_runs: dict,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from monitoring.drift import log_to_mlflow, mlflow_store_exists

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = Settings().with_workdir(workdir)
    label = DRIFT_WEEKS[0]
    folder = workdir / "reports" / "drift" / label
    summary = read_json(workdir, label, "drift.json")
    assert not mlflow_store_exists(settings)
    assert log_to_mlflow(settings, label, summary, [folder / "drift.json"]) is None

    client = mlflow.MlflowClient(settings.tracking_uri)
    client.search_experiments()  # creates the tracking store, as training does
    assert mlflow_store_exists(settings)
    run_id = log_to_mlflow(settings, label, summary,
                           [folder / "drift.json", folder / "drift.html"])
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "drift"
    assert run.data.tags["week"] == label and run.data.tags["model_version"] == "3"
    assert run.data.metrics["drift_share"] == pytest.approx(summary["drift_share"])
    assert run.data.metrics["cohort_auc"] == pytest.approx(summary["cohort"]["auc"])
    assert {a.path for a in client.list_artifacts(run_id)} == {"drift.json", "drift.html"}
