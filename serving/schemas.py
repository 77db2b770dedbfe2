"""Request and response schemas of the prediction service (documented in the OpenAPI spec).

Identifier fields accept any JSON value on purpose: they are checked and hashed by
``leadscore.identifiers`` (unusable ones are reported by kind and reason, never echoed), so that
a malformed raw identifier can never appear in a validation message. Every request model hides
input values in its validation errors (``hide_input_in_errors``): BentoML logs a failed
validation with its message, and that message must not carry what the client sent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from leadscore.schemas import CHANNELS, DEVICES, EVENT_TYPES, FUNNEL_STEPS, GRADES, SUBJECTS

Channel = Literal[CHANNELS]  # type: ignore[valid-type]
FunnelStep = Literal[FUNNEL_STEPS]  # type: ignore[valid-type]
Grade = Literal[GRADES]  # type: ignore[valid-type]
Subject = Literal[SUBJECTS]  # type: ignore[valid-type]
Device = Literal[DEVICES]  # type: ignore[valid-type]
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]

MAX_BATCH = 1000
# How far in the future a client clock may be before a timestamp is refused.
MAX_CLOCK_SKEW = timedelta(minutes=5)
# Oldest submission accepted (a CRM replaying very old forms is a mistake, not a lead).
MAX_AGE = timedelta(days=365)


def _check_time(value: datetime, field: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{field} needs a timezone offset, e.g. 2026-11-22T09:30:00+08:00")
    now = datetime.now(UTC)
    if value - now > MAX_CLOCK_SKEW:
        raise ValueError(f"{field} lies in the future (more than 5 minutes ahead of the server)")
    if now - value > MAX_AGE:
        raise ValueError(f"{field} is more than 365 days old")
    return value.astimezone(UTC)


# request models: unknown keys refused, input values never repeated in error messages
STRICT = ConfigDict(extra="forbid", hide_input_in_errors=True)


class FormFields(BaseModel):
    """Form fields of the submission; all optional, unknown keys refused."""

    model_config = STRICT

    grade: Grade | None = Field(None, description="School grade G1–G12.")
    subject: Subject | None = None
    city: str | None = Field(None, max_length=64)
    city_tier: Literal[1, 2, 3, 4] | None = Field(
        None, description="1 = first-tier city … 4; derived from city when absent."
    )
    device: Device | None = None


class Identifiers(BaseModel):
    """Raw identifiers, normalised and hashed at the door; raw values are never stored."""

    model_config = STRICT

    phone: JsonValue = Field(None, description="Mainland mobile number, any common format.")
    wechat_id: JsonValue = None
    email: JsonValue = None
    cookie_id: JsonValue = None


class Submission(BaseModel):
    """One form submission from the CRM."""

    model_config = STRICT

    lead_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-:.]+$")
    submitted_at: datetime = Field(description="ISO 8601 with offset; ≤ 5 min in the future.")
    channel: Channel
    campaign: str = Field("", max_length=128)
    landing_page: str = Field("", max_length=256)
    funnel_step: FunnelStep = "submitted"
    form: FormFields = Field(default_factory=FormFields)
    identifiers: Identifiers = Field(default_factory=Identifiers)

    @field_validator("submitted_at")
    @classmethod
    def _submitted_at_sane(cls, value: datetime) -> datetime:
        return _check_time(value, "submitted_at")


class BatchRequest(BaseModel):
    model_config = STRICT

    submissions: list[Submission] = Field(min_length=1, max_length=MAX_BATCH)


class Event(BaseModel):
    """One behaviour event pushed by the CRM or website."""

    model_config = STRICT

    lead_id: str | None = Field(None, max_length=64)
    identifiers: Identifiers = Field(default_factory=Identifiers)
    event_type: EventType
    event_time: datetime
    url: str = Field("", max_length=512)
    dwell_seconds: float = Field(0.0, ge=0, le=86400)

    @field_validator("event_time")
    @classmethod
    def _event_time_sane(cls, value: datetime) -> datetime:
        return _check_time(value, "event_time")


class EventsRequest(BaseModel):
    model_config = STRICT

    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH)


class Reason(BaseModel):
    """One reason: the feature, its value as text, its log-odds contribution, a sentence."""

    feature: str
    value: str | None = None
    text: str
    contribution: float


class ModelRef(BaseModel):
    name: str
    version: str


class Prediction(BaseModel):
    """The answer for one submission."""

    lead_id: str
    person_id: str
    probability: float = Field(description="Calibrated conversion probability.")
    tier: Literal["A", "B", "C", "D"]
    channel: Literal["top_sales", "sales", "tmk", "ai_bot"]
    control: bool = Field(description="Routed by the rule policy as part of the control group.")
    reasons: dict[str, list[Reason]] = Field(description="'positive' and 'negative' reasons.")
    tags: dict[str, float | int | str | None] = Field(description="Fact/analytic tags used.")
    identifiers_rejected: dict[str, str] = Field(
        default_factory=dict, description="Identifier kinds that could not be used, and why."
    )
    model: ModelRef
    policy: str
    degraded: bool = Field(description="True when the answer rests on the request alone.")
    degraded_reason: Literal["online_store_unavailable", "person_unknown"] | None = Field(
        None, description="Why the answer is degraded: the online store could not be read, or "
        "it holds no behaviour or orders of this person (e.g. a brand-new person)."
    )
    scored_at: datetime


class BatchResponse(BaseModel):
    predictions: list[Prediction]


class EventsResponse(BaseModel):
    accepted: int
    persons_updated: int
    rejected: dict[str, int] = Field(default_factory=dict)
