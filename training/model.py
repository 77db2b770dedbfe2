"""The packaged lead-conversion model: LightGBM booster + calibrator + feature contract.

``LeadConversionModel`` is an ``mlflow.pyfunc.PythonModel``; ``BlendedLeadModel`` packages the
other models training may choose (``training.selection``): the logistic regression alone, or
its blend with LightGBM on the logit scale. It holds everything serving needs
to reproduce training exactly: the booster as a model string, the fitted calibrator, the ordered
feature list, the categorical levels (pandas category dtypes are rebuilt with the same
categories in the same order, so category codes match training) and the reason texts.

``prepare_features`` is the single function that turns a raw feature frame into the booster's
input, used both when training and when serving.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

# Passive OpenMP waiting: spinning threads make LightGBM 10-20x slower on a busy 2-core machine.
# Effective only if set before LightGBM is first loaded in the process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import lightgbm as lgb  # noqa: E402
import mlflow.pyfunc  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.special import expit  # noqa: E402

from training.explain import REASON_TEMPLATES, top_reasons  # noqa: E402


class FeatureInputError(ValueError):
    """The input frame does not satisfy the model's feature contract (names the column)."""


def categorical_levels(
    df: pd.DataFrame, categorical_columns: Sequence[str]
) -> dict[str, list[str]]:
    """Sorted category levels of each categorical column as seen in ``df`` (the train slice)."""
    levels: dict[str, list[str]] = {}
    for column in categorical_columns:
        if column not in df.columns:
            raise FeatureInputError(f"categorical column {column!r} is missing from the frame")
        values = df[column].dropna().astype(str).unique().tolist()
        levels[column] = sorted(values)
    return levels


def prepare_features(
    df: pd.DataFrame,
    feature_columns: Sequence[str],
    levels: Mapping[str, Sequence[str]],
) -> pd.DataFrame:
    """The booster's input: columns in training order, numerics as float64, categoricals as
    pandas categories with exactly the training levels (unseen values become missing).

    Raises ``FeatureInputError`` naming missing columns or non-numeric values.
    """
    if not isinstance(df, pd.DataFrame):
        raise FeatureInputError(f"model input must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in feature_columns if c not in df.columns]
    if missing:
        raise FeatureInputError(f"model input lacks feature column(s) {missing}")
    out: dict[str, pd.Series] = {}
    for column in feature_columns:
        series = df[column]
        if column in levels:
            as_text = series.astype("string").astype(object).where(series.notna(), None)
            out[column] = pd.Series(
                pd.Categorical(as_text, categories=list(levels[column])), index=df.index
            )
            continue
        if series.dtype == bool or pd.api.types.is_bool_dtype(series):
            out[column] = series.astype(float)
            continue
        converted = pd.to_numeric(series, errors="coerce")
        bad = converted.isna() & series.notna()
        if bad.any():
            example = series[bad].iloc[0]
            raise FeatureInputError(
                f"feature column {column!r} must be numeric; got {example!r} "
                f"in {int(bad.sum())} row(s)"
            )
        out[column] = converted.astype("float64")
    return pd.DataFrame(out, index=df.index)


def signature_frame(
    df: pd.DataFrame, feature_columns: Sequence[str], levels: Mapping[str, Sequence[str]]
) -> pd.DataFrame:
    """The feature frame as the model's public input (for the MLflow signature): categoricals
    as text, integer columns of ``df`` as int64 (what Feast returns for Int64 features; MLflow
    refuses int64 input for a double column), other numerics as float64."""
    prepared = prepare_features(df, feature_columns, levels)
    for column in feature_columns:
        if column in levels:
            prepared[column] = prepared[column].astype(object).where(
                prepared[column].notna(), None)
        elif pd.api.types.is_integer_dtype(df[column]) or pd.api.types.is_bool_dtype(df[column]):
            prepared[column] = df[column].astype("int64")
    return prepared


class LeadConversionModel(mlflow.pyfunc.PythonModel):
    """Calibrated LightGBM lead-conversion model with per-lead reasons."""

    def __init__(
        self,
        model_string: str,
        calibrator: Any,
        feature_columns: Sequence[str],
        levels: Mapping[str, Sequence[str]],
        reason_templates: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.model_string = model_string
        self.calibrator = calibrator
        self.feature_columns = list(feature_columns)
        self.levels = {k: list(v) for k, v in levels.items()}
        self.reason_templates = dict(reason_templates or REASON_TEMPLATES)
        self.metadata = dict(metadata or {})
        self._booster: lgb.Booster | None = None

    # the booster is rebuilt from its string after unpickling, never pickled itself
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_booster"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def booster(self) -> lgb.Booster:
        """The LightGBM booster (loaded from the model string on first use)."""
        if self._booster is None:
            self._booster = lgb.Booster(model_str=self.model_string)
        return self._booster

    @property
    def categorical_columns(self) -> list[str]:
        return [c for c in self.feature_columns if c in self.levels]

    def load_context(self, context: Any) -> None:
        """Build the booster once when MLflow loads the model."""
        _ = self.booster

    def prepare(self, df: pd.DataFrame) -> pd.DataFrame:
        """Input frame → booster input (see :func:`prepare_features`)."""
        return prepare_features(df, self.feature_columns, self.levels)

    def raw_scores(self, df: pd.DataFrame) -> np.ndarray:
        """Uncalibrated booster probabilities."""
        return np.asarray(self.booster.predict(self.prepare(df)), dtype=float)

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Calibrated conversion probabilities."""
        return np.asarray(self.calibrator.predict(self.raw_scores(df)), dtype=float)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """MLflow entry point: a frame with one ``probability`` column (calibrated)."""
        return pd.DataFrame(
            {"probability": self.predict_proba(model_input)}, index=model_input.index
        )

    def contributions(self, df: pd.DataFrame) -> np.ndarray:
        """Per-row SHAP contributions in log-odds (one column per feature, then the bias)."""
        return np.asarray(self.booster.predict(self.prepare(df), pred_contrib=True), dtype=float)

    def predict_with_reasons(self, df: pd.DataFrame, top_k: int = 3) -> list[dict[str, Any]]:
        """Probability, raw score and the ``top_k`` positive and negative reasons per row."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        prepared = self.prepare(df)
        raw = np.asarray(self.booster.predict(prepared), dtype=float)
        probability = np.asarray(self.calibrator.predict(raw), dtype=float)
        contrib = np.asarray(self.booster.predict(prepared, pred_contrib=True), dtype=float)
        rows: list[dict[str, Any]] = []
        for position in range(len(prepared)):
            reasons = top_reasons(
                contrib[position, : len(self.feature_columns)],
                self.feature_columns,
                df.iloc[position][self.feature_columns].to_dict(),
                top_k=top_k,
                templates=self.reason_templates,
            )
            rows.append(
                {
                    "probability": float(probability[position]),
                    "raw_score": float(raw[position]),
                    "positive_reasons": reasons["positive"],
                    "negative_reasons": reasons["negative"],
                }
            )
        return rows


class BlendedLeadModel(mlflow.pyfunc.PythonModel):
    """A logistic regression, or its blend with LightGBM, calibrated, with per-lead reasons.

    Log-odds = ``weight`` × LightGBM's margin + (1 − ``weight``) × the logistic regression's
    log-odds; ``weight`` 0 is the logistic regression alone (no booster). Contributions blend
    the same way (LightGBM's SHAP values, the linear model's exact ones), so a row's reasons
    add up to its log-odds. The service scores it without pandas (``serving.scoring.FastScorer``
    with ``serving.fast_linear``); it has no ``booster`` attribute (see ``lightgbm``).
    """

    def __init__(
        self,
        linear: Any,
        calibrator: Any,
        feature_columns: Sequence[str],
        levels: Mapping[str, Sequence[str]],
        weight: float = 0.0,
        model_string: str | None = None,
        reason_templates: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"blend weight must lie in [0, 1], got {weight}")
        if weight > 0 and not model_string:
            raise ValueError("a blend with LightGBM weight > 0 needs the booster's model string")
        self.linear = linear
        self.calibrator = calibrator
        self.feature_columns = list(feature_columns)
        self.levels = {k: list(v) for k, v in levels.items()}
        self.weight = float(weight)
        self.model_string = model_string if weight > 0 else None
        self.reason_templates = dict(reason_templates or REASON_TEMPLATES)
        self.metadata = dict(metadata or {})
        self._lightgbm: lgb.Booster | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lightgbm"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def kind(self) -> str:
        """``"logistic_regression"`` or ``"blend"``."""
        return "blend" if self.weight > 0 else "logistic_regression"

    def _booster(self) -> lgb.Booster | None:
        if self.model_string and self._lightgbm is None:
            self._lightgbm = lgb.Booster(model_str=self.model_string)
        return self._lightgbm

    @property
    def lightgbm(self) -> lgb.Booster | None:
        """The blend's LightGBM booster (built on first use), or None when ``weight`` is 0."""
        return self._booster()

    def load_context(self, context: Any) -> None:
        """Build the booster (if any) once when MLflow loads the model."""
        self._booster()

    def prepare(self, df: pd.DataFrame) -> pd.DataFrame:
        """Input frame → LightGBM input (see :func:`prepare_features`); checks the contract."""
        return prepare_features(df, self.feature_columns, self.levels)

    def _parts(self, df: pd.DataFrame, contributions: bool) -> tuple[np.ndarray, np.ndarray | None]:
        prepared = self.prepare(df)  # the same contract checks as the LightGBM model
        frame = df[self.feature_columns]
        log_odds = (1 - self.weight) * self.linear.log_odds(frame)
        contrib = ((1 - self.weight) * self.linear.contributions(frame)
                   if contributions else None)
        booster = self._booster()
        if booster is not None:
            log_odds = log_odds + self.weight * np.asarray(
                booster.predict(prepared, raw_score=True), dtype=float)
            if contrib is not None:
                contrib = contrib + self.weight * np.asarray(
                    booster.predict(prepared, pred_contrib=True), dtype=float)
        return log_odds, contrib

    def raw_scores(self, df: pd.DataFrame) -> np.ndarray:
        """Uncalibrated probabilities (the blend's log-odds through the logistic function)."""
        return expit(self._parts(df, contributions=False)[0])

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Calibrated conversion probabilities."""
        return np.asarray(self.calibrator.predict(self.raw_scores(df)), dtype=float)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """MLflow entry point: a frame with one ``probability`` column (calibrated)."""
        return pd.DataFrame(
            {"probability": self.predict_proba(model_input)}, index=model_input.index
        )

    def contributions(self, df: pd.DataFrame) -> np.ndarray:
        """Per-row contributions in log-odds (one column per feature, then the bias)."""
        contrib = self._parts(df, contributions=True)[1]
        assert contrib is not None
        return contrib

    def predict_with_reasons(self, df: pd.DataFrame, top_k: int = 3) -> list[dict[str, Any]]:
        """Probability, raw score and the ``top_k`` positive and negative reasons per row."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        log_odds, contrib = self._parts(df, contributions=True)
        assert contrib is not None
        raw = expit(log_odds)
        probability = np.asarray(self.calibrator.predict(raw), dtype=float)
        rows: list[dict[str, Any]] = []
        for position in range(len(df)):
            reasons = top_reasons(
                contrib[position, : len(self.feature_columns)], self.feature_columns,
                df.iloc[position][self.feature_columns].to_dict(), top_k=top_k,
                templates=self.reason_templates,
            )
            rows.append({
                "probability": float(probability[position]),
                "raw_score": float(raw[position]),
                "positive_reasons": reasons["positive"],
                "negative_reasons": reasons["negative"],
            })
        return rows


PackagedModel = LeadConversionModel | BlendedLeadModel  # what training may register and serve
