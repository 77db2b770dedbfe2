"""The lead-state store and the webhook outbox on SQLite and PostgreSQL, delivered to a real
loopback receiver: leases, back-off, dead letters, retry, purge, and nothing lost."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

from crm_data.lead_state import (
    DEAD,
    DELIVERED,
    PENDING,
    HistoryRow,
    LeadRow,
    LeadStateStore,
    OutboxMessage,
    now_us,
)
from serving.webhook import WebhookDeliverer
from tests.integration.webhook_receiver import WebhookReceiver
from tests.services import POSTGRES, require_service

SECRET = "outbox-secret"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[LeadStateStore]:  # noqa: ANN001
    if request.param == "sqlite":
        with LeadStateStore.sqlite(tmp_path / "lead_state.sqlite") as s:
            yield s
        return
    require_service(*POSTGRES)
    import psycopg

    name = f"t_outbox_{uuid.uuid4().hex[:8]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with LeadStateStore.postgresql(f"postgresql://postgres@127.0.0.1:5432/{name}") as s:
            yield s
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _lead(lead_id: str, person: str = "P1") -> LeadRow:
    return LeadRow(lead_id, person, 1_000, {"channel": "sem"}, {"prior_leads": 0}, "submitted",
                   "open", 0.04, "D", "ai_bot", False, "1", 0.04, "D", 1_000, "D", "ai_bot")


def _messages(n: int) -> list[OutboxMessage]:
    return [OutboxMessage(uuid.uuid4().hex, f"L-{i}", "upgrade",
                          json.dumps({"lead_id": f"L-{i}", "n": i}), now_us()) for i in range(n)]


def test_registration_queue_and_rescore_are_atomic(store: LeadStateStore) -> None:
    assert store.register([_lead("L-1"), _lead("L-2", "P2")],
                          [HistoryRow("L-1", 1_000, 1_000, 0.04, "D", "ai_bot", "1",
                                      "submission", "submitted")]) == 2
    assert store.register([_lead("L-1")], []) == 0  # a repeated lead keeps its row
    store.accept_events(["k1", "k2"], [("P1", None, "web_visit", None, 2_000),
                                       ("P1", "L-1", "verified", "verified", 2_500)])
    assert store.seen(["k1", "k3"]) == {"k1"}
    queued = store.queued()
    assert [q.cause for q in queued] == ["web_visit", "verified"]
    lead = store.open_leads_of(["P1"])[0]
    lead.funnel_step, lead.tier, lead.channel, lead.probability = "verified", "C", "tmk", 0.1
    store.apply_rescores([lead], [HistoryRow("L-1", 2_500, 3_000, 0.1, "C", "tmk", "1",
                                             "verified", "verified")],
                         _messages(1), [q.id for q in queued])
    assert store.queued() == []
    assert [h.cause for h in store.history("L-1")] == ["submission", "verified"]
    assert store.leads(["L-1"])["L-1"].tier == "C"
    assert store.outbox_status()["counts"][PENDING] == 1
    assert store.set_status({"L-2": "dropped"}) == 1
    assert [lead.lead_id for lead in store.nurture()] == ["L-1"]  # dropped: out of the pool
    assert store.status_counts()["dropped"] == 1


def test_deliverer_backs_off_dead_letters_and_retries(store: LeadStateStore) -> None:
    with WebhookReceiver(SECRET, mode="fail") as receiver:
        deliverer = WebhookDeliverer(store, receiver.url, SECRET, timeout_seconds=1,
                                     max_attempts=3, backoff_base=0.05, backoff_max=0.2)
        store.apply_rescores([], [], _messages(5), [])
        assert deliverer.deliver_due() == 5
        rows = store.outbox_rows()
        assert {r["attempts"] for r in rows} == {1} and {r["status"] for r in rows} == {PENDING}
        assert all(r["next_attempt_us"] > now_us() for r in rows)  # backed off
        assert deliverer.deliver_due() == 0  # nothing due yet
        for _ in range(2):
            time.sleep(0.25)
            deliverer.deliver_due()
        assert {r["status"] for r in store.outbox_rows()} == {DEAD}
        assert store.outbox_status()["last_errors"] == {"HTTP 500": 5}
        receiver.mode = "ok"
        assert store.retry_dead() == 5
        assert deliverer.deliver_due() == 5
        assert len(receiver.deliveries) == 5 and receiver.bad_signatures == 0
        assert {r["status"] for r in store.outbox_rows()} == {DELIVERED}
        assert store.purge_delivered(now_us() + 1) == 5
        deliverer.close()


def test_a_lease_of_a_dead_process_expires_and_nothing_is_lost(store: LeadStateStore) -> None:
    store.apply_rescores([], [], _messages(20), [])
    claimed = store.claim_due(10, lease_seconds=0.3)  # a process claims, then dies
    assert len(claimed) == 10
    with WebhookReceiver(SECRET) as receiver:
        deliverer = WebhookDeliverer(store, receiver.url, SECRET, timeout_seconds=1,
                                     max_attempts=3, backoff_base=0.05, backoff_max=0.2)
        assert deliverer.deliver_due() == 10  # the unleased half
        time.sleep(0.35)
        assert deliverer.deliver_due() == 10  # the dead process's half, lease expired
        assert len(receiver.deliveries) == 20
        deliverer.close()


def test_a_redirect_loop_and_a_hanging_receiver_are_bounded_failures(
        store: LeadStateStore) -> None:
    with WebhookReceiver(SECRET, mode="redirect", hang_seconds=2) as receiver:
        deliverer = WebhookDeliverer(store, receiver.url, SECRET, timeout_seconds=0.5,
                                     max_attempts=5, backoff_base=0.05, backoff_max=0.1)
        store.apply_rescores([], [], _messages(2), [])
        deliverer.deliver_due()
        assert receiver.requests == 2  # the 302 was not followed
        assert "redirects are not followed" in next(iter(store.outbox_status()["last_errors"]))
        receiver.mode = "hang"
        time.sleep(0.15)
        started = time.monotonic()
        deliverer.deliver_due()
        assert time.monotonic() - started < 1.5  # cut at the read timeout
        assert "timeout" in store.outbox_status()["last_errors"]
        deliverer.close()


def test_outcomes_close_leads_and_win_over_a_concurrent_rescore(store: LeadStateStore) -> None:
    from crm_data.lead_state import OutcomeRow

    mark = now_us() + 10**9
    store.register([_lead("L-1"), _lead("L-2")], [], answered_through_us=mark)
    assert store.registered_through() == mark
    read_open = store.open_leads_of(["P1"])
    got = store.record_outcomes([OutcomeRow("L-1", "converted", 2_000, 10.0, "sales"),
                                 OutcomeRow("L-1", "converted", 2_500),
                                 OutcomeRow("L-2", "closed", 500),  # before its submission
                                 OutcomeRow("L-9", "closed", 2_000)])
    assert got == ["recorded", "duplicate", "time_before_submission", "unknown_lead"]
    assert store.record_outcomes([OutcomeRow("L-1", "closed", 3_000)]) == ["outcome_conflict"]
    for lead in read_open:
        lead.tier = "A"
    assert store.apply_rescores(read_open, [], _messages(0), []) == 1  # L-1 closed meanwhile
    rows = store.leads(["L-1", "L-2"])
    assert (rows["L-1"].status, rows["L-1"].tier) == ("converted", "D")
    assert (rows["L-2"].status, rows["L-2"].tier) == ("open", "A")
    assert store.outcomes(["L-1", "L-2"])["L-1"].amount == 10.0
