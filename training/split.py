"""Split a time-ordered frame into train / validation / test slices by time, never at random.

Train holds the oldest rows, validation the next ones, test the newest. Rows sharing a timestamp
always land in the same slice, so every train timestamp is strictly earlier than every
validation timestamp, which is strictly earlier than every test timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class TimeSplit:
    """Three time-ordered slices and the time window each covers."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    time_col: str

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


def time_split(
    df: pd.DataFrame,
    time_col: str,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> TimeSplit:
    """Split ``df`` by ``time_col`` into older train, next validation and newest test slices.

    ``fractions`` are the approximate shares of rows (they must be positive and sum to 1);
    cut points move to the nearest earlier tie boundary so that no timestamp spans two slices.
    Raises ``ValueError`` naming the problem when a slice would be empty.
    """
    if time_col not in df.columns:
        raise ValueError(f"time column {time_col!r} is missing; columns: {list(df.columns)}")
    if len(fractions) != 3 or any(f <= 0 for f in fractions):
        raise ValueError(f"fractions must be three positive shares, got {fractions}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {sum(fractions):.4f}")
    if df[time_col].isna().any():
        raise ValueError(f"time column {time_col!r} holds {int(df[time_col].isna().sum())} nulls")

    ordered = df.sort_values(time_col, kind="stable").reset_index(drop=True)
    times = ordered[time_col].to_numpy()
    n = len(ordered)
    first = int(round(n * fractions[0]))
    second = int(round(n * (fractions[0] + fractions[1])))
    cut_valid, cut_test = _cut_positions(times, [first, second])
    cut_test = max(cut_test, cut_valid)
    train = ordered.iloc[:cut_valid]
    valid = ordered.iloc[cut_valid:cut_test]
    test = ordered.iloc[cut_test:]
    for name, part in (("train", train), ("validation", valid), ("test", test)):
        if part.empty:
            raise ValueError(
                f"time split leaves the {name} slice empty ({n} rows, "
                f"{ordered[time_col].nunique()} distinct {time_col!r} values): need more rows "
                "or more distinct timestamps"
            )
    return TimeSplit(
        train=train.reset_index(drop=True),
        valid=valid.reset_index(drop=True),
        test=test.reset_index(drop=True),
        time_col=time_col,
    )
