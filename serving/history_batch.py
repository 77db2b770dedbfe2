"""``features.history.at_request_time`` for a batch, without one ``snapshot_at`` per row.

The on-demand view re-evaluates every snapshot that carries a history at its request time
(``features.history.snapshot_at``: a Python loop over the person's events and leads, ~0.3 ms
for a person with a few hundred events, plus a JSON parse of the history per row). A batch
often holds several submissions of one person (one history text): here each distinct history
is parsed once, and its rows are grouped by *which* events and leads they see: the visible
events (time ``<= at``), each window's events (time ``> at - window``) and the earlier leads
(``< at`` / ``<= at``) are all thresholds on sorted times, so rows whose request times fall
between the same event/lead times get the same counts, touch times and trend. ``snapshot_at``
runs once per such group; each row then only gets its own ``snap_ts_s`` and intent score, the
latter summed exactly as ``snapshot_at`` sums it (the same float operations, events in stored
order, ``pow`` from Python's ``**``: numpy's vectorised ``power`` is not always bit-equal).

The rows that ``snapshot_at`` re-evaluates get exactly its values (tests compare them), with
``snap_ts_s`` set to the request time: ``at_request_time`` in the on-demand view then finds
nothing stale and leaves them as given. Histories with non-integer times are evaluated row by
row with ``snapshot_at`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from typing import Any

import numpy as np

from features import history as hist

DAY_US = hist.DAY_US
MAX_PAIRS = 4_000_000  # (row, event) pairs per intent chunk (bounds the temporary arrays)


def _windows() -> np.ndarray:
    """Every window length ``snapshot_at`` compares an event's age with (µs, distinct)."""
    lengths = {w for w, _ in hist._EVERY_WINDOW} | {w for w, _ in hist._URL_WINDOWS}
    lengths |= {w for pairs in hist._TYPE_WINDOWS.values() for w, _ in pairs}
    lengths |= {d * DAY_US for d in hist._PREV21}
    return np.array(sorted(lengths), dtype=np.int64)


WINDOWS = _windows()


def at_request_times(inputs: dict[str, Any], n: int, half_life_days: float) -> dict[str, Any]:
    """``features.history.at_request_time(inputs, n, half_life_days)``, grouped by history."""
    histories = inputs.get(hist.HISTORY_FIELD)
    if histories is None or n == 0:
        return inputs
    request_us = hist._micros(inputs.get("request_ts_s"), n)
    snap_us = hist._micros(inputs.get("snap_ts_s"), n)
    stale = np.flatnonzero((request_us >= 0) & (snap_us >= 0) & (request_us != snap_us))
    if stale.size == 0:
        return inputs
    texts = hist._column(histories, n)
    groups: dict[Any, list[int]] = {}
    for i in stale.tolist():
        text = texts[i]
        groups.setdefault(text if isinstance(text, str) else ("row", i), []).append(i)
    out = dict(inputs)
    columns: dict[str, list[Any]] = {}

    def column(name: str) -> list[Any]:
        values = columns.get(name)
        if values is None:
            values = columns[name] = hist._column(inputs.get(name), n)
        return values

    for key, rows in groups.items():
        history = hist.loads(texts[rows[0]] if isinstance(key, tuple) else key)
        if history is None:
            continue
        ats = [int(request_us[i]) for i in rows]
        grouped = snapshots_grouped(history, ats, half_life_days) if len(rows) > 1 else None
        if grouped is None:
            for i, at in zip(rows, ats, strict=True):
                for name, value in hist.snapshot_at(history, at, half_life_days).items():
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
    shared = [hist.snapshot_at(history, int(a[j]), half_life_days) for j in first.tolist()]
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
