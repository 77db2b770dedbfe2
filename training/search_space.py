"""The LightGBM search space that every Optuna study of the product uses."""

from __future__ import annotations

from typing import Any

import optuna

# Fixed parameters of every LightGBM model we train.
BASE_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "verbosity": -1,
    "n_jobs": 2,
    "deterministic": True,
    "force_col_wise": True,
}


def suggest_lgbm_params(trial: optuna.Trial) -> dict[str, Any]:
    """Sample one LightGBM parameter set (merged over ``BASE_PARAMS``)."""
    params = {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 8, 128, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 10, 200, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.4, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "bagging_freq": 1,
        "lambda_l1": trial.suggest_float("lambda_l1", 1e-8, 10.0, log=True),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-8, 10.0, log=True),
        "min_split_gain": trial.suggest_float("min_split_gain", 0.0, 0.5),
        "cat_smooth": trial.suggest_float("cat_smooth", 1.0, 50.0, log=True),
    }
    return {**BASE_PARAMS, **params}
