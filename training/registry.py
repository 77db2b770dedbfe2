"""MLflow tracking set-up, model registration and the champion/challenger promotion gate.

Every trained model becomes a new version of ``settings.model_name`` with the alias
``challenger``. The alias ``champion`` moves to it only when it beats the current champion on
*this run's* test slice (the newest leads), both models scoring the very same rows:

1. lower log loss wins (log loss judges both ranking and calibration, which routing by
   probability cut-offs needs);
2. when the two log losses differ by at most ``LOG_LOSS_TIE`` (absolute), the higher ROC-AUC
   wins; equal AUCs keep the current champion (no churn without evidence).

The first model of a name becomes champion. A champion that cannot score the current test slice
(e.g. its features no longer exist) is replaced, and the reason says so.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sklearn.metrics import log_loss, roc_auc_score

from leadscore.config import Settings
from leadscore.schemas import CHAMPION_ALIAS, PROBABILITY_CLIP

CHAMPION = CHAMPION_ALIAS
CHALLENGER = "challenger"
LOG_LOSS_TIE = 1e-4
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def point_mlflow_at(settings: Settings) -> str:
    """Point this process's MLflow client at ``settings.tracking_uri`` (tracking and registry)
    without leaving ``MLFLOW_*_URI`` in the environment; returns the URI."""
    uri = settings.tracking_uri
    # mlflow.set_*_uri also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, which would make
    # every later Settings (another workdir) resolve to this store: restore the environment.
    saved = {name: os.environ.get(name) for name in _URI_VARIABLES}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return uri


def setup_tracking(settings: Settings, experiment_name: str | None = None) -> str:
    """Point MLflow at ``settings.tracking_uri`` and return the experiment id (created if new)."""
    settings.mlruns_dir.mkdir(parents=True, exist_ok=True)
    point_mlflow_at(settings)
    name = experiment_name or settings.model_name
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = mlflow.create_experiment(name, artifact_location=settings.artifact_location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def alias_version(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """The version carrying ``alias``, or None when the model or the alias does not exist."""
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def champion_uri(model_name: str) -> str:
    """Registry URI of the current champion."""
    return f"models:/{model_name}@{CHAMPION}"


@dataclass
class PromotionDecision:
    """Whether the challenger becomes champion, and why (with the numbers compared)."""

    promote: bool
    reason: str
    challenger: dict[str, float | None]
    champion: dict[str, float | None] | None = None
    champion_version: str | None = None
    rule: str = (
        "lower test log loss wins; within 1e-4 the higher ROC-AUC wins; ties keep the champion"
    )
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scores(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    clipped = np.clip(p, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    both = 0 < y.sum() < y.size
    return {
        "log_loss": float(log_loss(y, clipped, labels=[0, 1])),
        "roc_auc": float(roc_auc_score(y, p)) if both else None,
    }


def decide_promotion(
    y: Any,
    p_challenger: Any,
    p_champion: Any | None,
    champion_version: str | None = None,
    champion_error: str | None = None,
) -> PromotionDecision:
    """Apply the gate (module docstring) to both models' predictions on the same rows."""
    y_arr = np.asarray(y, dtype=float).ravel()
    new = _scores(y_arr, np.asarray(p_challenger, dtype=float).ravel())
    if p_champion is None:
        if champion_version is None:
            return PromotionDecision(True, "no champion yet: the first model becomes champion", new)
        return PromotionDecision(
            True,
            f"champion v{champion_version} cannot score this test slice ({champion_error}); "
            "replaced",
            new, None, champion_version,
        )
    old = _scores(y_arr, np.asarray(p_champion, dtype=float).ravel())
    delta = new["log_loss"] - old["log_loss"]
    if delta < -LOG_LOSS_TIE:
        promote, why = True, f"lower test log loss ({new['log_loss']:.5f} < {old['log_loss']:.5f})"
    elif delta > LOG_LOSS_TIE:
        promote, why = False, (
            f"higher test log loss ({new['log_loss']:.5f} > {old['log_loss']:.5f})"
        )
    else:
        auc_new, auc_old = new["roc_auc"] or 0.0, old["roc_auc"] or 0.0
        promote = auc_new > auc_old
        why = (
            f"log losses tie within {LOG_LOSS_TIE} ({new['log_loss']:.5f} vs "
            f"{old['log_loss']:.5f}); ROC-AUC {auc_new:.4f} vs {auc_old:.4f}"
        )
    verdict = "beats" if promote else "does not beat"
    return PromotionDecision(
        promote, f"challenger {verdict} champion v{champion_version}: {why}", new, old,
        champion_version,
    )


def champion_predictions(
    client: MlflowClient, model_name: str, features: pd.DataFrame
) -> tuple[str | None, np.ndarray | None, str | None]:
    """(champion version, its probabilities on ``features``, error text if it could not score).

    Returns ``(None, None, None)`` when there is no champion.
    """
    current = alias_version(client, model_name, CHAMPION)
    if current is None:
        return None, None, None
    try:
        loaded = mlflow.pyfunc.load_model(f"models:/{model_name}/{current.version}")
        python_model = loaded.unwrap_python_model()
        if hasattr(python_model, "predict_proba"):
            probabilities = python_model.predict_proba(features)
        else:
            probabilities = loaded.predict(features)["probability"].to_numpy()
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot score"; reported
        return str(current.version), None, f"{type(exc).__name__}: {exc}"
    return str(current.version), np.asarray(probabilities, dtype=float), None


def register_and_gate(
    client: MlflowClient,
    model_name: str,
    model_uri: str,
    run_id: str,
    decision: PromotionDecision,
    promote: bool,
    tags: dict[str, str] | None = None,
) -> tuple[ModelVersion, bool]:
    """Register ``model_uri`` as a new version, alias it ``challenger`` and, when the decision
    says so and ``promote`` is on, move ``champion`` to it. Returns (version, promoted)."""
    version = mlflow.register_model(model_uri, model_name, tags=tags or {})
    client.set_model_version_tag(model_name, version.version, "run_id", run_id)
    client.set_model_version_tag(model_name, version.version, "promotion_reason", decision.reason)
    client.set_registered_model_alias(model_name, CHALLENGER, version.version)
    promoted = bool(decision.promote and promote)
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION, version.version)
    return version, promoted
