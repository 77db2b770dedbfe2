"""The business view of a week of predictions: ``business.json`` and ``business.png``.

* volume and cost per tier and per follow-up channel (cost per lead from the routing policy);
* conversion per tier and channel, and cost per conversion, on the *matured cohort* — the leads
  whose outcome window closed during the period (this week's own leads have no outcome yet);
* the routing control group (``control=True``, routed by the rule policy) against the policy arm
  on the same cohort, with a two-sided two-proportion z-test;
* the lead velocity rate: LVR = (qualified leads this period − previous period) / previous × 100,
  qualified = tier A or B.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from leadscore.config import Settings
from leadscore.schemas import TIERS

QUALIFIED_TIERS = ("A", "B")


def load_channel_costs(settings: Settings) -> tuple[dict[str, float] | None, str]:
    """Cost per lead of each follow-up channel from the active routing policy.

    Returns ``(costs, source)``; ``costs`` is None (and ``source`` says why) when the policy
    cannot be read. The policy is the one serving uses
    (:func:`routing.policy.resolve_active_policy`).
    """
    from routing.policy import PolicyError, resolve_active_policy

    try:
        active = resolve_active_policy(settings)
    except PolicyError as exc:
        return None, f"{exc}: costs unknown"
    costs = {name: float(spec.cost_per_lead) for name, spec in active.policy.channels.items()}
    return costs, str(active.path)


def _rate(numerator: float, denominator: float) -> float | None:
    return None if denominator == 0 else round(float(numerator) / float(denominator), 6)


def lead_velocity_rate(qualified_now: int, qualified_before: int) -> float | None:
    """LVR in percent; None when the previous period had no qualified lead."""
    if qualified_before == 0:
        return None
    return round((qualified_now - qualified_before) / qualified_before * 100.0, 4)


def two_proportion_p_value(k1: int, n1: int, k2: int, n2: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test; None when undefined."""
    if min(n1, n2) == 0:
        return None
    pooled = (k1 + k2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return None
    z = (k1 / n1 - k2 / n2) / math.sqrt(variance)
    return round(math.erfc(abs(z) / math.sqrt(2)), 6)


def _volume(current: pd.DataFrame, by: str, costs: dict[str, float] | None) -> list[dict]:
    rows = []
    counts = current[by].value_counts()
    order = TIERS if by == "tier" else sorted(counts.index)
    for key in order:
        leads = int(counts.get(key, 0))
        row: dict[str, Any] = {by: key, "leads": leads, "share": _rate(leads, len(current))}
        if by == "channel":
            per_lead = None if costs is None else costs.get(key)
            row["cost_per_lead"] = per_lead
            row["cost"] = None if per_lead is None else round(per_lead * leads, 2)
        rows.append(row)
    return rows


def _cost(frame: pd.DataFrame, costs: dict[str, float] | None) -> float | None:
    if costs is None or frame.empty:
        return None if costs is None else 0.0
    per_lead = frame["channel"].map(costs)
    if per_lead.isna().any():
        return None  # a channel without a known cost
    return round(float(per_lead.sum()), 2)


def _conversion(cohort: pd.DataFrame, by: str, costs: dict[str, float] | None) -> list[dict]:
    rows = []
    for key, group in cohort.groupby(by, sort=True):
        converted = int(group["converted"].sum())
        cost = _cost(group, costs)
        rows.append({
            by: key, "n": len(group), "converted": converted,
            "conversion": _rate(converted, len(group)), "cost": cost,
            "cost_per_conversion": None if cost is None or converted == 0
            else round(cost / converted, 2),
        })
    return rows


def _arm(frame: pd.DataFrame) -> dict[str, Any]:
    converted = int(frame["converted"].sum())
    return {"n": len(frame), "converted": converted, "conversion": _rate(converted, len(frame))}


def _control_vs_policy(cohort: pd.DataFrame) -> dict[str, Any] | None:
    control = cohort[cohort["control"].astype(bool)]
    policy = cohort[~cohort["control"].astype(bool)]
    if control.empty or policy.empty:
        return None
    c, p = _arm(control), _arm(policy)
    difference = None if c["conversion"] is None or p["conversion"] is None \
        else round(p["conversion"] - c["conversion"], 6)
    return {
        "control": c, "policy": p, "policy_minus_control": difference,
        "p_value": two_proportion_p_value(p["converted"], p["n"], c["converted"], c["n"]),
    }


def business_summary(
    current: pd.DataFrame,
    previous: pd.DataFrame,
    cohort: pd.DataFrame | None,
    costs: dict[str, float] | None,
    cost_source: str,
) -> dict[str, Any]:
    """The business figures of a period (see the module docstring) as a JSON-ready dict."""
    qualified_now = int(current["tier"].isin(QUALIFIED_TIERS).sum())
    qualified_before = int(previous["tier"].isin(QUALIFIED_TIERS).sum())
    cohort_part = None
    if cohort is not None and not cohort.empty:
        converted = int(cohort["converted"].sum())
        cost = _cost(cohort, costs)
        cohort_part = {
            "n": len(cohort), "converted": converted,
            "conversion": _rate(converted, len(cohort)), "cost": cost,
            "cost_per_conversion": None if cost is None or converted == 0
            else round(cost / converted, 2),
            "by_tier": _conversion(cohort, "tier", costs),
            "by_channel": _conversion(cohort, "channel", costs),
        }
    tier_channel = (
        current.groupby(["tier", "channel"]).size().rename("leads").reset_index()
        .to_dict(orient="records")
    )
    return {
        "n_leads": len(current),
        "cost": _cost(current, costs),
        "cost_source": cost_source,
        "by_tier": _volume(current, "tier", costs),
        "by_channel": _volume(current, "channel", costs),
        "by_tier_channel": [
            {"tier": r["tier"], "channel": r["channel"], "leads": int(r["leads"])}
            for r in tier_channel
        ],
        "cohort": cohort_part,
        "control_vs_policy": None if cohort is None or cohort.empty
        else _control_vs_policy(cohort),
        "lvr": {
            "qualified_tiers": list(QUALIFIED_TIERS),
            "qualified_this_period": qualified_now,
            "qualified_previous_period": qualified_before,
            "lvr_percent": lead_velocity_rate(qualified_now, qualified_before),
        },
    }


def _chart(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    tiers = summary["by_tier"]
    axes[0, 0].bar([r["tier"] for r in tiers], [r["leads"] for r in tiers], color="#4c72b0")
    axes[0, 0].set_title("leads per tier")
    channels = summary["by_channel"]
    axes[0, 1].bar([r["channel"] for r in channels], [r["leads"] for r in channels],
                   color="#55a868")
    axes[0, 1].set_title("leads per follow-up channel")
    cohort = summary["cohort"]
    if cohort:
        rows = cohort["by_tier"]
        axes[1, 0].bar([r["tier"] for r in rows], [r["conversion"] or 0 for r in rows],
                       color="#c44e52")
        axes[1, 0].set_title(f"conversion per tier (matured cohort, n={cohort['n']})")
    else:
        axes[1, 0].text(0.5, 0.5, "no matured cohort yet", ha="center", va="center")
        axes[1, 0].set_title("conversion per tier")
    if any(r.get("cost") is not None for r in channels):
        axes[1, 1].bar([r["channel"] for r in channels], [r["cost"] or 0 for r in channels],
                       color="#8172b2")
        axes[1, 1].set_title("follow-up cost per channel")
    else:
        axes[1, 1].text(0.5, 0.5, summary["cost_source"], ha="center", va="center",
                        wrap=True, fontsize=8)
        axes[1, 1].set_title("follow-up cost per channel")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def business_report(
    current: pd.DataFrame,
    previous: pd.DataFrame,
    cohort: pd.DataFrame | None,
    out_dir: Path,
    settings: Settings,
    header: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``business.json`` and ``business.png`` for a period into ``out_dir``."""
    costs, source = load_channel_costs(settings)
    summary = (header or {}) | business_summary(current, previous, cohort, costs, source)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "business.json").write_text(json.dumps(summary, indent=2))
    _chart(summary, out_dir / "business.png", f"business view {summary.get('week') or ''}")
    return summary
