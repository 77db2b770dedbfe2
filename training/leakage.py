"""Leakage guard for flat CRM exports: columns too predictive on their own, and identifiers.

Each candidate column gets a stand-alone out-of-fold ROC-AUC from a seeded stratified 5-fold
split: a categorical column scores each row by the conversion rate of its category in the other
folds (missing is a category of its own, unseen categories get the training prior); a numeric
column scores each row with a small LightGBM on that one column (missing values handled
natively), and the rank AUC of the raw values (as max(auc, 1 - auc)) is taken when higher.
Columns whose AUC reaches the threshold are dropped unless allowed, as are identifier-like
columns (a distinct value on practically every row).

Second line, below the threshold: a column that *stands far above all others* is flagged —
named in the report and on the console, never dropped — with the question whether it is known
before the outcome (a call's duration, a last activity that includes sales actions). The rule:
among the columns the first line kept, the best stand-alone AUC is at least
``DOMINANT_MIN_AUC`` (0.70) and exceeds the next best by at least ``DOMINANT_MARGIN`` (0.10).
On a bank telemarketing export, a call's ``duration`` (0.818) over the next column (0.654)
is flagged. ``--allow COL`` states that the column is known before the outcome and silences
the flag.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

GUARD_FOLDS = 5
IDENTIFIER_UNIQUE_SHARE = 0.95
MIN_ROWS_FOR_IDENTIFIER = 20
NUMERIC_PROBE_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "num_leaves": 8,
    "learning_rate": 0.1,
    "min_data_in_leaf": 20,
    "verbosity": -1,
    "n_jobs": 1,
    "deterministic": True,
    "force_col_wise": True,
}
NUMERIC_PROBE_ROUNDS = 50
MISSING_LEVEL = "__missing__"
DOMINANT_MIN_AUC = 0.70
DOMINANT_MARGIN = 0.10


@dataclass
class ColumnVerdict:
    """The guard's finding for one column."""

    column: str
    kind: str  # "categorical" or "numeric"
    auc: float | None
    distinct_values: int
    missing_share: float
    dropped: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "kind": self.kind,
            "auc": None if self.auc is None else round(float(self.auc), 4),
            "distinct_values": self.distinct_values,
            "missing_share": round(float(self.missing_share), 4),
            "dropped": self.dropped,
            "reason": self.reason,
        }


@dataclass
class GuardReport:
    """Per-column AUCs and the columns left out, with reasons."""

    threshold: float
    verdicts: list[ColumnVerdict] = field(default_factory=list)
    flagged: dict[str, str] = field(default_factory=dict)

    @property
    def dropped(self) -> dict[str, str]:
        return {v.column: v.reason or "" for v in self.verdicts if v.dropped}

    @property
    def kept(self) -> list[str]:
        return [v.column for v in self.verdicts if not v.dropped]

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "folds": GUARD_FOLDS,
            "columns": [v.to_dict() for v in sorted(self.verdicts, key=_sort_key)],
            "dropped": self.dropped,
            "flagged": self.flagged,
            "flag_rule": (f"kept column with the best stand-alone AUC, at least "
                          f"{DOMINANT_MIN_AUC}, and at least {DOMINANT_MARGIN} above the next "
                          "best: flagged (kept) — is it known before the outcome?"),
        }


def _sort_key(verdict: ColumnVerdict) -> tuple[float, str]:
    return (-(verdict.auc if verdict.auc is not None else -1.0), verdict.column)


def is_identifier_like(series: pd.Series) -> bool:
    """True when a text or integer column holds a distinct value on (almost) every row.

    Continuous floats are never identifiers (a measurement may well be unique per row).
    """
    values = series.dropna()
    if len(series) < MIN_ROWS_FOR_IDENTIFIER or len(values) < IDENTIFIER_UNIQUE_SHARE * len(series):
        return False
    if pd.api.types.is_float_dtype(values) and not np.all(np.mod(values, 1) == 0):
        return False
    if pd.api.types.is_bool_dtype(values):
        return False
    return values.nunique() >= IDENTIFIER_UNIQUE_SHARE * len(series)


def _is_categorical(series: pd.Series) -> bool:
    return isinstance(series.dtype, pd.CategoricalDtype) or series.dtype == object


def categorical_oof_scores(series: pd.Series, y: np.ndarray, folds: list) -> np.ndarray:
    """Out-of-fold target rate of each row's category (missing is its own category)."""
    keys = series.astype(object).where(series.notna(), MISSING_LEVEL).astype(str).to_numpy()
    scores = np.zeros(len(y), dtype=float)
    for train_idx, test_idx in folds:
        prior = float(y[train_idx].mean())
        rates = pd.Series(y[train_idx]).groupby(keys[train_idx]).mean()
        scores[test_idx] = pd.Series(keys[test_idx]).map(rates).fillna(prior).to_numpy()
    return scores


def numeric_oof_scores(series: pd.Series, y: np.ndarray, folds: list, seed: int) -> np.ndarray:
    """Out-of-fold predictions of a small LightGBM fitted on this one column."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float).reshape(-1, 1)
    scores = np.zeros(len(y), dtype=float)
    params = {**NUMERIC_PROBE_PARAMS, "seed": seed}
    for train_idx, test_idx in folds:
        booster = lgb.train(
            params, lgb.Dataset(values[train_idx], label=y[train_idx]), NUMERIC_PROBE_ROUNDS
        )
        scores[test_idx] = booster.predict(values[test_idx])
    return scores


def rank_auc(series: pd.Series, y: np.ndarray) -> float:
    """max(AUC, 1 - AUC) of the raw values (missing ranked lowest)."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    if np.isnan(values).all():
        return 0.5
    filled = np.where(np.isnan(values), np.nanmin(values) - 1.0, values)
    auc = float(roc_auc_score(y, filled))
    return max(auc, 1.0 - auc)


def standalone_auc(
    series: pd.Series, y: np.ndarray, folds: list, seed: int = 42
) -> float:
    """Stand-alone out-of-fold ROC-AUC of one column (see the module docstring)."""
    if series.nunique(dropna=False) <= 1:
        return 0.5
    if _is_categorical(series):
        return float(roc_auc_score(y, categorical_oof_scores(series, y, folds)))
    probe = float(roc_auc_score(y, numeric_oof_scores(series, y, folds, seed)))
    return max(probe, rank_auc(series, y))


def run_guard(
    frame: pd.DataFrame,
    y: Any,
    threshold: float = 0.90,
    allow: Iterable[str] = (),
    seed: int = 42,
) -> GuardReport:
    """Score every column of ``frame`` against ``y`` and decide which ones to leave out.

    Identifier-like columns are dropped without scoring (their AUC would be meaningless);
    columns with a stand-alone AUC at or above ``threshold`` are dropped as likely leaks.
    Columns in ``allow`` are scored but always kept.
    """
    if not 0.5 < threshold <= 1.0:
        raise ValueError(f"guard threshold must lie in (0.5, 1], got {threshold}")
    y_arr = np.asarray(y, dtype=int).ravel()
    if len(frame) != y_arr.size:
        raise ValueError(f"frame has {len(frame)} rows but y has {y_arr.size}")
    allowed = set(allow)
    n_splits = max(2, min(GUARD_FOLDS, int(np.bincount(y_arr, minlength=2).min())))
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(y_arr.size), y_arr))
    report = GuardReport(threshold=threshold)
    for column in frame.columns:
        series = frame[column]
        kind = "categorical" if _is_categorical(series) else "numeric"
        verdict = ColumnVerdict(
            column=str(column), kind=kind, auc=None,
            distinct_values=int(series.nunique(dropna=True)),
            missing_share=float(series.isna().mean()), dropped=False,
        )
        if is_identifier_like(series):
            if column in allowed:
                verdict.reason = "identifier-like but allowed"
            else:
                verdict.dropped = True
                verdict.reason = "identifier-like: a distinct value on (almost) every row"
            report.verdicts.append(verdict)
            if not verdict.dropped:
                verdict.auc = standalone_auc(series, y_arr, folds, seed)
            continue
        verdict.auc = standalone_auc(series, y_arr, folds, seed)
        if verdict.auc >= threshold:
            if column in allowed:
                verdict.reason = f"stand-alone AUC {verdict.auc:.3f} >= {threshold} but allowed"
            else:
                verdict.dropped = True
                verdict.reason = (
                    f"possible leak: stand-alone out-of-fold AUC {verdict.auc:.3f} "
                    f">= {threshold}"
                )
        report.verdicts.append(verdict)
    report.flagged = dominant_columns(report.verdicts, allowed)
    return report


def dominant_columns(
    verdicts: list[ColumnVerdict], allowed: Iterable[str] = ()
) -> dict[str, str]:
    """The second line: the kept column whose stand-alone AUC stands far above all others
    (see the module docstring), with the question to ask; empty when none does or when it is
    in ``allowed``."""
    scored = sorted((v for v in verdicts if not v.dropped and v.auc is not None),
                    key=_sort_key)
    if len(scored) < 2:
        return {}
    top, runner_up = scored[0], scored[1]
    gap = float(top.auc) - float(runner_up.auc)
    if top.auc < DOMINANT_MIN_AUC or gap < DOMINANT_MARGIN or top.column in set(allowed):
        return {}
    return {top.column: (
        f"stand-alone AUC {top.auc:.3f} stands {gap:.3f} above the next best column "
        f"({runner_up.column!r}, {runner_up.auc:.3f}): is it known before the outcome? "
        "If not, --drop it; if it is, --allow it")}
