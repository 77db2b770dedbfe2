"""Evaluation of conversion probabilities: discrimination, calibration, gains and tiers.

Pure functions over ``y`` (0/1 outcomes) and ``p`` (predicted probabilities); every number they
return is a plain Python float or int so that reports can be dumped to JSON as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import logit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from leadscore.schemas import PROBABILITY_CLIP, TIERS


def _as_arrays(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert outcomes and probabilities to flat float arrays."""
    y_arr = np.asarray(y, dtype=float).ravel()
    p_arr = np.asarray(p, dtype=float).ravel()
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"y has {y_arr.size} values but p has {p_arr.size}")
    if y_arr.size == 0:
        raise ValueError("y and p are empty")
    if not np.isin(y_arr, (0.0, 1.0)).all():
        raise ValueError("y must hold only 0 and 1")
    if np.isnan(p_arr).any() or (p_arr < 0).any() or (p_arr > 1).any():
        raise ValueError("p must hold probabilities in [0, 1] without NaN")
    return y_arr, p_arr


def expected_calibration_error(y: Any, p: Any, n_bins: int = 10) -> float:
    """ECE over ``n_bins`` equal-width probability bins, each weighted by its share of rows.

    The last bin is closed on the right so that ``p == 1`` is counted.
    """
    y_arr, p_arr = _as_arrays(y, p)
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    bins = np.minimum((p_arr * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p_arr, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y_arr, minlength=n_bins)
    filled = counts > 0
    gaps = np.abs(sum_p[filled] - sum_y[filled])  # = count * |mean p - rate|
    return float(gaps.sum() / y_arr.size)


def gains_table(y: Any, p: Any, n_bins: int = 10) -> pd.DataFrame:
    """Gains per score bucket (decile by default), highest scores first.

    Columns: ``bucket`` (1 = best), ``volume``, ``positives``, ``rate``, ``mean_score``,
    ``lift`` (rate / overall rate), ``cumulative_volume_share``, ``cumulative_gain`` (share of
    all positives captured up to this bucket) and ``cumulative_lift``. Ties are broken by a
    stable sort so that buckets are reproducible.
    """
    y_arr, p_arr = _as_arrays(y, p)
    order = np.argsort(-p_arr, kind="stable")
    n_bins = max(1, min(n_bins, y_arr.size))
    buckets = np.array_split(order, n_bins)
    overall_rate = y_arr.mean()
    total_positives = y_arr.sum()
    rows = []
    cum_volume = 0
    cum_positives = 0.0
    for index, members in enumerate(buckets, start=1):
        volume = int(members.size)
        positives = float(y_arr[members].sum())
        cum_volume += volume
        cum_positives += positives
        rate = positives / volume if volume else 0.0
        cum_rate = cum_positives / cum_volume if cum_volume else 0.0
        rows.append(
            {
                "bucket": index,
                "volume": volume,
                "positives": int(positives),
                "rate": rate,
                "mean_score": float(p_arr[members].mean()) if volume else 0.0,
                "lift": rate / overall_rate if overall_rate > 0 else 0.0,
                "cumulative_volume_share": cum_volume / y_arr.size,
                "cumulative_gain": cum_positives / total_positives if total_positives else 0.0,
                "cumulative_lift": cum_rate / overall_rate if overall_rate > 0 else 0.0,
            }
        )
    return pd.DataFrame(rows)


def _validate_cutoffs(cutoffs: Mapping[str, float]) -> tuple[float, float, float]:
    missing = [tier for tier in TIERS[:3] if tier not in cutoffs]
    if missing:
        raise ValueError(f"cutoffs lack tier(s) {missing}; expected keys 'A', 'B', 'C'")
    p_a, p_b, p_c = (float(cutoffs[tier]) for tier in TIERS[:3])
    if not 1.0 >= p_a >= p_b >= p_c >= 0.0:
        raise ValueError(
            f"cutoffs must satisfy 1 >= A >= B >= C >= 0, got A={p_a}, B={p_b}, C={p_c}"
        )
    return p_a, p_b, p_c


def assign_tiers(p: Any, cutoffs: Mapping[str, float]) -> np.ndarray:
    """Tier letter per probability: A if p >= cutoffs['A'], else B if p >= cutoffs['B'], …"""
    p_a, p_b, p_c = _validate_cutoffs(cutoffs)
    p_arr = np.asarray(p, dtype=float).ravel()
    return np.select([p_arr >= p_a, p_arr >= p_b, p_arr >= p_c], ["A", "B", "C"], default="D")


def tier_table(y: Any, p: Any, cutoffs: Mapping[str, float]) -> pd.DataFrame:
    """Precision (conversion rate), recall (share of all positives) and volume per tier A–D.

    Tiers follow ``A >= pA > B >= pB > C >= pC > D``. Columns: ``tier``, ``min_probability``
    (the tier's lower cut-off; 0 for D), ``volume``, ``volume_share``, ``positives``,
    ``precision``, ``recall``, ``mean_score``.
    """
    y_arr, p_arr = _as_arrays(y, p)
    p_a, p_b, p_c = _validate_cutoffs(cutoffs)
    tiers = assign_tiers(p_arr, cutoffs)
    total_positives = y_arr.sum()
    rows = []
    for tier, lower in zip(TIERS, (p_a, p_b, p_c, 0.0), strict=True):
        mask = tiers == tier
        volume = int(mask.sum())
        positives = float(y_arr[mask].sum())
        rows.append(
            {
                "tier": tier,
                "min_probability": lower,
                "volume": volume,
                "volume_share": volume / y_arr.size,
                "positives": int(positives),
                "precision": positives / volume if volume else 0.0,
                "recall": positives / total_positives if total_positives else 0.0,
                "mean_score": float(p_arr[mask].mean()) if volume else 0.0,
            }
        )
    return pd.DataFrame(rows)


def calibration_slope_intercept(y: Any, p: Any) -> dict[str, float | None]:
    """Cox's calibration slope and intercept: the logistic fit ``y ~ a + b·logit(p)``.

    A calibrated model has slope 1 and intercept 0; slope < 1 means predictions too extreme,
    slope > 1 too timid. ``None`` for both when only one class occurs.
    """
    y_arr, p_arr = _as_arrays(y, p)
    if not 0 < y_arr.sum() < y_arr.size:
        return {"slope": None, "intercept": None}
    x = logit(np.clip(p_arr, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)).reshape(-1, 1)
    fit = LogisticRegression(C=np.inf, max_iter=1000).fit(x, y_arr.astype(int))
    return {"slope": float(fit.coef_[0, 0]), "intercept": float(fit.intercept_[0])}


def tier_calibration(y: Any, p: Any, cutoffs: Mapping[str, float]) -> list[dict[str, Any]]:
    """Predicted (mean probability) beside observed (conversion rate) per tier A–D."""
    table = tier_table(y, p, cutoffs)
    return [
        {"tier": str(row.tier), "volume": int(row.volume),
         "predicted": float(row.mean_score) if row.volume else None,
         "observed": float(row.precision) if row.volume else None,
         "gap": float(row.mean_score - row.precision) if row.volume else None}
        for row in table.itertuples()
    ]


def paired_bootstrap(
    y: Any, p_a: Any, p_b: Any, metric: str = "log_loss", *, n_boot: int = 1000,
    confidence: float = 0.95, seed: int = 0,
) -> dict[str, float | int]:
    """``metric(a) − metric(b)`` on the same rows and its paired-bootstrap percentile interval.

    ``metric`` is ``"log_loss"`` (mean per-row loss; negative favours ``a``) or ``"roc_auc"``
    (positive favours ``a``). Both models are scored on the same resampled rows each time, so
    the interval reflects the noise of the difference, not of each figure alone.
    """
    y_arr, a = _as_arrays(y, p_a)
    _, b = _as_arrays(y, p_b)
    if a.shape != b.shape:
        raise ValueError(f"p_a has {a.size} values but p_b has {b.size}")
    if metric not in {"log_loss", "roc_auc"}:
        raise ValueError(f"metric {metric!r} is not 'log_loss' or 'roc_auc'")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if metric == "log_loss":
        return bootstrap_mean(row_log_loss(y_arr, a) - row_log_loss(y_arr, b), n_boot=n_boot,
                              confidence=confidence, seed=seed)
    rng = np.random.default_rng(seed)
    n = y_arr.size
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        if 0 < y_arr[idx].sum() < n:
            values.append(roc_auc_score(y_arr[idx], a[idx]) - roc_auc_score(y_arr[idx], b[idx]))
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return {"difference": float(roc_auc_score(y_arr, a) - roc_auc_score(y_arr, b)),
            "low": float(low), "high": float(high), "confidence": confidence,
            "n_boot": len(values)}


def bootstrap_mean(
    values: Any, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
) -> dict[str, float | int]:
    """Mean of per-row ``values`` (e.g. paired log-loss differences) and its bootstrap
    percentile interval."""
    diff = np.asarray(values, dtype=float).ravel()
    if diff.size == 0 or np.isnan(diff).any():
        raise ValueError("values must be a non-empty array without NaN")
    rng = np.random.default_rng(seed)
    n = diff.size
    draws: list[np.ndarray] = []
    chunk = max(1, 2_000_000 // n)  # bound the memory of the index matrix
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        draws.append(diff[idx].mean(axis=1))
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.concatenate(draws), [tail, 1 - tail])
    return {"difference": float(diff.mean()), "low": float(low), "high": float(high),
            "confidence": confidence, "n_boot": int(n_boot)}


def bootstrap_interval(
    y: Any, p: Any, metric: str = "roc_auc", *, n_boot: int = 1000, confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """``metric`` (``"roc_auc"`` or ``"log_loss"``) of one model and its bootstrap interval."""
    y_arr, p_arr = _as_arrays(y, p)
    score = (roc_auc_score if metric == "roc_auc"
             else lambda yy, pp: float(row_log_loss(yy, pp).mean()))
    rng = np.random.default_rng(seed)
    n = y_arr.size
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        if 0 < y_arr[idx].sum() < n:
            values.append(score(y_arr[idx], p_arr[idx]))
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return {"value": float(score(y_arr, p_arr)), "low": float(low), "high": float(high)}


def row_log_loss(y: Any, p: Any) -> np.ndarray:
    """Per-row log loss (probabilities clipped as everywhere in the product)."""
    y_arr = np.asarray(y, dtype=float).ravel()
    p_arr = np.clip(np.asarray(p, dtype=float).ravel(), PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return -(y_arr * np.log(p_arr) + (1 - y_arr) * np.log1p(-p_arr))


def default_cutoffs(p: Any) -> dict[str, float]:
    """Quantile cut-offs putting the top 10% of scores in A, the next 20% in B, 30% in C."""
    p_arr = np.asarray(p, dtype=float).ravel()
    p_a, p_b, p_c = np.quantile(p_arr, [0.9, 0.7, 0.4])
    return {"A": float(p_a), "B": float(p_b), "C": float(p_c)}


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as JSON-ready dicts (numpy scalars turned into Python ones)."""
    return [
        {key: (val.item() if isinstance(val, np.generic) else val) for key, val in row.items()}
        for row in frame.to_dict(orient="records")
    ]


def classification_metrics(
    y: Any, p: Any, cutoffs: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """ROC-AUC, PR-AUC, log loss, Brier, ECE, calibration slope/intercept, gains, tiers and
    predicted vs observed per tier of one set of predictions.

    Without ``cutoffs`` the tiers use :func:`default_cutoffs` (score quantiles), and the
    cut-offs used are returned under ``cutoffs``. AUCs are NaN-free only when both classes
    occur; with a single class they are reported as ``None``.
    """
    y_arr, p_arr = _as_arrays(y, p)
    used_cutoffs = dict(cutoffs) if cutoffs is not None else default_cutoffs(p_arr)
    both_classes = 0 < y_arr.sum() < y_arr.size
    clipped = np.clip(p_arr, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    cox = calibration_slope_intercept(y_arr, p_arr)
    return {
        "n": int(y_arr.size),
        "positives": int(y_arr.sum()),
        "roc_auc": float(roc_auc_score(y_arr, p_arr)) if both_classes else None,
        "pr_auc": float(average_precision_score(y_arr, p_arr)) if both_classes else None,
        "log_loss": float(log_loss(y_arr, clipped, labels=[0, 1])),
        "brier": float(brier_score_loss(y_arr, p_arr)),
        "ece": expected_calibration_error(y_arr, p_arr),
        "calibration_slope": cox["slope"],
        "calibration_intercept": cox["intercept"],
        "mean_prediction": float(p_arr.mean()),
        "base_rate": float(y_arr.mean()),
        "cutoffs": {tier: float(value) for tier, value in used_cutoffs.items()},
        "gains": _records(gains_table(y_arr, p_arr)),
        "tiers": _records(tier_table(y_arr, p_arr, used_cutoffs)),
        "tier_calibration": tier_calibration(y_arr, p_arr, used_cutoffs),
    }


def compare_models(
    y: Any, predictions: Mapping[str, Any], cutoffs: Mapping[str, float] | None = None
) -> dict[str, dict[str, Any]]:
    """:func:`classification_metrics` of several models' predictions on the same rows."""
    if not predictions:
        raise ValueError("predictions is empty: give at least one model")
    return {
        name: classification_metrics(y, p, cutoffs) for name, p in predictions.items()
    }
