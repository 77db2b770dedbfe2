"""Evaluation of conversion probabilities: discrimination, calibration, gains and tiers.

Pure functions over ``y`` (0/1 outcomes) and ``p`` (predicted probabilities); every number they
return is a plain Python float or int so that reports can be dumped to JSON as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
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
    """ROC-AUC, PR-AUC, log loss, Brier, ECE, gains and tiers of one set of predictions.

    Without ``cutoffs`` the tiers use :func:`default_cutoffs` (score quantiles), and the
    cut-offs used are returned under ``cutoffs``. AUCs are NaN-free only when both classes
    occur; with a single class they are reported as ``None``.
    """
    y_arr, p_arr = _as_arrays(y, p)
    used_cutoffs = dict(cutoffs) if cutoffs is not None else default_cutoffs(p_arr)
    both_classes = 0 < y_arr.sum() < y_arr.size
    clipped = np.clip(p_arr, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return {
        "n": int(y_arr.size),
        "positives": int(y_arr.sum()),
        "roc_auc": float(roc_auc_score(y_arr, p_arr)) if both_classes else None,
        "pr_auc": float(average_precision_score(y_arr, p_arr)) if both_classes else None,
        "log_loss": float(log_loss(y_arr, clipped, labels=[0, 1])),
        "brier": float(brier_score_loss(y_arr, p_arr)),
        "ece": expected_calibration_error(y_arr, p_arr),
        "mean_prediction": float(p_arr.mean()),
        "base_rate": float(y_arr.mean()),
        "cutoffs": {tier: float(value) for tier, value in used_cutoffs.items()},
        "gains": _records(gains_table(y_arr, p_arr)),
        "tiers": _records(tier_table(y_arr, p_arr, used_cutoffs)),
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
