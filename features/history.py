"""A person's recent behaviour history, kept beside the snapshot so windows can be evaluated later.

The stored snapshot (``features.behaviour``) holds window counts *as of its own time*. To give a
request at a later time t the row the offline build would give at t, the snapshot also carries
``snap_history``: a JSON document with the person's recent events and all its leads, from which
:func:`snapshot_at` recomputes every snapshot field at any t. The on-demand view calls
:func:`at_request_time` (training rows are requested at their snapshot's own time and are left
as stored), and ``POST /events`` / ``/predict`` (``serving.events``) add events and leads to it.

Document (compact, column lists; times are UTC epoch microseconds)::

    {"t": [event times], "y": [event types], "u": [URLs], "w": [URL × behaviour weights],
     "lt": [lead times], "lc": [normalised lead channels], "li": [lead ids],
     "n0": events folded into the base, "f0": their first time, "l0": their last time,
     "i0": their intent at time "a0"}

Events older than ``HORIZON_DAYS`` before the history's latest time are folded into the base
(count, first/last touch, decayed intent): the longest window is 180 days, so a request at most
``HORIZON_DAYS - 180`` days before the latest recorded time still gets exact values. An event
counts at t when its time is ``<= t``; a lead counts as earlier when created ``< t`` (``upto``:
``<= t``). Whether an event is visible at all (its lead created by t) is the writer's business:
the offline build stores only visible events, the service stores what it was sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from features import snapshot as sn

HISTORY_FIELD = "snap_history"
DAY_US = 86_400_000_000
HORIZON_DAYS = 210
EVENT_KEYS = ("t", "y", "u", "w")
LEAD_KEYS = ("lt", "lc", "li")
_PREV21 = (7, 28)  # engagement trend: the 21 days before the last 7


def empty_history() -> dict[str, Any]:
    """A history without events or leads."""
    return {**{k: [] for k in (*EVENT_KEYS, *LEAD_KEYS)},
            "n0": 0, "f0": 0, "l0": 0, "i0": 0.0, "a0": 0}


def loads(text: object) -> dict[str, Any] | None:
    """The history stored in a snapshot (None when absent or unreadable)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    return {**empty_history(), **doc}


def dumps(history: dict[str, Any]) -> str:
    """The compact JSON text of a history."""
    return json.dumps(history, separators=(",", ":"))


def latest_us(history: dict[str, Any]) -> int:
    """The latest time recorded in a history (0 when empty)."""
    return max([int(history["l0"]), *history["t"], *history["lt"]], default=0)


def add_events(history: dict[str, Any], events: Iterable[tuple[int, str, str, float]]) -> None:
    """Append ``(time_us, event_type, url, weight)`` events (in place)."""
    for t, y, u, w in events:
        history["t"].append(int(t))
        history["y"].append(y)
        history["u"].append(u or "")
        history["w"].append(float(w))


def add_leads(history: dict[str, Any], leads: Iterable[tuple[int, str, str]]) -> None:
    """Append ``(created_us, channel, lead_id)`` leads not yet recorded (in place)."""
    known = set(history["li"])
    for t, channel, lead_id in leads:
        if lead_id in known:
            continue
        known.add(lead_id)
        history["lt"].append(int(t))
        history["lc"].append(channel)
        history["li"].append(lead_id)


def _decay(age_us: np.ndarray | float, half_life_days: float) -> np.ndarray | float:
    # the offline build's formula: pow(0.5, (t - et) / DAY_US.0 / half_life)
    return np.power(0.5, np.asarray(age_us, dtype=float) / float(DAY_US) / half_life_days)


def prune(history: dict[str, Any], now_us: int, half_life_days: float) -> None:
    """Fold events older than ``HORIZON_DAYS`` before ``now_us`` into the base (in place)."""
    t = np.asarray(history["t"], dtype=np.int64)
    old = t <= now_us - HORIZON_DAYS * DAY_US
    if not old.any():
        return
    w = np.asarray(history["w"], dtype=float)
    n0 = int(history["n0"])
    intent = float(history["i0"]) * float(_decay(now_us - int(history["a0"]), half_life_days))
    history["i0"] = intent + float(np.sum(w[old] * _decay(now_us - t[old], half_life_days)))
    history["a0"] = int(now_us)
    history["f0"] = int(min(t[old].min(), history["f0"])) if n0 else int(t[old].min())
    history["l0"] = int(max(t[old].max(), history["l0"]))
    history["n0"] = n0 + int(old.sum())
    keep = np.flatnonzero(~old).tolist()
    for key in EVENT_KEYS:
        values = history[key]
        history[key] = [values[i] for i in keep]


def _window_keys() -> tuple[list[tuple[int, str]], dict[str, list[tuple[int, str]]]]:
    """(window µs, count name) pairs for every event, and for each event type."""
    every = [(days * DAY_US, f"events_{days}d") for days in sn.WINDOWS_DAYS]
    by_type: dict[str, list[tuple[int, str]]] = {}
    for days, names in sn.TYPE_WINDOWS.items():
        for name in names:
            by_type.setdefault(name, []).append((days * DAY_US, f"{name}_{days}d"))
    site = (sn.SITE_WINDOW_DAYS * DAY_US, f"site_visits_{sn.SITE_WINDOW_DAYS}d")
    for name in sn.SITE_EVENT_TYPES:
        by_type.setdefault(name, []).append(site)
    return every, by_type


_EVERY_WINDOW, _TYPE_WINDOWS = _window_keys()
_URL_WINDOWS = [(days * DAY_US, f"urls_{days}d") for days in sn.URL_WINDOWS_DAYS]


def snapshot_at(history: dict[str, Any], at_us: int, half_life_days: float) -> dict[str, Any]:
    """Every ``BEHAVIOUR_SNAPSHOT_FIELDS`` value (but the history) as of ``at_us``.

    Plain Python over the (short) lists: a few µs per event, no array set-up per request.
    """
    n0 = int(history["n0"])
    counts = dict.fromkeys(sn.COUNT_FEATURES, 0)
    urls: dict[str, set[str]] = {name: set() for _, name in _URL_WINDOWS}
    prev21 = seen = 0
    intent = 0.0
    first = int(history["f0"]) if n0 else None
    last = int(history["l0"]) if n0 else 0
    day = float(DAY_US)
    for t, kind, url, weight in zip(history["t"], history["y"], history["u"], history["w"],
                                    strict=True):
        if t > at_us:
            continue
        seen += 1
        age = at_us - t
        for window, name in _EVERY_WINDOW:
            if age < window:
                counts[name] += 1
        for window, name in _TYPE_WINDOWS.get(kind, ()):
            if age < window:
                counts[name] += 1
        for window, name in _URL_WINDOWS:
            if age < window:
                urls[name].add(url)
        if _PREV21[0] * DAY_US <= age < _PREV21[1] * DAY_US:
            prev21 += 1
        intent += weight * 0.5 ** (age / day / half_life_days)  # the offline build's formula
        first = t if first is None or t < first else first
        last = max(last, t)
    counts["events_total"] = n0 + seen
    for name, values in urls.items():
        counts[name] = len(values)
    out: dict[str, Any] = {"snap_ts_s": at_us / 1e6, "snap_has_history": int(n0 + seen > 0)}
    for name in sn.COUNT_FEATURES:
        out[sn.SNAP_PREFIX + name] = counts[name]
    out["snap_last_touch_ts_s"] = last / 1e6
    out["snap_first_touch_ts_s"] = (first or 0) / 1e6
    r7, r21 = counts["events_7d"] / 7.0, prev21 / 21.0
    out["snap_engagement_trend"] = (r7 - r21) / (r7 + r21) if r7 + r21 > 0 else 0.0
    if n0:
        base_age = at_us - int(history["a0"])
        intent += float(history["i0"]) * 0.5 ** (base_age / day / half_life_days)
    out["snap_intent"] = intent
    before: set[str] = set()
    upto: set[str] = set()
    n_before = n_upto = 0
    for t, channel in zip(history["lt"], history["lc"], strict=True):
        if t < at_us:
            n_before += 1
            before.add(channel)
        if t <= at_us:
            n_upto += 1
            upto.add(channel)
    out["snap_leads_before"], out["snap_leads_upto"] = n_before, n_upto
    out["snap_channels_before"], out["snap_channels_upto"] = len(before), len(upto)
    return out


def _column(values: Sequence[Any] | None, n: int) -> list[Any]:
    if values is None:
        return [None] * n
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _micros(values: Sequence[Any] | None, n: int) -> np.ndarray:
    """Epoch seconds → integer microseconds (-1 where missing)."""
    seconds = np.full(n, np.nan) if values is None else pd.to_numeric(
        pd.Series(_column(values, n), dtype=object), errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(seconds)
    return np.where(ok, np.round(np.nan_to_num(seconds) * 1e6), -1).astype(np.int64)


def at_request_time(inputs: dict[str, Any], n: int, half_life_days: float) -> dict[str, Any]:
    """``inputs`` with each snapshot that has a history re-evaluated at its request time.

    Rows requested at their snapshot's own time (every training row), rows without a history
    and rows without a request time are returned as given. Rows sharing one history (a batch
    with several submissions of a person) are evaluated together (``snapshots_grouped``): one
    ``snapshot_at`` per group of request times that see the same events and leads, each row
    then with its own ``snap_ts_s`` and intent, bit for bit what ``snapshot_at`` gives it.
    """
    histories = inputs.get(HISTORY_FIELD)
    if histories is None or n == 0:
        return inputs
    request_us = _micros(inputs.get("request_ts_s"), n)
    snap_us = _micros(inputs.get("snap_ts_s"), n)
    stale = np.flatnonzero((request_us >= 0) & (snap_us >= 0) & (request_us != snap_us))
    if stale.size == 0:
        return inputs
    texts = _column(histories, n)
    by_history: dict[Any, list[int]] = {}
    for i in stale.tolist():
        text = texts[i]
        by_history.setdefault(text if isinstance(text, str) else ("row", i), []).append(i)
    out = dict(inputs)
    columns: dict[str, list[Any]] = {}

    def column(name: str) -> list[Any]:
        values = columns.get(name)
        if values is None:
            values = columns[name] = _column(inputs.get(name), n)
        return values

    for key, rows in by_history.items():
        history = loads(texts[rows[0]] if isinstance(key, tuple) else key)
        if history is None:
            continue
        ats = [int(request_us[i]) for i in rows]
        grouped = snapshots_grouped(history, ats, half_life_days) if len(rows) > 1 else None
        if grouped is None:
            for i, at in zip(rows, ats, strict=True):
                for name, value in snapshot_at(history, at, half_life_days).items():
                    column(name)[i] = value
            continue
        shared, group, intent = grouped
        for name in shared[0]:
            values = column(name)
            if name == "snap_ts_s":
                for i, at in zip(rows, ats, strict=True):
                    values[i] = at / 1e6
            elif name == "snap_intent":
                for i, score in zip(rows, intent, strict=True):
                    values[i] = score
            else:
                per_group = [row[name] for row in shared]
                for i, g in zip(rows, group, strict=True):
                    values[i] = per_group[g]
    out.update(columns)
    return out


# ---- many request times of one history at once (``at_request_time`` on a batch) ----------
# Whether an event or lead counts at t is a threshold on sorted times (visible: time <= t; in a
# window: time > t - window; earlier lead: < t / <= t), so request times falling between the
# same event and lead times get the same counts, touch times and trend. The intent score is
# summed per time exactly as ``snapshot_at`` sums it (the same float operations, events in
# stored order, ``pow`` from Python's ``**``: numpy's vectorised ``power`` is not always
# bit-equal). Histories with non-integer times or weights are left to ``snapshot_at``.
MAX_PAIRS = 4_000_000  # (row, event) pairs per intent chunk (bounds the temporary arrays)


def _windows() -> np.ndarray:
    """Every window length ``snapshot_at`` compares an event's age with (µs, distinct)."""
    lengths = {w for w, _ in _EVERY_WINDOW} | {w for w, _ in _URL_WINDOWS}
    lengths |= {w for pairs in _TYPE_WINDOWS.values() for w, _ in pairs}
    lengths |= {d * DAY_US for d in _PREV21}
    return np.array(sorted(lengths), dtype=np.int64)


WINDOWS = _windows()


def _int_times(values: Sequence[Any]) -> np.ndarray | None:
    """Times as int64 when they are all Python ints (not bools), else None."""
    if not all(type(v) is int for v in values):
        return None
    return np.array(values, dtype=np.int64) if values else np.zeros(0, dtype=np.int64)


def snapshots_grouped(history: dict[str, Any], ats: Sequence[int], half_life_days: float
                      ) -> tuple[list[dict[str, Any]], list[int], list[float]] | None:
    """``snapshot_at`` of ``history`` at each time of ``ats`` as (one ``snapshot_at`` row per
    group of times that see the same events and leads, the group of each time, the intent
    score at each time); a time's row is its group's with ``snap_ts_s`` = time / 1e6 and its
    own intent. None when the history is not one this path covers (non-integer times,
    non-numeric weights)."""
    t = _int_times(history["t"])
    lead_t = _int_times(history["lt"])
    weights = history["w"]
    if (t is None or lead_t is None or len(weights) != len(t)
            or not all(type(w) is float or type(w) is int for w in weights)):
        return None
    a = np.array(ats, dtype=np.int64)
    sorted_t = np.sort(t)
    sorted_lt = np.sort(lead_t)
    signature = np.column_stack([
        np.searchsorted(sorted_t, a, side="right"),
        *(np.searchsorted(sorted_t, a - w, side="right") for w in WINDOWS),
        np.searchsorted(sorted_lt, a, side="left"),
        np.searchsorted(sorted_lt, a, side="right"),
    ])
    _, first, group = np.unique(signature, axis=0, return_index=True, return_inverse=True)
    shared = [snapshot_at(history, int(a[j]), half_life_days) for j in first.tolist()]
    intent = _intents(history, t, np.asarray(weights, dtype=float), a, half_life_days)
    return shared, group.ravel().tolist(), intent


def snapshots_at(history: dict[str, Any], ats: Sequence[int], half_life_days: float
                 ) -> list[dict[str, Any]] | None:
    """``[snapshot_at(history, at, half_life_days) for at in ats]`` (``snapshots_grouped``),
    or None when the history is not one this path covers."""
    grouped = snapshots_grouped(history, ats, half_life_days)
    if grouped is None:
        return None
    shared, group, intent = grouped
    out: list[dict[str, Any]] = []
    for at, g, score in zip(ats, group, intent, strict=True):
        row = dict(shared[g])
        row["snap_ts_s"] = at / 1e6
        row["snap_intent"] = score
        out.append(row)
    return out


def _intents(history: dict[str, Any], t: np.ndarray, w: np.ndarray, a: np.ndarray,
             half_life_days: float) -> list[float]:
    """``snapshot_at``'s intent score at each time of ``a``, bit for bit: per row the visible
    events' ``weight * 0.5 ** (age / day / half_life)`` added in stored order to 0.0 (``bincount``
    adds its weights in input order), then the base's decayed intent."""
    day = float(DAY_US)
    k = len(a)
    intent = np.zeros(k)
    if len(t):
        step = max(1, MAX_PAIRS // len(t))
        for lo in range(0, k, step):
            part = a[lo:lo + step]
            rows, events = np.nonzero(t[None, :] <= part[:, None])  # row-major: stored order
            if not len(rows):
                continue
            x = (part[rows] - t[events]) / day / half_life_days
            decay = np.fromiter(map(pow, repeat(0.5), x.tolist()), dtype=float, count=len(x))
            intent[lo:lo + len(part)] = np.bincount(rows, weights=w[events] * decay,
                                                    minlength=len(part))
    scores = intent.tolist()
    n0 = int(history["n0"])
    if n0:
        i0, a0 = float(history["i0"]), int(history["a0"])
        scores = [score + i0 * 0.5 ** ((at - a0) / day / half_life_days)
                  for score, at in zip(scores, a.tolist(), strict=True)]
    return scores


def offline_histories(con: duckdb.DuckDBPyConnection, half_life_days: float) -> pd.DataFrame:
    """``person_id, snapshot_us, snap_history`` of every snapshot of the offline build.

    Runs on the build's connection: ``idx`` (``lead_id, person_id, created_us, channel``),
    ``later_step_times`` (the snapshots at later funnel steps, ``features.snapshot``) and
    ``ev`` (events with person, lead time, ``et``, type, URL and weight, see
    ``features.behaviour``). A snapshot at t holds the events visible at t (``et <= t``, lead
    created by t) within ``HORIZON_DAYS``, older ones in the base, and the person's leads
    created by t.
    """
    horizon = HORIZON_DAYS * DAY_US
    recent = f"e.et > s.t - {horizon}"
    order = "ORDER BY e.et, e.event_type, e.url"

    def recent_list(column: str) -> str:
        return f"coalesce(list({column} {order}) FILTER (WHERE {recent}), [])"

    lead_order = "ORDER BY l.created_us, l.lead_id"
    return con.sql(f"""
        WITH snaps AS ({sn.SNAPSHOT_TIMES_SQL}),
        ev_part AS (
            SELECT s.person_id, s.t,
                   {recent_list("e.et")} AS t_, {recent_list("e.event_type")} AS y,
                   {recent_list("e.url")} AS u, {recent_list("e.w")} AS w,
                   count(e.et) FILTER (WHERE NOT {recent}) AS n0,
                   coalesce(min(e.et) FILTER (WHERE NOT {recent}), 0) AS f0,
                   coalesce(max(e.et) FILTER (WHERE NOT {recent}), 0) AS l0,
                   coalesce(sum(e.w * pow(0.5, (s.t - e.et) / {DAY_US}.0 / {half_life_days!r}))
                            FILTER (WHERE NOT {recent}), 0.0) AS i0
            FROM snaps s LEFT JOIN ev e
              ON e.person_id = s.person_id AND e.lead_created_us <= s.t AND e.et <= s.t
            GROUP BY s.person_id, s.t),
        lead_part AS (
            SELECT s.person_id, s.t, list(l.created_us {lead_order}) AS lt,
                   list(l.channel {lead_order}) AS lc, list(l.lead_id {lead_order}) AS li
            FROM snaps s JOIN idx l ON l.person_id = s.person_id AND l.created_us <= s.t
            GROUP BY s.person_id, s.t)
        SELECT v.person_id, v.t AS snapshot_us,
               to_json({{'t': v.t_, 'y': v.y, 'u': v.u, 'w': v.w,
                         'lt': coalesce(p.lt, []), 'lc': coalesce(p.lc, []),
                         'li': coalesce(p.li, []), 'n0': v.n0, 'f0': v.f0, 'l0': v.l0,
                         'i0': v.i0, 'a0': CASE WHEN v.n0 > 0 THEN v.t ELSE 0 END}})::VARCHAR
                   AS {HISTORY_FIELD}
        FROM ev_part v LEFT JOIN lead_part p ON p.person_id = v.person_id AND p.t = v.t
    """).df()
