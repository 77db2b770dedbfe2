"""Readable reasons from per-lead SHAP contributions (LightGBM ``pred_contrib``).

A reason is the feature's contribution (log-odds) rendered as a short sentence a salesperson
understands ("booked a trial class", "no activity for 30 days", "came through SEM"). Texts come
from ``REASON_TEMPLATES``, plain data so that the packaged model carries them:

- ``{"by_value": {value: text}}``: one text per category value (``"*"`` is the fallback);
- ``{"up": text, "down": text}``: the text depends on whether the feature raised or lowered the
  probability; texts may use ``{value}`` (formatted), ``{value_int}`` and ``{label}``;
- ``{"sentinel_at_least": x, "sentinel": text}`` adds a text for sentinel values (e.g. 9999
  days since the last touch of a person with no recorded activity).

A feature without a template gets a generic text built from its name and value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

CHANNEL_LABELS: dict[str, str] = {
    "sem": "SEM (search ads)", "feed_ads": "in-feed ads", "channel_agent": "a channel agent",
    "list_purchase": "a purchased list", "seo": "SEO (organic search)", "app": "the app",
    "wechat_private": "WeChat private traffic", "new_media": "teachers' new-media accounts",
}

WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

REASON_TEMPLATES: dict[str, dict[str, Any]] = {
    "funnel_step": {
        "by_value": {
            "booked_trial": "booked a trial class",
            "followed_account": "followed the official account but booked no class",
            "verified": "verified the phone but did not follow the account",
            "submitted": "submitted the form without verifying",
        }
    },
    "channel": {
        "by_value": {key: f"came through {label}" for key, label in CHANNEL_LABELS.items()}
        | {"*": "came through channel {value}"}
    },
    "days_since_last_touch": {
        "up": "active {value_int} days before the lead",
        "down": "no activity for {value_int} days",
        "sentinel_at_least": 9000,
        "sentinel": "no earlier activity recorded",
    },
    "intent_score": {
        "up": "high intent score (pricing/trial pages)",
        "down": "low intent score (few high-intent page visits)",
    },
    "interest_score": {
        "up": "strong behaviour points ({value_int})",
        "down": "weak behaviour points ({value_int})",
    },
    "fit_score": {"up": "good profile fit ({value_int} points)", "down": "poor profile fit"},
    "rule_score": {
        "up": "high practitioners' score ({value_int})",
        "down": "low practitioners' score ({value_int})",
    },
    "prior_leads": {"up": "{value_int} earlier leads", "down": "{value_int} earlier leads"},
    "person_prior_leads": {"up": "{value_int} earlier leads", "down": "{value_int} earlier leads"},
    "n_prior_leads": {"up": "{value_int} earlier leads", "down": "{value_int} earlier leads"},
    "phone_valid": {"by_value": {"1": "valid phone number", "0": "invalid phone number",
                                 "True": "valid phone number", "False": "invalid phone number"}},
    "email_domain_type": {
        "by_value": {"invalid": "invalid e-mail address", "free": "free e-mail address",
                     "corporate": "corporate e-mail address", "edu": "school e-mail address",
                     "none": "no e-mail given"}
    },
    "city_tier": {
        "up": "lives in a tier-{value_int} city", "down": "lives in a tier-{value_int} city",
    },
    "grade": {"by_value": {"*": "child in grade {value}"}},
    "subject": {"by_value": {"*": "interested in {value}"}},
    "device": {"by_value": {"unknown": "device unknown", "*": "came from a {value} device"}},
    "recruitment_visits": {"up": "no recruitment-page visits",
                           "down": "visited recruitment pages (job seeker?)"},
    "rfm_segment": {"by_value": {"no_orders": "no earlier purchases",
                                 "*": "earlier customer group {value}"}},
    "funnel_step_ordinal": {"by_value": {"3": "booked a trial class",
                                         "2": "followed the official account",
                                         "1": "verified the phone", "0": "did not verify",
                                         "*": "funnel step unknown"}},
    "has_history": {"by_value": {"1": "known person with earlier activity",
                                 "0": "no earlier activity recorded"}},
    "is_customer": {"by_value": {"1": "earlier customer", "0": "never bought before"}},
    "prior_channels": {"up": "came through {value_int} channels before",
                       "down": "came through {value_int} channels before"},
    "days_since_first_touch": {"up": "first seen {value_int} days ago",
                               "down": "first seen {value_int} days ago",
                               "sentinel_at_least": 9000, "sentinel": "first contact"},
    "recency_days": {"up": "last purchase {value_int} days ago",
                     "down": "last purchase {value_int} days ago",
                     "sentinel_at_least": 9000, "sentinel": "no earlier purchase"},
    "engagement_trend": {"up": "engagement rising", "down": "engagement falling"},
    "landing_page_type": {"by_value": {"*": "landed on a {value} page"}},
    "campaign": {"by_value": {"*": "campaign {value}"}},
    "rule_grade": {"by_value": {"sales": "rule score says sales-ready",
                                "nurture": "rule score says nurture"}},
    "submit_hour_cn": {"up": "submitted at {value_int}h (China time)",
                       "down": "submitted at {value_int}h (China time)"},
    "submit_weekday_cn": {"by_value": {str(day): f"submitted on a {name} (China time)"
                                       for day, name in enumerate(WEEKDAY_NAMES)}
                          | {"*": "submission day unknown"}},
    "events_total": {"up": "{value_int} touches recorded before the lead",
                     "down": "{value_int} touches recorded before the lead"},
    "frequency": {"up": "{value_int} earlier purchases", "down": "{value_int} earlier purchases"},
    "monetary": {"up": "earlier purchases worth {value_int} RMB",
                 "down": "earlier purchases worth {value_int} RMB"},
}

# Event counts such as ``trial_class_90d`` read "2 trial classes in the last 90 days".
EVENT_LABELS: dict[str, str] = {
    "events": "touches", "web_visit": "site visits", "pricing_page": "pricing-page visits",
    "course_page": "course-page visits", "recruitment_page": "recruitment-page visits",
    "email_open": "e-mail opens", "email_click": "e-mail clicks",
    "whitepaper_download": "downloads", "live_class": "live classes watched",
    "offline_event": "offline events attended", "trial_class": "trial classes",
    "wechat_read": "WeChat reads", "app_open": "app opens", "urls": "distinct pages",
    "site_visits": "site visits",
}
_WINDOW_COUNT = re.compile(r"^(?P<kind>[a-z_]+?)_(?P<days>\d+)d$")


def count_reason(feature: str, value: Any) -> str | None:
    """Text for a windowed event count (``<event>_<N>d``), or None if the name is not one."""
    match = _WINDOW_COUNT.match(feature)
    if not match or match["kind"] not in EVENT_LABELS or _is_missing(value):
        return None
    label, days = EVENT_LABELS[match["kind"]], match["days"]
    count = int(round(float(value)))
    if count == 0:
        return f"no {label} in the last {days} days"
    return f"{count} {label} in the last {days} day{'s' if days != '1' else ''}"


def _is_missing(value: Any) -> bool:
    """True for None, NaN, NaT and pd.NA (scalars only)."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _format_value(value: Any) -> tuple[str, str]:
    """(pretty value, integer-ish value) as text."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower(), str(int(bool(value)))
    if isinstance(value, int | np.integer):
        return str(int(value)), str(int(value))
    if isinstance(value, float | np.floating):
        as_float = float(value)
        pretty = f"{as_float:.0f}" if as_float.is_integer() else f"{as_float:.2f}"
        return pretty, str(int(round(as_float)))
    return str(value), str(value)


def _value_key(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def generic_reason(feature: str, value: Any, contribution: float) -> str:
    """Readable fallback from the feature name and value, e.g. ``"email opens 90d: 3 (+)"``."""
    name = feature.replace("_", " ")
    if _is_missing(value):
        return f"{name} unknown"
    pretty, _ = _format_value(value)
    direction = "raises" if contribution > 0 else "lowers"
    return f"{name} = {pretty} ({direction} the chance)"


def reason_text(
    feature: str,
    value: Any,
    contribution: float,
    templates: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The sentence for one feature's contribution to one lead's score."""
    table = REASON_TEMPLATES if templates is None else templates
    template = table.get(feature)
    if template is None:
        return count_reason(feature, value) or generic_reason(feature, value, contribution)
    if _is_missing(value):
        return f"{feature.replace('_', ' ')} unknown"
    pretty, as_int = _format_value(value)
    fields = {"value": pretty, "value_int": as_int, "label": feature.replace("_", " ")}
    if "by_value" in template:
        by_value = template["by_value"]
        text = by_value.get(_value_key(value), by_value.get("*"))
        return text.format(**fields) if text else generic_reason(feature, value, contribution)
    sentinel = template.get("sentinel_at_least")
    if sentinel is not None and isinstance(value, int | float | np.number) and value >= sentinel:
        return str(template["sentinel"])
    text = template.get("up" if contribution > 0 else "down")
    return text.format(**fields) if text else generic_reason(feature, value, contribution)


def top_reasons(
    contributions: Sequence[float] | np.ndarray,
    feature_names: Sequence[str],
    values: Mapping[str, Any],
    top_k: int = 3,
    templates: Mapping[str, Mapping[str, Any]] | None = None,
    min_abs_contribution: float = 1e-6,
) -> dict[str, list[dict[str, Any]]]:
    """The ``top_k`` strongest positive and negative reasons of one lead.

    ``contributions`` holds one log-odds contribution per feature (bias column excluded).
    Each reason is ``{"feature", "value", "contribution", "text"}``.
    """
    contrib = np.asarray(contributions, dtype=float)
    if contrib.shape[0] != len(feature_names):
        raise ValueError(
            f"got {contrib.shape[0]} contributions for {len(feature_names)} feature names"
        )
    order = np.argsort(-np.abs(contrib), kind="stable")
    positive: list[dict[str, Any]] = []
    negative: list[dict[str, Any]] = []
    for index in order:
        value_c = float(contrib[index])
        if abs(value_c) < min_abs_contribution:
            break
        bucket = positive if value_c > 0 else negative
        if len(bucket) >= top_k:
            if len(positive) >= top_k and len(negative) >= top_k:
                break
            continue
        feature = feature_names[index]
        value = values.get(feature)
        bucket.append(
            {
                "feature": feature,
                "value": None if _is_missing(value) else _format_value(value)[0],
                "contribution": round(value_c, 4),
                "text": reason_text(feature, value, value_c, templates),
            }
        )
    return {"positive": positive, "negative": negative}


def reasons_as_text(reasons: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """One line for a report or a tag: ``"+ booked a trial class; − no activity for 40 days"``."""
    parts = [f"+ {r['text']}" for r in reasons.get("positive", [])]
    parts += [f"- {r['text']}" for r in reasons.get("negative", [])]
    return "; ".join(parts)


def shap_contributions(booster: Any, X: Any) -> np.ndarray:
    """``booster.predict(X, pred_contrib=True)``: one log-odds column per feature, then bias."""
    return np.asarray(booster.predict(X, pred_contrib=True), dtype=float)
