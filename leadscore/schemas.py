"""Vocabularies and the declared schemas of the raw CRM tables.

These are the contracts between the CRM export (or ``leadscore generate``), validation,
One ID, the feature code and the service. Timestamps are UTC (``timestamp[us, tz=UTC]``).
"""

from __future__ import annotations

from dataclasses import dataclass

from leadscore.identifiers import ID_TYPES

CHANNELS: tuple[str, ...] = (
    "sem", "feed_ads", "channel_agent", "list_purchase", "seo", "app", "wechat_private",
    "new_media",
)
FUNNEL_STEPS: tuple[str, ...] = ("submitted", "verified", "followed_account", "booked_trial")
# The K12 case's classes by funnel step (D/C/B/A).
FUNNEL_CLASS: dict[str, str] = {
    "submitted": "D", "verified": "C", "followed_account": "B", "booked_trial": "A",
}
FOLLOWUP_CHANNELS: tuple[str, ...] = ("top_sales", "sales", "tmk", "ai_bot")
# the arms of live routing (routing.control): the policy, randomised exploration, the control group
ROUTING_ARMS: tuple[str, ...] = ("policy", "exploration", "control")
TIERS: tuple[str, ...] = ("A", "B", "C", "D")
# The registry alias of the model in service (MLflow model-version alias).
CHAMPION_ALIAS = "champion"
# Probabilities are kept inside [PROBABILITY_CLIP, 1 - PROBABILITY_CLIP] wherever a log loss or
# a logit is taken of them (calibration, evaluation, the registry's champion gate).
PROBABILITY_CLIP = 1e-6
EVENT_TYPES: tuple[str, ...] = (
    "web_visit", "pricing_page", "course_page", "recruitment_page", "email_open",
    "email_click", "whitepaper_download", "live_class", "offline_event", "trial_class",
    "wechat_read", "app_open",
)
# The funnel steps a lead reaches after its form: events of the lead (``event_type`` = the step),
# at their own times, beside the behaviour events (``POST /events`` takes both). The leads
# table's ``funnel_step`` is the step the form recorded at submission.
STEP_EVENT_TYPES: tuple[str, ...] = FUNNEL_STEPS[1:]
GRADES: tuple[str, ...] = tuple(f"G{i}" for i in range(1, 13))
SUBJECTS: tuple[str, ...] = ("math", "english", "chinese", "physics", "chemistry", "coding", "art")
DEVICES: tuple[str, ...] = ("ios", "android", "pc", "mac", "other")
CITY_TIERS: tuple[int, ...] = (1, 2, 3, 4)
EMAIL_DOMAIN_TYPES: tuple[str, ...] = ("none", "invalid", "free", "corporate", "edu")


@dataclass(frozen=True)
class Column:
    """One declared column: its logical type, whether it may be null, allowed values."""

    name: str
    dtype: str  # "string", "timestamp", "int", "float", "bool"
    required: bool = True
    nullable: bool = False
    allowed: tuple | None = None
    unique: bool = False


@dataclass(frozen=True)
class TableSchema:
    name: str
    columns: tuple[Column, ...]
    # columns holding timestamps that may not lie in the future
    not_future: tuple[str, ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


LEADS = TableSchema(
    "leads",
    (
        Column("lead_id", "string", unique=True),
        Column("created_at", "timestamp"),
        Column("channel", "string", allowed=CHANNELS),
        Column("campaign", "string"),
        Column("landing_page", "string"),
        Column("grade", "string", nullable=True, allowed=GRADES),
        Column("subject", "string", nullable=True, allowed=SUBJECTS),
        Column("city", "string", nullable=True),
        Column("city_tier", "int", nullable=True, allowed=CITY_TIERS),
        Column("device", "string", nullable=True, allowed=DEVICES),
        Column("funnel_step", "string", allowed=FUNNEL_STEPS),
        Column("phone_valid", "bool"),
        Column("email_domain_type", "string", allowed=EMAIL_DOMAIN_TYPES),
    ),
    not_future=("created_at",),
)

# One row per (lead, identifier): only salted hashes, never raw values.
IDENTITIES = TableSchema(
    "identities",
    (
        Column("lead_id", "string"),
        Column("id_type", "string", allowed=ID_TYPES),
        Column("id_hash", "string"),
    ),
)

EVENTS = TableSchema(
    "events",
    (
        Column("event_id", "string", unique=True),
        Column("lead_id", "string"),
        Column("event_type", "string", allowed=EVENT_TYPES + STEP_EVENT_TYPES),
        Column("event_time", "timestamp"),
        Column("url", "string"),
        Column("dwell_seconds", "float"),
    ),
    not_future=("event_time",),
)

# Earlier purchases of returning customers, keyed by a hashed identifier.
ORDERS = TableSchema(
    "orders",
    (
        Column("order_id", "string", unique=True),
        Column("id_hash", "string"),
        Column("ordered_at", "timestamp"),
        Column("amount", "float"),
    ),
    not_future=("ordered_at",),
)

OUTCOMES = TableSchema(
    "outcomes",
    (
        Column("lead_id", "string", unique=True),
        Column("converted", "bool"),
        Column("converted_at", "timestamp", nullable=True),
        Column("amount", "float"),
        Column("followup_channel", "string", allowed=FOLLOWUP_CHANNELS),
    ),
    not_future=("converted_at",),
)

RAW_TABLES: dict[str, TableSchema] = {
    t.name: t for t in (LEADS, IDENTITIES, EVENTS, ORDERS, OUTCOMES)
}

# truth/ tables (generator only; no feature may read them)
TRUTH_LEADS_COLUMNS: tuple[str, ...] = (
    "lead_id", "true_person_id", "propensity_ai_bot", "propensity_tmk", "propensity_sales",
    "propensity_top_sales",
)

# City → tier (1 = largest): the form's city becomes ``city_tier``; unknown cities are missing.
CITY_TIER_BY_NAME: dict[str, int] = dict((
    ("beijing", 1), ("shanghai", 1), ("guangzhou", 1), ("shenzhen", 1),
    ("chengdu", 2), ("hangzhou", 2), ("wuhan", 2), ("nanjing", 2), ("xian", 2),
    ("chongqing", 2), ("tianjin", 2), ("suzhou", 2), ("changsha", 2), ("zhengzhou", 2),
    ("qingdao", 2), ("shenyang", 2), ("dongguan", 2), ("hefei", 2), ("ningbo", 2),
    ("foshan", 3), ("kunming", 3), ("xiamen", 3), ("fuzhou", 3), ("jinan", 3),
    ("harbin", 3), ("nanning", 3), ("guiyang", 3), ("shijiazhuang", 3), ("taiyuan", 3),
    ("nanchang", 3), ("lanzhou", 3), ("wenzhou", 3),
    ("ganzhou", 4), ("zhanjiang", 4), ("yichang", 4), ("mianyang", 4), ("luoyang", 4),
    ("baoding", 4), ("jiujiang", 4), ("shangrao", 4),
))
