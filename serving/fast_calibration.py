"""Fast twin of scikit-learn's calibrator ``predict``: the fitted map as plain numpy.

``training.calibration.Calibrator.predict`` calls scikit-learn (``LogisticRegression.predict_proba``
on the clipped logit for Platt scaling, ``IsotonicRegression.predict`` with
``out_of_bounds="clip"``), whose input validation costs ~0.07-0.11 ms per call whatever the
batch size. ``fast_calibration`` reads the fitted parameters once (``coef_``/``intercept_``, or
``X_thresholds_``/``y_thresholds_``/``X_min_``/``X_max_``) and returns a function that computes
the same map in ~6 µs.

Kept for: single ``POST /predict`` (p50 ≤ 3 ms; today ~1.7 ms served): the library path adds
~0.1 ms per request, more than the 5% of today's p50 counted as noise
(``benchmarks/bench_library_paths.py``: 17× on one score, 7× on 1,000; table and date in
``docs/scaling.md``). Equivalence: ``tests/unit/test_serving_fast_paths.py``
(``test_fast_calibration_equals_calibrator``, every method training can choose — identity,
sigmoid, isotonic — to 1e-12).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import expit, logit

from training.calibration import CLIP_HIGH, CLIP_LOW


def fast_calibration(calibrator: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """A numpy function equal to ``calibrator.predict`` on raw scores, or None when unknown.

    Knows ``training.calibration.Calibrator`` with ``"identity"`` (the raw score, clipped),
    ``"sigmoid"`` (scikit-learn
    ``LogisticRegression`` on the clipped logit) or ``"isotonic"`` (``IsotonicRegression`` with
    ``out_of_bounds="clip"``); the result is clipped to [1e-6, 1 - 1e-6] as the calibrator does.
    """
    method = getattr(calibrator, "method", None)
    model = getattr(calibrator, "model", None)
    if method == "identity":

        def identity(raw: np.ndarray) -> np.ndarray:
            return np.clip(np.asarray(raw, dtype=float), CLIP_LOW, CLIP_HIGH)

        return identity
    if method == "sigmoid" and hasattr(model, "coef_") and np.shape(model.coef_) == (1, 1):
        slope = float(model.coef_[0, 0])
        intercept = float(model.intercept_[0])

        def sigmoid(raw: np.ndarray) -> np.ndarray:
            x = logit(np.clip(raw, CLIP_LOW, CLIP_HIGH))
            return np.clip(expit(x * slope + intercept), CLIP_LOW, CLIP_HIGH)

        return sigmoid
    if (method == "isotonic" and getattr(model, "out_of_bounds", None) == "clip"
            and hasattr(model, "X_thresholds_") and len(model.X_thresholds_) > 1):
        xs = np.asarray(model.X_thresholds_, dtype=float)
        ys = np.asarray(model.y_thresholds_, dtype=float)
        low, high = float(model.X_min_), float(model.X_max_)

        def isotonic(raw: np.ndarray) -> np.ndarray:
            return np.clip(np.interp(np.clip(raw, low, high), xs, ys), CLIP_LOW, CLIP_HIGH)

        return isotonic
    return None
