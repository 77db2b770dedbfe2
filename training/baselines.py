"""The baselines the model must beat, evaluated on the same test slice.

- ``RuleScoreBaseline``: the practitioners' two-dimensional ``rule_score`` turned into a
  probability by isotonic regression fitted on the train slice (monotone, so AUC equals the raw
  score's AUC, while log loss and calibration error become meaningful).
- ``LogisticBaseline``: logistic regression on the same model features (one-hot categoricals,
  median-imputed and standardised numerics); also a candidate that training may ship
  (``training.model.BlendedLeadModel``), so it explains itself: ``contributions`` gives each
  feature's part of the log-odds, as LightGBM's SHAP contributions do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

RULE_SCORE_COLUMN = "rule_score"
PROBABILITY_CLIP = 1e-6
MISSING_LEVEL = "missing"  # what a missing categorical value becomes before one-hot encoding


@dataclass(frozen=True)
class CategoricalTerms:
    """One categorical column's part of the fitted pipeline: its one-hot block (design columns
    ``start``–``stop``) as the fitted encoder outputs it for each level it knows
    (``blocks[levels[level]]``) and for a level it never saw (``blocks[-1]``)."""

    column: str
    start: int
    stop: int
    levels: dict[str, int]
    blocks: np.ndarray


@dataclass(frozen=True)
class LinearTerms:
    """The fitted logistic regression pipeline's parameters, read from its scikit-learn steps.

    Numeric column ``numeric_columns[i]`` becomes design column ``numeric_index[i]``:
    ``(x if present else fill[i] - mean[i]) / scale[i]`` (imputer median, scaler mean and
    scale); categorical columns become one-hot blocks (``categorical``, missing values as
    ``missing_level``). Log-odds = ``design @ coef + intercept``; contributions centre the design
    on ``design_mean`` (the training mean) and their bias is ``bias``.
    """

    feature_columns: tuple[str, ...]
    numeric_columns: tuple[str, ...]
    numeric_index: np.ndarray
    fill: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    categorical: tuple[CategoricalTerms, ...]
    coef: np.ndarray
    design_mean: np.ndarray
    intercept: float
    bias: float
    missing_level: str = MISSING_LEVEL


class RuleScoreBaseline:
    """Monotone (isotonic) map from ``rule_score`` to a conversion probability."""

    name = "rule_score"

    def __init__(self, column: str = RULE_SCORE_COLUMN) -> None:
        self.column = column
        self._iso = IsotonicRegression(
            y_min=PROBABILITY_CLIP, y_max=1 - PROBABILITY_CLIP, out_of_bounds="clip",
            increasing=True,
        )

    def _scores(self, df: pd.DataFrame) -> np.ndarray:
        if self.column not in df.columns:
            raise ValueError(f"rule-score baseline needs column {self.column!r}")
        scores = pd.to_numeric(df[self.column], errors="coerce").to_numpy(dtype=float)
        if np.isnan(scores).any():
            raise ValueError(
                f"column {self.column!r} holds {int(np.isnan(scores).sum())} missing or "
                "non-numeric values"
            )
        return scores

    def fit(self, df: pd.DataFrame, y: Sequence[float] | np.ndarray) -> RuleScoreBaseline:
        self._iso.fit(self._scores(df), np.asarray(y, dtype=float))
        return self

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Probability per row from its rule score."""
        return np.asarray(self._iso.predict(self._scores(df)), dtype=float)


class LogisticBaseline:
    """Logistic regression with one-hot categoricals and scaled numerics."""

    name = "logistic_regression"

    def __init__(self, feature_columns: Sequence[str], categorical_columns: Sequence[str],
                 seed: int = 42) -> None:
        self.feature_columns = list(feature_columns)
        self.categorical_columns = [c for c in categorical_columns if c in self.feature_columns]
        self.numeric_columns = [c for c in self.feature_columns
                                if c not in self.categorical_columns]
        transformers: list[tuple[str, Any, list[str]]] = []
        if self.numeric_columns:
            transformers.append(("numeric", make_pipeline(
                SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
            ), self.numeric_columns))
        if self.categorical_columns:
            transformers.append(("categorical", OneHotEncoder(
                handle_unknown="ignore", min_frequency=20,
            ), self.categorical_columns))
        self.pipeline = Pipeline([
            ("columns", ColumnTransformer(transformers)),
            ("model", LogisticRegression(C=1.0, max_iter=2000, random_state=seed)),
        ])

    def _frame(self, df: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in self.feature_columns if c not in df.columns]
        if missing:
            raise ValueError(f"logistic baseline input lacks column(s) {missing}")
        frame = df[self.feature_columns].copy()
        for column in self.categorical_columns:
            frame[column] = frame[column].astype(object).where(frame[column].notna(),
                                                               MISSING_LEVEL)
            frame[column] = frame[column].astype(str)
        for column in self.numeric_columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
        return frame

    def fit(self, df: pd.DataFrame, y: Sequence[float] | np.ndarray) -> LogisticBaseline:
        frame = self._frame(df)
        self.pipeline.fit(frame, np.asarray(y, dtype=int))
        self._mean = self._design(frame).mean(axis=0)
        self._source = self._output_sources()
        return self

    def _design(self, frame: pd.DataFrame) -> np.ndarray:
        """The fitted column transformer's output (the regression's inputs) as a dense array."""
        z = self.pipeline.named_steps["columns"].transform(frame)
        return np.asarray(z.toarray() if hasattr(z, "toarray") else z, dtype=float)

    def _output_sources(self) -> np.ndarray:
        """For each column of the design matrix, the position of its feature column."""
        position = {name: i for i, name in enumerate(self.feature_columns)}
        sources: list[int] = []
        for name, transformer, columns in self.pipeline.named_steps["columns"].transformers_:
            if name == "numeric":
                sources += [position[c] for c in columns]
            elif name == "categorical":
                infrequent = getattr(transformer, "infrequent_categories_", None)
                for i, column in enumerate(columns):
                    width = len(transformer.categories_[i])
                    if infrequent is not None and infrequent[i] is not None:
                        width += 1 - len(infrequent[i])  # the rare ones share one column
                    sources += [position[column]] * width
        n_out = len(self.pipeline.named_steps["model"].coef_[0])
        if len(sources) != n_out:
            raise RuntimeError(f"design has {n_out} columns but {len(sources)} were traced")
        return np.asarray(sources, dtype=int)

    def contributions(self, df: pd.DataFrame) -> np.ndarray:
        """Per-row log-odds contributions, one column per feature then the bias (the layout of
        LightGBM's ``pred_contrib``): coefficient × (input − its training mean), one-hot
        columns summed onto their feature; the bias is the log-odds at the training mean, so
        each row sums to the model's log-odds (exact SHAP values of a linear model)."""
        model = self.pipeline.named_steps["model"]
        coef = model.coef_[0]
        parts = (self._design(self._frame(df)) - self._mean) * coef
        out = np.zeros((len(df), len(self.feature_columns) + 1))
        np.add.at(out.T, self._source, parts.T)
        out[:, -1] = self._bias()
        return out

    def _bias(self) -> float:
        """The contributions' bias: the log-odds at the training mean of the design."""
        model = self.pipeline.named_steps["model"]
        return float(model.intercept_[0] + model.coef_[0] @ self._mean)

    def terms(self) -> LinearTerms:
        """The fitted parameters (``LinearTerms``) for a fast twin of ``log_odds`` and
        ``contributions`` (``serving.fast_linear``): read from the fitted imputer, scaler,
        encoder and regression, nothing refitted. Each one-hot block is the fitted pipeline's
        own output for a probe row per known level and one unknown level, so infrequent levels
        and unknown ones come out as the encoder treats them."""
        if not hasattr(self, "_source"):
            raise ValueError("the logistic baseline is not fitted")
        model = self.pipeline.named_steps["model"]
        coef = np.asarray(model.coef_[0], dtype=float)
        columns_step = self.pipeline.named_steps["columns"]
        position = {name: i for i, name in enumerate(self.feature_columns)}
        numeric_index = np.array([int(np.flatnonzero(self._source == position[c])[0])
                                  for c in self.numeric_columns], dtype=np.intp)
        fill = mean = scale = np.zeros(0)
        if self.numeric_columns:
            numeric = columns_step.named_transformers_["numeric"]
            imputer, scaler = numeric.steps[0][1], numeric.steps[-1][1]
            fill = np.asarray(imputer.statistics_, dtype=float)
            mean = np.asarray(scaler.mean_, dtype=float)
            scale = np.asarray(scaler.scale_, dtype=float)
        categorical: list[CategoricalTerms] = []
        if self.categorical_columns:
            encoder = columns_step.named_transformers_["categorical"]
            known = [[str(level) for level in levels] for levels in encoder.categories_]
            probes: list[dict[str, Any]] = []
            base = {c: 0.0 for c in self.numeric_columns}
            base.update({c: levels[0] for c, levels in zip(self.categorical_columns, known,
                                                           strict=True)})
            for column, levels in zip(self.categorical_columns, known, strict=True):
                unknown = "unknown level " + "?" * (1 + max(map(len, levels)))
                probes += [{**base, column: level} for level in [*levels, unknown]]
            design = self._design(self._frame(pd.DataFrame(probes)))
            row = 0
            for column, levels in zip(self.categorical_columns, known, strict=True):
                where = np.flatnonzero(self._source == position[column])
                start, stop = int(where[0]), int(where[-1]) + 1
                if stop - start != len(where):
                    raise RuntimeError(f"one-hot block of {column!r} is not contiguous")
                blocks = design[row:row + len(levels) + 1, start:stop].copy()
                categorical.append(CategoricalTerms(
                    column, start, stop, {level: i for i, level in enumerate(levels)}, blocks))
                row += len(levels) + 1
        return LinearTerms(
            feature_columns=tuple(self.feature_columns),
            numeric_columns=tuple(self.numeric_columns), numeric_index=numeric_index,
            fill=fill, mean=mean, scale=scale, categorical=tuple(categorical), coef=coef,
            design_mean=np.asarray(self._mean, dtype=float),
            intercept=float(model.intercept_[0]), bias=self._bias())

    def log_odds(self, df: pd.DataFrame) -> np.ndarray:
        """The model's log-odds per row, summed row by row (not by a matrix product), so a
        row's value does not depend on the rows scored with it (single = batch, bit for bit)."""
        model = self.pipeline.named_steps["model"]
        design = self._design(self._frame(df))
        return (design * model.coef_[0]).sum(axis=1) + float(model.intercept_[0])

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Probability per row."""
        return np.asarray(self.pipeline.predict_proba(self._frame(df))[:, 1], dtype=float)


def fit_baselines(
    train: pd.DataFrame,
    y_train: Sequence[float] | np.ndarray,
    feature_columns: Sequence[str],
    categorical_columns: Sequence[str],
    seed: int = 42,
) -> dict[str, RuleScoreBaseline | LogisticBaseline]:
    """Both baselines fitted on the train slice, keyed by their report name."""
    rule = RuleScoreBaseline().fit(train, y_train)
    logistic = LogisticBaseline(feature_columns, categorical_columns, seed=seed).fit(
        train, y_train
    )
    return {rule.name: rule, logistic.name: logistic}
