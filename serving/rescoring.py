"""Re-scoring a person's open leads on every accepted event, off the request path of /events.

The pieces, all in the service process:

* ``Rescorer.register`` (the predictor's ``on_scored`` hook) queues each answered submission
  for ``LeadRegistrar`` (a ``BatchingWriter``: ~20 ms later, one transaction): the lead's form
  as the request columns hold it (normalised, scrubbed), the features fixed at submission
  (submission hour and weekday, earlier leads and channels) and its first score.
* ``Rescorer.handle_events`` (``POST /events``): places each event (a behaviour event on its
  person, a funnel step on its lead), refuses duplicates and impossible ones with a reason,
  pushes the behaviour into the online store (as before), then — in one transaction of the
  lead-state store — remembers the events as seen and queues their re-scores, and wakes the
  worker. A killed service re-scores what was queued after its restart.
* The worker thread takes the queue in batches: per person the latest event time is the time
  the leads are scored at; funnel steps move their lead's step forward; every open lead of the
  person inside its conversion window is scored with the current champion (``rescore``, the
  batch path), routed, and compared with what the CRM was last told. A change of tier or
  channel (after hysteresis) becomes an outbox message, stored in the same transaction as the
  new state and the history rows; then the ``WebhookDeliverer`` is woken.

Hysteresis: a lead keeps its tier while its probability stays within ``rescore_hysteresis``
of the tier's band (e.g. a B lead, band [0.15, 0.35), moves to A only at p ≥ 0.37 and to C only
below 0.13); the lead is routed with its probability clipped into the band it keeps, so tier
and channel always agree. A lead below ``drop_below_probability`` for ``drop_after_days`` (by
the times of its scores) is ``dropped``: kept, never re-scored again, and the CRM is told.

* ``Rescorer.handle_outcomes`` (``POST /outcomes``): the CRM's outcomes close their leads
  (``converted`` / ``closed``): the outcome row, the lead's status and — for a lead the CRM was
  notified of before — a final notification (``change``: the outcome) are one transaction.
* ``Rescorer.recover`` (first thing of the worker after a start): a lead is registered ~10 ms
  after its answer, so a SIGKILL can lose its registration; its answer's record, though, was
  fsync'd to the prediction journal before the answer (``x-leadscore-durable: true``). Once the
  journal of the dead process is replayed into the prediction log, the leads answered since
  the store's ``registered_through_us`` mark (less ``RECOVERY_MARGIN_SECONDS``) that the store
  lacks are registered from their records (``lead_from_record``). Until then ``/events`` and
  ``/outcomes`` naming a lead the store lacks wait (at most ``RECOVERY_WAIT_SECONDS``, then 503).

Event rules (docs/api.md, "Re-scoring"): a funnel step needs its lead (``unknown_lead``), may
not predate the lead's submission (``event_before_lead``), and only moves forward (an earlier
or equal step: ``step_not_forward``); a step of a lead that is no longer open:
``lead_not_open``; an event seen before (same person or lead, type, time, URL and dwell):
``duplicate_event``. A behaviour event older than a lead still counts in the person's history
(late arrival) and re-scores the open leads.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import ValidationError
from pydantic_core import to_json

from crm_data.lead_state import (
    CLOSED,
    DAY_US,
    DROPPED,
    DUPLICATE_OUTCOME,
    MICROS,
    OPEN,
    OUTCOME_CONFLICT,
    RECORDED,
    TIME_BEFORE_SUBMISSION,
    HistoryRow,
    LeadRow,
    LeadStateStore,
    OutboxMessage,
    OutcomeRow,
    QueuedEvent,
    from_us,
    now_us,
    open_lead_state,
    sync_outcomes,
    to_us,
)
from crm_data.prediction_log import PredictionRecord, open_prediction_log
from features.online import submission_requests
from features.request import FORM_FIELDS, UNKNOWN
from leadscore.config import Settings
from leadscore.schemas import FUNNEL_STEPS, TIERS
from serving.fast_online_reader import OnlineStoreError
from serving.log_writer import BatchingWriter, lower_thread_priority
from serving.schemas import Event, EventsResponse, OutcomeItem, OutcomeRefusal, OutcomesResponse

logger = logging.getLogger("leadscore.rescoring")

FUNNEL_EVENT_TYPES: tuple[str, ...] = FUNNEL_STEPS[1:]
STEP_RANK: dict[str, int] = {step: i for i, step in enumerate(FUNNEL_STEPS)}
TIER_RANK: dict[str, int] = {tier: i for i, tier in enumerate(TIERS)}  # A = 0 is the best
# features that describe the submission itself: kept from the first score
FIXED_FEATURES: tuple[str, ...] = ("submit_hour_cn", "submit_weekday_cn", "prior_leads",
                                   "prior_channels")
SUBMISSION = "submission"
RISE_DAYS = 7  # ``rise``: probability now minus the lowest score of the last RISE_DAYS
SEEN_KEEP_DAYS = 30  # duplicates are recognised for this long
WORKER_LINGER_SECONDS = 0.005
WORKER_IDLE_SECONDS = 1.0
STORE_RETRY_SECONDS = 1.0
MAX_QUEUE_ROWS = 2_000
SCORE_CHUNK = 200  # leads per feature read and model call (short holds of the reader's lock)
# the worker's niceness: a little below the requests (its work is what the webhook latency
# waits for, so not the log writers' BACKGROUND_NICE)
WORKER_NICE = 3
FLUSH_BEFORE_EVENTS_SECONDS = 5.0
KEY_NAMESPACE = uuid.UUID("5f1c1c52-6a0e-4d0b-9d7e-7f2b0c4e1a10")

UNKNOWN_LEAD = "unknown_lead"
BEFORE_LEAD = "event_before_lead"
NOT_FORWARD = "step_not_forward"
NOT_OPEN = "lead_not_open"
DUPLICATE = "duplicate_event"
# recovery of registrations a killed process lost (``Rescorer.recover``)
RECOVERY_MARGIN_SECONDS = 60.0  # concurrent batches' answer times interleave by far less
RECOVERY_WAIT_SECONDS = 10.0  # /events and /outcomes wait this long for it, then 503
# a landing page of each page type (``features.request.url_page_type``): a recovered lead's
# form keeps its page type, the only thing the model sees of the page
PAGE_OF_TYPE: dict[str, str] = {
    "recruitment": "/recruit", "pricing": "/pricing", "trial": "/trial", "live": "/live",
    "download": "/download", "course": "/course", "article": "/article", "home": "/",
    "other": "/p", UNKNOWN: "",
}
# per refused outcome: (field, reason) of the store's verdicts
OUTCOME_VERDICTS: dict[str, tuple[str, str]] = {
    UNKNOWN_LEAD: ("lead_id", UNKNOWN_LEAD),
    TIME_BEFORE_SUBMISSION: ("time", TIME_BEFORE_SUBMISSION),
    OUTCOME_CONFLICT: ("outcome", OUTCOME_CONFLICT),
}
OUTCOME_MESSAGES: dict[str, str] = {
    UNKNOWN_LEAD: "no lead with this lead_id was scored by this service",
    TIME_BEFORE_SUBMISSION: "time is before the lead's submitted_at",
    OUTCOME_CONFLICT: "the lead has the other outcome already (an outcome is final)",
}


class LeadStateRecovering(RuntimeError):
    """The lead state is being recovered from the prediction log: retry shortly."""

    public_message = ("the service is recovering leads answered before a restart from the "
                      "prediction log; retry in a few seconds")


# ---- pure rules -------------------------------------------------------------------------------
def tier_bands(cutoffs: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Probability band ``[low, high)`` of each tier under the policy's cut-offs."""
    a, b, c = float(cutoffs["A"]), float(cutoffs["B"]), float(cutoffs["C"])
    return {"A": (a, float("inf")), "B": (b, a), "C": (c, b), "D": (float("-inf"), c)}


def held_probability(p: float, tier: str, cutoffs: dict[str, float], margin: float) -> float:
    """``p`` clipped into ``tier``'s band when it lies within ``margin`` of it (the lead keeps
    its tier), else ``p`` itself (the lead moves to the tier ``p`` falls in)."""
    low, high = tier_bands(cutoffs)[tier]
    if low - margin <= p < high + margin:
        upper = float(np.nextafter(high, -np.inf)) if np.isfinite(high) else high
        return float(min(max(p, low), upper))
    return float(p)


def change_kind(old_tier: str, new_tier: str) -> str:
    """``upgrade`` (a better tier), ``downgrade`` or ``channel`` (same tier, new channel)."""
    if TIER_RANK[new_tier] < TIER_RANK[old_tier]:
        return "upgrade"
    if TIER_RANK[new_tier] > TIER_RANK[old_tier]:
        return "downgrade"
    return "channel"


def event_key(event: Event, person_id: str) -> str:
    """The identity of an event for duplicate detection (no raw identifier in it)."""
    owner = event.lead_id if event.event_type in FUNNEL_EVENT_TYPES else person_id
    text = "|".join((owner or "", event.event_type, str(to_us(event.event_time)), event.url,
                     repr(float(event.dwell_seconds))))
    return hashlib.sha256(text.encode()).hexdigest()


def idempotency_key(lead_id: str, sequence: int) -> str:
    """The notification's key: the same for every attempt, new for every change."""
    return uuid.uuid5(KEY_NAMESPACE, f"{lead_id}:{sequence}").hex


def probabilities(scorer: Any, columns: dict[str, list[Any]]) -> np.ndarray:
    """Calibrated probabilities of a batch, without the reasons (the fast scorer's model
    output and calibration; ``score`` for models without a fast twin)."""
    if getattr(scorer, "fast", False):
        if scorer.linear is None:
            x = scorer.matrix(columns)
            if len(x) == 0:
                return np.empty(0)
            raw, _ = scorer.booster_output(x)
        else:
            raw, _ = scorer.blend_output(columns)
        return np.asarray(scorer.calibrate(raw), dtype=float)
    return np.array([s["probability"] for s in scorer.score(columns, top_k=1)], dtype=float)


def trend(history: Sequence[HistoryRow], margin: float, days: float = RISE_DAYS) -> str:
    """``improving`` / ``steady`` / ``declining``: the latest probability against the one
    ``days`` before it (the first score when the lead is younger), beyond ``margin``."""
    if len(history) < 2:
        return "steady"
    latest = history[-1]
    since = latest.at_us - int(days * DAY_US)
    before = [h for h in history[:-1] if h.at_us <= since]
    base = before[-1] if before else history[0]
    delta = latest.probability - base.probability
    if delta > margin:
        return "improving"
    if delta < -margin:
        return "declining"
    return "steady"


def form_from_features(features: dict[str, Any]) -> dict[str, Any]:
    """The form of a logged answer, rebuilt from its features: the form fields the model sees
    (normalised already; normalising them again changes nothing), the landing page as a page
    of its type (``PAGE_OF_TYPE``)."""
    form = {name: features.get(name) for name in FORM_FIELDS if name != "landing_page"}
    form["landing_page"] = PAGE_OF_TYPE.get(str(features.get("landing_page_type")), "/p")
    return form


def lead_from_record(record: PredictionRecord, drop_below: float
                     ) -> tuple[LeadRow, HistoryRow]:
    """The lead-state row and first score of a lead from its prediction-log record (what the
    registrar would have stored, the form rebuilt by ``form_from_features``)."""
    submitted, recorded = to_us(record.submitted_at), to_us(record.scored_at)
    features = record.features
    step = str(features.get("funnel_step") or FUNNEL_STEPS[0])
    step = step if step in STEP_RANK else FUNNEL_STEPS[0]
    p = float(record.probability)
    lead = LeadRow(
        lead_id=record.lead_id, person_id=record.person_id, submitted_us=submitted,
        request=form_from_features(features),
        fixed={name: features[name] for name in FIXED_FEATURES if name in features},
        funnel_step=step, status=OPEN, probability=p, tier=record.tier, channel=record.channel,
        control=bool(record.control), model_version=record.model_version, first_probability=p,
        first_tier=record.tier, scored_us=submitted, pushed_tier=record.tier,
        pushed_channel=record.channel, low_since_us=submitted if p < drop_below else None,
        updated_us=recorded)
    return lead, HistoryRow(record.lead_id, submitted, recorded, p, record.tier,
                            record.channel, record.model_version, SUBMISSION, step)


def outcome_refusal(index: int, error: ValidationError) -> OutcomeRefusal:
    """The refusal of an outcome item that failed validation: its first problem's field and a
    reason (``unknown_outcome``, ``unknown_followup_channel``, ``missing``, ``unknown_field``,
    ``invalid_<field>``, ``amount_without_conversion``, ``not_an_object``)."""
    problem = error.errors(include_url=False, include_context=False, include_input=False)[0]
    loc, kind = problem["loc"], problem["type"]
    field = str(loc[0]) if loc else "amount" if kind == "amount_without_conversion" else "item"
    if kind == "missing":
        reason = "missing"
    elif kind == "extra_forbidden":
        reason = "unknown_field"
    elif kind == "literal_error" and field in ("outcome", "followup_channel"):
        reason = f"unknown_{field}"
    elif kind == "model_type":
        reason = "not_an_object"
    elif kind == "amount_without_conversion":
        reason = kind
    else:
        reason = f"invalid_{field}"
    return OutcomeRefusal(index=index, field=field, reason=reason, message=problem["msg"])


# ---- registration of answered submissions -----------------------------------------------------
class LeadRegistrar(BatchingWriter):
    """Stores newly scored leads and their first score, off the request path."""

    what = "lead state"
    logger = logger

    def __init__(self, store: LeadStateStore,
                 build: Callable[[tuple], list[tuple[LeadRow, HistoryRow]]],
                 marks: Callable[[], bool] = lambda: True) -> None:
        self.store = store
        self.build = build
        # whether the stored batches may move the ``registered_through_us`` mark (not while
        # the leads a killed process lost are not recovered yet)
        self.marks = marks
        super().__init__(max_queued_batches=10_000, max_records_per_write=200,
                         linger_seconds=0.01, name="lead-registrar")

    def add(self, batches: list[tuple]) -> None:
        self._enqueue(batches)

    def _store(self, batches: list[tuple]) -> None:
        rows = [row for batch in batches for row in self.build(batch)]
        through = max(to_us(batch[-1]) for batch in batches) if self.marks() else None
        self.store.register([lead for lead, _ in rows], [h for _, h in rows], through)

    def _close_target(self) -> None:
        self.store.close()


@dataclass
class RescoreResult:
    """What one re-scoring batch changed (not stored yet)."""

    leads: list[LeadRow]
    history: list[HistoryRow]
    messages: list[OutboxMessage]


# ---- the re-scorer ----------------------------------------------------------------------------
class Rescorer:
    """Registers scored leads, accepts events, re-scores open leads, fills the outbox."""

    def __init__(self, predictor: Any, settings: Settings, store: LeadStateStore,
                 worker_store: LeadStateStore | None = None,
                 registrar: LeadRegistrar | None = None, deliverer: Any = None) -> None:
        self.predictor = predictor
        self.settings = settings
        self.store = store  # the request path's connection (events, GET routes)
        self.worker_store = worker_store or store
        self.registrar = registrar
        self.deliverer = deliverer
        self.margin = settings.rescore_hysteresis
        self.window_us = settings.conversion_window_days * DAY_US
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._recovered = threading.Event()
        self._recover_span: tuple[int, int] | None = None
        self.recovered_leads = 0
        self.rescored = 0
        self.batches = 0
        self.last_error: str | None = None
        try:
            self._route_takes_leads = "lead_ids" in inspect.signature(predictor.route).parameters
        except (TypeError, ValueError, AttributeError):
            self._route_takes_leads = False

    @classmethod
    def from_settings(cls, predictor: Any, settings: Settings) -> Rescorer:
        """A re-scorer on the profile's lead-state store (one connection per thread that
        writes) with the configured webhook; ``start`` it."""
        from serving.webhook import WebhookDeliverer

        store = open_lead_state(settings)
        deliverer = WebhookDeliverer.from_settings(open_lead_state(settings), settings)
        rescorer = cls(predictor, settings, store, open_lead_state(settings), None, deliverer)
        rescorer.registrar = LeadRegistrar(open_lead_state(settings), rescorer.lead_rows,
                                           rescorer._recovered.is_set)
        return rescorer

    def start(self) -> Rescorer:
        """Run the worker (it first recovers the leads a killed process lost, then records
        the outcomes of the outcomes file) and the deliverer."""
        # answered before now and after the mark: what the recovery looks for in the log
        self._recover_span = (self.store.registered_through()
                              - int(RECOVERY_MARGIN_SECONDS * MICROS), now_us())
        self._thread = threading.Thread(target=self._run, name="rescorer", daemon=True)
        self._thread.start()
        if self.deliverer is not None:
            self.deliverer.start()
        self._wake.set()  # re-score what a stopped service left queued
        return self

    def close(self) -> None:
        """Store queued registrations, finish the batch in flight, stop the threads."""
        if self.registrar is not None:
            self.registrar.close()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
        if self.deliverer is not None:
            self.deliverer.close()
            self.deliverer.store.close()
        self.worker_store.close()
        self.store.close()

    # ---- answered submissions (the predictor's hook) ---------------------------------------
    def register(self, submissions: Sequence[Any], forms: Sequence[dict[str, Any]],
                 person_ids: Sequence[str], columns: dict[str, list[Any]],
                 probability: Sequence[float], tiers: Sequence[str], channels: Sequence[str],
                 control: Sequence[bool], model_version: str, scored_at: datetime) -> None:
        """Queue answered submissions as leads with their first score (the rows are built by
        the registrar's thread: the request only hands the batch over)."""
        batch = (list(submissions), list(forms), list(person_ids),
                 {name: columns[name] for name in FIXED_FEATURES if name in columns},
                 list(probability), list(tiers), list(channels), list(control), model_version,
                 scored_at)
        if self.registrar is not None:
            self.registrar.add([batch])
        else:
            rows = self.lead_rows(batch)
            self.store.register([r for r, _ in rows], [h for _, h in rows],
                                to_us(scored_at) if self._recovered.is_set() else None)

    def lead_rows(self, batch: tuple) -> list[tuple[LeadRow, HistoryRow]]:
        """The lead-state rows and first scores of one ``register`` batch."""
        (submissions, forms, person_ids, fixed_columns, probability, tiers, channels, control,
         model_version, scored_at) = batch
        recorded = to_us(scored_at)
        drop_below = self.settings.drop_below_probability
        rows = []
        for i, sub in enumerate(submissions):
            submitted = to_us(sub.submitted_at)
            p = float(probability[i])
            lead = LeadRow(
                lead_id=sub.lead_id, person_id=person_ids[i], submitted_us=submitted,
                request=dict(forms[i]),
                fixed={name: values[i] for name, values in fixed_columns.items()},
                funnel_step=sub.funnel_step, status=OPEN, probability=p, tier=tiers[i],
                channel=channels[i], control=bool(control[i]), model_version=model_version,
                first_probability=p, first_tier=tiers[i], scored_us=submitted,
                pushed_tier=tiers[i], pushed_channel=channels[i],
                low_since_us=submitted if p < drop_below else None, updated_us=recorded)
            rows.append((lead, HistoryRow(sub.lead_id, submitted, recorded, p, tiers[i],
                                          channels[i], model_version, SUBMISSION,
                                          sub.funnel_step)))
        return rows

    # ---- POST /events ----------------------------------------------------------------------
    def handle_events(self, events: Sequence[Event]) -> EventsResponse:
        """Apply, de-duplicate and queue a request's events (see the module's rules)."""
        if self.registrar is not None and self.registrar.pending:
            self.registrar.flush(timeout=FLUSH_BEFORE_EVENTS_SECONDS)
        rejected: Counter = Counter()
        steps = [e for e in events if e.event_type in FUNNEL_EVENT_TYPES]
        leads = self.store.leads([e.lead_id for e in steps]) if steps else {}
        if any(e.lead_id not in leads for e in steps) and self.await_recovery():
            leads = self.store.leads([e.lead_id for e in steps])
        placed: list[tuple[Event, str]] = []
        for event in events:
            if event.event_type in FUNNEL_EVENT_TYPES:
                lead = leads.get(event.lead_id)
                why = self._step_problem(event, lead)
                if why is not None:
                    rejected[why] += 1
                    continue
                placed.append((event, lead.person_id))
                continue
            person, why = self.predictor.locate_person(event.identifiers, event.lead_id)
            if person is None:
                rejected[why or "no_usable_identifier_or_lead_id"] += 1
                continue
            placed.append((event, person))
        keys = [event_key(e, p) for e, p in placed]
        seen = self.store.seen(keys) if keys else set()
        fresh: list[tuple[Event, str, str]] = []
        for (event, person), key in zip(placed, keys, strict=True):
            if key in seen:
                rejected[DUPLICATE] += 1
                continue
            seen.add(key)  # a repeat inside this request is a duplicate too
            fresh.append((event, person, key))
        behaviour = [e for e, _, _ in fresh if e.event_type not in FUNNEL_EVENT_TYPES]
        persons_updated = 0
        if behaviour:
            pushed = self.predictor.push_events(behaviour)  # raises when the store is down
            persons_updated = pushed.persons_updated
            rejected.update(pushed.rejected)
        queued = [(person, e.lead_id if e.event_type in FUNNEL_EVENT_TYPES else None,
                   e.event_type, e.event_type if e.event_type in FUNNEL_EVENT_TYPES else None,
                   to_us(e.event_time)) for e, person, _ in fresh]
        self.store.accept_events([k for _, _, k in fresh], queued)
        self._wake.set()
        return EventsResponse(accepted=len(fresh), persons_updated=persons_updated,
                              rejected=dict(rejected), rescoring_queued=len(queued))

    @staticmethod
    def _step_problem(event: Event, lead: LeadRow | None) -> str | None:
        if lead is None:
            return UNKNOWN_LEAD
        if lead.status != OPEN:
            return NOT_OPEN
        if to_us(event.event_time) < lead.submitted_us:
            return BEFORE_LEAD
        if STEP_RANK[event.event_type] <= STEP_RANK[lead.funnel_step]:
            return NOT_FORWARD
        return None

    # ---- POST /outcomes --------------------------------------------------------------------
    def handle_outcomes(self, items: Sequence[Any]) -> OutcomesResponse:
        """Validate each outcome on its own (a bad one is refused with its field and reason,
        the others are applied) and close the leads (``LeadStateStore.record_outcomes``)."""
        if self.registrar is not None and self.registrar.pending:
            self.registrar.flush(timeout=FLUSH_BEFORE_EVENTS_SECONDS)
        refused: list[OutcomeRefusal] = []
        valid: list[tuple[int, OutcomeRow]] = []
        for index, item in enumerate(items):
            try:
                outcome = OutcomeItem.model_validate(item)
            except ValidationError as exc:
                refused.append(outcome_refusal(index, exc))
                continue
            valid.append((index, OutcomeRow(
                outcome.lead_id, outcome.outcome, to_us(outcome.time), outcome.amount,
                outcome.followup_channel, "api")))
        ids = [row.lead_id for _, row in valid]
        if ids and self.store.missing(ids):
            self.await_recovery()  # a lead a killed process lost is registered first
        notified: list[OutboxMessage] = []

        def notify(lead: LeadRow, outcome: OutcomeRow) -> OutboxMessage | None:
            message = self.outcome_message(lead, outcome)
            if message is not None:
                notified.append(message)
            return message

        verdicts = self.store.record_outcomes([row for _, row in valid], notify) if valid else []
        for (index, _), verdict in zip(valid, verdicts, strict=True):
            if verdict in OUTCOME_VERDICTS:
                field, reason = OUTCOME_VERDICTS[verdict]
                refused.append(OutcomeRefusal(index=index, field=field, reason=reason,
                                              message=OUTCOME_MESSAGES[verdict]))
        if notified and self.deliverer is not None:
            self.deliverer.notify()
        refused.sort(key=lambda r: r.index)
        rejected = Counter(r.reason for r in refused)
        if rejected:
            logger.warning("outcomes refused: %s", ", ".join(
                f"{reason} {n}" for reason, n in sorted(rejected.items())))
        return OutcomesResponse(recorded=sum(v == RECORDED for v in verdicts),
                                duplicates=sum(v == DUPLICATE_OUTCOME for v in verdicts),
                                notified=len(notified), rejected=dict(rejected),
                                refused=refused)

    def outcome_message(self, lead: LeadRow, outcome: OutcomeRow) -> OutboxMessage | None:
        """The final notification of a lead closed by its outcome (``change``: ``converted``
        or ``closed``, the next ``sequence``) when the CRM was notified of the lead before: a
        retried older change arriving later then loses to it (receivers keep the highest
        sequence). None for a lead never notified (the CRM sent the outcome: nothing to
        supersede) and without a webhook."""
        if not self.settings.webhook_url or lead.changes == 0:
            return None
        return self._message(lead, outcome.outcome, "outcome", outcome.outcome_us,
                             lead.scored_us)

    # ---- recovery of registrations a killed process lost -----------------------------------
    def await_recovery(self, timeout: float = RECOVERY_WAIT_SECONDS) -> bool:
        """Wait for the recovery when it is under way (True once done; raise
        ``LeadStateRecovering`` after ``timeout``); False when it was done already."""
        if self._recovered.is_set() or self._recover_span is None:
            return False
        if not self._recovered.wait(timeout):
            raise LeadStateRecovering(LeadStateRecovering.public_message)
        return True

    def recovery_status(self) -> tuple[bool, str | None]:
        """(done, reason) for ``/readyz``."""
        if self._recovered.is_set() or self._recover_span is None:
            return True, None
        return False, "recovering leads answered before a restart from the prediction log"

    def recover(self, since_us: int, until_us: int, log: Any = None) -> int:
        """Register the leads answered in ``[since_us, until_us)`` that the store lacks, from
        their first prediction-log record (``log``: default the profile's); the number
        registered. The store's mark then moves to ``until_us``."""
        owned = log is None
        log = open_prediction_log(self.settings) if owned else log
        try:
            records = log.answered_between(from_us(since_us), from_us(until_us))
        finally:
            if owned:
                log.close()
        oldest = now_us() - self.window_us  # older leads would only be closed
        first: dict[str, PredictionRecord] = {}
        for record in records:
            if to_us(record.submitted_at) >= oldest:
                first.setdefault(record.lead_id, record)
        missing = self.worker_store.missing(list(first)) if first else set()
        drop_below = self.settings.drop_below_probability
        rows = [lead_from_record(first[lead_id], drop_below)
                for lead_id in first if lead_id in missing]
        count = self.worker_store.register([r for r, _ in rows], [h for _, h in rows],
                                           until_us)
        if count:
            logger.warning("recovered %d lead(s) answered before a restart but not registered "
                           "(from the prediction log)", count)
        return count

    def _recover_lost(self) -> None:
        """``recover`` once the journal of a dead process is in the log (retried on errors
        until it works or the service stops); then ``/events`` and ``/outcomes`` proceed."""
        if self._recover_span is None:
            self._recovered.set()
            return
        wait = getattr(getattr(self.predictor, "log", None), "wait_replayed", None)
        delay = 0.2
        while not self._stop.is_set():
            if wait is not None and not wait(1.0):
                continue
            try:
                self.recovered_leads += self.recover(*self._recover_span)
            except Exception as exc:  # noqa: BLE001 - log or store trouble: retried
                self.last_error = type(exc).__name__
                logger.warning("recovering leads from the prediction log failed (%s); "
                               "retrying", self.last_error)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._recovered.set()
            return

    # ---- the worker ------------------------------------------------------------------------
    def _close_known_outcomes(self) -> None:
        try:
            closed = sync_outcomes(self.worker_store, self.settings,
                                   notify=self.outcome_message)
            if closed:
                logger.info("closed %d lead(s) with a known outcome", closed)
        except Exception as exc:  # noqa: BLE001 - a damaged outcomes file must not stop serving
            logger.warning("outcomes not read: %s", type(exc).__name__)

    def _run(self) -> None:
        lower_thread_priority(WORKER_NICE)
        self._recover_lost()
        self._close_known_outcomes()
        last_sweep = 0.0
        while not self._stop.is_set():
            self._wake.wait(WORKER_IDLE_SECONDS)
            self._wake.clear()
            if self._stop.is_set():
                break
            time.sleep(WORKER_LINGER_SECONDS)  # let a burst gather into one batch
            try:
                while self.process_queue() and not self._stop.is_set():
                    pass
                if time.monotonic() - last_sweep > 60:
                    last_sweep = time.monotonic()
                    self.sweep()
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - store or model trouble: retried
                self.last_error = type(exc).__name__
                logger.warning("re-scoring failed (%s); retrying", self.last_error)
                self._stop.wait(STORE_RETRY_SECONDS)
                self._wake.set()

    def sweep(self) -> int:
        """Drop leads low for ``drop_after_days`` by now, forget old duplicate keys."""
        now = now_us()
        dropped = self.worker_store.drop_low(now - int(self.settings.drop_after_days * DAY_US))
        self.worker_store.forget_seen(now - SEEN_KEEP_DAYS * DAY_US)
        return dropped

    def process_queue(self, limit: int = MAX_QUEUE_ROWS) -> int:
        """Re-score what the queue holds (one batch); the number of queue rows handled."""
        items = self.worker_store.queued(limit)
        if not items:
            return 0
        model = self.predictor.model
        if model is None:
            raise RuntimeError("no model is loaded")
        by_person: dict[str, list[QueuedEvent]] = {}
        for item in items:
            by_person.setdefault(item.person_id, []).append(item)
        leads = self.worker_store.open_leads_of(list(by_person))
        now = now_us()
        at: dict[str, int] = {}
        causes: dict[str, tuple[str, int]] = {}
        to_score: list[LeadRow] = []
        closed: list[LeadRow] = []
        for lead in leads:
            mine = by_person[lead.person_id]
            for item in mine:  # funnel steps of this lead move it forward
                if item.lead_id == lead.lead_id and item.step is not None and (
                        STEP_RANK[item.step] > STEP_RANK[lead.funnel_step]):
                    lead.funnel_step = item.step
            latest = max(mine, key=lambda q: (q.event_us, q.id))
            when = min(max(lead.submitted_us, latest.event_us, lead.scored_us), now)
            if when >= lead.submitted_us + self.window_us:
                lead.status, lead.updated_us = CLOSED, now  # its conversion window ended
                closed.append(lead)
                continue
            own = [q for q in mine if q.lead_id == lead.lead_id]
            cause = max(own or mine, key=lambda q: (q.event_us, q.id))
            at[lead.lead_id] = when
            causes[lead.lead_id] = (cause.cause, cause.event_us)
            to_score.append(lead)
        result = RescoreResult([], [], [])
        for start in range(0, len(to_score), SCORE_CHUNK):
            if start:
                time.sleep(0)  # let the requests' threads take the GIL between chunks
            chunk = self.rescore(to_score[start:start + SCORE_CHUNK], at, causes, model)
            result.leads.extend(chunk.leads)
            result.history.extend(chunk.history)
            result.messages.extend(chunk.messages)
        # without a webhook the CRM has nobody to tell: no outbox rows pile up
        messages = result.messages if self.settings.webhook_url else []
        self.worker_store.apply_rescores(result.leads + closed, result.history, messages,
                                         [item.id for item in items])
        self.rescored += len(result.leads)
        self.batches += 1
        if result.messages and self.deliverer is not None:
            self.deliverer.notify()
        return len(items)

    def rescore(self, leads: Sequence[LeadRow], at: dict[str, int],
                causes: dict[str, tuple[str, int]], model: Any = None) -> RescoreResult:
        """The batch path: score ``leads`` at their times ``at`` with the current champion,
        route them with hysteresis, and prepare their state, history and notifications."""
        model = model or self.predictor.model
        if not leads:
            return RescoreResult([], [], [])
        forms = []
        for lead in leads:
            form = dict(lead.request)
            form["funnel_step"] = lead.funnel_step
            forms.append(form)
        times = [from_us(at[lead.lead_id]) for lead in leads]
        request = submission_requests(forms, times)
        persons = [lead.person_id for lead in leads]
        try:
            columns, _ = self.predictor.reader.features(request, persons)
        except OnlineStoreError:
            raise  # the queue rows stay; the worker retries
        for name in FIXED_FEATURES:
            if name in columns:
                columns[name] = [lead.fixed.get(name, value)
                                 for lead, value in zip(leads, columns[name], strict=True)]
        p = probabilities(model.scorer, columns)
        cutoffs = self.predictor.policy.cutoffs
        held = np.array([held_probability(float(pi), lead.tier, cutoffs, self.margin)
                         for pi, lead in zip(p, leads, strict=True)])
        rule = np.asarray(columns.get("rule_score", [0.0] * len(leads)), dtype=float)
        lead_ids = [lead.lead_id for lead in leads]
        # a re-score routes as /predict does: by the learned effects when an uplift model is
        # loaded (policy leads), by the held probability's tier otherwise
        effects = (self.predictor.channel_effects(columns)
                   if hasattr(self.predictor, "channel_effects") else None)
        extra = {} if effects is None else {"effects": effects}
        routed = (self.predictor.route(persons, held, rule, lead_ids=lead_ids, **extra)
                  if self._route_takes_leads else self.predictor.route(persons, held, rule))
        if hasattr(routed, "tiers"):
            tiers, channels, control = routed.tiers, routed.channels, routed.control
        else:
            tiers, channels, control = routed
        recorded = now_us()
        since = {lead.lead_id: at[lead.lead_id] - RISE_DAYS * DAY_US for lead in leads}
        lows = self.worker_store.min_probability_since(lead_ids, min(since.values()))
        drop_below = self.settings.drop_below_probability
        drop_after = int(self.settings.drop_after_days * DAY_US)
        out = RescoreResult([], [], [])
        for i, lead in enumerate(leads):
            when = at[lead.lead_id]
            cause, event_us = causes.get(lead.lead_id, (SUBMISSION, when))
            probability = float(p[i])
            lead.probability = probability
            lead.tier, lead.channel = str(tiers[i]), str(channels[i])
            lead.control = bool(control[i])
            lead.model_version = model.version
            lead.scored_us = max(lead.scored_us, when)
            lead.rise = max(0.0, probability - min(lows.get(lead.lead_id, probability),
                                                   probability))
            lead.updated_us = recorded
            if probability < drop_below:
                lead.low_since_us = lead.low_since_us or when
            else:
                lead.low_since_us = None
            dropped = (lead.low_since_us is not None
                       and when - lead.low_since_us >= drop_after)
            out.history.append(HistoryRow(lead.lead_id, when, recorded, probability, lead.tier,
                                          lead.channel, model.version, cause, lead.funnel_step))
            changed = (lead.tier, lead.channel) != (lead.pushed_tier, lead.pushed_channel)
            if changed or dropped:
                kind = "dropped" if dropped else change_kind(lead.pushed_tier, lead.tier)
                out.messages.append(self._message(lead, kind, cause, event_us, when))
                lead.pushed_tier, lead.pushed_channel = lead.tier, lead.channel
            if dropped:
                lead.status = DROPPED
            out.leads.append(lead)
        return out

    def _message(self, lead: LeadRow, kind: str, cause: str, event_us: int, when: int
                 ) -> OutboxMessage:
        """The notification of a changed answer (no raw identifier: ids, scores, names)."""
        lead.changes += 1
        key = idempotency_key(lead.lead_id, lead.changes)
        body = {
            "type": "lead.answer_changed",
            "idempotency_key": key,
            "lead_id": lead.lead_id,
            "person_id": lead.person_id,
            "sequence": lead.changes,
            "change": kind,
            "answer": {"probability": round(lead.probability, 6), "tier": lead.tier,
                       "channel": lead.channel, "control": lead.control,
                       "funnel_step": lead.funnel_step, "status": (
                           DROPPED if kind == "dropped" else lead.status),
                       "model_version": lead.model_version},
            "previous": {"tier": lead.pushed_tier, "channel": lead.pushed_channel},
            "cause": {"event_type": cause, "event_time": from_us(event_us).isoformat()},
            "scored_at": from_us(when).isoformat(),
            "queued_at": datetime.now(UTC).isoformat(),
        }
        return OutboxMessage(key, lead.lead_id, kind, to_json(body).decode(), event_us)

    def status(self) -> dict[str, Any]:
        """Counters for logs and tests."""
        return {"rescored": self.rescored, "batches": self.batches,
                "last_error": self.last_error,
                "queue": self.worker_store.queue_length(),
                "delivered": getattr(self.deliverer, "delivered", 0)}


def wait_until(predicate: Any, timeout: float, step: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (tests and benchmarks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


__all__ = ["MICROS", "LeadRegistrar", "LeadStateRecovering", "RescoreResult", "Rescorer",
           "change_kind", "event_key", "form_from_features", "held_probability",
           "idempotency_key", "lead_from_record", "outcome_refusal", "probabilities",
           "tier_bands", "trend"]
