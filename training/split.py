"""Split a time-ordered frame into train / validation / test slices by time, never at random.

Train holds the oldest rows, validation the next ones, test the newest. Rows sharing a timestamp
always land in the same slice, so every train timestamp is strictly earlier than every
validation timestamp, which is strictly earlier than every test timestamp.

With an embargo ``gap`` (the conversion window), a lead whose label window
``[created_at, created_at + gap]`` would reach into the next slice's period is dropped: its
label could depend on what happened in that period (a conversion recorded during the test
weeks, the same person's later lead), which a model in production never knows when it scores.
The test slice is the newest share of *all* rows (the same test leads with or without the
embargo); the validation slice is the next share of rows that end one ``gap`` before the test
slice starts; train is every row that ends one ``valid_gap`` before validation starts. The rows
dropped and the gaps are reported (:meth:`TimeSplit.embargo`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pandas as pd

MIN_SLICE_ROWS = 1


class InsufficientDataError(ValueError):
    """Too few rows remain in a slice after the embargo; the message names the slice."""


@dataclass(frozen=True)
class TimeSplit:
    """Three time-ordered slices, the time window each covers and the embargo applied."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    time_col: str
    gap: pd.Timedelta | None = None
    valid_gap: pd.Timedelta | None = None
    dropped: dict[str, int] = field(default_factory=dict)

    def windows(self) -> dict[str, dict[str, str | int]]:
        """First and last timestamp and row count of each slice (JSON-ready)."""
        out: dict[str, dict[str, str | int]] = {}
        for name, part in (("train", self.train), ("valid", self.valid), ("test", self.test)):
            out[name] = {
                "start": str(part[self.time_col].min()),
                "end": str(part[self.time_col].max()),
                "rows": int(len(part)),
            }
        return out

    def embargo(self) -> dict[str, object]:
        """The gaps asked for, the gaps between the slices as split and the rows dropped
        (JSON-ready): ``train_to_valid_days`` is from the last train lead to the first
        validation lead, ``valid_to_test_days`` likewise."""
        def days(value: pd.Timedelta | None) -> float | None:
            return None if value is None else round(value / pd.Timedelta(days=1), 3)

        def between(before: pd.DataFrame, after: pd.DataFrame) -> float | None:
            return days(pd.Timedelta(after[self.time_col].min() - before[self.time_col].max()))

        return {
            "gap_days": days(self.gap),
            "valid_gap_days": days(self.valid_gap),
            "train_to_valid_days": between(self.train, self.valid),
            "valid_to_test_days": between(self.valid, self.test),
            "rows_dropped": {"before_valid": int(self.dropped.get("before_valid", 0)),
                             "before_test": int(self.dropped.get("before_test", 0))},
        }


def _cut_positions(times: np.ndarray, targets: list[int]) -> list[int]:
    """Move each target cut to a boundary between distinct timestamps (ties stay together).

    The nearest boundary is taken; when that would leave the slice before it empty, the next
    boundary after the target is used instead.
    """
    cuts: list[int] = []
    previous = 0
    for target in targets:
        target = min(max(target, 0), len(times))
        if 0 < target < len(times):
            left = int(np.searchsorted(times, times[target], side="left"))
            right = int(np.searchsorted(times, times[target], side="right"))
            cut = left if (target - left) <= (right - target) and left > previous else right
        else:
            cut = target
        cuts.append(cut)
        previous = cut
    return cuts


def _days(gap: pd.Timedelta | None) -> str:
    return "no gap" if gap is None else f"{gap / pd.Timedelta(days=1):g} days"


def _as_gap(value: timedelta | pd.Timedelta | None, name: str) -> pd.Timedelta | None:
    if value is None:
        return None
    gap = pd.Timedelta(value)
    if gap < pd.Timedelta(0):
        raise ValueError(f"{name} must not be negative, got {gap}")
    return gap


def _embargo_end(times: pd.Series, start: int, gap: pd.Timedelta) -> int:
    """Rows ``[0, result)`` of the sorted ``times`` whose label window ``[t, t + gap]`` closes
    by ``times[start]`` (the first timestamp of the next slice)."""
    return int(times.searchsorted(times.iloc[start] - gap, side="right"))


def time_split(
    df: pd.DataFrame,
    time_col: str,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    *,
    gap: timedelta | pd.Timedelta | None = None,
    valid_gap: timedelta | pd.Timedelta | None = None,
    min_rows: int = MIN_SLICE_ROWS,
) -> TimeSplit:
    """Split ``df`` by ``time_col`` into older train, next validation and newest test slices.

    ``fractions`` are the approximate shares of rows (they must be positive and sum to 1);
    cut points move to the nearest earlier tie boundary so that no timestamp spans two slices.
    ``gap`` (e.g. the conversion window) embargoes the test period: validation ends at least
    ``gap`` before the test slice starts, and ``valid_gap`` (default: ``gap``) does the same
    between train and validation (module docstring). Raises ``ValueError`` naming the problem;
    :class:`InsufficientDataError` when a slice keeps fewer than ``min_rows`` rows.
    """
    if time_col not in df.columns:
        raise ValueError(f"time column {time_col!r} is missing; columns: {list(df.columns)}")
    if len(fractions) != 3 or any(f <= 0 for f in fractions):
        raise ValueError(f"fractions must be three positive shares, got {fractions}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {sum(fractions):.4f}")
    if df[time_col].isna().any():
        raise ValueError(f"time column {time_col!r} holds {int(df[time_col].isna().sum())} nulls")
    test_gap = _as_gap(gap, "gap")
    inner_gap = test_gap if valid_gap is None else _as_gap(valid_gap, "valid_gap")

    ordered = df.sort_values(time_col, kind="stable").reset_index(drop=True)
    times = ordered[time_col].to_numpy()
    n = len(ordered)
    first = int(round(n * fractions[0]))
    second = int(round(n * (fractions[0] + fractions[1])))
    cut_valid, cut_test = _cut_positions(times, [first, second])
    cut_test = max(cut_test, cut_valid)
    dropped = {"before_valid": 0, "before_test": 0}
    valid_end = cut_test
    if test_gap is not None and 0 < cut_test < n:
        valid_end = min(cut_test, _embargo_end(ordered[time_col], cut_test, test_gap))
        # validation keeps its share of rows, ending one gap before the test slice
        valid_rows = cut_test - cut_valid
        cut_valid = _cut_positions(times, [max(valid_end - valid_rows, 0)])[0]
        cut_valid = min(cut_valid, valid_end)
        dropped["before_test"] = cut_test - valid_end
    train_end = cut_valid
    if inner_gap is not None and 0 < cut_valid < valid_end:
        train_end = min(cut_valid, _embargo_end(ordered[time_col], cut_valid, inner_gap))
        dropped["before_valid"] = cut_valid - train_end
    train = ordered.iloc[:train_end]
    valid = ordered.iloc[cut_valid:valid_end]
    test = ordered.iloc[cut_test:]
    embargoed = test_gap is not None or inner_gap is not None
    for name, part in (("train", train), ("validation", valid), ("test", test)):
        if len(part) >= max(min_rows, 1):
            continue
        left = "empty" if part.empty else f"with {len(part)} rows (at least {min_rows} needed)"
        why = (f"; the embargo ({_days(test_gap)} before test, {_days(inner_gap)} before "
               f"validation) dropped {dropped['before_test']} rows before test and "
               f"{dropped['before_valid']} before validation" if embargoed else "")
        raise InsufficientDataError(
            f"time split leaves the {name} slice {left} ({n} rows, "
            f"{ordered[time_col].nunique()} distinct {time_col!r} values{why}): need more rows "
            + ("or a longer history" if embargoed else "or more distinct timestamps")
        )
    return TimeSplit(
        train=train.reset_index(drop=True),
        valid=valid.reset_index(drop=True),
        test=test.reset_index(drop=True),
        time_col=time_col,
        gap=test_gap,
        valid_gap=inner_gap,
        dropped={k: int(v) for k, v in dropped.items()},
    )
