"""``POST /events`` and ``/predict``: keep a person's online behaviour snapshot current.

The offline build (``features.behaviour``) stores a snapshot of the person at each of its leads,
with its recent history (``snap_history``: events within ``features.history.HORIZON_DAYS``, older
ones folded into totals, and every lead). Online, the service keeps that history current and
writes the person's new ``person_behaviour`` row (the view behind the ``person_behaviour_push``
PushSource) to the online store:

* ``POST /events``: the events are added to the history;
* ``/predict`` and ``/predict_batch``: each scored submission is added to its person's leads
  (once per lead id), so the person's next submission counts it as an earlier lead.

The row's snapshot fields are recomputed from the history (``features.history.snapshot_at``) at
the row's time, ``max(stored time, latest event or lead)``, and the on-demand view re-evaluates
them at each request time. So after the events and leads before time t are recorded, a request
at t gets exactly the offline point-in-time row at t, however long ago the last event was.
The caller decides what is visible when: an event is counted for every request at or after its
``event_time`` (the offline build also hides a later lead's pre-submission events from earlier
leads, so send those with, or after, their lead's submission); two submissions of one person in
one ``/predict_batch`` do not see each other as earlier leads.

A person is found like ``/predict`` finds it: identifiers first, then the lead's One ID person,
then the person a new lead founds (``new_person_id(lead_id)``). Events that cannot be placed are
rejected, counted by reason and never echoed: ``no_usable_identifier_or_lead_id`` (neither), or
``person_not_scored_yet`` (usable identifiers of a person neither One ID nor a prediction of
this process knows: send them again after the person's first submission, or with its lead id).
Updates run one at a time in the process (read-modify-write). A stored row without a history
(built before histories existed) keeps its totals as the history's base; its window and lead
counts restart.

No row is written into a store that lost its data: an update reads the store's load epoch
(``features.online_epoch``) before and after it reads the stored rows and writes only when both
are the same epoch (``OnlineStoreResetError`` otherwise: ``/events`` answers 503, the lead
recorder drops the batch — the leads stay in the prediction log). Without this, a person's
first lead after a Redis restart would store a row built from that lead alone, newer than the
row the recovery loads, and later answers would look complete while they are not.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from feast import FeatureStore
from feast.infra.online_stores.helpers import get_online_store_from_config
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from features import history as hist
from features import request as rq
from features.behaviour import event_weight
from features.fast_online_store import string_entity_keys
from features.online_epoch import read_epoch
from features.score2d import ScoringTables
from leadscore.config import Settings
from serving.fast_online_reader import (
    PERSON_JOIN_KEY,
    OnlineFeatureReader,
    OnlineStoreError,
    OnlineStoreResetError,
)
from serving.log_writer import BatchingWriter
from serving.schemas import Event, EventsResponse, Submission

logger = logging.getLogger("leadscore.events")

PUSH_SOURCE = "person_behaviour_push"
BEHAVIOUR_VIEW = "person_behaviour"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# (identifiers, lead id) → (person, None) or (None, why it cannot be placed)
Locate = Callable[[Any, str | None], tuple[str | None, str | None]]
FLUSH_BEFORE_EVENTS_SECONDS = 5.0
EPOCH_ATTEMPTS = 3  # reads retried when a full load finished while the rows were read


@dataclass(frozen=True)
class PersonEvent:
    """One event after identity resolution (no raw identifiers)."""

    person_id: str
    event_type: str
    time_us: int
    url: str


@dataclass(frozen=True)
class PersonLead:
    """One scored submission of a person: when, through which (normalised) channel."""

    person_id: str
    lead_id: str
    time_us: int
    channel: str


def epoch_us(value: datetime) -> int:
    """A timezone-aware time as integer UTC epoch microseconds (exact)."""
    delta = value.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def stored_history(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The history of a stored row; for a row without one, a base holding its totals."""
    history = hist.loads(snapshot.get(hist.HISTORY_FIELD))
    if history is not None:
        return history
    history = hist.empty_history()
    ts, total = snapshot.get("snap_ts_s"), int(snapshot.get("snap_events_total") or 0)
    if total and isinstance(ts, int | float) and math.isfinite(ts):
        history.update(n0=total, i0=float(snapshot.get("snap_intent") or 0.0),
                       a0=round(ts * 1e6),
                       f0=round(float(snapshot.get("snap_first_touch_ts_s") or 0) * 1e6),
                       l0=round(float(snapshot.get("snap_last_touch_ts_s") or 0) * 1e6))
    return history


def next_row(snapshot: dict[str, Any] | None, events: Sequence[PersonEvent],
             leads: Sequence[PersonLead], tables: ScoringTables,
             half_life_days: float) -> dict[str, Any]:
    """The person's new snapshot row: the stored one (or none) with ``events`` and ``leads``."""
    history = stored_history(snapshot or {})
    hist.add_events(history, (
        (e.time_us, e.event_type, e.url,
         event_weight(e.url, e.event_type, tables)) for e in events))
    hist.add_leads(history, ((lead.time_us, lead.channel, lead.lead_id) for lead in leads))
    at = hist.latest_us(history)
    stored_ts = (snapshot or {}).get("snap_ts_s")
    if isinstance(stored_ts, int | float) and math.isfinite(stored_ts):
        at = max(at, round(stored_ts * 1e6))  # the online store never takes an older row
    hist.prune(history, at, half_life_days)
    row = hist.snapshot_at(history, at, half_life_days)
    row[hist.HISTORY_FIELD] = hist.dumps(history)
    return row


def _entity_key(person_id: str) -> EntityKeyProto:
    return EntityKeyProto(join_keys=[PERSON_JOIN_KEY],
                          entity_values=[ValueProto(string_val=person_id)])


def _python(value: ValueProto) -> Any:
    kind = value.WhichOneof("val")
    return None if kind is None or kind == "null_val" else getattr(value, kind)


def _proto(value: Any, kind: str) -> ValueProto:
    if kind == "int":
        return ValueProto(int64_val=int(value))
    if kind == "float":
        return ValueProto(double_val=float(value))
    return ValueProto(string_val=str(value))


class BehaviourUpdater:
    """Records events and leads in the persons' online behaviour rows."""

    def __init__(self, store: FeatureStore, reader: OnlineFeatureReader | None,
                 tables: ScoringTables, half_life_days: float) -> None:
        # ``reader`` (the predictions' connection) is not used: reads and writes here go
        # through the updater's own connection, one update at a time
        self.store = store
        self.reader = reader
        self.tables = tables
        self.half_life_days = half_life_days
        self._lock = threading.Lock()
        self.fields = dict(rq.BEHAVIOUR_SNAPSHOT_FIELDS)
        self.view = store.get_feature_view(BEHAVIOUR_VIEW)
        self.online_store = get_online_store_from_config(store.config.online_store)

    @classmethod
    def from_settings(cls, settings: Settings) -> BehaviourUpdater:
        """An updater with its own store (close it when done)."""
        from features.params import FeatureParams
        from features.store import get_store

        params = FeatureParams.from_settings(settings)
        return cls(get_store(settings), None, params.tables, params.half_life_days)

    def close(self) -> None:
        """Close the updater's store connection."""
        conn = getattr(self.online_store, "_conn", None)
        if conn is not None:
            conn.close()
            self.online_store._conn = None

    def current(self, person_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """The stored row of each person (None for persons without one)."""
        columnar = getattr(self.online_store, "online_read_columns", None)
        if columnar is not None:  # the fast SQLite store: values without protos
            config = self.store.config
            keys = string_entity_keys(PERSON_JOIN_KEY, list(person_ids),
                                      config.entity_key_serialization_version)
            _, found, columns = columnar(config, self.view, keys, list(self.fields))
            current: list[dict[str, Any] | None] = []
            for i, known in enumerate(found):
                row = {name: values[i] for name, values in columns.items()} if known else None
                current.append(row if row and row.get("snap_ts_s") is not None else None)
            return current
        rows = self.online_store.online_read(self.store.config, self.view,
                                             [_entity_key(p) for p in person_ids],
                                             list(self.fields))
        out: list[dict[str, Any] | None] = []
        for _, values in rows:
            row = None
            if values:
                row = {name: _python(values[name]) for name in self.fields if name in values}
            out.append(row if row and row.get("snap_ts_s") is not None else None)
        return out

    def apply(self, events: Sequence[PersonEvent]) -> int:
        """Add ``events`` to their persons' rows and write them; persons updated."""
        return self._update(events, [])

    def record_leads(self, leads: Sequence[PersonLead]) -> int:
        """Add scored submissions to their persons' leads and write them; persons updated."""
        return self._update([], leads)

    def record_submissions(self, submissions: Sequence[Submission],
                           person_ids: Sequence[str]) -> None:
        """``record_leads`` for scored submissions, now; a store failure is logged, never
        raised (the answer is already computed; the lead reaches the store with the next
        build). The service records through ``BackgroundLeadRecorder`` instead."""
        leads = person_leads(list(zip(submissions, person_ids, strict=True)))
        try:
            self.record_leads(leads)
        except Exception as exc:  # noqa: BLE001 - store trouble must not fail the prediction
            logger.warning("recording %d lead(s) failed: %s", len(leads), type(exc).__name__)

    def _update(self, events: Sequence[PersonEvent], leads: Sequence[PersonLead]) -> int:
        by_person: dict[str, tuple[list[PersonEvent], list[PersonLead]]] = {}
        for event in events:
            by_person.setdefault(event.person_id, ([], []))[0].append(event)
        for lead in leads:
            by_person.setdefault(lead.person_id, ([], []))[1].append(lead)
        if not by_person:
            return 0
        persons = sorted(by_person)
        with self._lock:
            stored_rows = self._current_within_one_epoch(persons)
            rows = [next_row(stored, *by_person[person], self.tables, self.half_life_days)
                    for person, stored in zip(persons, stored_rows, strict=True)]
            self._write(persons, rows)
        return len(persons)

    def _current_within_one_epoch(self, persons: Sequence[str]) -> list[dict[str, Any] | None]:
        """``current(persons)``, read while the store held one and the same load epoch: the
        rows are the persons' whole rows (or the persons are new), never the leftovers of a
        store that lost its data. Raises ``OnlineStoreResetError`` when there is no epoch."""
        config = self.store.config
        for _ in range(EPOCH_ATTEMPTS):
            before = read_epoch(self.online_store, config)
            if before is None:
                raise OnlineStoreResetError(
                    "the online store holds no load epoch (it lost its data): rows are not "
                    "updated until `leadscore features materialize` reloads it")
            stored = self.current(persons)
            if read_epoch(self.online_store, config) == before:
                return stored
        raise OnlineStoreError("the online store was reloaded during every read of the rows")

    def _write(self, persons: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
        """Write the rows of ``person_behaviour`` (as a push through its PushSource would)."""
        created = datetime.now(UTC)
        data = []
        # one ValueProto per distinct (kind, value): counts, flags and times repeat a lot
        protos: dict[tuple[str, type, Any], ValueProto] = {}
        for person, row in zip(persons, rows, strict=True):
            key = _entity_key(person)
            values = {}
            for name, kind in self.fields.items():
                value = row[name]
                try:
                    memo = (kind, type(value), value)
                    proto = protos.get(memo)
                    if proto is None:
                        proto = protos[memo] = _proto(value, kind)
                except TypeError:  # unhashable: never the case for snapshot fields
                    proto = _proto(value, kind)
                values[name] = proto
            stamp = _EPOCH + timedelta(microseconds=round(row["snap_ts_s"] * 1e6))
            data.append((key, values, stamp, created))
        self.online_store.online_write_batch(self.store.config, self.view, data, None)


def person_leads(scored: Sequence[tuple[Submission, str]]) -> list[PersonLead]:
    """``PersonLead`` of each (scored submission, its person id)."""
    channels = rq.normalise_category([sub.channel for sub, _ in scored], "channel")
    return [PersonLead(person, sub.lead_id, epoch_us(sub.submitted_at), channel)
            for (sub, person), channel in zip(scored, channels, strict=True)]


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) is a network failure reaching the online store:
    refused, reset or timed out (Redis down), not a local error such as a locked SQLite file."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    kinds = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)
    seen: BaseException | None = exc
    for _ in range(10):  # the chain of causes is short; never loop on a cycle
        if seen is None:
            return False
        if isinstance(seen, kinds):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class BackgroundLeadRecorder(BatchingWriter):
    """Records scored submissions as leads off the request path (``BatchingWriter``).

    ``record_submissions`` only queues; the writer thread applies everything queued within a
    linger (~20 ms) in one ``BehaviourUpdater.record_leads`` call (one read and one write
    transaction), in order, retrying a failed write and draining on ``close``. A person's next
    prediction sees a lead once it is stored (``flush`` waits for that). ``push_events`` goes
    through ``updater`` only after a ``flush``, so an event pushed after a prediction is
    applied after its lead; both share the updater's lock (read-modify-write, never an older
    row over a newer one).
    """

    what = "lead"
    logger = logger

    def __init__(self, updater: BehaviourUpdater, max_queued_batches: int = 10_000,
                 max_leads_per_write: int = 5_000, linger_seconds: float = 0.02) -> None:
        self.updater = updater
        super().__init__(max_queued_batches, max_leads_per_write, linger_seconds,
                         name="lead-recorder")

    def record_submissions(self, submissions: Sequence[Submission],
                           person_ids: Sequence[str]) -> None:
        """Queue scored submissions (with their persons) to be recorded as leads."""
        self._enqueue(list(zip(submissions, person_ids, strict=True)))

    def push_events(self, events: Sequence[Event], locate: Locate) -> EventsResponse:
        """``push_events`` after every lead queued so far is stored (or a stuck store's
        timeout: the updater's lock still keeps each read-modify-write whole)."""
        self.flush(timeout=FLUSH_BEFORE_EVENTS_SECONDS)
        return push_events(events, self.updater, locate)

    def _store(self, batch: list[tuple[Submission, str]]) -> None:
        self.updater.record_leads(person_leads(batch))

    def _gives_up_on(self, exc: Exception) -> bool:
        """An unreachable online store, or one that lost its data (no load epoch), drops the
        batch: the leads stay in the prediction log and reach the store with the next feature
        build (a row built from nothing but these leads is never written, see the module's
        notes); other failures are retried."""
        return is_unreachable(exc) or isinstance(exc, OnlineStoreResetError)

    def _close_target(self) -> None:
        self.updater.close()


def resolve_events(events: Sequence[Event], locate: Locate
                   ) -> tuple[list[PersonEvent], Counter]:
    """Events with their person (``locate(identifiers, lead_id)``: the person, or None and
    why) and rejection counts by reason."""
    resolved: list[PersonEvent] = []
    rejected: Counter = Counter()
    for event in events:
        person, why = locate(event.identifiers, event.lead_id)
        if person is None:
            rejected[why or "no_usable_identifier_or_lead_id"] += 1
            continue
        resolved.append(PersonEvent(person, event.event_type,
                                    epoch_us(event.event_time), event.url))
    return resolved, rejected


def push_events(events: Sequence[Event], updater: BehaviourUpdater,
                locate: Locate) -> EventsResponse:
    """Resolve, apply and write a request's events; the ``POST /events`` answer."""
    resolved, rejected = resolve_events(events, locate)
    persons = updater.apply(resolved)
    return EventsResponse(accepted=len(resolved), persons_updated=persons,
                          rejected=dict(rejected))
