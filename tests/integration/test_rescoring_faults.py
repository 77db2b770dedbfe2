"""Nothing the CRM was to be told is lost: a service killed with SIGKILL mid-load and started
again, and a receiver answering 500 for a while, then recovering (counted by idempotency key:
every outbox message reaches the receiver; every accepted funnel step is in its lead)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from crm_data.lead_state import LeadStateStore
from tests.integration.service_fixtures import ServedService, ServiceWorkdir
from tests.integration.webhook_receiver import (
    WebhookReceiver,
    engaged_events,
    varied_submissions,
)

pytestmark = pytest.mark.slow
SECRET = "faults-secret"
STEPS = ("verified", "followed_account", "booked_trial")


def _serve(workdir: Path, log: Path, receiver: WebhookReceiver) -> ServedService:
    service = ServedService(workdir, log, LEADSCORE_WEBHOOK_URL=receiver.url,
                            LEADSCORE_WEBHOOK_SECRET=SECRET,
                            LEADSCORE_WEBHOOK_BACKOFF_SECONDS="0.5",
                            LEADSCORE_WEBHOOK_BACKOFF_MAX_SECONDS="2",
                            LEADSCORE_WEBHOOK_MAX_ATTEMPTS="1000",
                            # no margin: the steps move many leads across a cut-off
                            LEADSCORE_RESCORE_HYSTERESIS="0")
    service.wait_until("/readyz", timeout=180)
    return service


def _register(service: ServedService, n: int) -> list[str]:
    run = uuid.uuid4().hex[:6]
    ids = [f"L-KILL-{run}-{i}" for i in range(n)]
    subs = varied_submissions(ids)
    answer = httpx.post(service.url + "/predict_batch", json={"submissions": subs},
                        headers=service.headers, timeout=60)
    assert answer.status_code == 200, answer.text
    return ids


def _send_steps(service: ServedService, lead_ids: list[str], accepted: dict[str, str],
                stop: threading.Event) -> None:
    """Move leads through the steps, one event per request, until ``stop`` or the end;
    ``accepted``: lead → the latest step the service accepted (200 with accepted = 1)."""
    with httpx.Client(headers=service.headers, timeout=5) as client:
        for step in STEPS:
            for lead in lead_ids:
                if stop.is_set():
                    return
                event = {"lead_id": lead, "event_type": step,
                         "event_time": datetime.now(UTC).isoformat()}
                try:
                    got = client.post(service.url + "/events", json={"events": [event]})
                except httpx.HTTPError:
                    continue  # the service is down: this event was never accepted
                if got.status_code == 200 and got.json()["accepted"] == 1:
                    accepted[lead] = step


def test_sigkill_and_a_failing_receiver_lose_no_notification(
        service_workdir: ServiceWorkdir, tmp_path: Path) -> None:
    workdir = service_workdir.settings.workdir
    with WebhookReceiver(SECRET, mode="fail") as receiver:
        service = _serve(workdir, tmp_path / "first.log", receiver)
        leads = _register(service, 300)
        time.sleep(0.5)  # the registrations are stored (~10 ms after the answer)
        accepted: dict[str, str] = {}
        stop = threading.Event()
        sender = threading.Thread(target=_send_steps, args=(service, leads, accepted, stop))
        sender.start()
        time.sleep(4)  # mid-load, while the receiver fails
        os.killpg(service.process.pid, signal.SIGKILL)
        service.process.wait(timeout=30)
        stop.set()
        sender.join()
        assert accepted, "no event was accepted before the kill"
        service = _serve(workdir, tmp_path / "second.log", receiver)
        try:
            stop.clear()
            rest = [lead for lead in leads if accepted.get(lead) != STEPS[-1]]
            _send_steps(service, rest, accepted, stop)
            time.sleep(3)  # the receiver still fails: messages pile up, backing off
            assert receiver.refused > 0
            receiver.mode = "ok"
            path = service_workdir.settings.lead_state_path
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                with LeadStateStore.sqlite(path) as store:
                    pending = store.outbox_status()["counts"]["pending"]
                    queue = store.queue_length()
                if pending == 0 and queue == 0:
                    break
                time.sleep(0.5)
            with LeadStateStore.sqlite(path) as store:
                sent = {m["idempotency_key"] for m in store.outbox_rows()
                        if m["lead_id"].startswith("L-KILL-")}
                rows = store.leads(leads)
            assert sent, "no notification was written"
            assert sent <= set(receiver.deliveries), (
                f"{len(sent - set(receiver.deliveries))} of {len(sent)} notifications lost")
            assert receiver.bad_signatures == 0
            # every accepted step reached its lead (re-scored after the restart if need be)
            rank = {s: i for i, s in enumerate(("submitted", *STEPS))}
            behind = [lead for lead, step in accepted.items()
                      if rank[rows[lead].funnel_step] < rank[step]]
            assert not behind, f"{len(behind)} accepted steps lost, e.g. {behind[:3]}"
        finally:
            service.stop()


def test_a_sigkill_right_after_the_answers_loses_no_lead(
        service_workdir: ServiceWorkdir, tmp_path: Path) -> None:
    """Leads answered (durably) and then killed before their registration was stored — made
    certain by holding the lead-state file's write lock meanwhile — are recovered from the
    prediction log at the restart: their steps are accepted, re-scored and notified."""
    import sqlite3

    workdir = service_workdir.settings.workdir
    path = service_workdir.settings.lead_state_path
    with WebhookReceiver(SECRET) as receiver:
        service = _serve(workdir, tmp_path / "first.log", receiver)
        run = uuid.uuid4().hex[:6]
        ids = [f"L-LOST-{run}-{i}" for i in range(30)]
        holder = sqlite3.connect(path, isolation_level=None, timeout=30)
        holder.execute("BEGIN IMMEDIATE")  # the registrar waits for the file: not stored
        try:
            with httpx.Client(headers=service.headers, timeout=60) as client:
                subs = varied_submissions(ids, seed=7)
                batch = client.post(service.url + "/predict_batch",
                                    json={"submissions": subs[:-5]})
                singles = [client.post(service.url + "/predict", json=sub) for sub in subs[-5:]]
            for answer in (batch, *singles):
                assert answer.status_code == 200, answer.text
                assert answer.headers["x-leadscore-durable"] == "true"
            os.killpg(service.process.pid, signal.SIGKILL)  # right after the answers
            service.process.wait(timeout=30)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        answered = {a["lead_id"]: a for a in [*batch.json()["predictions"],
                                              *(single.json() for single in singles)]}
        with LeadStateStore.sqlite(path) as store:
            assert store.missing(ids) == set(ids), "the kill did not hit the window"
        service = _serve(workdir, tmp_path / "second.log", receiver)
        try:
            answer = httpx.post(service.url + "/events", headers=service.headers, timeout=60,
                                json={"events": engaged_events(ids)})
            assert answer.status_code == 200, answer.text
            assert answer.json()["rejected"] == {}, answer.json()  # no unknown_lead
            with LeadStateStore.sqlite(path) as store:
                assert _wait(lambda: store.queue_length() == 0, 60)
                rows = store.leads(ids)
                history = {lead: [h.cause for h in store.history(lead)] for lead in ids}
            for lead in ids:
                assert rows[lead].funnel_step == "booked_trial"
                assert history[lead][0] == "submission" and history[lead][-1] == "booked_trial"
                assert (rows[lead].first_tier, rows[lead].person_id) == (
                    answered[lead]["tier"], answered[lead]["person_id"])
            changed = {lead for lead in ids if rows[lead].changes}
            assert len(changed) >= len(ids) // 2, "the engaged leads kept their tiers"
            assert _wait(lambda: changed <= {d.body["lead_id"]
                                             for d in list(receiver.deliveries.values())}, 30)
            for lead in changed:
                first = min((d.body for d in list(receiver.deliveries.values())
                             if d.body["lead_id"] == lead), key=lambda b: b["sequence"])
                assert (first["previous"]["tier"], first["previous"]["channel"]) == (
                    answered[lead]["tier"], answered[lead]["channel"])
        finally:
            service.stop()


def _wait(predicate, timeout: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return bool(predicate())
