"""End to end: the weekly drift check on the log the service wrote during the main job.

The main job trains as of the start of its replayed weeks and serves them through BentoML. On a
history made with ``--drift`` (channel mix and behaviour shift in the last third) both replayed
weeks are flagged (exit 3) by the shifted columns; on a quiet history neither is.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from leadscore.config import Settings
from monitoring.drift import EXIT_DRIFT, EXIT_QUIET
from pipelines.demo import replay_start
from pipelines.weekly_report import iso_week, run_weekly_report
from tests.integration.service_fixtures import ServiceWorkdir

DRIFT_LEADS = 8000
SHIFTED = {"channel", "app_open_30d", "pricing_page_30d"}  # what ``--drift`` changes
UNSHIFTED = {"grade", "device", "city_tier", "phone_valid", "subject"}


def replayed_weeks(settings: Settings) -> list[str]:
    """The two full ISO weeks the main job replays."""
    start = replay_start(settings)
    labels = []
    for offset in (0, 7):
        year, week, _ = (start + timedelta(days=offset)).isocalendar()
        labels.append(f"{year}-W{week:02d}")
    return labels


def weekly(settings: Settings, label: str) -> tuple[int, set[str]]:
    report = run_weekly_report(settings, iso_week(label), log_mlflow=False)
    return report.exit_code, {c["column"] for c in report.drift["drifted_columns"]}


@pytest.fixture(scope="module")
def drifted_workdir(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    from pipelines.demo import run_demo

    root = tmp_path_factory.mktemp("demo_drift")
    settings = Settings().with_workdir(root)
    previous = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(Path(root) / "bentoml_home")
    try:
        summary = run_demo(settings, n_leads=DRIFT_LEADS, seed=11, trials=2, drift=True)
    finally:
        if previous is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = previous
    assert summary["completed"][-1] == "drift", summary["completed"]
    return settings


def test_quiet_history_is_not_flagged(service_workdir: ServiceWorkdir) -> None:
    settings = service_workdir.settings
    for label in replayed_weeks(settings):
        code, drifted = weekly(settings, label)
        assert code == EXIT_QUIET, (label, sorted(drifted))


@pytest.mark.slow
def test_drifted_history_is_flagged_by_the_shifted_columns(drifted_workdir: Settings) -> None:
    for label in replayed_weeks(drifted_workdir):
        code, drifted = weekly(drifted_workdir, label)
        assert code == EXIT_DRIFT, (label, sorted(drifted))
        assert drifted & SHIFTED, (label, sorted(drifted))
        assert not drifted & UNSHIFTED, (label, sorted(drifted))
