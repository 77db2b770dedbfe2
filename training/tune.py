"""Optuna tuning of LightGBM on a time-ordered validation slice, with pruning of hopeless trials.

Every trial samples ``suggest_lgbm_params`` (the shared search space), trains with early stopping
on the validation slice and reports the validation log loss to Optuna every ``report_every``
boosting rounds (default 10: each report is a storage round trip) through a LightGBM callback,
so that ``MedianPruner`` stops trials that trail the median of earlier trials at that round.
The sampler is a seeded TPE; the study lives in any Optuna storage URL (SQLite by default) so
that it can be resumed or shared.

``workers=N`` runs N processes on the one study: this process creates it, saves the binned
datasets to LightGBM binary files, and starts N-1 ``python`` processes that load them and call
``study.optimize`` on the same study name; ``n_trials`` is split between the processes (the total
is ``n_trials``), all stop at the same ``timeout`` deadline, and every trial records the process
that ran it (user attributes ``worker`` = index, 0 for this process, and ``pid``). Each worker
gets ``max(1, cores // N)`` LightGBM threads and a TPE seed of ``seed + index`` (equal seeds would
sample the same first parameter sets). The workers are plain ``python`` subprocesses rather than
``multiprocessing`` ones, so that any caller (a script without a ``__main__`` guard, a notebook)
can use them; each spends a few seconds on imports before its first trial, so extra workers pay
off when trials take seconds or more. SQLite (WAL, 60 s busy timeout) takes a few workers on
one machine; PostgreSQL takes workers on many machines.

One study per training window: ``study_name_for`` names the study after the model, the
feature-service version and the data window (train/validation/test boundaries), so that trials
scored on an older validation slice never compete with the current ones; rerunning the same
window resumes its study. ``warm_start`` (the champion's tuned parameters) is enqueued as the
study's first trial when it fits the search space (``fit_to_space``), before any worker starts.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
    workers: int = 1
    trials_by_worker: dict[int, int] = field(default_factory=dict)
    warm_start: dict[str, Any] = field(default_factory=dict)

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
            "workers": self.workers,
            "trials_by_worker": {str(k): v for k, v in sorted(self.trials_by_worker.items())},
            "warm_start": self.warm_start,
        }


def study_name_for(
    model_name: str, feature_service_version: str,
    windows: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Study name from the model, the feature-service version and, given ``windows`` (as
    ``TimeSplit.windows()``), the data window: first and last day plus a short hash of every
    slice boundary, so another window (or another embargo) gets its own study. Storage-safe."""
    raw = f"{model_name}__{feature_service_version}"
    if windows:
        boundaries = "|".join(f"{name}:{windows[name]['start']}/{windows[name]['end']}"
                              for name in ("train", "valid", "test"))
        digest = hashlib.sha256(boundaries.encode()).hexdigest()[:10]
        first = pd.Timestamp(str(windows["train"]["start"])).strftime("%Y%m%d")
        last = pd.Timestamp(str(windows["test"]["end"])).strftime("%Y%m%d")
        raw += f"__{first}-{last}-{digest}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw)


def search_space() -> dict[str, optuna.distributions.BaseDistribution]:
    """The distributions ``suggest_lgbm_params`` samples (read from one in-memory trial)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    suggest_lgbm_params(trial)
    return dict(trial.distributions)


def _in_space(value: Any, dist: optuna.distributions.BaseDistribution) -> Any:
    """``value`` (a number or its text, as MLflow stores parameters) as the distribution's
    type; raises ``ValueError`` when it lies outside."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        for choice in dist.choices:
            if value == choice or str(value) == str(choice):
                return choice
        raise ValueError(f"{value!r} is not one of {list(dist.choices)}")
    number = float(value)
    if isinstance(dist, optuna.distributions.IntDistribution):
        if not number.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        number = int(number)
        if (number - dist.low) % dist.step:
            raise ValueError(f"{number} is off the step {dist.step} from {dist.low}")
    if not dist.low <= number <= dist.high:
        raise ValueError(f"{number} lies outside [{dist.low}, {dist.high}]")
    return number


def fit_to_space(params: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """(the search-space values of ``params``, why) — None when ``params`` lack a searched
    parameter or hold a value outside its range; other keys (fixed LightGBM parameters) are
    ignored."""
    if not params:
        return None, "no previous champion parameters"
    fitted: dict[str, Any] = {}
    for name, dist in search_space().items():
        if name not in params:
            return None, f"the champion's parameters lack {name!r} (another search space)"
        try:
            fitted[name] = _in_space(params[name], dist)
        except (TypeError, ValueError) as exc:
            return None, f"the champion's {name!r} does not fit the search space: {exc}"
    return fitted, "the champion's parameters fit the search space"


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


@dataclass(frozen=True)
class TrialOptions:
    """What every trial of one tuning run shares (picklable: sent to worker processes)."""

    seed: int = 42
    max_rounds: int = DEFAULT_MAX_ROUNDS
    early_stopping_rounds: int = DEFAULT_EARLY_STOPPING
    report_every: int = 10
    n_jobs: int = 2


@dataclass(frozen=True)
class _WorkerJob:
    """One extra tuning process: where the datasets are and its share of the study."""

    index: int
    train_path: str
    valid_path: str
    dataset_params: dict[str, Any]
    storage: str
    study_name: str
    n_trials: int
    deadline: float | None
    options: TrialOptions
    callbacks: tuple[TrialCallback, ...]


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """LightGBM threads per tuning process so that ``workers`` processes share the cores."""
    return max(1, (cores or available_cores()) // max(1, workers))


def split_trials(n_trials: int, workers: int) -> list[int]:
    """``n_trials`` split between ``workers`` processes (the first ones take the remainder)."""
    return [n_trials // workers + (i < n_trials % workers) for i in range(workers)]


def _sampler_and_pruner(options: TrialOptions, worker: int) -> dict[str, Any]:
    return {
        "sampler": optuna.samplers.TPESampler(seed=options.seed + worker),
        "pruner": optuna.pruners.MedianPruner(
            n_startup_trials=5, n_warmup_steps=30, interval_steps=options.report_every
        ),
    }


def _objective(dtrain: lgb.Dataset, dvalid: lgb.Dataset, options: TrialOptions,
               worker: int) -> Callable[[optuna.Trial], float]:
    """The study objective: validation log loss at the early-stopped round."""

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("pid", os.getpid())
        params = {**suggest_lgbm_params(trial), "seed": options.seed, "n_jobs": options.n_jobs}
        booster = train_booster(
            params, dtrain, dvalid, max_rounds=options.max_rounds,
            early_stopping_rounds=options.early_stopping_rounds,
            extra_callbacks=[pruning_callback(trial, report_every=options.report_every)],
        )
        scores = booster.best_score[VALID_NAME]
        trial.set_user_attr("best_iteration", int(booster.best_iteration or options.max_rounds))
        trial.set_user_attr("valid_auc", float(scores["auc"]))
        return float(scores[OBJECTIVE_METRIC])

    return objective


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.time()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def run_worker(job_path: str) -> int:
    """Entry point of an extra tuning process (``python -c``): load the job, the datasets and
    the study, optimize. Returns the exit code; a failure is printed as one last line."""
    try:
        job: _WorkerJob = pickle.loads(Path(job_path).read_bytes())
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        dtrain = lgb.Dataset(job.train_path, params=dict(job.dataset_params))
        dvalid = lgb.Dataset(job.valid_path, reference=dtrain, params=dict(job.dataset_params))
        dtrain.construct()
        dvalid.construct()
        study = optuna.load_study(study_name=job.study_name, storage=open_storage(job.storage),
                                  **_sampler_and_pruner(job.options, job.index))
        timeout = _remaining(job.deadline)
        if timeout is not None and timeout <= 0:
            return 0
        study.optimize(_objective(dtrain, dvalid, job.options, job.index),
                       n_trials=job.n_trials, timeout=timeout, callbacks=list(job.callbacks),
                       gc_after_trial=False)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails clearly
        print(f"\n{_first_line(exc)}", flush=True)
        return 1
    return 0


@dataclass
class _Worker:
    """A started tuning process and the file its output goes to."""

    index: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def last_line(self) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1].strip() if lines else ""


_BOOTSTRAP = "import sys; from training.tune import run_worker; sys.exit(run_worker(sys.argv[1]))"


def _start_workers(jobs: list[_WorkerJob], folder: Path) -> list[_Worker]:
    """Start one ``python`` process per job (job pickled into ``folder``)."""
    payloads = []
    for job in jobs:
        try:
            payloads.append(pickle.dumps(job))
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise ValueError(f"workers > 1 needs picklable trial callbacks: {exc}") from None
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    started = []
    for job, payload in zip(jobs, payloads, strict=True):
        job_path = folder / f"worker-{job.index}.pkl"
        job_path.write_bytes(payload)
        log_path = folder / f"worker-{job.index}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, str(job_path)], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        started.append(_Worker(job.index, process, log_path))
    return started


def _join_workers(workers: list[_Worker]) -> None:
    """Wait for the worker processes; raise ``RuntimeError`` naming any that failed."""
    for worker in workers:
        worker.process.wait()
    failed = [
        f"worker {w.index} (pid {w.process.pid}) exited with code {w.process.returncode}: "
        f"{w.last_line() or 'no output'}"
        for w in workers if w.process.returncode != 0
    ]
    if failed:
        raise RuntimeError("parallel tuning failed: " + "; ".join(failed))


def _stop_workers(workers: list[_Worker]) -> None:
    """Terminate workers still running (after a failure or an interrupt of this process)."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.terminate()
            try:
                worker.process.wait(10)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()


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
    workers: int = 1,
    warm_start: Mapping[str, Any] | None = None,
) -> TuningResult:
    """Run (or resume) the study and return the best trial's parameters and round count.

    The objective is the validation log loss at the early-stopped round (minimised). With a
    persistent ``storage`` an existing study of the same name is continued, and the best trial
    may come from an earlier run of it. ``workers`` > 1 runs that many processes on the study
    (module docstring; needs a persistent ``storage`` and picklable ``callbacks``); it is capped
    at ``n_trials``. ``warm_start`` parameters that fit the search space are enqueued as the
    next trial (once per study: a resumed study does not run them again).
    """
    if n_trials < 1:
        raise ValueError(f"trials must be at least 1, got {n_trials}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    workers = min(workers, n_trials)
    if workers > 1 and not storage:
        raise ValueError("workers > 1 needs a persistent storage URL (--storage): an in-memory "
                         "study cannot be shared between processes")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    options = TrialOptions(seed=seed, max_rounds=max_rounds,
                           early_stopping_rounds=early_stopping_rounds,
                           report_every=report_every, n_jobs=threads_per_worker(workers))
    study = optuna.create_study(
        storage=open_storage(storage), study_name=study_name, direction="minimize",
        load_if_exists=True, **_sampler_and_pruner(options, 0),
    )
    known = {t.number for t in study.trials}
    warm, why = fit_to_space(warm_start)
    enqueued = False
    if warm is not None:
        study.enqueue_trial(warm, user_attrs={"warm_start": True}, skip_if_exists=True)
        enqueued = len(study.get_trials(deepcopy=False)) > len(known)
        if not enqueued:
            why = "the champion's parameters already ran in this study (same window)"
    warm_info = {"enqueued": enqueued, "reason": why, "params": warm}
    shares = split_trials(n_trials, workers)
    started = time.perf_counter()
    deadline = None if timeout is None else time.time() + timeout
    extra: list[_Worker] = []
    with tempfile.TemporaryDirectory(prefix="leadscore-tune-") as tmp:
        try:
            if workers > 1:
                train_path, valid_path = Path(tmp) / "train.bin", Path(tmp) / "valid.bin"
                dtrain.save_binary(str(train_path))
                dvalid.save_binary(str(valid_path))
                jobs = [
                    _WorkerJob(index, str(train_path), str(valid_path), dict(dtrain.params),
                               str(storage), study_name, shares[index], deadline, options,
                               tuple(callbacks))
                    for index in range(1, workers)
                ]
                extra = _start_workers(jobs, Path(tmp))
            study.optimize(_objective(dtrain, dvalid, options, 0), n_trials=shares[0],
                           timeout=timeout, callbacks=list(callbacks), gc_after_trial=False)
            if extra:
                _join_workers(extra)
        finally:
            _stop_workers(extra)
    seconds = time.perf_counter() - started

    trials = study.trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"study {study_name!r} has no completed trial; raise --trials/--timeout")
    best = study.best_trial
    best_params = {**suggest_params_from(best.params), "seed": seed}
    by_worker = Counter(int(t.user_attrs.get("worker", 0)) for t in trials
                        if t.number not in known)
    return TuningResult(
        study_name=study_name,
        storage=storage,
        best_params=best_params,
        best_iteration=int(best.user_attrs.get("best_iteration", max_rounds)),
        best_log_loss=float(best.value),
        best_auc=float(best.user_attrs.get("valid_auc", float("nan"))),
        n_trials=len(trials),
        n_complete=len(complete),
        n_pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        seconds=seconds,
        trial_values=[float(t.value) for t in complete],
        workers=workers,
        trials_by_worker=dict(by_worker),
        warm_start=warm_info,
    )


def suggest_params_from(sampled: dict[str, Any]) -> dict[str, Any]:
    """Full LightGBM parameters for a trial's sampled values (replayed through the space)."""
    return suggest_lgbm_params(optuna.trial.FixedTrial(sampled))
