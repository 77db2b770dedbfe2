"""Causal routing: the generated world's channel effects, routing by learned effects, and
off-policy evaluation of every policy against the truth."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from crm_data import channel_effects as ce
from crm_data.generate_mechanism import marginal_probability
from leadscore.schemas import CHANNELS, FOLLOWUP_CHANNELS
from routing.allocate import allocate_days, policy_channels
from routing.control import allocated_channels, route_leads
from routing.evaluate import evaluate_assignments
from routing.policy import load_policy

N = 6000


def _facts(rng: np.random.Generator, n: int) -> SimpleNamespace:
    return SimpleNamespace(
        channel=rng.integers(0, len(CHANNELS), n), grade=rng.integers(0, 12, n),
        funnel=rng.integers(0, 4, n), city_tier=rng.integers(1, 5, n),
        landed_on_pricing=rng.random(n) < 0.2, wrong_persona=rng.random(n) < 0.05,
        phone_state=np.where(rng.random(n) < 0.9, 0, 1), submit_hour_cn=rng.integers(0, 24, n))


@pytest.fixture(scope="module")
def world() -> dict:
    rng = np.random.default_rng(3)
    facts = _facts(rng, N)
    base = rng.normal(-4.0, 3.0, N)
    p, segment = ce.channel_propensities(base, facts, rng, marginal_probability)
    return {"facts": facts, "p": p, "segment": segment, "rng": rng}


def _col(channel: str) -> int:
    return FOLLOWUP_CHANNELS.index(channel)


def test_effects_are_not_a_function_of_base_propensity(world) -> None:
    p, segment, facts = world["p"], world["segment"], world["facts"]
    base = p[:, _col("ai_bot")]
    lift = p[:, _col("sales")] - base
    # sure things: the likeliest buyers, a call changes them least
    sure, persuadable = segment == 0, segment == 1
    assert base[sure].mean() > base[persuadable].mean()
    assert lift[persuadable].mean() > 3 * lift[sure].mean()
    # at the same base propensity the lift still varies widely (segments, hour, phone)
    band = (base > 0.1) & (base < 0.2)
    assert lift[band].std() > 0.5 * abs(lift[band].mean())
    # sleeping dogs: purchased-list leads whom a TMK call annoys
    listed = facts.channel == CHANNELS.index("list_purchase")
    tmk_lift = p[:, _col("tmk")] - base
    assert tmk_lift[listed & (facts.phone_state == 0)].mean() < 0
    assert (segment[listed] == 3).mean() > 0.4


def test_effect_fades_with_time_to_contact() -> None:
    hours = ce.hours_to_contact(np.array([10, 23]))  # 10:00 vs 23:00 China time
    fade = np.exp(-hours / ce.FADE_HOURS)
    tmk = _col("tmk")
    assert hours[0, tmk] <= 1.0 and hours[1, tmk] >= 9.0
    assert hours[:, _col("ai_bot")].tolist() == [0.0, 0.0]
    assert np.exp(-1 / ce.FADE_HOURS) / np.exp(-24 / ce.FADE_HOURS) > 5  # hour vs a day
    assert fade[0, tmk] > 2 * fade[1, tmk]


def test_historical_arms_are_a_stable_uniform_share() -> None:
    ids = [f"L{i:08d}" for i in range(20000)]
    arm, channel, propensity = ce.historical_arms(ids, ["ai_bot"] * len(ids))
    again = ce.historical_arms(ids, ["ai_bot"] * len(ids))
    assert (arm == again[0]).all() and (channel == again[1]).all()
    explore = arm == "exploration"
    assert abs(explore.mean() - ce.RANDOM_FOLLOWUP_SHARE) < 0.01
    counts = pd.Series(channel[explore]).value_counts(normalize=True)
    assert set(counts.index) == set(FOLLOWUP_CHANNELS) and (abs(counts - 0.25) < 0.02).all()
    assert (propensity[explore] == 0.25).all() and (propensity[~explore] == 1.0).all()
    assert (channel[~explore] == "ai_bot").all()
    explored, drawn = ce.historical_draws(np.arange(20000))
    assert (explored == explore).all()
    assert [FOLLOWUP_CHANNELS[j] for j in drawn[explored]] == channel[explore].tolist()


@pytest.mark.parametrize("share", [-0.1, 0.6])
def test_history_share_out_of_range_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="exploration_share"):
        ce.historical_arms(["L1"], share=share)


def _judged(world: dict) -> tuple[pd.DataFrame, np.ndarray]:
    """Leads over 20 days, 40% randomised uniformly; outcomes drawn from the truth."""
    rng = np.random.default_rng(11)
    p = world["p"]
    n = len(p)
    created = pd.Timestamp("2026-03-02", tz="Asia/Shanghai") + pd.to_timedelta(
        np.sort(rng.uniform(0, 20 * 86400, n)), unit="s")
    randomised = rng.random(n) < 0.4
    logged = np.where(randomised, rng.integers(0, 4, n), _col("ai_bot"))
    frame = pd.DataFrame({
        "lead_id": [f"L{i:06d}" for i in range(n)], "created_at": created.tz_convert("UTC"),
        "arm": np.where(randomised, "exploration", "policy"),
        "followup_channel": np.array(FOLLOWUP_CHANNELS, dtype=object)[logged],
        "propensity": np.where(randomised, 0.25, 1.0),
        "label": (rng.random(n) < p[np.arange(n), logged]).astype(int),
        **{f"propensity_{c}": p[:, j] for j, c in enumerate(FOLLOWUP_CHANNELS)},
    })
    return frame, p


def test_route_by_probability_is_not_optimal_and_estimates_agree_with_truth(world) -> None:
    frame, p = _judged(world)
    policy = load_policy().with_absolute_capacities(N / 20)
    names, costs, capacities = policy_channels(policy)
    base = p[:, _col("ai_bot")]
    uplift = p - base[:, None]
    # by probability: the likeliest quarter to the dearest channels (tiers)
    by_probability = np.select(
        [base >= np.quantile(base, 0.97), base >= np.quantile(base, 0.88),
         base >= np.quantile(base, 0.6)], ["top_sales", "sales", "tmk"], "ai_bot")
    order = [FOLLOWUP_CHANNELS.index(c) for c in names]
    days = frame["created_at"].dt.tz_convert("Asia/Shanghai").dt.date
    by_effect, _ = allocate_days(uplift[:, order], days, names, costs, capacities,
                                 cost_weight=1 / 400)
    report = evaluate_assignments(
        frame, {"by_probability": by_probability, "uplift": by_effect,
                "rule_2d_optimised": by_probability,
                "rule_funnel_optimised": by_probability.copy()},
        policy, outcome_model=p, n_boot=400)
    truth = {k: v["truth"] for k, v in report["policies"].items()}
    assert report["policies"]["uplift"]["capacity_violations"] == 0
    # the effect-based allocation is clearly cheaper per conversion, by the truth
    assert truth["uplift"]["cost_per_conversion"] < 0.85 * truth["by_probability"][
        "cost_per_conversion"]
    versus = report["uplift_vs_best_optimised_rule"]
    assert versus["truth"]["cost_per_conversion_change_ci"][1] < 0
    # every optimised rule gets its paired comparison; the best by the estimate is one of them
    by_rule = report["uplift_vs_optimised_rules"]
    assert set(by_rule) == {"rule_2d_optimised", "rule_funnel_optimised"}
    assert by_rule[versus["against"]] == versus
    # the same assignments under two names: the same paired comparison
    assert (by_rule["rule_funnel_optimised"]["truth"]["conversions_difference"]
            == by_rule["rule_2d_optimised"]["truth"]["conversions_difference"])
    # truth and every off-policy estimate agree within their intervals
    for name, entry in report["policies"].items():
        for estimator in ("ips", "snips", "dr"):
            low, high = entry[estimator]["conversions_ci"]
            assert low <= entry["truth"]["conversions"] <= high, (name, estimator)
    assert versus["dr"]["cost_per_conversion_change_ci"][1] < 0


def test_serving_routes_policy_leads_by_shadow_prices() -> None:
    base = load_policy()
    policy = base.with_cutoffs(base.cutoffs, base.version, {"allocation": {
        "source": "uplift", "cost_weight": 0.01,
        "shadow_prices": {"top_sales": 0.0, "sales": 0.0, "tmk": 0.0, "ai_bot": 0.0}}})
    effects = np.zeros((3, 4))
    effects[0, _col("sales")] = 0.9  # worth 60 RMB at λ = 0.01
    effects[1, _col("tmk")] = -0.2  # a sleeping dog stays with the bot
    chosen = allocated_channels(effects, policy)
    assert chosen.tolist() == ["sales", "ai_bot", "ai_bot"]
    persons = [f"P{i}" for i in range(3)]
    routed = route_leads(persons, np.array([0.9, 0.9, 0.9]), np.zeros(3), policy,
                         lead_ids=["a", "b", "c"], effects=effects)
    policy_arm = routed.arms == "policy"
    assert (routed.channels[policy_arm] == chosen[policy_arm]).all()
    with pytest.raises(ValueError, match="optimization.allocation"):
        allocated_channels(effects, base)


def test_weekly_routing_table_from_logged_exploration_rows(world, tmp_path) -> None:
    from leadscore.config import Settings
    from monitoring.routing_offpolicy import routing_section

    frame, p = _judged(world)
    cohort = pd.DataFrame({
        "lead_id": frame["lead_id"], "submitted_at": frame["created_at"], "arm": frame["arm"],
        "channel": frame["followup_channel"], "propensity": frame["propensity"],
        "converted": frame["label"],
        "probability": p[:, _col("ai_bot")], "rule_score": np.linspace(0, 100, len(frame)),
        "funnel_step": "verified"})
    notes: list[str] = []
    table = routing_section(Settings().with_workdir(tmp_path), cohort, tmp_path, notes)
    assert table is not None and (tmp_path / "routing.json").exists()
    assert table["exploration_leads"] == int((frame["arm"] == "exploration").sum())
    bot = table["policies"]["everyone_to_ai_bot"]
    truth = p[(frame["arm"] == "exploration").to_numpy(), _col("ai_bot")].sum()
    low, high = bot["snips"]["conversions_ci"]
    assert low <= truth <= high
    assert {"probability_tiers", "rule_2d", "rule_funnel"} <= set(table["policies"])
    assert routing_section(Settings().with_workdir(tmp_path), cohort.head(10), tmp_path,
                           notes) is None and "routing table skipped" in notes[-1]


def _workdir(tmp_path, followup: list[str]):
    from leadscore.config import Settings

    settings = Settings().with_workdir(tmp_path)
    settings.ensure_dirs()
    settings.raw_dir.mkdir(parents=True, exist_ok=True)
    n = len(followup)
    ids = [f"L{i:08d}" for i in range(n)]
    pd.DataFrame({"lead_id": ids, "person_id": ids,
                  "created_at": pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC"),
                  "label": np.arange(n) % 5 == 0, "funnel_step": "verified"}).to_parquet(
        settings.data_dir / "training_set.parquet")
    pd.DataFrame({"lead_id": ids, "followup_channel": followup}).to_parquet(
        settings.raw_dir / "outcomes.parquet")
    return settings


def test_uplift_work_refuses_bad_input_and_writes_nothing(tmp_path) -> None:
    from training.uplift import UpliftInputError
    from training.uplift_work import train_uplift_work, uplift_model_dir

    costs = {"top_sales": 150, "sales": 60, "tmk": 15, "ai_bot": 2}
    settings = _workdir(tmp_path / "few", ["ai_bot", "tmk", "sales", "top_sales"] * 50)
    with pytest.raises(UpliftInputError, match="randomised leads: .* at least 2000"):
        train_uplift_work(settings, costs, register=False)
    assert not uplift_model_dir(settings).exists()
    assert not (settings.reports_dir / "uplift_leads.json").exists()
    settings = _workdir(tmp_path / "unknown", ["ai_bot", "callcentre"] * 10)
    with pytest.raises(UpliftInputError, match="followup_channel: unknown channel.*callcentre"):
        train_uplift_work(settings, costs, register=False)


@pytest.mark.slow
def test_distilled_serving_effects_follow_the_model() -> None:
    from training.uplift import fit_uplift

    rng = np.random.default_rng(5)
    n = 3000
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                      "kind": rng.choice(["x", "y", "z"], n)})
    arm = rng.choice(["ai_bot", "tmk", "sales"], n)
    effect = np.where(arm == "ai_bot", 0.0, np.where(X["a"] > 0, 1.2, -0.3))
    y = (rng.random(n) < 1 / (1 + np.exp(-(-1.5 + 0.5 * X["b"] + effect)))).astype(int)
    result = fit_uplift(X, arm.tolist(), y, control="ai_bot", categorical=["kind"], folds=2,
                        trials=1, seed=1)
    model = result.model
    correlation = model.distil(X)
    assert min(correlation) > 0.9
    rows = X.head(50).astype(object)
    rows.loc[0, "kind"] = None  # missing and unseen levels map to NaN as in training
    rows.loc[1, "kind"] = "unseen"
    columns = {c: rows[c].tolist() for c in X.columns}
    np.testing.assert_array_equal(model.encode_columns(columns), model.matrix(rows))
    fast, full = model.fast_uplift(columns), model.uplift(rows)
    assert fast.shape == full.shape and (fast[:, 0] == 0).all()
    assert np.corrcoef(fast[:, 1:].ravel(), full[:, 1:].ravel())[0, 1] > 0.9
