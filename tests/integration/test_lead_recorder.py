"""Scored submissions are recorded as leads off the request path (``BackgroundLeadRecorder``).

Real feature store (the shared service work folder's SQLite online store), no mocks: the
recorder queues, stores within its linger, keeps order with ``/events`` pushes, and drains on
close.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from features import history
from serving.events import BackgroundLeadRecorder, BehaviourUpdater
from serving.predictor import Predictor
from serving.schemas import Event, Submission
from tests.integration.service_fixtures import (
    ServiceWorkdir,
    submission,
)


def _cookie(tag: str) -> dict[str, str | None]:
    return {"phone": None, "wechat_id": None, "email": None, "cookie_id": f"c-recorder-{tag}"}


def test_predict_queues_the_lead_and_the_flush_stores_it(
    service_workdir: ServiceWorkdir,
) -> None:
    predictor = Predictor.from_settings(service_workdir.settings, background_log=False)
    assert predictor.ready(), predictor.load_error
    slow = BackgroundLeadRecorder(predictor.updater, linger_seconds=0.5)
    predictor.recorder.close()
    predictor.recorder = slow
    now = datetime.now(UTC)
    ids = _cookie("1")
    first = Submission.model_validate(submission(
        "L-recorder-1", identifiers=ids, submitted_at=(now - timedelta(hours=2)).isoformat()))
    second = Submission.model_validate(submission(
        "L-recorder-2", identifiers=ids, submitted_at=(now - timedelta(hours=1)).isoformat()))
    try:
        answer = predictor.predict([first])[0]
        # the answer came back before the lead was stored (the linger is half a second)
        assert slow.pending == 1
        assert predictor.updater.current([answer.person_id]) == [None]
        assert slow.flush(timeout=30) and slow.pending == 0
        later = predictor.predict([second])[0]
    finally:
        predictor.close()
    assert later.person_id == answer.person_id and not later.degraded
    assert later.tags["prior_leads"] == 1


def test_events_after_a_prediction_are_applied_after_its_lead(
    service_workdir: ServiceWorkdir,
) -> None:
    predictor = Predictor.from_settings(service_workdir.settings, background_log=False,
                                        load_model=False)
    slow = BackgroundLeadRecorder(predictor.updater, linger_seconds=0.5)
    predictor.recorder.close()
    predictor.recorder = slow
    now = datetime.now(UTC)
    ids = _cookie("2")
    sub = Submission.model_validate(submission(
        "L-recorder-3", identifiers=ids, submitted_at=(now - timedelta(hours=1)).isoformat()))
    try:
        person = predictor.resolve(sub).person_id
        slow.record_submissions([sub], [person])
        pushed = predictor.push_events([Event.model_validate({
            "identifiers": ids, "event_type": "pricing_page", "url": "/pricing",
            "event_time": now.isoformat()})])
        assert pushed.accepted == 1 and slow.pending == 0  # the lead was stored first
        row = predictor.updater.current([person])[0]
    finally:
        predictor.close()
    stored = history.loads(row[history.HISTORY_FIELD])
    assert row["snap_events_total"] == 1
    assert stored["li"] == ["L-recorder-3"]  # the event write kept the queued lead


def test_close_drains_every_queued_lead(service_workdir: ServiceWorkdir) -> None:
    updater = BehaviourUpdater.from_settings(service_workdir.settings)
    recorder = BackgroundLeadRecorder(updater, max_queued_batches=4, linger_seconds=0.05)
    now = datetime.now(UTC)
    subs = [Submission.model_validate(submission(
        f"L-recorder-drain-{i}", identifiers=_cookie("drain"),
        submitted_at=(now - timedelta(minutes=60 - i)).isoformat())) for i in range(40)]
    for sub in subs:  # a small queue: back-pressure, never a dropped lead
        recorder.record_submissions([sub], ["P-recorder-drain"])
    recorder.close()
    check = BehaviourUpdater.from_settings(service_workdir.settings)
    try:
        row = check.current(["P-recorder-drain"])[0]
    finally:
        check.close()
    stored = history.loads(row[history.HISTORY_FIELD])
    assert stored["li"] == [sub.lead_id for sub in subs]  # all of them, in order


def test_background_writer_threads_run_at_a_lower_priority() -> None:
    """The writers' work is never what a client waits for: their threads are niced (Linux
    schedules threads one by one), so on a small machine they yield the cores to requests."""
    import os
    import sys
    import threading

    import pytest

    from serving.log_writer import BACKGROUND_NICE, BatchingWriter

    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread niceness is a Linux scheduling feature")

    seen: list[int] = []

    class Probe(BatchingWriter):
        def _store(self, batch: list[object]) -> None:
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    writer = Probe(linger_seconds=0.0)
    writer._enqueue([1])
    assert writer.flush(timeout=10)
    writer.close()
    assert seen == [min(19, mine + BACKGROUND_NICE)]
    # the caller's own thread keeps its priority
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine


def test_unreachable_store_drops_the_batch_other_failures_retry() -> None:
    import sqlite3

    import redis

    from serving.events import is_unreachable
    from serving.log_writer import BatchingWriter

    class FailsOnce(BatchingWriter):
        def __init__(self, failure: Exception) -> None:
            self.failure, self.stored_batches = failure, []
            super().__init__(linger_seconds=0.0, nice=0)

        def _store(self, batch: list) -> None:
            if self.write_failures == 0:
                raise self.failure
            self.stored_batches.append(batch)

        def _gives_up_on(self, exc: Exception) -> bool:
            return is_unreachable(exc)

    try:
        raise RuntimeError("online read failed") from redis.exceptions.ConnectionError("refused")
    except RuntimeError as wrapped:
        unreachable = wrapped
    for failure, dropped in ((unreachable, 1), (sqlite3.OperationalError("locked"), 0)):
        writer = FailsOnce(failure)
        writer._enqueue(["lead"])
        assert writer.flush(timeout=10)
        writer.close()
        assert writer.write_failures == 1
        assert writer.dropped == dropped
        assert writer.stored_batches == ([] if dropped else [["lead"]])
