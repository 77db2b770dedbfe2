"""``leadscore route``: optimise tier cut-offs and simulate routing policies.

``run_optimize`` and ``run_simulate`` are plain functions over a work folder (the demo calls
them); the Typer commands below are thin wrappers with clean errors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.table import Table

from commands.common import WorkdirOption, console, fail, settings_for
from leadscore.config import Settings
from routing.optimize import OBJECTIVES, optimize_cutoffs
from routing.policy import PolicyError, RoutingPolicy, load_policy, save_policy
from routing.simulate import (
    SCORED_COLUMNS,
    after_tuning,
    join_truth,
    simulate,
    split_by_day,
    write_chart,
)

SCORED_FILE = "holdout_scored.parquet"
DEFAULT_TUNING_SHARE = 0.5  # earliest half of the held-out days tunes, the later half judges
OPTIMIZED_POLICY_FILE = "routing_policy.yaml"
OPTIMIZE_REPORT_FILE = "routing_optimize.json"

app = typer.Typer(
    name="route",
    help="Route leads to follow-up channels by tier: optimise cut-offs, simulate policies.",
    no_args_is_help=True,
)


# ---- plain functions -------------------------------------------------------------------------
def _read_parquet(path: Path, what: str, hint: str) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} not found: {hint}")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what} {path} is not a readable Parquet file: {exc}") from None


def read_scored(settings: Settings, path: Path | None = None) -> pd.DataFrame:
    """Held-out scored leads (default ``reports/holdout_scored.parquet``)."""
    path = path or settings.reports_dir / SCORED_FILE
    frame = _read_parquet(path, "scored leads", "run `leadscore train` first")
    missing = [c for c in SCORED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"scored leads {path}: missing column(s) {missing}")
    return frame


def resolve_policy(settings: Settings, path: Path | None, prefer_optimized: bool) -> RoutingPolicy:
    """The explicit file, else (when asked) the optimised one in reports/, else
    ``settings.routing_policy``, else the packaged default."""
    if path is None and prefer_optimized:
        optimized = settings.reports_dir / OPTIMIZED_POLICY_FILE
        path = optimized if optimized.exists() else None
    if path is None:
        path = settings.routing_policy
    return load_policy(path)


def run_optimize(
    settings: Settings,
    scored_path: Path | None = None,
    policy_path: Path | None = None,
    out_path: Path | None = None,
    tuning_share: float = DEFAULT_TUNING_SHARE,
    **options: Any,
) -> tuple[Path, dict[str, Any]]:
    """Optimise cut-offs on the tuning slice of held-out scored leads (their earliest
    ``tuning_share`` of days; `route simulate` judges the policy on the later ones); write the
    policy YAML and a JSON report.

    Returns the policy path and the report (written next to it as ``routing_optimize.json``
    when the default output is used, else ``<out>.report.json``).
    """
    scored = read_scored(settings, scored_path)
    policy = resolve_policy(settings, policy_path, prefer_optimized=False)
    tuning, later = split_by_day(scored, tuning_share, policy.capacity_day_timezone)
    new_policy, report = optimize_cutoffs(tuning, policy, **options)
    report["tuning_share"] = tuning_share
    report["test_leads_left"] = int(len(later))
    out_path = out_path or settings.reports_dir / OPTIMIZED_POLICY_FILE
    header = (
        f"Written by `leadscore route optimize` from policy {policy.version} "
        f"({report['objective']} on {report['holdout']['leads']} held-out leads, tuning slice "
        f"until {new_policy.optimization['tuned_until']}).\n"
        "Field reference: leadscore/defaults/routing_policy.yaml"
    )
    save_policy(new_policy, out_path, header=header)
    report_path = (
        settings.reports_dir / OPTIMIZE_REPORT_FILE
        if out_path == settings.reports_dir / OPTIMIZED_POLICY_FILE
        else out_path.with_suffix(".report.json")
    )
    report["policy_path"] = str(out_path)
    report_path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    report["report_path"] = str(report_path)
    return out_path, report


def run_simulate(
    settings: Settings,
    report_path: Path,
    scored_path: Path | None = None,
    policy_path: Path | None = None,
    truth_path: Path | None = None,
    rule_threshold: float = 60.0,
    include_tuning_leads: bool = False,
) -> dict[str, Any]:
    """Simulate the policies on held-out leads with their true propensities; write the JSON
    report and a PNG chart next to it (same name, ``.png``).

    Leads up to the policy's ``optimization.tuned_until`` (those its cut-offs were tuned on)
    are left out unless ``include_tuning_leads`` (an in-sample figure)."""
    scored = read_scored(settings, scored_path)
    truth_path = truth_path or settings.truth_dir / "leads_truth.parquet"
    truth = _read_parquet(truth_path, "truth table", "run `leadscore generate` first")
    policy = resolve_policy(settings, policy_path, prefer_optimized=True)
    excluded = 0
    if not include_tuning_leads:
        scored, excluded = after_tuning(scored, policy)
    report = simulate(join_truth(scored, truth), policy, rule_threshold=rule_threshold)
    report["objective"] = policy.optimization.get("objective")
    report["tuning_leads_excluded"] = excluded
    report["tuned_until"] = policy.optimization.get("tuned_until")
    report_path = Path(report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    chart_path = write_chart(report, report_path.with_suffix(".png"))
    report["chart"] = str(chart_path)
    report_path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return report


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
    rule_threshold: Annotated[float, typer.Option(help="2-D rule score threshold.")] = 60.0,
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
