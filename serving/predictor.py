"""The in-process scoring path behind the service: One ID → features → model → routing → log.

``Predictor.predict`` is what ``POST /predict`` and ``/predict_batch`` run; it has no HTTP in it,
so the benchmark measures its floor directly. Everything that can be resolved once is resolved at
start-up (feature service, views, model columns, categorical codes, the booster); a batch makes
one online-store read per feature view, one transformation and one booster call.

Pieces that can fail at run time fail soft where a useful answer exists and loudly where it does
not: an unreachable online store, a store that lost its data and is not reloaded yet, or a person
it does not know gives an answer from the request's own features (``degraded: true`` with the
reason, logged and counted); no model raises ``ModelUnavailableError`` (never a made-up score).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic_core import to_json

from crm_data.identity import load_identity_state, lookup_person, new_person_id
from crm_data.log_journal import LogJournal
from crm_data.prediction_log import PredictionLog, PredictionRecord, open_prediction_log
from features.online import submission_request, submission_requests
from features.params import FeatureParams
from leadscore.config import Settings
from leadscore.identifiers import email_domain_type, hash_identifier
from leadscore.schemas import CITY_TIER_BY_NAME
from routing.control import LearnedAllocation, RoutedLeads, route_leads
from routing.policy import RoutingPolicy, resolve_active_policy
from serving.fast_online_reader import (
    OnlineFeatureReader,
    OnlineStoreError,
    OnlineStoreResetError,
)
from serving.log_writer import BackgroundLogWriter, Receipt
from serving.model_store import LoadedModel, ModelUnavailableError, load_champion
from serving.schemas import (
    Event,
    EventsResponse,
    Identifiers,
    ModelRef,
    Prediction,
    Reason,
    Submission,
)

logger = logging.getLogger("leadscore.predictor")

# identifier kinds in the order One ID trusts them: (id type, request field)
ID_FIELDS: tuple[tuple[str, str], ...] = (
    ("phone", "phone"), ("wechat", "wechat_id"), ("email", "email"), ("cookie", "cookie_id"),
)
TAG_FIELDS: tuple[str, ...] = (
    "channel", "funnel_step", "rule_score", "fit_score", "interest_score", "intent_score",
    "days_since_last_touch", "prior_leads", "rfm_segment",
)
# city name (lower case) → tier, for forms that give a city but no tier
CITY_TIER: dict[str, int] = CITY_TIER_BY_NAME
DEGRADED_STORE = "online_store_unavailable"
DEGRADED_RESET = "online_store_reset"
DEGRADED_PERSON = "person_unknown"
# why ``/events`` could not place an event (``serving.events.resolve_events``)
NO_IDENTIFIER = "no_usable_identifier_or_lead_id"
NOT_SCORED_YET = "person_not_scored_yet"
MAX_NEW_LINKS = 1_000_000
RESET_WARNING_SECONDS = 10.0

__all__ = ["ModelUnavailableError", "Predictor", "Resolved"]


@dataclass(frozen=True)
class Resolved:
    """One submission after One ID: its person, its form fields, unusable identifier kinds."""

    person_id: str
    form: dict[str, Any]
    rejected: dict[str, str] = field(default_factory=dict)


@dataclass
class IdentityMaps:
    """One ID lookups of the service (hashes and lead ids → person)."""

    identifier_person: dict[str, str]
    lead_person: dict[str, str]

    @classmethod
    def load(cls, settings: Settings) -> IdentityMaps:
        state = load_identity_state(settings.identity_dir)
        return cls(
            state.identifier_map(),
            dict(zip(state.lead_person["lead_id"], state.lead_person["person_id"], strict=True)),
        )


HashMemo = dict[tuple[str, type, Any], tuple[str | None, str | None]]


def identifier_hashes(
    identifiers: Identifiers, salt: str, memo: HashMemo | None = None
) -> tuple[list[str], dict[str, str]]:
    """Salted hashes of the usable identifiers, and ``field → reason`` for unusable ones.

    ``memo`` (a dict shared across the submissions of one batch) hashes each distinct raw
    value once.
    """
    hashes: list[str] = []
    rejected: dict[str, str] = {}
    for id_type, name in ID_FIELDS:
        raw = getattr(identifiers, name)
        if raw is None:
            continue
        if memo is None:
            result = hash_identifier(id_type, raw, salt)
        else:
            try:
                key = (id_type, type(raw), raw)
                result = memo.get(key)
                if result is None:
                    result = memo[key] = hash_identifier(id_type, raw, salt)
            except TypeError:  # a list or an object: not hashable, and never usable
                result = hash_identifier(id_type, raw, salt)
        if result[0] is None:
            rejected[name] = result[1] or "unusable"
        else:
            hashes.append(result[0])
    return hashes, rejected


class Predictor:
    """Scores submissions; thread-safe; model and identity maps are swapped atomically."""

    def __init__(self, settings: Settings, reader: OnlineFeatureReader, identity: IdentityMaps,
                 policy: RoutingPolicy, log: PredictionLog | BackgroundLogWriter,
                 updater: Any = None, recorder: Any = None) -> None:
        self.settings = settings
        self.reader = reader
        self.identity = identity
        self.policy = policy
        # the 2-D rule's sales threshold for control leads: the user's scoring tables
        self.rule_threshold = FeatureParams.from_settings(settings).tables.rule_threshold
        self.log = log
        self.updater = updater
        # ``serving.events.BackgroundLeadRecorder`` over ``updater``: scored submissions are
        # recorded as leads off the request path (synchronously through ``updater`` without it)
        self.recorder = recorder
        self.load_error: str | None = None
        self._model: LoadedModel | None = None
        self._reload_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.degraded_counts: Counter = Counter()
        # identifiers and lead ids of persons founded here (keys "<type>:<hash>", "lead:<id>")
        self._new_links: dict[str, str] = {}
        self._reset_unlogged = 0
        self._reset_logged_at = -RESET_WARNING_SECONDS
        self.on_degraded: Callable[[str, int], None] | None = None
        # ``serving.rescoring.Rescorer.register``: answered submissions become leads whose
        # answer moves with their events (called with the batch's forms, features and routes)
        self.on_scored: Callable[..., None] | None = None
        # the uplift champion when the policy file records a learned allocation: policy leads
        # are then routed by ``routing.control.allocated_channels`` (shadow prices), else tiers
        self.uplift: Any = None
        self._allocation: LearnedAllocation | None = None

    def load_uplift(self, model: Any) -> None:
        """Route policy leads by this uplift model's effects (``routing.control``): its
        distilled boosters read into flat arrays and the policy's allocation (costs, λ, shadow
        prices) read once, here, not per request. ValueError when the policy records no
        learned allocation or the model lacks one of the follow-up channels."""
        from leadscore.schemas import FOLLOWUP_CHANNELS
        from serving.fast_forest import DistilledEffects

        allocation = LearnedAllocation(self.policy)
        missing = [c for c in FOLLOWUP_CHANNELS if c not in model.arms]
        if missing:
            raise ValueError(f"uplift model: no arm for the channel(s) {missing}")
        self._effects = DistilledEffects(model, FOLLOWUP_CHANNELS)
        self._allocation = allocation
        self.uplift = model

    def channel_effects(self, columns: dict[str, list[Any]]) -> np.ndarray | None:
        """Leads × FOLLOWUP_CHANNELS uplift of the loaded uplift model (None without one)."""
        if self.uplift is None:
            return None
        return self._effects(columns)

    @classmethod
    def from_settings(cls, settings: Settings, background_log: bool = True,
                      load_model: bool = True) -> Predictor:
        """Build from the work folder: feature store, One ID, policy, log and the champion."""
        from features.store import get_store
        from serving.events import BackgroundLeadRecorder, BehaviourUpdater

        store = get_store(settings)
        _ensure_push_source(store, settings)
        reader = OnlineFeatureReader(store, settings)
        log: PredictionLog | BackgroundLogWriter
        if background_log:  # journal first, the log when it can be written (docs/api.md)
            log = BackgroundLogWriter(lambda: open_prediction_log(settings),
                                      LogJournal(settings.prediction_journal_dir),
                                      fsync=settings.log_durability == "fsync")
        else:
            log = open_prediction_log(settings)
        params = FeatureParams.from_settings(settings)
        updater = BehaviourUpdater(store, reader, params.tables, params.half_life_days)
        predictor = cls(settings, reader, IdentityMaps.load(settings),
                        resolve_active_policy(settings).policy,
                        log, updater, BackgroundLeadRecorder(updater))
        if load_model:
            predictor.reload()
            allocation = predictor.policy.optimization.get("allocation") or {}
            if allocation.get("source") == "uplift":
                from training.uplift_registry import load_uplift_model

                try:
                    predictor.load_uplift(load_uplift_model(allocation["model"]))
                except (OSError, ValueError, KeyError) as exc:
                    logger.warning("uplift model %s not loaded (%s): routing by tiers",
                                   allocation.get("model"), exc)
        return predictor

    # ---- model -------------------------------------------------------------------------------
    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def ready(self) -> bool:
        """True when a model is loaded (the feature store was resolved at construction)."""
        return self._model is not None

    def log_status(self) -> tuple[bool, str | None]:
        """(healthy, reason) of the prediction log path (``BackgroundLogWriter.status``)."""
        status = getattr(self.log, "status", None)
        return status() if status is not None else (True, None)

    def reload(self) -> str | None:
        """Load the current champion and One ID maps; on failure keep serving the old model."""
        with self._reload_lock:
            try:
                model = load_champion(self.settings)
                identity = IdentityMaps.load(self.settings)
            except Exception as exc:  # noqa: BLE001 - any failure keeps the old model
                self.load_error = str(exc)
                logger.error("model load failed: %s", exc)
            else:
                self._model, self.identity = model, identity  # one reference swap each
                self.load_error = None
        current = self._model
        return current.version if current else None

    def close(self) -> None:
        """Flush and close the prediction log, the lead recorder and the store connections."""
        self.log.close()
        if self.recorder is not None:
            self.recorder.close()
        self.reader.close()

    # ---- identity ----------------------------------------------------------------------------
    def find_person(self, identifiers: Identifiers, lead_id: str | None) -> str | None:
        """Person of identifiers or a lead id (None when neither is usable)."""
        hashes, _ = identifier_hashes(identifiers, self.settings.hash_salt)
        return self._person(hashes, lead_id)

    def locate_person(self, identifiers: Identifiers, lead_id: str | None
                      ) -> tuple[str | None, str | None]:
        """``(person, None)`` as ``find_person`` finds it, else ``(None, why)``: no usable
        identifier nor lead id, or usable identifiers of a person not scored here yet."""
        hashes, _ = identifier_hashes(identifiers, self.settings.hash_salt)
        person = self._person(hashes, lead_id)
        if person is not None:
            return person, None
        return None, NOT_SCORED_YET if hashes else NO_IDENTIFIER

    def _person(self, hashes: list[str], lead_id: str | None) -> str | None:
        """A lead One ID placed keeps its person; else its identifiers' (One ID's, then those
        of persons founded here), else the person its lead founded here or founds."""
        identity = self.identity
        person = identity.lead_person.get(lead_id) if lead_id else None
        if person is None:
            person = lookup_person(hashes, identity.identifier_person)
        if person is None:
            person = lookup_person(hashes, self._new_links)
        if person is None and lead_id:
            person = self._new_links.get("lead:" + lead_id) or new_person_id(lead_id)
        return person

    def _remember(self, hashes: list[str], lead_id: str, person: str) -> None:
        """Link a new lead's identifiers to the person it founds, until One ID runs again."""
        if len(self._new_links) >= MAX_NEW_LINKS:
            return
        with self._count_lock:
            for key in (*hashes, "lead:" + lead_id):
                self._new_links.setdefault(key, person)

    def resolve(self, sub: Submission) -> Resolved:
        """Person id, the form as feature inputs, and rejected identifier kinds (no raw values)."""
        hashes, rejected = identifier_hashes(sub.identifiers, self.settings.hash_salt)
        return self._resolve(sub, hashes, rejected, email_domain_type)

    def resolve_all(self, submissions: Sequence[Submission]) -> list[Resolved]:
        """``resolve`` of each submission, in order (a lead founding a person is remembered
        before the next one is resolved), each distinct raw identifier hashed once."""
        if len(submissions) == 1:
            return [self.resolve(submissions[0])]
        salt = self.settings.hash_salt
        hashed: HashMemo = {}
        domains: dict[tuple[type, Any], str] = {}

        def domain_type(email: Any) -> str:
            key = (type(email), email)
            found = domains.get(key)
            if found is None:
                found = domains[key] = email_domain_type(email)
            return found

        out: list[Resolved] = []
        for sub in submissions:
            identifiers = sub.identifiers
            hashes, rejected = identifier_hashes(identifiers, salt, hashed)
            email = identifiers.email
            out.append(self._resolve(
                sub, hashes, rejected,
                domain_type if email is None or type(email) is str else email_domain_type))
        return out

    def _resolve(self, sub: Submission, hashes: list[str], rejected: dict[str, str],
                 domain_type: Callable[[Any], str]) -> Resolved:
        identity = self.identity
        # a lead One ID placed keeps its person: an identifier's latest owner may be another
        # person (a sibling's shared phone, a re-issued number's later owner)
        person = identity.lead_person.get(sub.lead_id)
        if person is None:
            person = lookup_person(hashes, identity.identifier_person)
        if person is None:  # not in One ID's state: link what this lead founds or joins
            # ``_person`` without the two One ID lookups just made
            new_links = self._new_links
            person = (lookup_person(hashes, new_links)
                      or (new_links.get("lead:" + sub.lead_id) if sub.lead_id else None)
                      or new_person_id(sub.lead_id))
            self._remember(hashes, sub.lead_id, person)
        city_tier = sub.form.city_tier
        if city_tier is None and sub.form.city:
            city_tier = CITY_TIER.get(sub.form.city.strip().lower())
        email = sub.identifiers.email
        form = {
            "channel": sub.channel,
            "campaign": sub.campaign,
            "landing_page": sub.landing_page,
            "funnel_step": sub.funnel_step,
            "grade": sub.form.grade,
            "subject": sub.form.subject,
            "city_tier": city_tier,
            "device": sub.form.device,
            "phone_valid": sub.identifiers.phone is not None and "phone" not in rejected,
            "email_domain_type": domain_type(email)
            if email is None or isinstance(email, str) else "invalid",
        }
        return Resolved(person, form, rejected)

    # ---- scoring -----------------------------------------------------------------------------
    def features(self, submissions: Sequence[Submission], resolved: Sequence[Resolved]
                 ) -> tuple[dict[str, list[Any]], list[str | None]]:
        """Model feature columns of a batch, and per submission why it is degraded (or None)."""
        if len(submissions) == 1:
            row = submission_request(resolved[0].form, submissions[0].submitted_at)
            request_columns = {name: [value] for name, value in row.items()}
        else:
            request_columns = submission_requests(
                [r.form for r in resolved], [s.submitted_at for s in submissions])
        n = len(submissions)
        try:
            columns, known = self.reader.features(request_columns,
                                                  [r.person_id for r in resolved])
        except OnlineStoreResetError as exc:
            self._warn_reset(exc, n)
            return self.reader.request_only(request_columns), [DEGRADED_RESET] * n
        except OnlineStoreError as exc:
            logger.warning("%s: answering %d lead(s) from the request alone", exc, n)
            return self.reader.request_only(request_columns), [DEGRADED_STORE] * n
        return columns, [None if k else DEGRADED_PERSON for k in known]

    def _warn_reset(self, exc: Exception, n: int) -> None:
        """Log a store reset at most every ``RESET_WARNING_SECONDS`` (with the count since)."""
        with self._count_lock:
            self._reset_unlogged += n
            now = time.monotonic()
            if now - self._reset_logged_at < RESET_WARNING_SECONDS:
                return
            count, self._reset_unlogged, self._reset_logged_at = self._reset_unlogged, 0, now
        logger.warning("%s: answered %d lead(s) from the request alone since the last warning",
                       exc, count)

    def route(self, person_ids: Sequence[str], probability: np.ndarray,
              rule_score: np.ndarray, lead_ids: Sequence[str] | None = None,
              effects: np.ndarray | None = None) -> RoutedLeads:
        """Tier, channel, control flag, arm and propensity per lead
        (:func:`routing.control.route_leads`; by the uplift ``effects`` when given)."""
        return route_leads(person_ids, probability, rule_score, self.policy,
                           self.rule_threshold, lead_ids=lead_ids, effects=effects,
                           allocation=self._allocation)

    def predict(self, submissions: Sequence[Submission]) -> list[Prediction]:
        """Score submissions in order and append them to the prediction log."""
        return [_prediction(answer) for answer in self.answers(submissions)]

    def predict_json(self, submissions: Sequence[Submission], batch: bool = False) -> bytes:
        """``predict`` as the JSON the API sends: one ``Prediction``, or with ``batch`` a
        ``BatchResponse`` (the bytes ``model_dump_json`` gives, without building the models)."""
        if not batch and len(submissions) != 1:
            raise ValueError(f"one submission expected without batch, got {len(submissions)}")
        return self.predict_json_logged(submissions, batch)[0]

    def predict_json_logged(self, submissions: Sequence[Submission], batch: bool = False
                            ) -> tuple[bytes, Receipt | None]:
        """``predict_json`` and the log's receipt of the records (None: stored already)."""
        if not batch and len(submissions) != 1:
            raise ValueError(f"one submission expected without batch, got {len(submissions)}")
        answers, receipt = self.answers_logged(submissions)
        return to_json({"predictions": answers} if batch else answers[0],
                       inf_nan_mode="null"), receipt

    def answers(self, submissions: Sequence[Submission]) -> list[dict[str, Any]]:
        """Score submissions in order, log them; the answers as ``Prediction`` field dicts."""
        return self.answers_logged(submissions)[0]

    def answers_logged(self, submissions: Sequence[Submission]
                       ) -> tuple[list[dict[str, Any]], Receipt | None]:
        """``answers`` and the log's receipt: with the background writer a future that says
        whether the records were fsync'd to the journal (``BackgroundLogWriter.append``)."""
        model = self._model
        if model is None:
            raise ModelUnavailableError(self.load_error or "no model is loaded")
        if not submissions:
            return [], None
        resolved = self.resolve_all(submissions)
        columns, degraded = self.features(submissions, resolved)
        scored = model.scorer.score(columns, top_k=3)
        person_ids = [r.person_id for r in resolved]
        # the persons' next submissions count these as earlier leads
        if self.recorder is not None:
            self.recorder.record_submissions(submissions, person_ids)
        elif self.updater is not None:
            self.updater.record_submissions(submissions, person_ids)
        probability = np.array([s["probability"] for s in scored], dtype=float)
        rule_score = np.asarray(columns.get("rule_score", [0.0] * len(scored)), dtype=float)
        routed = self.route(person_ids, probability, rule_score,
                            [sub.lead_id for sub in submissions],
                            self.channel_effects(columns))
        tiers, channels = routed.tiers.tolist(), routed.channels.tolist()
        control, arms = routed.control.tolist(), routed.arms.tolist()
        propensities = routed.propensities.tolist()
        self._count_degraded(degraded)
        now = datetime.now(UTC)
        policy_version = self.policy.version
        model_ref = {"name": model.name, "version": model.version}
        names = list(columns)
        tag_names = [name for name in TAG_FIELDS if name in columns]
        # the fast scorer's reasons are dicts in Reason's order already
        reason_dicts = _same if model.scorer.fast else _reason_dicts
        rows = zip(*(_plain_values(columns[name]) for name in names), strict=True)
        request_ids = _request_ids(len(submissions))
        answers: list[dict[str, Any]] = []
        records: list[PredictionRecord] = []
        for i, (sub, row) in enumerate(zip(submissions, rows, strict=True)):
            features = dict(zip(names, row, strict=True))
            reason = degraded[i]
            answers.append({
                "lead_id": sub.lead_id,
                "person_id": person_ids[i],
                "probability": round(scored[i]["probability"], 6),
                "tier": tiers[i],
                "channel": channels[i],
                "control": control[i],
                "arm": arms[i],
                "reasons": {"positive": reason_dicts(scored[i]["positive_reasons"]),
                            "negative": reason_dicts(scored[i]["negative_reasons"])},
                "tags": {name: features[name] for name in tag_names},
                "identifiers_rejected": resolved[i].rejected,
                "model": model_ref,
                "policy": policy_version,
                "degraded": reason is not None,
                "degraded_reason": reason,
                "scored_at": now,
            })
            records.append(PredictionRecord(
                request_id=request_ids[i], lead_id=sub.lead_id, person_id=person_ids[i],
                submitted_at=sub.submitted_at, scored_at=now,
                probability=scored[i]["probability"], tier=tiers[i], channel=channels[i],
                control=control[i], degraded=reason is not None, model_name=model.name,
                model_version=model.version, policy_version=policy_version, arm=arms[i],
                propensity=propensities[i], features=features,
            ))
        if self.on_scored is not None:
            self.on_scored(submissions, [r.form for r in resolved], person_ids, columns,
                           probability, tiers, channels, control, model.version, now)
        return answers, self.log.append(records)

    def _count_degraded(self, degraded: list[str | None]) -> None:
        counts = Counter(reason for reason in degraded if reason is not None)
        if not counts:
            return
        with self._count_lock:
            self.degraded_counts.update(counts)
        for reason, n in counts.items():
            if reason == DEGRADED_PERSON:
                logger.info("degraded answer (%s) for %d lead(s)", reason, n)
            if self.on_degraded is not None:
                self.on_degraded(reason, n)

    # ---- events ------------------------------------------------------------------------------
    def push_events(self, events: Sequence[Event]) -> EventsResponse:
        """Fold behaviour events into the persons' online snapshots (``serving.events``)."""
        from serving.events import push_events

        if self.recorder is not None:  # after the leads recorded so far
            return self.recorder.push_events(events, self.locate_person)
        if self.updater is None:
            raise OnlineStoreError("this predictor has no event updater")
        return push_events(events, self.updater, self.locate_person)


def _ensure_push_source(store: Any, settings: Settings) -> None:
    """Register the project's definitions when the registry predates the event push source."""
    from features.store import apply_definitions
    from serving.events import PUSH_SOURCE

    try:
        store.get_data_source(PUSH_SOURCE)
    except Exception:  # noqa: BLE001 - Feast raises its own "not found" types
        logger.warning("registry lacks push source '%s': applying the definitions", PUSH_SOURCE)
        apply_definitions(store, settings)


def _request_ids(n: int) -> list[str]:
    """``n`` random (version 4) UUIDs as hex: ``uuid.uuid4().hex`` each, from one read of the
    system's random source (a read per id cost ~20 µs here)."""
    if n == 1:
        return [uuid.uuid4().hex]
    pool = os.urandom(16 * n)
    return [uuid.UUID(bytes=pool[16 * i:16 * i + 16], version=4).hex for i in range(n)]


def _reason_dicts(reasons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reasons as dicts in ``Reason``'s field order (the JSON order of the answer)."""
    return [{"feature": r["feature"], "value": r.get("value"), "text": r["text"],
             "contribution": r["contribution"]} for r in reasons]


def _same(reasons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return reasons


def _prediction(answer: dict[str, Any]) -> Prediction:
    """The ``Prediction`` model of an answer dict (no re-validation of our own output)."""
    return Prediction.model_construct(**{
        **answer,
        "reasons": {side: [Reason.model_construct(**r) for r in reasons]
                    for side, reasons in answer["reasons"].items()},
        "model": ModelRef.model_construct(**answer["model"]),
    })


_SIMPLE = frozenset({float, int, str, bool, type(None)})


def _plain_values(values: Sequence[Any]) -> list[float | int | str | bool | None]:
    """``_plain`` of every value of a column (fast when they are Python scalars already)."""
    types = set(map(type, values))
    if types <= _SIMPLE:
        if float in types:  # NaN is the only plain value unequal to itself
            return [None if v != v else v for v in values]
        return list(values)
    return [_plain(v) for v in values]


def _plain(value: Any) -> float | int | str | bool | None:
    """A JSON/log friendly scalar (numpy scalars → Python, NaN → None)."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)
