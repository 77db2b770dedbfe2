"""Scoring without pandas: the champion's booster, calibrator and reasons on a numpy matrix.

``LeadConversionModel.predict_with_reasons`` builds a pandas frame with category dtypes per call
(``training.model.prepare_features``), which costs more than the booster itself for one lead.
``FastScorer`` builds the same booster input once per batch as a float matrix: numeric
features as float64 (missing → NaN), categorical features as the code of their training level
(the position in ``model.levels[column]``, unseen or missing → NaN), exactly the codes LightGBM
derives from the pandas categories. Probabilities and reasons equal ``predict_with_reasons``
(tests compare them); a model that is not a ``LeadConversionModel`` goes through its own
``predict_with_reasons`` on a frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from training.explain import top_reasons
from training.model import FeatureInputError


class FastScorer:
    """Calibrated probability and top reasons per row of a feature batch."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.fast = all(
            hasattr(model, name)
            for name in ("booster", "calibrator", "feature_columns", "levels", "reason_templates")
        )
        if not self.fast:
            return
        self.columns: list[str] = list(model.feature_columns)
        self.codes: dict[str, dict[str, float]] = {
            column: {str(level): float(i) for i, level in enumerate(levels)}
            for column, levels in model.levels.items()
        }
        self.booster = model.booster  # built once, here, not on the first request

    def matrix(self, features: dict[str, Sequence[Any]]) -> np.ndarray:
        """The booster's input for a batch given as columns (name → values)."""
        missing = [c for c in self.columns if c not in features]
        if missing:
            raise FeatureInputError(f"model input lacks feature column(s) {missing}")
        n = len(features[self.columns[0]]) if self.columns else 0
        out = np.empty((n, len(self.columns)), dtype=np.float64)
        for j, column in enumerate(self.columns):
            values = features[column]
            codes = self.codes.get(column)
            if codes is not None:
                out[:, j] = [
                    math.nan if _missing(v) else codes.get(str(v), math.nan) for v in values
                ]
            else:
                out[:, j] = [_number(column, v) for v in values]
        return out

    def score(self, features: dict[str, Sequence[Any]], top_k: int = 3) -> list[dict[str, Any]]:
        """Per row: ``probability`` (calibrated), ``raw_score``, positive and negative reasons."""
        if not self.fast:
            import pandas as pd

            return self.model.predict_with_reasons(pd.DataFrame(dict(features)), top_k=top_k)
        x = self.matrix(features)
        if len(x) == 0:
            return []
        threads = 1 if len(x) < 64 else 0  # no thread start-up cost for small batches
        raw = np.asarray(self.booster.predict(x, num_threads=threads), dtype=float)
        probability = np.asarray(self.model.calibrator.predict(raw), dtype=float)
        contrib = np.asarray(
            self.booster.predict(x, pred_contrib=True, num_threads=threads), dtype=float
        )
        width = len(self.columns)
        rows: list[dict[str, Any]] = []
        for i in range(len(x)):
            values = {column: features[column][i] for column in self.columns}
            reasons = top_reasons(contrib[i, :width], self.columns, values, top_k=top_k,
                                  templates=self.model.reason_templates)
            rows.append({
                "probability": float(probability[i]),
                "raw_score": float(raw[i]),
                "positive_reasons": reasons["positive"],
                "negative_reasons": reasons["negative"],
            })
        return rows


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(column: str, value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool | int | float | np.number):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise FeatureInputError(
            f"feature column {column!r} must be numeric; got {value!r}"
        ) from None
