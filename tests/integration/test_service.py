"""Integration tests of the served prediction service (``bentoml serve`` on a loopback port).

Real pieces only: the work folder's Feast SQLite online store, the champion registered in MLflow
(imported into BentoML's store by the service), the SQLite prediction log.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.integration.service_fixtures import (
    API_KEY,
    KNOWN_PHONE,
    KNOWN_PHONE_DIGITS,
    ServedService,
    ServiceWorkdir,
    run_served,
    submission,
)

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def served(service_workdir: ServiceWorkdir, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServedService]:
    yield from run_served(service_workdir, tmp_path_factory, "service_logs")


@pytest.fixture(scope="module")
def client(served: ServedService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=30) as http:
        yield http


def _lead() -> str:
    return f"L-T-{uuid.uuid4().hex[:12]}"


def test_open_endpoints_need_no_key(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/docs.json").json()
    assert {"/predict", "/predict_batch", "/events", "/outcomes", "/reload"} <= set(spec["paths"])


@pytest.mark.parametrize("path", ["/predict", "/predict_batch", "/events", "/outcomes",
                                  "/reload"])
def test_api_needs_the_right_key(client: httpx.Client, path: str) -> None:
    missing = client.post(path, json={})
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]
    wrong = client.post(path, json={}, headers={"Authorization": "Bearer not-the-key"})
    assert wrong.status_code == 403
    basic = client.post(path, json={}, headers={"Authorization": f"Basic {API_KEY}"})
    assert basic.status_code == 401


def test_predict_known_person(client: httpx.Client, service_workdir: ServiceWorkdir
                              ) -> None:
    lead = _lead()
    response = client.post("/predict", json=submission(lead), headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["lead_id"] == lead
    assert body["person_id"] == service_workdir.known_person
    assert 0.0 < body["probability"] < 1.0
    assert body["tier"] in {"A", "B", "C", "D"}
    assert body["channel"] in {"top_sales", "sales", "tmk", "ai_bot"}
    assert body["degraded"] is False and body["degraded_reason"] is None
    assert body["model"] == {"name": "lead-conversion", "version": "1"}
    assert body["policy"]
    assert body["reasons"]["positive"] or body["reasons"]["negative"]
    for reason in body["reasons"]["positive"] + body["reasons"]["negative"]:
        assert reason["text"] and reason["feature"]
    assert body["tags"]["funnel_step"] == "verified"
    assert body["tags"]["days_since_last_touch"] < 9999  # the person's behaviour was read
    assert datetime.fromisoformat(body["scored_at"]) <= datetime.now(UTC)


def test_batch_answers_in_order(client: httpx.Client) -> None:
    channels = ["sem", "seo", "app", "feed_ads", "new_media"]
    leads = [_lead() for _ in range(25)]
    batch = [submission(lead, channel=channels[i % 5],
                        identifiers={"cookie_id": f"cookie-{lead.lower()}"})
             for i, lead in enumerate(leads)]
    response = client.post("/predict_batch", json={"submissions": batch}, headers=AUTH)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["lead_id"] for p in predictions] == leads
    assert [p["tags"]["channel"] for p in predictions] == [b["channel"] for b in batch]
    for i in (0, 7, 24):  # a batch answer equals the single answer
        single = client.post("/predict", json=batch[i], headers=AUTH).json()
        assert single["probability"] == pytest.approx(predictions[i]["probability"], abs=1e-6)


def test_pushed_events_reach_the_next_prediction(client: httpx.Client) -> None:
    lead = _lead()
    identifiers = {"cookie_id": f"cookie-{lead.lower()}"}
    before = client.post("/predict", json=submission(lead, identifiers=identifiers),
                         headers=AUTH).json()
    assert before["degraded_reason"] == "person_unknown"
    assert before["tags"]["intent_score"] == 0.0
    now = datetime.now(UTC)
    events = [
        {"identifiers": identifiers, "event_type": "pricing_page", "url": "/pricing",
         "event_time": (now - timedelta(hours=2)).isoformat()},
        {"identifiers": identifiers, "event_type": "trial_class", "url": "/trial/math",
         "event_time": (now - timedelta(hours=1)).isoformat()},
        {"event_type": "web_visit", "event_time": now.isoformat()},  # nobody: rejected
    ]
    pushed = client.post("/events", json={"events": events}, headers=AUTH)
    assert pushed.status_code == 200, pushed.text
    assert pushed.json() == {"accepted": 2, "persons_updated": 1,
                             "rejected": {"no_usable_identifier_or_lead_id": 1},
                             "rescoring_queued": 2}
    after = client.post("/predict", json=submission(lead, identifiers=identifiers),
                        headers=AUTH).json()
    assert after["person_id"] == before["person_id"]
    assert after["degraded"] is False
    assert after["tags"]["intent_score"] > 0.0
    assert after["tags"]["days_since_last_touch"] < 0.1
    assert after["tags"]["interest_score"] >= before["tags"]["interest_score"]
    assert after["probability"] != before["probability"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"submitted_at": (datetime.now(UTC) + timedelta(days=3)).isoformat()}, "submitted_at"),
        ({"submitted_at": "2026-11-22T09:30:00"}, "submitted_at"),
        ({"channel": "television"}, "channel"),
        ({"funnel_step": "paid"}, "funnel_step"),
        ({"lead_id": ""}, "lead_id"),
        ({"form": {"grade": "G13"}}, "form.grade"),
        ({"form": {"shoe_size": 42}}, "form.shoe_size"),
        ({"identifiers": {"qq_number": KNOWN_PHONE}}, "identifiers.qq_number"),
    ],
)
def test_invalid_submissions_get_field_level_422(client: httpx.Client, change: dict,
                                                 field: str) -> None:
    response = client.post("/predict", json={**submission(_lead()), **change}, headers=AUTH)
    assert response.status_code == 422, response.text
    details = response.json()["detail"]
    assert field in {".".join(str(p) for p in d["loc"]) for d in details}
    assert KNOWN_PHONE not in response.text


def test_oversized_batch_malformed_json_and_wrong_type(client: httpx.Client) -> None:
    body = submission(_lead())
    too_many = client.post("/predict_batch", json={"submissions": [body] * 1001}, headers=AUTH)
    assert too_many.status_code == 422
    assert "at most 1000" in too_many.text
    broken = client.post("/predict", content=b'{"lead_id": ', headers={
        **AUTH, "Content-Type": "application/json"})
    assert broken.status_code == 422
    form = client.post("/predict", content=b"lead_id=x", headers={
        **AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415


def test_unusable_identifiers_are_reported_not_refused(client: httpx.Client) -> None:
    odd = {"phone": "12345", "wechat_id": "", "email": {"nested": [1, 2]}, "cookie_id": 7}
    response = client.post("/predict", json=submission(_lead(), identifiers=odd), headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["identifiers_rejected"] == {
        "phone": "not_a_mobile_number", "wechat_id": "empty", "email": "not_a_string",
        "cookie_id": "not_a_string"}
    assert body["degraded_reason"] == "person_unknown"


def test_reload_keeps_serving(client: httpx.Client) -> None:
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client.post, "/predict", json=submission(_lead()), headers=AUTH)
                   for _ in range(12)]
        reload = client.post("/reload", headers=AUTH)
        statuses = [f.result().status_code for f in futures]
    assert reload.status_code == 200 and reload.json()["model_version"] == "1"
    assert statuses == [200] * 12


def _log_rows(settings_workdir, lead_ids: set[str]) -> list[str]:  # noqa: ANN001
    path = settings_workdir / "data" / "predictions.sqlite"
    with sqlite3.connect(path, timeout=30) as conn:
        rows = conn.execute("SELECT lead_id FROM predictions").fetchall()
    return [r[0] for r in rows if r[0] in lead_ids]


def test_every_concurrent_prediction_is_logged_once(
    client: httpx.Client, service_workdir: ServiceWorkdir
) -> None:
    leads = [_lead() for _ in range(60)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(
            lambda lead: client.post("/predict", json=submission(lead), headers=AUTH), leads))
    assert [r.status_code for r in responses] == [200] * len(leads)
    wanted = set(leads)
    deadline = datetime.now(UTC) + timedelta(seconds=15)
    logged = _log_rows(service_workdir.settings.workdir, wanted)
    while len(logged) < len(leads) and datetime.now(UTC) < deadline:
        logged = _log_rows(service_workdir.settings.workdir, wanted)
    assert sorted(logged) == sorted(leads)  # exactly once each


def test_raw_identifiers_never_reach_logs(
    client: httpx.Client, served: ServedService, service_workdir: ServiceWorkdir
) -> None:
    # a validation error that carries the phone, and a failing identifier, then look everywhere
    client.post("/predict", json=submission(_lead(), identifiers={"qq": KNOWN_PHONE}),
                headers=AUTH)
    client.post("/predict", json=submission(_lead(), channel="tv"), headers=AUTH)
    client.post("/predict", json=submission(_lead()), headers=AUTH)
    raw_forms = [KNOWN_PHONE, KNOWN_PHONE_DIGITS, "wx_abc123", "c-9f8e7d"]
    log = served.log_text()
    assert "422 on POST /predict" in log  # the refusals were logged (field names only)
    for raw in raw_forms:
        assert raw not in log, f"raw identifier {raw!r} in the service log"
    path = service_workdir.settings.workdir / "data" / "predictions.sqlite"
    with sqlite3.connect(path, timeout=30) as conn:
        dump = "\n".join(conn.iterdump())
    assert "predictions" in dump
    for raw in raw_forms:
        assert raw not in dump, f"raw identifier {raw!r} in the prediction log"


def test_in_process_app_without_model_or_key(
    service_workdir: ServiceWorkdir, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    from leadscore.config import get_settings
    from serving.auth import MissingApiKeyError
    from serving.service import LeadScoring

    monkeypatch.setenv("LEADSCORE_WORKDIR", str(service_workdir.settings.workdir))
    monkeypatch.setenv("LEADSCORE_MODEL_NAME", "no-such-model")
    monkeypatch.setenv("LEADSCORE_API_KEY", API_KEY)
    get_settings.cache_clear()
    try:
        with TestClient(LeadScoring.to_asgi()) as app:
            assert app.get("/healthz").status_code == 200
            assert app.get("/readyz").status_code == 503
            answer = app.post("/predict", json=submission(_lead()), headers=AUTH)
            assert answer.status_code == 503
            assert "no model is loaded" in answer.json()["error"]
            batch = app.post("/predict_batch", json={"submissions": [submission(_lead())]},
                             headers=AUTH)
            assert batch.status_code == 503
        monkeypatch.delenv("LEADSCORE_API_KEY")
        get_settings.cache_clear()
        with pytest.raises(MissingApiKeyError), TestClient(LeadScoring.to_asgi()):
            pass
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
