"""Re-scoring's pure rules: hysteresis, change kinds, trend, the webhook signature, back-off,
the webhook settings."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from crm_data.lead_state import DAY_US, HistoryRow
from leadscore.config import ConfigError, Settings
from serving.rescoring import (
    change_kind,
    event_key,
    held_probability,
    idempotency_key,
    tier_bands,
    trend,
)
from serving.schemas import Event
from serving.webhook import backoff_seconds, sign, signature_header, verify_signature

CUTOFFS = {"A": 0.35, "B": 0.15, "C": 0.05}


def _tier(p: float) -> str:
    return next(t for t, (lo, hi) in tier_bands(CUTOFFS).items() if lo <= p < hi)


@pytest.mark.parametrize(("p", "tier", "kept"), [
    (0.36, "B", "B"),   # above B's band, but within the margin: stays B
    (0.37, "B", "A"),   # past the margin: moves up
    (0.14, "B", "B"),   # below, within the margin: stays
    (0.12, "B", "C"),   # past the margin: moves down
    (0.50, "A", "A"),
    (0.34, "A", "A"),   # an A lead dipping just under A's cut-off stays A
    (0.30, "A", "B"),
    (0.06, "D", "D"),   # a D lead just over C's cut-off stays D
    (0.08, "D", "C"),
    (0.0, "D", "D"),
])
def test_hysteresis_keeps_a_tier_inside_its_margin(p: float, tier: str, kept: str) -> None:
    held = held_probability(p, tier, CUTOFFS, margin=0.02)
    assert _tier(held) == kept
    if kept != tier:
        assert held == p  # a lead that moves is routed on its own probability


def test_a_hovering_lead_does_not_flap() -> None:
    tier, changes = "B", 0
    for p in [0.34, 0.36, 0.345, 0.355, 0.349, 0.351] * 10:  # hovering at A's cut-off
        new = _tier(held_probability(p, tier, CUTOFFS, 0.02))
        changes += new != tier
        tier = new
    assert changes == 0
    no_margin = ["B"]
    for p in [0.34, 0.36] * 5:
        no_margin.append(_tier(held_probability(p, no_margin[-1], CUTOFFS, 0.0)))
    assert sum(a != b for a, b in zip(no_margin, no_margin[1:], strict=False)) == 9


def test_change_kinds() -> None:
    assert change_kind("D", "A") == "upgrade"
    assert change_kind("A", "C") == "downgrade"
    assert change_kind("B", "B") == "channel"


def _history(points: list[tuple[float, float]]) -> list[HistoryRow]:
    return [HistoryRow("L", int(day * DAY_US), 0, p, "C", "tmk", "1", "x", "submitted")
            for day, p in points]


def test_trend_against_a_week_before() -> None:
    assert trend(_history([(0, 0.1), (3, 0.12), (8, 0.2)]), 0.02) == "improving"
    assert trend(_history([(0, 0.3), (8, 0.2)]), 0.02) == "declining"
    assert trend(_history([(0, 0.1), (8, 0.11)]), 0.02) == "steady"
    # the base is the last score at least a week before the latest, not the first one
    assert trend(_history([(0, 0.5), (2, 0.1), (10, 0.11)]), 0.02) == "steady"
    assert trend(_history([(0, 0.1)]), 0.02) == "steady"


def test_signature_round_trip_and_refusals() -> None:
    body = b'{"lead_id":"L-1","tier":"A"}'
    header = signature_header("s3cret", body)
    assert verify_signature("s3cret", header, body)
    assert not verify_signature("other", header, body)
    assert not verify_signature("s3cret", header, body + b" ")
    assert not verify_signature("s3cret", None, body)
    assert not verify_signature("s3cret", "t=abc,v1=00", body)
    old = signature_header("s3cret", body, timestamp=int(time.time()) - 3600)
    assert not verify_signature("s3cret", old, body)  # a replayed old request
    # the documented recipe: HMAC-SHA256 over "<t>." + body, hex
    import hashlib
    import hmac
    stamp = 1_700_000_000
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", stamp, body) == expected


def test_backoff_grows_exponentially_and_is_capped() -> None:
    waits = [backoff_seconds(n, 1.0, 60.0, jitter=1.0) for n in range(1, 9)]
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60]
    for _ in range(200):
        w = backoff_seconds(3, 1.0, 60.0)
        assert 3.2 <= w <= 4.0
    assert backoff_seconds(10_000, 1.0, 60.0, jitter=1.0) == 60.0
    with pytest.raises(ValueError, match="attempts"):
        backoff_seconds(0, 1.0, 60.0)


def test_event_keys_and_idempotency_keys() -> None:
    at = datetime.now(UTC)
    a = Event(lead_id="L-1", event_type="web_visit", event_time=at, url="/p")
    b = Event(lead_id="L-2", event_type="web_visit", event_time=at, url="/p")
    assert event_key(a, "P1") == event_key(b, "P1")  # the same person's same visit
    assert event_key(a, "P1") != event_key(a, "P2")
    s1 = Event(lead_id="L-1", event_type="verified", event_time=at)
    s2 = Event(lead_id="L-2", event_type="verified", event_time=at)
    assert event_key(s1, "P1") != event_key(s2, "P1")  # steps belong to their lead
    assert idempotency_key("L-1", 1) == idempotency_key("L-1", 1)
    assert idempotency_key("L-1", 1) != idempotency_key("L-1", 2)


def test_a_step_event_names_its_lead() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="lead_id: a funnel-step event"):
        Event(event_type="booked_trial", event_time=datetime.now(UTC))


@pytest.mark.parametrize("url", ["ftp://crm.example/hook", "crm.example/hook", "http://",
                                 "file:///etc/passwd"])
def test_webhook_url_must_be_http(url: str) -> None:
    with pytest.raises(ConfigError, match="webhook_url.*http:// or https://"):
        Settings(webhook_url=url, webhook_secret="s")


def test_webhook_needs_a_secret_and_hides_it() -> None:
    with pytest.raises(ConfigError, match="webhook_secret.*required when webhook_url"):
        Settings(webhook_url="https://crm.example/hook")
    settings = Settings(webhook_url="https://u:pw@crm.example/hook", webhook_secret="hidden")
    assert "hidden" not in repr(settings)
    with pytest.raises(ConfigError) as info:
        Settings(webhook_url="gopher://u:pw@crm.example/", webhook_secret="hidden")
    assert "pw" not in str(info.value) and "hidden" not in str(info.value)
