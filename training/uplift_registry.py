"""MLflow tracking, registration and the champion gate of uplift models.

An uplift model is registered under its own name (``lead-uplift`` for the product's follow-up
channels, ``uplift-<file stem>`` for a flat experiment export), every version aliased
``challenger``; ``champion`` moves to it only on evidence, the same rule as the conversion
model's gate (``training.registry``) with the policy value in place of the log loss:

1. on the challenger's rows, per row, the doubly-robust score of ``value × outcome − cost``
   (out-of-fold, ``training.uplift``) under the arm the challenger recommends minus the one
   under the arm the champion recommends; its mean (the value gained per row) and a 95% paired
   bootstrap interval (``BOOTSTRAP_RESAMPLES`` resamples, seeded);
2. promoted when the whole interval lies above zero (better beyond noise);
3. or, when the champion is older than ``champion_max_age_days``, when the interval's lower end
   stays within ``promotion_margin`` of the champion's value per row;
4. otherwise the champion stays. The first model becomes champion; a champion that cannot score
   these rows (other arms, other features) is replaced, and the reason says so.

The champion recommends on rows it may have been trained on (in-sample for it, out-of-fold for
the challenger): the comparison leans towards the champion, never towards the challenger.
Nothing is written to the registry before the model has been fitted and evaluated; the version
is created with its decision tags in one call (``training.registry.register_and_gate``).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from leadscore.config import Settings
from training.registry import (
    CHAMPION,
    alias_version,
    register_and_gate,
    setup_tracking,
    version_age_days,
)
from training.uplift import UpliftModel, UpliftResult
from training.uplift_metrics import BOOTSTRAP_RESAMPLES, bootstrap_mean, qini_plot, uplift_plot

PRODUCT_UPLIFT_MODEL = "lead-uplift"


@dataclass
class UpliftPromotionDecision:
    """Whether the challenger becomes champion, and why (value per row gained, interval)."""

    promote: bool
    reason: str
    challenger_value: float
    champion_value: float | None = None
    champion_version: str | None = None
    value_difference: float | None = None
    interval: tuple[float, float] | None = None
    resamples: int | None = None
    champion_age_days: float | None = None
    rule: str = (
        "paired bootstrap of the DR-estimated value per row (challenger's recommended arm - "
        "champion's): promote when its 95% interval lies above zero, or when the champion is "
        "older than the maximum age and the lower end is within the margin"
    )
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["interval"] = None if self.interval is None else list(self.interval)
        return out

    def tags(self) -> dict[str, str]:
        tags = {"promotion_decision": "promote" if self.promote else "keep champion",
                "promotion_reason": self.reason, "promotion_rule": self.rule,
                "champion_before": str(self.champion_version),
                "challenger_value_per_row": f"{self.challenger_value:.6g}"}
        if self.value_difference is not None and self.interval is not None:
            tags["value_difference"] = f"{self.value_difference:.6g}"
            tags["value_difference_ci95"] = f"{self.interval[0]:.6g} .. {self.interval[1]:.6g}"
            tags["bootstrap_resamples"] = str(self.resamples)
        return tags


def decide_uplift_promotion(
    net_dr: np.ndarray, challenger_choice: np.ndarray, champion_choice: np.ndarray | None,
    champion_version: str | None = None, champion_error: str | None = None, *,
    champion_age_days: float | None = None, max_age_days: float | None = None,
    margin: float = 0.0, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
) -> UpliftPromotionDecision:
    """Apply the gate (module docstring); ``net_dr`` is rows × arms, the choices arm positions."""
    rows = np.arange(net_dr.shape[0])
    new = net_dr[rows, np.asarray(challenger_choice, dtype=int)]
    new_value = float(new.mean())
    if champion_choice is None:
        if champion_version is None:
            return UpliftPromotionDecision(True, "no champion yet: the first model becomes "
                                           "champion", new_value)
        return UpliftPromotionDecision(
            True, f"champion v{champion_version} cannot score these rows ({champion_error}); "
            "replaced", new_value, champion_version=champion_version,
            champion_age_days=champion_age_days)
    old = net_dr[rows, np.asarray(champion_choice, dtype=int)]
    difference, (low, high) = bootstrap_mean(new - old, resamples=resamples, seed=seed)
    old_value = float(old.mean())
    allowed = margin * abs(old_value)
    old_enough = (max_age_days is not None and champion_age_days is not None
                  and champion_age_days > max_age_days)
    numbers = (f"value per row {difference:+.5f}, 95% interval [{low:+.5f}, {high:+.5f}] over "
               f"{rows.size} rows")
    if low > 0:
        promote, why = True, f"better beyond noise: {numbers} lies above zero"
    elif old_enough and low >= -allowed:
        promote, why = True, (f"champion is {champion_age_days:.0f} days old (over "
                              f"{max_age_days:g}) and the challenger is no worse beyond the "
                              f"margin: {numbers}")
    else:
        promote = False
        why = (f"worse beyond noise: {numbers} lies below zero" if high < 0
               else f"not better beyond noise: {numbers} includes zero")
    verdict = "beats" if promote and low > 0 else "replaces" if promote else "does not beat"
    return UpliftPromotionDecision(
        promote, f"challenger {verdict} champion v{champion_version}: {why}", new_value,
        old_value, champion_version, difference, (low, high), resamples, champion_age_days)


def champion_choice(client: MlflowClient, model_name: str, result: UpliftResult,
                    features: pd.DataFrame) -> tuple[str | None, np.ndarray | None, str | None]:
    """(champion version, its recommended arm position per row, error if it cannot score)."""
    current = alias_version(client, model_name, CHAMPION)
    if current is None:
        return None, None, None
    try:
        loaded = mlflow.pyfunc.load_model(f"models:/{model_name}/{current.version}")
        champion = loaded.unwrap_python_model()
        if list(champion.arms) != list(result.model.arms):
            raise ValueError(f"its arms {champion.arms} are not {result.model.arms}")
        recommended = champion.recommend(features)["recommended_arm"]
        position = {a: i for i, a in enumerate(result.model.arms)}
        choice = recommended.map(position).to_numpy(dtype=int)
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot score"; reported
        return str(current.version), None, f"{type(exc).__name__}: {exc}"
    return str(current.version), choice, None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "arm"


def write_plots(result: UpliftResult, folder: Path) -> dict[str, Path]:
    """Qini and uplift curves, one PNG per arm (against the reference arm)."""
    paths: dict[str, Path] = {}
    for arm in result.model.arms[1:]:
        paths[f"qini_{arm}"] = qini_plot(
            {arm: result.curves["qini"][arm]}, folder / f"qini_{_safe(arm)}.png",
            title=f"Qini curve: {arm} vs {result.model.reference} (cross-fitted)")
        paths[f"uplift_{arm}"] = uplift_plot(
            {arm: result.curves["uplift"][arm]}, folder / f"uplift_{_safe(arm)}.png")
    return paths


def model_example(features: pd.DataFrame) -> pd.DataFrame:
    """Five rows of the features, categories as plain text (a signature MLflow can read)."""
    example = features.head(5).copy()
    for column in example.columns:
        if isinstance(example[column].dtype, pd.CategoricalDtype):
            example[column] = example[column].astype(object)
    return example


def _pip_requirements() -> list[str]:
    names = ("econml", "lightgbm", "scikit-learn", "pandas", "numpy", "mlflow")
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def _metrics(report: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for arm, values in report["per_arm"].items():
        key = _safe(arm)
        for metric in ("qini", "auuc", "auuc_random", "dr_average_effect"):
            out[f"{metric}.{key}"] = float(values[metric])
    for policy, values in report["policy_value"].items():
        out[f"policy_value.{policy}"] = float(values["value_per_row"])
    out["seconds"] = float(report["seconds"])
    return out


def publish_uplift(
    settings: Settings, result: UpliftResult, features: pd.DataFrame, model_name: str,
    *, promote: bool = True, run_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Log the run (parameters, metrics, report, Qini/uplift plots per arm, the model),
    register it as a new version of ``model_name`` and apply the gate; returns the record
    added to the report under ``registry``."""
    experiment_id = setup_tracking(settings, model_name)
    client = MlflowClient()
    with mlflow.start_run(experiment_id=experiment_id, run_name=model_name) as run:
        params = {"learner": result.model.metadata.get("learner"),
                  "arms": ",".join(result.model.arms), "value": result.model.value,
                  **{f"cost.{_safe(a)}": c for a, c in result.model.costs.items()},
                  **(run_params or {})}
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics(_metrics(result.report))
        with tempfile.TemporaryDirectory(prefix="leadscore-uplift-") as tmp:
            for path in write_plots(result, Path(tmp)).values():
                mlflow.log_artifact(str(path), artifact_path="plots")
        example = model_example(features)
        model_info = mlflow.pyfunc.log_model(
            name="model", python_model=result.model, input_example=example,
            pip_requirements=_pip_requirements(),
            metadata={"arms": result.model.arms, "reference_arm": result.model.reference},
        )
        version_before, choice_old, error = champion_choice(client, model_name, result,
                                                            features)
        current = alias_version(client, model_name, CHAMPION)
        decision = decide_uplift_promotion(
            result.net_dr(), result.policy_choice(), choice_old, version_before, error,
            champion_age_days=version_age_days(current) if current is not None else None,
            max_age_days=settings.champion_max_age_days, margin=settings.promotion_margin,
            seed=settings.seed)
        if not promote:
            decision.extra["promotion_disabled"] = True
        registered, promoted = register_and_gate(
            client, model_name, model_info.model_uri, run.info.run_id, decision, promote)
        reason = decision.reason if promote else f"--no-promote: {decision.reason}"
        mlflow.set_tags({"model_version": str(registered.version), "promoted": str(promoted),
                         "promotion_reason": reason})
        mlflow.log_dict(result.report, "report.json")
        return {"model_name": model_name, "model_version": str(registered.version),
                "promoted": promoted, "promotion_reason": reason,
                "decision": decision.to_dict(), "run_id": run.info.run_id,
                "experiment_id": experiment_id}


def load_uplift_model(path: Path | str) -> UpliftModel:
    """An uplift model saved by ``leadscore uplift train --model-out`` (an MLflow model
    folder), or a registry URI (``models:/lead-uplift@champion``)."""
    target = str(path)
    if not target.startswith(("models:/", "runs:/")):
        folder = Path(path)
        if not (folder / "MLmodel").is_file():
            raise FileNotFoundError(f"--model {folder} is not an uplift model folder "
                                    "(no MLmodel file): write one with `leadscore uplift train "
                                    "--model-out DIR`")
    model = mlflow.pyfunc.load_model(target).unwrap_python_model()
    if not isinstance(model, UpliftModel):
        raise ValueError(f"--model {target} holds a {type(model).__name__}, not an uplift model")
    return model


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays (and text for anything else) in a report."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def save_uplift_outputs(
    settings: Settings, result: UpliftResult, features: pd.DataFrame, out_dir: Path,
    report: dict[str, Any], report_path: Path, started: float, *, register: bool,
    model_name: str, promote: bool, run_params: dict[str, Any],
) -> dict[str, Any]:
    """Save the MLflow model to ``out_dir`` (staged, then renamed: never half-written),
    register it when asked (``publish_uplift``), and write the JSON report."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        mlflow.pyfunc.save_model(path=str(staging / "model"), python_model=result.model,
                                 input_example=model_example(features),
                                 pip_requirements=_pip_requirements())
        if register:
            report["registry"] = publish_uplift(settings, result, features, model_name,
                                                promote=promote, run_params=run_params)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        (staging / "model").rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report["model_out"] = str(out_dir)
    report["seconds_total"] = round(time.perf_counter() - started, 1)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, default=_plain))
    report["report_path"] = str(report_path)
    return report
