"""Who owns whom, who looked at whom, and the saved audiences: the workspace store.

Three tables, one behaviour on two back ends (``open_workspace``):

* ``assignments`` — the CRM's book of business: person → owning agent and the agent's team,
  appended (``POST /assignments`` or ``leadscore assignments ingest FILE``); the latest row of
  a person is its owner, earlier rows stay as history.
* ``access_log`` — one row per portrait read (granted or refused), audience member page and
  audience export: who (agent, role, team), whom (person id or audience id), when, what. Person
  ids are One ID's pseudonymous ``P-…`` ids; no raw identifier is ever written here.
* ``audiences`` — named condition trees (``features.audience``), versioned: saving a name again
  adds version n+1 under a new id.

Embedded profile: SQLite at ``settings.workspace_db_path`` (WAL). Production: the prediction
log's PostgreSQL database (``settings.database_prefix``), tables created when missing.
Timestamps are stored as UTC epoch microseconds.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from leadscore.config import Settings, production_service_url

ROLES: tuple[str, ...] = ("agent", "manager", "admin")
ACTIONS: tuple[str, ...] = ("portrait_read", "portrait_denied", "audience_members",
                            "audience_export", "audience_saved", "assignments_added")
AGENT_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
PERSON_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
AUDIENCE_NAME = re.compile(r"[\w .\-]{1,80}")
MAX_ASSIGNMENTS = 100_000  # rows per call
ACCESS_COLUMNS: tuple[str, ...] = ("at", "agent_id", "role", "team", "action", "person_id",
                                   "audience_id", "outcome", "detail")

_DDL = {
    "sqlite": (
        "CREATE TABLE IF NOT EXISTS assignments (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "person_id TEXT NOT NULL, agent_id TEXT NOT NULL, team TEXT NOT NULL, "
        "assigned_us INTEGER NOT NULL, assigned_by TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS access_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "at_us INTEGER NOT NULL, agent_id TEXT NOT NULL, role TEXT NOT NULL, team TEXT, "
        "action TEXT NOT NULL, person_id TEXT, audience_id INTEGER, outcome TEXT NOT NULL, "
        "detail TEXT)",
        "CREATE TABLE IF NOT EXISTS audiences (audience_id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "name TEXT NOT NULL, version INTEGER NOT NULL, tree TEXT NOT NULL, "
        "created_by TEXT NOT NULL, created_us INTEGER NOT NULL, UNIQUE (name, version))",
    ),
    "postgres": (
        "CREATE TABLE IF NOT EXISTS assignments (seq BIGSERIAL PRIMARY KEY, "
        "person_id TEXT NOT NULL, agent_id TEXT NOT NULL, team TEXT NOT NULL, "
        "assigned_us BIGINT NOT NULL, assigned_by TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS access_log (seq BIGSERIAL PRIMARY KEY, "
        "at_us BIGINT NOT NULL, agent_id TEXT NOT NULL, role TEXT NOT NULL, team TEXT, "
        "action TEXT NOT NULL, person_id TEXT, audience_id BIGINT, outcome TEXT NOT NULL, "
        "detail TEXT)",
        "CREATE TABLE IF NOT EXISTS audiences (audience_id BIGSERIAL PRIMARY KEY, "
        "name TEXT NOT NULL, version INTEGER NOT NULL, tree TEXT NOT NULL, "
        "created_by TEXT NOT NULL, created_us BIGINT NOT NULL, UNIQUE (name, version))",
    ),
}
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS assignments_person ON assignments (person_id, seq)",
    "CREATE INDEX IF NOT EXISTS assignments_agent ON assignments (agent_id)",
    "CREATE INDEX IF NOT EXISTS access_log_at ON access_log (at_us)",
    "CREATE INDEX IF NOT EXISTS access_log_person ON access_log (person_id)",
)


class WorkspaceError(ValueError):
    """A malformed assignment, query or audience; the message names the field."""


@dataclass(frozen=True)
class Assignment:
    """One ownership fact from the CRM: ``person_id`` belongs to ``agent_id`` of ``team``."""

    person_id: str
    agent_id: str
    team: str
    assigned_at: datetime | None = None


@dataclass(frozen=True)
class AccessEvent:
    """One row of the access log (``at`` is set when written)."""

    agent_id: str
    role: str
    team: str | None
    action: str
    outcome: str  # "granted" / "denied" / "ok"
    person_id: str | None = None
    audience_id: int | None = None
    detail: str | None = None


def now_us() -> int:
    return to_us(datetime.now(UTC))


def to_us(value: datetime) -> int:
    if value.tzinfo is None:
        raise WorkspaceError("timestamps must carry a time zone (UTC)")
    delta = value.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def check_assignment(a: Assignment, where: str) -> None:
    """Refuse an assignment whose ids are malformed (message names the row and field)."""
    if not isinstance(a.person_id, str) or not PERSON_ID.fullmatch(a.person_id):
        raise WorkspaceError(f"{where}: field 'person_id' must be 1-128 letters, digits or "
                             "'_.:-' (One ID's person id)")
    for name in ("agent_id", "team"):
        value = getattr(a, name)
        if not isinstance(value, str) or not AGENT_ID.fullmatch(value):
            raise WorkspaceError(f"{where}: field '{name}' must be 1-64 letters, digits or '_.-'")


class Workspace:
    """The workspace tables over one DB-API connection (SQLite or psycopg), thread-safe."""

    def __init__(self, connection: Any, dialect: str) -> None:
        self._conn = connection
        self.dialect = dialect
        self._lock = threading.Lock()
        with self._lock:
            cur = self._conn.cursor()
            for statement in (*_DDL[dialect], *_INDEXES):
                cur.execute(statement)
            self._conn.commit()

    # ---- plumbing -----------------------------------------------------------------------
    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.dialect == "postgres" else statement

    def _run(self, statement: str, params: Sequence[Any] = (), many: Iterable | None = None,
             fetch: bool = False) -> list[tuple]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                if many is not None:
                    cur.executemany(self._sql(statement), list(many))
                else:
                    cur.execute(self._sql(statement), tuple(params))
                rows = cur.fetchall() if fetch else []
                self._conn.commit()
            except Exception:
                self._conn.rollback()
                raise
            return rows

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---- assignments --------------------------------------------------------------------
    def assign(self, assignments: Sequence[Assignment], assigned_by: str) -> int:
        """Append ownership rows (all checked first; nothing is written when one is bad)."""
        if len(assignments) > MAX_ASSIGNMENTS:
            raise WorkspaceError(f"at most {MAX_ASSIGNMENTS:,} assignments per call; "
                                 f"got {len(assignments):,}")
        rows = []
        stamp = now_us()
        for i, a in enumerate(assignments):
            check_assignment(a, f"assignment {i}")
            at = stamp if a.assigned_at is None else to_us(a.assigned_at)
            rows.append((a.person_id, a.agent_id, a.team, at, assigned_by))
        if rows:
            self._run("INSERT INTO assignments (person_id, agent_id, team, assigned_us, "
                      "assigned_by) VALUES (?, ?, ?, ?, ?)", many=rows)
        return len(rows)

    def owner(self, person_id: str) -> tuple[str, str] | None:
        """``(agent_id, team)`` of the person's latest assignment, or None."""
        rows = self._run("SELECT agent_id, team FROM assignments WHERE person_id = ? "
                         "ORDER BY assigned_us DESC, seq DESC LIMIT 1", (person_id,), fetch=True)
        return (rows[0][0], rows[0][1]) if rows else None

    def owners(self) -> pd.DataFrame:
        """Current owner of every assigned person: ``person_id, agent_id, team``."""
        rows = self._run(
            "SELECT a.person_id, a.agent_id, a.team FROM assignments a JOIN ("
            "SELECT person_id, MAX(seq) AS seq FROM assignments GROUP BY person_id) m "
            "ON a.seq = m.seq", fetch=True)
        return pd.DataFrame(rows, columns=["person_id", "agent_id", "team"])

    # ---- access log ---------------------------------------------------------------------
    def log_access(self, event: AccessEvent) -> None:
        if event.action not in ACTIONS:
            raise WorkspaceError(f"unknown access action {event.action!r}; known: {ACTIONS}")
        self._run("INSERT INTO access_log (at_us, agent_id, role, team, action, person_id, "
                  "audience_id, outcome, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (now_us(), event.agent_id, event.role, event.team, event.action,
                   event.person_id, event.audience_id, event.outcome, event.detail))

    def read_access(self, since: datetime | None = None, until: datetime | None = None,
                    agent_id: str | None = None, person_id: str | None = None,
                    action: str | None = None, limit: int = 1000) -> pd.DataFrame:
        """Access-log rows, newest first, filtered (``limit`` rows at most)."""
        if action is not None and action not in ACTIONS:
            raise WorkspaceError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
        if since is not None and until is not None and since >= until:
            raise WorkspaceError("'since' must be before 'until'")
        if not 1 <= limit <= 1_000_000:
            raise WorkspaceError("'limit' must be between 1 and 1,000,000")
        where, params = [], []
        for column, value in (("at_us >= ?", since), ("at_us < ?", until)):
            if value is not None:
                where.append(column)
                params.append(to_us(value))
        for column, value in (("agent_id", agent_id), ("person_id", person_id),
                              ("action", action)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._run("SELECT at_us, agent_id, role, team, action, person_id, audience_id, "
                         f"outcome, detail FROM access_log{clause} ORDER BY at_us DESC, seq DESC "
                         f"LIMIT {int(limit)}", params, fetch=True)
        frame = pd.DataFrame(rows, columns=list(ACCESS_COLUMNS))
        frame["at"] = pd.to_datetime(frame["at"].astype("int64"), unit="us", utc=True)
        return frame

    # ---- audiences ----------------------------------------------------------------------
    def save_audience(self, name: str, tree: dict, created_by: str) -> tuple[int, int]:
        """Store ``tree`` under ``name`` as its next version: ``(audience_id, version)``."""
        if not isinstance(name, str) or not AUDIENCE_NAME.fullmatch(name.strip()) \
                or name != name.strip():
            raise WorkspaceError("field 'name': 1-80 letters, digits, spaces or '_.-', without "
                                 "leading or trailing spaces")
        text = json.dumps(tree, sort_keys=True, separators=(",", ":"))
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute(self._sql("SELECT COALESCE(MAX(version), 0) FROM audiences "
                                      "WHERE name = ?"), (name,))
                version = int(cur.fetchone()[0]) + 1
                insert = ("INSERT INTO audiences (name, version, tree, created_by, created_us) "
                          "VALUES (?, ?, ?, ?, ?)")
                params = (name, version, text, created_by, now_us())
                if self.dialect == "postgres":
                    cur.execute(self._sql(insert) + " RETURNING audience_id", params)
                    audience_id = int(cur.fetchone()[0])
                else:
                    cur.execute(insert, params)
                    audience_id = int(cur.lastrowid)
                self._conn.commit()
            except Exception:
                self._conn.rollback()
                raise
        return audience_id, version

    def audience(self, audience_id: int) -> dict | None:
        rows = self._run("SELECT audience_id, name, version, tree, created_by, created_us "
                         "FROM audiences WHERE audience_id = ?", (int(audience_id),), fetch=True)
        if not rows:
            return None
        aid, name, version, tree, by, created = rows[0]
        return {"audience_id": int(aid), "name": name, "version": int(version),
                "tree": json.loads(tree), "created_by": by,
                "created_at": datetime.fromtimestamp(created / 1e6, UTC).isoformat()}

    def audiences(self) -> list[dict]:
        rows = self._run("SELECT audience_id, name, version, created_by, created_us FROM "
                         "audiences ORDER BY audience_id", fetch=True)
        return [{"audience_id": int(a), "name": n, "version": int(v), "created_by": b,
                 "created_at": datetime.fromtimestamp(c / 1e6, UTC).isoformat()}
                for a, n, v, b, c in rows]


def open_workspace(settings: Settings) -> Workspace:
    """The workspace of the active profile (tables created when missing)."""
    if settings.profile == "production":
        import psycopg

        from leadscore.profiles import ensure_databases

        ensure_databases(settings)
        conn = psycopg.connect(production_service_url(settings, "prediction_log"),
                               connect_timeout=5)
        return Workspace(conn, "postgres")
    path = Path(settings.workspace_db_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: a commit survives the process (a crash, a kill); only the operating system
    # failing can lose the last ones. FULL would fsync every portrait read's log row while the
    # workspace lock is held, capping reads at the disk's fsync rate.
    conn.execute("PRAGMA synchronous=NORMAL")
    return Workspace(conn, "sqlite")


def read_assignments_file(path: Path) -> list[Assignment]:
    """An ingestable assignments table (CSV or Parquet: ``person_id, agent_id, team`` and an
    optional ``assigned_at``), every row checked (the message names the row and field)."""
    path = Path(path)
    if not path.is_file():
        raise WorkspaceError(f"assignments file {path} does not exist")
    if path.suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    elif path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        raise WorkspaceError(f"{path.name}: expected a .csv or .parquet file")
    missing = [c for c in ("person_id", "agent_id", "team") if c not in frame.columns]
    if missing:
        raise WorkspaceError(f"{path.name}: missing column(s) {', '.join(missing)}")
    stamps = (pd.to_datetime(frame["assigned_at"], utc=True, errors="coerce")
              if "assigned_at" in frame.columns else None)
    out = []
    for i, row in enumerate(frame.itertuples(index=False)):
        at = None
        if stamps is not None:
            if pd.isna(stamps.iloc[i]) and not pd.isna(frame["assigned_at"].iloc[i]):
                raise WorkspaceError(f"{path.name} row {i + 1}: field 'assigned_at' is not a "
                                     "timestamp")
            at = None if pd.isna(stamps.iloc[i]) else stamps.iloc[i].to_pydatetime()
        a = Assignment(str(row.person_id), str(row.agent_id), str(row.team), at)
        check_assignment(a, f"{path.name} row {i + 1}")
        out.append(a)
    return out
