"""The weekly report's routing table: what every policy would have achieved on the served leads,
estimated off-policy from the prediction log's exploration rows (``routing.offpolicy``), the
same table ``leadscore route evaluate`` gives on the held-out days.

Judged rows: the period's logged leads whose outcome window closed (the matured cohort) with arm
``exploration``: their channel was drawn at random with the logged ``propensity``. Policies:
``probability_tiers`` (the active policy's tiers on the logged probability), ``rule_2d`` (the
logged 2-D rule score), ``rule_funnel`` (the logged funnel step), ``rule_2d_optimised`` and
``rule_funnel_optimised``, ``everyone_to_<channel>``, and ``uplift`` when the active policy
records a learned allocation and its uplift model loads (the service's own choice,
``routing.control.allocated_channels``; its per-channel conversions are then DR's outcome
model). Estimators ``ips``, ``snips`` (and ``dr`` with the uplift model), bootstrap 95%
intervals (``routing.evaluate.evaluate_assignments``).

**Optimised rules**: tuned as ``route evaluate`` tunes them (the rule score mapped to a
probability by isotonic regression on outcomes, then the cut-off optimiser), on the log's
*earlier* matured leads — all arms, submitted in the ``TUNING_LOOKBACK_DAYS`` before the first
judged lead, so never on the judged week. The cut-offs `route evaluate` records are not reused:
they apply to an isotonic map it does not record, fitted on the training hold-out's score
distribution, and the active policy records no optimised rule.

**Capacity**: every policy is run over *every* served lead of the judged leads' calendar days
(in the policy's ``capacity_day_timezone``; all arms, as the teams received them) under the
daily capacity cascade (``routing.simulate.apply_daily_capacity``), and judged on the final
channel of the randomised leads — when the log holds what that needs: the logged probability,
rule score and funnel step of every served lead of those days. Otherwise the table is per lead
(no capacity) and ``capacity.reason`` says why.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crm_data.prediction_log import PredictionLog, feature_column
from leadscore.config import Settings
from leadscore.schemas import FOLLOWUP_CHANNELS, FUNNEL_STEPS
from routing.evaluate import evaluate_assignments, isotonic_tier_policy
from routing.policy import RoutingPolicy, resolve_active_policy
from routing.rules import funnel_channels, rule_2d_channels
from routing.simulate import day_index

MIN_EXPLORATION_ROWS = 30
MIN_TUNING_LEADS = 200  # earlier matured leads to tune the optimised rules on
MIN_TUNING_CONVERSIONS = 10
TUNING_LOOKBACK_DAYS = 56
OPTIMISED_RULES = ("rule_2d_optimised", "rule_funnel_optimised")
ROUTING_JSON = "routing.json"


@dataclass(frozen=True)
class RoutingLogRows:
    """What the routing table reads from the log beside the period's matured cohort."""

    served: pd.DataFrame | None  # every logged lead of the days around the judged leads
    earlier: pd.DataFrame | None  # logged leads before the judged ones (tuning)
    problem: str | None = None


def read_routing_rows(log: PredictionLog, since: datetime, until: datetime,
                      window: timedelta) -> RoutingLogRows:
    """The log's rows the routing table needs for the report period ``[since, until)`` whose
    judged leads were submitted in ``[since − window, until − window)``: the served leads of a
    day either side (whole calendar days in any time zone) and the ``TUNING_LOOKBACK_DAYS``
    before. A log that cannot be read gives empty rows and the problem."""
    first, last = since - window, until - window
    try:
        served = log.read(first - timedelta(days=1), last + timedelta(days=1))
        earlier = log.read(first - timedelta(days=TUNING_LOOKBACK_DAYS), first)
    except Exception as exc:  # noqa: BLE001 - the report goes on without the replay
        return RoutingLogRows(None, None, f"{type(exc).__name__}: {exc}")
    return RoutingLogRows(served, earlier)


def _first_per_lead(frame: pd.DataFrame) -> pd.DataFrame:
    return (frame.sort_values("submitted_at", kind="stable")
            .drop_duplicates("lead_id", keep="first").reset_index(drop=True))


def _rule_threshold(settings: Settings) -> float | None:
    from features.score2d import load_scoring_tables

    try:
        return load_scoring_tables(settings.scoring_config).rule_threshold
    except Exception:  # noqa: BLE001 - the packaged default threshold
        return None


def _scored(frame: pd.DataFrame) -> pd.DataFrame:
    """Log rows in the scored-leads shape ``routing`` takes (``created_at`` = submission)."""
    return frame.assign(created_at=pd.to_datetime(frame["submitted_at"], utc=True))


def _instant(value: pd.Timestamp) -> str:
    return pd.Timestamp(value).floor("s").isoformat()


def _funnel_rank(steps: pd.Series) -> np.ndarray:
    return np.array([FUNNEL_STEPS.index(str(s)) for s in steps], dtype=float)


def _rule_inputs_problem(frame: pd.DataFrame, what: str) -> str | None:
    """Why the rule policies cannot be assigned on ``frame`` (None: they can)."""
    for column in ("probability", "rule_score", "funnel_step"):
        if column not in frame.columns:
            return f"the log holds no {column} for {what}"
        bad = frame[column].isna()
        if column == "funnel_step":
            bad |= ~frame[column].isin(FUNNEL_STEPS)
        if bad.any():
            return (f"{int(bad.sum())} of the {len(frame)} {what} have no logged "
                    f"{column}{' (or an unknown step)' if column == 'funnel_step' else ''}")
    return None


def sized(policy: RoutingPolicy, frame: pd.DataFrame) -> RoutingPolicy:
    """The policy with absolute capacities (shares sized by ``expected_daily_leads``, else by
    the median day of ``frame``)."""
    if all(spec.capacity_share is None for spec in policy.channels.values()):
        return policy
    return policy.with_absolute_capacities(
        policy.expected_daily_leads
        or day_index(frame["created_at"], policy.capacity_day_timezone).median_daily_leads)


def unlimited(policy: RoutingPolicy) -> RoutingPolicy:
    """The policy with no capacity limit (the per-lead table)."""
    return replace(policy, channels={name: replace(spec, daily_capacity=None,
                                                   capacity_share=None)
                                     for name, spec in policy.channels.items()})


def replay_frame(judged: pd.DataFrame, served: pd.DataFrame | None, policy: RoutingPolicy
                 ) -> tuple[pd.DataFrame | None, str | None]:
    """Every served lead of the judged leads' calendar days, in arrival order, with the judged
    (randomised, matured) ones marked ``arm = exploration`` and every other lead ``context``;
    or None and why the capacity cascade cannot be replayed."""
    if served is None or served.empty:
        return None, "the log's served leads of the judged days could not be read"
    tz = policy.capacity_day_timezone
    served = _scored(_first_per_lead(served))
    days = judged["created_at"].dt.tz_convert(tz).dt.normalize()
    local = served["created_at"].dt.tz_convert(tz).dt.normalize()
    frame = served[(local >= days.min()) & (local <= days.max())]
    missing = ~judged["lead_id"].isin(set(frame["lead_id"]))
    if missing.any():
        return None, (f"{int(missing.sum())} judged lead(s) are not among the log's served "
                      "leads of their days")
    problem = _rule_inputs_problem(frame, "served leads of the judged days")
    if problem is not None:
        return None, problem + ": their channel under the rule policies is unknown"
    frame = frame.sort_values(["created_at", "lead_id"], kind="stable").reset_index(drop=True)
    by_lead = judged.set_index("lead_id")
    is_judged = frame["lead_id"].isin(by_lead.index)
    frame["arm"] = np.where(is_judged, "exploration", "context")
    frame["followup_channel"] = frame["lead_id"].map(by_lead["channel"]).where(
        is_judged, frame["channel"])
    frame["propensity"] = frame["lead_id"].map(by_lead["propensity"]).where(is_judged, 1.0)
    frame["label"] = frame["lead_id"].map(by_lead["label"]).fillna(0).astype(int)
    return frame, None


def optimised_rules(earlier: pd.DataFrame | None, before: pd.Timestamp, policy: RoutingPolicy,
                    threshold: float | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The optimised rules tuned on the log's matured leads submitted before ``before`` (the
    first lead of the judged period): name → (isotonic map, tuned policy), and what they were
    tuned on (or why they were not)."""
    if earlier is None or earlier.empty:
        return {}, {"skipped": "no earlier matured leads in the log to tune on"}
    tuning = _scored(earlier)
    tuning = tuning[tuning["created_at"] < before]
    tuning = tuning.sort_values(["created_at", "lead_id"], kind="stable").reset_index(drop=True)
    conversions = int(tuning["converted"].sum()) if len(tuning) else 0
    if len(tuning) < MIN_TUNING_LEADS or conversions < MIN_TUNING_CONVERSIONS:
        return {}, {"skipped": f"{len(tuning)} earlier matured leads with {conversions} "
                               f"conversions in the log; at least {MIN_TUNING_LEADS} and "
                               f"{MIN_TUNING_CONVERSIONS} are needed to tune on"}
    problem = _rule_inputs_problem(tuning, "earlier matured leads")
    if problem is not None:
        return {}, {"skipped": problem}
    tuning = tuning.assign(label=tuning["converted"].astype(int))
    label = tuning["label"].to_numpy(float)
    policy = sized(policy, tuning)
    tuned: dict[str, Any] = {}
    info: dict[str, Any] = {"tuned_on": {"leads": int(len(tuning)), "conversions": conversions,
                                         "from": _instant(tuning["created_at"].min()),
                                         "until": _instant(tuning["created_at"].max())},
                            "cutoffs": {}}
    scores = {"rule_2d_optimised": tuning["rule_score"].to_numpy(float),
              "rule_funnel_optimised": _funnel_rank(tuning["funnel_step"])}
    for name, score in scores.items():
        iso, rule_policy = isotonic_tier_policy(score, label, tuning, policy, threshold)
        tuned[name] = (iso, rule_policy)
        info["cutoffs"][name] = rule_policy.cutoffs
    return tuned, info


def log_features(frame: pd.DataFrame) -> pd.DataFrame:
    """The logged model features under their own names (a feature clashing with a record
    column, e.g. the lead's source ``channel``, is logged as ``feature.<name>``)."""
    from features.request import MODEL_FEATURES

    return pd.DataFrame({name: frame[feature_column(name)] if feature_column(name) in frame
                         else pd.Series(None, index=frame.index, dtype=object)
                         for name in MODEL_FEATURES}, index=frame.index)


def _allocation(policy: RoutingPolicy) -> dict[str, Any] | None:
    allocation = policy.optimization.get("allocation") or {}
    if not allocation:
        return None
    keep = ("source", "model", "cost_weight", "shadow_prices", "learned_effects",
            "effects_estimated_on_randomised_leads", "relative_conversion", "reason")
    return {k: allocation[k] for k in keep if k in allocation}


def routing_table(cohort: pd.DataFrame | None, settings: Settings, n_boot: int = 500,
                  served: pd.DataFrame | None = None, earlier: pd.DataFrame | None = None,
                  seed: int = 0) -> dict[str, Any] | None:
    """Per policy and estimator, conversions and cost per conversion with intervals on the
    cohort's exploration rows (module docstring); None below ``MIN_EXPLORATION_ROWS`` such
    rows. ``served``: the log's rows of the days around them (capacity replay); ``earlier``:
    matured log rows before them, joined with outcomes (tuning the optimised rules)."""
    if cohort is None or "arm" not in cohort.columns:
        return None
    judged = _scored(cohort[(cohort["arm"] == "exploration")
                            & cohort["channel"].isin(FOLLOWUP_CHANNELS)])
    judged = judged.sort_values(["created_at", "lead_id"], kind="stable").reset_index(drop=True)
    if len(judged) < MIN_EXPLORATION_ROWS:
        return None
    judged["label"] = judged["converted"].astype(int)
    policy = resolve_active_policy(settings).policy
    threshold = _rule_threshold(settings)
    frame, reason = replay_frame(judged, served, policy)
    if frame is not None:
        judging_policy = sized(policy, frame)
        capacity: dict[str, Any] = {
            "replayed": True, "days": int(day_index(frame["created_at"],
                                                    policy.capacity_day_timezone).n_days),
            "served_leads": int(len(frame)), "timezone": policy.capacity_day_timezone,
            "capacities": {name: None if math.isinf(value) else value  # None: unlimited
                           for name, value in judging_policy.capacities().items()}}
    else:
        frame = judged.assign(followup_channel=judged["channel"])
        judging_policy = unlimited(policy)
        capacity = {"replayed": False, "reason": reason}
    targets: dict[str, np.ndarray] = {
        "probability_tiers": policy.assign(frame["probability"].to_numpy(float))[1]}
    if "rule_score" in frame.columns:
        targets["rule_2d"] = rule_2d_channels(frame["rule_score"].fillna(0.0), threshold)
    if "funnel_step" in frame.columns and frame["funnel_step"].isin(FUNNEL_STEPS).all():
        targets["rule_funnel"] = funnel_channels(frame["funnel_step"])
    first = pd.to_datetime(cohort["submitted_at"], utc=True).min()  # the judged period's start
    tuned, optimised = optimised_rules(earlier, first, policy, threshold)
    if tuned and _rule_inputs_problem(frame, "judged leads") is None:
        scores = {"rule_2d_optimised": frame["rule_score"].to_numpy(float),
                  "rule_funnel_optimised": _funnel_rank(frame["funnel_step"])}
        for name, (iso, rule_policy) in tuned.items():
            targets[name] = rule_policy.assign(iso.predict(scores[name]))[1]
    elif tuned:
        optimised = {"skipped": _rule_inputs_problem(frame, "judged leads")}
    for channel in FOLLOWUP_CHANNELS:
        targets[f"everyone_to_{channel}"] = np.full(len(frame), channel, dtype=object)
    outcome_model = None
    allocation = _allocation(policy)
    uplift_note = None
    if allocation and allocation.get("source") == "uplift":
        try:
            from routing.control import allocated_channels
            from routing.evaluate import channel_matrix
            from training.uplift_registry import load_uplift_model

            model = load_uplift_model(allocation["model"])
            effects, outcome_model = channel_matrix(model, log_features(frame))
            targets["uplift"] = allocated_channels(effects, policy)
        except Exception as exc:  # noqa: BLE001 - a model that will not load leaves it out
            outcome_model = None
            uplift_note = f"uplift policy left out: {type(exc).__name__}: {exc}"
    report = evaluate_assignments(frame, targets, judging_policy, outcome_model,
                                  n_boot=n_boot, seed=seed)
    if not capacity["replayed"]:
        for entry in report["policies"].values():
            for key in ("capacity_violations", "overflow_leads"):
                entry.pop(key, None)
    notes = ["estimated on the served week's randomised (exploration) leads"]
    notes.append("capacity replayed per day over every served lead" if capacity["replayed"]
                 else f"per lead, capacity not replayed: {capacity['reason']}")
    if uplift_note:
        notes.append(uplift_note)
    return {"exploration_leads": int(len(judged)), "policies": report["policies"],
            "estimators": ["ips", "snips"] + (["dr"] if outcome_model is not None else []),
            "capacity": capacity, "optimised_rules": optimised, "allocation": allocation,
            "uplift_vs_best_optimised_rule": report.get("uplift_vs_best_optimised_rule"),
            "judged_from": _instant(judged["created_at"].min()),
            "judged_until": _instant(judged["created_at"].max()),
            "note": "; ".join(notes)}


def routing_section(settings: Settings, cohort: pd.DataFrame | None, folder: Path,
                    notes: list[str], rows: RoutingLogRows | None = None,
                    outcomes: pd.DataFrame | None = None, until: datetime | None = None,
                    week: str = "") -> dict[str, Any] | None:
    """:func:`routing_table` written to ``<folder>/routing.json`` and shown in
    ``<folder>/routing.html`` (with ``routing.png``); None (and a note, and a page saying why)
    when the week has too few matured exploration leads."""
    from monitoring.drift import matured_cohort
    from monitoring.routing_page import write_routing_page

    folder.mkdir(parents=True, exist_ok=True)
    rows = rows or RoutingLogRows(None, None, "the log's served leads were not read")
    earlier = None
    if rows.earlier is not None and outcomes is not None and until is not None:
        earlier = matured_cohort(rows.earlier, outcomes, until, settings.conversion_window_days)
    try:
        table = routing_table(cohort, settings, served=rows.served,
                              earlier=earlier) if cohort is not None else None
    except Exception as exc:  # noqa: BLE001 - a missing table must not stop the report
        reason = f"routing table skipped ({type(exc).__name__}: {exc})"
        notes.append(reason)
        write_routing_page(None, folder, week, reason)
        return None
    if table is None:
        reason = (f"routing table skipped: fewer than {MIN_EXPLORATION_ROWS} exploration "
                  "leads whose outcome window closed")
        notes.append(reason)
        write_routing_page(None, folder, week, reason)
        return None
    if rows.problem:
        table["capacity"].setdefault("log_problem", rows.problem)
    (folder / ROUTING_JSON).write_text(json.dumps(table, indent=2, default=str))
    write_routing_page(table, folder, week)
    return table
