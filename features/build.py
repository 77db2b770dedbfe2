"""Offline build orchestration: raw CRM tables + One ID → the Feast offline tables; online load.

``build_features(settings)`` reads ``settings.raw_dir/{leads,events,orders}.parquet`` and
``settings.identity_dir/{lead_person,identifier_person}.parquet`` and writes into
``settings.features_dir``:

- ``lead_facts.parquet`` — one row per lead (``lead_id``, ``created_at``; ``features.tags``);
- ``person_behaviour.parquet`` — one behaviour snapshot per (person, lead ``created_at``) and
  per (person, time of a funnel step one of its leads reached after the form: the step events
  of ``events.parquet``) (``person_id``, ``event_timestamp``; ``features.behaviour``);
- ``person_rfm.parquet`` — the order history per (person, lead ``created_at``), and just after
  each order (``features.rfm``);

then registers the Feast definitions.

One ID as of each lead's time: when the identity state holds ``asof_person_id`` (and
``person_versions.parquet``, ``version_hashes.parquet``: ``crm_data.identity``), a lead's
features are keyed by its person *as One ID knew it at the lead's time*; a merged version counts
the leads it inherited, and an order counts for a version only from the time the version's first
lead carrying the order's identifier came. A later lead's identifier never changes an earlier
lead's features. A state without them (written by hand) is used as the final map.

``materialize(settings, end)`` loads the online store
incrementally (each view from where the previous run stopped) up to ``end`` (default: now), or
in full (``full``, or when the store lost its load epoch: ``features.online_epoch``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq
from feast.infra.online_stores.helpers import get_online_store_from_config

from features import behaviour, rfm, tags
from features.online_epoch import read_epoch, write_epoch
from features.params import FeatureParams
from features.parquet_io import read_parquet, write_parquet
from features.store import apply_definitions, ensure_applied, get_store
from leadscore.config import Settings
from leadscore.identifiers import scrub_url

ONLINE_VIEWS: tuple[str, ...] = ("person_behaviour", "person_rfm")
TABLE_FILES = {
    "lead_facts": "lead_facts.parquet",
    "person_behaviour": "person_behaviour.parquet",
    "person_rfm": "person_rfm.parquet",
}
INPUT_COLUMNS: dict[str, list[str] | None] = {
    "leads": None,
    "events": ["lead_id", "event_type", "event_time", "url"],
    "orders": ["id_hash", "ordered_at", "amount"],
}


@dataclass
class BuildSummary:
    """What the build read, dropped and wrote."""

    leads: int
    persons: int
    snapshots: int
    events: int
    events_unknown_lead: int
    orders: int
    orders_unresolved: int
    leads_unresolved: int
    seconds: float
    tables: dict[str, str] = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_inputs(settings: Settings) -> dict[str, Any]:
    """The raw tables and One ID maps the build needs (events as an Arrow table, the rest as
    DataFrames; clear errors for missing files)."""
    frames = {
        name: read_parquet(settings.raw_dir / f"{name}.parquet", f"raw table '{name}'", cols,
                            arrow=name == "events")
        for name, cols in INPUT_COLUMNS.items()
    }
    frames["steps"] = behaviour.step_events(frames["events"])
    frames["events"] = scrub_event_urls(behaviour.behaviour_events(frames["events"]))
    frames.update(read_identity(settings.identity_dir))
    return frames


PERSON_VERSIONS_FILE = "person_versions.parquet"  # written by crm_data.identity
VERSION_HASHES_FILE = "version_hashes.parquet"


def read_identity(identity_dir: Path) -> dict[str, pd.DataFrame]:
    """One ID for the build: ``lead_person`` (``lead_id, person_id`` and, when One ID wrote it,
    ``asof_person_id``), ``inherited`` (``person_id, lead_id``: leads a merged version holds
    beyond its own) and ``identifier_person`` (``id_hash, person_id[, known_us]``: per version
    and identifier, when the version knew it)."""
    lead_person = read_parquet(identity_dir / "lead_person.parquet", "One ID table 'lead_person'")
    versions = identity_dir / PERSON_VERSIONS_FILE
    hashes = identity_dir / VERSION_HASHES_FILE
    if tags.AS_OF_PERSON in lead_person.columns and versions.exists() and hashes.exists():
        inherited = read_parquet(versions, "One ID table 'person_versions'",
                                 [tags.AS_OF_PERSON, "lead_id"])
        known = read_parquet(hashes, "One ID table 'version_hashes'",
                             ["id_hash", tags.AS_OF_PERSON, "known_at"])
        identifier_person = pd.DataFrame({
            "id_hash": known["id_hash"].to_numpy(dtype=object),
            "person_id": known[tags.AS_OF_PERSON].to_numpy(dtype=object),
            "known_us": tags.to_epoch_us(known["known_at"], "version_hashes.known_at"),
        })
        inherited = inherited.rename(columns={tags.AS_OF_PERSON: "person_id"})
    else:
        lead_person = lead_person.drop(columns=[tags.AS_OF_PERSON], errors="ignore")
        inherited = pd.DataFrame({"person_id": pd.Series([], dtype=object),
                                  "lead_id": pd.Series([], dtype=object)})
        identifier_person = read_parquet(identity_dir / "identifier_person.parquet",
                                         "One ID table 'identifier_person'",
                                         ["id_hash", "person_id"])
    return {"lead_person": lead_person, "inherited": inherited,
            "identifier_person": identifier_person}


def with_inherited(index: pd.DataFrame, inherited: pd.DataFrame) -> pd.DataFrame:
    """``index`` (one row per lead, keyed by its as-of person) plus a row per lead a merged
    version inherited, under that version: the membership the snapshots count."""
    if inherited.empty:
        return index
    own = index.set_index("lead_id")
    rows = inherited[inherited["lead_id"].isin(own.index)]
    extra = own.loc[rows["lead_id"]].reset_index()
    extra["person_id"] = rows["person_id"].to_numpy(dtype=object)
    return pd.concat([index, extra[index.columns]], ignore_index=True)


def scrub_event_urls(events: pa.Table) -> pa.Table:
    """Events with ``leadscore.identifiers.scrub_url`` applied to each URL, as ``POST /events``
    applies it at the door: the offline snapshots count the same pages the service counts,
    and no identifier in a URL's query string reaches the feature tables or the online store.
    Each distinct URL is scrubbed once."""
    if "url" not in events.column_names:
        return events
    urls = events.column("url")
    if pa.types.is_dictionary(urls.type):
        urls = urls.cast(urls.type.value_type)
    if not (pa.types.is_string(urls.type) or pa.types.is_large_string(urls.type)):
        return events
    distinct = pa.compute.unique(urls)
    clean = pa.array([None if u is None else scrub_url(u) for u in distinct.to_pylist()],
                     type=urls.type)
    if clean.equals(distinct):
        return events
    scrubbed = clean.take(pa.compute.index_in(urls, value_set=distinct))
    return events.set_column(events.column_names.index("url"), "url", scrubbed)


def compute_tables(
    frames: dict[str, pd.DataFrame], settings: Settings, timings: dict[str, float] | None = None,
    params: FeatureParams | None = None,
) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """The three offline tables from in-memory inputs, and the counts of dropped rows
    (``params``: the feature version's parameters, built from ``settings`` when not given)."""
    timings = {} if timings is None else timings
    params = params or FeatureParams.from_settings(settings)
    t0 = time.perf_counter()
    index, leads_unresolved = tags.lead_index(frames["leads"], frames["lead_person"])
    members = with_inherited(index, frames.get("inherited", pd.DataFrame(
        columns=["person_id", "lead_id"])))
    step_times = behaviour.later_step_times(index, frames.get("steps"))
    history = tags.person_lead_history(members, step_times)
    facts = tags.lead_facts(frames["leads"], index, history)
    timings["lead_facts"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    person_behaviour, events_dropped = behaviour.person_behaviour(
        members, frames["events"], history, params.tables, params.half_life_days,
        step_times=step_times,
    )
    if len(members) > len(index):  # inherited leads count their events once more
        lead_ids = frames["events"].column("lead_id") if isinstance(
            frames["events"], pa.Table) else pa.array(frames["events"]["lead_id"].astype(str))
        known = pa.compute.is_in(lead_ids.cast(pa.string()),
                                 value_set=pa.array(index["lead_id"], pa.string()))
        events_dropped = int(len(known) - pa.compute.sum(known).as_py())
    timings["person_behaviour"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    person_rfm, orders_unresolved = rfm.person_rfm(
        index, frames["orders"], frames["identifier_person"]
    )
    timings["person_rfm"] = round(time.perf_counter() - t0, 2)
    counts = {
        "leads_unresolved": leads_unresolved,
        "events_unknown_lead": events_dropped,
        "orders_unresolved": orders_unresolved,
        "persons": int(index["person_id"].nunique()),
    }
    return (
        {"lead_facts": facts, "person_behaviour": person_behaviour, "person_rfm": person_rfm},
        counts,
    )


PREDICTIVE_TAGS_FILE = "predictive_tags.parquet"


def ensure_predictive_tags_table(settings: Settings) -> Path:
    """An empty predictive-tag table until ``leadscore score`` writes one, so that every view
    of the repo has a readable source (``feast materialize-incremental`` works before scoring).
    """
    path = settings.features_dir / PREDICTIVE_TAGS_FILE
    if not path.exists():
        empty = pd.DataFrame(
            {
                "lead_id": pd.Series(dtype="string"),
                "event_timestamp": pd.Series(dtype="datetime64[us, UTC]"),
                "created_timestamp": pd.Series(dtype="datetime64[us, UTC]"),
                "conversion_probability": pd.Series(dtype="float64"),
                "conversion_tier": pd.Series(dtype="string"),
                "top_reasons": pd.Series(dtype="string"),
                "model_version": pd.Series(dtype="string"),
            }
        )
        write_parquet(empty, path)
    return path


def build_features(settings: Settings, apply: bool = True) -> BuildSummary:
    """Compute and write the offline feature tables; register the Feast definitions."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    params = FeatureParams.from_settings(settings)
    t0 = time.perf_counter()
    frames = read_inputs(settings)
    timings["read"] = round(time.perf_counter() - t0, 2)
    tables, counts = compute_tables(frames, settings, timings, params)
    t0 = time.perf_counter()
    paths = {}
    for name, frame in tables.items():
        path = settings.features_dir / TABLE_FILES[name]
        write_parquet(frame, path)
        paths[name] = str(path)
    ensure_predictive_tags_table(settings)
    timings["write"] = round(time.perf_counter() - t0, 2)
    if apply:
        t0 = time.perf_counter()
        apply_definitions(get_store(settings), settings, params)
        timings["feast_apply"] = round(time.perf_counter() - t0, 2)
    return BuildSummary(
        leads=len(frames["leads"]),
        persons=counts["persons"],
        snapshots=len(tables["person_behaviour"]),
        events=len(frames["events"]),
        events_unknown_lead=counts["events_unknown_lead"],
        orders=len(frames["orders"]),
        orders_unresolved=counts["orders_unresolved"],
        leads_unresolved=counts["leads_unresolved"],
        seconds=round(time.perf_counter() - started, 2),
        tables=paths,
        step_seconds=timings,
    )


def _earliest_timestamp(path: Path) -> datetime | None:
    column = pq.read_table(path, columns=["event_timestamp"]).column("event_timestamp")
    if len(column) == 0:
        return None
    value = pa.compute.min(column).as_py()
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def materialize(settings: Settings, end: datetime | None = None,
                full: bool = False) -> dict[str, Any]:
    """Load the online store up to ``end`` (inclusive; default now), incrementally per view.

    ``full`` reloads every snapshot from the earliest, overwriting whatever the online store
    holds for those persons whatever its timestamps (rows the service recorded since the build
    included), then writes a new load epoch (``features.online_epoch``). A store without an
    epoch — it lost its data (a Redis restart without persistence, a deleted SQLite file) or
    was never loaded in full — gets the same full reload without being asked
    (``report["full_reason"]``): an incremental run would not notice what is missing. Until the
    epoch is written the service answers degraded (``online_store_reset``).
    """
    from features.fast_materialize import materialize_fast

    end = end or datetime.now(UTC)
    if end.tzinfo is None:
        raise ValueError("materialize: 'end' must be timezone-aware (UTC)")
    store = get_store(settings)
    ensure_applied(store, settings)
    online = get_online_store_from_config(store.config.online_store)
    try:
        epoch = read_epoch(online, store.config)
        reason = "requested" if full else ("online_store_reset" if epoch is None else None)
        full = reason is not None
        views = [store.get_feature_view(name) for name in ONLINE_VIEWS]
        if full:  # a lost SQLite file comes back without tables: create them (no-op if there)
            online.update(store.config, tables_to_delete=[], tables_to_keep=views,
                          entities_to_delete=[], entities_to_keep=[], partial=True)
        report: dict[str, Any] = {"end": end.isoformat(), "engine": "fast", "full": full,
                                  "full_reason": reason, "views": {}}
        started = time.perf_counter()
        for view in views:
            path = settings.features_dir / TABLE_FILES[view.name]
            if not path.exists():
                raise FileNotFoundError(f"offline table {path} is missing: run `features build`")
            start = (None if full else view.most_recent_end_time) or _earliest_timestamp(path)
            if start is None or start > end:
                report["views"][view.name] = {"skipped": "nothing new"}
                continue
            t0 = time.perf_counter()
            stats = materialize_fast(store, start, end, feature_views=[view.name],
                                     overwrite=full)
            report["views"][view.name] = {
                "start": start.isoformat(),
                "rows": stats.rows,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        if full:
            report["epoch"] = write_epoch(online, store.config)
        report["seconds"] = round(time.perf_counter() - started, 2)
    finally:
        _close(online)
    return report


def _close(online: Any) -> None:
    conn = getattr(online, "_conn", None)
    if conn is not None:
        conn.close()
        online._conn = None
