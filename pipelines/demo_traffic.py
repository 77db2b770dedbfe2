"""Traffic for the main job: generated leads and behaviour events replayed as the CRM sends them.

``replay_plan`` interleaves, in time order, the behaviour events (``POST /events``) and the form
submissions (``/predict``, ``/predict_batch``) of the replayed period, so the service sees at
each submission what the offline point-in-time build sees at that time. A submission carries
the funnel step its form recorded (``submitted``, or ``verified`` for a form that verifies the
phone); the steps the lead reaches later (``verified``, ``followed_account``,
``booked_trial``) are events of the lead sent at their own times, after the lead's submission,
and the service re-scores the lead on each.

The raw identifiers of generated leads are never stored; the generator draws them again in
memory from the same seed and matched to the stored hashes, so the service receives them
exactly as a CRM would send them and hashes them at the door.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from leadscore.config import Settings
from leadscore.schemas import STEP_EVENT_TYPES
from serving.schemas import MAX_BATCH

_FORM_FIELDS = ("grade", "subject", "city", "city_tier", "device")
_IDENTIFIER_FIELDS = {"phone": "phone", "wechat": "wechat_id", "email": "email",
                      "cookie": "cookie_id"}
_MAX_DWELL_S = 86_400.0  # the event schema's bound
_INVALID_EMAIL = "no-at-sign.example"
_BACKLOG_COLUMNS = ["person_id", "event_type", "event_time", "url"]


def _raw_identifiers(settings: Settings, seed: int, n_leads: int, lead_ids: set[str],
                     drift: bool = False) -> dict[str, dict[str, str]]:
    """lead_id → {form field: raw value} for ``lead_ids``, drawn again in memory (with the
    generator's own options: ``drift`` as generated).

    The generator's raw values are matched to the stored hashes of each lead, so a value the
    CRM would send is exactly the one whose hash One ID knows.
    """
    from crm_data.generate import simulate_crm
    from leadscore.identifiers import hash_identifier

    crm = simulate_crm(n_leads, seed, drift=drift, salt=settings.hash_salt)
    by_hash: dict[str, str] = {}
    for value in crm.raw_identifiers:
        for id_type in _IDENTIFIER_FIELDS:
            hashed, _ = hash_identifier(id_type, value, settings.hash_salt)
            if hashed is not None:
                by_hash[hashed] = value
    identities = pd.read_parquet(settings.raw_dir / "identities.parquet")
    identities = identities[identities["lead_id"].isin(lead_ids)]
    raw: dict[str, dict[str, str]] = {}
    for lead_id, id_type, id_hash in identities.itertuples(index=False):
        value = by_hash.get(id_hash)
        if value is not None:
            raw.setdefault(lead_id, {})[_IDENTIFIER_FIELDS[id_type]] = value
    return raw


def replay_submissions(settings: Settings, seed: int, since: datetime,
                       until: datetime | None = None,
                       drift: bool = False) -> list[dict[str, Any]]:
    """``POST /predict`` bodies for every lead created at or after ``since`` (and before
    ``until``, when given), oldest first (``seed`` and ``drift`` as generated)."""
    leads = pd.read_parquet(settings.raw_dir / "leads.parquet")
    n_leads = len(leads)
    leads = leads[leads["created_at"] >= pd.Timestamp(since)]
    if until is not None:
        leads = leads[leads["created_at"] < pd.Timestamp(until)]
    leads = leads.sort_values(["created_at", "lead_id"], kind="stable")
    raw = _raw_identifiers(settings, seed, n_leads, set(leads["lead_id"]), drift)
    bodies: list[dict[str, Any]] = []
    for row in leads.itertuples(index=False):
        form = {}
        for name in _FORM_FIELDS:
            value = getattr(row, name)
            if not pd.isna(value):
                form[name] = int(value) if name == "city_tier" else value
        ids = raw.get(row.lead_id, {})
        if row.email_domain_type == "invalid" and "email" not in ids:
            # an unusable e-mail has no hash to match it by; the CRM sent one all the same
            ids = {**ids, "email": _INVALID_EMAIL}
        bodies.append({
            "lead_id": row.lead_id,
            "submitted_at": row.created_at.isoformat(),
            "channel": row.channel,
            "campaign": row.campaign,
            "landing_page": row.landing_page,
            "funnel_step": row.funnel_step,
            "form": form,
            "identifiers": {field: ids.get(field) for field in _IDENTIFIER_FIELDS.values()},
        })
    return bodies


@dataclass
class ReplayStep:
    """``POST /events`` bodies to send, then the submissions to score (``/predict(_batch)``)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    submissions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ReplayPlan:
    """The replay: events the live service would have received before it starts (``backlog``:
    ``person_id, event_type, event_time, url``, oldest first), then its steps."""

    backlog: pd.DataFrame
    steps: list[ReplayStep]

    @property
    def submissions(self) -> int:
        return sum(len(step.submissions) for step in self.steps)

    @property
    def events(self) -> int:
        return sum(len(body["events"]) for step in self.steps for body in step.events)


def _pending_events(settings: Settings, since: pd.Timestamp, until: pd.Timestamp,
                    persons: set[str]) -> pd.DataFrame:
    """Events of ``persons`` the online store loaded up to ``since`` lacks, visible by
    ``until``, in order of visibility.

    An event becomes visible at ``max(event_time, its lead's created_at)`` (a later lead's
    pre-submission events are hidden from earlier leads, as in ``features.behaviour``). The
    store holds each person's latest snapshot by ``since``: the offline build takes one at each
    lead's ``created_at`` and at each funnel step a lead reached after its form
    (``features.behaviour.later_step_times``), so the events visible after the latest of those
    are pending (for persons without one, all of them).
    """
    leads = pd.read_parquet(settings.raw_dir / "leads.parquet",
                            columns=["lead_id", "created_at"])
    lead_person = pd.read_parquet(settings.identity_dir / "lead_person.parquet",
                                  columns=["lead_id", "person_id"])
    leads = leads.merge(lead_person, on="lead_id", how="left")
    leads["person_id"] = leads["person_id"].fillna("lead:" + leads["lead_id"])
    events = pd.read_parquet(settings.raw_dir / "events.parquet",
                             columns=["lead_id", "event_type", "event_time", "url",
                                      "dwell_seconds"])
    events = events.merge(leads, on="lead_id", how="inner")
    later_step = (events["event_type"].isin(STEP_EVENT_TYPES)
                  & (events["event_time"] > events["created_at"])).to_numpy()
    snapshots = pd.concat([
        leads[["person_id", "created_at"]].rename(columns={"created_at": "at"}),
        events.loc[later_step, ["person_id", "event_time"]].rename(columns={"event_time": "at"}),
    ], ignore_index=True)
    loaded = (snapshots[snapshots["at"] <= since].groupby("person_id")["at"].max()
              .rename("loaded_at"))
    events["visible_at"] = events[["event_time", "created_at"]].max(axis=1)
    events = events.join(loaded, on="person_id")
    pending = events["person_id"].isin(persons) & (events["visible_at"] <= until) & (
        events["loaded_at"].isna() | (events["visible_at"] > events["loaded_at"]))
    return events[pending].sort_values(["visible_at", "event_time"], kind="stable")


def _naive_utc(values: pd.Series) -> pd.Series:
    return values.dt.tz_convert("UTC").dt.tz_localize(None)


def _event_body(row: Any) -> dict[str, Any]:
    dwell = float(row.dwell_seconds) if pd.notna(row.dwell_seconds) else 0.0
    return {"lead_id": row.lead_id, "event_type": row.event_type,
            "event_time": row.event_time.isoformat(),
            "url": row.url if isinstance(row.url, str) else "",
            "dwell_seconds": min(max(dwell, 0.0), _MAX_DWELL_S)}


def replay_plan(settings: Settings, seed: int, since: datetime, until: datetime | None = None,
                max_batch: int = 500, singles: int = 0, drift: bool = False) -> ReplayPlan:
    """The CRM's traffic from ``since`` (to ``until``): behaviour events and form submissions in
    time order.

    The online store is assumed loaded with the offline snapshots up to ``since``
    (``features.build.materialize(end=since)``): snapshots at leads and at their later funnel
    steps, so the events visible after each person's latest snapshot and before ``since`` are
    the ``backlog`` (:func:`load_backlog`
    records them as the live service would have, as they happened; some are older than
    ``POST /events`` accepts). Only persons who submit from ``since`` on get events (the others'
    events change no answer and would cost the demo minutes). Each step first pushes every event
    visible by its last submission, then scores its submissions, so a submission at t sees
    exactly the events visible at t: an event later than t is counted by time at t only if it
    is a pre-submission event of a later lead of the same person, and a step never holds two
    submissions of one person at different times. The first ``singles`` submissions get a
    step each (for ``/predict``); then up to ``max_batch`` per step. Events come in ``/events``
    bodies of at most ``MAX_BATCH``.

    Funnel-step events (``STEP_EVENT_TYPES``) belong to a lead: only those of replayed leads
    are sent (never in the backlog: they are not behaviour), each after its lead's submission
    (a step reached before its lead's batch is scored waits for the next step's events; those
    left after the last submission make a last step of events alone).
    """
    submissions = replay_submissions(settings, seed, since, until, drift)
    if not submissions:
        return ReplayPlan(pd.DataFrame(columns=_BACKLOG_COLUMNS), [])
    lead_person = pd.read_parquet(settings.identity_dir / "lead_person.parquet",
                                  columns=["lead_id", "person_id"])
    person_of = dict(zip(lead_person["lead_id"], lead_person["person_id"], strict=True))
    times = [pd.Timestamp(body["submitted_at"]) for body in submissions]
    persons = {person_of.get(body["lead_id"], "lead:" + body["lead_id"]) for body in submissions}
    events = _pending_events(settings, pd.Timestamp(since), times[-1], persons)
    is_step = events["event_type"].isin(STEP_EVENT_TYPES).to_numpy()
    replayed = {body["lead_id"] for body in submissions}
    events = events[~is_step | events["lead_id"].isin(replayed).to_numpy()]
    is_step = events["event_type"].isin(STEP_EVENT_TYPES).to_numpy()
    early = (events["visible_at"] < pd.Timestamp(since)).to_numpy()
    backlog = events.loc[early & ~is_step, _BACKLOG_COLUMNS].reset_index(drop=True)
    events = events[~early]
    visible = _naive_utc(events["visible_at"]).to_numpy()
    steps: list[ReplayStep] = []
    batch: list[int] = []
    seen: dict[str, pd.Timestamp] = {}
    scored: set[str] = set()  # leads submitted in earlier steps
    waiting: list[Any] = []  # step events of leads not yet submitted when they were visible
    pushed = 0

    def chunked(rows: list[Any]) -> list[dict[str, Any]]:
        bodies = [_event_body(row) for row in rows]
        return [{"events": bodies[i:i + MAX_BATCH]} for i in range(0, len(bodies), MAX_BATCH)]

    def close() -> None:
        nonlocal pushed, waiting
        last = times[batch[-1]].tz_convert("UTC").tz_localize(None).to_datetime64()
        upto = int(visible.searchsorted(last, side="right"))
        rows, held = list(waiting), []
        for row in events.iloc[pushed:upto].itertuples(index=False):
            if row.event_type in STEP_EVENT_TYPES and row.lead_id not in scored:
                held.append(row)
            else:
                rows.append(row)
        steps.append(ReplayStep(chunked(rows), [submissions[i] for i in batch]))
        scored.update(submissions[i]["lead_id"] for i in batch)
        waiting = held
        pushed = upto
        batch.clear()
        seen.clear()

    for i, body in enumerate(submissions):
        person = person_of.get(body["lead_id"], "lead:" + body["lead_id"])
        limit = 1 if len(steps) < singles else max_batch
        if batch and (len(batch) >= limit or seen.get(person, times[i]) < times[i]):
            close()
        batch.append(i)
        seen.setdefault(person, times[i])
    close()
    if waiting:
        steps.append(ReplayStep(chunked(waiting), []))
    return ReplayPlan(backlog, steps)


def load_backlog(settings: Settings, plan: ReplayPlan) -> int:
    """Record the plan's backlog in the online store (in process, through the service's own
    ``BehaviourUpdater``); persons updated."""
    from serving.events import BehaviourUpdater, PersonEvent, epoch_us

    if plan.backlog.empty:
        return 0
    events = [PersonEvent(row.person_id, row.event_type, epoch_us(row.event_time.to_pydatetime()),
                          row.url if isinstance(row.url, str) else "")
              for row in plan.backlog.itertuples(index=False)]
    updater = BehaviourUpdater.from_settings(settings)
    try:
        return updater.apply(events)
    finally:
        updater.close()
