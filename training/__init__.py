"""Training: time splits, Optuna tuning of LightGBM, calibration, evaluation, MLflow registry."""
