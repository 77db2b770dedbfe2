"""Judging uplift models and targeting policies on randomised rows: Qini / AUUC per arm,
doubly-robust and inverse-propensity policy values, and bootstrap intervals.

Notation: ``arm[i]`` is the position (0…K−1) of row ``i``'s randomised arm, ``y[i]`` its outcome,
``propensity[a]`` (or ``propensity[i, a]``) the probability that the randomisation chose arm
``a``, ``mu[i, a]`` a *cross-fitted* model of the outcome of row ``i`` under arm ``a`` (never
fitted on row ``i``).

* Qini curve of arm ``t`` against the control ``c`` (rows of the two arms only, sorted by the
  predicted uplift, best first): ``Q(k) = Y_t(k) − Y_c(k) · N_t(k) / N_c(k)`` — the incremental
  positives among the top ``k`` rows. The **Qini coefficient** reported is the mean over the
  curve of ``(Q(k) − k/n · Q(n)) / n``: the area between the curve and random targeting,
  as incremental positives per row (0 = no better than random).
* Uplift curve ``G(k) = (Ȳ_t(k) − Ȳ_c(k)) · k / n``; **AUUC** is its mean over the curve (random
  targeting: half the average effect), reported with ``auuc_random`` beside it.
* Doubly-robust scores ``Γ[i, a] = mu[i, a] + 1[arm_i = a] / propensity[a] · (y_i − mu[i, a])``:
  for any policy ``π``, ``mean_i Γ[i, π(x_i)]`` estimates the outcome per row had everyone been
  treated by ``π`` (unbiased when either ``mu`` or the propensities are right; in a randomised
  experiment the propensities are known). IPS is the same with ``mu = 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
_BOOTSTRAP_CELLS = 4_000_000  # resampled indices held at once (32 MB)
CURVE_POINTS = 200


def _sorted_arms(y: np.ndarray, treated: np.ndarray, score: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-score, kind="stable")
    t = treated[order].astype(float)
    yy = y[order].astype(float)
    n_t = np.cumsum(t)
    n_c = np.cumsum(1 - t)
    y_t = np.cumsum(yy * t)
    y_c = np.cumsum(yy * (1 - t))
    return n_t, n_c, y_t, y_c


def qini_curve(y: Any, treated: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    """(share of rows targeted, incremental positives ``Q(k)``) for one arm against control;
    ``treated`` is 1 for the arm's rows and 0 for the control's."""
    y_arr, t_arr, s_arr = (np.asarray(v, dtype=float).ravel() for v in (y, treated, score))
    n_t, n_c, y_t, y_c = _sorted_arms(y_arr, t_arr, s_arr)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = y_t - np.where(n_c > 0, y_c * n_t / n_c, 0.0)
    share = np.arange(1, y_arr.size + 1) / y_arr.size
    return np.concatenate([[0.0], share]), np.concatenate([[0.0], q])


def uplift_curve(y: Any, treated: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    """(share of rows targeted, ``G(k) = (Ȳ_t(k) − Ȳ_c(k)) · k / n``) for one arm vs control."""
    y_arr, t_arr, s_arr = (np.asarray(v, dtype=float).ravel() for v in (y, treated, score))
    n_t, n_c, y_t, y_c = _sorted_arms(y_arr, t_arr, s_arr)
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(n_t > 0, y_t / np.maximum(n_t, 1), 0.0) - np.where(
            n_c > 0, y_c / np.maximum(n_c, 1), 0.0)
    k = np.arange(1, y_arr.size + 1)
    share = k / y_arr.size
    return np.concatenate([[0.0], share]), np.concatenate([[0.0], gap * share])


def uplift_scores(y: Any, treated: Any, score: Any) -> dict[str, float]:
    """Qini coefficient, AUUC and its random-targeting value for one arm against control."""
    y_arr, t_arr = np.asarray(y, dtype=float).ravel(), np.asarray(treated, dtype=float).ravel()
    if t_arr.sum() == 0 or t_arr.sum() == t_arr.size:
        raise ValueError("treated: the arm and the control both need rows")
    share, q = qini_curve(y_arr, t_arr, score)
    n = y_arr.size
    qini = float(np.mean(q[1:] - share[1:] * q[-1]) / n)
    _, g = uplift_curve(y_arr, t_arr, score)
    effect = float(y_arr[t_arr == 1].mean() - y_arr[t_arr == 0].mean())
    return {"qini": qini, "auuc": float(np.mean(g[1:])), "auuc_random": effect / 2,
            "average_effect": effect, "rows": int(n)}


def dr_scores(y: Any, arm: Any, mu: Any, propensity: Any) -> np.ndarray:
    """Doubly-robust scores Γ (rows × arms); see the module docstring."""
    y_arr = np.asarray(y, dtype=float).ravel()
    arm_arr = np.asarray(arm, dtype=int).ravel()
    mu_arr = np.asarray(mu, dtype=float)
    e = np.asarray(propensity, dtype=float)
    if e.ndim == 1:
        e = np.broadcast_to(e, mu_arr.shape)
    if mu_arr.shape != (y_arr.size, e.shape[1]) or e.shape != mu_arr.shape:
        raise ValueError(f"mu and propensity: expected shape ({y_arr.size}, arms), got "
                         f"{mu_arr.shape} and {e.shape}")
    if (e <= 0).any():
        raise ValueError("propensity: every arm needs a positive probability")
    observed = np.zeros_like(mu_arr)
    observed[np.arange(y_arr.size), arm_arr] = 1.0
    return mu_arr + observed / e * (y_arr[:, None] - mu_arr)


def ips_scores(y: Any, arm: Any, propensity: Any, n_arms: int) -> np.ndarray:
    """Inverse-propensity scores (rows × arms): Γ with ``mu = 0``."""
    y_arr = np.asarray(y, dtype=float).ravel()
    return dr_scores(y_arr, arm, np.zeros((y_arr.size, n_arms)), propensity)


def policy_rows(scores: np.ndarray, choice: Any) -> np.ndarray:
    """Per-row score of the arm a policy chooses (``choice[i]`` an arm position)."""
    index = np.asarray(choice, dtype=int).ravel()
    return scores[np.arange(scores.shape[0]), index]


def bootstrap_mean(
    values: Any, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, tuple[float, float]]:
    """Mean of ``values`` (rows × series, or rows) and its percentile interval from seeded
    bootstrap resamples of the rows (the same resample for every series: paired)."""
    arr = np.asarray(values, dtype=float)
    flat = arr.ndim == 1
    arr = arr[:, None] if flat else arr
    if not arr.shape[0]:
        raise ValueError("values: no rows to bootstrap")
    rng = np.random.default_rng(seed)
    means = np.empty((resamples, arr.shape[1]))
    block = max(1, _BOOTSTRAP_CELLS // arr.shape[0])
    for start in range(0, resamples, block):
        rows = rng.integers(0, arr.shape[0], size=(min(block, resamples - start), arr.shape[0]))
        for j in range(arr.shape[1]):
            means[start:start + rows.shape[0], j] = arr[rows, j].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail], axis=0)
    point = arr.mean(axis=0)
    if flat:
        return float(point[0]), (float(low[0]), float(high[0]))
    return point, (low, high)  # type: ignore[return-value]


def qini_plot(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path | str,
              title: str = "Qini curves (cross-fitted)") -> Path:
    """One Qini curve per arm (incremental positives against the share targeted) with each
    arm's random-targeting line; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, (share, q) in curves.items():
        step = max(1, share.size // 2000)
        line = ax.plot(share[::step], q[::step], label=f"{name}")[0]
        ax.plot([0, 1], [0, q[-1]], linestyle="--", color=line.get_color(), alpha=0.6)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("share of the arm's and control's rows targeted (by predicted uplift)")
    ax.set_ylabel("incremental positives")
    ax.set_title(title)
    ax.legend(fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def uplift_plot(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path | str) -> Path:
    """One uplift-gain curve per arm (the AUUC is the mean height); written as PNG."""
    return qini_plot(curves, path, title="Uplift curves, gain G(k) (cross-fitted)")
