"""Person behaviour (analytic) tags: one snapshot per person at each of its leads' ``created_at``
and at each funnel step one of its leads reached after its form (the step events of the events
table, ``later_step_times``: a re-score at the step reads the person as of the step's time).

A snapshot of person P at time t sees the events with ``event_time <= t`` of P's leads created
at or before t (each lead's own pre-submission events included). Leads of P created after t are
invisible, and so are their events. Clock skew: an event stamped after its lead's ``created_at``
(e.g. a form-confirmation page logged a few seconds or up to ~5 minutes late) is not counted for
that lead's snapshot — it appears only in later snapshots. Two leads of one person created at the
very same microsecond share one snapshot (they see each other's pre-submission events).
Known limitation: persons are One ID's *final* components, so a link discovered later (a shared
phone seen only in a later lead) already joins the earlier leads' histories.

Columns (``features.request.BEHAVIOUR_SNAPSHOT_FIELDS``, prefixed ``snap_``): event counts over
1/7/30/90-day windows (all types; per type for the subsets of ``TYPE_WINDOWS``), distinct URLs
over 7/30/90 days, site visits in 180 days, first and last touch time, engagement trend
``(r7 − r21) / (r7 + r21)`` of daily event rates in the last 7 days vs the 21 before (0 when
both are 0), and the intent score ``Σ 0.5^(age_days / half_life) × URL weight × behaviour
weight`` (weights in scoring.yaml). A window of w days at t is ``(t − w days, t]``. Each
snapshot also carries its recent events and leads (``snap_history``, ``features.history``) so
that it can be evaluated at a later request time.

Defaults: a person without visible events has ``snap_has_history`` 0, counts 0, touch times
0 (read as "none" by the request transformation), trend 0, intent 0. Events of unknown leads are
dropped (counted by the build); unknown event types count in the totals and weigh
``behaviour_weights.unknown``; an empty or odd URL is page type ``other``.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from features import request
from features.history import HISTORY_FIELD, offline_histories
from features.score2d import ScoringTables
from features.snapshot import SNAPSHOT_TIMES_SQL
from features.tags import from_epoch_us, register_later_step_times, to_epoch_us
from leadscore.schemas import STEP_EVENT_TYPES

DAY_US = 86_400_000_000


def event_weight(url: object, event_type: object, tables: ScoringTables) -> float:
    """URL weight × behaviour weight of one event (page type from URL, else event type)."""
    url_w = tables.table("url_weights")
    beh_w = tables.table("behaviour_weights")
    page = request.url_page_type(url, event_type)
    behaviour_weight = beh_w.get(event_type) if isinstance(event_type, str) else None
    if behaviour_weight is None:
        behaviour_weight = beh_w.get("unknown", 0.0)
    return float(url_w.get(page, url_w.get("other", 0.0))) * float(behaviour_weight)


EVENT_COLUMNS = ["lead_id", "event_type", "event_time", "url"]


def behaviour_events(events: pd.DataFrame | pa.Table) -> pd.DataFrame | pa.Table:
    """The behaviour rows of an events table: the funnel steps after the form
    (``leadscore.schemas.STEP_EVENT_TYPES``) move their lead's step and are not behaviour, as
    ``POST /events`` treats them."""
    steps = list(STEP_EVENT_TYPES)
    if isinstance(events, pa.Table):
        if "event_type" not in events.column_names:
            return events
        types = events.column("event_type")
        if pa.types.is_dictionary(types.type):
            types = types.cast(types.type.value_type)
        keep = pa.compute.invert(pa.compute.fill_null(
            pa.compute.is_in(types, value_set=pa.array(steps, types.type)), False))
        return events.filter(keep)
    if "event_type" not in events.columns:
        return events
    return events[~events["event_type"].isin(steps)].reset_index(drop=True)


def step_events(events: pd.DataFrame | pa.Table) -> pd.DataFrame:
    """The funnel steps after the form in an events table (``STEP_EVENT_TYPES``):
    ``lead_id, event_us`` (epoch µs), the rows :func:`behaviour_events` leaves out."""
    if isinstance(events, pa.Table):
        names = events.column_names
        events = events.select([c for c in ("lead_id", "event_type", "event_time")
                                if c in names]).to_pandas()
    if "event_type" not in events.columns or "event_time" not in events.columns:
        return pd.DataFrame({"lead_id": pd.Series([], dtype=object),
                             "event_us": pd.Series([], dtype="int64")})
    steps = events[events["event_type"].astype(object).isin(list(STEP_EVENT_TYPES))]
    return pd.DataFrame({"lead_id": steps["lead_id"].astype(str).to_numpy(dtype=object),
                         "event_us": to_epoch_us(steps["event_time"], "events.event_time")})


def later_step_times(index: pd.DataFrame, steps: pd.DataFrame | None) -> pd.DataFrame:
    """``person_id, t``: a snapshot time per funnel step reached after its lead's submission
    (``steps`` from :func:`step_events`; a step at or before its lead's ``created_at`` is the
    form's), keyed by the lead's person (``index``, ``tags.lead_index``).

    A re-score of the lead at the step (``serving.rescoring``) reads the person as the service
    holds it then: every event recorded up to the step's time. The snapshot taken there is that
    row, so the training row at the step joins it exactly (and the online store loaded up to a
    time holds the person's latest snapshot, lead or step, at or before it)."""
    if steps is None or steps.empty:
        return pd.DataFrame({"person_id": pd.Series([], dtype=object),
                             "t": pd.Series([], dtype="int64")})
    own = index[["lead_id", "person_id", "created_us"]]
    rows = steps.merge(own, on="lead_id", how="inner")
    rows = rows[rows["event_us"].to_numpy() > rows["created_us"].to_numpy()]
    out = pd.DataFrame({"person_id": rows["person_id"].astype(str).to_numpy(dtype=object),
                        "t": rows["event_us"].astype("int64").to_numpy()})
    return out.drop_duplicates().sort_values(["person_id", "t"]).reset_index(drop=True)


def _check_events(events: pd.DataFrame | pa.Table) -> None:
    names = events.column_names if isinstance(events, pa.Table) else list(events.columns)
    for col in EVENT_COLUMNS:
        if col not in names:
            raise ValueError(f"events table: missing column '{col}'")
    if isinstance(events, pa.Table):
        is_time = pa.types.is_timestamp(events.schema.field("event_time").type)
    else:
        is_time = pd.api.types.is_datetime64_any_dtype(events["event_time"])
    if not is_time:
        raise ValueError("events table: column 'event_time' must hold timestamps")


def _load_events(
    con: duckdb.DuckDBPyConnection, events: pd.DataFrame, tables: ScoringTables
) -> int:
    """Create table ``ev`` (events with person, lead time, epoch-µs time and weight) from the
    registered ``idx``; return how many events named an unknown lead."""
    _check_events(events)
    selected = (events.select(EVENT_COLUMNS) if isinstance(events, pa.Table)
                else events[EVENT_COLUMNS])
    con.register("events_in", selected)
    pairs = con.execute("SELECT DISTINCT url, event_type FROM events_in").fetchall()
    weights = pd.DataFrame(
        {
            "url": pd.Series([p[0] for p in pairs], dtype=object),
            "event_type": pd.Series([p[1] for p in pairs], dtype=object),
            "w": [event_weight(p[0], p[1], tables) for p in pairs],
        }
    )
    con.register("weights", weights)
    con.execute(
        """
        CREATE TEMP TABLE ev AS
        SELECT i.person_id, i.created_us AS lead_created_us,
               epoch_us(e.event_time::TIMESTAMPTZ) AS et,
               coalesce(e.event_type, '') AS event_type, coalesce(e.url, '') AS url, w.w
        FROM events_in e
        JOIN idx i ON i.lead_id = CAST(e.lead_id AS VARCHAR)
        JOIN weights w ON w.url IS NOT DISTINCT FROM e.url
                      AND w.event_type IS NOT DISTINCT FROM e.event_type
        """
    )
    kept = con.execute("SELECT count(*) FROM ev").fetchone()[0]
    return len(events) - int(kept)


def _snapshot_sql(half_life_days: float) -> str:
    def within(days: int) -> str:
        return f"e.et > s.t - {days * DAY_US}"

    aggs = ["count(e.et) AS snap_events_total"]
    for w in request.WINDOWS_DAYS:
        aggs.append(f"count(e.et) FILTER (WHERE {within(w)}) AS snap_events_{w}d")
    for w, types in sorted(request.TYPE_WINDOWS.items()):
        for t in types:
            aggs.append(
                f"count(e.et) FILTER (WHERE e.event_type = '{t}' AND {within(w)}) AS snap_{t}_{w}d"
            )
    for w in request.URL_WINDOWS_DAYS:
        aggs.append(f"count(DISTINCT e.url) FILTER (WHERE {within(w)}) AS snap_urls_{w}d")
    site = ", ".join(f"'{t}'" for t in request.SITE_EVENT_TYPES)
    aggs.append(
        f"count(e.et) FILTER (WHERE e.event_type IN ({site}) AND "
        f"{within(request.SITE_WINDOW_DAYS)}) AS snap_site_visits_{request.SITE_WINDOW_DAYS}d"
    )
    aggs.append(
        f"count(e.et) FILTER (WHERE e.et > s.t - {28 * DAY_US} AND e.et <= s.t - {7 * DAY_US})"
        " AS prev21"
    )
    aggs += [
        "max(e.et) AS last_us",
        "min(e.et) AS first_us",
        f"coalesce(sum(e.w * pow(0.5, (s.t - e.et) / {DAY_US}.0 / {half_life_days!r})), 0.0)"
        " AS snap_intent",
    ]
    return f"""
        WITH snaps AS ({SNAPSHOT_TIMES_SQL})
        SELECT s.person_id, s.t AS snapshot_us, {", ".join(aggs)}
        FROM snaps s LEFT JOIN ev e
          ON e.person_id = s.person_id AND e.lead_created_us <= s.t AND e.et <= s.t
        GROUP BY s.person_id, s.t
    """


def person_behaviour(
    index: pd.DataFrame,
    events: pd.DataFrame | pa.Table,
    history: pd.DataFrame,
    tables: ScoringTables,
    half_life_days: float,
    threads: int | None = None,
    step_times: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, int]:
    """The ``person_behaviour`` table (``person_id, event_timestamp`` + snapshot fields) and the
    number of dropped events of unknown leads. ``index`` comes from ``tags.lead_index``,
    ``history`` from ``tags.person_lead_history`` (with the same ``step_times``: the snapshots
    at later funnel steps, :func:`later_step_times`)."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        con.register("idx", index[["lead_id", "person_id", "created_us", "channel"]])
        register_later_step_times(con, step_times)
        dropped = _load_events(con, events, tables)
        snap = con.execute(_snapshot_sql(half_life_days)).df()
        recent = offline_histories(con, half_life_days)
    finally:
        con.close()
    out = pd.DataFrame({"person_id": snap["person_id"].astype(str)})
    out["event_timestamp"] = from_epoch_us(snap["snapshot_us"]).array
    out["snap_ts_s"] = snap["snapshot_us"].to_numpy() / 1e6
    total = snap["snap_events_total"].to_numpy()
    out["snap_has_history"] = (total > 0).astype("int64")
    for col in request.COUNT_FEATURES:
        out[request.SNAP_PREFIX + col] = snap[request.SNAP_PREFIX + col].astype("int64")
    out["snap_last_touch_ts_s"] = snap["last_us"].fillna(0).to_numpy() / 1e6
    out["snap_first_touch_ts_s"] = snap["first_us"].fillna(0).to_numpy() / 1e6
    r7 = snap["snap_events_7d"].to_numpy() / 7.0
    r21 = snap["prev21"].to_numpy() / 21.0
    denom = r7 + r21
    out["snap_engagement_trend"] = np.where(
        denom > 0, (r7 - r21) / np.where(denom > 0, denom, 1.0), 0.0
    )
    out["snap_intent"] = snap["snap_intent"].astype(float).to_numpy()
    hist = history.set_index(["person_id", "snapshot_us"])
    keys = pd.MultiIndex.from_arrays([snap["person_id"], snap["snapshot_us"]])
    aligned = hist.reindex(keys)
    for col in ("leads_before", "leads_upto", "channels_before", "channels_upto"):
        out["snap_" + col] = aligned[col].fillna(0).astype("int64").to_numpy()
    recent = recent.set_index(["person_id", "snapshot_us"]).reindex(keys)
    out[HISTORY_FIELD] = recent[HISTORY_FIELD].to_numpy()
    return out[["person_id", "event_timestamp", *request.BEHAVIOUR_SNAPSHOT_FIELDS]], dropped
