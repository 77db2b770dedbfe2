"""The weekly report's routing table and page: the daily capacity cascade replayed on the
served leads, the optimised rules tuned on earlier weeks only, the per-channel allocation, and
the ``route optimize`` allocation printout."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from leadscore.config import Settings
from leadscore.schemas import FOLLOWUP_CHANNELS, FUNNEL_STEPS
from monitoring.routing_offpolicy import (
    RoutingLogRows,
    log_features,
    routing_section,
    routing_table,
)
from routing.policy import load_policy, optimised_policy_path, save_policy

PER_DAY = 150
DAYS = 12
JUDGED_DAYS = range(7, 10)  # local days whose leads are judged; the earlier ones tune
COST = {"top_sales": 150.0, "sales": 60.0, "tmk": 15.0, "ai_bot": 2.0}
CAPACITY = [("top_sales", 6), ("sales", 20), ("tmk", 45)]  # the packaged policy's


@pytest.fixture(scope="module")
def served() -> pd.DataFrame:
    """Logged leads over 12 days (Asia/Shanghai): all arms, 40% explored uniformly."""
    rng = np.random.default_rng(7)
    n = PER_DAY * DAYS
    start = pd.Timestamp("2026-03-02", tz="Asia/Shanghai")
    seconds = np.sort(rng.uniform(0, DAYS * 86400, n))
    created = (start + pd.to_timedelta(seconds, unit="s")).tz_convert("UTC")
    probability = rng.beta(1.2, 8, n)
    arm = rng.choice(["policy", "exploration", "control"], n, p=[0.55, 0.4, 0.05])
    drawn = np.array(FOLLOWUP_CHANNELS, dtype=object)[rng.integers(0, 4, n)]
    channel = np.where(arm == "exploration", drawn, "ai_bot")
    lift = {"top_sales": 0.10, "sales": 0.07, "tmk": 0.04, "ai_bot": 0.0}
    truth = np.clip(probability + np.array([lift[c] for c in channel]), 0, 1)
    return pd.DataFrame({
        "lead_id": [f"L{i:05d}" for i in range(n)], "person_id": [f"P{i}" for i in range(n)],
        "submitted_at": created, "probability": probability,
        "rule_score": np.clip(probability * 300 + rng.normal(0, 10, n), 0, 100),
        "funnel_step": rng.choice(FUNNEL_STEPS, n), "arm": arm, "channel": channel,
        "propensity": np.where(arm == "exploration", 0.25, 1.0),
        "converted": (rng.random(n) < truth).astype(int),
        "feature.channel": "organic_search",
        "local_day": (seconds // 86400).astype(int)})


def _cohort(served: pd.DataFrame) -> pd.DataFrame:
    return served[served["local_day"].isin(JUDGED_DAYS)].reset_index(drop=True)


def _context(served: pd.DataFrame) -> pd.DataFrame:
    days = range(JUDGED_DAYS.start - 1, JUDGED_DAYS.stop + 1)
    return served[served["local_day"].isin(days)].drop(columns="converted")


def _earlier(served: pd.DataFrame) -> pd.DataFrame:
    return served[served["local_day"] < JUDGED_DAYS.start - 1].reset_index(drop=True)


def _settings(tmp_path) -> Settings:
    settings = Settings().with_workdir(tmp_path)
    settings.ensure_dirs()
    return settings


def test_capacity_cascade_is_replayed_over_every_served_lead_of_the_days(served, tmp_path):
    table = routing_table(_cohort(served), _settings(tmp_path), n_boot=200,
                          served=_context(served), earlier=_earlier(served))
    assert table is not None and table["capacity"]["replayed"]
    days = served[served["local_day"].isin(JUDGED_DAYS)]
    assert table["capacity"]["served_leads"] == len(days)
    assert table["capacity"]["days"] == len(JUDGED_DAYS)
    # everyone to top sales, by hand: per day in arrival order 6 top sales, 20 sales, 45 TMK,
    # the rest to the bot — over all arms, judged on the randomised leads only
    rank = days.groupby("local_day").cumcount().to_numpy()
    bounds = np.cumsum([c for _, c in CAPACITY])
    final = np.select([rank < bounds[0], rank < bounds[1], rank < bounds[2]],
                      [COST["top_sales"], COST["sales"], COST["tmk"]], COST["ai_bot"])
    judged = (days["arm"] == "exploration").to_numpy()
    entry = table["policies"]["everyone_to_top_sales"]
    assert entry["ips"]["total_cost"] == pytest.approx(final[judged].sum())
    assert entry["overflow_leads"] > 0 and entry["capacity_violations"] == 0
    assert table["exploration_leads"] == int(judged.sum())
    # the bot is unlimited: its figures are the logged bot leads' own, the truth within reach
    bot = table["policies"]["everyone_to_ai_bot"]["snips"]
    low, high = bot["conversions_ci"]
    explored = days[judged]
    truth = explored["probability"].sum()
    assert low <= truth <= high


def test_without_the_served_leads_inputs_the_table_is_per_lead_and_says_why(served, tmp_path):
    context = _context(served).copy()
    unjudged = (context["arm"] == "policy") & context["local_day"].isin(JUDGED_DAYS)
    context.loc[context.index[unjudged.to_numpy()][0], "rule_score"] = None
    table = routing_table(_cohort(served), _settings(tmp_path), n_boot=200, served=context)
    assert not table["capacity"]["replayed"]
    assert "rule_score" in table["capacity"]["reason"]
    n = table["exploration_leads"]
    entry = table["policies"]["everyone_to_top_sales"]
    assert entry["ips"]["total_cost"] == pytest.approx(COST["top_sales"] * n)
    assert "capacity_violations" not in entry
    table = routing_table(_cohort(served), _settings(tmp_path), n_boot=200, served=None)
    assert "could not be read" in table["capacity"]["reason"]


def test_optimised_rules_are_tuned_on_earlier_weeks_never_on_the_judged_one(served, tmp_path):
    settings = _settings(tmp_path)
    table = routing_table(_cohort(served), settings, n_boot=200, served=_context(served),
                          earlier=_earlier(served))
    assert {"rule_2d_optimised", "rule_funnel_optimised"} <= set(table["policies"])
    tuned = table["optimised_rules"]["tuned_on"]
    assert pd.Timestamp(tuned["until"]) < pd.Timestamp(table["judged_from"])
    assert tuned["leads"] == len(_earlier(served))
    # the judged week itself offered as tuning rows: nothing before the first judged lead
    table = routing_table(_cohort(served), settings, n_boot=200, served=_context(served),
                          earlier=_cohort(served))
    assert "rule_2d_optimised" not in table["policies"]
    assert "0 earlier matured leads" in table["optimised_rules"]["skipped"]


def test_weekly_page_shows_the_table_the_chart_and_the_learned_allocation(served, tmp_path):
    settings = _settings(tmp_path)
    base = load_policy()
    learned = {c: {"dr_effect_over_ai_bot": 0.01 * j, "ci": [0.01 * j - 0.02, 0.01 * j + 0.02],
                   "mean_predicted_uplift": 0.005 * j} for j, c in enumerate(FOLLOWUP_CHANNELS)}
    save_policy(base.with_cutoffs(base.cutoffs, "2026.11-1-opt", {"allocation": {
        "source": "uplift", "model": str(tmp_path / "no_such_model"), "cost_weight": 0.004,
        "shadow_prices": dict.fromkeys(FOLLOWUP_CHANNELS, 0.0), "learned_effects": learned,
        "effects_estimated_on_randomised_leads": 812}}), optimised_policy_path(settings))
    outcomes = served.assign(converted_at=served["submitted_at"] + timedelta(days=1))[
        ["lead_id", "converted", "converted_at"]].assign(
        converted_at=lambda f: f["converted_at"].where(f["converted"] == 1))
    earlier = _earlier(served).drop(columns="converted")
    notes: list[str] = []
    folder = tmp_path / "2026-W11"
    table = routing_section(settings, _cohort(served), folder, notes,
                            RoutingLogRows(_context(served), earlier), outcomes,
                            served["submitted_at"].max().ceil("s").to_pydatetime(), "2026-W11")
    assert table is not None and (folder / "routing.json").exists()
    assert table["allocation"]["learned_effects"]["top_sales"]["ci"] == learned["top_sales"]["ci"]
    assert "uplift policy left out" in table["note"]  # the recorded model does not load
    page = (folder / "routing.html").read_text()
    for name in table["policies"]:
        assert f"<td>{name}</td>" in page
    assert "Capacity replayed" in page and "812 randomised leads" in page
    top = learned["top_sales"]
    assert f"{top['dr_effect_over_ai_bot']:+.4f} [{top['ci'][0]:+.4f}, {top['ci'][1]:+.4f}]" in page
    assert (folder / "routing.png").stat().st_size > 5_000
    # a week without enough randomised leads: a page that says why, no chart
    assert routing_section(settings, _cohort(served).head(10), folder, notes) is None
    assert "fewer than 30 exploration leads" in (folder / "routing.html").read_text()
    assert not (folder / "routing.png").exists()


def test_logged_features_keep_their_own_names() -> None:
    frame = pd.DataFrame({"channel": ["tmk"], "feature.channel": ["wechat_ad"], "grade": ["G9"]})
    features = log_features(frame)
    assert features.loc[0, "channel"] == "wechat_ad" and features.loc[0, "grade"] == "G9"
    assert features["subject"].isna().all()


def test_route_optimize_prints_the_recorded_allocation() -> None:
    from rich.console import Console

    from commands.route import allocation_table

    allocation = {"source": "uplift", "model": "models:/lead-uplift@champion",
                  "cost_weight": 0.00126, "effects_estimated_on_randomised_leads": 700,
                  "evidence": {"randomised_leads": 2400,
                               "sources": {"history": 2000, "prediction_log": 400}},
                  "shadow_prices": {"top_sales": 0.031, "sales": 0.0, "tmk": 0.0, "ai_bot": 0.0},
                  "learned_effects": {"top_sales": {"dr_effect_over_ai_bot": 0.049,
                                                    "ci": [0.038, 0.06],
                                                    "mean_predicted_uplift": 0.051}}}
    console = Console(record=True, width=200)
    console.print(allocation_table(allocation))
    text = " ".join(console.export_text().split())
    assert "source uplift" in text and "λ = 0.00126" in text
    assert "+0.0490 [+0.0380, +0.0600]" in text and "+0.0510" in text and "0.031" in text
    assert "2000 history, 400 prediction log" in text
    console.print(allocation_table({"source": "cold_start_prior", "reason": "no uplift champion",
                                    "relative_conversion": {"tmk": 1.5}}))
    text = " ".join(console.export_text().split())
    assert "cold_start_prior" in text and "no uplift champion" in text and "1.500" in text
