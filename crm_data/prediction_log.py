"""The prediction log: one row per answered prediction, appended by the service, read by monitoring.

Two back ends with one behaviour (:class:`PredictionLog`):

* :class:`SqlitePredictionLog` — the embedded profile, ``settings.prediction_log_path``;
  WAL mode, ``synchronous=FULL``, one transaction per :meth:`append`, safe from many threads
  (one connection behind a lock) and from several processes (SQLite's busy timeout).
* :class:`PostgresPredictionLog` — the production profile (psycopg 3), database
  ``settings.database_prefix`` (default ``leadscore``) on ``settings.postgres_url``; database
  and table are created when missing.

Timestamps are stored as UTC; ``features`` (the model's input features, hashed identifiers only)
are stored as JSON and expanded into columns by :meth:`PredictionLog.read`. A feature whose name
clashes with a record field (e.g. ``channel``) is expanded as ``feature.<name>``: see
:func:`feature_column`.

The log holds no outcomes: :func:`load_outcomes` reads the CRM's outcomes table
(``settings.raw_dir / "outcomes.parquet"``) to be joined on ``lead_id``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
from pydantic_core import to_json

from leadscore.config import Settings
from leadscore.schemas import ROUTING_ARMS

FeatureValue = float | int | str | bool | None
_PLAIN = frozenset({float, int, str, bool, type(None)})  # feature value types needing no check
_STR_ONLY = frozenset({str})
_STRING_FIELDS: tuple[str, ...] = (
    "request_id", "lead_id", "person_id", "tier", "channel", "model_name", "model_version",
    "policy_version", "arm",
)
# columns added after the first release: added in place to an older log (name → declaration)
ADDED_COLUMNS: dict[str, str] = {
    "arm": "TEXT NOT NULL DEFAULT 'policy'",
    "propensity": "DOUBLE PRECISION NOT NULL DEFAULT 1.0",
}

RECORD_COLUMNS: tuple[str, ...] = (
    "request_id", "lead_id", "person_id", "submitted_at", "scored_at", "probability", "tier",
    "channel", "control", "degraded", "model_name", "model_version", "policy_version", "arm",
    "propensity",
)
TIMESTAMP_COLUMNS: tuple[str, ...] = ("submitted_at", "scored_at")
BOOL_COLUMNS: tuple[str, ...] = ("control", "degraded")
CLASHING_FEATURE_PREFIX = "feature."
POSTGRES_DATABASE = "leadscore"  # default; the real name is settings.database_prefix
TABLE = "predictions"
OUTCOME_COLUMNS: tuple[str, ...] = (
    "lead_id", "converted", "converted_at", "amount", "followup_channel",
)


class PredictionLogError(ValueError):
    """A record or a query is malformed; the message names the field and the problem."""


def feature_column(name: str) -> str:
    """Column name under which :meth:`PredictionLog.read` expands the feature ``name``."""
    return CLASHING_FEATURE_PREFIX + name if name in RECORD_COLUMNS else name


def _utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise PredictionLogError(f"field '{name}': expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        raise PredictionLogError(f"field '{name}': datetime must be timezone-aware (UTC)")
    return value.astimezone(UTC)


def _to_micros(value: datetime) -> int:
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True)
class PredictionRecord:
    """One answered prediction as the service logs it (no raw identifiers, no outcome)."""

    request_id: str
    lead_id: str
    person_id: str
    submitted_at: datetime
    scored_at: datetime
    probability: float
    tier: str
    channel: str
    control: bool
    degraded: bool
    model_name: str
    model_version: str
    policy_version: str
    arm: str = "policy"  # policy / exploration / control (routing.control)
    propensity: float = 1.0  # the probability with which the channel was chosen
    features: dict[str, FeatureValue] = field(default_factory=dict)

    def validated(self) -> PredictionRecord:
        """Checks every field; returns the record with timestamps converted to UTC.

        A record that needs no conversion (UTC timestamps, a float probability, bool flags:
        what the service builds) is returned as it is.
        """
        for name in _STRING_FIELDS:
            if not isinstance(getattr(self, name), str):
                raise PredictionLogError(f"field '{name}': expected a string")
        probability = self.probability
        if not isinstance(probability, int | float) or not 0.0 <= float(probability) <= 1.0:
            raise PredictionLogError(f"field 'probability': {probability!r} is not in [0, 1]")
        if self.arm not in ROUTING_ARMS:
            raise PredictionLogError(
                f"field 'arm': {self.arm!r} is not one of {ROUTING_ARMS}")
        propensity = self.propensity
        if not isinstance(propensity, int | float) or not 0.0 < float(propensity) <= 1.0:
            raise PredictionLogError(f"field 'propensity': {propensity!r} is not in (0, 1]")
        if not isinstance(self.features, dict):
            raise PredictionLogError("field 'features': expected a dict of feature values")
        features = self.features
        if not (_STR_ONLY.issuperset(map(type, features))  # the common case, checked in C
                and _PLAIN.issuperset(map(type, features.values()))):
            for key, value in features.items():
                if not isinstance(key, str):
                    raise PredictionLogError(f"field 'features': key {key!r} is not a string")
                if value is not None and not isinstance(value, int | float | str | bool):
                    raise PredictionLogError(
                        f"field 'features': value of {key!r} has type {type(value).__name__}; "
                        "expected float, int, str, bool or None"
                    )
        if (type(probability) is float and type(propensity) is float
                and type(self.control) is bool
                and type(self.degraded) is bool and _is_utc(self.submitted_at)
                and _is_utc(self.scored_at)):
            return self
        return PredictionRecord(
            **{f.name: getattr(self, f.name) for f in fields(self)}
            | {
                "submitted_at": _utc(self.submitted_at, "submitted_at"),
                "scored_at": _utc(self.scored_at, "scored_at"),
                "probability": float(probability),
                "propensity": float(propensity),
                "control": bool(self.control),
                "degraded": bool(self.degraded),
            }
        )


def _is_utc(value: object) -> bool:
    return isinstance(value, datetime) and value.tzinfo is UTC


def _features_json(features: dict[str, FeatureValue]) -> str:
    """Compact JSON of the features; NaN and infinities become null."""
    return to_json(features, inf_nan_mode="null").decode()


@runtime_checkable
class PredictionLog(Protocol):
    """Append-only store of predictions."""

    def append(self, records: Sequence[PredictionRecord], prevalidated: bool = False) -> None:
        """Store ``records`` in one durable transaction (all or none); ``prevalidated``:
        the caller already ran ``PredictionRecord.validated`` on each of them."""

    def read(self, since: datetime | None = None, until: datetime | None = None) -> pd.DataFrame:
        """Records with ``since <= submitted_at < until``, features expanded into columns."""

    def count(self) -> int:
        """Number of records stored."""

    def existing_request_ids(self, request_ids: Sequence[str]) -> set[str]:
        """Those of ``request_ids`` the log holds (a journal replay skips them)."""

    def close(self) -> None:
        """Release connections."""


def _frame(rows: list[tuple], feature_texts: list[Any]) -> pd.DataFrame:
    """Assemble the read result: record columns, then the expanded features."""
    base = pd.DataFrame.from_records(rows, columns=list(RECORD_COLUMNS))
    for name in TIMESTAMP_COLUMNS:
        if base.empty:
            base[name] = pd.Series(dtype="datetime64[us, UTC]")
        elif pd.api.types.is_integer_dtype(base[name]):
            base[name] = pd.to_datetime(base[name], unit="us", utc=True)
        else:
            base[name] = pd.to_datetime(base[name], utc=True)
    for name in BOOL_COLUMNS:
        base[name] = base[name].astype(bool)
    base["probability"] = base["probability"].astype(float)
    if not feature_texts:
        return base
    decoded = [json.loads(t) if isinstance(t, str) else (t or {}) for t in feature_texts]
    features = pd.DataFrame.from_records(decoded, index=base.index)
    features.columns = [feature_column(c) for c in features.columns]
    return pd.concat([base, features], axis=1)


def _record(row: Sequence[Any]) -> PredictionRecord:
    """A stored row (``RECORD_COLUMNS`` then the features' JSON) as a record."""
    values = dict(zip(RECORD_COLUMNS, row[:-1], strict=True))
    for name in TIMESTAMP_COLUMNS:
        value = values[name]
        values[name] = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)
                        if isinstance(value, int) else value.astimezone(UTC))
    for name in BOOL_COLUMNS:
        values[name] = bool(values[name])
    text = row[-1]
    return PredictionRecord(**values, features=json.loads(text) if isinstance(text, str)
                            else dict(text or {}))


def _check_range(since: datetime | None, until: datetime | None) -> None:
    if since is not None:
        _utc(since, "since")
    if until is not None:
        _utc(until, "until")
    if since is not None and until is not None and until <= since:
        raise PredictionLogError(f"'until' ({until.isoformat()}) must be after 'since'")


class SqlitePredictionLog:
    """The prediction log in a SQLite file (embedded profile)."""

    _SCHEMA = f"""
        CREATE TABLE IF NOT EXISTS {TABLE} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            request_id TEXT NOT NULL, lead_id TEXT NOT NULL, person_id TEXT NOT NULL,
            submitted_at INTEGER NOT NULL, scored_at INTEGER NOT NULL,
            probability REAL NOT NULL, tier TEXT NOT NULL, channel TEXT NOT NULL,
            control INTEGER NOT NULL, degraded INTEGER NOT NULL,
            model_name TEXT NOT NULL, model_version TEXT NOT NULL, policy_version TEXT NOT NULL,
            arm TEXT NOT NULL DEFAULT 'policy', propensity REAL NOT NULL DEFAULT 1.0,
            features TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS {TABLE}_submitted_at ON {TABLE} (submitted_at);
        CREATE INDEX IF NOT EXISTS {TABLE}_request_id ON {TABLE} (request_id);
        CREATE INDEX IF NOT EXISTS {TABLE}_scored_at ON {TABLE} (scored_at);
    """

    def __init__(self, path: Path | str, timeout_seconds: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.path, timeout=timeout_seconds, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(self._SCHEMA)
        present = {row[1] for row in self._conn.execute(f"PRAGMA table_info({TABLE})")}
        for column, declaration in ADDED_COLUMNS.items():  # a log written before they existed
            if column not in present:
                self._conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN {column} {declaration}")

    def append(self, records: Sequence[PredictionRecord], prevalidated: bool = False) -> None:
        """Store ``records`` in one transaction (validated first: a bad record stores nothing)."""
        rows = [self._row(r if prevalidated else r.validated()) for r in records]
        if not rows:
            return
        placeholders = ", ".join("?" * (len(RECORD_COLUMNS) + 1))
        sql = f"INSERT INTO {TABLE} ({', '.join(RECORD_COLUMNS)}, features) VALUES ({placeholders})"
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(sql, rows)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # a failed COMMIT (read-only file) leaves it open
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _row(r: PredictionRecord) -> tuple:
        return (
            r.request_id, r.lead_id, r.person_id, _to_micros(r.submitted_at),
            _to_micros(r.scored_at), r.probability, r.tier, r.channel, int(r.control),
            int(r.degraded), r.model_name, r.model_version, r.policy_version, r.arm,
            r.propensity, _features_json(r.features),
        )

    def read(self, since: datetime | None = None, until: datetime | None = None) -> pd.DataFrame:
        """Records with ``since <= submitted_at < until`` (either bound optional), in log order."""
        _check_range(since, until)
        clauses, params = [], []
        if since is not None:
            clauses.append("submitted_at >= ?")
            params.append(_to_micros(_utc(since, "since")))
        if until is not None:
            clauses.append("submitted_at < ?")
            params.append(_to_micros(_utc(until, "until")))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {', '.join(RECORD_COLUMNS)}, features FROM {TABLE}{where} ORDER BY id"
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return _frame([row[:-1] for row in rows], [row[-1] for row in rows])

    def answered_between(self, since: datetime, until: datetime) -> list[PredictionRecord]:
        """The records with ``since <= scored_at < until``, in log order (the lead state's
        recovery after a killed service: ``serving.rescoring``)."""
        _check_range(since, until)
        sql = (f"SELECT {', '.join(RECORD_COLUMNS)}, features FROM {TABLE} WHERE scored_at >= ? "
               "AND scored_at < ? ORDER BY id")
        params = [_to_micros(_utc(since, "since")), _to_micros(_utc(until, "until"))]
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [_record(row) for row in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0])

    def existing_request_ids(self, request_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        ids = list(request_ids)
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                sql = (f"SELECT request_id FROM {TABLE} WHERE request_id IN "
                       f"({', '.join('?' * len(chunk))})")
                found.update(row[0] for row in self._conn.execute(sql, chunk))
        return found

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqlitePredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def postgres_dsn(base_url: str, database: str) -> str:
    """``base_url`` (``postgresql://user@host:port[/db]``) pointed at ``database``."""
    parts = urlsplit(base_url)
    if parts.scheme not in {"postgresql", "postgres"}:
        raise PredictionLogError(
            f"config field 'postgres_url': {base_url!r} is not a postgresql:// URL"
        )
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


class PostgresPredictionLog:
    """The prediction log in PostgreSQL (production profile); same behaviour as SQLite's."""

    _SCHEMA = f"""
        CREATE TABLE IF NOT EXISTS {TABLE} (
            id BIGSERIAL PRIMARY KEY,
            request_id TEXT NOT NULL, lead_id TEXT NOT NULL, person_id TEXT NOT NULL,
            submitted_at TIMESTAMPTZ NOT NULL, scored_at TIMESTAMPTZ NOT NULL,
            probability DOUBLE PRECISION NOT NULL, tier TEXT NOT NULL, channel TEXT NOT NULL,
            control BOOLEAN NOT NULL, degraded BOOLEAN NOT NULL,
            model_name TEXT NOT NULL, model_version TEXT NOT NULL, policy_version TEXT NOT NULL,
            arm TEXT NOT NULL DEFAULT 'policy', propensity DOUBLE PRECISION NOT NULL DEFAULT 1.0,
            features TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS {TABLE}_submitted_at ON {TABLE} (submitted_at);
        CREATE INDEX IF NOT EXISTS {TABLE}_request_id ON {TABLE} (request_id);
        CREATE INDEX IF NOT EXISTS {TABLE}_scored_at ON {TABLE} (scored_at);
    """

    def __init__(self, dsn: str, connect_timeout: int = 5) -> None:
        import psycopg

        self.dsn = dsn
        self._lock = threading.Lock()
        self._connect_timeout = connect_timeout
        self._psycopg = psycopg
        self._conn = self._connect()
        with self._conn.transaction():
            # several processes may start at once: serialise the CREATEs
            self._conn.execute("SELECT pg_advisory_xact_lock(hashtext('leadscore_predictions'))")
            for statement in self._SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            for column, declaration in ADDED_COLUMNS.items():
                self._conn.execute(
                    f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {column} {declaration}")

    def _connect(self) -> Any:
        return self._psycopg.connect(self.dsn, connect_timeout=self._connect_timeout)

    def _connection(self) -> Any:
        if self._conn.closed or self._conn.broken:
            self._conn = self._connect()
        return self._conn

    def append(self, records: Sequence[PredictionRecord], prevalidated: bool = False) -> None:
        """Store ``records`` in one transaction (validated first: a bad record stores nothing)."""
        rows = [self._row(r if prevalidated else r.validated()) for r in records]
        if not rows:
            return
        placeholders = ", ".join(["%s"] * (len(RECORD_COLUMNS) + 1))
        sql = f"INSERT INTO {TABLE} ({', '.join(RECORD_COLUMNS)}, features) VALUES ({placeholders})"
        with self._lock:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows)

    @staticmethod
    def _row(r: PredictionRecord) -> tuple:
        return (
            r.request_id, r.lead_id, r.person_id, r.submitted_at, r.scored_at, r.probability,
            r.tier, r.channel, r.control, r.degraded, r.model_name, r.model_version,
            r.policy_version, r.arm, r.propensity, _features_json(r.features),
        )

    def read(self, since: datetime | None = None, until: datetime | None = None) -> pd.DataFrame:
        """Records with ``since <= submitted_at < until`` (either bound optional), in log order."""
        _check_range(since, until)
        clauses, params = [], []
        if since is not None:
            clauses.append("submitted_at >= %s")
            params.append(_utc(since, "since"))
        if until is not None:
            clauses.append("submitted_at < %s")
            params.append(_utc(until, "until"))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {', '.join(RECORD_COLUMNS)}, features FROM {TABLE}{where} ORDER BY id"
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                rows = conn.execute(sql, params).fetchall()
        return _frame([tuple(row[:-1]) for row in rows], [row[-1] for row in rows])

    def answered_between(self, since: datetime, until: datetime) -> list[PredictionRecord]:
        """The records with ``since <= scored_at < until``, in log order."""
        _check_range(since, until)
        sql = (f"SELECT {', '.join(RECORD_COLUMNS)}, features FROM {TABLE} WHERE scored_at >= %s "
               "AND scored_at < %s ORDER BY id")
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                rows = conn.execute(sql, [_utc(since, "since"), _utc(until, "until")]).fetchall()
        return [_record(row) for row in rows]

    def count(self) -> int:
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                return int(conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0])

    def existing_request_ids(self, request_ids: Sequence[str]) -> set[str]:
        if not request_ids:
            return set()
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                rows = conn.execute(f"SELECT request_id FROM {TABLE} WHERE request_id = ANY(%s)",
                                    [list(request_ids)]).fetchall()
        return {row[0] for row in rows}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PostgresPredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_prediction_log(settings: Settings) -> PredictionLog:
    """The log of the settings' profile: SQLite file (embedded) or PostgreSQL (production)."""
    if settings.profile == "production":
        database = settings.database_prefix  # POSTGRES_DATABASE for the default prefix
        from leadscore.profiles import ensure_databases

        ensure_databases(settings, [database])
        return PostgresPredictionLog(postgres_dsn(settings.postgres_url, database))
    return SqlitePredictionLog(settings.prediction_log_path)


def load_outcomes(settings: Settings) -> pd.DataFrame | None:
    """The CRM's outcomes table (``raw_dir/outcomes.parquet``), or None when there is none yet."""
    path = settings.raw_dir / "outcomes.parquet"
    if not path.exists():
        return None
    outcomes = pd.read_parquet(path)
    missing = [c for c in ("lead_id", "converted", "converted_at") if c not in outcomes.columns]
    if missing:
        raise PredictionLogError(f"{path}: outcomes table lacks column(s) {missing}")
    outcomes["converted_at"] = pd.to_datetime(outcomes["converted_at"], utc=True)
    return outcomes


def join_outcomes(
    predictions: pd.DataFrame, outcomes: pd.DataFrame, conversion_window_days: int
) -> pd.DataFrame:
    """Predictions of leads that have an outcome row, with ``converted`` (0/1) added.

    A lead counts as converted when it paid within ``conversion_window_days`` of its
    ``submitted_at``; a lead scored more than once keeps its first prediction.
    """
    for name, frame, needed in (
        ("predictions", predictions, ("lead_id", "submitted_at")),
        ("outcomes", outcomes, ("lead_id", "converted", "converted_at")),
    ):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise PredictionLogError(f"{name} lack column(s) {missing}")
    first = predictions.drop_duplicates("lead_id", keep="first")
    known = outcomes[["lead_id", "converted", "converted_at"]].drop_duplicates("lead_id")
    joined = first.merge(known, on="lead_id", how="inner", validate="one_to_one")
    window = pd.Timedelta(days=conversion_window_days)
    converted_at = pd.to_datetime(joined["converted_at"], utc=True)
    in_window = converted_at.isna() | (converted_at - joined["submitted_at"] <= window)
    joined["converted"] = (joined["converted"].astype(bool) & in_window).astype(int)
    return joined.drop(columns=["converted_at"])
