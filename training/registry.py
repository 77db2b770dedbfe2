"""MLflow tracking set-up, model registration and the champion/challenger promotion gate.

Every trained model becomes a new version of ``settings.model_name`` with the alias
``challenger``. The alias ``champion`` moves to it only on evidence, judged on *this run's* test
slice (the newest leads), both models scoring the very same rows:

1. per lead, the challenger's log loss minus the champion's (log loss judges both ranking and
   calibration, which routing by probability cut-offs needs); its mean and a 95% interval from
   a seeded paired bootstrap over the test leads (``BOOTSTRAP_RESAMPLES`` resamples);
2. the challenger is promoted when the whole interval lies below zero (better beyond noise);
3. or, when the champion is older than ``champion_max_age_days``, when the interval's upper end
   stays within ``promotion_margin`` (a share of the champion's test log loss): a newer model
   that is no worse beyond the margin replaces an old one;
4. otherwise the champion stays (no churn without evidence).

The first model of a name becomes champion. A champion that cannot score the current test slice
(e.g. its features no longer exist) is replaced, and the reason says so. The decision, the
difference and its interval are set as tags of the new version when it is created (one
transaction: a version never exists without them).
"""

from __future__ import annotations

import os
import time
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
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
_BOOTSTRAP_CELLS = 4_000_000  # resampled indices held at once (32 MB)
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def point_mlflow_at(settings: Settings) -> str:
    """Point this process's MLflow client at ``settings.tracking_uri`` (tracking and registry)
    without leaving ``MLFLOW_*_URI`` in the environment; returns the URI. An embedded store
    moved or copied from another work folder is rebased onto this one first
    (``training.artifact_store``)."""
    from training.artifact_store import relocate_artifact_store

    relocate_artifact_store(settings)
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
    """Whether the challenger becomes champion, and why (with the numbers compared).

    ``log_loss_difference`` is the challenger's mean test log loss minus the champion's and
    ``interval`` its 95% paired-bootstrap interval (None without a champion to compare with).
    """

    promote: bool
    reason: str
    challenger: dict[str, float | None]
    champion: dict[str, float | None] | None = None
    champion_version: str | None = None
    rule: str = (
        "paired bootstrap of the test log-loss difference (challenger - champion): promote when "
        "its 95% interval lies below zero, or when the champion is older than the maximum age "
        "and the interval's upper end is within the margin"
    )
    log_loss_difference: float | None = None
    interval: tuple[float, float] | None = None
    resamples: int | None = None
    champion_age_days: float | None = None
    max_age_days: float | None = None
    margin: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["interval"] = None if self.interval is None else list(self.interval)
        return out

    def tags(self) -> dict[str, str]:
        """The model-version tags that record this decision."""
        tags = {
            "promotion_decision": "promote" if self.promote else "keep champion",
            "promotion_reason": self.reason,
            "promotion_rule": self.rule,
            "champion_before": str(self.champion_version),
        }
        if self.log_loss_difference is not None and self.interval is not None:
            tags["log_loss_difference"] = f"{self.log_loss_difference:.6g}"
            tags["log_loss_difference_ci95"] = f"{self.interval[0]:.6g} .. {self.interval[1]:.6g}"
            tags["bootstrap_resamples"] = str(self.resamples)
        if self.champion_age_days is not None:
            tags["champion_age_days"] = f"{self.champion_age_days:.2f}"
        return tags


def _scores(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    clipped = np.clip(p, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    both = 0 < y.sum() < y.size
    return {
        "log_loss": float(log_loss(y, clipped, labels=[0, 1])),
        "roc_auc": float(roc_auc_score(y, p)) if both else None,
    }


def _row_log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    clipped = np.clip(p, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return -(y * np.log(clipped) + (1 - y) * np.log1p(-clipped))


def paired_bootstrap(
    y: Any, p_challenger: Any, p_champion: Any, *, resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0, confidence: float = CONFIDENCE,
) -> tuple[float, tuple[float, float]]:
    """Mean log-loss difference (challenger - champion) on the same rows and its percentile
    interval from ``resamples`` paired bootstrap resamples of the rows (seeded; vectorised in
    blocks of at most ``_BOOTSTRAP_CELLS`` indices)."""
    y_arr = np.asarray(y, dtype=float).ravel()
    new, old = (np.asarray(p, dtype=float).ravel() for p in (p_challenger, p_champion))
    if not y_arr.size or new.size != y_arr.size or old.size != y_arr.size:
        raise ValueError(f"the gate needs both models' predictions on the same {y_arr.size} "
                         f"test rows, got {new.size} and {old.size}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    diff = _row_log_loss(y_arr, new) - _row_log_loss(y_arr, old)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, _BOOTSTRAP_CELLS // diff.size)
    for start in range(0, resamples, block):
        rows = rng.integers(0, diff.size, size=(min(block, resamples - start), diff.size))
        means[start:start + rows.shape[0]] = diff[rows].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(diff.mean()), (float(low), float(high))


def decide_promotion(
    y: Any,
    p_challenger: Any,
    p_champion: Any | None,
    champion_version: str | None = None,
    champion_error: str | None = None,
    *,
    champion_age_days: float | None = None,
    max_age_days: float | None = None,
    margin: float = 0.0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> PromotionDecision:
    """Apply the gate (module docstring) to both models' predictions on the same rows.

    ``margin`` is a share of the champion's test log loss; it applies only when
    ``champion_age_days`` exceeds ``max_age_days`` (None: never).
    """
    y_arr = np.asarray(y, dtype=float).ravel()
    new = _scores(y_arr, np.asarray(p_challenger, dtype=float).ravel())
    if p_champion is None:
        if champion_version is None:
            return PromotionDecision(True, "no champion yet: the first model becomes champion", new)
        return PromotionDecision(
            True,
            f"champion v{champion_version} cannot score this test slice ({champion_error}); "
            "replaced",
            new, None, champion_version, champion_age_days=champion_age_days,
        )
    old = _scores(y_arr, np.asarray(p_champion, dtype=float).ravel())
    difference, (low, high) = paired_bootstrap(y_arr, p_challenger, p_champion,
                                               resamples=resamples, seed=seed)
    allowed = margin * float(old["log_loss"] or 0.0)
    old_enough = (max_age_days is not None and champion_age_days is not None
                  and champion_age_days > max_age_days)
    numbers = (f"log-loss difference {difference:+.5f}, 95% interval [{low:+.5f}, {high:+.5f}] "
               f"over {y_arr.size} test leads")
    if high < 0:
        promote, why = True, f"better beyond noise: {numbers} lies below zero"
    elif old_enough and high <= allowed:
        promote, why = True, (
            f"champion is {champion_age_days:.0f} days old (over {max_age_days:g}) and the "
            f"challenger is no worse beyond the margin: {numbers}, upper end within "
            f"{margin:.1%} of the champion's log loss ({allowed:.5f})")
    else:
        promote = False
        why = (f"worse beyond noise: {numbers} lies above zero" if low > 0
               else f"not better beyond noise: {numbers} includes zero")
        if old_enough:
            why += (f"; the champion is {champion_age_days:.0f} days old, but the upper end "
                    f"exceeds the {margin:.1%} margin ({allowed:.5f})")
    verdict = "beats" if promote and high < 0 else "replaces" if promote else "does not beat"
    return PromotionDecision(
        promote, f"challenger {verdict} champion v{champion_version}: {why}", new, old,
        champion_version, log_loss_difference=difference, interval=(low, high),
        resamples=resamples, champion_age_days=champion_age_days, max_age_days=max_age_days,
        margin=margin,
    )


def version_age_days(version: ModelVersion, now: float | None = None) -> float:
    """Days since ``version`` was registered."""
    seconds = (now if now is not None else time.time()) - version.creation_timestamp / 1000
    return max(seconds, 0.0) / 86_400


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


def champion_params(client: MlflowClient, model_name: str) -> tuple[str | None, dict[str, str]]:
    """(champion version, the tuned parameters its training run logged as ``best_<name>``),
    for warm-starting the next study; ``(None, {})`` without a champion, and ``{}`` when its
    run is gone or logged none."""
    current = alias_version(client, model_name, CHAMPION)
    if current is None:
        return None, {}
    run_id = (current.tags or {}).get("run_id") or current.run_id
    try:
        params = client.get_run(run_id).data.params if run_id else {}
    except MlflowException:
        params = {}
    prefix = "best_"
    return str(current.version), {k[len(prefix):]: v for k, v in params.items()
                                  if k.startswith(prefix)}


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
    says so and ``promote`` is on, move ``champion`` to it. Returns (version, promoted).

    The decision's tags (reason, difference, interval) are written with the version in one
    registry transaction, so no version exists without them."""
    version_tags = {**(tags or {}), "run_id": run_id, **decision.tags()}
    version = mlflow.register_model(model_uri, model_name, tags=version_tags)
    client.set_registered_model_alias(model_name, CHALLENGER, version.version)
    promoted = bool(decision.promote and promote)
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION, version.version)
    return version, promoted
