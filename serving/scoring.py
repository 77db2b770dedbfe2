"""Scoring without pandas: the champion's booster, calibrator and reasons on a numpy matrix.

``LeadConversionModel.predict_with_reasons`` builds a pandas frame with category dtypes per call
(``training.model.prepare_features``), which costs more than the booster itself for one lead.
``FastScorer`` builds the same booster input once per batch as a float matrix: numeric
features as float64 (missing → NaN), categorical features as the code of their training level
(the position in ``model.levels[column]``, unseen or missing → NaN), exactly the codes LightGBM
derives from the pandas categories. Probabilities and reasons equal ``predict_with_reasons``
(tests compare them).

A ``BlendedLeadModel`` (the logistic regression alone, or its blend with LightGBM) takes the
same path: its log-odds are ``weight`` × the booster's margin + (1 − ``weight``) × the linear
log-odds from ``serving.fast_linear.FastLinear`` (the fast twin of the fitted scikit-learn
pipeline), its contributions blend the same way, then its calibrator and the same reasons. Any
other model goes through its own ``predict_with_reasons`` on a frame.

Per-call overhead that does not depend on the batch is kept out of the request: the calibrator's
map is precomputed (``serving.fast_calibration``, the fast twin of scikit-learn's ``predict``),
and the reasons' ranking runs on the whole contribution matrix at once, so the sentence builder
only sees the few features it reports (and words each feature/value/sign once). Scores and SHAP
contributions come from ``serving.fast_treeshap.TreeTables`` (the fast twin of LightGBM's
``predict(pred_contrib=True)``) when the booster's trees are small enough, else from LightGBM.
Why each twin is kept, with the measured ratio: ``docs/scaling.md``, "Library paths and the fast
twins we keep".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit

from serving.fast_calibration import fast_calibration
from serving.fast_linear import FastLinear, as_number, as_numbers, is_missing
from serving.fast_treeshap import TreeTables
from training.explain import top_reasons
from training.model import FeatureInputError

MIN_ABS_CONTRIBUTION = 1e-6  # as ``training.explain.top_reasons``
MAX_CACHED_WORDINGS = 50_000  # (feature, value, sign) → (value text, sentence)


class FastScorer:
    """Calibrated probability and top reasons per row of a feature batch."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.fast = False
        # a ``BlendedLeadModel``: the linear twin, and the booster when its weight is > 0
        self.linear: FastLinear | None = None
        self.weight = 1.0
        self.linear_numbers: np.ndarray | None = None  # its numeric columns in ``matrix``
        common = ("calibrator", "feature_columns", "levels", "reason_templates")
        if not all(hasattr(model, name) for name in common):
            return
        if hasattr(model, "linear") and hasattr(model, "weight"):
            linear = FastLinear.from_baseline(model.linear)
            if linear is None or linear.columns != list(model.feature_columns):
                return
            self.linear, self.weight = linear, float(model.weight)
            booster = model.lightgbm if self.weight > 0 else None
        elif hasattr(model, "booster"):
            booster = model.booster  # built once, here, not on the first request
        else:
            return
        self.fast = True
        self.columns: list[str] = list(model.feature_columns)
        self.codes: dict[str, dict[str, float]] = {
            column: {str(level): float(i) for i, level in enumerate(levels)}
            for column, levels in model.levels.items()
        }
        self.booster = booster
        self.calibrate = fast_calibration(model.calibrator) or model.calibrator.predict
        # scores and SHAP contributions by table lookup (None: LightGBM's own predict)
        self.tables = TreeTables.build(booster) if booster is not None else None
        if self.linear is not None and not any(c in self.codes
                                               for c in self.linear.numeric_columns):
            position = {name: j for j, name in enumerate(self.columns)}
            self.linear_numbers = np.array(
                [position[c] for c in self.linear.numeric_columns], dtype=np.intp)

    def matrix(self, features: dict[str, Sequence[Any]]) -> np.ndarray:
        """The booster's input for a batch given as columns (name → values)."""
        missing = [c for c in self.columns if c not in features]
        if missing:
            raise FeatureInputError(f"model input lacks feature column(s) {missing}")
        n = len(features[self.columns[0]]) if self.columns else 0
        if n == 1:  # one lead (POST /predict): one row of floats, no per-column arrays
            return np.array([[self._value(column, features[column][0])
                              for column in self.columns]], dtype=np.float64)
        out = np.empty((n, len(self.columns)), dtype=np.float64)
        for j, column in enumerate(self.columns):
            values = features[column]
            codes = self.codes.get(column)
            if codes is not None:  # strings are their own ``str``: one dict lookup each
                get = codes.get
                out[:, j] = [
                    get(v, math.nan) if type(v) is str
                    else math.nan if is_missing(v) else get(str(v), math.nan)
                    for v in values
                ]
            else:
                out[:, j] = as_numbers(column, values, n)
        return out

    def _value(self, column: str, value: Any) -> float:
        """One cell of ``matrix``: the level's code, or the number."""
        codes = self.codes.get(column)
        if codes is not None:
            return math.nan if is_missing(value) else codes.get(str(value), math.nan)
        if type(value) is float:
            return value
        return as_number(column, value)

    def score(self, features: dict[str, Sequence[Any]], top_k: int = 3) -> list[dict[str, Any]]:
        """Per row: ``probability`` (calibrated), ``raw_score``, positive and negative reasons."""
        if not self.fast:
            import pandas as pd

            return self.model.predict_with_reasons(pd.DataFrame(dict(features)), top_k=top_k)
        if self.linear is None:
            x = self.matrix(features)
            if len(x) == 0:
                return []
            raw, contrib = self.booster_output(x)
        else:
            raw, contrib = self.blend_output(features)
            if len(raw) == 0:
                return []
        probability = np.asarray(self.calibrate(raw), dtype=float)
        width = len(self.columns)
        reasons = self.reasons(contrib[:, :width], features, top_k)
        return [
            {"probability": p, "raw_score": r, "positive_reasons": why["positive"],
             "negative_reasons": why["negative"]}
            for p, r, why in zip(probability.tolist(), raw.tolist(), reasons, strict=True)
        ]

    def booster_output(self, x: np.ndarray, raw_score: bool = False
                       ) -> tuple[np.ndarray, np.ndarray]:
        """``booster.predict`` of the rows (with ``raw_score``, the margin) and their SHAP
        contributions (bias column last, when LightGBM computed them), from the tree tables
        when the model has them."""
        if self.tables is not None:
            return self.tables.predict(x, raw_score=raw_score)
        threads = 1 if len(x) < 64 else 0  # no thread start-up cost for small batches
        raw = np.asarray(self.booster.predict(x, raw_score=raw_score, num_threads=threads),
                         dtype=float).ravel()
        contrib = np.asarray(
            self.booster.predict(x, pred_contrib=True, num_threads=threads), dtype=float
        )
        return raw, contrib

    def blend_output(self, features: dict[str, Sequence[Any]]
                     ) -> tuple[np.ndarray, np.ndarray]:
        """A ``BlendedLeadModel``'s uncalibrated probabilities and contributions (rows ×
        features, no bias), computed as its ``_parts``: (1 − weight) × the linear part, plus
        weight × the booster's margin and SHAP values when the weight is > 0."""
        assert self.linear is not None
        numbers = x = None
        if self.booster is not None or self.linear_numbers is not None:
            x = self.matrix(features)  # checks every column as the LightGBM path does
            if self.linear_numbers is not None:
                numbers = x[:, self.linear_numbers]
        log_odds, linear = self.linear.predict(features, numbers)
        width = len(self.columns)
        keep = 1 - self.weight
        log_odds = keep * log_odds
        contrib = keep * linear[:, :width]
        if self.booster is not None and x is not None and len(x):
            margin, shap = self.booster_output(x, raw_score=True)
            log_odds = log_odds + self.weight * margin
            contrib = contrib + self.weight * shap[:, :width]
        return expit(log_odds), contrib

    def reasons(self, contrib: np.ndarray, features: dict[str, Sequence[Any]], top_k: int
                ) -> list[dict[str, list[dict[str, Any]]]]:
        """``training.explain.top_reasons`` of every row of a contribution matrix.

        The ranking (stable sort by absolute contribution, the first ``top_k`` positive and
        negative ones at or above ``MIN_ABS_CONTRIBUTION``) runs on the matrix. A reason's
        wording (value as text, sentence) depends only on the feature, its value and the sign
        of the contribution: ``top_reasons`` words each such triple once and the result is
        remembered (``_wording``), so the output is identical to ``top_reasons`` per row.
        Reasons are dicts in ``Reason``'s field order (feature, value, text, contribution).
        """
        order = np.argsort(-np.abs(contrib), axis=1, kind="stable")
        ranked = np.take_along_axis(contrib, order, axis=1)
        positive = ranked >= MIN_ABS_CONTRIBUTION
        negative = ranked <= -MIN_ABS_CONTRIBUTION
        keep = ((positive & (np.cumsum(positive, axis=1) <= top_k))
                | (negative & (np.cumsum(negative, axis=1) <= top_k)))
        rows, slots = np.nonzero(keep)  # row-major: each row's reasons in ranked order
        chosen = order[rows, slots].tolist()
        values = ranked[rows, slots].tolist()
        columns = self.columns
        column_values = [features[name] for name in columns]
        n = len(contrib)
        positives: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        negatives: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        # (feature, type, value, sign) → (value text, sentence); per scorer, i.e. per model
        wording: dict[tuple[Any, ...], tuple[str | None, str]] = self.__dict__.setdefault(
            "_wording", {})
        get = wording.get
        for i, j, c in zip(rows.tolist(), chosen, values, strict=True):
            value = column_values[j][i]
            up = c > 0
            key = (columns[j], type(value), value, up)
            try:
                worded = get(key)
            except TypeError:  # an unhashable value: word it every time
                key, worded = None, None
            if worded is None:
                worded = self._word(columns[j], value, c, top_k)
                if key is not None and not (isinstance(value, float) and value != value):
                    if len(wording) >= MAX_CACHED_WORDINGS:
                        wording.clear()
                    wording[key] = worded
            (positives if up else negatives)[i].append(
                {"feature": columns[j], "value": worded[0], "text": worded[1],
                 "contribution": round(c, 4)})
        return [{"positive": pos, "negative": neg}
                for pos, neg in zip(positives, negatives, strict=True)]

    def _word(self, name: str, value: Any, contribution: float, top_k: int
              ) -> tuple[str | None, str]:
        """(value as text, sentence) of one feature's reason, as ``top_reasons`` words it."""
        why = top_reasons(np.array([contribution]), [name], {name: value}, top_k=top_k,
                          templates=self.model.reason_templates,
                          min_abs_contribution=MIN_ABS_CONTRIBUTION)
        reason = (why["positive"] or why["negative"])[0]
        return reason["value"], reason["text"]


