"""The person store behind portraits and audiences: One ID's persons with their tags, masked
identifiers, leads, behaviour and scores, in one DuckDB file (``settings.portrait_store_path``).

``build_portrait_store(settings)`` reads the raw tables, One ID's maps, the identifier masks
made at the door (``crm_data.ingest.MASKS_FILE``) and the prediction log, and writes (through a
temporary file and a rename, so readers never see half a store) a DuckDB file (audience counts
scan its ``persons`` and ``events``) and, beside it, an indexed SQLite file
(``portrait.sqlite``, ``write_lookup``: a portrait reads one person's rows in a few B-tree
lookups, ~1 ms, where DuckDB pays 5-30 ms per point query):

* ``persons`` — one row per person, tags as of the build: ``source`` (acquisition channel of
  the latest lead), ``grade``, ``subject``, ``city``, ``city_tier``, ``funnel_step``,
  ``lead_count``, ``first_seen``, ``last_seen``; RFM (``recency_days``, ``frequency``,
  ``monetary``, ``rfm_segment``); the 2-D score (``fit_score``, ``interest_score``,
  ``rule_score``); predictive (``probability``, ``tier``, ``channel``, ``scored_at`` of the
  latest logged prediction, ``trend``: its probability minus the one before);
* ``identifiers`` — ``person_id, id_type, masked`` (null when no masked form was recorded);
* ``leads`` — ``person_id, lead_id, created_at, channel, campaign, landing_page, funnel_step``;
* ``events`` — ``pk`` (the person's dense key, ``persons.pk``), ``event_type, event_time,
  url``, clustered by type and time (an audience leaf reads its type's recent blocks only); in
  SQLite ``timeline``, the same keyed by person id and time;
* ``predictions`` — ``person_id, lead_id, scored_at, probability, tier, channel``;
* ``meta`` — ``built_at``, ``first_event``, ``last_event``.

No raw identifier is read or written: identities are hashes, masks were made at the door, URLs
are scrubbed (``leadscore.identifiers.scrub_url``). ``write_store`` takes the frames directly
(the audience benchmark builds its million persons that way). ``copy_store_to_postgres`` loads
the same tables into the production database, where ``features.audience`` compiles to
PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from crm_data.ingest import MASKS_FILE
from crm_data.prediction_log import open_prediction_log
from features import request, score2d
from features.audience import DataBounds
from features.behaviour import behaviour_events
from leadscore.config import Settings
from leadscore.identifiers import scrub_url

TABLES: tuple[str, ...] = ("persons", "identifiers", "leads", "events", "timeline",
                           "predictions", "meta")
PERSON_COLUMNS: dict[str, str] = {
    "person_id": "VARCHAR", "source": "VARCHAR", "grade": "VARCHAR", "subject": "VARCHAR",
    "city": "VARCHAR", "city_tier": "INTEGER", "funnel_step": "VARCHAR",
    "lead_count": "INTEGER", "first_seen": "TIMESTAMPTZ", "last_seen": "TIMESTAMPTZ",
    "recency_days": "DOUBLE", "frequency": "INTEGER", "monetary": "DOUBLE",
    "rfm_segment": "VARCHAR", "fit_score": "DOUBLE", "interest_score": "DOUBLE",
    "rule_score": "DOUBLE", "probability": "DOUBLE", "tier": "VARCHAR", "channel": "VARCHAR",
    "scored_at": "TIMESTAMPTZ", "trend": "DOUBLE",
}
EVENT_COLUMNS: dict[str, str] = {"person_id": "VARCHAR", "event_type": "VARCHAR",
                                 "event_time": "TIMESTAMPTZ", "url": "VARCHAR"}
COLUMNS: dict[str, dict[str, str]] = {
    "persons": PERSON_COLUMNS,
    "identifiers": {"person_id": "VARCHAR", "id_type": "VARCHAR", "masked": "VARCHAR"},
    "leads": {"person_id": "VARCHAR", "lead_id": "VARCHAR", "created_at": "TIMESTAMPTZ",
              "channel": "VARCHAR", "campaign": "VARCHAR", "landing_page": "VARCHAR",
              "funnel_step": "VARCHAR"},
    "events": EVENT_COLUMNS,
    "predictions": {"person_id": "VARCHAR", "lead_id": "VARCHAR", "scored_at": "TIMESTAMPTZ",
                    "probability": "DOUBLE", "tier": "VARCHAR", "channel": "VARCHAR"},
}




def _quiet(conn: Any) -> Any:
    """A DuckDB connection that prints no progress bar (a server's or a job's output)."""
    conn.execute("SET enable_progress_bar = false")
    return conn


class PortraitStoreError(RuntimeError):
    """The store is missing or cannot be built (the message says what to run)."""


@dataclass
class BuildResult:
    path: Path
    persons: int
    events: int
    predictions: int
    masked_identifiers: int
    seconds: float


# ---- writing ------------------------------------------------------------------------------
def _typed(frame: pd.DataFrame, columns: dict[str, str], table: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PortraitStoreError(f"table '{table}': missing column(s) {', '.join(missing)}")
    return frame[list(columns)]


def write_store(path: Path, frames: dict[str, pd.DataFrame], built_at: datetime | None = None,
                threads: int | None = None) -> Path:
    """Write the store's tables from frames (``COLUMNS`` give each table's columns) into a new
    DuckDB file, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    conn = _quiet(duckdb.connect(str(temp)))
    try:
        if threads:
            conn.execute(f"SET threads = {int(threads)}")
        for table, columns in COLUMNS.items():
            if table == "events":
                continue
            frame = _typed(frames[table], columns, table)
            conn.register("incoming", frame)
            casts = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in columns.items())
            order = {"persons": "person_id", "identifiers": "person_id", "leads":
                     "person_id, created_at", "predictions": "person_id, scored_at"}[table]
            key = (f"CAST(row_number() OVER (ORDER BY {order}) - 1 AS INTEGER) AS pk, "
                   if table == "persons" else "")
            conn.execute(f"CREATE TABLE {table} AS SELECT {key}{casts} FROM incoming "
                         f"ORDER BY {order}")
            conn.unregister("incoming")
        events = _typed(frames["events"], EVENT_COLUMNS, "events")
        conn.register("incoming", events)
        casts = ", ".join(f"CAST(e.{c} AS {t}) AS {c}" for c, t in EVENT_COLUMNS.items()
                          if c != "person_id")
        conn.execute(f"CREATE TABLE events AS SELECT p.pk, {casts} FROM incoming e JOIN persons p"
                     " ON p.person_id = e.person_id ORDER BY event_type, event_time")
        conn.unregister("incoming")
        first, last = conn.execute("SELECT MIN(event_time), MAX(event_time) FROM events"
                                   ).fetchone()
        built = built_at or datetime.now(UTC)
        conn.execute("CREATE TABLE meta (key VARCHAR, value TIMESTAMPTZ)")
        conn.executemany("INSERT INTO meta VALUES (?, ?)",
                         [("built_at", built), ("first_event", first), ("last_event", last)])
        conn.execute("CHECKPOINT")
    except BaseException:
        conn.close()
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    conn.close()
    try:
        write_lookup(temp, lookup_path(path))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    os.replace(temp, path)
    return path


def lookup_path(store_path: Path) -> Path:
    """The SQLite file of one person's rows beside the DuckDB store (``portrait.sqlite``)."""
    return Path(store_path).with_suffix(".sqlite")


# SQLite tables of the portrait lookups: name → (columns, DuckDB select, key)
_TS = "epoch_us({0}) AS {0}"
LOOKUP_TABLES: dict[str, tuple[str, str, str]] = {
    "persons": (", ".join(PERSON_COLUMNS),
                "SELECT " + ", ".join(_TS.format(c) if t == "TIMESTAMPTZ" else c
                                      for c, t in PERSON_COLUMNS.items())
                + " FROM persons ORDER BY person_id",
                "PRIMARY KEY (person_id)"),
    "identifiers": ("person_id, id_type, masked",
                    "SELECT person_id, id_type, masked FROM identifiers ORDER BY person_id",
                    ""),
    "leads": ("person_id, lead_id, created_at, channel, campaign, landing_page, funnel_step",
              "SELECT person_id, lead_id, epoch_us(created_at), channel, campaign, "
              "landing_page, funnel_step FROM leads ORDER BY person_id, created_at", ""),
    "predictions": ("person_id, lead_id, scored_at, probability, tier, channel",
                    "SELECT person_id, lead_id, epoch_us(scored_at), probability, tier, channel "
                    "FROM predictions ORDER BY person_id, scored_at", ""),
    "timeline": ("person_id, event_time, seq, event_type, url",
                 "SELECT p.person_id, epoch_us(e.event_time), row_number() OVER (), "
                 "e.event_type, e.url FROM events e JOIN persons p ON p.pk = e.pk "
                 "ORDER BY p.person_id, e.event_time",
                 "PRIMARY KEY (person_id, event_time, seq)"),
    "meta": ("key, value", "SELECT key, epoch_us(value) FROM meta", ""),
}
LOOKUP_INDEXES = (
    "CREATE INDEX identifiers_person ON identifiers (person_id)",
    "CREATE INDEX leads_person ON leads (person_id, created_at)",
    "CREATE INDEX predictions_person ON predictions (person_id, scored_at)",
)


def write_lookup(store_path: Path, target: Path, batch: int = 200_000) -> Path:
    """Copy one person's rows of a DuckDB store into an indexed SQLite file (portraits read a
    person in a few B-tree lookups), through a temporary file and a rename."""
    target = Path(target)
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    source = _quiet(duckdb.connect(str(store_path), read_only=True))
    sink = sqlite3.connect(temp)
    try:
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "locking_mode=EXCLUSIVE",
                       "cache_size=-262144", "temp_store=MEMORY"):
            sink.execute(f"PRAGMA {pragma}")
        for table, (columns, select, key) in LOOKUP_TABLES.items():
            rowid = " WITHOUT ROWID" if key else ""
            sink.execute(f"CREATE TABLE {table} ({columns}{', ' + key if key else ''}){rowid}")
            marks = ", ".join("?" * len(columns.split(", ")))
            result = source.execute(select)
            while rows := result.fetchmany(batch):
                sink.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        for statement in LOOKUP_INDEXES:
            sink.execute(statement)
        sink.commit()
        sink.close()
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
    except BaseException:
        sink.close()
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    finally:
        source.close()
    os.replace(temp, target)
    return target


def _read(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    if not path.is_file():
        raise PortraitStoreError(f"{path} is missing: run `leadscore generate` (or ingest) and "
                                 "`leadscore identity` first")
    return pd.read_parquet(path, columns=columns)


def compute_frames(settings: Settings, now: datetime | None = None) -> dict[str, pd.DataFrame]:
    """The store's tables from the work folder's raw tables, One ID and prediction log."""
    now = now or datetime.now(UTC)
    leads = _read(settings.raw_dir / "leads.parquet")
    lead_person = _read(settings.identity_dir / "lead_person.parquet", ["lead_id", "person_id"])
    events = behaviour_events(_read(settings.raw_dir / "events.parquet",
                                    ["lead_id", "event_type", "event_time", "url"]))
    identities = _read(settings.raw_dir / "identities.parquet", ["lead_id", "id_type", "id_hash"])
    masks_path = settings.raw_dir / MASKS_FILE
    masks = (pd.read_parquet(masks_path, columns=["id_hash", "masked"]) if masks_path.is_file()
             else pd.DataFrame({"id_hash": pd.Series([], dtype=object),
                                "masked": pd.Series([], dtype=object)}))
    person_of = lead_person.drop_duplicates("lead_id").set_index("lead_id")["person_id"]

    leads = leads.assign(person_id=leads["lead_id"].map(person_of))
    leads["person_id"] = leads["person_id"].fillna("lead:" + leads["lead_id"].astype(str))
    leads["created_at"] = pd.to_datetime(leads["created_at"], utc=True)
    leads["landing_page"] = [scrub_url(u) if isinstance(u, str) else u
                             for u in leads["landing_page"]]

    events = events.assign(person_id=events["lead_id"].map(person_of)).dropna(
        subset=["person_id"])
    events["event_time"] = pd.to_datetime(events["event_time"], utc=True)
    urls = events["url"].astype(object)
    distinct = {u: scrub_url(u) for u in pd.unique(urls) if isinstance(u, str)}
    events["url"] = urls.map(distinct)

    ids = identities.assign(person_id=identities["lead_id"].map(person_of)).dropna(
        subset=["person_id"]).drop_duplicates(["person_id", "id_hash"])
    ids = ids.merge(masks, on="id_hash", how="left")[["person_id", "id_type", "masked"]]

    predictions = _predictions(settings, person_of)
    persons = person_tags(leads, events, predictions, _orders(settings), settings, now)
    return {"persons": persons, "identifiers": ids,
            "leads": leads[list(COLUMNS["leads"])], "events": events[list(EVENT_COLUMNS)],
            "predictions": predictions}


def _predictions(settings: Settings, person_of: pd.Series) -> pd.DataFrame:
    columns = list(COLUMNS["predictions"])
    if settings.profile == "embedded" and not settings.prediction_log_path.is_file():
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    log = open_prediction_log(settings)
    try:
        frame = log.read()
    finally:
        log.close()
    if frame.empty:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    by_lead = frame["lead_id"].map(person_of)
    frame["person_id"] = by_lead.fillna(frame["person_id"])
    frame["scored_at"] = pd.to_datetime(frame["scored_at"], utc=True)
    return frame[columns]


def _orders(settings: Settings) -> pd.DataFrame:
    """Orders mapped to persons: ``person_id, ordered_at, amount``."""
    path = settings.raw_dir / "orders.parquet"
    id_path = settings.identity_dir / "identifier_person.parquet"
    if not path.is_file() or not id_path.is_file():
        return pd.DataFrame({"person_id": [], "ordered_at": [], "amount": []})
    orders = pd.read_parquet(path, columns=["id_hash", "ordered_at", "amount"])
    owner = pd.read_parquet(id_path, columns=["id_hash", "person_id"]).drop_duplicates("id_hash")
    orders = orders.merge(owner, on="id_hash", how="inner")
    orders["ordered_at"] = pd.to_datetime(orders["ordered_at"], utc=True)
    return orders[["person_id", "ordered_at", "amount"]]


def person_tags(leads: pd.DataFrame, events: pd.DataFrame, predictions: pd.DataFrame,
                orders: pd.DataFrame, settings: Settings, now: datetime) -> pd.DataFrame:
    """One row per person: fact, RFM, 2-D and predictive tags as of ``now``."""
    tables = score2d.load_scoring_tables(settings.scoring_config)
    latest = leads.sort_values(["created_at", "lead_id"]).groupby("person_id").tail(1)
    latest = latest.set_index("person_id")
    counts = leads.groupby("person_id").agg(lead_count=("lead_id", "size"),
                                            first_seen=("created_at", "min"),
                                            last_seen=("created_at", "max"))
    persons = counts.join(latest[["channel", "grade", "subject", "city", "city_tier",
                                  "funnel_step", "phone_valid", "email_domain_type"]])
    form = request.normalise_submission({c: persons[c].tolist() for c in (
        "channel", "grade", "subject", "city_tier", "funnel_step", "phone_valid",
        "email_domain_type")}, len(persons))
    persons["source"] = form["channel"]
    persons["grade"] = [None if g == "unknown" else g for g in form["grade"]]
    persons["subject"] = [None if s == "unknown" else s for s in form["subject"]]
    persons["city_tier"] = [None if t == 0 else t for t in form["city_tier"]]
    persons["fit_score"] = score2d.fit_score(
        tables, phone_valid=form["phone_valid"], email_domain_type=form["email_domain_type"],
        city_tier=form["city_tier"], grade=form["grade"], funnel_step=form["funnel_step"],
        channel=form["channel"])

    def in_days(days: int, types: tuple[str, ...] | None = None) -> pd.Series:
        recent = events[(events["event_time"] > now - pd.Timedelta(days=days))
                        & (events["event_time"] <= now)]
        if types is not None:
            recent = recent[recent["event_type"].isin(types)]
        return recent.groupby("person_id").size().reindex(persons.index, fill_value=0)

    last_touch = events[events["event_time"] <= now].groupby("person_id")["event_time"].max()
    quiet = ((now - last_touch.reindex(persons.index)).dt.total_seconds() / 86_400).fillna(9999)
    persons["interest_score"] = score2d.interest_score(
        tables, offline_event_90d=in_days(90, ("offline_event",)),
        live_class_90d=in_days(90, ("live_class",)),
        download_90d=in_days(90, ("whitepaper_download",)),
        email_open_90d=in_days(90, ("email_open",)),
        site_visits_180d=in_days(request.SITE_WINDOW_DAYS, tuple(request.SITE_EVENT_TYPES)),
        days_since_last_touch=quiet.to_numpy())
    persons["rule_score"] = persons["fit_score"] + persons["interest_score"]

    past = orders[orders["ordered_at"] <= now]
    rfm = past.groupby("person_id").agg(frequency=("amount", "size"), monetary=("amount", "sum"),
                                        last=("ordered_at", "max")).reindex(persons.index)
    persons["frequency"] = rfm["frequency"].fillna(0).astype(int)
    persons["monetary"] = rfm["monetary"].fillna(0.0)
    persons["recency_days"] = ((now - rfm["last"]).dt.total_seconds() / 86_400).fillna(9999.0)
    persons["rfm_segment"] = request.rfm_segment_codes(
        persons["recency_days"].to_numpy(), persons["frequency"].to_numpy(),
        persons["monetary"].to_numpy(), tables.table("rfm_thresholds"))

    ordered = predictions.sort_values(["person_id", "scored_at"])
    last = ordered.groupby("person_id").tail(1).set_index("person_id")
    previous = ordered.groupby("person_id")["probability"].nth(-2)
    previous.index = ordered.loc[previous.index, "person_id"]
    persons = persons.join(last[["probability", "tier", "channel", "scored_at"]],
                           rsuffix="_predicted")
    persons["channel"] = persons["channel_predicted"]
    persons["trend"] = persons["probability"] - previous.reindex(persons.index)
    persons = persons.reset_index().rename(columns={"index": "person_id"})
    return persons[list(PERSON_COLUMNS)]


def build_portrait_store(settings: Settings, now: datetime | None = None) -> BuildResult:
    """Build the store of the work folder (``settings.portrait_store_path``)."""
    started = datetime.now(UTC)
    frames = compute_frames(settings, now)
    path = write_store(settings.portrait_store_path, frames, built_at=now)
    return BuildResult(path, len(frames["persons"]), len(frames["events"]),
                       len(frames["predictions"]),
                       int(frames["identifiers"]["masked"].notna().sum()),
                       (datetime.now(UTC) - started).total_seconds())


# ---- reading ------------------------------------------------------------------------------
class PortraitStore:
    """Read-only access to a built store: DuckDB for audiences (``cursor``), the SQLite lookup
    file for portraits; one connection of each per thread."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        path = Path(path)
        lookup = lookup_path(path)
        if not path.is_file() or not lookup.is_file():
            raise PortraitStoreError(f"no person store at {path}: run `leadscore portrait build`")
        self.path = path
        self.lookup = lookup
        self.dialect = "duckdb"
        config = {"threads": int(threads)} if threads else {}
        self._conn = _quiet(duckdb.connect(str(path), read_only=True, config=config))
        self._local = threading.local()
        self.mtime = store_mtime(path)
        rows = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        self.bounds = DataBounds(_utc(rows.get("first_event")), _utc(rows.get("last_event")))
        self.built_at = _utc(rows.get("built_at"))

    def cursor(self) -> Any:
        """A DuckDB connection for this thread (connections are not shared across threads)."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = _quiet(self._conn.cursor())
            self._local.cursor = cur
        return cur

    def _sqlite(self) -> sqlite3.Connection:
        conn = getattr(self._local, "sqlite", None)
        if conn is None:  # the file is replaced by rename, never changed: immutable
            conn = sqlite3.connect(f"file:{self.lookup}?mode=ro&immutable=1", uri=True,
                                   check_same_thread=False)
            self._local.sqlite = conn
        return conn

    def query(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        return self.cursor().execute(sql, list(params)).fetchall()

    def frame(self, sql: str, params: list | tuple = ()) -> pd.DataFrame:
        return self.cursor().execute(sql, list(params)).df()

    def lookup_rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._sqlite().execute(sql, params).fetchall()

    def close(self) -> None:
        self._conn.close()

    # ---- a portrait ---------------------------------------------------------------------
    def portrait(self, person_id: str, page: int = 1, page_size: int = 50) -> dict | None:
        """Profile, tags, leads with their scores over time and one timeline page (newest
        first); None when the person is not in the store. ``ValueError`` for a page past
        the end."""
        db = self._sqlite()
        row = db.execute(f"SELECT {', '.join(PERSON_COLUMNS)} FROM persons WHERE person_id = ?",
                         (person_id,)).fetchone()
        if row is None:
            return None
        p = dict(zip(PERSON_COLUMNS, row, strict=True))
        by_type = dict(db.execute("SELECT event_type, COUNT(*) FROM timeline WHERE "
                                  "person_id = ? GROUP BY event_type", (person_id,)).fetchall())
        total = sum(by_type.values())
        pages = max(1, -(-total // page_size))
        if page > pages:
            raise ValueError(f"page {page} is past the end: the timeline has {total} event(s), "
                             f"{pages} page(s) of {page_size}")
        timeline = db.execute(
            "SELECT event_time, event_type, url FROM timeline WHERE person_id = ? "
            "ORDER BY event_time DESC, seq DESC LIMIT ? OFFSET ?",
            (person_id, page_size, (page - 1) * page_size)).fetchall()
        last_event = db.execute("SELECT MAX(event_time) FROM timeline WHERE person_id = ?",
                                (person_id,)).fetchone()[0]
        identifiers = db.execute("SELECT id_type, masked FROM identifiers WHERE person_id = ? "
                                 "ORDER BY id_type, masked", (person_id,)).fetchall()
        leads = db.execute("SELECT lead_id, created_at, channel, campaign, landing_page, "
                           "funnel_step FROM leads WHERE person_id = ? ORDER BY created_at",
                           (person_id,)).fetchall()
        scores = db.execute("SELECT lead_id, scored_at, probability, tier, channel FROM "
                            "predictions WHERE person_id = ? ORDER BY scored_at",
                            (person_id,)).fetchall()
        by_lead: dict[str, list[dict]] = {}
        for lead_id, at, prob, tier, channel in scores:
            by_lead.setdefault(lead_id, []).append(
                {"scored_at": _iso_us(at), "probability": _num(prob), "tier": tier,
                 "channel": channel})
        return {
            "person_id": person_id,
            "identifiers": [{"type": t, "masked": m} for t, m in identifiers],
            "profile": {"grade": p["grade"], "subject": p["subject"], "city": p["city"],
                        "city_tier": _int(p["city_tier"]),
                        "first_seen": _iso_us(p["first_seen"]),
                        "last_seen": _iso_us(p["last_seen"]), "lead_count": _int(p["lead_count"])},
            "tags": {
                "fact": {"source": p["source"], "funnel_step": p["funnel_step"],
                         "events_by_type": {k: int(v) for k, v in sorted(by_type.items())},
                         "last_event": _iso_us(last_event)},
                "rfm": {"segment": p["rfm_segment"], "recency_days": _num(p["recency_days"]),
                        "frequency": _int(p["frequency"]), "monetary": _num(p["monetary"])},
                "score_2d": {"fit": _num(p["fit_score"]), "interest": _num(p["interest_score"]),
                             "total": _num(p["rule_score"])},
                "predictive": {"probability": _num(p["probability"]), "tier": p["tier"],
                               "channel": p["channel"], "scored_at": _iso_us(p["scored_at"]),
                               "trend": _num(p["trend"])},
            },
            "leads": [{"lead_id": lid, "created_at": _iso_us(at), "channel": ch,
                       "campaign": camp, "landing_page": page_url, "funnel_step": step,
                       "scores": by_lead.get(lid, [])}
                      for lid, at, ch, camp, page_url, step in leads],
            "timeline": {"page": page, "page_size": page_size, "total": total, "pages": pages,
                         "events": [{"event_time": _iso_us(t), "event_type": et, "url": u}
                                    for t, et, u in timeline]},
            "as_of": _iso(self.built_at),
        }


def store_mtime(path: Path) -> tuple[float, float]:
    """When the store's two files last changed (a rebuild replaces both)."""
    return Path(path).stat().st_mtime, lookup_path(path).stat().st_mtime


def _iso_us(value: int | None) -> str | None:
    if value is None:
        return None
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(value))).isoformat()


def _utc(value: Any) -> datetime | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.to_pydatetime()


def _iso(value: Any) -> str | None:
    if value is None or value is pd.NaT or (isinstance(value, float) and np.isnan(value)):
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    stamp = _utc(value)
    return None if stamp is None else stamp.isoformat()


def _none(value: Any) -> Any:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value


def _num(value: Any) -> float | None:
    value = _none(value)
    return None if value is None else round(float(value), 6)


def _int(value: Any) -> int | None:
    value = _none(value)
    return None if value is None else int(value)


# ---- production: the same tables in PostgreSQL ----------------------------------------------
PG_TYPES = {"VARCHAR": "TEXT", "INTEGER": "INTEGER", "DOUBLE": "DOUBLE PRECISION",
            "TIMESTAMPTZ": "TIMESTAMPTZ"}


def copy_store_to_postgres(store_path: Path, dsn: str, schema: str = "audience") -> dict[str, int]:
    """Load the persons and events tables of a built store into PostgreSQL schema ``schema``
    (replaced), with the indexes the audience queries use. Returns rows per table."""
    import psycopg
    from psycopg import sql

    source = _quiet(duckdb.connect(str(store_path), read_only=True))
    counts: dict[str, int] = {}
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            stored_events = {"pk": "INTEGER", **{c: t for c, t in EVENT_COLUMNS.items()
                                                 if c != "person_id"}}
            for table, columns in (("persons", {"pk": "INTEGER", **PERSON_COLUMNS}),
                                   ("events", stored_events)):
                ddl = ", ".join(f"{c} {PG_TYPES[t]}" for c, t in columns.items())
                cur.execute(sql.SQL("CREATE TABLE {}.{} (" + ddl + ")").format(
                    sql.Identifier(schema), sql.Identifier(table)))
                names = list(columns)
                copy = sql.SQL("COPY {}.{} ({}) FROM STDIN").format(
                    sql.Identifier(schema), sql.Identifier(table),
                    sql.SQL(", ").join(map(sql.Identifier, names)))
                result = source.execute(f"SELECT {', '.join(names)} FROM {table}")
                n = 0
                with cur.copy(copy) as sink:
                    while batch := result.fetchmany(50_000):
                        for row in batch:
                            sink.write_row(row)
                        n += len(batch)
                counts[table] = n
            cur.execute(sql.SQL("CREATE INDEX ON {}.events (event_type, event_time)").format(
                sql.Identifier(schema)))
            cur.execute(sql.SQL("CREATE UNIQUE INDEX ON {}.persons (pk)").format(
                sql.Identifier(schema)))
            cur.execute(sql.SQL("ANALYZE {}.events").format(sql.Identifier(schema)))
            cur.execute(sql.SQL("ANALYZE {}.persons").format(sql.Identifier(schema)))
            conn.commit()
    finally:
        source.close()
    return counts
