"""``leadscore route``: optimise tier cut-offs and simulate routing policies.

Thin Typer commands over :mod:`pipelines.routing_jobs`, with clean errors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from commands.common import WorkdirOption, console, fail, settings_for
from pipelines.routing_jobs import DEFAULT_TUNING_SHARE, SCORED_FILE, run_optimize, run_simulate
from routing.optimize import OBJECTIVES
from routing.policy import PolicyError

app = typer.Typer(
    name="route",
    help="Route leads to follow-up channels by tier: optimise cut-offs, simulate policies.",
    no_args_is_help=True,
)


# ---- commands --------------------------------------------------------------------------------
ScoredOption = Annotated[
    Path | None,
    typer.Option("--scored", help="Held-out scored leads (default: reports/" + SCORED_FILE + ")."),
]
PolicyOption = Annotated[
    Path | None, typer.Option("--policy", help="Routing policy YAML (default: see --help text).")
]


def _money(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        f"{value:,.1f}")


def allocation_table(allocation: dict[str, Any]) -> Table:
    """What `route optimize` recorded under ``optimization.allocation``: the source (learned
    effects or the cold-start prior) and, per channel, the learned effect over the AI bot with
    its interval, the shadow price; λ and the evidence in the caption."""
    source = str(allocation.get("source"))
    evidence = allocation.get("evidence") or {}
    sources = evidence.get("sources") or {}
    counts = (f"{evidence['randomised_leads']} randomised leads"
              + (f" ({sources.get('history', 0)} history, {sources.get('prediction_log', 0)} "
                 "prediction log)" if sources else "")
              if "randomised_leads" in evidence else "")
    if source == "uplift":
        caption = (f"λ = {allocation['cost_weight']:.5g} conversions per RMB; model "
                   f"{allocation.get('model')}; effects: DR on "
                   f"{allocation.get('effects_estimated_on_randomised_leads', 0)} tuning-day "
                   f"randomised leads; trained on {counts}")
        table = Table(title="allocation: learned effects (source uplift)",
                      title_justify="left", caption=escape(caption), caption_justify="left")
        for column in ("channel", "effect over ai_bot (DR) [95% CI]",
                       "mean predicted uplift", "shadow price"):
            table.add_column(column, justify="left" if column == "channel" else "right")
        learned = allocation.get("learned_effects") or {}
        shadow = allocation.get("shadow_prices") or {}
        for channel in sorted(set(learned) | set(shadow)):
            effect = learned.get(channel) or {}
            low, high = effect.get("ci") or (math.nan, math.nan)
            table.add_row(
                escape(channel),
                f"{effect['dr_effect_over_ai_bot']:+.4f} [{low:+.4f}, {high:+.4f}]"
                if "dr_effect_over_ai_bot" in effect else "-",
                f"{effect['mean_predicted_uplift']:+.4f}"
                if "mean_predicted_uplift" in effect else "-",
                f"{shadow[channel]:.5g}" if channel in shadow else "-")
        return table
    caption = f"reason: {allocation.get('reason', '-')}" + (f"; {counts}" if counts else "")
    table = Table(title=f"allocation: {source} (routing by tiers and relative_conversion)",
                  title_justify="left", caption=escape(caption), caption_justify="left")
    table.add_column("channel")
    table.add_column("relative_conversion", justify="right")
    for channel, value in (allocation.get("relative_conversion") or {}).items():
        table.add_row(escape(channel), f"{value:.3f}")
    return table


@app.command("optimize")
def optimize_command(
    workdir: WorkdirOption = None,
    scored: ScoredOption = None,
    policy: PolicyOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output policy (default: reports/routing_policy.yaml)."),
    ] = None,
    objective: Annotated[
        str, typer.Option(help=f"One of {', '.join(OBJECTIVES)}.")
    ] = "goal_margin",
    goal_reduction: Annotated[
        float, typer.Option(min=0.0, max=0.99,
                            help="goal_margin: the goal's cost/conversion cut vs the best rule.")
    ] = 0.15,
    tuning_share: Annotated[
        float, typer.Option(min=0.01, max=1.0,
                            help="Earliest share of held-out days to tune on (rest: simulate).")
    ] = DEFAULT_TUNING_SHARE,
    cpa_reduction: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="cpa_cap: cost/conversion below best rule.")
    ] = 0.2,
    margin: Annotated[
        float, typer.Option(min=0.0, help="match_rules: conversions above the best rule.")
    ] = 0.02,
    value_per_conversion: Annotated[
        float | None, typer.Option(help="net_value: RMB a conversion is worth.")
    ] = None,
    budget_per_lead: Annotated[
        float | None, typer.Option(help="budget: average RMB per lead.")
    ] = None,
    grid_size: Annotated[int, typer.Option(min=3, help="Quantile grid size.")] = 16,
    strict_capacity: Annotated[
        bool, typer.Option(help="Only cut-offs that fit every day without overflow.")
    ] = False,
) -> None:
    """Pick tier cut-offs on held-out leads (policy from --policy, settings.routing_policy or
    the packaged default); write the optimised policy for the service."""
    settings = settings_for(workdir)
    try:
        with console.status("optimising cut-offs…"):
            path, report = run_optimize(
                settings, scored, policy, out, tuning_share=tuning_share, objective=objective,
                goal_reduction=goal_reduction, cpa_reduction=cpa_reduction,
                conversion_margin=margin,
                value_per_conversion=value_per_conversion, budget_per_lead=budget_per_lead,
                grid_size=grid_size, strict_capacity=strict_capacity,
            )
    except (ValueError, FileNotFoundError, PolicyError) as exc:
        fail(str(exc))
    table = Table(title=f"route optimize → {report['policy_version']}", title_justify="left")
    for column in ("policy", "conversions (est.)", "cost", "cost/conversion"):
        table.add_column(column)
    for name, r in report["rule_policies_estimated"].items():
        table.add_row(name, f"{r['conversions']:.1f}", _money(r["cost"]),
                      _money(r["cost_per_conversion"]))
    est = report["estimated"]
    table.add_row("model", f"{est['conversions']:.1f}", _money(est["total_cost"]),
                  _money(est["cost_per_conversion"]))
    console.print(table)
    allocation = report.get("allocation")
    if allocation:
        console.print(allocation_table(allocation))
    cut = report["cutoffs"]
    console.print(f"cut-offs A={cut['A']:.4f} B={cut['B']:.4f} C={cut['C']:.4f} "
                  f"({report['objective']}, estimated room on the goal "
                  f"{report['goal_slack']:+.1%}); tuned on {report['holdout']['leads']} leads, "
                  f"{report['test_leads_left']} later ones left to simulate; policy {path}; "
                  f"report {report['report_path']}")


@app.command("simulate")
def simulate_command(
    report: Annotated[Path, typer.Option("--report", help="JSON report path (chart: .png).")],
    workdir: WorkdirOption = None,
    scored: ScoredOption = None,
    policy: PolicyOption = None,
    truth: Annotated[
        Path | None, typer.Option("--truth", help="Default: data/truth/leads_truth.parquet.")
    ] = None,
    rule_threshold: Annotated[float | None, typer.Option(
        help="2-D rule score threshold (default: rule.sales_threshold of the scoring tables).")
    ] = None,
    require_goal: Annotated[
        bool, typer.Option(help="Exit with code 1 when the goal is not met.")
    ] = False,
    include_tuning_leads: Annotated[
        bool, typer.Option(help="Also judge on the leads the cut-offs were tuned on "
                                "(in-sample; default: only later leads).")
    ] = False,
) -> None:
    """Compare everyone-to-sales, the 2-D rule, the funnel rule and the model policy (the
    optimised reports/routing_policy.yaml when present) on held-out leads' true propensities."""
    settings = settings_for(workdir)
    try:
        result = run_simulate(settings, report, scored, policy, truth, rule_threshold,
                              include_tuning_leads)
    except (ValueError, FileNotFoundError, PolicyError) as exc:
        fail(str(exc))
    table = Table(title=f"route simulate (policy {result['policy_version']})",
                  title_justify="left")
    for column in ("policy", "conversions", "cost", "cost/conversion", "overflow", "violations"):
        table.add_column(column)
    for name, r in result["policies"].items():
        table.add_row(name, f"{r['conversions']:.1f}", _money(r["total_cost"]),
                      _money(r["cost_per_conversion"]), str(r["overflow_leads"]),
                      str(r["capacity_violations"]))
    console.print(table)
    if result["tuning_leads_excluded"]:
        console.print(f"judged on {result['leads']} leads after {result['tuned_until']} "
                      f"({result['tuning_leads_excluded']} tuning leads left out)")
    goal = result["goal"]
    reduction = goal["cpa_reduction"]
    shown = "n/a" if reduction is None else f"{reduction:.1%}"
    console.print(
        f"goal {'[green]met[/]' if goal['met'] else '[red]not met[/]'}: cost/conversion "
        f"{shown} below {goal['best_rule_policy']} (≥ {goal['required_cpa_reduction']:.0%} "
        f"needed), conversions {goal['model_conversions']:.1f} vs "
        f"{goal['best_rule_conversions']:.1f}; report {report}, chart {result['chart']}"
    )
    for name, versus in goal["versus"].items():
        cut = versus["cpa_reduction"]
        console.print(f"  vs {name}: conversions ×{versus['conversions_ratio']:.3f}, "
                      f"cost/conversion {'n/a' if cut is None else f'{-cut:+.1%}'}")
    if require_goal and not goal["met"]:
        raise typer.Exit(1)


@app.command("evaluate")
def evaluate_command(
    workdir: WorkdirOption = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="JSON report path (default: reports/routing_evaluate.json).")] = None,
    scored: ScoredOption = None,
    policy: PolicyOption = None,
    truth: Annotated[Path | None, typer.Option(
        "--truth", help="Generator truth, used when present (default: "
        "data/truth/leads_truth.parquet).")] = None,
    tuning_share: Annotated[float, typer.Option(
        min=0.01, max=0.99, help="Earliest share of held-out days to tune on (rest: judged).")
    ] = DEFAULT_TUNING_SHARE,
    n_boot: Annotated[int, typer.Option("--n-boot", min=100, help="Bootstrap draws.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Estimate every policy (uplift, probability tiers, the rules fixed and optimised,
    everyone-to-X) off-policy by IPS, SNIPS and DR on the later randomised held-out leads."""
    from pipelines.routing_jobs import run_evaluate
    from routing.allocate import AllocationError
    from routing.offpolicy import OffPolicyError

    settings = settings_for(workdir)
    try:
        with console.status("evaluating policies off-policy…"):
            result = run_evaluate(settings, report, scored, policy, truth, tuning_share,
                                  n_boot, seed)
    except (ValueError, FileNotFoundError, PolicyError, OffPolicyError, AllocationError) as exc:
        fail(str(exc))
    has_truth = any("truth" in r for r in result["policies"].values())
    table = Table(title=f"route evaluate: {result['judged_randomised_leads']} randomised of "
                  f"{result['judged_leads']} judged leads, {result['judged_days']} days",
                  title_justify="left")
    columns = ["policy", "conv. (DR)", "cost/conv. DR [95% CI]", "SNIPS", "IPS"]
    columns += ["truth"] if has_truth else []
    for column in [*columns, "violations"]:
        table.add_column(column)
    for name, r in result["policies"].items():
        dr = r.get("dr") or r["snips"]
        ci = dr["cost_per_conversion_ci"]
        row = [name, f"{dr['conversions']:.1f}",
               f"{_money(dr['cost_per_conversion'])} [{_money(ci[0]) if ci else '-'}, "
               f"{_money(ci[1]) if ci else '-'}]",
               _money(r["snips"]["cost_per_conversion"]), _money(r["ips"]["cost_per_conversion"])]
        if has_truth:
            row.append(_money(r["truth"]["cost_per_conversion"]))
        table.add_row(*row, str(r["capacity_violations"]))
    console.print(table)
    best = result.get("uplift_vs_best_optimised_rule")
    for versus in (result.get("uplift_vs_optimised_rules") or {best["against"]: best}
                   if best else {}).values():
        for estimator in ("truth", "dr", "snips"):
            if estimator in versus:
                v = versus[estimator]
                low, high = v["cost_per_conversion_change_ci"] or (math.nan, math.nan)
                console.print(f"uplift vs {versus['against']} ({estimator}): cost/conversion "
                              f"{v['cost_per_conversion_change']:+.1%} [{low:+.1%}, {high:+.1%}]"
                              f", conversions {v['conversions_difference']:+.1f}")
    console.print(f"report {result['report_path']}")
