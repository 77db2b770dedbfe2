"""The weekly report's nurturing figures on a small hand-made lead state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from crm_data.lead_state import (
    DAY_US,
    HistoryRow,
    LeadRow,
    LeadStateStore,
    OutboxMessage,
    to_us,
)
from monitoring.nurturing import nurturing_summary, wilson

T0 = datetime(2026, 10, 1, tzinfo=UTC)
SINCE, UNTIL = T0 + timedelta(days=35), T0 + timedelta(days=42)


def _lead(lead_id: str, day: float, tier: str) -> LeadRow:
    t = to_us(T0) + int(day * DAY_US)
    return LeadRow(lead_id, "P-" + lead_id, t, {}, {}, "submitted", "open", 0.1, tier, "x",
                   False, "1", 0.1, tier, t, tier, "x")


def _h(lead_id: str, day: float, tier: str) -> HistoryRow:
    return HistoryRow(lead_id, to_us(T0) + int(day * DAY_US), 0, 0.1, tier, "x", "1", "c", "s")


@pytest.fixture
def store(tmp_path) -> LeadStateStore:  # noqa: ANN001
    s = LeadStateStore.sqlite(tmp_path / "ls.sqlite")
    leads = [_lead("old", 0, "D"), _lead("fast", 30, "C"), _lead("up1", 30, "D"),
             _lead("up2", 31, "D"), _lead("base", 30, "D")]
    history = [_h("old", 0, "D"), _h("fast", 30, "C"), _h("up1", 30, "D"), _h("up1", 36, "B"),
               _h("up2", 31, "D"), _h("up2", 37, "C"), _h("up2", 38, "A"), _h("base", 30, "D")]
    s.register(leads, history)
    s.apply_rescores([], [], [OutboxMessage(f"k-{lead}", lead, "upgrade", "{}", 0)
                              for lead in ("up1", "up2")], [])
    s.record_attempts([m["id"] for m in s.outbox_rows()], [])  # delivered now, not in period
    s._conn.execute("UPDATE outbox SET delivered_us = ?", (to_us(SINCE) + DAY_US,))
    return s


def test_nurturing_figures(store: LeadStateStore) -> None:
    outcomes = pd.DataFrame({
        "lead_id": ["old", "fast", "up1", "up2", "base"],
        "converted": [True, True, True, False, False],
        "converted_at": pd.to_datetime([T0 + timedelta(days=36), T0 + timedelta(days=37),
                                        T0 + timedelta(days=40), None, None], utc=True),
    })
    got = nurturing_summary(store, outcomes, SINCE, UNTIL, window_days=30)
    # paid in the period: "old" (36 days after its form), "fast" (7 days), "up1" (10 days)
    assert got["conversions"] | {"old_share_ci95": None} == {
        "n": 3, "fast": 2, "old": 1, "old_share": 0.3333, "old_share_ci95": None,
        "fast_days": 30}
    assert got["conversions"]["old_share_ci95"] == wilson(1, 3)
    # first upgrades in the period: up1 after 6 days, up2 after 6 days (C, then A later)
    assert got["first_upgrade"] == {"n": 2, "median_hours": 144.0, "p90_hours": 144.0}
    upgrades = got["upgrades_pushed"]
    assert upgrades["pushed"] == 2
    # up1 paid on day 40 (in its window, by UNTIL); up2's window is still open at UNTIL
    assert upgrades["still_open"] == 1
    assert upgrades["later_conversion"]["n"] == 1 and upgrades["later_conversion"]["converted"] == 1
    base = upgrades["baseline_same_first_tier_not_upgraded"]
    assert base["n"] == 0  # "base" (D, day 30) is still inside its window at UNTIL


def test_wilson_interval() -> None:
    assert wilson(0, 0) is None
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)


def test_weekly_report_section_writes_its_file_or_says_why_not(tmp_path) -> None:  # noqa: ANN001
    import json

    from leadscore.config import Settings
    from pipelines.weekly_report import Period, nurturing_section

    settings = Settings(workdir=tmp_path)
    period = Period("2026-W46", SINCE, UNTIL)
    notes: list[str] = []
    assert nurturing_section(settings, period, None, tmp_path, notes) is None
    assert "no lead state yet" in notes[0]
    settings.data_dir.mkdir(parents=True)
    with LeadStateStore.sqlite(settings.lead_state_path) as s:
        s.register([_lead("fast", 30, "C")], [_h("fast", 30, "C")])
    got = nurturing_section(settings, period, None, tmp_path, notes)
    assert got is not None and got["leads_scored"] == 1
    assert json.loads((tmp_path / "nurturing.json").read_text()) == got
