"""Fast twin of the logistic regression pipeline: log-odds and contributions without pandas.

``training.baselines.LogisticBaseline.log_odds`` / ``.contributions`` copy the input into a
pandas frame, run scikit-learn's ``ColumnTransformer`` (median imputer, standard scaler,
one-hot encoder) and the regression, and sum one-hot parts per feature with ``np.add.at``: with
the frame the general path builds, 32.8 ms for one lead and 50.8 ms for 1,000 (against 0.095
and 5.05 ms here), over ten times the rest of ``POST /predict``. ``FastLinear``
reads the fitted parameters once (``LogisticBaseline.terms``) and computes the same numbers
from the column dictionary the service builds (name → values):

* numeric column: missing → the imputer's median, then ``(x - mean) / scale`` — the design
  value, as the scaler computes it; its contribution is ``(design - training mean) × coef``;
* categorical column: the value as text (missing → ``"missing"``, as the baseline's frame has
  it) looked up in the encoder's levels; its one-hot block is the encoder's own output for that
  level (an infrequent level shares the infrequent column, an unknown one is all zeros), and
  its contribution is precomputed per level in the order ``np.add.at`` adds the block's parts;
* log-odds: the dense design row times the coefficients, summed as the baseline sums it.

The same operations run in the same order, so log-odds and contributions equal the baseline's
(bit for bit on the test data; ``tests/unit/test_serving_fast_paths.py`` holds them to 1e-9 on
random and edge inputs), and one row gives the same bits alone as inside a batch (one row runs
the operations on Python floats, then the same design sum). Kept for serving a
``BlendedLeadModel`` in the latency budget of a LightGBM champion (``/predict`` p50 ≤ 3 ms,
batch of 1,000 ≤ 150 ms; ``serving.scoring.FastScorer``). Table and date: ``docs/scaling.md``,
"Library paths and the fast twins we keep" (``benchmarks/bench_library_paths.py``).

A categorical value is looked up as ``str(value)`` per value, as ``FastScorer.matrix`` does for
LightGBM; pandas would spell a non-text level by its column's dtype (``3`` in a column that also
holds a missing value becomes ``"3.0"``). The service's categorical features are text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.baselines import LinearTerms
from training.model import FeatureInputError


@dataclass(frozen=True)
class _Categorical:
    column: str
    position: int  # the column's place among the features (its contribution column)
    start: int
    stop: int
    index: dict[str, int]  # level → row of ``blocks`` / ``contrib``
    unknown: int  # the row of a level the encoder never saw
    blocks: np.ndarray  # rows × block width: the encoder's one-hot output
    contrib: np.ndarray  # per row: the column's contribution
    block_lists: list[list[float]]  # ``blocks`` and ``contrib`` as Python floats (one row)
    contrib_list: list[float]


class FastLinear:
    """Log-odds and per-feature contributions of a fitted ``LogisticBaseline``."""

    def __init__(self, terms: LinearTerms) -> None:
        self.columns = list(terms.feature_columns)
        self.numeric_columns = list(terms.numeric_columns)
        position = {name: i for i, name in enumerate(self.columns)}
        self.numeric_positions = np.array([position[c] for c in self.numeric_columns],
                                          dtype=np.intp)
        self.numeric_index = np.asarray(terms.numeric_index, dtype=np.intp)
        self.fill = np.asarray(terms.fill, dtype=float)
        self.mean = np.asarray(terms.mean, dtype=float)
        self.scale = np.asarray(terms.scale, dtype=float)
        self.coef = np.asarray(terms.coef, dtype=float)
        self.design_mean = np.asarray(terms.design_mean, dtype=float)
        self.numeric_coef = self.coef[self.numeric_index]
        self.numeric_design_mean = self.design_mean[self.numeric_index]
        self.intercept = float(terms.intercept)
        self.bias = float(terms.bias)
        self.missing_level = terms.missing_level
        self.categorical = [self._categorical(part, position[part.column])
                            for part in terms.categorical]
        # one row in Python floats (the same IEEE operations as the arrays, without their
        # per-call cost): per numeric column (position, design index, fill, mean, scale,
        # design mean, coefficient)
        self._numeric_one = list(zip(
            self.numeric_positions.tolist(), self.numeric_index.tolist(), self.fill.tolist(),
            self.mean.tolist(), self.scale.tolist(), self.numeric_design_mean.tolist(),
            self.numeric_coef.tolist(), strict=True))
        self._zero_design = [0.0] * len(self.coef)

    @classmethod
    def from_baseline(cls, baseline: Any) -> FastLinear | None:
        """The twin of a fitted ``LogisticBaseline``, or None for any other linear model."""
        terms = getattr(baseline, "terms", None)
        if terms is None or not hasattr(baseline, "_source"):
            return None
        return cls(terms())

    def _categorical(self, part: Any, position: int) -> _Categorical:
        blocks = np.asarray(part.blocks, dtype=float)
        coef = self.coef[part.start:part.stop].tolist()
        centre = self.design_mean[part.start:part.stop].tolist()
        contrib = np.empty(len(blocks))
        for r, block in enumerate(blocks.tolist()):
            total = 0.0  # ``np.add.at`` adds the block's parts one by one, in design order
            for x, m, c in zip(block, centre, coef, strict=True):
                total += (x - m) * c
            contrib[r] = total
        return _Categorical(part.column, position, part.start, part.stop, dict(part.levels),
                            len(blocks) - 1, blocks, contrib, blocks.tolist(), contrib.tolist())

    def predict(self, features: dict[str, Sequence[Any]], numbers: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """(log-odds per row, contributions rows × (features + bias)) of a batch of columns.

        ``numbers``: the numeric columns already as floats (rows × ``numeric_columns``, missing
        → NaN), when the caller has them; else they are read from ``features``.
        """
        missing = [c for c in self.columns if c not in features]
        if missing:
            raise FeatureInputError(f"model input lacks feature column(s) {missing}")
        n = len(features[self.columns[0]]) if self.columns else 0
        if n == 1:
            return self._predict_one(features, numbers)
        if numbers is None:
            numbers = np.empty((n, len(self.numeric_columns)))
            for j, column in enumerate(self.numeric_columns):
                numbers[:, j] = as_numbers(column, features[column], n)
        design = np.zeros((n, len(self.coef)))
        contrib = np.empty((n, len(self.columns) + 1))
        filled = np.where(np.isnan(numbers), self.fill, numbers)
        scaled = (filled - self.mean) / self.scale
        design[:, self.numeric_index] = scaled
        contrib[:, self.numeric_positions] = (scaled - self.numeric_design_mean) * self.numeric_coef
        missing_level = self.missing_level
        for part in self.categorical:
            get = part.index.get
            unknown = part.unknown
            rows = [get(v, unknown) if type(v) is str
                    else get(missing_level if is_missing(v) else str(v), unknown)
                    for v in features[part.column]]
            design[:, part.start:part.stop] = part.blocks[rows]
            contrib[:, part.position] = part.contrib[rows]
        contrib[:, -1] = self.bias
        log_odds = (design * self.coef).sum(axis=1) + self.intercept
        return log_odds, contrib

    def _predict_one(self, features: dict[str, Sequence[Any]], numbers: np.ndarray | None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """``predict`` of one row: the same operations on Python floats, then the same sum."""
        if numbers is None:
            values = [as_number(c, features[c][0]) for c in self.numeric_columns]
        else:
            values = numbers[0].tolist()
        design = self._zero_design.copy()
        contrib = [0.0] * (len(self.columns) + 1)
        for value, (at, index, fill, mean, scale, centre, coef) in zip(
                values, self._numeric_one, strict=True):
            scaled = ((fill if value != value else value) - mean) / scale
            design[index] = scaled
            contrib[at] = (scaled - centre) * coef
        missing_level = self.missing_level
        for part in self.categorical:
            v = features[part.column][0]
            row = part.index.get(v if type(v) is str
                                 else missing_level if is_missing(v) else str(v), part.unknown)
            design[part.start:part.stop] = part.block_lists[row]
            contrib[part.position] = part.contrib_list[row]
        contrib[-1] = self.bias
        log_odds = (np.array([design]) * self.coef).sum(axis=1) + self.intercept
        return log_odds, np.array([contrib])

    def log_odds(self, features: dict[str, Sequence[Any]]) -> np.ndarray:
        """``LogisticBaseline.log_odds`` of a batch of columns."""
        return self.predict(features)[0]

    def contributions(self, features: dict[str, Sequence[Any]]) -> np.ndarray:
        """``LogisticBaseline.contributions`` of a batch of columns (bias column last)."""
        return self.predict(features)[1]


def is_missing(value: Any) -> bool:
    """A missing value as pandas' ``notna`` sees one: None, NaN, ``pd.NA``, ``NaT``."""
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return value != value
    if isinstance(value, str | int | bytes):
        return False
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a container: not one missing value
        return False


def as_numbers(column: str, values: Sequence[Any], n: int) -> np.ndarray | list[float]:
    """A numeric column as floats (missing → NaN); the per-value path names a bad value."""
    if not any(issubclass(t, str | bytes) for t in set(map(type, values))):
        try:
            out = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            pass
        else:
            if out.shape == (n,):
                return out
    return [as_number(column, v) for v in values]


def as_number(column: str, value: Any) -> float:
    """One numeric value as a float (missing → NaN), or ``FeatureInputError`` naming the
    column."""
    if value is None:
        return math.nan
    if isinstance(value, bool | int | float | np.number):
        return float(value)
    if is_missing(value):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise FeatureInputError(
            f"feature column {column!r} must be numeric; got {value!r}"
        ) from None
