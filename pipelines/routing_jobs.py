"""Routing jobs over a work folder: optimise tier cut-offs, simulate the policies.

Plain functions; ``leadscore route`` (``commands.route``) and the main job call them. Which
policy is in force is decided in one place, :func:`routing.policy.resolve_active_policy`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from features.score2d import load_scoring_tables
from leadscore.config import Settings
from routing.optimize import optimize_cutoffs
from routing.policy import (
    BASE_DIGEST_KEY,
    base_policy_path,
    file_digest,
    load_policy,
    optimised_policy_path,
    resolve_active_policy,
    save_policy,
)
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
OPTIMIZE_REPORT_FILE = "routing_optimize.json"


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
    base_path = Path(policy_path) if policy_path is not None else base_policy_path(settings)
    policy = load_policy(base_path)
    tuning, later = split_by_day(scored, tuning_share, policy.capacity_day_timezone)
    options.setdefault("rule_threshold",
                       load_scoring_tables(settings.scoring_config).rule_threshold)
    new_policy, report = optimize_cutoffs(tuning, policy, **options)
    new_policy.optimization[BASE_DIGEST_KEY] = file_digest(base_path)
    report["tuning_share"] = tuning_share
    report["test_leads_left"] = int(len(later))
    out_path = out_path or optimised_policy_path(settings)
    header = (
        f"Written by `leadscore route optimize` from policy {policy.version} "
        f"({report['objective']} on {report['holdout']['leads']} held-out leads, tuning slice "
        f"until {new_policy.optimization['tuned_until']}).\n"
        "Field reference: leadscore/defaults/routing_policy.yaml"
    )
    save_policy(new_policy, out_path, header=header)
    report_path = (
        settings.reports_dir / OPTIMIZE_REPORT_FILE
        if out_path == optimised_policy_path(settings)
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
    rule_threshold: float | None = None,
    include_tuning_leads: bool = False,
) -> dict[str, Any]:
    """Simulate the policies on held-out leads with their true propensities; write the JSON
    report and a PNG chart next to it (same name, ``.png``).

    Leads up to the policy's ``optimization.tuned_until`` (those its cut-offs were tuned on)
    are left out unless ``include_tuning_leads`` (an in-sample figure). ``rule_threshold``
    defaults to ``rule.sales_threshold`` of the user's scoring tables."""
    scored = read_scored(settings, scored_path)
    truth_path = truth_path or settings.truth_dir / "leads_truth.parquet"
    truth = _read_parquet(truth_path, "truth table", "run `leadscore generate` first")
    active = resolve_active_policy(settings, policy_path)
    policy = active.policy
    excluded = 0
    if not include_tuning_leads:
        scored, excluded = after_tuning(scored, policy)
    if rule_threshold is None:
        rule_threshold = load_scoring_tables(settings.scoring_config).rule_threshold
    report = simulate(join_truth(scored, truth), policy, rule_threshold=rule_threshold)
    report["objective"] = policy.optimization.get("objective")
    report["tuning_leads_excluded"] = excluded
    report["tuned_until"] = policy.optimization.get("tuned_until")
    report["policy_path"] = str(active.path)
    report["policy_source"] = active.source
    if active.note:
        report["policy_note"] = active.note
    report_path = Path(report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    chart_path = write_chart(report, report_path.with_suffix(".png"))
    report["chart"] = str(chart_path)
    report_path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return report
