"""Training: time splits, Optuna tuning of LightGBM, calibration, evaluation, MLflow registry."""

import os

# LightGBM's OpenMP threads spin while waiting by default, which starves a small shared
# machine; passive waiting must be set before lightgbm is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
