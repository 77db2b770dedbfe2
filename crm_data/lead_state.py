"""The leads' moving answers: current state, score history, re-scoring queue and webhook outbox.

One store, two back ends with one behaviour (as ``crm_data.prediction_log``): a SQLite file
(embedded profile, ``settings.lead_state_path``; WAL, ``synchronous=NORMAL``: a committed
transaction survives the process being killed) and PostgreSQL (production profile, database
``settings.database_prefix``; tables created when missing). Every SQL statement is written once
with ``?`` placeholders and the portable subset both speak (``ON CONFLICT``, ``RETURNING``).

Tables (times are integer UTC epoch microseconds, ``*_us``):

* ``lead_state`` — one row per scored lead: its form as the request columns hold it
  (normalised and scrubbed; no raw identifier), the features fixed at submission
  (submission hour and weekday, earlier leads and channels), its funnel step, ``status``
  (``open`` | ``converted`` | ``closed`` | ``dropped``), the current answer and the one last
  told to the CRM (``pushed_tier``/``pushed_channel``), the rise over the recent week and since
  when it has been low.
* ``score_history`` — every score of a lead: when, probability, tier, channel, model version
  and the cause (``submission``, an event type, a funnel step).
* ``rescore_queue`` — accepted events waiting to be re-scored (written in the ``/events``
  request, so a killed service re-scores them after its restart).
* ``seen_events`` — keys of events already applied (duplicates are recognised and skipped).
* ``outbox`` — notifications to the CRM (``pending`` → ``delivered`` | ``dead``), each with its
  idempotency key, attempts, next attempt time and lease (``serving.webhook``).
* ``lead_outcomes`` — the CRM's outcome of a lead (``converted`` | ``closed``, its time, amount
  and follow-up channel; ``POST /outcomes`` or the outcomes file): one per lead, final.
* ``lead_state_meta`` — ``registered_through_us``: the latest answer time whose leads are
  registered (the start of what a restart recovers from the prediction log).

A re-score's lead update, history rows, outbox rows and queue deletions are one transaction:
a notification exists exactly when its state change is stored. So are an outcome's row, its
lead's new status and its notification; a re-score of a lead closed meanwhile is discarded.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leadscore.config import Settings

OPEN, CONVERTED, CLOSED, DROPPED = "open", "converted", "closed", "dropped"
STATUSES: tuple[str, ...] = (OPEN, CONVERTED, CLOSED, DROPPED)
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
OUTBOX_STATUSES: tuple[str, ...] = (PENDING, DELIVERED, DEAD)
MICROS = 1_000_000
DAY_US = 86_400 * MICROS

LEAD_COLUMNS: tuple[str, ...] = (
    "lead_id", "person_id", "submitted_us", "request", "fixed", "funnel_step", "status",
    "probability", "tier", "channel", "control", "model_version", "first_probability",
    "first_tier", "scored_us", "pushed_tier", "pushed_channel", "rise", "low_since_us",
    "changes", "updated_us",
)
HISTORY_COLUMNS: tuple[str, ...] = (
    "lead_id", "at_us", "recorded_us", "probability", "tier", "channel", "model_version",
    "cause", "funnel_step",
)
OUTCOMES: tuple[str, ...] = (CONVERTED, CLOSED)
# what ``record_outcomes`` says of each outcome
RECORDED, DUPLICATE_OUTCOME, UNKNOWN_LEAD = "recorded", "duplicate", "unknown_lead"
TIME_BEFORE_SUBMISSION, OUTCOME_CONFLICT = "time_before_submission", "outcome_conflict"
WATERMARK = "registered_through_us"
OUTBOX_COLUMNS: tuple[str, ...] = (
    "id", "idempotency_key", "lead_id", "kind", "payload", "status", "attempts", "created_us",
    "next_attempt_us", "lease_until_us", "delivered_us", "last_error", "event_us",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lead_state (
    lead_id TEXT PRIMARY KEY, person_id TEXT NOT NULL, submitted_us BIGINT NOT NULL,
    request TEXT NOT NULL, fixed TEXT NOT NULL, funnel_step TEXT NOT NULL,
    status TEXT NOT NULL, probability DOUBLE PRECISION NOT NULL, tier TEXT NOT NULL,
    channel TEXT NOT NULL, control INTEGER NOT NULL, model_version TEXT NOT NULL,
    first_probability DOUBLE PRECISION NOT NULL, first_tier TEXT NOT NULL,
    scored_us BIGINT NOT NULL, pushed_tier TEXT NOT NULL, pushed_channel TEXT NOT NULL,
    rise DOUBLE PRECISION NOT NULL DEFAULT 0, low_since_us BIGINT,
    changes INTEGER NOT NULL DEFAULT 0, updated_us BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS lead_state_person ON lead_state (person_id);
CREATE INDEX IF NOT EXISTS lead_state_status ON lead_state (status, tier);
CREATE TABLE IF NOT EXISTS score_history (
    id {serial}, lead_id TEXT NOT NULL, at_us BIGINT NOT NULL, recorded_us BIGINT NOT NULL,
    probability DOUBLE PRECISION NOT NULL, tier TEXT NOT NULL, channel TEXT NOT NULL,
    model_version TEXT NOT NULL, cause TEXT NOT NULL, funnel_step TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS score_history_lead ON score_history (lead_id, at_us);
CREATE TABLE IF NOT EXISTS rescore_queue (
    id {serial}, person_id TEXT NOT NULL, lead_id TEXT, cause TEXT NOT NULL, step TEXT,
    event_us BIGINT NOT NULL, queued_us BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_events (key TEXT PRIMARY KEY, seen_us BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id {serial}, idempotency_key TEXT NOT NULL UNIQUE, lead_id TEXT NOT NULL,
    kind TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, created_us BIGINT NOT NULL,
    next_attempt_us BIGINT NOT NULL, lease_until_us BIGINT NOT NULL DEFAULT 0,
    delivered_us BIGINT, last_error TEXT, event_us BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_us);
CREATE TABLE IF NOT EXISTS lead_outcomes (
    lead_id TEXT PRIMARY KEY, outcome TEXT NOT NULL, outcome_us BIGINT NOT NULL,
    amount DOUBLE PRECISION, followup_channel TEXT, source TEXT NOT NULL,
    recorded_us BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS lead_state_meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
"""


class LeadStateError(ValueError):
    """A malformed argument to the lead-state store; the message names it."""


def now_us() -> int:
    """The current UTC time in epoch microseconds."""
    return to_us(datetime.now(UTC))


def to_us(value: datetime) -> int:
    """A timezone-aware time as integer UTC epoch microseconds (exact)."""
    if value.tzinfo is None:
        raise LeadStateError("a time must be timezone-aware (UTC)")
    delta = value.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * MICROS + delta.microseconds


def from_us(value: int | None) -> datetime | None:
    """Epoch microseconds as an aware UTC datetime (None stays None)."""
    if value is None:
        return None
    return datetime.fromtimestamp(value / MICROS, UTC)


@dataclass
class LeadRow:
    """One ``lead_state`` row (``request`` and ``fixed`` decoded)."""

    lead_id: str
    person_id: str
    submitted_us: int
    request: dict[str, Any]
    fixed: dict[str, Any]
    funnel_step: str
    status: str
    probability: float
    tier: str
    channel: str
    control: bool
    model_version: str
    first_probability: float
    first_tier: str
    scored_us: int
    pushed_tier: str
    pushed_channel: str
    rise: float = 0.0
    low_since_us: int | None = None
    changes: int = 0
    updated_us: int = 0

    @classmethod
    def from_db(cls, row: Sequence[Any]) -> LeadRow:
        values = dict(zip(LEAD_COLUMNS, row, strict=True))
        values["request"] = json.loads(values["request"])
        values["fixed"] = json.loads(values["fixed"])
        values["control"] = bool(values["control"])
        return cls(**values)

    def to_db(self) -> tuple:
        return tuple(
            json.dumps(getattr(self, c), separators=(",", ":")) if c in ("request", "fixed")
            else int(self.control) if c == "control" else getattr(self, c)
            for c in LEAD_COLUMNS)


@dataclass(frozen=True)
class HistoryRow:
    """One score of a lead."""

    lead_id: str
    at_us: int
    recorded_us: int
    probability: float
    tier: str
    channel: str
    model_version: str
    cause: str
    funnel_step: str


@dataclass(frozen=True)
class QueuedEvent:
    """An accepted event waiting for its re-score (``lead_id``/``step`` for funnel steps)."""

    id: int
    person_id: str
    lead_id: str | None
    cause: str
    step: str | None
    event_us: int


@dataclass(frozen=True)
class OutcomeRow:
    """The CRM's outcome of a lead (``outcome``: ``converted`` or ``closed``)."""

    lead_id: str
    outcome: str
    outcome_us: int
    amount: float | None = None
    followup_channel: str | None = None
    source: str = "api"


@dataclass(frozen=True)
class OutboxMessage:
    """A notification to send (``payload``: the JSON body, signed when sent)."""

    idempotency_key: str
    lead_id: str
    kind: str
    payload: str
    event_us: int


class LeadStateStore:
    """The lead-state tables on SQLite or PostgreSQL; thread-safe (one connection, a lock)."""

    def __init__(self, conn: Any, postgres: bool, lock_name: str = "leadscore_lead_state"
                 ) -> None:
        self._conn = conn
        self.postgres = postgres
        self._lock = threading.RLock()
        self._dsn: str | None = None
        serial = "BIGSERIAL PRIMARY KEY" if postgres else "INTEGER PRIMARY KEY AUTOINCREMENT"
        statements = [s for s in _SCHEMA.format(serial=serial).split(";") if s.strip()]
        with self.transaction() as tx:
            if postgres:
                tx.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (lock_name,))
            for statement in statements:
                tx.execute(statement)
            if not tx.fetchall("SELECT value FROM lead_state_meta WHERE key = ?", (WATERMARK,)):
                # a new store starts now; one written before the mark: its latest registration
                found = tx.fetchall("SELECT MAX(recorded_us) FROM score_history WHERE cause = ?",
                                    ("submission",))
                start = found[0][0] if found and found[0][0] is not None else now_us()
                tx.execute("INSERT INTO lead_state_meta (key, value) VALUES (?, ?) "
                           "ON CONFLICT (key) DO NOTHING", (WATERMARK, int(start)))

    # ---- opening ---------------------------------------------------------------------------
    @classmethod
    def sqlite(cls, path: Path | str, timeout_seconds: float = 30.0) -> LeadStateStore:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=timeout_seconds, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives a killed process
        return cls(conn, postgres=False)

    @classmethod
    def postgresql(cls, dsn: str, connect_timeout: int = 5) -> LeadStateStore:
        import psycopg

        conn = psycopg.connect(dsn, connect_timeout=connect_timeout, autocommit=True)
        store = cls(conn, postgres=True)
        store._dsn = dsn
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> LeadStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transactions ----------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, write: bool = True) -> Iterator[_Tx]:
        """One transaction (all or nothing) under the store's lock (``write=False``: a read,
        which on SQLite does not take the write lock)."""
        with self._lock:
            if self.postgres:
                if self._conn.closed or self._conn.broken:
                    import psycopg

                    self._conn = psycopg.connect(self._dsn, autocommit=True)
                with self._conn.transaction(), self._conn.cursor() as cur:
                    yield _Tx(cur, True)
                return
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _Tx(self._conn, False)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self.transaction(write=False) as tx:
            return tx.fetchall(sql, params)

    def _query_in(self, sql: str, values: Sequence[Any], before: Sequence[Any] = ()
                  ) -> list[tuple]:
        """``sql`` with ``{in}`` standing for ``IN (?, …)`` over the distinct ``values``, run in
        chunks of 500 (``before``: the parameters ahead of the list)."""
        ids = list(dict.fromkeys(values))
        rows: list[tuple] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows.extend(self._query(sql.format(IN=f"IN ({', '.join('?' * len(chunk))})"),
                                    [*before, *chunk]))
        return rows

    # ---- leads -----------------------------------------------------------------------------
    def register(self, leads: Sequence[LeadRow], history: Sequence[HistoryRow],
                 answered_through_us: int | None = None) -> int:
        """Store newly scored leads (a lead id stored already keeps its row) and their first
        scores; the number of new leads. ``answered_through_us``: the answer time of these
        leads, which moves the ``registered_through_us`` mark forward (never back)."""
        columns = ", ".join(LEAD_COLUMNS)
        marks = ", ".join("?" * len(LEAD_COLUMNS))
        new: set[str] = set()
        with self.transaction() as tx:
            for lead in leads:
                found = tx.fetchall(
                    f"INSERT INTO lead_state ({columns}) VALUES ({marks}) "
                    "ON CONFLICT (lead_id) DO NOTHING RETURNING lead_id", lead.to_db())
                if found:
                    new.add(lead.lead_id)
            tx.insert_history([h for h in history if h.lead_id in new])
            if answered_through_us is not None:
                tx.execute("UPDATE lead_state_meta SET value = ? WHERE key = ? AND value < ?",
                           (int(answered_through_us), WATERMARK, int(answered_through_us)))
        return len(new)

    def registered_through(self) -> int:
        """``registered_through_us``: every lead answered before it (less the few seconds two
        concurrent batches can interleave) was registered."""
        rows = self._query("SELECT value FROM lead_state_meta WHERE key = ?", (WATERMARK,))
        return int(rows[0][0]) if rows else now_us()

    def missing(self, lead_ids: Sequence[str]) -> set[str]:
        """Those of ``lead_ids`` the store holds no row of."""
        return set(lead_ids) - set(self.leads(lead_ids))

    def leads(self, lead_ids: Sequence[str]) -> dict[str, LeadRow]:
        """The stored rows of ``lead_ids`` (absent ids are left out)."""
        rows = self._query_in(f"SELECT {', '.join(LEAD_COLUMNS)} FROM lead_state WHERE "
                              "lead_id {IN}", lead_ids)
        return {row[0]: LeadRow.from_db(row) for row in rows}

    def open_leads_of(self, person_ids: Sequence[str]) -> list[LeadRow]:
        """The open leads of ``person_ids``."""
        rows = self._query_in(f"SELECT {', '.join(LEAD_COLUMNS)} FROM lead_state WHERE "
                              "status = ? AND person_id {IN}", person_ids, [OPEN])
        return [LeadRow.from_db(row) for row in rows]

    def history(self, lead_id: str, limit: int = 200) -> list[HistoryRow]:
        """The lead's scores, oldest first (the latest ``limit``)."""
        rows = self._query(
            f"SELECT {', '.join(HISTORY_COLUMNS)} FROM score_history WHERE lead_id = ? "
            "ORDER BY at_us DESC, id DESC LIMIT ?", (lead_id, int(limit)))
        return [HistoryRow(*row) for row in reversed(rows)]

    def min_probability_since(self, lead_ids: Sequence[str], since_us: int) -> dict[str, float]:
        """Lowest probability of each lead's scores at or after ``since_us``."""
        rows = self._query_in("SELECT lead_id, MIN(probability) FROM score_history WHERE "
                              "at_us >= ? AND lead_id {IN} GROUP BY lead_id", lead_ids,
                              [since_us])
        return {r[0]: float(r[1]) for r in rows}

    def nurture(self, tier: str | None = None, rising: bool = False, limit: int = 100,
                offset: int = 0) -> list[LeadRow]:
        """Open leads (of ``tier``), by recent rise (``rising``: only those that rose) or by
        probability, highest first."""
        clauses, params = ["status = ?"], [OPEN]
        if tier is not None:
            clauses.append("tier = ?")
            params.append(tier)
        if rising:
            clauses.append("rise > 0")
        order = "rise DESC, probability DESC" if rising else "probability DESC"
        rows = self._query(
            f"SELECT {', '.join(LEAD_COLUMNS)} FROM lead_state WHERE {' AND '.join(clauses)} "
            f"ORDER BY {order}, lead_id LIMIT ? OFFSET ?", [*params, int(limit), int(offset)])
        return [LeadRow.from_db(row) for row in rows]

    def set_status(self, statuses: dict[str, str], only_open: bool = True) -> int:
        """Set each lead's status (open leads only, by default); leads changed."""
        for status in statuses.values():
            if status not in STATUSES:
                raise LeadStateError(f"status {status!r} is not one of {STATUSES}")
        changed = 0
        stamp = now_us()
        with self.transaction() as tx:
            for lead_id, status in statuses.items():
                where = " AND status = ?" if only_open else ""
                params = [status, stamp, lead_id, *([OPEN] if only_open else [])]
                changed += tx.rowcount(
                    f"UPDATE lead_state SET status = ?, updated_us = ? WHERE lead_id = ?{where}",
                    params)
        return changed

    def drop_low(self, before_us: int) -> int:
        """Mark ``dropped`` the open leads low since before ``before_us``; leads dropped."""
        with self.transaction() as tx:
            return tx.rowcount(
                "UPDATE lead_state SET status = ?, updated_us = ? WHERE status = ? AND "
                "low_since_us IS NOT NULL AND low_since_us <= ?",
                (DROPPED, now_us(), OPEN, before_us))

    def status_counts(self) -> dict[str, int]:
        rows = self._query("SELECT status, COUNT(*) FROM lead_state GROUP BY status")
        return {status: 0 for status in STATUSES} | {r[0]: int(r[1]) for r in rows}

    # ---- events and the re-scoring queue ---------------------------------------------------
    def seen(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` already applied."""
        return {r[0] for r in self._query_in("SELECT key FROM seen_events WHERE key {IN}", keys)}

    def accept_events(self, keys: Sequence[str],
                      queued: Sequence[tuple[str, str | None, str, str | None, int]]) -> None:
        """In one transaction: remember ``keys`` as applied and queue
        ``(person_id, lead_id, cause, step, event_us)`` re-scores."""
        stamp = now_us()
        with self.transaction() as tx:
            tx.executemany("INSERT INTO seen_events (key, seen_us) VALUES (?, ?) "
                           "ON CONFLICT (key) DO NOTHING", [(k, stamp) for k in keys])
            tx.executemany("INSERT INTO rescore_queue (person_id, lead_id, cause, step, "
                           "event_us, queued_us) VALUES (?, ?, ?, ?, ?, ?)",
                           [(*q, stamp) for q in queued])

    def queued(self, limit: int = 2_000) -> list[QueuedEvent]:
        """The oldest queued re-scores."""
        rows = self._query("SELECT id, person_id, lead_id, cause, step, event_us FROM "
                           "rescore_queue ORDER BY id LIMIT ?", (int(limit),))
        return [QueuedEvent(*row) for row in rows]

    def queue_length(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM rescore_queue")[0][0])

    def forget_seen(self, before_us: int) -> int:
        """Forget event keys seen before ``before_us`` (duplicates older than that are not
        recognised any more); keys forgotten."""
        with self.transaction() as tx:
            return tx.rowcount("DELETE FROM seen_events WHERE seen_us < ?", (before_us,))

    def apply_rescores(self, leads: Sequence[LeadRow], history: Sequence[HistoryRow],
                       messages: Sequence[OutboxMessage], done_queue_ids: Sequence[int]
                       ) -> int:
        """One transaction: updated leads, their new scores, their notifications, and the
        queue rows they answer removed. ``leads`` were read open: one that is not open any
        more (an outcome closed it meanwhile) keeps its stored row, and its scores and
        notifications here are discarded; the number of such leads."""
        stamp = now_us()
        sets = ", ".join(f"{c} = ?" for c in LEAD_COLUMNS[1:])
        with self.transaction() as tx:
            gone = self._not_open(tx, [lead.lead_id for lead in leads])
            if gone:
                leads = [lead for lead in leads if lead.lead_id not in gone]
                history = [h for h in history if h.lead_id not in gone]
                messages = [m for m in messages if m.lead_id not in gone]
            tx.executemany(f"UPDATE lead_state SET {sets} WHERE lead_id = ?",
                           [(*lead.to_db()[1:], lead.lead_id) for lead in leads])
            tx.insert_history(history)
            tx.insert_outbox(messages, stamp)
            ids = list(done_queue_ids)
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                tx.execute(f"DELETE FROM rescore_queue WHERE id IN "
                           f"({', '.join('?' * len(chunk))})", chunk)
        return len(gone)

    def _not_open(self, tx: _Tx, lead_ids: Sequence[str]) -> set[str]:
        """Those of ``lead_ids`` stored with a status other than open (rows locked on
        PostgreSQL until the transaction ends; SQLite's write transaction holds the file)."""
        out: set[str] = set()
        lock = " ORDER BY lead_id FOR UPDATE" if self.postgres else ""  # one lock order
        ids = sorted(set(lead_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = tx.fetchall(f"SELECT lead_id, status FROM lead_state WHERE lead_id IN "
                               f"({', '.join('?' * len(chunk))}){lock}", chunk)
            out.update(r[0] for r in rows if r[1] != OPEN)
        return out

    # ---- outcomes --------------------------------------------------------------------------
    def record_outcomes(
            self, outcomes: Sequence[OutcomeRow],
            notify: Callable[[LeadRow, OutcomeRow], OutboxMessage | None] | None = None,
    ) -> list[str]:
        """Close leads with the CRM's outcomes, in one transaction; per outcome what happened:

        * ``recorded`` — stored; the lead's status is now the outcome (whatever it was: open,
          dropped, or closed by its window), it is no longer re-scored nor in the nurturing
          pool, and ``notify(lead, outcome)``'s message (None: none) joins the outbox;
        * ``duplicate`` — the lead has this outcome already (also earlier in ``outcomes``):
          nothing changes;
        * ``outcome_conflict`` — the lead has the other outcome already: it stays (final);
        * ``unknown_lead`` — no lead with this id was scored;
        * ``time_before_submission`` — the outcome's time is before the lead's submission.
        """
        for outcome in outcomes:
            if outcome.outcome not in OUTCOMES:
                raise LeadStateError(f"outcome {outcome.outcome!r} is not one of {OUTCOMES}")
        ids = sorted({o.lead_id for o in outcomes})
        lock = " ORDER BY lead_id FOR UPDATE" if self.postgres else ""  # as ``_not_open``
        columns = ", ".join(LEAD_COLUMNS)
        sets = ", ".join(f"{c} = ?" for c in LEAD_COLUMNS[1:])
        stamp = now_us()
        verdicts: list[str] = []
        with self.transaction() as tx:
            leads: dict[str, LeadRow] = {}
            known: dict[str, str] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ", ".join("?" * len(chunk))
                leads.update((row[0], LeadRow.from_db(row)) for row in tx.fetchall(
                    f"SELECT {columns} FROM lead_state WHERE lead_id IN ({marks}){lock}", chunk))
                known.update((r[0], r[1]) for r in tx.fetchall(
                    f"SELECT lead_id, outcome FROM lead_outcomes WHERE lead_id IN ({marks})",
                    chunk))
            changed: dict[str, LeadRow] = {}
            rows: list[OutcomeRow] = []
            messages: list[OutboxMessage] = []
            for outcome in outcomes:
                lead = leads.get(outcome.lead_id)
                before = known.get(outcome.lead_id)
                if lead is None:
                    verdicts.append(UNKNOWN_LEAD)
                elif before is not None:
                    verdicts.append(DUPLICATE_OUTCOME if before == outcome.outcome
                                    else OUTCOME_CONFLICT)
                elif outcome.outcome_us < lead.submitted_us:
                    verdicts.append(TIME_BEFORE_SUBMISSION)
                else:
                    verdicts.append(RECORDED)
                    known[outcome.lead_id] = outcome.outcome
                    lead.status, lead.updated_us = outcome.outcome, stamp
                    message = notify(lead, outcome) if notify is not None else None
                    if message is not None:
                        messages.append(message)
                    changed[lead.lead_id] = lead
                    rows.append(outcome)
            tx.executemany(
                "INSERT INTO lead_outcomes (lead_id, outcome, outcome_us, amount, "
                "followup_channel, source, recorded_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(o.lead_id, o.outcome, o.outcome_us, o.amount, o.followup_channel, o.source,
                  stamp) for o in rows])
            tx.executemany(f"UPDATE lead_state SET {sets} WHERE lead_id = ?",
                           [(*lead.to_db()[1:], lead.lead_id) for lead in changed.values()])
            tx.insert_outbox(messages, stamp)
        return verdicts

    def outcomes(self, lead_ids: Sequence[str]) -> dict[str, OutcomeRow]:
        """The recorded outcomes of ``lead_ids`` (absent ids are left out)."""
        rows = self._query_in("SELECT lead_id, outcome, outcome_us, amount, followup_channel, "
                              "source FROM lead_outcomes WHERE lead_id {IN}", lead_ids)
        return {r[0]: OutcomeRow(*r) for r in rows}

    # ---- the outbox ------------------------------------------------------------------------
    def claim_due(self, limit: int, lease_seconds: float, now: int | None = None
                  ) -> list[dict[str, Any]]:
        """Lease up to ``limit`` pending notifications whose next attempt is due (a lease
        expires: a message claimed by a process that died is claimed again)."""
        now = now_us() if now is None else now
        lease = now + int(lease_seconds * MICROS)
        with self.transaction() as tx:
            rows = tx.fetchall(
                "SELECT id FROM outbox WHERE status = ? AND next_attempt_us <= ? AND "
                "lease_until_us <= ? ORDER BY id LIMIT ?", (PENDING, now, now, int(limit)))
            ids = [r[0] for r in rows]
            if not ids:
                return []
            marks = ", ".join("?" * len(ids))
            tx.execute(f"UPDATE outbox SET lease_until_us = ? WHERE id IN ({marks})",
                       [lease, *ids])
            found = tx.fetchall(f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM outbox WHERE id IN "
                                f"({marks}) ORDER BY id", ids)
        return [dict(zip(OUTBOX_COLUMNS, row, strict=True)) for row in found]

    def record_attempts(self, delivered: Sequence[int],
                        failed: Sequence[tuple[int, int, int, str, bool]]) -> None:
        """Mark ``delivered`` ids, and ``(id, attempts, next_attempt_us, error, dead)``
        failures (``dead``: no more attempts), in one transaction."""
        stamp = now_us()
        with self.transaction() as tx:
            tx.executemany("UPDATE outbox SET status = ?, delivered_us = ?, attempts = "
                           "attempts + 1, lease_until_us = 0, last_error = NULL WHERE id = ?",
                           [(DELIVERED, stamp, i) for i in delivered])
            tx.executemany("UPDATE outbox SET status = ?, attempts = ?, next_attempt_us = ?, "
                           "last_error = ?, lease_until_us = 0 WHERE id = ?",
                           [(DEAD if dead else PENDING, attempts, next_us, error[:300], i)
                            for i, attempts, next_us, error, dead in failed])

    def outbox_status(self) -> dict[str, Any]:
        """Counts by status, the oldest pending message's age and the last errors."""
        counts = {s: 0 for s in OUTBOX_STATUSES} | {
            r[0]: int(r[1]) for r in self._query("SELECT status, COUNT(*) FROM outbox "
                                                 "GROUP BY status")}
        oldest = self._query("SELECT MIN(created_us) FROM outbox WHERE status = ?", (PENDING,))
        errors = self._query("SELECT last_error, COUNT(*) FROM outbox WHERE status IN (?, ?) "
                             "AND last_error IS NOT NULL GROUP BY last_error ORDER BY 2 DESC "
                             "LIMIT 5", (PENDING, DEAD))
        age = None if oldest[0][0] is None else (now_us() - int(oldest[0][0])) / MICROS
        return {"counts": counts, "oldest_pending_age_seconds": age,
                "last_errors": {str(e): int(n) for e, n in errors}}

    def retry_dead(self, lead_id: str | None = None) -> int:
        """Put dead-lettered notifications (of ``lead_id``) back to pending, due now, with
        their attempts reset; the number retried."""
        clause, params = ("AND lead_id = ?", [lead_id]) if lead_id else ("", [])
        with self.transaction() as tx:
            return tx.rowcount(
                "UPDATE outbox SET status = ?, attempts = 0, next_attempt_us = ?, "
                f"lease_until_us = 0 WHERE status = ? {clause}",
                [PENDING, now_us(), DEAD, *params])

    def purge_delivered(self, before_us: int) -> int:
        """Delete notifications delivered before ``before_us``; the number deleted."""
        with self.transaction() as tx:
            return tx.rowcount("DELETE FROM outbox WHERE status = ? AND delivered_us < ?",
                               (DELIVERED, before_us))

    def outbox_rows(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every notification (of ``status``), oldest first: for reports and tests."""
        clause, params = ("WHERE status = ?", [status]) if status else ("", [])
        rows = self._query(f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM outbox {clause} "
                           "ORDER BY id", params)
        return [dict(zip(OUTBOX_COLUMNS, row, strict=True)) for row in rows]

    def all_history(self) -> list[HistoryRow]:
        """Every stored score, by lead and time: for reports."""
        rows = self._query(f"SELECT {', '.join(HISTORY_COLUMNS)} FROM score_history "
                           "ORDER BY lead_id, at_us, id")
        return [HistoryRow(*row) for row in rows]


class _Tx:
    """The statements of one transaction, ``?`` placeholders on either back end."""

    def __init__(self, cursor: Any, postgres: bool) -> None:
        self._cur = cursor
        self._pg = postgres

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self._pg else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cur.execute(self._sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cur.executemany(self._sql(sql), [tuple(r) for r in rows])

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return [tuple(r) for r in self.execute(sql, params).fetchall()]

    def rowcount(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.execute(sql, params).rowcount)

    def insert_history(self, history: Sequence[HistoryRow]) -> None:
        self.executemany(
            f"INSERT INTO score_history ({', '.join(HISTORY_COLUMNS)}) VALUES "
            f"({', '.join('?' * len(HISTORY_COLUMNS))})",
            [(h.lead_id, h.at_us, h.recorded_us, h.probability, h.tier, h.channel,
              h.model_version, h.cause, h.funnel_step) for h in history])

    def insert_outbox(self, messages: Sequence[OutboxMessage], stamp: int) -> None:
        """Pending notifications, due at ``stamp`` (a key stored already is kept)."""
        self.executemany(
            "INSERT INTO outbox (idempotency_key, lead_id, kind, payload, status, "
            "attempts, created_us, next_attempt_us, lease_until_us, event_us) VALUES "
            "(?, ?, ?, ?, ?, 0, ?, ?, 0, ?) ON CONFLICT (idempotency_key) DO NOTHING",
            [(m.idempotency_key, m.lead_id, m.kind, m.payload, PENDING, stamp, stamp,
              m.event_us) for m in messages])


def open_lead_state(settings: Settings) -> LeadStateStore:
    """The store of the settings' profile: SQLite file (embedded) or PostgreSQL (production)."""
    if settings.profile == "production":
        from crm_data.prediction_log import postgres_dsn
        from leadscore.profiles import ensure_databases

        database = settings.database_prefix
        ensure_databases(settings, [database])
        return LeadStateStore.postgresql(postgres_dsn(settings.postgres_url, database))
    return LeadStateStore.sqlite(settings.lead_state_path)


def sync_outcomes(store: LeadStateStore, settings: Settings, as_of: datetime | None = None,
                  notify: Callable[[LeadRow, OutcomeRow], OutboxMessage | None] | None = None
                  ) -> int:
    """Record the outcomes known at ``as_of`` (default now) in the CRM's outcomes table
    (``record_outcomes``, source ``file``): ``converted`` when paid by then, ``closed`` when the
    conversion window ended unpaid; the number of leads closed."""
    import pandas as pd

    from crm_data.prediction_log import load_outcomes

    outcomes = load_outcomes(settings)
    if outcomes is None or outcomes.empty:
        return 0
    cutoff = pd.Timestamp(as_of or datetime.now(UTC))
    cutoff_us = to_us(cutoff.to_pydatetime())
    window_us = settings.conversion_window_days * DAY_US
    known = store.leads([str(lead) for lead in outcomes["lead_id"]])
    done = store.outcomes(list(known))
    rows: list[OutcomeRow] = []
    for lead, paid, paid_at, amount, channel in zip(
            outcomes["lead_id"], outcomes["converted"], outcomes["converted_at"],
            outcomes["amount"] if "amount" in outcomes else [None] * len(outcomes),
            outcomes["followup_channel"] if "followup_channel" in outcomes
            else [None] * len(outcomes), strict=True):
        row = known.get(str(lead))
        if row is None or row.lead_id in done:
            continue
        extra = {"amount": None if pd.isna(amount) else float(amount),
                 "followup_channel": None if pd.isna(channel) else str(channel),
                 "source": "file"}
        if bool(paid) and not pd.isna(paid_at) and paid_at <= cutoff:
            rows.append(OutcomeRow(row.lead_id, CONVERTED,
                                   to_us(pd.Timestamp(paid_at).to_pydatetime()), **extra))
        elif row.submitted_us + window_us <= cutoff_us:
            rows.append(OutcomeRow(row.lead_id, CLOSED, row.submitted_us + window_us, **extra))
    verdicts = store.record_outcomes(rows, notify) if rows else []
    return sum(v == RECORDED for v in verdicts)
