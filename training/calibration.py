"""Probability calibration that never hurts: identity unless a calibrator gains beyond noise.

Three candidates: ``identity`` (the model's own probabilities, clipped), ``isotonic``
(scikit-learn ``IsotonicRegression``) and ``sigmoid`` (Platt scaling: scikit-learn
``LogisticRegression`` on the logit of the score). ``fit_calibrator`` measures each candidate
out of sample on the calibration rows — forward in time when ``blocks`` (time-ordered block
numbers) are given: fit on the earlier blocks, score the next one; else stratified 5-fold — and,
with ``method="auto"``, keeps a calibrator only when its per-row log-loss gain over identity has
a paired-bootstrap interval that excludes 0. The chosen calibrator is then fitted on all rows.

The calibration rows should be out-of-time predictions over a longer window than the
early-stopping slice (``training.selection.forward_predictions``), never the test slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import logit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from leadscore.schemas import PROBABILITY_CLIP
from training.evaluate import bootstrap_mean, row_log_loss

CLIP_LOW = PROBABILITY_CLIP
CLIP_HIGH = 1 - PROBABILITY_CLIP
IDENTITY = "identity"
METHODS = ("isotonic", "sigmoid")
CANDIDATES = (IDENTITY, *METHODS)
MIN_ROWS_PER_CLASS = 2
CONFIDENCE = 0.95
N_BOOT = 1000


def _logit_feature(p: np.ndarray) -> np.ndarray:
    """Logit of probabilities clipped away from 0 and 1, as a one-column matrix."""
    return logit(np.clip(p, CLIP_LOW, CLIP_HIGH)).reshape(-1, 1)


def _fit_one(method: str, p_raw: np.ndarray, y: np.ndarray) -> Any:
    """Fit one scikit-learn calibration model of ``method`` on raw scores (None: identity)."""
    if method == IDENTITY:
        return None
    if method == "isotonic":
        return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p_raw, y)
    if method == "sigmoid":
        # Platt scaling on the logit of the score, unpenalised (C=inf).
        return LogisticRegression(C=np.inf, max_iter=1000).fit(_logit_feature(p_raw), y)
    raise ValueError(f"calibration method {method!r} is not one of {CANDIDATES + ('auto',)}")


def _predict_one(method: str, model: Any, p_raw: np.ndarray) -> np.ndarray:
    if method == IDENTITY:
        out = p_raw
    elif method == "isotonic":
        out = model.predict(p_raw)
    else:
        out = model.predict_proba(_logit_feature(p_raw))[:, 1]
    return np.clip(np.asarray(out, dtype=float), CLIP_LOW, CLIP_HIGH)


@dataclass
class Calibrator:
    """A fitted calibration map from raw model scores to probabilities (picklable).

    ``method`` is ``"identity"``, ``"isotonic"`` or ``"sigmoid"``; ``log_losses`` holds each
    candidate's out-of-sample log loss on the calibration rows, ``evidence`` each calibrator's
    gain over identity with its interval, ``selection`` why ``method`` was kept.
    """

    method: str
    model: Any
    n_rows: int
    log_losses: dict[str, float] = field(default_factory=dict)
    selection: str = "forced"
    evidence: dict[str, dict[str, float]] = field(default_factory=dict)
    scheme: str = ""

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
            "scheme": self.scheme,
            "n_rows": self.n_rows,
            "cv_log_loss": {name: float(value) for name, value in self.log_losses.items()},
            "gain_over_identity": self.evidence,
        }
        if self.method == "sigmoid":
            summary["slope"] = float(self.model.coef_[0, 0])
            summary["intercept"] = float(self.model.intercept_[0])
        elif self.method == "isotonic":
            summary["n_thresholds"] = int(len(self.model.X_thresholds_))
        return summary


def out_of_sample_losses(
    p_raw: np.ndarray, y: np.ndarray, blocks: np.ndarray | None = None, n_splits: int = 5,
    seed: int = 42,
) -> tuple[np.ndarray, dict[str, np.ndarray], str]:
    """Rows scored out of sample and each candidate's per-row log loss on them.

    With ``blocks`` (one time-ordered block number per row): every calibrator is fitted on the
    blocks before each block and scores that block (forward chaining; blocks whose past lacks
    a class are skipped). Without: stratified ``n_splits``-fold cross-validation.
    """
    scored = np.zeros(p_raw.size, dtype=bool)
    oof = {method: np.full(p_raw.size, np.nan) for method in CANDIDATES}
    if blocks is not None:
        order = np.unique(blocks)
        folds = [(np.flatnonzero(blocks < b), np.flatnonzero(blocks == b)) for b in order[1:]]
        scheme = f"forward in time over {order.size} blocks"
    else:
        n_splits = max(2, min(n_splits, int(np.bincount(y.astype(int)).min())))
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        folds = list(splitter.split(p_raw.reshape(-1, 1), y))
        scheme = f"stratified {n_splits}-fold"
    for fit_idx, score_idx in folds:
        if np.bincount(y[fit_idx].astype(int), minlength=2).min() < MIN_ROWS_PER_CLASS:
            continue
        for method in CANDIDATES:
            model = _fit_one(method, p_raw[fit_idx], y[fit_idx])
            oof[method][score_idx] = _predict_one(method, model, p_raw[score_idx])
        scored[score_idx] = True
    rows = np.flatnonzero(scored)
    return rows, {m: row_log_loss(y[rows], oof[m][rows]) for m in CANDIDATES}, scheme


def _check(p_arr: np.ndarray, y_arr: np.ndarray) -> None:
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


def fit_calibrator(
    p_raw: Any, y: Any, method: str = "auto", seed: int = 42, *, blocks: Any = None,
    confidence: float = CONFIDENCE, n_boot: int = N_BOOT,
) -> Calibrator:
    """Fit a calibrator on held-out scores ``p_raw`` with outcomes ``y``.

    ``method="auto"`` keeps isotonic regression or Platt scaling only when its out-of-sample
    log loss beats identity's with a paired-bootstrap ``confidence`` interval of the per-row
    difference lying wholly below 0 — and, forward in time, a gain on the newest block too —
    (the better one when both qualify), else identity; the kept
    calibrator is refitted on all rows. ``"identity"``, ``"isotonic"`` or ``"sigmoid"``
    force a method (the losses are still reported). ``blocks`` (time-ordered block numbers,
    one per row) makes the comparison forward in time.
    """
    p_arr = np.asarray(p_raw, dtype=float).ravel()
    y_arr = np.asarray(y, dtype=float).ravel()
    _check(p_arr, y_arr)
    if method not in CANDIDATES + ("auto",):
        raise ValueError(f"calibration method {method!r} is not one of {CANDIDATES + ('auto',)}")
    block_arr = None if blocks is None else np.asarray(blocks).ravel()
    if block_arr is not None and block_arr.shape != p_arr.shape:
        raise ValueError(f"blocks has {block_arr.size} values but p_raw has {p_arr.size}")
    rows, per_row, scheme = out_of_sample_losses(p_arr, y_arr, block_arr, seed=seed)
    losses: dict[str, float] = {}
    evidence: dict[str, dict[str, float]] = {}
    if rows.size and np.ptp(y_arr[rows]) > 0:
        losses = {m: float(per_row[m].mean()) for m in CANDIDATES}
        for m in METHODS:  # difference method − identity on the same rows: < 0 is a gain
            interval = bootstrap_mean(per_row[m] - per_row[IDENTITY], n_boot=n_boot,
                                      confidence=confidence, seed=seed)
            evidence[m] = {"log_loss_difference": interval["difference"],
                           "low": interval["low"], "high": interval["high"]}
            if block_arr is not None:  # under drift an old gain may not hold: the newest too
                newest = block_arr[rows] == block_arr[rows].max()
                evidence[m]["newest_block_difference"] = float(
                    (per_row[m] - per_row[IDENTITY])[newest].mean())
    if method != "auto":
        chosen, selection = method, "forced"
    else:
        gaining = [m for m in METHODS if m in evidence and evidence[m]["high"] < 0
                   and evidence[m].get("newest_block_difference", -1.0) < 0]
        if gaining:
            chosen = min(gaining, key=lambda m: losses[m])
            e = evidence[chosen]
            selection = (f"{chosen}: log loss {e['log_loss_difference']:+.5f} vs identity, "
                         f"{confidence:.0%} interval [{e['low']:+.5f}, {e['high']:+.5f}] "
                         "below 0")
        else:
            chosen = IDENTITY
            shown = ", ".join(f"{m} {e['log_loss_difference']:+.5f} "
                              f"[{e['low']:+.5f}, {e['high']:+.5f}]"
                              for m, e in evidence.items()) or "too few rows to compare"
            selection = f"identity: no calibrator gains beyond noise ({shown})"
    model = _fit_one(chosen, p_arr, y_arr)
    return Calibrator(
        method=chosen, model=model, n_rows=int(p_arr.size), log_losses=losses,
        selection=selection, evidence=evidence, scheme=scheme,
    )
