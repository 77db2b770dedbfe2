"""Outcomes close leads (``POST /outcomes``'s rules on a real SQLite lead state), and a lead
whose registration a killed service lost is recovered from its prediction-log record."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from crm_data.lead_state import (
    HistoryRow,
    LeadRow,
    LeadStateStore,
    OutcomeRow,
    now_us,
    to_us,
)
from crm_data.prediction_log import PredictionRecord, SqlitePredictionLog
from features.request import MODEL_FEATURES, PAGE_TYPES, normalise_submission, url_page_type
from leadscore.config import Settings
from leadscore.schemas import CHANNELS, DEVICES, FUNNEL_STEPS, GRADES, SUBJECTS
from serving.rescoring import PAGE_OF_TYPE, Rescorer, form_from_features
from serving.schemas import Event

NOW = datetime.now(UTC).replace(microsecond=0)
HOOK = {"webhook_url": "http://127.0.0.1:9/hook", "webhook_secret": "s"}


def _lead(lead_id: str, submitted: datetime, changes: int = 0) -> LeadRow:
    t = to_us(submitted)
    return LeadRow(lead_id, "P-" + lead_id, t, {"channel": "sem"}, {}, "submitted", "open",
                   0.2, "B", "sales", False, "1", 0.2, "B", t, "B", "sales", changes=changes)


@pytest.fixture
def store(tmp_path: Path) -> LeadStateStore:
    s = LeadStateStore.sqlite(tmp_path / "lead_state.sqlite")
    s.register([_lead("L-1", NOW - timedelta(days=2)), _lead("L-2", NOW - timedelta(days=2),
                                                            changes=1)], [])
    return s


def _rescorer(store: LeadStateStore, tmp_path: Path, **settings: Any) -> Rescorer:
    return Rescorer(object(), Settings(**settings).with_workdir(tmp_path), store)


def _item(lead_id: str, outcome: str = "converted", days_ago: float = 1, **extra: Any) -> dict:
    return {"lead_id": lead_id, "outcome": outcome,
            "time": (NOW - timedelta(days=days_ago)).isoformat(), **extra}


def test_an_outcome_closes_its_lead_once_and_is_final(store: LeadStateStore,
                                                      tmp_path: Path) -> None:
    rescorer = _rescorer(store, tmp_path, **HOOK)
    got = rescorer.handle_outcomes([_item("L-1", amount=1999.0, followup_channel="sales"),
                                    _item("L-1")])  # the same again within the request
    assert (got.recorded, got.duplicates, got.refused) == (1, 1, [])
    assert got.notified == 0  # never notified before: the CRM, which sent it, knows
    lead = store.leads(["L-1"])["L-1"]
    assert lead.status == "converted"
    assert store.outcomes(["L-1"])["L-1"] == OutcomeRow(
        "L-1", "converted", to_us(NOW - timedelta(days=1)), 1999.0, "sales", "api")
    assert "L-1" not in {lead.lead_id for lead in store.nurture()}  # out of the pool
    assert store.open_leads_of(["P-L-1"]) == []  # no more re-scoring
    again = rescorer.handle_outcomes([_item("L-1", days_ago=0.5), _item("L-1", "closed")])
    assert (again.recorded, again.duplicates) == (0, 1)  # a retried request is safe
    assert [(r.index, r.field, r.reason) for r in again.refused] == [
        (1, "outcome", "outcome_conflict")]
    assert store.leads(["L-1"])["L-1"].status == "converted"


def test_a_lead_the_crm_was_told_of_gets_a_final_notification(store: LeadStateStore,
                                                             tmp_path: Path) -> None:
    got = _rescorer(store, tmp_path, **HOOK).handle_outcomes([_item("L-2", "closed")])
    assert (got.recorded, got.notified) == (1, 1)
    (message,) = store.outbox_rows()
    body = json.loads(message["payload"])
    assert (body["change"], body["sequence"], body["answer"]["status"]) == ("closed", 2,
                                                                            "closed")
    assert body["cause"]["event_type"] == "outcome"
    assert store.leads(["L-2"])["L-2"].changes == 2
    # without a webhook nobody is told: no outbox row piles up
    store.register([_lead("L-3", NOW - timedelta(days=1), changes=1)], [])
    assert _rescorer(store, tmp_path).handle_outcomes([_item("L-3", days_ago=0.1)]
                                                      ).notified == 0
    assert len(store.outbox_rows()) == 1


@pytest.mark.parametrize(("item", "field", "reason"), [
    ({"lead_id": "L-9"}, "lead_id", "unknown_lead"),
    ({"days_ago": 3}, "time", "time_before_submission"),
    ({"outcome": "won"}, "outcome", "unknown_outcome"),
    ({"followup_channel": "telegram"}, "followup_channel", "unknown_followup_channel"),
    ({"amount": -5}, "amount", "invalid_amount"),
    ({"outcome": "closed", "amount": 10}, "amount", "amount_without_conversion"),
    ({"time": "1700000000"}, "time", "invalid_time"),
    ({"time": (NOW + timedelta(days=1)).isoformat()}, "time", "invalid_time"),
    ({"time": None}, "time", "invalid_time"),
    ({"colour": "crimson-x"}, "colour", "unknown_field"),
    ({"lead_id": "L 1 ✓"}, "lead_id", "invalid_lead_id"),
])
def test_a_bad_outcome_is_refused_alone_naming_its_field(
        store: LeadStateStore, tmp_path: Path, item: dict, field: str, reason: str) -> None:
    base = _item("L-1")
    if "days_ago" in item:
        base = _item("L-1", days_ago=item.pop("days_ago"))
    got = _rescorer(store, tmp_path).handle_outcomes([{**base, **item}, _item("L-2")])
    assert [(r.index, r.field, r.reason) for r in got.refused] == [(0, field, reason)]
    assert got.rejected == {reason: 1}
    assert got.recorded == 1  # the good one is recorded all the same
    assert "crimson-x" not in got.refused[0].message and "telegram" not in got.refused[0].message


def test_items_that_are_not_objects_or_lack_fields(store: LeadStateStore,
                                                   tmp_path: Path) -> None:
    got = _rescorer(store, tmp_path).handle_outcomes([3, {"lead_id": "L-1"}])
    assert [(r.field, r.reason) for r in got.refused] == [("item", "not_an_object"),
                                                          ("outcome", "missing")]


def test_a_rescore_of_a_lead_closed_meanwhile_is_discarded(store: LeadStateStore) -> None:
    lead = store.open_leads_of(["P-L-2"])[0]  # the worker read it open ...
    assert store.record_outcomes([OutcomeRow("L-2", "converted", now_us())]) == ["recorded"]
    lead.tier, lead.changes = "A", lead.changes + 1  # ... and re-scored it meanwhile
    from crm_data.lead_state import OutboxMessage

    discarded = store.apply_rescores(
        [lead], [HistoryRow("L-2", now_us(), now_us(), 0.5, "A", "top_sales", "1", "web_visit",
                            "submitted")],
        [OutboxMessage("k", "L-2", "upgrade", "{}", now_us())], [])
    assert discarded == 1
    stored = store.leads(["L-2"])["L-2"]
    assert (stored.status, stored.tier) == ("converted", "B")
    assert store.outbox_rows() == [] and len(store.history("L-2")) == 0


# ---- recovery ---------------------------------------------------------------------------------
def _forms(n: int, seed: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    pages = ["", "/trial/math", "/pricing?x=1", "/", "/index.html", "/blog/post-1",
             "https://x.cn/live/a", "/course/g5", "/zhaopin", "/whitepaper.pdf", "/misc/page"]
    return [{"channel": rng.choice([*CHANNELS, None]), "campaign": rng.choice(["", "Winter "]),
             "landing_page": rng.choice(pages), "grade": rng.choice([*GRADES, None]),
             "subject": rng.choice([*SUBJECTS, None]), "city_tier": rng.choice([1, 2, 4, None]),
             "device": rng.choice([*DEVICES, None]), "funnel_step": rng.choice(FUNNEL_STEPS),
             "phone_valid": rng.choice([True, False]),
             "email_domain_type": rng.choice(["free", "work", "invalid", None])}
            for _ in range(n)]


def test_a_form_rebuilt_from_its_features_gives_the_same_features() -> None:
    assert {t: url_page_type(PAGE_OF_TYPE[t]) for t in PAGE_TYPES} == {t: t for t in PAGE_TYPES}
    forms = _forms(300)
    facts = normalise_submission({k: [f[k] for f in forms] for k in forms[0]})
    features = [{name: facts[name][i] for name in facts} for i in range(len(forms))]
    rebuilt = [form_from_features(f) for f in features]
    again = normalise_submission({k: [f[k] for f in rebuilt] for k in rebuilt[0]})
    for name in set(facts) & set(MODEL_FEATURES):
        assert again[name] == facts[name], name


def _record(lead_id: str, scored: datetime, submitted: datetime | None = None) -> PredictionRecord:
    features = {"channel": "sem", "campaign": "winter", "landing_page_type": "trial",
                "grade": "g5", "subject": "math", "city_tier": 1, "device": "ios",
                "funnel_step": "verified", "phone_valid": 1, "email_domain_type": "free",
                "submit_hour_cn": 9, "submit_weekday_cn": 2, "prior_leads": 1,
                "prior_channels": 1, "intent_score": 0.3}
    return PredictionRecord(f"r-{lead_id}", lead_id, "P-" + lead_id, submitted or scored, scored,
                            0.25, "B", "sales", False, False, "m", "7", "p1", features=features)


def test_leads_a_killed_service_did_not_register_are_recovered_from_the_log(
        store: LeadStateStore, tmp_path: Path) -> None:
    rescorer = _rescorer(store, tmp_path)
    # times from the clock of this test (the module's NOW is taken at collection, which
    # may be minutes before this test runs)
    now = datetime.now(UTC)
    since, until = now_us() - 60_000_000, now_us()
    inside = now - timedelta(seconds=10)
    with SqlitePredictionLog(tmp_path / "predictions.sqlite") as log:
        log.append([_record("L-1", inside),                        # registered already
                    _record("L-LOST", inside),                     # lost by the kill
                    _record("L-LOST", inside + timedelta(seconds=1)),  # its resubmission
                    _record("L-EARLIER", now - timedelta(hours=1)),   # before the span
                    _record("L-STALE", inside, now - timedelta(days=40))])  # window over
        assert rescorer.recover(since, until, log) == 1
        assert rescorer.recover(since, until, log) == 0  # once only
    lead = store.leads(["L-LOST"])["L-LOST"]
    assert (lead.person_id, lead.tier, lead.channel, lead.funnel_step, lead.status) == (
        "P-L-LOST", "B", "sales", "verified", "open")
    assert lead.fixed == {"submit_hour_cn": 9, "submit_weekday_cn": 2, "prior_leads": 1,
                          "prior_channels": 1}
    assert url_page_type(lead.request["landing_page"]) == "trial"
    assert [h.cause for h in store.history("L-LOST")] == ["submission"]
    assert store.missing(["L-EARLIER", "L-STALE"]) == {"L-EARLIER", "L-STALE"}
    assert store.registered_through() == until
    # its funnel step is accepted and queued for its re-score
    step = Event(lead_id="L-LOST", event_type="booked_trial", event_time=now)
    answer = rescorer.handle_events([step])
    assert (answer.accepted, answer.rescoring_queued, answer.rejected) == (1, 1, {})


def test_the_registration_mark_only_moves_forward(store: LeadStateStore) -> None:
    mark = store.registered_through()
    assert abs(mark - now_us()) < 60_000_000  # a new store starts at its creation
    store.register([], [], mark + 5)
    store.register([], [], mark + 1)
    assert store.registered_through() == mark + 5
