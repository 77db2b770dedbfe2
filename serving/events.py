"""``POST /events``: fold behaviour events into a person's online snapshot and push it to Feast.

The offline build (``features.behaviour``) computes a person's behaviour snapshot from the whole
event history. Online, only the current snapshot is at hand, so an event updates it
incrementally and the new snapshot is pushed through the ``person_behaviour_push`` PushSource
(``FeatureStore.push``), so that the person's next prediction sees it:

* the snapshot's time becomes ``max(snapshot time, event time)``; the intent score is decayed to
  that time and gains ``URL weight × behaviour weight × 0.5^(age / half-life)`` of the event;
* the event counts in ``events_total`` and in every window (all types, its type, distinct URLs,
  site visits) that holds it at the snapshot's time;
* first/last touch times are widened to the event, ``has_history`` becomes 1, and the
  engagement trend is recomputed from the 7-day count and the 21 days before it.

Approximations (the exact values come back with the next offline build + materialization):
counts already in the snapshot are not aged out of their windows when the snapshot time moves
forward, and a URL counts as a new distinct URL. A person is found like ``/predict`` finds it:
identifiers first, then the lead's One ID person, then the person a new lead founds
(``new_person_id(lead_id)``). Events without a usable identifier or lead id are rejected
(counted by reason, never echoed). Updates run one at a time in the process (read-modify-push).
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import pandas as pd
from feast import FeatureStore
from feast.data_source import PushMode

from features import request as rq
from features.behaviour import event_weight
from features.score2d import ScoringTables
from serving.online_reader import OnlineFeatureReader
from serving.schemas import Event, EventsResponse

PUSH_SOURCE = "person_behaviour_push"
BEHAVIOUR_VIEW = "person_behaviour"
DAY_S = 86_400.0
INT_FIELDS = tuple(name for name, kind in rq.BEHAVIOUR_SNAPSHOT_FIELDS.items() if kind == "int")


@dataclass(frozen=True)
class PersonEvent:
    """One event after identity resolution (no raw identifiers)."""

    person_id: str
    event_type: str
    time_s: float
    url: str


def empty_snapshot() -> dict[str, Any]:
    """The snapshot of a person without recorded behaviour (time unset)."""
    snapshot: dict[str, Any] = {
        name: (0 if kind == "int" else 0.0) for name, kind in rq.BEHAVIOUR_SNAPSHOT_FIELDS.items()
    }
    snapshot["snap_ts_s"] = math.nan
    return snapshot


def _estimated_prev21(snapshot: dict[str, Any]) -> float:
    """Events in the 21 days before the last 7, recovered from the stored trend when possible."""
    r7 = snapshot["snap_events_7d"] / 7.0
    trend = float(snapshot["snap_engagement_trend"] or 0.0)
    if r7 > 0 and trend > -1.0:
        return max(r7 * (1.0 - trend) / (1.0 + trend), 0.0) * 21.0
    return float(max(snapshot["snap_events_30d"] - snapshot["snap_events_7d"], 0))


def apply_event(snapshot: dict[str, Any], event: PersonEvent, weight: float,
                half_life_days: float) -> dict[str, Any]:
    """A new snapshot: ``snapshot`` with ``event`` folded in (see the module doc)."""
    new = dict(snapshot)
    old_ts = snapshot["snap_ts_s"]
    at = event.time_s if not _finite(old_ts) else max(float(old_ts), event.time_s)
    intent = float(snapshot["snap_intent"] or 0.0)
    if _finite(old_ts) and at > old_ts:
        intent *= 0.5 ** ((at - old_ts) / DAY_S / half_life_days)
    age_days = (at - event.time_s) / DAY_S
    new["snap_intent"] = intent + weight * 0.5 ** (age_days / half_life_days)
    prev21 = _estimated_prev21(snapshot)

    def bump(name: str, days: float | None = None) -> None:
        if days is None or age_days < days:
            new[rq.SNAP_PREFIX + name] = int(new[rq.SNAP_PREFIX + name] or 0) + 1

    bump("events_total")
    for days in rq.WINDOWS_DAYS:
        bump(f"events_{days}d", days)
    for days, types in rq.TYPE_WINDOWS.items():
        if event.event_type in types:
            bump(f"{event.event_type}_{days}d", days)
    if event.url:
        for days in rq.URL_WINDOWS_DAYS:
            bump(f"urls_{days}d", days)
    if event.event_type in rq.SITE_EVENT_TYPES:
        bump(f"site_visits_{rq.SITE_WINDOW_DAYS}d", rq.SITE_WINDOW_DAYS)

    last = float(snapshot["snap_last_touch_ts_s"] or 0.0)
    first = float(snapshot["snap_first_touch_ts_s"] or 0.0)
    new["snap_last_touch_ts_s"] = max(last, event.time_s)
    new["snap_first_touch_ts_s"] = min(first, event.time_s) if first > 0 else event.time_s
    new["snap_has_history"] = 1
    r7, r21 = new["snap_events_7d"] / 7.0, prev21 / 21.0
    new["snap_engagement_trend"] = (r7 - r21) / (r7 + r21) if r7 + r21 > 0 else 0.0
    new["snap_ts_s"] = at
    return new


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


class BehaviourUpdater:
    """Applies resolved events to the online behaviour snapshots through Feast push."""

    def __init__(self, store: FeatureStore, reader: OnlineFeatureReader, tables: ScoringTables,
                 half_life_days: float) -> None:
        self.store = store
        self.reader = reader
        self.tables = tables
        self.half_life_days = half_life_days
        self._lock = threading.Lock()
        self.fields = list(rq.BEHAVIOUR_SNAPSHOT_FIELDS)

    def current(self, person_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The stored snapshot of each person (``empty_snapshot`` for unknown ones)."""
        columns, _ = self.reader.read_snapshots(person_ids)
        snapshots = []
        for i in range(len(person_ids)):
            snapshot = empty_snapshot()
            stored_ts = columns.get("snap_ts_s", [None] * len(person_ids))[i]
            if stored_ts is not None:
                for name in self.fields:
                    value = columns.get(name, [None] * len(person_ids))[i]
                    if value is not None:
                        snapshot[name] = value
            snapshots.append(snapshot)
        return snapshots

    def apply(self, events: Sequence[PersonEvent]) -> int:
        """Fold ``events`` into their persons' snapshots and push them; persons updated."""
        by_person: dict[str, list[PersonEvent]] = {}
        for event in events:
            by_person.setdefault(event.person_id, []).append(event)
        if not by_person:
            return 0
        persons = sorted(by_person)
        with self._lock:
            snapshots = self.current(persons)
            rows = []
            for person, snapshot in zip(persons, snapshots, strict=True):
                for event in sorted(by_person[person], key=lambda e: e.time_s):
                    weight = event_weight(event.url, event.event_type, self.tables)
                    snapshot = apply_event(snapshot, event, weight, self.half_life_days)
                rows.append({"person_id": person, **snapshot})
            self.store.push(PUSH_SOURCE, self._frame(rows), to=PushMode.ONLINE)
        return len(persons)

    def _frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        frame = pd.DataFrame(rows)
        frame["event_timestamp"] = pd.to_datetime(frame["snap_ts_s"], unit="s", utc=True)
        for name in INT_FIELDS:
            frame[name] = frame[name].astype("int64")
        for name, kind in rq.BEHAVIOUR_SNAPSHOT_FIELDS.items():
            if kind == "float":
                frame[name] = frame[name].astype("float64")
        return frame[["person_id", "event_timestamp", *self.fields]]


def resolve_events(events: Sequence[Event], find_person: Callable[[Any, str | None], str | None]
                   ) -> tuple[list[PersonEvent], Counter]:
    """Events with their person (``find_person(identifiers, lead_id)``) and rejection counts."""
    resolved: list[PersonEvent] = []
    rejected: Counter = Counter()
    for event in events:
        person = find_person(event.identifiers, event.lead_id)
        if person is None:
            rejected["no_usable_identifier_or_lead_id"] += 1
            continue
        resolved.append(PersonEvent(person, event.event_type,
                                    event.event_time.astimezone(UTC).timestamp(), event.url))
    return resolved, rejected


def push_events(events: Sequence[Event], updater: BehaviourUpdater,
                find_person: Callable[[Any, str | None], str | None]) -> EventsResponse:
    """Resolve, apply and push a request's events; the ``POST /events`` answer."""
    resolved, rejected = resolve_events(events, find_person)
    persons = updater.apply(resolved)
    return EventsResponse(accepted=len(resolved), persons_updated=persons,
                          rejected=dict(rejected))


