"""Probability calibration fitted on held-out predictions: isotonic or Platt (sigmoid on logit).

``fit_calibrator`` fits both methods with scikit-learn and, with ``method="auto"``, keeps the one
with the lower cross-validated log loss on the calibration set itself, so that isotonic
regression's tendency to overfit small sets is judged honestly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import logit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold

from leadscore.schemas import PROBABILITY_CLIP

CLIP_LOW = PROBABILITY_CLIP
CLIP_HIGH = 1 - PROBABILITY_CLIP
METHODS = ("isotonic", "sigmoid")
MIN_ROWS_PER_CLASS = 2


def _logit_feature(p: np.ndarray) -> np.ndarray:
    """Logit of probabilities clipped away from 0 and 1, as a one-column matrix."""
    return logit(np.clip(p, CLIP_LOW, CLIP_HIGH)).reshape(-1, 1)


def _fit_one(method: str, p_raw: np.ndarray, y: np.ndarray) -> Any:
    """Fit one scikit-learn calibration model of ``method`` on raw scores ``p_raw``."""
    if method == "isotonic":
        return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p_raw, y)
    if method == "sigmoid":
        # Platt scaling on the logit of the score, unpenalised (C=inf).
        return LogisticRegression(C=np.inf, max_iter=1000).fit(_logit_feature(p_raw), y)
    raise ValueError(f"calibration method {method!r} is not one of {METHODS + ('auto',)}")


def _predict_one(method: str, model: Any, p_raw: np.ndarray) -> np.ndarray:
    if method == "isotonic":
        out = model.predict(p_raw)
    else:
        out = model.predict_proba(_logit_feature(p_raw))[:, 1]
    return np.clip(np.asarray(out, dtype=float), CLIP_LOW, CLIP_HIGH)


@dataclass
class Calibrator:
    """A fitted calibration map from raw model scores to probabilities (picklable).

    ``method`` is ``"isotonic"`` or ``"sigmoid"``; ``log_losses`` holds each candidate's
    cross-validated log loss on the calibration set (plus ``"uncalibrated"``).
    """

    method: str
    model: Any
    n_rows: int
    log_losses: dict[str, float] = field(default_factory=dict)
    selection: str = "forced"

    def predict(self, p_raw: Any) -> np.ndarray:
        """Calibrated probabilities, clipped to [1e-6, 1 - 1e-6]."""
        p_arr = np.asarray(p_raw, dtype=float).ravel()
        if np.isnan(p_arr).any():
            raise ValueError("p_raw holds NaN values")
        return _predict_one(self.method, self.model, p_arr)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: method, how it was chosen, losses and the fitted parameters."""
        summary: dict[str, Any] = {
            "method": self.method,
            "selection": self.selection,
            "n_rows": self.n_rows,
            "cv_log_loss": {name: float(value) for name, value in self.log_losses.items()},
        }
        if self.method == "sigmoid":
            summary["slope"] = float(self.model.coef_[0, 0])
            summary["intercept"] = float(self.model.intercept_[0])
        else:
            summary["n_thresholds"] = int(len(self.model.X_thresholds_))
        return summary


def cross_validated_log_losses(
    p_raw: np.ndarray, y: np.ndarray, n_splits: int = 5, seed: int = 42
) -> dict[str, float]:
    """Out-of-fold log loss of each calibration method (and of the raw scores) on one set."""
    n_splits = max(2, min(n_splits, int(np.bincount(y.astype(int)).min())))
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    oof = {method: np.zeros_like(p_raw) for method in METHODS}
    for train_idx, test_idx in splitter.split(p_raw.reshape(-1, 1), y):
        for method in METHODS:
            model = _fit_one(method, p_raw[train_idx], y[train_idx])
            oof[method][test_idx] = _predict_one(method, model, p_raw[test_idx])
    losses = {method: float(log_loss(y, oof[method], labels=[0, 1])) for method in METHODS}
    losses["uncalibrated"] = float(
        log_loss(y, np.clip(p_raw, CLIP_LOW, CLIP_HIGH), labels=[0, 1])
    )
    return losses


def fit_calibrator(p_raw: Any, y: Any, method: str = "auto", seed: int = 42) -> Calibrator:
    """Fit a calibrator on held-out scores ``p_raw`` with outcomes ``y``.

    ``method="auto"`` compares isotonic regression and Platt scaling by 5-fold cross-validated
    log loss on these rows and refits the winner on all of them; ``"isotonic"`` or
    ``"sigmoid"`` force a method (both losses are still reported).
    """
    p_arr = np.asarray(p_raw, dtype=float).ravel()
    y_arr = np.asarray(y, dtype=float).ravel()
    if p_arr.shape != y_arr.shape:
        raise ValueError(f"p_raw has {p_arr.size} values but y has {y_arr.size}")
    if np.isnan(p_arr).any():
        raise ValueError("p_raw holds NaN values")
    if not np.isin(y_arr, (0.0, 1.0)).all():
        raise ValueError("y must hold only 0 and 1")
    counts = np.bincount(y_arr.astype(int), minlength=2)
    if counts.min() < MIN_ROWS_PER_CLASS:
        raise ValueError(
            f"calibration needs at least {MIN_ROWS_PER_CLASS} rows of each class, "
            f"got {int(counts[0])} negatives and {int(counts[1])} positives"
        )
    if method not in METHODS + ("auto",):
        raise ValueError(f"calibration method {method!r} is not one of {METHODS + ('auto',)}")
    losses = cross_validated_log_losses(p_arr, y_arr, seed=seed)
    if method == "auto":
        chosen = min(METHODS, key=lambda name: losses[name])
        selection = "cross-validated log loss"
    else:
        chosen, selection = method, "forced"
    model = _fit_one(chosen, p_arr, y_arr)
    return Calibrator(
        method=chosen, model=model, n_rows=int(p_arr.size), log_losses=losses,
        selection=selection,
    )
