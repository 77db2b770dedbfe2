"""Re-scoring, the lead routes and the CRM webhook on a real service and a real local receiver.

One service for the module (the shared small work folder, a webhook to a loopback receiver
with short back-offs): a lead submitted at the form's step and then booking a trial is
re-scored off the request path, its history and trend are served, the CRM hears of the change
(signed, with an idempotency key, no raw identifier), a receiver that fails, hangs or redirects
loses nothing, and bad events are refused with their reasons.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.integration.service_fixtures import (
    KNOWN_PHONE,
    KNOWN_PHONE_DIGITS,
    ServedService,
    ServiceWorkdir,
    submission,
)
from tests.integration.webhook_receiver import (
    WebhookReceiver,
    engaged_events,
    varied_submissions,
)

SECRET = "webhook-test-secret"
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as r:
        yield r


@pytest.fixture(scope="module")
def served(service_workdir: ServiceWorkdir, receiver: WebhookReceiver,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedService]:
    log_path = tmp_path_factory.mktemp("rescoring") / "service.log"
    service = ServedService(
        service_workdir.settings.workdir, log_path,
        LEADSCORE_WEBHOOK_URL=receiver.url, LEADSCORE_WEBHOOK_SECRET=SECRET,
        LEADSCORE_WEBHOOK_BACKOFF_SECONDS="0.2", LEADSCORE_WEBHOOK_BACKOFF_MAX_SECONDS="1",
        LEADSCORE_WEBHOOK_MAX_ATTEMPTS="4", LEADSCORE_WEBHOOK_TIMEOUT_SECONDS="1",
        # no margin: a booked trial moves the small test model's lead across a cut-off
        LEADSCORE_RESCORE_HYSTERESIS="0")
    service.wait_until("/readyz")
    yield service
    service.stop()


def _post(service: ServedService, path: str, body: dict) -> httpx.Response:
    return httpx.post(service.url + path, json=body, headers=service.headers, timeout=30)


def _new_lead(service: ServedService, step: str = "submitted", **extra: object) -> dict:
    lead_id = f"L-RS-{uuid.uuid4().hex[:10]}"
    body = submission(lead_id, funnel_step=step, identifiers={
        "phone": None, "wechat_id": f"wx_{uuid.uuid4().hex[:8]}", "email": None,
        "cookie_id": None}, **extra)
    answer = _post(service, "/predict", body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _changing_lead(service: ServedService, tries: int = 40) -> tuple[dict, dict]:
    """(first answer, lead after its booked trial) of a new policy-arm lead whose engagement
    (pages and classes, then a booked trial: ``engaged_events``; a booked trial alone no longer
    lifts a new person's lead across the lowest cut-off of the test model) changed its tier or
    channel: varied forms are tried until one crosses a cut-off (the small test model's
    probabilities differ from build to build). A lead that did not change must not have been
    notified."""
    forms = varied_submissions([f"L-RS-{uuid.uuid4().hex[:10]}" for _ in range(tries)],
                               seed=random.randrange(1000))
    for body in forms:
        body["submitted_at"] = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        first = _post(service, "/predict", body).json()
        if first.get("arm", "policy") != "policy" or first["control"]:
            continue
        accepted = _post(service, "/events", {"events": engaged_events([first["lead_id"]])})
        assert accepted.status_code == 200 and accepted.json()["rejected"] == {}, accepted.text
        lead = _wait_history(service, first["lead_id"], 2)
        changed = (lead["answer"]["tier"], lead["answer"]["channel"]) != (first["tier"],
                                                                          first["channel"])
        assert lead["pushed"]["notifications"] == int(changed), lead
        if changed:
            return first, lead
    raise AssertionError(f"no booked trial of {tries} varied leads changed a tier")


def _step(lead_id: str, step: str, minutes_ago: float = 0.5) -> dict:
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return {"lead_id": lead_id, "event_type": step, "event_time": at.isoformat()}


def _lead(service: ServedService, lead_id: str) -> httpx.Response:
    return httpx.get(f"{service.url}/leads/{lead_id}", headers=service.headers, timeout=10)


def _wait_history(service: ServedService, lead_id: str, n: int, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = _lead(service, lead_id)
        if got.status_code == 200 and len(got.json()["history"]) >= n:
            return got.json()
        time.sleep(0.05)
    raise AssertionError(f"lead {lead_id} has no {n} scores after {timeout} s: {got.text}")


def test_a_booked_trial_rescores_the_lead_and_tells_the_crm(
        served: ServedService, receiver: WebhookReceiver) -> None:
    first, lead = _changing_lead(served)
    lead_id = first["lead_id"]
    assert lead["funnel_step"] == "booked_trial"
    assert [h["cause"] for h in lead["history"]] == ["submission", "booked_trial"]
    assert lead["history"][0]["probability"] == pytest.approx(first["probability"], abs=1e-6)
    # the strongest feature moved from the form's step to a booked trial: the score rises
    assert lead["answer"]["probability"] > first["probability"]
    assert lead["trend"] == "improving"
    # the CRM hears of it: signed (the receiver checks), keyed, within a second or so
    deadline = time.monotonic() + 5
    mine: list = []
    while time.monotonic() < deadline and not mine:
        mine = [d for d in list(receiver.deliveries.values()) if d.body["lead_id"] == lead_id]
        time.sleep(0.05)
    assert len(mine) == 1, "one notification per change"
    body = mine[0].body
    assert body["change"] == "upgrade" and body["answer"]["tier"] == lead["answer"]["tier"]
    assert body["previous"]["tier"] == first["tier"]
    assert body["idempotency_key"] == mine[0].key
    assert receiver.bad_signatures == 0
    assert lead["pushed"]["tier"] == lead["answer"]["tier"]


def test_behaviour_events_rescore_every_open_lead_of_the_person(
        served: ServedService, service_workdir: ServiceWorkdir) -> None:
    lead_id = f"L-RS-{uuid.uuid4().hex[:10]}"
    assert _post(served, "/predict", submission(lead_id)).status_code == 200
    event = {"identifiers": {"phone": KNOWN_PHONE}, "event_type": "pricing_page",
             "event_time": datetime.now(UTC).isoformat(), "url": "/pricing"}
    answer = _post(served, "/events", {"events": [event, dict(event)]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1
    assert answer.json()["rejected"] == {"duplicate_event": 1}
    lead = _wait_history(served, lead_id, 2)
    assert lead["history"][-1]["cause"] == "pricing_page"
    again = _post(served, "/events", {"events": [event]})  # a retried request
    assert again.json()["rejected"] == {"duplicate_event": 1}


def test_bad_events_are_refused_with_their_reason(served: ServedService) -> None:
    lead_id = _new_lead(served, "verified")["lead_id"]
    events = [
        _step("L-RS-never-scored", "verified"),                 # unknown lead
        _step(lead_id, "booked_trial", minutes_ago=60 * 24),    # before the lead's submission
        _step(lead_id, "verified"),                             # not after the lead's step
        _step(lead_id, "followed_account"),                     # fine
        {"identifiers": {"phone": "+86 137 0000 0001"}, "event_type": "web_visit",
         "event_time": datetime.now(UTC).isoformat()},          # a person never scored
    ]
    answer = _post(served, "/events", {"events": events})
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["accepted"] == 1
    assert got["rejected"] == {"unknown_lead": 1, "event_before_lead": 1,
                               "step_not_forward": 1, "person_not_scored_yet": 1}
    late = _post(served, "/events", {"events": [_step(lead_id, "verified")]})
    assert late.json()["rejected"] == {"step_not_forward": 1}  # out of order: ignored
    no_lead = _post(served, "/events", {"events": [
        {"event_type": "booked_trial", "event_time": datetime.now(UTC).isoformat()}]})
    assert no_lead.status_code == 422
    assert "lead_id" in no_lead.json()["detail"][0]["msg"]


def test_lead_and_nurture_routes(served: ServedService) -> None:
    lead_id = _new_lead(served)["lead_id"]
    _wait_history(served, lead_id, 1)
    assert _lead(served, "L-RS-never-scored").status_code == 404
    assert httpx.get(f"{served.url}/leads/{lead_id}", timeout=10).status_code == 401
    bad = httpx.get(f"{served.url}/leads/{lead_id}?history=x", headers=served.headers)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "history"]
    pool = httpx.get(f"{served.url}/nurture?tier=D&limit=5", headers=served.headers).json()
    assert all(lead["answer"]["tier"] == "D" and lead["status"] == "open"
               for lead in pool["leads"])
    rising = httpx.get(f"{served.url}/nurture?rising=true", headers=served.headers).json()
    rises = [lead["rise_7d"] for lead in rising["leads"]]
    assert rises == sorted(rises, reverse=True) and all(r > 0 for r in rises)
    for query, field in (("tier=E", "tier"), ("rising=maybe", "rising"), ("limit=0", "limit"),
                         ("sort=x", "sort")):
        answer = httpx.get(f"{served.url}/nurture?{query}", headers=served.headers)
        assert answer.status_code == 422, query
        assert answer.json()["detail"][0]["loc"] == ["query", field]
    metrics = httpx.get(served.url + "/metrics").text
    assert 'endpoint="/leads/{lead_id}"' in metrics and 'endpoint="/nurture"' in metrics
    assert lead_id not in metrics
    spec = httpx.get(served.url + "/docs.json").json()
    assert "/leads/{lead_id}" in spec["paths"] and "/nurture" in spec["paths"]


def _outbox(service_workdir: ServiceWorkdir, *args: str) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "leadscore"), "outbox", *args, "--workdir",
         str(service_workdir.settings.workdir)],
        cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _upgrade_one(service: ServedService) -> str:
    return _changing_lead(service)[0]["lead_id"]


def _wait_status(service_workdir: ServiceWorkdir, check, timeout: float = 30) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        status = json.loads(_outbox(service_workdir, "status", "--json"))
        if check(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.3)


def test_a_failing_hanging_or_redirecting_receiver_loses_nothing(
        served: ServedService, receiver: WebhookReceiver,
        service_workdir: ServiceWorkdir) -> None:
    receiver.hang_seconds = 3.0
    lost: list[str] = []
    for mode, error in (("fail", "HTTP 500"), ("hang", "timeout"),
                        ("redirect", "redirects are not followed")):
        receiver.mode = mode
        lost.append(_upgrade_one(served))
        started = time.monotonic()
        # the service keeps answering while its receiver misbehaves
        assert _post(served, "/predict", submission(f"L-RS-{uuid.uuid4().hex[:8]}")
                     ).status_code == 200
        assert time.monotonic() - started < 2.0
        status = _wait_status(service_workdir, lambda s, e=error: any(
            e in k for k in s["last_errors"]))
        assert any(error in k for k in status["last_errors"]), (mode, status)
    # 4 attempts each (back-offs 0.2 → 1 s, hangs cut at 1 s): all dead-lettered, none lost
    status = _wait_status(service_workdir, lambda s: s["counts"]["dead"] >= 3
                          and s["counts"]["pending"] == 0)
    assert status["counts"]["dead"] >= 3 and status["counts"]["pending"] == 0, status
    assert not any(d.body["lead_id"] in lost for d in receiver.deliveries.values())
    receiver.mode = "ok"
    assert "back to pending" in _outbox(service_workdir, "retry")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if set(lost) <= {d.body["lead_id"] for d in receiver.deliveries.values()}:
            break
        time.sleep(0.1)
    assert set(lost) <= {d.body["lead_id"] for d in receiver.deliveries.values()}
    assert json.loads(_outbox(service_workdir, "status", "--json"))["counts"]["dead"] == 0
    assert "deleted" in _outbox(service_workdir, "purge-delivered", "--older-than-days", "0")


def test_no_raw_identifier_in_notifications_or_the_store(
        served: ServedService, receiver: WebhookReceiver,
        service_workdir: ServiceWorkdir) -> None:
    import sqlite3

    _upgrade_one(served)
    assert receiver.wait_for(1, 5)
    for delivery in list(receiver.deliveries.values()):
        text = delivery.raw.decode()
        assert KNOWN_PHONE_DIGITS not in text and "wx_" not in text
    path = service_workdir.settings.lead_state_path
    with sqlite3.connect(path) as conn:
        for table in ("lead_state", "score_history", "outbox", "rescore_queue", "seen_events"):
            for row in conn.execute(f"SELECT * FROM {table}"):
                text = " ".join(map(str, row))
                assert KNOWN_PHONE_DIGITS not in text and "wx_" not in text, table


def _notified_lead(service: ServedService, tries: int = 5) -> tuple[str, int]:
    """A new lead whose engagement changed its answer, and how many times the CRM was told."""
    for _ in range(tries):
        lead_id = _new_lead(service)["lead_id"]
        answer = _post(service, "/events", {"events": engaged_events([lead_id])})
        assert answer.status_code == 200 and answer.json()["rejected"] == {}, answer.text
        deadline = time.monotonic() + 10
        lead = _lead(service, lead_id).json()
        while lead["funnel_step"] != "booked_trial" and time.monotonic() < deadline:
            time.sleep(0.05)
            lead = _lead(service, lead_id).json()
        if lead["pushed"]["notifications"]:
            return lead_id, lead["pushed"]["notifications"]
    raise AssertionError(f"no engaged lead of {tries} changed its answer")


def test_an_outcome_closes_the_lead_and_ends_its_notifications(
        served: ServedService, receiver: WebhookReceiver) -> None:
    receiver.mode = "ok"  # whatever an earlier test left
    lead_id, told = _notified_lead(served)
    now = datetime.now(UTC).isoformat()
    outcome = {"lead_id": lead_id, "outcome": "converted", "time": now, "amount": 2999.0,
               "followup_channel": "sales"}
    answer = _post(served, "/outcomes", {"outcomes": [
        outcome, {"lead_id": "L-RS-never-scored", "outcome": "closed", "time": now},
        {"lead_id": lead_id, "outcome": "won", "time": now}]})
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert (got["recorded"], got["notified"]) == (1, 1)
    assert [(r["index"], r["field"], r["reason"]) for r in got["refused"]] == [
        (1, "lead_id", "unknown_lead"), (2, "outcome", "unknown_outcome")]
    retried = _post(served, "/outcomes", {"outcomes": [outcome]}).json()
    assert (retried["recorded"], retried["duplicates"], retried["refused"]) == (0, 1, [])
    # the final notification has the next sequence: an older change arriving late loses
    deadline = time.monotonic() + 10
    final: list = []
    while time.monotonic() < deadline and not final:
        final = [d.body for d in list(receiver.deliveries.values())
                 if d.body["lead_id"] == lead_id and d.body["change"] == "converted"]
        time.sleep(0.05)
    assert len(final) == 1 and final[0]["sequence"] == told + 1, final
    assert final[0]["answer"]["status"] == "converted"
    closed = _lead(served, lead_id).json()
    assert closed["status"] == "converted" and closed["pushed"]["notifications"] == told + 1
    pool = httpx.get(f"{served.url}/nurture?limit=1000", headers=served.headers).json()
    assert lead_id not in {lead["lead_id"] for lead in pool["leads"]}
    step = _post(served, "/events", {"events": [_step(lead_id, "followed_account", 0.1)]})
    assert step.json()["rejected"] == {"lead_not_open": 1}  # no more re-scoring
    assert httpx.post(f"{served.url}/outcomes", json={"outcomes": [outcome]},
                      timeout=10).status_code == 401
    assert "/outcomes" in httpx.get(served.url + "/docs.json").json()["paths"]
