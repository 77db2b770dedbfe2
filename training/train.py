"""``train_model``: tune, fit, calibrate, evaluate against baselines, log and register.

The pipeline on the point-in-time training set (built by Feast: a row per lead at submission
and one per funnel step it reached later, ``features.training_rows``; a lead's rows share its
``created_at``, so every split keeps them together):

1. split by time (train on older leads, tune on the next slice, test on the newest slice),
   with an embargo of one conversion window before the test slice and
   ``validation_embargo_days`` before the validation slice (``training.split``);
2. Optuna/TPE tuning of LightGBM with pruning (one nested MLflow run per trial);
3. refit with the best parameters (early stopping on validation); choose the model to ship
   among tuned LightGBM, default LightGBM, logistic regression and their blend, and its
   calibration (identity unless a calibrator gains beyond noise), both on forward-in-time
   predictions over the train and validation slices (``training.selection``);
4. evaluate the shipped model, every candidate and the rule score on the test slice's leads at
   submission (the CRM's call), and side by side at each later funnel step (each lead scored
   with what is known once it reached or passed the step) and with the final step sent at
   submission (what a replay that sent the future measured): ``auc_by_stage``;
5. log the packaged model (signature, input example, feature-service version, data window),
   register it, alias it ``challenger`` and apply the champion gate (``training.registry``);
6. write the report, the hold-out scores for routing and, for a new champion only, the drift
   reference.
"""

from __future__ import annotations

import importlib.metadata
import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
import pyarrow.parquet as pq
import sklearn
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from features.training_rows import (
    FINAL_STEP_FILE,
    SNAPSHOT_COLUMN,
    SNAPSHOT_TIME_COLUMN,
    rows_at_stage,
    submission_rows,
)
from leadscore.config import Settings
from leadscore.schemas import FUNNEL_STEPS
from training.baselines import fit_baselines
from training.drift_reference import write_reference
from training.evaluate import assign_tiers, compare_models
from training.model import PackagedModel, categorical_levels, prepare_features
from training.model import signature_frame as model_signature_frame
from training.plots import calibration_plot, gains_plot, shap_summary_plot
from training.registry import (
    CHAMPION,
    PromotionDecision,
    alias_version,
    champion_params,
    champion_predictions,
    decide_promotion,
    register_and_gate,
    setup_tracking,
    version_age_days,
)
from training.selection import (
    BLEND,
    DEFAULT_LIGHTGBM,
    LOGISTIC,
    TUNED,
    blend,
    choose_and_calibrate,
    package_model,
    train_default_lightgbm,
)
from training.split import TimeSplit, time_split
from training.tune import make_datasets, study_name_for, train_booster, tune_lgbm

TIME_COLUMNS = ("created_at", "event_timestamp")
LABEL_COLUMN = "label"
ID_COLUMNS = ("lead_id", "person_id")
NON_FEATURE_COLUMNS = frozenset({*ID_COLUMNS, *TIME_COLUMNS, LABEL_COLUMN,
                                 "created_timestamp", "label_timestamp", SNAPSHOT_COLUMN,
                                 SNAPSHOT_TIME_COLUMN})
AT_SUBMISSION = "at_submission"
FINAL_STEP_AT_SUBMISSION = "final_step_sent_at_submission"
DEFAULT_CUTOFFS: dict[str, float] = {"A": 0.35, "B": 0.15, "C": 0.05}
MODEL_KEY = "shipped"  # the chosen model, calibrated; candidates keep their own names
RULE_SCORE = "rule_score"
REFERENCE_MAX_ROWS = 20_000
SHAP_MAX_ROWS = 5_000
MIN_ROWS = 200
MIN_SLICE_ROWS = 50  # fewest rows a slice may keep after the embargo

Progress = Callable[[str], None]


@dataclass
class TrainingInputs:
    """The training frame and its feature contract."""

    frame: pd.DataFrame
    feature_columns: list[str]
    categorical_columns: list[str]
    feature_service_version: str
    source: str


# ---- inputs -------------------------------------------------------------------------------
def time_column_of(frame: pd.DataFrame) -> str:
    """The lead-time column of a training frame: ``created_at`` (feature store) or
    ``event_timestamp``."""
    for column in TIME_COLUMNS:
        if column in frame.columns:
            return column
    raise ValueError(f"training set lacks a time column (one of {list(TIME_COLUMNS)})")


def _stored_version(path: Path) -> str | None:
    """Feature-service version from the Parquet metadata written by ``build_training_set``."""
    try:
        meta = pq.read_schema(path).metadata or {}
        summary = json.loads(meta.get(b"leadscore.summary", b"{}"))
    except (OSError, ValueError):
        return None
    version = summary.get("feature_service_version")
    return str(version) if version else None


def _feature_contract(settings: Settings, frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(feature columns, categorical columns): the feature store's list when the frame holds
    it, else every non-id column of the frame (text columns categorical)."""
    # the feature service's list (features.training_set.model_feature_columns(settings) returns
    # the same), read without importing Feast, which takes seconds
    from features.request import MODEL_FEATURES

    declared = list(MODEL_FEATURES)
    if all(c in frame.columns for c in declared):
        cats = [name for name, kind in MODEL_FEATURES.items() if kind == "string"]
        return declared, cats
    features = [c for c in frame.columns if c not in NON_FEATURE_COLUMNS]
    cats = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])
            and not pd.api.types.is_bool_dtype(frame[c])]
    return features, cats


def load_training_inputs(settings: Settings, rebuild: bool = False) -> TrainingInputs:
    """Read ``data/training_set.parquet`` (built through Feast when missing or ``rebuild``)."""
    path = settings.data_dir / "training_set.parquet"
    if rebuild or not path.exists():
        from features.training_set import build_training_set

        try:
            frame = build_training_set(settings)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"{path} does not exist and cannot be built: {exc} "
                "(generate or ingest data and build features first)"
            ) from None
    else:
        frame = pd.read_parquet(path)
    features, cats = _feature_contract(settings, frame)
    version = _stored_version(path) or f"{settings.feature_service}@unversioned"
    validate_training_frame(frame, features)
    return TrainingInputs(frame, features, cats, version, str(path))


def validate_training_frame(frame: pd.DataFrame, feature_columns: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the column when the frame cannot be trained on."""
    time_column = time_column_of(frame)
    required = [LABEL_COLUMN, "lead_id", *feature_columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"training set lacks column(s) {missing}")
    if not feature_columns:
        raise ValueError("training set has no model feature columns")
    leaked = sorted(set(feature_columns) & NON_FEATURE_COLUMNS)
    if leaked:
        raise ValueError(f"identifier/label column(s) {leaked} must not be model features")
    if len(frame) < MIN_ROWS:
        raise ValueError(f"training set has {len(frame)} rows; at least {MIN_ROWS} are needed")
    labels = pd.to_numeric(frame[LABEL_COLUMN], errors="coerce")
    if labels.isna().any() or not labels.isin((0, 1)).all():
        raise ValueError(f"column {LABEL_COLUMN!r} must hold only 0 and 1")
    if frame[time_column].isna().any():
        raise ValueError(f"column {time_column!r} holds missing timestamps")


# ---- services -----------------------------------------------------------------------------
class ServiceUnavailableError(ConnectionError):
    """A store that training writes to cannot be used; the message (one line) names it and its
    URL, password masked."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def check_training_services(settings: Settings, storage_url: str | None) -> None:
    """Fail before any work when a store that training writes to cannot be reached.

    Production profile: the PostgreSQL server answers and the profile's databases exist
    (created when missing, ``profiles.require_services``; training needs no Redis). Every
    profile: the MLflow tracking store and the Optuna ``storage_url`` answer
    (``leadscore.service_checks``, 2 s timeouts, nothing created). Raises
    :class:`ServiceUnavailableError`.
    """
    import psycopg

    from leadscore import service_checks as checks
    from leadscore.profiles import require_services

    try:
        require_services(settings, ("postgres",), timeout=checks.TIMEOUT_SECONDS)
    except ConnectionError as exc:
        raise ServiceUnavailableError(_one_line(str(exc))) from None
    except psycopg.Error as exc:  # e.g. a missing database this role may not create
        raise ServiceUnavailableError(_one_line(f"PostgreSQL: {exc}")) from None
    memory = checks.ServerMemory()
    results = [checks.check_mlflow(settings, memory)[0]]
    if storage_url:
        results.append(checks.check_sql_store("Optuna storage", storage_url, "studies", "Optuna",
                                              memory)[0])
    bad = [r for r in results if r.status in {checks.FAIL, checks.MISSING}]
    if bad:
        raise ServiceUnavailableError(_one_line("; ".join(
            f"{r.component} at {r.url} is not usable: {r.detail}"
            + (f" ({r.hint})" if r.hint else "") for r in bad)))


# ---- MLflow helpers -----------------------------------------------------------------------
class TrialLogger:
    """Optuna callback: one nested MLflow run per finished trial (params, validation metric,
    the process that ran it), child of ``parent_run_id``.

    Picklable, so that tuning worker processes log their own trials: the MLflow client is made
    on first use in each process (``setup_tracking``), and the parent is named by the
    ``mlflow.parentRunId`` tag, which needs no active run in that process.
    """

    def __init__(self, settings: Settings, parent_run_id: str) -> None:
        self.settings = settings
        self.parent_run_id = parent_run_id
        self._client: tuple[MlflowClient, str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    def _client_and_experiment(self) -> tuple[MlflowClient, str]:
        if self._client is None:
            setup_tracking(self.settings)
            client = MlflowClient()
            self._client = client, client.get_run(self.parent_run_id).info.experiment_id
        return self._client

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        client, experiment_id = self._client_and_experiment()
        now = int(time.time() * 1000)
        attrs = trial.user_attrs
        run = client.create_run(
            experiment_id, run_name=f"trial-{trial.number}",
            tags={"mlflow.parentRunId": self.parent_run_id, "optuna.study": study.study_name,
                  "optuna.state": trial.state.name, "optuna.trial": str(trial.number),
                  "optuna.worker": str(attrs.get("worker", 0)),
                  "optuna.pid": str(attrs.get("pid", ""))},
        )
        metrics = []
        if trial.value is not None:
            metrics.append(mlflow.entities.Metric("valid_log_loss", float(trial.value), now, 0))
        if "valid_auc" in attrs:
            metrics.append(mlflow.entities.Metric("valid_auc", float(attrs["valid_auc"]), now, 0))
        if trial.state == optuna.trial.TrialState.PRUNED and trial.intermediate_values:
            last_step = max(trial.intermediate_values)
            metrics.append(mlflow.entities.Metric(
                "valid_log_loss_at_prune", float(trial.intermediate_values[last_step]), now,
                last_step))
        params = [mlflow.entities.Param(k, str(v)) for k, v in trial.params.items()]
        if "best_iteration" in attrs:
            params.append(mlflow.entities.Param("best_iteration", str(attrs["best_iteration"])))
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id, "FINISHED")


def _pip_requirements() -> list[str]:
    return [
        f"lightgbm=={importlib.metadata.version('lightgbm')}",
        f"scikit-learn=={sklearn.__version__}",
        f"pandas=={pd.__version__}", f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}",
    ]


# ---- outputs ------------------------------------------------------------------------------
def _metrics_table(comparison: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    keys = ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "calibration_slope",
            "calibration_intercept")
    return {name: {k: metrics[k] for k in keys} for name, metrics in comparison.items()}


def _write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
    return path


def _write_holdout(settings: Settings, test: pd.DataFrame, split_time_column: str,
                   p_test: np.ndarray, cutoffs: Mapping[str, float]) -> Path:
    """Test-slice leads with their calibrated probability, for the routing engineer."""
    out = pd.DataFrame({
        "lead_id": test["lead_id"].astype(str).to_numpy(),
        "person_id": (test["person_id"].astype(str).to_numpy() if "person_id" in test
                      else np.full(len(test), None)),
        "created_at": pd.to_datetime(test[split_time_column], utc=True).to_numpy(),
        "probability": p_test,
        "tier": assign_tiers(p_test, cutoffs),
        "funnel_step": test["funnel_step"].to_numpy() if "funnel_step" in test else None,
        "rule_score": test["rule_score"].to_numpy() if "rule_score" in test else None,
        "label": test[LABEL_COLUMN].astype(int).to_numpy(),
    })
    out["created_at"] = pd.to_datetime(out["created_at"], utc=True)
    path = settings.reports_dir / "holdout_scored.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_parquet(path, index=False)
    return path


def _reference_frame(inputs: TrainingInputs, split: TimeSplit, model: PackagedModel,
                     cutoffs: Mapping[str, float], seed: int) -> pd.DataFrame:
    """Drift reference: a sample (≤ 20k) of validation+test rows with probability and tier."""
    recent = pd.concat([submission_rows(split.valid), submission_rows(split.test)],
                       ignore_index=True)
    if len(recent) > REFERENCE_MAX_ROWS:
        recent = recent.sample(REFERENCE_MAX_ROWS, random_state=seed).sort_values(split.time_col)
    reference = recent[inputs.feature_columns].reset_index(drop=True).copy()
    probability = model.predict_proba(recent)
    reference["probability"] = probability
    reference["tier"] = assign_tiers(probability, cutoffs)
    return reference


def stage_views(test: pd.DataFrame, final_rows: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """One row per test lead at each stage: at submission, after each later funnel step (what
    is known once the lead reached or passed it) and, when given, with the final step sent at
    submission (``final_rows``: the comparison rows of ``FINAL_STEP_FILE``)."""
    views = {AT_SUBMISSION: submission_rows(test)}
    if SNAPSHOT_COLUMN in test.columns:
        for step in FUNNEL_STEPS[1:]:
            views[f"after_{step}"] = rows_at_stage(test, step)
    if final_rows is not None:
        leads = set(views[AT_SUBMISSION]["lead_id"].astype(str))
        final = final_rows[final_rows["lead_id"].astype(str).isin(leads)]
        if len(final) == len(leads):
            views[FINAL_STEP_AT_SUBMISSION] = final.reset_index(drop=True)
    return views


def auc_by_stage(views: Mapping[str, pd.DataFrame],
                 scorers: Mapping[str, Callable[[pd.DataFrame], np.ndarray]],
                 ) -> dict[str, Any]:
    """ROC AUC of every scorer on every stage's rows, side by side (``{"stages": {stage: {n,
    positives, steps_reached, auc: {model: value}}}}``)."""
    from sklearn.metrics import roc_auc_score

    stages: dict[str, Any] = {}
    for stage, rows in views.items():
        y = rows[LABEL_COLUMN].astype(int).to_numpy()
        reached = (rows[SNAPSHOT_COLUMN].astype(str) != "submission").sum() if (
            SNAPSHOT_COLUMN in rows.columns) else 0
        aucs = {}
        for name, score in scorers.items():
            aucs[name] = (round(float(roc_auc_score(y, score(rows))), 4)
                          if 0 < y.sum() < len(y) else None)
        stages[stage] = {"n": int(len(rows)), "positives": int(y.sum()),
                         "rows_after_a_later_step": int(reached), "auc": aucs}
    return {"stages": stages,
            "definition": "each test lead once: at submission (the funnel step its form "
                          "recorded); after_<step>: its latest row at a stage up to <step> (a "
                          "lead that never reached <step> keeps its latest earlier row); "
                          f"{FINAL_STEP_AT_SUBMISSION}: features at submission with the lead's "
                          "final step, what a replay that sent the future measured"}


def _final_step_rows(source: str) -> pd.DataFrame | None:
    path = Path(source).parent / FINAL_STEP_FILE
    if not path.is_file():
        return None
    frame = pd.read_parquet(path)
    return frame if LABEL_COLUMN in frame.columns else None


# ---- the pipeline -------------------------------------------------------------------------
@dataclass
class PublishedModel:
    """A logged and registered model version and the champion decision taken for it."""

    model_uri: str
    version: str
    promoted: bool
    reason: str
    decision: PromotionDecision


def publish_model(
    settings: Settings,
    model: PackagedModel,
    test: pd.DataFrame,
    y_test: np.ndarray,
    p_test: np.ndarray,
    *,
    promote: bool,
    feature_service_version: str,
) -> PublishedModel:
    """Log ``model`` in the active run, register it and apply the champion gate on ``test``.

    The current champion scores the same ``test`` rows; the gate (``training.registry``) takes
    its age and ``settings.champion_max_age_days`` / ``promotion_margin``, bootstraps with
    ``settings.seed``; the decision, the difference and its interval are set as run tags and
    model-version tags.
    """
    features, levels = model.feature_columns, model.levels
    example = model_signature_frame(test.head(5), features, levels)
    signature = infer_signature(example, model.predict(None, example))
    model_info = mlflow.pyfunc.log_model(
        name="model", python_model=model, signature=signature, input_example=example,
        pip_requirements=_pip_requirements(),
        metadata={"feature_service_version": feature_service_version},
    )
    client = MlflowClient()
    champion_version, p_champion, champion_error = champion_predictions(
        client, settings.model_name, test)
    current = alias_version(client, settings.model_name, CHAMPION)
    decision = decide_promotion(
        y_test, p_test, p_champion, champion_version, champion_error,
        champion_age_days=version_age_days(current) if current is not None else None,
        max_age_days=settings.champion_max_age_days, margin=settings.promotion_margin,
        seed=settings.seed,
    )
    version_tags = {"feature_service_version": feature_service_version}
    if not promote:
        decision.extra["promotion_disabled"] = True
        version_tags["promotion_disabled"] = "--no-promote"
    run_id = mlflow.active_run().info.run_id
    registered, promoted = register_and_gate(
        client, settings.model_name, model_info.model_uri, run_id, decision, promote,
        tags=version_tags,
    )
    version = str(registered.version)
    reason = decision.reason if promote else f"--no-promote: {decision.reason}"
    mlflow.set_tags({
        **{k: v for k, v in decision.tags().items() if k != "promotion_rule"},
        "model_version": version, "promoted": str(promoted), "promotion_reason": reason,
    })
    if decision.champion is not None:
        mlflow.log_metrics({f"champion_test_{k}": v for k, v in decision.champion.items()
                            if v is not None})
    return PublishedModel(model_info.model_uri, version, promoted, reason, decision)


def train_model(
    settings: Settings,
    trials: int = 30,
    timeout: float | None = None,
    storage: str | None = None,
    promote: bool = True,
    report_path: Path | str | None = None,
    *,
    cutoffs: Mapping[str, float] | None = None,
    max_rounds: int = 1000,
    progress: Progress | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Train, evaluate, log, register and gate one model; return the summary.

    The summary holds the model's and the baselines' test metrics side by side, the registered
    version, whether it became champion and why, and where the report was written. ``workers``
    processes tune on the one study (``training.tune``). The MLflow store and the Optuna storage
    are checked first: when one cannot be reached, :class:`ServiceUnavailableError` is raised
    before anything is read, tuned, logged or written.
    """
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    cutoffs = dict(cutoffs or DEFAULT_CUTOFFS)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    storage_url = storage or settings.optuna_storage
    say("checking the MLflow store and the Optuna storage")
    check_training_services(settings, storage_url)
    settings.ensure_dirs()
    report_file = Path(report_path) if report_path else settings.reports_dir / (
        "training_report.json")

    say("loading the training set")
    inputs = load_training_inputs(settings)
    frame = inputs.frame.copy()
    time_column = time_column_of(frame)
    frame[time_column] = pd.to_datetime(frame[time_column], utc=True)
    # embargo: no label used for training or validation may close inside the test period
    split = time_split(frame, time_column,
                       gap=pd.Timedelta(days=settings.conversion_window_days),
                       valid_gap=pd.Timedelta(days=settings.validation_embargo_days),
                       min_rows=MIN_SLICE_ROWS)
    for name, part in (("train", split.train), ("validation", split.valid),
                       ("test", split.test)):
        if part[LABEL_COLUMN].nunique() < 2:
            raise ValueError(f"the {name} slice holds a single class; need more leads")
    features, cats = inputs.feature_columns, inputs.categorical_columns
    levels = categorical_levels(split.train, cats)
    # the test leads once each, at submission: what the CRM's call scores (gate, hold-out,
    # calibration check); the later steps' rows are evaluated beside it (auc_by_stage)
    test = submission_rows(split.test)
    x_train, x_valid, x_test = (prepare_features(p, features, levels)
                                for p in (split.train, split.valid, test))
    y_train, y_valid, y_test = (p[LABEL_COLUMN].astype(int).to_numpy()
                                for p in (split.train, split.valid, test))

    setup_tracking(settings)
    windows = split.windows()
    embargo = split.embargo()
    study_name = study_name_for(settings.model_name, inputs.feature_service_version, windows)
    warm_version, warm_params = champion_params(MlflowClient(), settings.model_name)
    with mlflow.start_run(run_name=f"train-{datetime.now(UTC):%Y%m%dT%H%M%S}") as run:
        run_id = run.info.run_id
        mlflow.set_tags({
            "feature_service_version": inputs.feature_service_version,
            "optuna.study": study_name,
            "training_window": f"{windows['train']['start']} .. {windows['train']['end']}",
            "test_window": f"{windows['test']['start']} .. {windows['test']['end']}",
        })
        mlflow.log_params({
            "feature_service": settings.feature_service,
            "feature_service_version": inputs.feature_service_version,
            "n_features": len(features),
            "n_train": len(split.train), "n_valid": len(split.valid), "n_test": len(test),
            "n_test_rows_all_stages": len(split.test),
            "train_start": windows["train"]["start"], "train_end": windows["train"]["end"],
            "valid_start": windows["valid"]["start"], "valid_end": windows["valid"]["end"],
            "test_start": windows["test"]["start"], "test_end": windows["test"]["end"],
            "trials_requested": trials, "timeout_s": timeout, "tuning_workers": workers,
            "embargo_days": embargo["gap_days"],
            "embargo_dropped_before_valid": embargo["rows_dropped"]["before_valid"],
            "embargo_dropped_before_test": embargo["rows_dropped"]["before_test"],
        })

        say(f"tuning LightGBM ({trials} trials, {workers} process(es))")
        dtrain, dvalid = make_datasets(x_train, y_train, x_valid, y_valid, cats)
        tuning = tune_lgbm(
            dtrain, dvalid, n_trials=trials, timeout=timeout, storage=storage_url,
            study_name=study_name, seed=settings.seed, max_rounds=max_rounds,
            callbacks=[TrialLogger(settings, run_id)], workers=workers, warm_start=warm_params,
        )
        tuning.warm_start["champion_version"] = warm_version
        mlflow.log_params({f"best_{k}": v for k, v in tuning.best_params.items()
                           if k not in {"objective", "verbosity", "n_jobs"}})
        mlflow.log_metrics({"best_valid_log_loss": tuning.best_log_loss,
                            "best_valid_auc": tuning.best_auc,
                            "trials_complete": tuning.n_complete,
                            "trials_pruned": tuning.n_pruned})

        say("refitting the best model")
        booster = train_booster(tuning.best_params, dtrain, dvalid, max_rounds=max_rounds)
        rounds = int(booster.best_iteration or max_rounds)
        say("choosing the model and its calibration forward in time over the training period")
        selection = choose_and_calibrate(split, features, cats, tuning.best_params, rounds,
                                         settings.seed)
        choice, calibrator = selection.choice, selection.calibrator
        baselines = fit_baselines(split.train, y_train, features, cats, seed=settings.seed)
        default_booster = train_default_lightgbm(x_train, y_train, cats, settings.seed)
        model = package_model(
            choice, calibrator, booster=booster, default_booster=default_booster,
            linear=baselines[LOGISTIC], features=features, levels=levels,
            metadata={"feature_service_version": inputs.feature_service_version,
                      "trained_at": datetime.now(UTC).isoformat(),
                      "model_kind": choice.chosen},
        )
        raw_test = model.raw_scores(test)
        p_test = model.predict_proba(test)
        if choice.simple_model_wins:
            say(f"the simple model wins: {choice.reason}")

        say("evaluating against the baselines on the test slice")
        tuned_test = booster.predict(x_test, num_iteration=booster.best_iteration)
        linear_test = baselines[LOGISTIC].predict_proba(test)
        predictions = {MODEL_KEY: p_test, f"{MODEL_KEY}_uncalibrated": raw_test,
                       TUNED: tuned_test, DEFAULT_LIGHTGBM: default_booster.predict(x_test),
                       LOGISTIC: linear_test,
                       BLEND: blend(tuned_test, linear_test, choice.blend_weight or 0.0),
                       RULE_SCORE: baselines[RULE_SCORE].predict_proba(test)}
        comparison = compare_models(y_test, predictions, cutoffs)

        def tuned_scores(rows: pd.DataFrame) -> np.ndarray:
            return booster.predict(prepare_features(rows, features, levels),
                                   num_iteration=booster.best_iteration)

        scorers: dict[str, Callable[[pd.DataFrame], np.ndarray]] = {
            MODEL_KEY: model.predict_proba, TUNED: tuned_scores,
            DEFAULT_LIGHTGBM: lambda rows: default_booster.predict(
                prepare_features(rows, features, levels)),
            LOGISTIC: baselines[LOGISTIC].predict_proba,
            BLEND: lambda rows: blend(tuned_scores(rows),
                                      baselines[LOGISTIC].predict_proba(rows),
                                      choice.blend_weight or 0.0),
            RULE_SCORE: baselines[RULE_SCORE].predict_proba}
        by_stage = auc_by_stage(stage_views(split.test, _final_step_rows(inputs.source)),
                                scorers)
        for stage, figures in by_stage["stages"].items():
            mlflow.log_metrics({f"test_auc_{stage}_{name}": value
                                for name, value in figures["auc"].items() if value is not None})
        uncalibrated = comparison[f"{MODEL_KEY}_uncalibrated"]
        for name, metrics in _metrics_table(comparison).items():
            mlflow.log_metrics({f"test_{k}_{name}": v for k, v in metrics.items()
                                if v is not None})
        mlflow.log_metrics({"test_ece_uncalibrated": uncalibrated["ece"],
                            "test_log_loss_uncalibrated": uncalibrated["log_loss"],
                            **{f"inner_log_loss_{name}": c["log_loss"]
                               for name, c in choice.candidates.items()}})
        mlflow.set_tags({"chosen_model": choice.chosen, "calibration": calibrator.method,
                         "simple_model_wins": str(choice.simple_model_wins)})

        with tempfile.TemporaryDirectory() as tmp:
            plots_dir = Path(tmp)
            calibration_plot(y_test, predictions, plots_dir / "calibration.png")
            gains_plot(y_test, predictions, plots_dir / "gains.png")
            shap_rows = test.sample(min(SHAP_MAX_ROWS, len(test)), random_state=settings.seed)
            shap_summary_plot(model.contributions(shap_rows), features,
                              prepare_features(shap_rows, features, levels),
                              plots_dir / "shap_summary.png")
            mlflow.log_artifacts(str(plots_dir), artifact_path="plots")

        say("logging and registering the model")
        published = publish_model(
            settings, model, test, y_test, p_test, promote=promote,
            feature_service_version=inputs.feature_service_version,
        )
        decision, version, promoted, reason = (
            published.decision, published.version, published.promoted, published.reason)
        champion_version = decision.champion_version

        say("writing the report, hold-out scores and drift reference")
        holdout_path = _write_holdout(settings, test, split.time_col, p_test, cutoffs)
        reference = _reference_frame(inputs, split, model, cutoffs, settings.seed)
        reference_paths: tuple[Path, ...] = ()
        if promoted:  # the one writer of the drift reference, and only for a new champion
            reference_paths = write_reference(settings, reference, settings.model_name, version,
                                              inputs.feature_columns, inputs.categorical_columns)
        report = {
            "model_name": settings.model_name,
            "model_version": version,
            "run_id": run_id,
            "model_uri": f"models:/{settings.model_name}/{version}",
            "promoted": promoted,
            "promotion": {**decision.to_dict(), "reason": reason},
            "feature_service_version": inputs.feature_service_version,
            "data_windows": windows,
            "embargo": embargo,
            "feature_columns": features,
            "categorical_columns": cats,
            "tuning": tuning.to_dict(),
            "chosen_model": choice.chosen,
            "simple_model_wins": choice.simple_model_wins,
            "model_choice": choice.to_dict(),
            "calibration": {**calibrator.to_dict(), "fitted_on": (
                f"{selection.rows} out-of-time predictions of the chosen model over "
                f"{selection.blocks} blocks of the training period (never the test slice)")},
            "ece_before_calibration": uncalibrated["ece"],
            "ece_after_calibration": comparison[MODEL_KEY]["ece"],
            "calibration_check": {
                name: {key: comparison[name][key] for key in (
                    "ece", "log_loss", "calibration_slope", "calibration_intercept",
                    "tier_calibration")}
                for name in (MODEL_KEY, f"{MODEL_KEY}_uncalibrated")},
            "cutoffs": cutoffs,
            "test_metrics": comparison,
            "test_metrics_uncalibrated": uncalibrated,
            "metrics_side_by_side": _metrics_table(comparison),
            "auc_by_stage": by_stage,
            "rows_by_snapshot": ({str(k): int(v) for k, v in frame[SNAPSHOT_COLUMN]
                                  .value_counts(sort=False).items()}
                                 if SNAPSHOT_COLUMN in frame.columns else None),
            "outputs": {"holdout_scored": str(holdout_path),
                        **({"reference": str(reference_paths[0]),
                            "reference_meta": str(reference_paths[1])}
                           if reference_paths else {})},
            "seconds": round(time.perf_counter() - started, 2),
        }
        _write_json(report_file, report)
        mlflow.log_artifact(str(report_file), artifact_path="reports")
        mlflow.log_artifact(str(holdout_path), artifact_path="reports")
        with tempfile.TemporaryDirectory() as tmp:  # every run keeps its own, champion or not
            run_reference = Path(tmp) / "reference.parquet"
            reference.to_parquet(run_reference, index=False)
            mlflow.log_artifact(str(run_reference), artifact_path="reference")

    return {
        "model_name": settings.model_name,
        "model_version": version,
        "run_id": run_id,
        "promoted": promoted,
        "promotion_reason": reason,
        "champion_before": champion_version,
        "log_loss_difference": decision.log_loss_difference,
        "log_loss_difference_interval": (None if decision.interval is None
                                         else list(decision.interval)),
        "embargo_days": embargo["gap_days"],
        "embargo_rows_dropped": sum(embargo["rows_dropped"].values()),
        "metrics": _metrics_table(comparison),
        "auc_by_stage": {stage: figures["auc"].get(MODEL_KEY)
                         for stage, figures in by_stage["stages"].items()},
        "ece_before_calibration": uncalibrated["ece"],
        "ece_after_calibration": comparison[MODEL_KEY]["ece"],
        "calibration_method": calibrator.method,
        "calibration_selection": calibrator.selection,
        "chosen_model": choice.chosen,
        "simple_model_wins": choice.simple_model_wins,
        "choice_reason": choice.reason,
        "trials_complete": tuning.n_complete,
        "trials_pruned": tuning.n_pruned,
        "tuning_seconds": round(tuning.seconds, 2),
        "tuning_workers": tuning.workers,
        "study_name": tuning.study_name,
        "warm_start": tuning.warm_start,
        "report_path": str(report_file),
        "seconds": report["seconds"],
    }
