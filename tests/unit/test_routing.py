"""Routing: policy validation, tiers, daily capacity, control group, optimiser, simulation, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from commands.route import app as route_app
from leadscore.config import PROJECT_ROOT, get_settings
from leadscore.schemas import FOLLOWUP_CHANNELS
from routing.control import control_mask, is_control, route_with_control
from routing.optimize import _select, goal_slack, goal_target, optimize_cutoffs
from routing.policy import (
    CapacityLedger,
    PolicyError,
    RoutingPolicy,
    bump_version,
    default_policy_path,
    load_policy,
    policy_from_dict,
    save_policy,
)
from routing.simulate import (
    PROPENSITY_COLUMNS,
    after_tuning,
    apply_daily_capacity,
    channel_positions,
    day_index,
    simulate,
    split_by_day,
    validate_leads,
)
from tests.synthetic import synthetic_leads


@pytest.fixture(scope="module")
def leads() -> pd.DataFrame:
    return synthetic_leads()


@pytest.fixture(scope="module")
def default_policy() -> RoutingPolicy:
    return load_policy()


@pytest.fixture(scope="module")
def slices(leads: pd.DataFrame, default_policy: RoutingPolicy
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tuning slice (earliest half of the days) and the later test slice."""
    return split_by_day(leads, 0.5, default_policy.capacity_day_timezone)


@pytest.fixture(scope="module")
def optimized(slices, default_policy: RoutingPolicy) -> tuple[RoutingPolicy, dict]:
    return optimize_cutoffs(slices[0], default_policy)


def _raw_policy() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "leadscore/defaults/routing_policy.yaml").read_text())


# ---- policy file -----------------------------------------------------------------------------
def test_default_policy_loads_with_documented_values(default_policy: RoutingPolicy) -> None:
    assert default_policy.version == "2026.11-1"
    assert default_policy.cutoff_mode == "fixed"
    assert default_policy.cutoffs == {"A": 0.35, "B": 0.15, "C": 0.05}
    assert default_policy.tier_channel == {
        "A": "top_sales", "B": "sales", "C": "tmk", "D": "ai_bot"
    }
    assert default_policy.channels_by_cost == ("top_sales", "sales", "tmk", "ai_bot")
    assert default_policy.capacities()["ai_bot"] == float("inf")
    assert default_policy.control_share == 0.05


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["channels"].update(phone_robot=r["channels"]["tmk"]), "unknown channel"),
        (lambda r: r["channels"]["sales"].update(cost_per_lead=-1), "sales.cost_per_lead"),
        (lambda r: r["channels"]["tmk"].update(daily_capacity=0), "tmk.daily_capacity"),
        (lambda r: r["cutoffs"].update(A=0.1, B=0.2), "out of order"),
        (lambda r: r["cutoffs"].update(C=1.5), "cutoffs.C"),
        (lambda r: r.update(control_share=1.2), "control_share"),
        (lambda r: r.update(control_share=-0.1), "control_share"),
        (lambda r: r["tiers"].update(A="vip_sales"), "tiers.A"),
        (lambda r: r.pop("version"), "version: missing"),
        (lambda r: r["channels"]["sales"].pop("relative_conversion"), "relative_conversion"),
        (lambda r: r["cutoffs"].update(mode="magic"), "cutoffs.mode"),
        (lambda r: r["channels"]["top_sales"].update(capacity_share=0.04), "not both"),
        (lambda r: r.update(capacity_day_timezone="Mars/Olympus"), "capacity_day_timezone"),
        (lambda r: r.update(probability_reference="crystal_ball"), "probability_reference"),
    ],
)
def test_policy_validation_names_the_field(edit, message: str, tmp_path: Path) -> None:
    raw = _raw_policy()
    edit(raw)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PolicyError, match=message):
        load_policy(path)


def test_missing_policy_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "nope.yaml")


def test_policy_round_trips_through_yaml(tmp_path: Path, default_policy: RoutingPolicy) -> None:
    path = save_policy(default_policy, tmp_path / "p.yaml", header="a header")
    assert path.read_text().startswith("# a header")
    assert load_policy(path) == default_policy


def test_capacity_share_resolves_against_daily_volume() -> None:
    raw = _raw_policy()
    raw["channels"]["top_sales"] = {
        "cost_per_lead": 150, "capacity_share": 0.04, "relative_conversion": 2.6
    }
    policy = policy_from_dict(raw)
    assert policy.capacities(daily_leads=130)["top_sales"] == 6  # ceil(5.2)
    with pytest.raises(PolicyError, match="capacity_share needs a daily lead volume"):
        policy.capacities()
    resolved = policy.with_absolute_capacities(130)
    assert resolved.channels["top_sales"].daily_capacity == 6
    assert resolved.channels["top_sales"].capacity_share is None


def test_bump_version() -> None:
    assert bump_version("2026.11-1") == "2026.11-2"
    assert bump_version("2026.11") == "2026.11-1"


def test_tiers_are_monotonic_in_probability(default_policy: RoutingPolicy) -> None:
    rng = np.random.default_rng(1)
    p = np.sort(np.concatenate([rng.uniform(size=5000), [0.0, 0.05, 0.15, 0.35, 1.0]]))
    tiers, channels = default_policy.assign(p)
    rank = np.searchsorted(np.array(["A", "B", "C", "D"]), tiers.astype(str))
    assert np.all(np.diff(rank) <= 0)  # higher probability, never a lower tier
    assert tiers[p == 0.35][0] == "A" and tiers[p == 0.15][0] == "B"
    assert set(channels[tiers == "A"]) == {"top_sales"}
    assert set(channels[tiers == "D"]) == {"ai_bot"}
    with pytest.raises(ValueError, match="probability"):
        default_policy.assign([0.2, np.nan])


# ---- daily capacity --------------------------------------------------------------------------
def _sequential_reference(assigned, codes, capacities) -> np.ndarray:
    """Lead-by-lead reference of the cascade: fill the channel, else the next cheaper one."""
    used: dict[tuple[int, int], int] = {}
    final = []
    for channel, day in zip(assigned, codes, strict=True):
        position = channel
        while position < len(capacities) - 1 and used.get((day, position), 0) >= capacities[
            position
        ]:
            position += 1
        used[(day, position)] = used.get((day, position), 0) + 1
        final.append(position)
    return np.array(final)


def test_capacity_cascade_matches_sequential_serving_and_the_ledger(
    leads: pd.DataFrame, default_policy: RoutingPolicy
) -> None:
    frame = validate_leads(leads)
    days = day_index(frame["created_at"], default_policy.capacity_day_timezone)
    rng = np.random.default_rng(2)
    assigned = rng.integers(0, 4, size=len(frame))
    capacities = np.array([3.0, 10.0, 30.0, np.inf])
    outcome = apply_daily_capacity(assigned, days, capacities)
    expected = _sequential_reference(assigned, days.codes, capacities)
    np.testing.assert_array_equal(outcome.final, expected)
    for position in range(3):
        loads = np.bincount(days.codes[outcome.final == position], minlength=days.n_days)
        assert loads.max() <= capacities[position]
    assert int(outcome.overflow_leads) == int((outcome.final != assigned).sum()) > 0
    assert int(outcome.violation_pairs) == 0
    # a batch of assignments gives the same result as one at a time
    batch = apply_daily_capacity(np.stack([assigned, assigned[::-1]]), days, capacities)
    np.testing.assert_array_equal(batch.final[0], outcome.final)
    # the serving-time ledger routes the same way
    ledger_policy = replace(
        default_policy,
        channels={
            name: replace(spec, daily_capacity=None if np.isinf(cap) else cap)
            for (name, spec), cap in zip(
                ((n, default_policy.channels[n]) for n in default_policy.channels_by_cost),
                capacities, strict=True,
            )
        },
    )
    ledger = CapacityLedger(ledger_policy)
    order = ledger_policy.channels_by_cost
    served = [ledger.route(order[a], days.labels[d]) for a, d in zip(assigned, days.codes,
                                                                     strict=True)]
    np.testing.assert_array_equal(channel_positions(np.array(served), ledger_policy), expected)


def test_violations_counted_when_the_cheapest_channel_is_full(leads: pd.DataFrame) -> None:
    frame = validate_leads(leads)
    days = day_index(frame["created_at"], "UTC")
    assigned = np.full(len(frame), 3)
    outcome = apply_daily_capacity(assigned, days, np.array([5.0, 5.0, 5.0, 50.0]))
    daily = np.bincount(days.codes)
    assert int(outcome.violation_pairs) == int((daily > 50).sum()) > 0
    assert int(outcome.unplaced) == int(np.maximum(daily - 50, 0).sum())


def test_simulation_never_exceeds_capacity(leads: pd.DataFrame, default_policy) -> None:
    report = simulate(leads, default_policy)
    for name, result in report["policies"].items():
        assert result["capacity_violations"] == 0, name
        for channel, figures in result["per_channel"].items():
            if figures["daily_capacity"] is not None:
                assert figures["peak_daily_load"] <= figures["daily_capacity"], (name, channel)
    # the capacities bind: sending everyone to sales overflows on every day
    assert report["policies"]["everyone_to_sales"]["overflow_leads"] > 0


def test_everyone_to_sales_converts_the_sum_of_sales_propensities(
    leads: pd.DataFrame, default_policy: RoutingPolicy
) -> None:
    roomy = replace(
        default_policy,
        channels={**default_policy.channels,
                  "sales": replace(default_policy.channels["sales"], daily_capacity=10_000)},
    )
    result = simulate(leads, roomy)["policies"]["everyone_to_sales"]
    assert result["conversions"] == pytest.approx(leads["propensity_sales"].sum())
    assert result["total_cost"] == pytest.approx(60 * len(leads))
    assert result["overflow_leads"] == 0


def test_simulation_rejects_bad_input(leads: pd.DataFrame, default_policy) -> None:
    with pytest.raises(ValueError, match="missing column"):
        simulate(leads.drop(columns=["propensity_tmk"]), default_policy)
    naive = leads.assign(created_at=leads["created_at"].dt.tz_localize(None))
    with pytest.raises(ValueError, match="created_at: timestamps must be timezone-aware"):
        simulate(naive, default_policy)
    with pytest.raises(ValueError, match="probability"):
        simulate(leads.assign(probability=leads["probability"] + 1.0), default_policy)
    with pytest.raises(ValueError, match="funnel_step"):
        simulate(leads.assign(funnel_step="paid"), default_policy)


# ---- control group ---------------------------------------------------------------------------
def test_control_is_stable_across_calls_and_processes() -> None:
    ids = [f"person:{i}" for i in range(200)]
    first = [is_control(pid, 0.3, "salt-a") for pid in ids]
    assert first == [is_control(pid, 0.3, "salt-a") for pid in ids]
    code = (
        "import json; from routing.control import is_control; "
        f"print(json.dumps([is_control(p, 0.3, 'salt-a') for p in {ids!r}]))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=PROJECT_ROOT, env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert json.loads(other.stdout) == first
    assert list(control_mask(pd.Series(ids), 0.3, "salt-a")) == first
    assert [is_control(pid, 0.3, "salt-b") for pid in ids] != first  # the salt matters


def test_control_share_on_100k_persons() -> None:
    ids = pd.Series([f"person:{i:07d}" for i in range(100_000)])
    for share in (0.05, 0.2):
        assert control_mask(ids, share, "leadscore-routing-control").mean() == pytest.approx(
            share, abs=0.004
        )
    assert not control_mask(ids[:100], 0.0, "s").any()
    assert control_mask(ids[:100], 1.0, "s").all()
    with pytest.raises(ValueError, match="control_share"):
        is_control("person:1", 1.5, "s")


def test_control_leads_follow_the_rule(leads: pd.DataFrame, default_policy) -> None:
    policy = replace(default_policy, control_share=0.3)
    routed = route_with_control(leads, policy)
    control = routed["control"].to_numpy()
    assert 0.2 < control.mean() < 0.4
    rule = np.where(leads["rule_score"] >= 60, "sales", "ai_bot")
    np.testing.assert_array_equal(routed["channel"][control], rule[control])
    _, model_channels = policy.assign(leads["probability"])
    by_policy = (routed["arm"] == "policy").to_numpy()
    np.testing.assert_array_equal(routed["channel"][by_policy], model_channels[by_policy])
    tier_channel = routed["tier"].map(policy.tier_channel)
    assert (tier_channel == routed["channel"]).all()
    # all leads of a person share the decision
    assert routed.groupby(leads["person_id"])["control"].nunique().max() == 1
    assert (routed.loc[control, "arm"] == "control").all()
    assert (routed.loc[control | by_policy, "propensity"] == 1.0).all()


def test_exploration_draws_channels_uniformly_apart_from_control(default_policy) -> None:
    n = 40_000
    leads = pd.DataFrame({
        "lead_id": [f"lead:{i}" for i in range(n)],
        "person_id": [f"person:{i // 2}" for i in range(n)],  # two leads per person
        "probability": np.full(n, 0.01), "rule_score": np.full(n, 10.0),
    })
    policy = replace(default_policy, control_share=0.05, exploration_share=0.10)
    routed = route_with_control(leads, policy)
    arms = routed["arm"].value_counts(normalize=True)
    assert arms["control"] == pytest.approx(0.05, abs=0.01)
    assert arms["exploration"] == pytest.approx(0.10, abs=0.01)
    assert routed.groupby(leads["person_id"])["arm"].nunique().max() == 1  # per person
    explored = routed[routed["arm"] == "exploration"]
    # without exploration every lead (p = 0.01) would go to the AI bot
    shares = explored["channel"].value_counts(normalize=True)
    assert set(shares.index) == {"top_sales", "sales", "tmk", "ai_bot"}
    assert shares.max() - shares.min() < 0.04
    assert (explored["propensity"] == 0.25).all()
    assert (explored["tier"].map(policy.tier_channel) == explored["channel"]).all()
    # a replay draws the same channels; exploration never takes a control person
    np.testing.assert_array_equal(route_with_control(leads, policy)["channel"], routed["channel"])
    no_exploration = route_with_control(leads, replace(policy, exploration_share=0.0))
    np.testing.assert_array_equal(no_exploration["control"], routed["control"])
    assert (no_exploration["arm"] != "exploration").all()


@pytest.mark.parametrize("share", [-0.1, 0.6])
def test_exploration_share_out_of_range_is_refused(share: float) -> None:
    raw = yaml.safe_load(default_policy_path().read_text())
    raw["exploration_share"] = share
    with pytest.raises(PolicyError, match="exploration_share"):
        policy_from_dict(raw)


# ---- optimiser and goal ----------------------------------------------------------------------
def test_optimizer_writes_a_valid_optimized_policy(optimized, slices, tmp_path: Path) -> None:
    policy, report = optimized
    assert policy.cutoff_mode == "optimized"
    assert policy.version == "2026.11-2"
    assert policy.cutoffs["A"] >= policy.cutoffs["B"] >= policy.cutoffs["C"]
    assert policy.optimization["from_version"] == "2026.11-1"
    assert policy.optimization["tuned_until"] == slices[0]["created_at"].max().isoformat()
    # the default objective meets the goal on the estimates, with room on both sides
    assert report["objective"] == "goal_margin" and report["objective_constraint_met"]
    best = report["rule_policies_estimated"][report["best_rule_policy"]]
    estimated = report["estimated"]
    slack = report["goal_slack"]
    assert slack > 0
    assert estimated["conversions"] >= (1 + slack) * best["conversions"] - 1e-6
    assert estimated["cost_per_conversion"] <= (
        (1 - slack) * 0.85 * best["cost_per_conversion"] + 1e-6
    )
    assert estimated["capacity_violations"] == 0
    assert all(p["conversions"] <= q["conversions"]
               for p, q in zip(report["frontier"], report["frontier"][1:], strict=False))
    reloaded = load_policy(save_policy(policy, tmp_path / "opt.yaml"))
    assert reloaded == policy


def test_goal_met_with_a_good_score(slices, optimized) -> None:
    policy, _ = optimized
    report = simulate(slices[1], policy)  # tuned on the earlier days, judged on the later ones
    goal, results = report["goal"], report["policies"]
    best = goal["best_rule_policy"]
    assert best in ("rule_2d", "rule_funnel")
    assert results[best]["conversions"] == max(
        results[n]["conversions"] for n in ("rule_2d", "rule_funnel")
    )
    assert goal["met"], goal
    assert results["model"]["conversions"] >= results[best]["conversions"]
    assert goal["cpa_reduction"] >= 0.15
    assert "uplift" in report["drivers"]


def test_goal_not_met_with_a_useless_score(default_policy: RoutingPolicy) -> None:
    noise = synthetic_leads(score_noise=None, seed=3)
    tuning, test = split_by_day(noise, 0.5, default_policy.capacity_day_timezone)
    policy, _ = optimize_cutoffs(tuning, default_policy, grid_size=8)
    goal = simulate(test, policy)["goal"]
    assert not goal["met"]
    met_by_numbers = (
        goal["model_conversions"] >= goal["best_rule_conversions"]
        and goal["cpa_reduction"] >= goal["required_cpa_reduction"]
    )
    assert goal["met"] == met_by_numbers


def test_strict_capacity_and_other_objectives(leads: pd.DataFrame, default_policy) -> None:
    small = leads.iloc[:1200]
    _, strict = optimize_cutoffs(small, default_policy, strict_capacity=True, grid_size=8)
    assert strict["estimated"]["overflow_leads"] == 0
    cheap, value = optimize_cutoffs(
        small, default_policy, objective="net_value", value_per_conversion=50, grid_size=8
    )
    rich, _ = optimize_cutoffs(
        small, default_policy, objective="net_value", value_per_conversion=5000, grid_size=8
    )
    assert rich.cutoffs["C"] <= cheap.cutoffs["C"]  # worth more → more leads to people
    _, budget = optimize_cutoffs(
        small, default_policy, objective="budget", budget_per_lead=10, grid_size=8
    )
    assert budget["estimated"]["total_cost"] <= 10 * len(small)
    _, match = optimize_cutoffs(small, default_policy, objective="match_rules", grid_size=8)
    assert match["estimated"]["conversions"] >= match["target_conversions"]
    _, cap = optimize_cutoffs(small, default_policy, objective="cpa_cap", grid_size=8)
    assert cap["objective_constraint_met"]
    assert cap["estimated"]["cost_per_conversion"] <= cap["max_cost_per_conversion"]
    best = cap["rule_policies_estimated"][cap["best_rule_policy"]]
    assert cap["max_cost_per_conversion"] == pytest.approx(0.8 * best["cost_per_conversion"])
    with pytest.raises(ValueError, match="objective"):
        optimize_cutoffs(small, default_policy, objective="vibes")
    with pytest.raises(ValueError, match="value_per_conversion"):
        optimize_cutoffs(small, default_policy, objective="net_value")
    with pytest.raises(ValueError, match="goal_reduction"):
        optimize_cutoffs(small, default_policy, goal_reduction=1.0)
    assert value["objective"] == "net_value"


def test_goal_slack_is_the_smaller_relative_room_on_the_goal() -> None:
    # rule: 100 conversions at 200 RMB each; goal: ≥ 100 conversions at ≤ 170 RMB each
    slack = goal_slack([110, 100, 120, 0], [13_600, 8_500, 20_400, 0], 100, 200.0, 0.15)
    np.testing.assert_allclose(slack[:3], [0.10, 0.0, 0.0], atol=1e-9)
    assert slack[3] == -np.inf  # no conversions: no room
    # 110 conversions at 136 RMB: conversions 10% above, CPA 20% below the 170 cap → 10%
    assert goal_slack(110, 110 * 136, 100, 200.0, 0.15) == pytest.approx(0.10)


def test_goal_margin_picks_the_candidate_with_most_room_on_both_sides() -> None:
    table = pd.DataFrame({
        "conversions": [130.0, 101.0, 112.0, 98.0],
        # CPA: 168 (1% under the cap), 110 (35% under), 136 (20% under), 100 (too few)
        "cost": [130 * 168.0, 101 * 110.0, 112 * 136.0, 98 * 100.0],
    })
    limits = {"rule_conversions": 100.0, "rule_cost_per_conversion": 200.0,
              "goal_reduction": 0.15, "max_cost_per_conversion": 160.0}
    assert _select(table, "goal_margin", limits) == (2, True)
    # cpa_cap spends up to its CPA ceiling instead: the most conversions under 160 RMB
    assert _select(table, "cpa_cap", limits) == (2, True)
    limits["max_cost_per_conversion"] = 170.0
    assert _select(table, "cpa_cap", limits) == (0, True)
    hopeless = table.assign(cost=table["conversions"] * 500.0)
    index, met = _select(hopeless, "goal_margin", limits)
    assert not met and index == 0  # least short of the goal, reported as not met


def test_goal_margin_beats_every_rule_when_the_estimates_allow_it() -> None:
    table = pd.DataFrame({"conversions": [130.0, 101.0, 112.0, 98.0],
                          "cost": [130 * 168.0, 101 * 110.0, 112 * 136.0, 98 * 100.0]})
    # best rule by conversions: 100 at 200 RMB; another rule converts 95 at 150 RMB
    limits = {"rule_conversions": 100.0, "rule_cost_per_conversion": 200.0,
              "every_rule_conversions": 100.0, "every_rule_cost_per_conversion": 150.0,
              "goal_reduction": 0.15}
    assert goal_target(table, limits) == "every_rule"
    # only candidate 1 has ≥ 100 conversions at ≤ 0.85 × 150 = 127.5 RMB per conversion
    assert _select(table, "goal_margin", limits) == (1, True)
    limits["every_rule_cost_per_conversion"] = 100.0  # cap 85 RMB: out of reach
    assert goal_target(table, limits) == "rule"
    assert _select(table, "goal_margin", limits) == (2, True)


def test_split_by_day_and_after_tuning(leads: pd.DataFrame, default_policy) -> None:
    tuning, test = split_by_day(leads, 0.5, default_policy.capacity_day_timezone)
    assert len(tuning) + len(test) == len(leads)
    assert tuning["created_at"].max() < test["created_at"].min()
    tz = default_policy.capacity_day_timezone
    tuning_days = tuning["created_at"].dt.tz_convert(tz).dt.date.nunique()
    test_days = test["created_at"].dt.tz_convert(tz).dt.date.nunique()
    assert abs(tuning_days - test_days) <= 1
    everything, nothing = split_by_day(leads, 1.0, tz)
    assert len(everything) == len(leads) and nothing.empty
    with pytest.raises(ValueError, match="tuning_share"):
        split_by_day(leads, 0.0, tz)
    one_day = leads[leads["created_at"] < leads["created_at"].min() + pd.Timedelta(hours=2)]
    with pytest.raises(ValueError, match="single day"):
        split_by_day(one_day, 0.5, "UTC")
    assert len(split_by_day(one_day, 1.0, "UTC")[0]) == len(one_day)
    # a policy remembers its tuning leads; only later ones are judged
    policy = replace(default_policy, optimization={
        "tuned_until": tuning["created_at"].max().isoformat()
    })
    later, dropped = after_tuning(leads, policy)
    assert dropped == len(tuning) and set(later["lead_id"]) == set(test["lead_id"])
    assert after_tuning(leads, default_policy) == (leads, 0)  # not optimised: all leads
    with pytest.raises(ValueError, match="tuned"):
        after_tuning(tuning, policy)


# ---- CLI -------------------------------------------------------------------------------------
def test_cli_optimize_then_simulate(tmp_path: Path, monkeypatch, leads: pd.DataFrame) -> None:
    monkeypatch.setenv("LEADSCORE_WORKDIR", str(tmp_path))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        missing = runner.invoke(route_app, ["optimize", "--workdir", str(tmp_path)])
        assert missing.exit_code == 2
        assert "leadscore train" in missing.output

        small = leads.iloc[:1500]
        (tmp_path / "reports").mkdir(exist_ok=True)
        (tmp_path / "data" / "truth").mkdir(parents=True, exist_ok=True)
        small.drop(columns=list(PROPENSITY_COLUMNS.values())).to_parquet(
            tmp_path / "reports" / "holdout_scored.parquet"
        )
        truth = small[["lead_id", *PROPENSITY_COLUMNS.values()]].assign(true_person_id="x")
        truth.to_parquet(tmp_path / "data" / "truth" / "leads_truth.parquet")

        result = runner.invoke(
            route_app, ["optimize", "--workdir", str(tmp_path), "--grid-size", "8"]
        )
        assert result.exit_code == 0, result.output
        written = load_policy(tmp_path / "reports" / "routing_policy.yaml")
        assert written.cutoff_mode == "optimized"
        assert (tmp_path / "reports" / "routing_optimize.json").exists()

        report_path = tmp_path / "reports" / "routing_simulation.json"
        result = runner.invoke(
            route_app, ["simulate", "--workdir", str(tmp_path), "--report", str(report_path)]
        )
        assert result.exit_code == 0, result.output
        report = json.loads(report_path.read_text())
        assert report["policy_version"] == written.version  # the optimised policy was used
        # judged only on the leads after those the cut-offs were tuned on
        tuned_until = pd.Timestamp(written.optimization["tuned_until"])
        assert report["tuning_leads_excluded"] == int((small["created_at"] <= tuned_until).sum())
        assert 0 < report["leads"] == len(small) - report["tuning_leads_excluded"]
        assert pd.Timestamp(report["period"]["first_day"]).date() >= (
            tuned_until.tz_convert(written.capacity_day_timezone).date()
        )
        result = runner.invoke(
            route_app, ["simulate", "--workdir", str(tmp_path), "--report", str(report_path),
                        "--include-tuning-leads"],
        )
        assert result.exit_code == 0, result.output
        assert json.loads(report_path.read_text())["leads"] == len(small)
        assert set(report["policies"]) >= {"everyone_to_sales", "rule_2d", "rule_funnel", "model"}
        assert report_path.with_suffix(".png").stat().st_size > 1000
        assert set(FOLLOWUP_CHANNELS) == set(report["policies"]["model"]["per_channel"])

        bad = tmp_path / "bad.yaml"
        raw = _raw_policy()
        raw["channels"]["sales"]["cost_per_lead"] = -5
        bad.write_text(yaml.safe_dump(raw))
        result = runner.invoke(
            route_app,
            ["simulate", "--workdir", str(tmp_path), "--report", str(report_path), "--policy",
             str(bad)],
        )
        assert result.exit_code == 2
        assert "cost_per_lead" in result.output
        assert "Traceback" not in result.output
    finally:
        get_settings.cache_clear()
