"""``leadscore train --workers 2``: two processes tune one Optuna study (SQLite and PostgreSQL).

Each run trains on small generated leads (``tests.synthetic.synthetic_training_set``) through
the real CLI, then reads the study back from its storage and proves that both processes ran
trials of the one study, that the study holds exactly ``--trials`` trials, that every trial is a
nested MLflow run of the training run naming its process, and that the registered model was
refit with the best trial's parameters.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pytest
import typer
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from commands.train import train_command
from leadscore.config import Settings, get_settings
from tests.synthetic import synthetic_training_set
from training.registry import setup_tracking
from training.tune import (
    make_datasets,
    split_trials,
    suggest_params_from,
    threads_per_worker,
    tune_lgbm,
)

TRIALS = 4
WORKERS = 2
# parameters that the search space samples, by the name a loaded booster reports them under
SAMPLED = {"learning_rate": "learning_rate", "num_leaves": "num_leaves",
           "min_child_samples": "min_data_in_leaf", "feature_fraction": "feature_fraction",
           "bagging_fraction": "bagging_fraction", "lambda_l1": "lambda_l1",
           "lambda_l2": "lambda_l2", "min_split_gain": "min_gain_to_split",
           "cat_smooth": "cat_smooth"}


def test_trials_are_split_exactly_and_threads_share_the_cores() -> None:
    assert split_trials(5, 2) == [3, 2]
    assert split_trials(4, 4) == [1, 1, 1, 1]
    assert sum(split_trials(31, 3)) == 31
    assert threads_per_worker(1, cores=2) == 2
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(4, cores=2) == 1


class FailInWorker:
    """Trial callback that fails in every process but the one that made it."""

    def __init__(self) -> None:
        self.parent = os.getpid()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if os.getpid() != self.parent:
            raise RuntimeError("boom in the worker")


def _small_datasets() -> tuple:
    frame = synthetic_training_set(1200)
    columns = ["days_since_last_touch", "intent_score", "prior_leads", "fit_score"]
    return make_datasets(frame[columns][:900], frame["label"][:900], frame[columns][900:],
                         frame["label"][900:], [])


def test_a_failing_worker_fails_the_tuning_naming_it(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # the worker process imports this module (a ``tests`` package module, from the project
    # folder) to unpickle the callback
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    dtrain, dvalid = _small_datasets()
    with pytest.raises(RuntimeError, match=r"worker 1 \(pid \d+\) exited with code 1: "
                                           r"RuntimeError: boom in the worker"):
        tune_lgbm(dtrain, dvalid, n_trials=2, workers=2, max_rounds=30,
                  storage=f"sqlite:///{tmp_path / 'optuna.db'}", callbacks=[FailInWorker()])
    with pytest.raises(ValueError, match="persistent storage"):
        tune_lgbm(dtrain, dvalid, n_trials=2, workers=2, storage=None)


@pytest.fixture
def workdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A fresh work folder holding a small training set; the settings cache is reset."""
    monkeypatch.setenv("LEADSCORE_WORKDIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LEADSCORE_MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "data").mkdir()
    synthetic_training_set(3000).to_parquet(tmp_path / "data" / "training_set.parquet",
                                            index=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def _train_cli(workdir: Path, *extra: str) -> None:
    app = typer.Typer()
    app.command()(train_command)
    result = CliRunner().invoke(app, ["--workdir", str(workdir), "--trials", str(TRIALS),
                                      "--workers", str(WORKERS), "--no-promote", *extra])
    assert result.exit_code == 0, result.output
    assert f"by {WORKERS} processes" in " ".join(result.output.split())  # however wrapped


def assert_parallel_study(settings: Settings, storage: str) -> optuna.Study:
    """The study of the last training run in ``settings``' work folder, checked (module doc)."""
    report = json.loads((settings.reports_dir / "training_report.json").read_text())
    tuning = report["tuning"]
    study = optuna.load_study(study_name=tuning["study_name"], storage=storage)
    trials = study.trials
    assert len(trials) == TRIALS
    assert {t.user_attrs["worker"] for t in trials} == set(range(WORKERS))
    assert len({t.user_attrs["pid"] for t in trials}) == WORKERS
    assert tuning["workers"] == WORKERS
    assert tuning["trials_by_worker"] == {"0": 2, "1": 2}

    best = study.best_trial
    assert tuning["best_valid_log_loss"] == pytest.approx(best.value)
    expected = {**suggest_params_from(best.params), "seed": settings.seed}
    assert tuning["best_params"] == expected
    # the registered model itself was refit with those parameters (when the tuned LightGBM is
    # part of what ships: alone or in the blend; the choice is by out-of-time validation)
    setup_tracking(settings)
    model = mlflow.pyfunc.load_model(
        f"models:/{settings.model_name}/{report['model_version']}").unwrap_python_model()
    chosen = report["model_choice"]["chosen"]
    if chosen in {"tuned_lightgbm", "blend"}:
        booster = model.booster if hasattr(model, "booster") else model._booster()
        loaded = booster.params
        for name, loaded_name in SAMPLED.items():
            assert float(loaded[loaded_name]) == pytest.approx(expected[name], rel=1e-6), name
    else:
        assert chosen in {"default_lightgbm", "logistic_regression"}, chosen

    # one nested MLflow run per trial, under the training run, naming its process
    client = MlflowClient()
    run = client.get_run(report["run_id"])
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(children) == TRIALS
    assert {c.data.tags["optuna.worker"] for c in children} == {"0", "1"}
    assert {c.data.tags["optuna.pid"] for c in children} == {
        str(t.user_attrs["pid"]) for t in trials}
    assert run.data.params["tuning_workers"] == str(WORKERS)
    return study


WARM = {"learning_rate": 0.07, "num_leaves": 21, "min_child_samples": 30,
        "feature_fraction": 0.75, "bagging_fraction": 0.85, "lambda_l1": 1e-3,
        "lambda_l2": 0.01, "min_split_gain": 0.05, "cat_smooth": 12.0}


@pytest.mark.parametrize("backend", [
    "sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def test_workers_run_the_champions_parameters_first_and_once(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The warm start is enqueued before the workers start: trial 0 of the shared study runs
    the champion's parameters, whichever process takes it, and a resumed study does not run
    them again."""
    if backend == "postgres":
        request.getfixturevalue("postgres_available")
        from leadscore.profiles import ensure_databases

        settings = Settings(profile="production")
        ensure_databases(settings)
        storage = settings.optuna_storage
    else:
        storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    name = f"leadscore-test-warm-{uuid.uuid4().hex[:10]}"
    dtrain, dvalid = _small_datasets()
    try:
        result = tune_lgbm(dtrain, dvalid, n_trials=TRIALS, workers=WORKERS, max_rounds=30,
                           storage=storage, study_name=name, warm_start=WARM)
        assert result.warm_start["enqueued"] and result.n_trials == TRIALS
        study = optuna.load_study(study_name=name, storage=storage)
        first = min(study.trials, key=lambda t: t.number)
        assert first.params == pytest.approx(WARM)
        assert first.state == optuna.trial.TrialState.COMPLETE
        assert {t.user_attrs["worker"] for t in study.trials} == set(range(WORKERS))
        resumed = tune_lgbm(dtrain, dvalid, n_trials=1, max_rounds=30, storage=storage,
                            study_name=name, warm_start=WARM)
        assert not resumed.warm_start["enqueued"]
        assert "already ran" in resumed.warm_start["reason"]
        study = optuna.load_study(study_name=name, storage=storage)
        assert len(study.trials) == TRIALS + 1
        assert sum(t.params == first.params for t in study.trials) == 1
    finally:
        if name in optuna.get_all_study_names(storage):
            optuna.delete_study(study_name=name, storage=storage)


def test_two_workers_share_one_sqlite_study(workdir: Path) -> None:
    _train_cli(workdir)
    settings = get_settings()
    assert settings.profile == "embedded"
    assert_parallel_study(settings, settings.optuna_storage)


@pytest.mark.services
def test_two_workers_share_one_postgres_study(postgres_available: None, workdir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Production profile: the study lives in PostgreSQL (``leadscore_optuna``) under a unique,
    deleted-afterwards name; MLflow stays in the work folder so the shared registry is untouched.
    """
    monkeypatch.setenv("LEADSCORE_PROFILE", "production")
    monkeypatch.setenv("LEADSCORE_MODEL_NAME", f"leadscore-test-{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("LEADSCORE_MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    get_settings.cache_clear()
    settings = get_settings()
    storage = settings.optuna_storage
    assert storage.startswith("postgresql+psycopg://") and storage.endswith("/leadscore_optuna")
    try:
        _train_cli(workdir)
        study = assert_parallel_study(settings, storage)
        assert study.study_name.startswith(settings.model_name)
    finally:
        for name in optuna.get_all_study_names(storage):
            if name.startswith(settings.model_name):
                optuna.delete_study(study_name=name, storage=storage)
