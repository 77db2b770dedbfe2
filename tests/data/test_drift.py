"""Drift pieces on generated-like predictions: a missing feature, the reference contract,
reporting periods and the business helpers. The weekly report over seven logged weeks is
``tests/integration/test_weekly_report.py``."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from leadscore.config import Settings
from monitoring.business import lead_velocity_rate, load_channel_costs, two_proportion_p_value
from monitoring.drift import DriftInputError, drift_report, load_reference
from pipelines.weekly_report import custom_period, iso_week, last_week, resolve_period
from tests.data.drift_weeks import (
    CATEGORICAL,
    FEATURES,
    NUMERIC,
    SEED,
    generated_leads,
    write_drift_reference,
)
from training.drift_reference import ReferenceFileError, write_reference


def test_an_all_missing_feature_counts_as_drift(tmp_path: Path) -> None:
    """A feature the service stopped sending is a broken pipeline: drifted, not skipped."""
    settings = Settings().with_workdir(tmp_path / "work")
    write_drift_reference(settings, np.random.default_rng(SEED))
    reference, info = load_reference(settings)
    current = generated_leads(300, np.random.default_rng(5))
    current["intent_score"] = np.nan
    current = current.rename(columns={"channel": "feature.channel"})
    current["submitted_at"] = iso_week("2026-W45").since
    result = drift_report(current, reference, info.feature_columns, info.categorical_columns,
                          None, tmp_path / "report", threshold=0.5)
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
