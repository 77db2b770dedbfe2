"""Evaluation plots written as PNG files: reliability (calibration), cumulative gains, SHAP summary.

Matplotlib runs on the Agg backend (no display). SHAP values come from LightGBM's own
``predict(..., pred_contrib=True)`` (one column per feature plus the bias column).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from training.evaluate import gains_table  # noqa: E402

MAX_SHAP_FEATURES = 20
MAX_SHAP_POINTS = 2000


def _save(fig: plt.Figure, path: Path | str) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def calibration_plot(
    y: Any, predictions: Mapping[str, Any], path: Path | str, n_bins: int = 10
) -> Path:
    """Reliability diagram: observed conversion rate against mean predicted probability per bin."""
    y_arr = np.asarray(y, dtype=float).ravel()
    fig, (ax, hist_ax) = plt.subplots(
        2, 1, figsize=(6.5, 7), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for name, p in predictions.items():
        p_arr = np.asarray(p, dtype=float).ravel()
        bins = np.minimum((p_arr * n_bins).astype(int), n_bins - 1)
        counts = np.bincount(bins, minlength=n_bins)
        filled = counts > 0
        mean_p = np.bincount(bins, weights=p_arr, minlength=n_bins)[filled] / counts[filled]
        rate = np.bincount(bins, weights=y_arr, minlength=n_bins)[filled] / counts[filled]
        ax.plot(mean_p, rate, marker="o", label=name)
        hist_ax.hist(p_arr, bins=edges, histtype="step", label=name)
    ax.set_ylabel("observed conversion rate")
    ax.set_title("Calibration (reliability diagram)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    hist_ax.set_xlabel("predicted probability")
    hist_ax.set_ylabel("leads")
    return _save(fig, path)


def gains_plot(y: Any, predictions: Mapping[str, Any], path: Path | str) -> Path:
    """Cumulative gains curve per model: share of conversions captured by the top-scored leads."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    for name, p in predictions.items():
        table = gains_table(y, p, n_bins=20)
        x = np.concatenate([[0.0], table["cumulative_volume_share"].to_numpy()])
        gain = np.concatenate([[0.0], table["cumulative_gain"].to_numpy()])
        ax.plot(x, gain, marker=".", label=name)
    ax.set_xlabel("share of leads contacted (highest scores first)")
    ax.set_ylabel("share of conversions captured")
    ax.set_title("Cumulative gains")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _colour_values(column: pd.Series | np.ndarray) -> np.ndarray:
    """Feature values scaled to [0, 1] for colouring (category codes for categoricals)."""
    series = pd.Series(column)
    if isinstance(series.dtype, pd.CategoricalDtype):
        values = series.cat.codes.astype(float).where(series.notna()).to_numpy()
    else:
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    finite = np.isfinite(values)
    if not finite.any():
        return np.full(values.shape, 0.5)
    low, high = np.nanpercentile(values[finite], [5, 95])
    scaled = (values - low) / (high - low) if high > low else np.full(values.shape, 0.5)
    return np.where(finite, np.clip(scaled, 0, 1), np.nan)


def shap_summary_plot(
    contrib: np.ndarray,
    feature_names: Sequence[str],
    X: pd.DataFrame | np.ndarray,
    path: Path | str,
    max_features: int = MAX_SHAP_FEATURES,
    seed: int = 42,
) -> Path:
    """Beeswarm-like SHAP summary from LightGBM ``pred_contrib`` values.

    ``contrib`` has one column per feature, optionally followed by LightGBM's bias column (it is
    ignored). Features are ordered by mean |SHAP|; each dot is one lead, coloured by the
    feature's value (low = blue, high = red, missing = grey).
    """
    names = list(feature_names)
    values = np.asarray(contrib, dtype=float)
    if values.ndim != 2 or values.shape[1] not in (len(names), len(names) + 1):
        raise ValueError(
            f"contrib has shape {values.shape}; expected (rows, {len(names)}) or "
            f"(rows, {len(names) + 1}) with the bias column"
        )
    values = values[:, : len(names)]
    frame = X if isinstance(X, pd.DataFrame) else pd.DataFrame(X, columns=names)
    if len(frame) != values.shape[0]:
        raise ValueError(f"X has {len(frame)} rows but contrib has {values.shape[0]}")
    rng = np.random.default_rng(seed)
    rows = np.arange(values.shape[0])
    if rows.size > MAX_SHAP_POINTS:
        rows = np.sort(rng.choice(rows, MAX_SHAP_POINTS, replace=False))
    importance = np.abs(values).mean(axis=0)
    order = np.argsort(importance)[::-1][:max_features][::-1]  # most important on top
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(order) + 1.5))
    cmap = plt.get_cmap("coolwarm")
    for position, feature in enumerate(order):
        shap_values = values[rows, feature]
        colours = _colour_values(frame.iloc[rows, feature])
        jitter = rng.uniform(-0.3, 0.3, size=rows.size)
        rgba = np.where(
            np.isnan(colours)[:, None], [[0.6, 0.6, 0.6, 0.6]], cmap(np.nan_to_num(colours))
        )
        ax.scatter(shap_values, position + jitter, c=rgba, s=6, linewidths=0)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([f"{names[i]} ({importance[i]:.3f})" for i in order], fontsize=8)
    ax.set_xlabel("SHAP value (contribution to log-odds)")
    ax.set_title("SHAP summary (colour: value low blue → high red, grey missing)", fontsize=10)
    return _save(fig, path)
