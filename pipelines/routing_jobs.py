"""Routing jobs over a work folder: optimise tier cut-offs, simulate the policies.

Plain functions; ``leadscore route`` (``commands.route``) and the main job call them. Which
policy is in force is decided in one place, :func:`routing.policy.resolve_active_policy`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.score2d import load_scoring_tables
from leadscore.config import Settings
from leadscore.schemas import FOLLOWUP_CHANNELS
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
    day_index,
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
    learn_allocation: bool = True,
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
    if learn_allocation:
        allocation = learned_allocation(settings, tuning, new_policy,
                                        options["rule_threshold"])
        new_policy.optimization["allocation"] = allocation
        report["allocation"] = allocation
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


# ---- learned effects: uplift training, allocation record, off-policy evaluation ------------
EVALUATE_REPORT_FILE = "routing_evaluate.json"


def run_uplift_train(settings: Settings, policy_path: Path | None = None,
                     **options: Any) -> dict[str, Any]:
    """``leadscore uplift train`` without ``--csv``: the channel uplift model on the work
    folder's randomised leads (``training.uplift_work``), costs from the routing policy."""
    from training.uplift_work import train_uplift_work

    policy = load_policy(Path(policy_path) if policy_path is not None
                         else base_policy_path(settings))
    costs = {name: spec.cost_per_lead for name, spec in policy.channels.items()}
    return train_uplift_work(settings, costs, **options)


def load_uplift_champion(settings: Settings) -> tuple[Any, str] | None:
    """The ``lead-uplift`` champion (registry), else the work folder's saved model, with where
    it came from; None when there is neither."""
    from mlflow import MlflowClient

    from training.registry import CHAMPION, alias_version, point_mlflow_at
    from training.uplift_registry import PRODUCT_UPLIFT_MODEL, load_uplift_model
    from training.uplift_work import uplift_model_dir

    if settings.mlruns_dir.exists() or settings.mlflow_tracking_uri:
        try:
            point_mlflow_at(settings)
            if alias_version(MlflowClient(), PRODUCT_UPLIFT_MODEL, CHAMPION) is not None:
                uri = f"models:/{PRODUCT_UPLIFT_MODEL}@{CHAMPION}"
                return load_uplift_model(uri), uri
        except Exception:  # noqa: BLE001 - registry unreachable: the saved folder, if any
            pass
    folder = uplift_model_dir(settings)
    if (folder / "MLmodel").is_file():
        return load_uplift_model(folder), str(folder)
    return None


def _evaluation_frame(settings: Settings, scored_path: Path | None,
                      truth_path: Path | None) -> pd.DataFrame:
    from training.uplift_work import training_frame

    scored = read_scored(settings, scored_path)
    history = training_frame(settings)
    keep = [c for c in history.columns if c not in scored.columns or c == "lead_id"]
    frame = scored.merge(history[keep], on="lead_id", how="left", validate="one_to_one")
    if frame["label"].isna().any():
        raise ValueError(f"scored leads: {int(frame['label'].isna().sum())} lead(s) have no row "
                         "in the training set (closed outcome window); rebuild it")
    truth_path = truth_path or settings.truth_dir / "leads_truth.parquet"
    if truth_path.exists():
        frame = join_truth(frame, pd.read_parquet(truth_path))
    return frame


def run_evaluate(settings: Settings, report_path: Path | None = None,
                 scored_path: Path | None = None, policy_path: Path | None = None,
                 truth_path: Path | None = None, tuning_share: float = DEFAULT_TUNING_SHARE,
                 n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``leadscore route evaluate``: every policy estimated off-policy on the later randomised
    held-out leads (``routing.evaluate``); the JSON report (default
    ``reports/routing_evaluate.json``)."""
    from routing.evaluate import channel_matrix, evaluate_assignments, policy_assignments

    policy = load_policy(Path(policy_path) if policy_path is not None
                         else base_policy_path(settings))
    frame = _evaluation_frame(settings, scored_path, truth_path)
    if any(spec.capacity_share is not None for spec in policy.channels.values()):
        policy = policy.with_absolute_capacities(
            policy.expected_daily_leads
            or day_index(frame["created_at"], policy.capacity_day_timezone).median_daily_leads)
    tuning, judged = split_by_day(frame, tuning_share, policy.capacity_day_timezone)
    threshold = load_scoring_tables(settings.scoring_config).rule_threshold
    champion = load_uplift_champion(settings)
    effects_tune = outcomes_tune = effects_judged = outcome_model = None
    if champion is not None:
        model, _ = champion
        effects_tune, outcomes_tune = channel_matrix(model, tuning)
        effects_judged, outcome_model = channel_matrix(model, judged)
    assignments, tuned = policy_assignments(tuning, judged, policy, effects_tune,
                                            outcomes_tune, effects_judged, threshold)
    report = evaluate_assignments(judged, assignments, policy, outcome_model, n_boot, seed)
    report.update({
        "tuned_on_days_until": str(tuning["created_at"].max()),
        "judged_from": str(judged["created_at"].min()),
        "tuned": tuned,
        "uplift_model": None if champion is None else champion[1],
        "outcome_model_for_dr": "uplift model" if champion is not None else None,
        "policy_version": policy.version,
    })
    path = Path(report_path) if report_path is not None else (
        settings.reports_dir / EVALUATE_REPORT_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    report["report_path"] = str(path)
    return report


def learned_allocation(settings: Settings, tuning: pd.DataFrame, policy: Any,
                       rule_threshold: float | None) -> dict[str, Any]:
    """What `route optimize` records under ``optimization.allocation``: with an uplift champion
    and enough randomised outcomes, the learned effect per channel (DR over the tuning days'
    randomised leads, 95% bootstrap interval; the model's mean predicted uplift beside it), the
    cost weight λ and the mean shadow prices of the tuning days' programs — what serving routes
    policy leads by; otherwise the cold-start prior (``relative_conversion``) and why."""
    from routing.evaluate import channel_matrix, policy_assignments
    from training.uplift_metrics import bootstrap_mean, dr_scores
    from training.uplift_work import check_enough, randomised_evidence, training_frame

    prior = {"source": "cold_start_prior",
             "relative_conversion": {n: s.relative_conversion
                                     for n, s in policy.channels.items()}}
    champion = load_uplift_champion(settings)
    if champion is None:
        return {**prior, "reason": "no uplift champion (run `leadscore uplift train`)"}
    history = training_frame(settings)
    first = pd.to_datetime(tuning["created_at"], utc=True).min()
    rows, sources = randomised_evidence(settings, history, first)
    evidence = {**check_enough(rows), "sources": sources}
    if not evidence["enough"]:
        return {**prior, "reason": "too few randomised outcomes", "evidence": evidence}
    model, uri = champion
    keep = [c for c in history.columns if c not in tuning.columns or c == "lead_id"]
    frame = tuning.merge(history[keep], on="lead_id", how="left", validate="one_to_one")
    frame = frame.sort_values(["created_at", "lead_id"], kind="stable").reset_index(drop=True)
    effects, outcomes = channel_matrix(model, frame)
    _, tuned = policy_assignments(frame, frame, policy, effects, outcomes, effects,
                                  rule_threshold)
    logged = frame[(frame["arm"] == "exploration") & frame["followup_channel"].notna()]
    learned: dict[str, Any] = {}
    if len(logged):
        rows = logged.index.to_numpy()
        arm = logged["followup_channel"].map(
            {c: i for i, c in enumerate(FOLLOWUP_CHANNELS)}).to_numpy()
        scores = dr_scores(logged["label"].to_numpy(float), arm, outcomes[rows],
                           logged["propensity"].to_numpy(float)[:, None]
                           * np.ones((1, len(FOLLOWUP_CHANNELS))))
        reference = FOLLOWUP_CHANNELS.index("ai_bot")
        for j, channel in enumerate(FOLLOWUP_CHANNELS):
            effect, (low, high) = bootstrap_mean(scores[:, j] - scores[:, reference])
            learned[channel] = {"dr_effect_over_ai_bot": round(float(effect), 5),
                                "ci": [round(float(low), 5), round(float(high), 5)],
                                "mean_predicted_uplift": round(float(effects[:, j].mean()), 5)}
    return {"source": "uplift", "model": uri, "evidence": evidence,
            "cost_weight": tuned["uplift"]["cost_weight"],
            "shadow_prices": {k: round(v, 6) for k, v in tuned["uplift"]["shadow_prices"].items()},
            "learned_effects": learned, "effects_estimated_on_randomised_leads": int(len(logged)),
            "lambda_search": tuned["uplift"]["search"]["chosen"]}
