"""Faults of the online store: lost and back (Redis flushed, SQLite file deleted), PII in free
text, and ``/events`` for a person not scored yet.

Real pieces only. The Redis test runs the production profile on Redis database 11 of the local
server (emptied with FLUSHDB, as a restart without persistence leaves it; never FLUSHALL) and
unique PostgreSQL databases. The invariant: across the loss, no answer says ``degraded: false``
while the person's features are incomplete, and the recovery (``leadscore features materialize
--full``) gives back exactly the answers of before, whatever the lead recorder did meanwhile.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from commands.features import features_app
from features.store import get_store
from leadscore.config import Settings, get_settings
from leadscore.profiles import drop_databases
from pipelines.demo import STAGES, DemoContext, replay_start
from serving.fast_online_reader import OnlineFeatureReader, OnlineStoreResetError
from serving.predictor import DEGRADED_RESET, Predictor
from serving.schemas import Event, Submission
from tests.integration.service_fixtures import (
    API_KEY,
    KNOWN_PHONE,
    ServiceWorkdir,
    production_settings,
    submission,
    unique_prefix,
)

REDIS_DB = 11
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
N_LEADS = 2000
BUILD_STAGES = ("generate", "identity", "features", "train")
PERSONS = 4  # persons with history scored before, during and after the loss
ROUNDS_DURING_LOSS = 3
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _build(settings: Settings) -> None:
    settings.ensure_dirs()
    ctx = DemoContext(settings=settings, n_leads=N_LEADS, seed=23, trials=2)
    for name, stage in STAGES:
        if name in BUILD_STAGES:
            ctx.results[name] = stage(ctx)


def _leads_with_history(settings: Settings, count: int) -> list[str]:
    """One lead each of ``count`` persons with recent behaviour in the online store."""
    behaviour = pd.read_parquet(settings.features_dir / "person_behaviour.parquet")
    active = behaviour.loc[behaviour["snap_events_30d"] > 0, "person_id"].astype(str)
    leads = pd.read_parquet(settings.identity_dir / "lead_person.parquet")
    leads = leads[leads["person_id"].astype(str).isin(set(active))]
    firsts = leads.sort_values("lead_id").drop_duplicates("person_id")
    return firsts["lead_id"].astype(str).head(count).tolist()


def _link_phones(settings: Settings, leads: list[str]) -> list[str]:
    """Made-up phones linked to the persons of ``leads`` in One ID's table (as One ID would
    after those persons left them on a form), so new leads reach the same persons."""
    from crm_data.identity import IDENTIFIER_PERSON_FILE, LEAD_PERSON_FILE
    from leadscore.identifiers import hash_identifier

    lead_person = pd.read_parquet(settings.identity_dir / LEAD_PERSON_FILE)
    person_of = dict(zip(lead_person["lead_id"].astype(str),
                         lead_person["person_id"].astype(str), strict=True))
    phones = [f"1390000{i:04d}" for i in range(1, len(leads) + 1)]
    rows = []
    for lead, phone in zip(leads, phones, strict=True):
        id_hash, reason = hash_identifier("phone", phone, settings.hash_salt)
        assert reason is None, reason
        rows.append({"id_hash": id_hash, "id_type": "phone", "person_id": person_of[lead]})
    path = settings.identity_dir / IDENTIFIER_PERSON_FILE
    table = pd.read_parquet(path)
    pd.concat([table, pd.DataFrame(rows)], ignore_index=True).to_parquet(path, index=False)
    return phones


def _submission(lead_id: str, at: datetime, phone: str | None = None) -> Submission:
    identifiers = {"phone": phone} if phone else {}
    return Submission.model_validate(submission(lead_id, submitted_at=at.isoformat(),
                                                identifiers=identifiers))


def _new_leads(tag: str, phones: list[str], at: datetime) -> list[Submission]:
    """A new lead of each linked person."""
    return [_submission(f"L-{tag}-{i}-{uuid.uuid4().hex[:6]}", at, phone)
            for i, phone in enumerate(phones)]


def _answer(predictor: Predictor, sub: Submission) -> dict[str, Any]:
    """One answer as plain data, without the time it was scored."""
    answer = predictor.predict([sub])[0].model_dump(mode="json")
    answer.pop("scored_at")
    return answer


def _materialize_full(settings: Settings) -> dict[str, Any]:
    """``leadscore features materialize --full`` up to the original load's end."""
    app = typer.Typer()
    app.add_typer(features_app, name="features")
    end = replay_start(settings).isoformat()
    result = CliRunner().invoke(app, ["features", "materialize", "--full", "--end", end,
                                      "--workdir", str(settings.workdir)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{"):])


def _lose_and_recover(settings: Settings, lose: Any, recover: Any, reload_full: Any) -> None:
    """Score persons with history, lose the store, score and record more leads of the same
    persons, ``recover``, compare; then check that ``reload_full`` overwrites rows newer than
    its own."""
    at = datetime.now(UTC) - timedelta(minutes=10)
    leads = _leads_with_history(settings, PERSONS)
    assert len(leads) == PERSONS
    phones = _link_phones(settings, leads)
    predictor = Predictor.from_settings(settings, background_log=False)
    assert predictor.ready(), predictor.load_error
    try:
        subs = [_submission(lead, at) for lead in leads]
        before = [_answer(predictor, sub) for sub in subs]
        assert [a["degraded"] for a in before] == [False] * PERSONS, before
        assert predictor.recorder.flush(timeout=30)

        lose()
        served_not_degraded = 0
        for round_ in range(ROUNDS_DURING_LOSS):
            # the same submissions, and new leads of the same persons for the recorder
            for sub in subs + _new_leads(f"lost{round_}", phones, at - timedelta(minutes=1)):
                answer = _answer(predictor, sub)
                served_not_degraded += answer["degraded"] is False
                assert answer["degraded_reason"] == DEGRADED_RESET, answer
            assert predictor.recorder.flush(timeout=30)
        assert served_not_degraded == 0
        assert predictor.recorder.dropped >= 2 * PERSONS * ROUNDS_DURING_LOSS
        with pytest.raises(OnlineStoreResetError):  # /events answers 503: the client retries
            predictor.push_events([Event.model_validate({
                "identifiers": {"phone": phones[0]}, "event_type": "pricing_page",
                "url": "/pricing", "event_time": at.isoformat()})])

        report = recover()
        assert report["full"] is True and report["epoch"], report
        assert [_answer(predictor, sub) for sub in subs] == before  # exactly as before

        # leads recorded after the recovery make newer rows; a full reload still gives back
        # exactly the offline rows (it overwrites whatever their times)
        for sub in _new_leads("after", phones, at - timedelta(minutes=1)):
            assert _answer(predictor, sub)["degraded"] is False
        assert predictor.recorder.flush(timeout=30)
        changed = [_answer(predictor, sub) for sub in subs]
        assert [a["tags"]["prior_leads"] for a in changed] == [
            a["tags"]["prior_leads"] + 1 for a in before]
        reload_full()
        assert [_answer(predictor, sub) for sub in subs] == before
    finally:
        predictor.close()


# ---- Redis (production profile) ----------------------------------------------------------------
@pytest.fixture
def redis_workdir(postgres_available: None, redis_available: None, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A production-profile work folder on Redis database ``REDIS_DB`` (flushed before and
    after) and unique PostgreSQL databases (dropped after)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    settings = production_settings(monkeypatch, tmp_path / "work", unique_prefix("store"),
                                   REDIS_URL)
    try:
        _build(settings)
        yield settings
    finally:
        client.flushdb()
        client.close()
        drop_databases(settings)
        get_settings.cache_clear()


@pytest.mark.slow
def test_redis_lost_and_back(redis_workdir: Settings) -> None:
    import redis

    settings = redis_workdir
    client = redis.Redis.from_url(REDIS_URL)
    reader_store = get_store(settings)
    reader = OnlineFeatureReader(reader_store, settings)
    try:
        assert reader.redis_pipeline  # the epoch travels with the person reads
        # the one-pipeline read gives what Feast's per-view online_read gives
        lead_person = pd.read_parquet(settings.identity_dir / "lead_person.parquet")
        by_lead = dict(zip(lead_person["lead_id"], lead_person["person_id"], strict=True))
        persons = [str(by_lead[lead]) for lead in _leads_with_history(settings, PERSONS)]
        persons.append("P-nobody")
        piped = reader.read_snapshots(persons)
        reader.redis_pipeline = False
        assert reader.read_snapshots(persons) == piped
        assert piped[1] == [True] * PERSONS + [False]
    finally:
        reader.close()

    def lose() -> None:
        client.flushdb()  # what a restart without persistence leaves

    try:
        _lose_and_recover(settings, lose, lambda: _materialize_full(settings),
                          lambda: _materialize_full(settings))
    finally:
        client.close()


# ---- SQLite (embedded profile) -----------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded_workdir(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A small embedded work folder of this module's own (its online store file is deleted)."""
    settings = Settings().with_workdir(tmp_path_factory.mktemp("store_embedded"))
    _build(settings)
    return settings


@pytest.mark.slow
def test_sqlite_file_lost_and_back(embedded_workdir: Settings,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import features.fast_online_store as fast_store
    from features.build import materialize

    monkeypatch.setattr(fast_store, "FILE_CHECK_SECONDS", 0.0)  # notice the loss at once
    settings = embedded_workdir
    online_db = settings.feast_state_dir / "online_store.db"

    def lose() -> None:
        for path in online_db.parent.glob(online_db.name + "*"):  # the file, its WAL and SHM
            path.unlink()

    def recover() -> dict[str, Any]:
        # an incremental run notices the lost epoch and reloads everything by itself
        return materialize(settings, end=replay_start(settings))

    _lose_and_recover(settings, lose, recover,
                      lambda: materialize(settings, end=replay_start(settings), full=True))


# ---- the service in process: PII in free text, /events for a person not scored yet --------------
RAW_PHONE = "13977778888"
RAW_EMAIL = "leak.person@example.com"
RAW_WECHAT = "wxid_leak4242"


@pytest.fixture
def service_env(service_workdir: ServiceWorkdir, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[Settings]:
    """The environment the real service (``LeadScoring``) reads, on the shared work folder."""
    monkeypatch.setenv("LEADSCORE_WORKDIR", str(service_workdir.settings.workdir))
    monkeypatch.setenv("LEADSCORE_API_KEY", API_KEY)
    get_settings.cache_clear()
    try:
        yield service_workdir.settings
    finally:
        get_settings.cache_clear()


def _in_process() -> Any:
    """The real service app in process (its shutdown drains the log and the lead recorder)."""
    from starlette.testclient import TestClient

    from serving.service import LeadScoring

    return TestClient(LeadScoring.to_asgi())


def _dump_sqlite(path: Path) -> bytes:
    """Every table's rows of an SQLite file, values as bytes (blobs included)."""
    with sqlite3.connect(path, timeout=30) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        chunks = []
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    chunks.append(value if isinstance(value, bytes) else str(value).encode())
    return b"\n".join(chunks)


def test_free_text_pii_never_stored_logged_or_echoed(service_env: Settings) -> None:
    settings = service_env
    lead = f"L-pii-{uuid.uuid4().hex[:8]}"
    hostile = {
        "campaign": f"spring {RAW_PHONE} {RAW_EMAIL} wechat: {RAW_WECHAT}",
        "landing_page": f"/trial/math?phone={RAW_PHONE}&email={RAW_EMAIL}#{RAW_WECHAT}",
        "form": {"grade": "G5", "subject": "math", "city": f"call {RAW_PHONE}"},
    }
    now = datetime.now(UTC)
    with _in_process() as app:
        answers = [app.post("/predict", json=submission(lead, **hostile), headers=AUTH)]
        answers.append(app.post("/predict_batch", json={"submissions": [
            submission(f"{lead}-b", **hostile)]}, headers=AUTH))
        events = app.post("/events", json={"events": [
            {"identifiers": {"phone": KNOWN_PHONE}, "event_type": "pricing_page",
             "url": f"/pricing?phone={RAW_PHONE}&email={RAW_EMAIL.replace('@', '%40')}",
             "event_time": (now - timedelta(minutes=1)).isoformat()},
            {"identifiers": {"phone": KNOWN_PHONE}, "event_type": "web_visit",
             "url": f"https://shop.example.com/u/{RAW_EMAIL}/{RAW_WECHAT}?t={RAW_PHONE}",
             "event_time": now.isoformat()},
        ]}, headers=AUTH)
        after = app.post("/predict", json=submission(f"{lead}-c"), headers=AUTH)
    # leaving the block shut the service down: the log and the lead recorder are drained
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert events.status_code == 200 and events.json()["accepted"] == 2, events.text
    assert after.status_code == 200, after.text
    raw_values = [RAW_PHONE, RAW_EMAIL, RAW_WECHAT, RAW_EMAIL.replace("@", "%40")]
    for response in [*answers, events, after]:
        for raw in raw_values:
            assert raw not in response.text, f"raw value in an answer: {raw!r}"
    online = _dump_sqlite(settings.feast_state_dir / "online_store.db")
    assert b"shop.example.com/u/[email]/[wechat]" in online  # the event's page, scrubbed
    log = _dump_sqlite(settings.workdir / "data" / "predictions.sqlite")
    assert lead.encode() in log
    for raw in raw_values:
        assert raw.encode() not in online, f"raw value in the online store: {raw!r}"
        assert raw.encode() not in log, f"raw value in the prediction log: {raw!r}"


def test_events_of_a_person_not_scored_yet_get_a_true_reason(service_env: Settings) -> None:
    cookie = f"c-unscored-{uuid.uuid4().hex[:10]}"
    now = datetime.now(UTC).isoformat()
    event = {"identifiers": {"cookie_id": cookie}, "event_type": "web_visit", "url": "/",
             "event_time": now}
    with _in_process() as app:
        response = app.post("/events", json={"events": [
            event,
            {"identifiers": {"phone": "not a phone"}, "event_type": "web_visit", "url": "/",
             "event_time": now},
        ]}, headers=AUTH)
        # once the person is scored, the same event is accepted
        lead = f"L-unscored-{uuid.uuid4().hex[:8]}"
        scored = app.post("/predict", json=submission(lead, identifiers={"cookie_id": cookie}),
                          headers=AUTH)
        again = app.post("/events", json={"events": [event]}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 0, "persons_updated": 0, "rejected": {
        "person_not_scored_yet": 1, "no_usable_identifier_or_lead_id": 1},
        "rescoring_queued": 0}
    assert scored.status_code == 200, scored.text
    assert again.json()["accepted"] == 1, again.text
