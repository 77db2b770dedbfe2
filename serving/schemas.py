"""Request and response schemas of the prediction service (documented in the OpenAPI spec).

Identifier fields accept any JSON value on purpose: they are checked and hashed by
``leadscore.identifiers`` (unusable ones are reported by kind and reason, never echoed), so that
a malformed raw identifier can never appear in a validation message. Every request model hides
input values in its validation errors (``hide_input_in_errors``): BentoML logs a failed
validation with its message, and that message must not carry what the client sent. Free-text
fields (``campaign``, ``landing_page``, ``form.city``, an event's ``url``) are scrubbed as they
are validated (``leadscore.identifiers.scrub_text`` / ``scrub_url``: query strings and fragments
of URLs dropped; e-mail addresses, phone-like digit runs and WeChat-id-like tokens replaced by
``[email]``, ``[phone]``, ``[wechat]``), so no raw identifier in them reaches the online store,
the prediction log or an answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from leadscore.identifiers import scrub_text, scrub_url
from leadscore.schemas import (
    CHANNELS,
    DEVICES,
    EVENT_TYPES,
    FOLLOWUP_CHANNELS,
    FUNNEL_STEPS,
    GRADES,
    SUBJECTS,
)

Channel = Literal[CHANNELS]  # type: ignore[valid-type]
FunnelStep = Literal[FUNNEL_STEPS]  # type: ignore[valid-type]
Grade = Literal[GRADES]  # type: ignore[valid-type]
Subject = Literal[SUBJECTS]  # type: ignore[valid-type]
Device = Literal[DEVICES]  # type: ignore[valid-type]
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
# funnel steps after the form, sent as events of their lead (serving.rescoring)
FunnelEventType = Literal[FUNNEL_STEPS[1:]]  # type: ignore[valid-type]

MAX_BATCH = 1000
# How far in the future a client clock may be before a timestamp is refused.
MAX_CLOCK_SKEW = timedelta(minutes=5)
# Oldest submission accepted (a CRM replaying very old forms is a mistake, not a lead).
MAX_AGE = timedelta(days=365)


_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


def _iso_text(value: Any, field: str) -> Any:
    """Refuse what pydantic would read as a Unix timestamp (a JSON number or numeric text):
    request times are ISO 8601 text with an offset. ``datetime`` objects (library callers) pass."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or _NUMBER.fullmatch(value):
        raise ValueError(f"{field} must be ISO 8601 text with an offset, e.g. "
                         "2026-11-22T09:30:00+08:00 (a Unix timestamp is refused)")
    return value


def _check_time(value: datetime, field: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{field} needs a timezone offset, e.g. 2026-11-22T09:30:00+08:00")
    now = datetime.now(UTC)
    if value - now > MAX_CLOCK_SKEW:
        raise ValueError(f"{field} lies in the future (more than 5 minutes ahead of the server)")
    if now - value > MAX_AGE:
        raise ValueError(f"{field} is more than 365 days old")
    return value.astimezone(UTC)


# free text, scrubbed at the door (after the length check)
FreeText = Annotated[str, AfterValidator(scrub_text)]
FreeUrl = Annotated[str, AfterValidator(scrub_url)]

# request models: unknown keys refused, input values never repeated in error messages
STRICT = ConfigDict(extra="forbid", hide_input_in_errors=True)


class FormFields(BaseModel):
    """Form fields of the submission; all optional, unknown keys refused."""

    model_config = STRICT

    grade: Grade | None = Field(None, description="School grade G1–G12.")
    subject: Subject | None = None
    city: FreeText | None = Field(None, max_length=64)
    city_tier: Literal[1, 2, 3, 4] | None = Field(
        None, description="1 = first-tier city … 4; derived from city when absent."
    )
    device: Device | None = None

    @field_validator("city_tier", mode="before")
    @classmethod
    def _city_tier_whole_number(cls, value: Any) -> Any:
        # JSON ``true`` and ``1.0`` would pass as 1; only the numbers 1–4 are accepted
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError("city_tier must be one of the whole numbers 1, 2, 3, 4 "
                             "(not true/false, a decimal or text)")
        return value


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
    campaign: FreeText = Field("", max_length=128)
    landing_page: FreeUrl = Field("", max_length=256)
    funnel_step: FunnelStep = "submitted"
    form: FormFields = Field(default_factory=FormFields)
    identifiers: Identifiers = Field(default_factory=Identifiers)

    @field_validator("submitted_at", mode="before")
    @classmethod
    def _submitted_at_text(cls, value: Any) -> Any:
        return _iso_text(value, "submitted_at")

    @field_validator("submitted_at")
    @classmethod
    def _submitted_at_sane(cls, value: datetime) -> datetime:
        return _check_time(value, "submitted_at")


class BatchRequest(BaseModel):
    model_config = STRICT

    submissions: list[Submission] = Field(min_length=1, max_length=MAX_BATCH)


class Event(BaseModel):
    """One behaviour event pushed by the CRM or website, or a funnel step of a lead
    (``verified``, ``followed_account``, ``booked_trial``: ``lead_id`` required)."""

    model_config = STRICT

    lead_id: str | None = Field(None, max_length=64)
    identifiers: Identifiers = Field(default_factory=Identifiers)
    event_type: EventType | FunnelEventType
    event_time: datetime
    url: FreeUrl = Field("", max_length=512)
    dwell_seconds: float = Field(0.0, ge=0, le=86400)

    @field_validator("event_time", mode="before")
    @classmethod
    def _event_time_text(cls, value: Any) -> Any:
        return _iso_text(value, "event_time")

    @field_validator("event_time")
    @classmethod
    def _event_time_sane(cls, value: datetime) -> datetime:
        return _check_time(value, "event_time")

    @model_validator(mode="after")
    def _step_names_its_lead(self) -> Event:
        if self.event_type in FUNNEL_STEPS and not self.lead_id:
            raise PydanticCustomError(
                "funnel_step_without_lead",
                "lead_id: a funnel-step event (verified, followed_account, booked_trial) "
                "must name its lead")
        return self


class EventsRequest(BaseModel):
    model_config = STRICT

    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH)


class OutcomeItem(BaseModel):
    """The CRM's outcome of a lead: it paid (``converted``) or it is closed unpaid."""

    model_config = STRICT

    lead_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-:.]+$")
    outcome: Literal["converted", "closed"]
    time: datetime = Field(description="When it converted (paid) or was closed; ISO 8601 "
                           "with offset, not before the lead's submitted_at.")
    amount: float | None = Field(None, ge=0, le=1e9, allow_inf_nan=False,
                                 description="Paid amount (converted only).")
    followup_channel: Literal[FOLLOWUP_CHANNELS] | None = Field(  # type: ignore[valid-type]
        None, description="Who followed the lead up.")

    @field_validator("time", mode="before")
    @classmethod
    def _time_text(cls, value: Any) -> Any:
        return _iso_text(value, "time")

    @field_validator("time")
    @classmethod
    def _time_sane(cls, value: datetime) -> datetime:
        return _check_time(value, "time")

    @model_validator(mode="after")
    def _amount_needs_conversion(self) -> OutcomeItem:
        if self.outcome == "closed" and self.amount:
            raise PydanticCustomError(
                "amount_without_conversion",
                "amount: only a converted lead has a paid amount (a closed one: none or 0)")
        return self


class OutcomesRequest(BaseModel):
    """``POST /outcomes``: each item is checked on its own (``OutcomeItem``); a bad one is
    refused in the answer with its field and reason, the others are recorded."""

    model_config = STRICT

    outcomes: Annotated[list[JsonValue], WithJsonSchema({
        "type": "array", "minItems": 1, "maxItems": MAX_BATCH,
        "items": OutcomeItem.model_json_schema(),
        "title": "Outcomes"})] = Field(min_length=1, max_length=MAX_BATCH)


class OutcomeRefusal(BaseModel):
    """An outcome not recorded: its position in the request, the field and why."""

    index: int
    field: str
    reason: str
    message: str


class OutcomesResponse(BaseModel):
    recorded: int = Field(description="Leads closed by these outcomes now.")
    duplicates: int = Field(0, description="Outcomes the leads had already (ignored).")
    notified: int = Field(0, description="Final notifications queued for the webhook.")
    rejected: dict[str, int] = Field(default_factory=dict,
                                     description="Refused outcomes by reason.")
    refused: list[OutcomeRefusal] = Field(default_factory=list)


class ReloadRequest(BaseModel):
    """``POST /reload`` takes no fields (an empty body or ``{}``)."""

    model_config = STRICT


RequestModel = TypeVar("RequestModel", bound=BaseModel)


def parse_request(model: type[RequestModel], body: bytes) -> RequestModel:
    """Validate a request body as ``model``; raise pydantic's ``ValidationError``.

    Besides the model's own rules, a key given twice in any JSON object is refused
    (``json_duplicate_key`` at that key's location): JSON parsers keep the last value silently.
    An empty body reads as ``{}``.
    """
    body = body or b"{}"
    duplicates = list(_duplicate_keys(body))
    if duplicates:
        raise ValidationError.from_exception_data(model.__name__, [
            InitErrorDetails(type=PydanticCustomError(
                "json_duplicate_key", "the key is given more than once in this JSON object"),
                loc=loc, input=None)
            for loc in duplicates])
    return model.model_validate_json(body)


class _Repeated(dict):
    """A JSON object read from pairs in which some key came more than once."""

    repeated: tuple[str, ...] = ()


def _duplicate_keys(body: bytes) -> Iterator[tuple[str | int, ...]]:
    """Locations of keys repeated within one JSON object (none when the body is not JSON:
    the model's validation reports that)."""
    found = False

    def pairs(items: list[tuple[str, Any]]) -> dict:
        nonlocal found
        obj = dict(items)
        if len(obj) == len(items):
            return obj
        found = True
        seen: set[str] = set()
        repeated = _Repeated(obj)
        repeated.repeated = tuple(dict.fromkeys(k for k, _ in items if k in seen or seen.add(k)))
        return repeated

    try:
        tree = json.loads(body, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return
    if found:
        yield from _repeated_locations(tree, ())


def _repeated_locations(node: Any, loc: tuple[str | int, ...]
                        ) -> Iterator[tuple[str | int, ...]]:
    if isinstance(node, dict):
        for key in getattr(node, "repeated", ()):
            yield (*loc, key)
        for key, value in node.items():
            yield from _repeated_locations(value, (*loc, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _repeated_locations(value, (*loc, index))


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
    arm: Literal["policy", "exploration", "control"] = Field(
        "policy", description="How the channel was chosen: by the routing policy, drawn at "
        "random (exploration: the randomised share channel effects are learned from) or by the "
        "rule (control group).")
    reasons: dict[str, list[Reason]] = Field(description="'positive' and 'negative' reasons.")
    tags: dict[str, float | int | str | None] = Field(description="Fact/analytic tags used.")
    identifiers_rejected: dict[str, str] = Field(
        default_factory=dict, description="Identifier kinds that could not be used, and why."
    )
    model: ModelRef
    policy: str
    degraded: bool = Field(description="True when the answer rests on the request alone.")
    degraded_reason: Literal["online_store_unavailable", "online_store_reset",
                             "person_unknown"] | None = Field(
        None, description="Why the answer is degraded: the online store could not be read; it "
        "lost its data (e.g. Redis restarted empty) and is not reloaded yet; or it holds no "
        "behaviour or orders of this person (e.g. a brand-new person)."
    )
    scored_at: datetime


class BatchResponse(BaseModel):
    predictions: list[Prediction]


class EventsResponse(BaseModel):
    accepted: int
    persons_updated: int
    rejected: dict[str, int] = Field(default_factory=dict)
    rescoring_queued: int = Field(0, description="Accepted events queued for re-scoring the "
                                  "person's open leads (docs/api.md, 'Re-scoring').")
