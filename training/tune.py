"""Optuna tuning of LightGBM on a time-ordered validation slice, with pruning of hopeless trials.

Every trial samples ``suggest_lgbm_params`` (the shared search space), trains with early stopping
on the validation slice and reports the validation log loss to Optuna every ``report_every``
boosting rounds (default 10: each report is a storage round trip) through a LightGBM callback,
so that ``MedianPruner`` stops trials that trail the median of earlier trials at that round.
The sampler is a seeded TPE; the study lives in any Optuna storage URL (SQLite by default) so
that it can be resumed or shared.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# OpenMP threads that spin while waiting make LightGBM 10-20x slower on a busy 2-core machine;
# passive waiting costs little when idle. Effective only if set before LightGBM is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import lightgbm as lgb  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from training.search_space import suggest_lgbm_params  # noqa: E402

VALID_NAME = "valid"
OBJECTIVE_METRIC = "binary_logloss"
DEFAULT_MAX_BIN = 127
DEFAULT_MAX_ROUNDS = 1000
DEFAULT_EARLY_STOPPING = 50
SINGLE_THREAD_ROWS = 20_000

TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


@dataclass
class TuningResult:
    """The outcome of a study: best parameters and what the search cost."""

    study_name: str
    storage: str | None
    best_params: dict[str, Any]
    best_iteration: int
    best_log_loss: float
    best_auc: float
    n_trials: int
    n_complete: int
    n_pruned: int
    seconds: float
    trial_values: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the per-trial values)."""
        return {
            "study_name": self.study_name,
            "best_params": self.best_params,
            "best_iteration": self.best_iteration,
            "best_valid_log_loss": self.best_log_loss,
            "best_valid_auc": self.best_auc,
            "n_trials": self.n_trials,
            "n_complete": self.n_complete,
            "n_pruned": self.n_pruned,
            "seconds": round(self.seconds, 2),
        }


def study_name_for(model_name: str, feature_service_version: str) -> str:
    """Study name derived from the model and the feature-service version (storage-safe)."""
    raw = f"{model_name}__{feature_service_version}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw)


def make_datasets(
    X_train: pd.DataFrame,
    y_train: Sequence[float] | np.ndarray,
    X_valid: pd.DataFrame,
    y_valid: Sequence[float] | np.ndarray,
    categorical_features: Sequence[str],
    max_bin: int = DEFAULT_MAX_BIN,
) -> tuple[lgb.Dataset, lgb.Dataset]:
    """Binned LightGBM datasets built once and reused by every trial.

    ``feature_pre_filter`` is off so that trials may vary ``min_child_samples`` on one dataset.
    """
    if not 63 <= max_bin <= 255:
        raise ValueError(f"max_bin must lie in 63..255, got {max_bin}")
    dataset_params = {"max_bin": max_bin, "feature_pre_filter": False, "verbosity": -1}
    cats = [c for c in categorical_features if c in X_train.columns]
    dtrain = lgb.Dataset(
        X_train, label=np.asarray(y_train, dtype=float), categorical_feature=cats or "auto",
        params=dataset_params, free_raw_data=False,
    )
    dvalid = lgb.Dataset(
        X_valid, label=np.asarray(y_valid, dtype=float), reference=dtrain,
        categorical_feature=cats or "auto", params=dataset_params, free_raw_data=False,
    )
    dtrain.construct()
    dvalid.construct()
    return dtrain, dvalid


def open_storage(url: str | None) -> optuna.storages.BaseStorage | str | None:
    """The Optuna storage for ``url``; SQLite gets WAL journaling and ``synchronous=NORMAL``
    (a trial report then costs ~0.5 ms instead of ~20 ms of fsync), still safe to share
    between processes on one machine."""
    if not url or not url.startswith("sqlite:"):
        return url
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    engine = storage.engine

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    engine.dispose()  # reconnect so that every pooled connection gets the pragmas
    return storage


def pruning_callback(
    trial: optuna.Trial, report_every: int = 1, metric: str = OBJECTIVE_METRIC
) -> Callable[[Any], None]:
    """LightGBM callback: report the validation ``metric`` to ``trial`` every ``report_every``
    rounds and prune if told to (each report is a storage round trip, hence the interval)."""

    def _callback(env: Any) -> None:
        if (env.iteration + 1) % report_every:
            return
        for data_name, metric_name, value, _ in env.evaluation_result_list:
            if data_name == VALID_NAME and metric_name == metric:
                trial.report(float(value), step=env.iteration + 1)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at round {env.iteration + 1}")
                return

    _callback.order = 25  # after evaluation recording, before early stopping (order 30)
    return _callback


def threads_for(n_rows: int, configured: int) -> int:
    """LightGBM threads: one below ``SINGLE_THREAD_ROWS`` rows, where thread start-up and
    synchronisation cost more than they save (badly so on a busy machine), else ``configured``."""
    return 1 if n_rows < SINGLE_THREAD_ROWS else configured


def train_booster(
    params: dict[str, Any],
    dtrain: lgb.Dataset,
    dvalid: lgb.Dataset,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
    early_stopping_rounds: int = DEFAULT_EARLY_STOPPING,
    extra_callbacks: Sequence[Callable[[Any], None]] = (),
) -> lgb.Booster:
    """Train one booster with early stopping on the validation log loss (AUC also recorded)."""
    dtrain.construct()  # no-op when already built (make_datasets builds it once)
    full_params = {
        **params, "metric": [OBJECTIVE_METRIC, "auc"],
        "n_jobs": threads_for(dtrain.num_data(), int(params.get("n_jobs", 2))),
    }
    callbacks = [
        lgb.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False),
        *extra_callbacks,
    ]
    return lgb.train(
        full_params, dtrain, num_boost_round=max_rounds, valid_sets=[dvalid],
        valid_names=[VALID_NAME], callbacks=callbacks,
    )


def tune_lgbm(
    dtrain: lgb.Dataset,
    dvalid: lgb.Dataset,
    *,
    n_trials: int,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str = "lead-conversion",
    seed: int = 42,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
    early_stopping_rounds: int = DEFAULT_EARLY_STOPPING,
    report_every: int = 10,
    callbacks: Sequence[TrialCallback] = (),
) -> TuningResult:
    """Run (or resume) the study and return the best trial's parameters and round count.

    The objective is the validation log loss at the early-stopped round (minimised). With a
    persistent ``storage`` an existing study of the same name is continued, and the best trial
    may come from an earlier run of it.
    """
    if n_trials < 1:
        raise ValueError(f"trials must be at least 1, got {n_trials}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=open_storage(storage),
        study_name=study_name,
        direction="minimize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=5, n_warmup_steps=30, interval_steps=report_every
        ),
    )

    def objective(trial: optuna.Trial) -> float:
        params = {**suggest_lgbm_params(trial), "seed": seed}
        booster = train_booster(
            params, dtrain, dvalid, max_rounds=max_rounds,
            early_stopping_rounds=early_stopping_rounds,
            extra_callbacks=[pruning_callback(trial, report_every=report_every)],
        )
        scores = booster.best_score[VALID_NAME]
        trial.set_user_attr("best_iteration", int(booster.best_iteration or max_rounds))
        trial.set_user_attr("valid_auc", float(scores["auc"]))
        return float(scores[OBJECTIVE_METRIC])

    started = time.perf_counter()
    study.optimize(objective, n_trials=n_trials, timeout=timeout, callbacks=list(callbacks),
                   gc_after_trial=False)
    seconds = time.perf_counter() - started

    states = [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"study {study_name!r} has no completed trial; raise --trials/--timeout")
    best = study.best_trial
    best_params = {**suggest_params_from(best.params), "seed": seed}
    return TuningResult(
        study_name=study_name,
        storage=storage,
        best_params=best_params,
        best_iteration=int(best.user_attrs.get("best_iteration", max_rounds)),
        best_log_loss=float(best.value),
        best_auc=float(best.user_attrs.get("valid_auc", float("nan"))),
        n_trials=len(study.trials),
        n_complete=len(complete),
        n_pruned=sum(s == optuna.trial.TrialState.PRUNED for s in states),
        seconds=seconds,
        trial_values=[float(t.value) for t in complete],
    )


def suggest_params_from(sampled: dict[str, Any]) -> dict[str, Any]:
    """Full LightGBM parameters for a trial's sampled values (replayed through the space)."""
    return suggest_lgbm_params(optuna.trial.FixedTrial(sampled))
