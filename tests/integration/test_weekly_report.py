"""The weekly report (``leadscore drift --week``) over seven logged weeks: drift, cohort
quality, business view, the index and MLflow logging.

The weeks are generated-like predictions (``tests/data/drift_weeks.py``): five quiet weeks, then
two drifted ones; probabilities are the true conversion probabilities, so the matured cohort's
AUC/ECE are known in advance.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from commands.drift import drift
from crm_data.prediction_log import SqlitePredictionLog
from leadscore.config import Settings, get_settings
from pipelines.weekly_report import iso_week
from tests.data.drift_weeks import (
    COSTS,
    DRIFT_WEEKS,
    QUIET_WEEKS,
    WEEK_ROWS,
    build_drift_workdir,
)


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
    return build_drift_workdir(tmp_path_factory.mktemp("drift"))


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


def test_every_week_has_a_routing_page_linked_from_the_index(workdir: Path, cli_runs: dict
                                                             ) -> None:
    index = (workdir / "reports" / "index.html").read_text()
    for label in QUIET_WEEKS + DRIFT_WEEKS:
        assert f'href="drift/{label}/routing.html"' in index
    # these weeks logged no exploration lead: the page says why there is no table
    page = (workdir / "reports" / "drift" / DRIFT_WEEKS[0] / "routing.html").read_text()
    assert "fewer than 30 exploration leads" in page


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
