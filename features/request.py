"""Request-time transformations shared by training and serving (the on-demand feature view).

Everything a model feature needs beyond the stored person snapshots is computed here, from the
submitted form plus the person's latest snapshot, by pure vectorised functions. The Feast
on-demand feature view ``lead_request_features`` (python mode) calls ``transform_request``
both in ``get_historical_features`` (training) and ``get_online_features`` (serving), so the
two paths cannot drift apart. Its parameters (intent half-life, scoring tables) come in as one
``features.params.FeatureParams`` fixed with the feature version; nothing here reads settings.
The snapshot schema lives in ``features.snapshot`` (re-exported here).

Request fields (``SUBMISSION_FIELDS``): the form's channel, campaign, landing page, grade,
subject, city tier, device, funnel step, phone validity and e-mail domain type, each prefixed
``form_`` (raw values as submitted), and ``request_ts_s`` (the submission time, UTC epoch
seconds).

Defaults (never a silent NaN):
- categories outside their vocabulary, empty or missing → ``"unknown"``; city tier → 0;
  funnel-step ordinal → -1; phone validity → 0 (invalid);
- no person, or a person without events (``has_history`` = 0): counts 0, days-since 9999,
  trend 0, intent 0; no orders: ``is_customer`` 0, recency 9999, frequency 0, monetary 0,
  ``rfm_segment`` = ``"no_orders"``;
- a missing request time: hour and weekday -1, no decay (the snapshot's own time is used).

Time: hour and weekday are China time (UTC+8, no daylight saving since 1991). Days since last and
first touch, the intent score (exact for exponential decay: ``intent × 0.5^(Δdays/half-life)``)
and RFM recency are brought forward from the snapshot's time to the request time. A snapshot that
carries its recent history (``snap_history``) is re-evaluated at the request time
(``features.history``): window counts, lead counts and touch times as the offline build would
give them at that time; without one, window counts stay as of the snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from features import score2d
from features.history import at_request_time
from features.params import FeatureParams, feature_params
from features.snapshot import (  # the snapshot schema, re-exported for the feature contract
    BEHAVIOUR_SNAPSHOT_FIELDS,
    COUNT_FEATURES,
    RFM_SNAPSHOT_FIELDS,
    SITE_EVENT_TYPES,
    SITE_WINDOW_DAYS,
    SNAP_PREFIX,
    TYPE_WINDOWS,
    URL_WINDOWS_DAYS,
    WINDOWS_DAYS,
)
from leadscore import schemas

__all__ = [
    "BEHAVIOUR_SNAPSHOT_FIELDS", "COUNT_FEATURES", "FORM_FIELDS", "FORM_PREFIX", "MODEL_FEATURES",
    "RFM_SNAPSHOT_FIELDS", "SITE_EVENT_TYPES", "SITE_WINDOW_DAYS", "SNAP_PREFIX",
    "SUBMISSION_FIELDS", "TYPE_WINDOWS", "URL_WINDOWS_DAYS", "WINDOWS_DAYS", "FeatureParams",
    "feature_params", "transform_request",
]

UNKNOWN = "unknown"
NO_ORDERS = "no_orders"
DAYS_SENTINEL = 9999.0
CHINA_UTC_OFFSET_S = 8 * 3600

# ---- the form ----------------------------------------------------------------------------
FORM_FIELDS: dict[str, str] = {
    "channel": "string",
    "campaign": "string",
    "landing_page": "string",
    "grade": "string",
    "subject": "string",
    "city_tier": "int",
    "device": "string",
    "funnel_step": "string",
    "phone_valid": "bool",
    "email_domain_type": "string",
}
# request columns: the form fields prefixed (so they never clash with feature names) + time
FORM_PREFIX = "form_"
SUBMISSION_FIELDS: dict[str, str] = {
    **{FORM_PREFIX + name: kind for name, kind in FORM_FIELDS.items()},
    "request_ts_s": "float",
}
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "channel": schemas.CHANNELS,
    "grade": schemas.GRADES,
    "subject": schemas.SUBJECTS,
    "device": schemas.DEVICES,
    "funnel_step": schemas.FUNNEL_STEPS,
    "email_domain_type": schemas.EMAIL_DOMAIN_TYPES,
}

# ---- page types of URLs (first matching rule wins; recruitment before everything) ---------
PAGE_TYPES: tuple[str, ...] = (
    "recruitment",
    "pricing",
    "trial",
    "live",
    "download",
    "course",
    "article",
    "home",
    "other",
)
_PAGE_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("recruitment", r"recruit|career|/jobs?\b|hiring|join-?us|zhaopin"),
        ("pricing", r"pric|fee|tuition|checkout|/buy|/pay|/order"),
        ("trial", r"trial|booking|/book|appointment|demo|shiting"),
        ("live", r"live|broadcast|webinar"),
        ("download", r"download|whitepaper|white-paper|material|\.pdf"),
        ("course", r"course|class|lesson|curriculum|program"),
        ("article", r"article|blog|news|/post|wechat|/read"),
    )
)
_HOME = re.compile(r"^([a-z]+://[^/]*)?/?(home|index(\.html?)?)?([?#].*)?$")
# event types that imply a page type when the URL says nothing more specific
EVENT_PAGE_TYPE: dict[str, str] = {
    "pricing_page": "pricing",
    "recruitment_page": "recruitment",
    "course_page": "course",
    "trial_class": "trial",
    "live_class": "live",
    "whitepaper_download": "download",
    "wechat_read": "article",
}


def url_page_type(url: object, event_type: object = None) -> str:
    """Page type of a URL (``PAGE_TYPES``); ``event_type`` decides when the URL is uninformative."""
    text = url.strip().lower() if isinstance(url, str) else ""
    for name, pattern in _PAGE_RULES:
        if text and pattern.search(text):
            return name
    if isinstance(event_type, str) and event_type in EVENT_PAGE_TYPE:
        return EVENT_PAGE_TYPE[event_type]
    if text and _HOME.match(text):
        return "home"
    return "other"


# ---- the model's features: name → kind ("string" = categorical) ---------------------------
MODEL_FEATURES: dict[str, str] = {
    "channel": "string",
    "campaign": "string",
    "landing_page_type": "string",
    "grade": "string",
    "subject": "string",
    "city_tier": "int",
    "device": "string",
    "funnel_step": "string",
    "funnel_step_ordinal": "int",
    "phone_valid": "int",
    "email_domain_type": "string",
    "submit_hour_cn": "int",
    "submit_weekday_cn": "int",
    "prior_leads": "int",
    "prior_channels": "int",
    "has_history": "int",
    **{c: "int" for c in COUNT_FEATURES},
    "days_since_last_touch": "float",
    "days_since_first_touch": "float",
    "engagement_trend": "float",
    "intent_score": "float",
    "is_customer": "int",
    "recency_days": "float",
    "frequency": "int",
    "monetary": "float",
    "rfm_segment": "string",
    "fit_score": "float",
    "interest_score": "float",
    "rule_score": "float",
    "rule_grade": "string",
}


# ---- vectorised helpers ------------------------------------------------------------------
def _floats(values: Sequence[Any] | None, n: int, default: float) -> np.ndarray:
    """Numbers with None/NaN/unparseable replaced by ``default``."""
    if values is None:
        return np.full(n, default, dtype=float)
    try:
        out = np.array(values, dtype=float)
    except (TypeError, ValueError):
        out = _floats_slow(values, n)
    out[~np.isfinite(out)] = default
    return out


def _floats_slow(values: Sequence[Any], n: int) -> np.ndarray:
    out = np.empty(n, dtype=float)
    for i, v in enumerate(values):
        try:
            out[i] = float(v) if v is not None and not isinstance(v, str | bytes) else np.nan
        except (TypeError, ValueError):
            out[i] = np.nan
    return out


def _map_unique(values: Sequence[Any], fn: Any) -> list[Any]:
    """``[fn(v) for v in values]``, calling ``fn`` once per distinct value (fast on big batches)."""
    if len(values) == 0:
        return []
    if len(values) <= SMALL_INPUT and isinstance(values, list | tuple):
        small = _map_small(values, fn)
        if small is not None:
            return small
    series = values if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    mapped = [fn(u) for u in uniques] + [fn(None)]
    table = np.empty(len(mapped), dtype=object)
    table[:] = mapped
    return table[codes].tolist()


SMALL_INPUT = 64  # up to this many values, a dict beats building a pandas Series


def _map_small(values: Sequence[Any], fn: Any) -> list[Any] | None:
    """``_map_unique`` without pandas: the same first-seen-value memo (as ``pd.factorize``:
    equal values such as ``1``, ``1.0`` and ``True`` share one call) and missing values
    (None, NaN, NaT, NA) mapped as ``fn(None)``; None for a value it cannot key (the caller
    then takes the pandas path)."""
    memo: dict[Any, Any] = {}
    out: list[Any] = []
    missing_result: list[Any] = []
    for v in values:
        if v is None or (v.__class__ is not str and _scalar_na(v)):
            if not missing_result:
                missing_result.append(fn(None))
            out.append(missing_result[0])
            continue
        try:
            mapped = memo.get(v, memo)
        except TypeError:  # unhashable
            return None
        if mapped is memo:
            mapped = memo[v] = fn(v)
        out.append(mapped)
    return out


def _scalar_na(v: Any) -> bool:
    if isinstance(v, float):
        return v != v
    if isinstance(v, int | str | bytes):
        return False
    try:
        return bool(pd.isna(v)) if np.ndim(v) == 0 else False
    except (TypeError, ValueError):
        return False


def _category_fn(field: str) -> Any:
    vocab = VOCABULARIES[field]
    allowed = set(vocab)
    lower = {v.lower(): v for v in vocab}

    def fn(v: Any) -> str:
        if isinstance(v, str):
            s = v.strip()
            return s if s in allowed else lower.get(s.lower(), UNKNOWN)
        return UNKNOWN

    return fn


def normalise_category(values: Sequence[Any], field: str) -> list[str]:
    """Stripped values in the field's vocabulary (case-insensitive); anything else ``"unknown"``."""
    return _map_unique(values, _category_fn(field))


def _free_text_one(v: Any) -> str:
    return v.strip().lower() if isinstance(v, str) and v.strip() else UNKNOWN


def _free_text(values: Sequence[Any]) -> list[str]:
    return _map_unique(values, _free_text_one)


def _city_tier_one(v: Any) -> int:
    if isinstance(v, bool) or v is None:
        return 0
    try:
        t = float(v)
    except (TypeError, ValueError):
        return 0
    return int(t) if t in schemas.CITY_TIERS else 0


def _city_tier(values: Sequence[Any]) -> list[int]:
    return _map_unique(values, _city_tier_one)


def _phone_valid_one(v: Any) -> int:
    if isinstance(v, str):
        return int(v.strip().lower() in {"true", "1", "yes"})
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return 0
    try:
        return int(bool(v))
    except (TypeError, ValueError):
        return 0


def _phone_valid(values: Sequence[Any]) -> list[int]:
    return _map_unique(values, _phone_valid_one)


def china_hour(ts_s: np.ndarray) -> list[int]:
    """Hour of day in China time for UTC epoch seconds (NaN → -1)."""
    ts = np.asarray(ts_s, dtype=float)
    local = np.floor((np.nan_to_num(ts) + CHINA_UTC_OFFSET_S) / 3600.0) % 24
    return np.where(np.isfinite(ts), local, -1).astype(np.int64).tolist()


def china_weekday(ts_s: np.ndarray) -> list[int]:
    """Weekday (Monday 0 … Sunday 6) in China time for UTC epoch seconds (NaN → -1)."""
    ts = np.asarray(ts_s, dtype=float)
    days = np.floor((np.nan_to_num(ts) + CHINA_UTC_OFFSET_S) / 86400.0)
    local = (days + 3) % 7  # 1970-01-01 was a Thursday
    return np.where(np.isfinite(ts), local, -1).astype(np.int64).tolist()


def _page_type_one(url: Any) -> str:
    return UNKNOWN if url == UNKNOWN or not isinstance(url, str) else url_page_type(url)


def _page_types(urls: Sequence[str]) -> list[str]:
    return _map_unique(urls, _page_type_one)


def normalise_submission(form: dict[str, Sequence[Any] | None], n: int | None = None
                         ) -> dict[str, list[Any]]:
    """Normalised fact tags of ``n`` submitted forms (equal-length columns; missing allowed)."""
    if n is None:
        n = max((len(v) for v in form.values() if v is not None), default=0)

    def col(name: str) -> Sequence[Any]:
        values = form.get(name)
        return [None] * n if values is None else values

    steps = normalise_category(col("funnel_step"), "funnel_step")
    ordinal = {s: i for i, s in enumerate(schemas.FUNNEL_STEPS)}
    landing = _free_text(col("landing_page"))
    return {
        "channel": normalise_category(col("channel"), "channel"),
        "campaign": _free_text(col("campaign")),
        "landing_page": landing,
        "landing_page_type": _page_types(landing),
        "grade": normalise_category(col("grade"), "grade"),
        "subject": normalise_category(col("subject"), "subject"),
        "city_tier": _city_tier(col("city_tier")),
        "device": normalise_category(col("device"), "device"),
        "funnel_step": steps,
        "funnel_step_ordinal": [ordinal.get(s, -1) for s in steps],
        "phone_valid": _phone_valid(col("phone_valid")),
        "email_domain_type": normalise_category(col("email_domain_type"), "email_domain_type"),
    }


def rfm_segment_codes(
    recency_days: np.ndarray,
    frequency: np.ndarray,
    monetary: np.ndarray,
    thresholds: dict[str, float],
) -> list[str]:
    """``"R1F0M1"``-style codes (1 = high) of the 8 RFM groups; ``"no_orders"`` for frequency 0."""
    r = recency_days <= float(thresholds["recency_days"])
    f = frequency >= float(thresholds["frequency"])
    m = monetary >= float(thresholds["monetary"])
    return [
        NO_ORDERS if fq <= 0 else f"R{int(ri)}F{int(fi)}M{int(mi)}"
        for fq, ri, fi, mi in zip(frequency, r, f, m, strict=True)
    ]


def transform_request(
    inputs: dict[str, Sequence[Any]], params: FeatureParams
) -> dict[str, list[Any]]:
    """All ``MODEL_FEATURES`` for a batch of requests (form fields + person snapshots), with the
    half-life and scoring tables of ``params`` (the feature version's, see ``features.params``)."""
    if not isinstance(params, FeatureParams):
        raise TypeError(
            f"transform_request: 'params' must be a FeatureParams, got {type(params).__name__}")
    half_life_days = params.half_life_days
    tables = params.tables
    n = max((len(v) for v in inputs.values() if v is not None), default=0)
    if inputs.get("snap_history") is not None:  # windows at the request time, not the snapshot's
        inputs = at_request_time(inputs, n, half_life_days)
    out: dict[str, list[Any]] = {}
    facts = normalise_submission({k: inputs.get(FORM_PREFIX + k) for k in FORM_FIELDS}, n)
    for name in MODEL_FEATURES:
        if name in facts:
            out[name] = facts[name]

    snap_ts = _floats(inputs.get("snap_ts_s"), n, np.nan)
    request_ts = _floats(inputs.get("request_ts_s"), n, np.nan)
    out["submit_hour_cn"] = china_hour(request_ts)
    out["submit_weekday_cn"] = china_weekday(request_ts)
    # no request time: evaluate at the snapshot's time (no decay)
    at = np.where(np.isfinite(request_ts), request_ts, snap_ts)
    has_snapshot = np.isfinite(snap_ts)
    # the snapshot of this very lead (request at the snapshot time) counts leads strictly
    # before; an older snapshot's leads are all earlier than the request
    own_snapshot = has_snapshot & ~(at > snap_ts)
    before = _floats(inputs.get("snap_leads_before"), n, 0.0)
    upto = _floats(inputs.get("snap_leads_upto"), n, 0.0)
    ch_before = _floats(inputs.get("snap_channels_before"), n, 0.0)
    ch_upto = _floats(inputs.get("snap_channels_upto"), n, 0.0)
    out["prior_leads"] = np.where(own_snapshot, before, upto).astype(np.int64).tolist()
    out["prior_channels"] = np.where(own_snapshot, ch_before, ch_upto).astype(np.int64).tolist()

    has_history = _floats(inputs.get("snap_has_history"), n, 0.0) > 0
    out["has_history"] = has_history.astype(np.int64).tolist()
    counts = {c: _floats(inputs.get(SNAP_PREFIX + c), n, 0.0) for c in COUNT_FEATURES}
    for c, values in counts.items():
        out[c] = values.astype(np.int64).tolist()

    def days_since(ts_name: str, present: np.ndarray) -> np.ndarray:
        ts = _floats(inputs.get(ts_name), n, np.nan)
        ok = present & np.isfinite(ts) & np.isfinite(at)
        days = np.maximum(np.where(ok, at - np.nan_to_num(ts), 0.0), 0.0) / 86400.0
        return np.where(ok, days, DAYS_SENTINEL)

    last_touch_days = days_since("snap_last_touch_ts_s", has_history)
    out["days_since_last_touch"] = last_touch_days.tolist()
    out["days_since_first_touch"] = days_since("snap_first_touch_ts_s", has_history).tolist()
    out["engagement_trend"] = _floats(inputs.get("snap_engagement_trend"), n, 0.0).tolist()
    age_days = np.where(has_snapshot & np.isfinite(at), np.maximum(at - snap_ts, 0.0), 0.0)
    age_days = np.nan_to_num(age_days) / 86400.0
    intent = _floats(inputs.get("snap_intent"), n, 0.0) * np.power(0.5, age_days / half_life_days)
    out["intent_score"] = intent.tolist()

    frequency = _floats(inputs.get("snap_order_count"), n, 0.0)
    monetary = _floats(inputs.get("snap_order_amount"), n, 0.0)
    is_customer = frequency > 0
    recency = days_since("snap_last_order_ts_s", is_customer)
    out["is_customer"] = is_customer.astype(np.int64).tolist()
    out["recency_days"] = recency.tolist()
    out["frequency"] = frequency.astype(np.int64).tolist()
    out["monetary"] = np.where(is_customer, monetary, 0.0).tolist()
    out["rfm_segment"] = rfm_segment_codes(
        recency, frequency, monetary, tables.table("rfm_thresholds")
    )

    fit = score2d.fit_score(
        tables,
        phone_valid=out["phone_valid"],
        email_domain_type=out["email_domain_type"],
        city_tier=out["city_tier"],
        grade=out["grade"],
        funnel_step=out["funnel_step"],
        channel=out["channel"],
    )
    interest = score2d.interest_score(
        tables,
        offline_event_90d=counts["offline_event_90d"],
        live_class_90d=counts["live_class_90d"],
        download_90d=counts["whitepaper_download_90d"],
        email_open_90d=counts["email_open_90d"],
        site_visits_180d=counts[f"site_visits_{SITE_WINDOW_DAYS}d"],
        days_since_last_touch=last_touch_days,
    )
    rule = fit + interest
    out["fit_score"] = fit.tolist()
    out["interest_score"] = interest.tolist()
    out["rule_score"] = rule.tolist()
    out["rule_grade"] = score2d.rule_grade(tables, rule)
    return {name: out[name] for name in MODEL_FEATURES}
