"""``leadscore train --csv``: train and evaluate a conversion model on a flat CRM export.

Pipeline: read the CSV robustly → clean it (placeholders such as ``Select`` and blanks become
missing, Yes/No → 0/1, text → pandas ``category`` for LightGBM's native handling) → leakage guard
(``training.leakage``) → evaluation that never lets tuning or calibration see the test rows:

* without ``--time``: seeded stratified 5-fold cross-validation. In each outer fold, 4
  stratified inner folds of the outer training part score every Optuna trial of LightGBM
  (mean inner-fold log loss with early stopping: one study per fold, nested); the tuned
  LightGBM, a default LightGBM and a logistic regression are then fitted on the same inner
  folds, whose out-of-fold predictions choose the model to ship — tuned LightGBM, default
  LightGBM, logistic regression or their blend (``training.selection.choose_model``, lowest
  log loss) — and its calibration (identity unless a calibrator gains beyond noise,
  ``training.calibration``); the test fold is scored by the chosen model, calibrated. Metrics
  are computed on the pooled out-of-fold predictions.
* with ``--time``: oldest 60% fit, next 20% tune, newest 20% test; the choice and the
  calibration use forward-in-time predictions over the fit and tuning rows (each block
  predicted by models fitted on the blocks before it).

LightGBM also sees generic engineered features (``training.csv_features``: the share of each
categorical value among the training part's rows), fitted without labels on the training part
only; its search space (``suggest_csv_params``) adds LightGBM's categorical knobs and strong
column subsampling to the product's. SHAP contributions are folded back onto the export's
columns.

Baselines (default LightGBM, one-hot logistic regression) are fitted on the same outer training
parts and scored on the same test rows. The run is logged to MLflow (experiment
``csv-<file stem>``) with the report and plots; only column names, never cell values, leave
the process.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from crm_data.export_files import DamagedFileError, decode_export, scan_csv
from leadscore.config import Settings, get_settings
from leadscore.schemas import PROBABILITY_CLIP
from training.baselines import LogisticBaseline
from training.calibration import Calibrator, fit_calibrator
from training.csv_features import FrequencyEncoder, fold_contributions, source_positions
from training.evaluate import classification_metrics, expected_calibration_error
from training.leakage import GuardReport, run_guard
from training.search_space import BASE_PARAMS
from training.selection import (
    BLEND,
    DEFAULT_LIGHTGBM,
    LABELS,
    LOGISTIC,
    TUNED,
    ModelChoice,
    choose_model,
    cross_fitted_blend,
)
from training.split import time_split
from training.tune import (
    DEFAULT_MAX_BIN,
    OBJECTIVE_METRIC,
    VALID_NAME,
    make_datasets,
    pruning_callback,
    train_booster,
)

PLACEHOLDERS = ("Select", "select", "SELECT", "-- Select --", "Please select")
YES_VALUES = {"yes", "true", "y"}
NO_VALUES = {"no", "false", "n"}
OUTER_FOLDS = 5
INNER_FOLDS = 4
TIME_FRACTIONS = (0.6, 0.2, 0.2)
MIN_ROWS_PER_CLASS = 20
MAX_LISTED_VALUES = 10
DEFAULT_LGBM_ROUNDS = 100  # LightGBM's own default number of boosting rounds
REPORT_EVERY = 5
CSV_MAX_ROUNDS = 3000  # small learning rates on small tables need more than tune.py's 1000
EARLY_STOPPING_ROUNDS = 50
CSV_LEARNING_RATE = 0.06  # fixed, not tuned: see _tune
BAGGED_SEEDS = 3  # boosters (seeds) averaged per inner fold
# One thread per model: on a shared 2-core machine two OpenMP threads busy-wait against other
# processes and train up to 50x slower; folds are small enough for one core.
LGBM_OVERRIDES: dict[str, Any] = {"n_jobs": 1}
SHAP_ROWS_PER_FOLD = 400

ProgressCallback = Callable[[str], None]


def suggest_csv_params(trial: optuna.Trial) -> dict[str, Any]:
    """LightGBM search space for flat exports (merged over ``BASE_PARAMS``).

    Differs from the product's shared space where small tables need it: feature_fraction
    down to 0.1 (strong column subsampling regularises well on a few thousand rows), smaller
    trees, LightGBM's categorical knobs (min_data_per_group, cat_l2, cat_smooth,
    max_cat_threshold) for the text columns exports are full of, and a fixed learning rate
    (see ``_tune``).
    """
    params = {
        "learning_rate": CSV_LEARNING_RATE,
        "num_leaves": trial.suggest_int("num_leaves", 4, 64, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 5, 200, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.1, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "bagging_freq": 1,
        "lambda_l1": trial.suggest_float("lambda_l1", 1e-8, 10.0, log=True),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-8, 30.0, log=True),
        "min_data_per_group": trial.suggest_int("min_data_per_group", 5, 200, log=True),
        "cat_l2": trial.suggest_float("cat_l2", 0.5, 50.0, log=True),
        "cat_smooth": trial.suggest_float("cat_smooth", 0.5, 50.0, log=True),
        "max_cat_threshold": trial.suggest_int("max_cat_threshold", 4, 64, log=True),
    }
    return {**BASE_PARAMS, **params}


def csv_params_from(sampled: dict[str, Any]) -> dict[str, Any]:
    """Full LightGBM parameters for a trial's sampled values (replayed through the space)."""
    return suggest_csv_params(optuna.trial.FixedTrial(sampled))


class CsvTrainingError(ValueError):
    """Bad input for ``train --csv``; the message names the file, column or option at fault."""


# ---------------------------------------------------------------------------------------------
# Reading and cleaning
# ---------------------------------------------------------------------------------------------


def _sniff_delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def read_export(path: Path | str, encoding: str | None = None) -> pd.DataFrame:
    """Read a CRM export: delimiter sniffed, placeholders → NaN.

    The text is decoded strictly — UTF-8 (with or without BOM), or ``encoding`` when given
    (``--encoding gbk``); never a silent fallback — and the file is refused, naming its line,
    when it is damaged: undecodable bytes, NUL bytes, a row with more or fewer fields than the
    header (a file cut mid-row), a quoted field left open at the end
    (``crm_data.export_files``). A last row without its line end is read (real exports omit
    it) and noted in ``frame.attrs["file_notes"]``: a cut inside the last field leaves nothing
    else to see. Text cells are stripped; blank strings and ``Select``-style placeholders
    become missing.
    """
    file = Path(path)
    if not file.exists():
        raise CsvTrainingError(f"CSV file {file} does not exist")
    if not file.is_file():
        raise CsvTrainingError(f"CSV path {file} is not a file")
    if file.stat().st_size == 0:
        raise CsvTrainingError(f"CSV file {file} is empty")
    try:
        text, _ = decode_export(file, file.read_bytes(), encoding)
        delimiter = _sniff_delimiter(text[:65536])
        _, starts = scan_csv(file, text, delimiter, skipinitialspace=True,
                             require_final_newline=False)
    except DamagedFileError as exc:
        raise CsvTrainingError(f"CSV file {exc}") from None
    notes = []
    if starts and not text.endswith(("\n", "\r")):
        notes.append(f"line {starts[-1]}, the last row, has no line end: if the file was cut "
                     "short, that row is incomplete")
    try:
        frame = pd.read_csv(
            io.StringIO(text), sep=delimiter, na_values=list(PLACEHOLDERS),
            keep_default_na=True, skipinitialspace=True, low_memory=False,
        )
    except pd.errors.EmptyDataError:
        raise CsvTrainingError(f"CSV file {file} is empty (no header row)") from None
    except pd.errors.ParserError as exc:
        raise CsvTrainingError(f"CSV file {file} cannot be parsed: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise CsvTrainingError(f"CSV file {file} has a header but no data rows")
    for column in frame.columns:
        if frame[column].dtype == object:
            stripped = frame[column].astype("string").str.strip()
            stripped = stripped.mask(stripped.isin(("",) + PLACEHOLDERS))
            frame[column] = stripped.astype(object).where(stripped.notna(), np.nan)
    frame.attrs["file_notes"] = notes
    return frame


def _check_columns(frame: pd.DataFrame, option: str, names: Iterable[str]) -> None:
    unknown = [n for n in names if n not in frame.columns]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, list(frame.columns), n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise CsvTrainingError(
        f"{option} names column(s) not in the CSV: {', '.join(hints)}; "
        f"columns are {list(frame.columns)}"
    )


def parse_label(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels and a mask of rows that have one; accepts 0/1, true/false, yes/no.

    Raises ``CsvTrainingError`` listing the values found when the column is not binary.
    """
    present = series.notna().to_numpy()
    values = series[present]
    as_text = values.astype(str).str.strip().str.lower()
    as_text = as_text.str.replace(r"^(\d+)\.0+$", r"\1", regex=True)
    mapping = {"1": 1, "0": 0, **dict.fromkeys(YES_VALUES, 1), **dict.fromkeys(NO_VALUES, 0)}
    mapped = as_text.map(mapping)
    if mapped.isna().any() or values.empty:
        found = sorted(values.astype(str).unique().tolist())
        shown = found[:MAX_LISTED_VALUES] + (["…"] if len(found) > MAX_LISTED_VALUES else [])
        raise CsvTrainingError(
            f"label column {series.name!r} is not binary: expected 0/1, true/false or yes/no, "
            f"found {len(found)} distinct value(s): {shown}"
        )
    y = np.zeros(len(series), dtype=int)
    y[present] = mapped.to_numpy(dtype=int)
    return y, present


def _as_yes_no(series: pd.Series) -> pd.Series | None:
    """0/1 floats when every present value is yes/no or true/false, else None."""
    values = series.dropna()
    if values.empty or series.dtype != object:
        return None
    lowered = values.astype(str).str.lower()
    if not lowered.isin(YES_VALUES | NO_VALUES).all():
        return None
    converted = series.astype(object).where(series.notna(), None)
    return converted.map(
        lambda v: np.nan if v is None else float(str(v).lower() in YES_VALUES)
    ).astype(float)


def _as_numeric(series: pd.Series) -> pd.Series | None:
    """Floats when every present value parses as a number, else None."""
    if pd.api.types.is_bool_dtype(series):
        return series.astype(float)
    if pd.api.types.is_numeric_dtype(series):
        return series.astype(float)
    converted = pd.to_numeric(series, errors="coerce")
    if (converted.isna() & series.notna()).any():
        return None
    return converted.astype(float)


def parse_times(series: pd.Series) -> pd.Series:
    """UTC timestamps of the time column; every row must hold a parseable date."""
    if series.isna().any():
        raise CsvTrainingError(
            f"time column {series.name!r} is empty on {int(series.isna().sum())} row(s)"
        )
    parsed = pd.to_datetime(series.astype(str), utc=True, errors="coerce", format="mixed")
    bad = parsed.isna()
    if bad.any():
        examples = series[bad].astype(str).unique()[:3].tolist()
        raise CsvTrainingError(
            f"time column {series.name!r} has {int(bad.sum())} value(s) that are not dates, "
            f"e.g. {examples}"
        )
    return parsed


@dataclass
class PreparedData:
    """A cleaned export: model-ready features, labels and what was left out (and why)."""

    features: pd.DataFrame
    y: np.ndarray
    times: pd.Series | None
    categorical: list[str]
    dropped: dict[str, str]
    columns_in_file: int
    rows_in_file: int
    rows_without_label: int
    guard: GuardReport | None = None
    yes_no_columns: list[str] = field(default_factory=list)


def clean_export(
    frame: pd.DataFrame,
    label: str,
    id_col: str | None = None,
    time_col: str | None = None,
    drop: Sequence[str] = (),
    allow: Sequence[str] = (),
) -> PreparedData:
    """Check the options against the columns and convert every candidate feature column.

    Rows without a label are left out (and counted). Yes/No columns become 0/1, numeric text
    becomes float, other text becomes ``category``; empty and constant columns are dropped.
    """
    if label not in frame.columns:
        _check_columns(frame, "--label", [label])
    _check_columns(frame, "--id", [id_col] if id_col else [])
    _check_columns(frame, "--time", [time_col] if time_col else [])
    _check_columns(frame, "--drop", drop)
    _check_columns(frame, "--allow", allow)
    for option, names in (("--id", [id_col]), ("--time", [time_col]), ("--drop", drop)):
        if label in names:
            raise CsvTrainingError(f"{option} names the label column {label!r}")

    y_all, has_label = parse_label(frame[label])
    rows = frame.loc[has_label].reset_index(drop=True)
    y = y_all[has_label]
    counts = np.bincount(y, minlength=2)
    if counts.min() < MIN_ROWS_PER_CLASS:
        raise CsvTrainingError(
            f"label column {label!r} has {int(counts[1])} positive and {int(counts[0])} "
            f"negative row(s); need at least {MIN_ROWS_PER_CLASS} of each"
        )
    times = parse_times(rows[time_col]) if time_col else None

    dropped: dict[str, str] = {}
    if id_col:
        dropped[id_col] = "identifier (--id)"
    if time_col:
        dropped[time_col] = "time column (--time), used to split only"
    for name in drop:
        dropped[name] = "dropped by --drop"
    features: dict[str, pd.Series] = {}
    categorical: list[str] = []
    yes_no: list[str] = []
    for column in rows.columns:
        if column == label or column in dropped:
            continue
        series = rows[column]
        if series.isna().all():
            dropped[column] = "empty: no values"
            continue
        if series.nunique(dropna=True) <= 1 and not series.isna().any():
            dropped[column] = "constant: a single value"
            continue
        converted = _as_yes_no(series)
        if converted is not None:
            yes_no.append(column)
        else:
            converted = _as_numeric(series)
        if converted is None:
            converted = series.astype(str).where(series.notna()).astype("category")
            categorical.append(column)
        if converted.nunique(dropna=False) <= 1:
            dropped[column] = "constant: a single value"
            categorical = [c for c in categorical if c != column]
            continue
        features[column] = converted
    if not features:
        raise CsvTrainingError(
            f"no feature columns left after removing the label, --id, --time and --drop "
            f"columns (dropped: {sorted(dropped)})"
        )
    return PreparedData(
        features=pd.DataFrame(features), y=y, times=times, categorical=categorical,
        dropped=dropped, columns_in_file=int(frame.shape[1]), rows_in_file=int(len(frame)),
        rows_without_label=int((~has_label).sum()), yes_no_columns=yes_no,
    )


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def _lgb_dataset(
    X: pd.DataFrame, y: np.ndarray, categorical: Sequence[str], free_raw_data: bool = True
) -> lgb.Dataset:
    cats = [c for c in categorical if c in X.columns]
    return lgb.Dataset(
        X, label=y.astype(float), categorical_feature=cats or "auto",
        params={"max_bin": DEFAULT_MAX_BIN, "verbosity": -1, "feature_pre_filter": False},
        free_raw_data=free_raw_data,
    )


def default_lgbm_predict(
    X_train: pd.DataFrame, y_train: np.ndarray, X_test: pd.DataFrame,
    categorical: Sequence[str], seed: int,
) -> np.ndarray:
    """Baseline: LightGBM with its default parameters (100 rounds), categoricals native."""
    params = {**BASE_PARAMS, **LGBM_OVERRIDES, "seed": seed}
    booster = lgb.train(params, _lgb_dataset(X_train, y_train, categorical), DEFAULT_LGBM_ROUNDS)
    return booster.predict(X_test)


def logistic_predict(
    X_train: pd.DataFrame, y_train: np.ndarray, X_test: pd.DataFrame,
    categorical: Sequence[str], seed: int,
) -> np.ndarray:
    """Baseline: one-hot logistic regression (imputation + scaling in an sklearn pipeline)."""
    model = LogisticBaseline(list(X_train.columns), list(categorical), seed=seed)
    return model.fit(X_train, y_train).predict_proba(X_test)


def _blend(p_lgbm: np.ndarray, p_linear: np.ndarray, weight: float) -> np.ndarray:
    """Blend on the logit scale: weight × LightGBM + (1 − weight) × logistic regression."""
    clip = (PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return expit(
        weight * logit(np.clip(p_lgbm, *clip)) + (1 - weight) * logit(np.clip(p_linear, *clip))
    )


@dataclass
class FoldResult:
    """What one evaluation split produced; index arrays are positions in the prepared data."""

    fold: int
    test_idx: np.ndarray
    tuning_idx: np.ndarray
    calibration_idx: np.ndarray
    predictions: dict[str, np.ndarray]
    calibrator: Calibrator
    blend_weight: float
    tuning: dict[str, Any]
    contributions: np.ndarray | None = None
    shap_idx: np.ndarray | None = None
    choice: ModelChoice | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            "test_rows": int(self.test_idx.size),
            "tuning_rows": int(self.tuning_idx.size),
            "calibration_rows": int(self.calibration_idx.size),
            "blend_weight_lightgbm": self.blend_weight,
            "calibrator": self.calibrator.to_dict(),
            "model_choice": self.choice.to_dict() if self.choice else None,
            "tuning": self.tuning,
            "test_roc_auc": float(
                roc_auc_score(self.predictions["y"], self.predictions["ours"])
            ),
        }


Splits = Sequence[tuple[np.ndarray, np.ndarray]]
TrialScorer = Callable[[dict[str, Any], "optuna.Trial | None"], tuple[float, float, int]]


def _cv_pruning_callback(trial: optuna.Trial) -> Callable[[Any], None]:
    """``training.tune.pruning_callback`` for ``lgb.cv``, whose results carry a fifth field
    (the standard deviation over folds); the mean over the inner folds is reported."""
    report = pruning_callback(trial, report_every=REPORT_EVERY)

    def _callback(env: Any) -> None:
        means = [tuple(result)[:4] for result in env.evaluation_result_list]
        report(dataclasses.replace(env, evaluation_result_list=means))

    _callback.order = report.order  # type: ignore[attr-defined]
    return _callback


def _trial_scorer(
    X: pd.DataFrame, y: np.ndarray, categorical: Sequence[str], *,
    folds: Splits | None = None, tuning_split: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrialScorer:
    """A function scoring one parameter set: (log loss, ROC-AUC, early-stopped rounds).

    With ``folds`` (cross-validation mode): the mean over those inner folds of the training
    part (``lgb.cv``, early stopping on the mean log loss) — much less noisy than one split on
    a small export. With ``tuning_split`` (time mode): fit on the older rows, validate on the
    newer ones. Datasets are binned once and reused by every trial. With a trial, its
    intermediate log loss is reported to Optuna's pruner.
    """
    if folds is not None:
        rows = np.unique(np.concatenate([np.concatenate(pair) for pair in folds]))
        position = np.full(len(y), -1)
        position[rows] = np.arange(rows.size)
        local = [(position[a], position[b]) for a, b in folds]
        dataset = _lgb_dataset(X.iloc[rows], y[rows], categorical, free_raw_data=False)
        dataset.construct()

        def score_cv(
            params: dict[str, Any], trial: optuna.Trial | None = None
        ) -> tuple[float, float, int]:
            callbacks = [
                lgb.early_stopping(EARLY_STOPPING_ROUNDS, first_metric_only=True, verbose=False)
            ]
            if trial is not None:
                callbacks.append(_cv_pruning_callback(trial))
            result = lgb.cv(
                {**params, "metric": [OBJECTIVE_METRIC, "auc"]}, dataset,
                num_boost_round=CSV_MAX_ROUNDS, folds=local, callbacks=callbacks,
            )
            losses = result[f"{VALID_NAME} {OBJECTIVE_METRIC}-mean"]
            return float(losses[-1]), float(result[f"{VALID_NAME} auc-mean"][-1]), len(losses)

        return score_cv
    if tuning_split is None:
        raise ValueError("either folds or tuning_split is needed")
    fit_idx, valid_idx = tuning_split
    dtrain, dvalid = make_datasets(
        X.iloc[fit_idx], y[fit_idx], X.iloc[valid_idx], y[valid_idx], categorical
    )

    def score_split(
        params: dict[str, Any], trial: optuna.Trial | None = None
    ) -> tuple[float, float, int]:
        booster = train_booster(
            params, dtrain, dvalid, max_rounds=CSV_MAX_ROUNDS,
            early_stopping_rounds=EARLY_STOPPING_ROUNDS,
            extra_callbacks=(
                [] if trial is None else [pruning_callback(trial, report_every=REPORT_EVERY)]
            ),
        )
        scores = booster.best_score[VALID_NAME]
        return (float(scores[OBJECTIVE_METRIC]), float(scores["auc"]),
                int(booster.best_iteration or 1))

    return score_split


def _tune(
    score: TrialScorer, n_trials: int, timeout: float | None, seed: int,
) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """Optuna study (seeded TPE, median pruning) of ``suggest_csv_params``, minimising the
    held-out log loss that ``score`` (see ``_trial_scorer``) measures.

    Trials run at the fixed ``CSV_LEARNING_RATE``: the median pruner compares intermediate
    log losses, which penalises slow learning rates unfairly when they are tuned too. Each
    fold runs its own study from scratch (no warm start from another fold, whose training
    part holds this fold's test rows).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=5, n_warmup_steps=30, interval_steps=REPORT_EVERY
        ),
    )

    def objective(trial: optuna.Trial) -> float:
        params = {**suggest_csv_params(trial), **LGBM_OVERRIDES, "seed": seed}
        loss, auc, rounds = score(params, trial)
        trial.set_user_attr("best_iteration", rounds)
        trial.set_user_attr("valid_auc", auc)
        return loss

    started = time.perf_counter()
    study.optimize(objective, n_trials=n_trials, timeout=timeout, gc_after_trial=False)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise CsvTrainingError("no Optuna trial completed: raise --trials or --timeout")
    best = study.best_trial
    params = {**csv_params_from(best.params), **LGBM_OVERRIDES, "seed": seed}
    rounds = max(1, int(best.user_attrs["best_iteration"]))
    summary = {
        "best_params": {k: v for k, v in params.items() if k not in BASE_PARAMS},
        "best_valid_log_loss": float(best.value),
        "best_valid_auc": float(best.user_attrs["valid_auc"]),
        "rounds": rounds,
        "n_trials": len(study.trials),
        "n_complete": len(complete),
        "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return params, rounds, summary


def _fit_tuned_models(
    X: pd.DataFrame, X_lgbm: pd.DataFrame, y: np.ndarray, splits: Splits,
    test_idx: np.ndarray, params: dict[str, Any], rounds: int,
    categorical: Sequence[str], seed: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Held-out and test predictions of tuned LightGBM and logistic regression.

    Each (fit, held-out) split trains both models on its fit rows (LightGBM on ``X_lgbm``, the
    export's columns plus the engineered ones, averaged over ``BAGGED_SEEDS`` seeds since
    column and row subsampling make single boosters noisy; the logistic regression on ``X``);
    held-out rows get that model's prediction and the test rows the average over splits.
    Also returns the first booster's SHAP contributions on a sample of test rows, folded back
    onto the export's columns, and the sampled row positions.
    """
    held_out = {"lightgbm": np.full(len(y), np.nan), "linear": np.full(len(y), np.nan)}
    test = {"lightgbm": np.zeros(test_idx.size), "linear": np.zeros(test_idx.size)}
    rng = np.random.default_rng(seed)
    shap_idx = np.sort(rng.choice(test_idx, min(SHAP_ROWS_PER_FOLD, test_idx.size), replace=False))
    first: lgb.Booster | None = None
    for fit_idx, held_idx in splits:
        dataset = _lgb_dataset(X_lgbm.iloc[fit_idx], y[fit_idx], categorical)
        held = np.zeros(held_idx.size)
        for offset in range(BAGGED_SEEDS):
            booster = lgb.train({**params, "seed": seed + offset}, dataset, rounds)
            if first is None:
                first = booster
            held += booster.predict(X_lgbm.iloc[held_idx]) / BAGGED_SEEDS
            test["lightgbm"] += booster.predict(X_lgbm.iloc[test_idx]) / (
                BAGGED_SEEDS * len(splits)
            )
        held_out["lightgbm"][held_idx] = held
        linear = LogisticBaseline(list(X.columns), list(categorical), seed=seed)
        linear.fit(X.iloc[fit_idx], y[fit_idx])
        held_out["linear"][held_idx] = linear.predict_proba(X.iloc[held_idx])
        test["linear"] += linear.predict_proba(X.iloc[test_idx]) / len(splits)
    assert first is not None  # splits is never empty
    contributions = fold_contributions(
        first.predict(X_lgbm.iloc[shap_idx], pred_contrib=True),
        source_positions(list(X_lgbm.columns), list(X.columns)), X.shape[1],
    )
    return held_out, test, contributions, shap_idx


FORWARD_FIT_BLOCKS = 3  # time mode: the fit rows in blocks, then the validation rows


def _forward_splits(fit_idx: np.ndarray, valid_idx: np.ndarray) -> list[tuple[np.ndarray,
                                                                              np.ndarray]]:
    """Forward chaining over the time-ordered fit rows (in ``FORWARD_FIT_BLOCKS`` blocks) and
    then the validation rows: each block is predicted by models fitted on the blocks before."""
    blocks = [*np.array_split(fit_idx, FORWARD_FIT_BLOCKS), valid_idx]
    return [(np.concatenate(blocks[:k]), blocks[k]) for k in range(1, len(blocks))]


def _choose_and_calibrate(
    X: pd.DataFrame, y: np.ndarray, splits: Splits, held_out: dict[str, np.ndarray],
    categorical: Sequence[str], seed: int, *, forward: bool,
) -> tuple[ModelChoice, Calibrator, np.ndarray]:
    """Choose among tuned LightGBM, default LightGBM, logistic regression and their blend on
    the held-out rows of ``splits`` (training part only) and fit the chosen one's calibrator
    there (identity unless a calibrator gains beyond noise; forward in time when
    ``forward``). Returns the choice, the calibrator and the held-out row positions."""
    held_rows = [held for _, held in splits]
    calibration_idx = np.concatenate(held_rows)
    blocks = np.concatenate([np.full(h.size, i) for i, h in enumerate(held_rows)])
    default = np.concatenate([
        default_lgbm_predict(X.iloc[fit], y[fit], X.iloc[held], categorical, seed)
        for fit, held in splits])
    y_held = y[calibration_idx]
    candidates = {TUNED: held_out["lightgbm"][calibration_idx], DEFAULT_LIGHTGBM: default,
                  LOGISTIC: held_out["linear"][calibration_idx]}
    candidates[BLEND], weight = cross_fitted_blend(
        y_held, candidates[TUNED], candidates[LOGISTIC], blocks)
    scheme = (f"forward in time over {len(splits) + 1} blocks of the training part" if forward
              else f"{len(splits)} inner folds of the training part")
    choice = choose_model(y_held, candidates, scheme=scheme, blend_weight=weight, seed=seed)
    calibrator = fit_calibrator(candidates[choice.chosen], y_held,
                                blocks=blocks if forward else None, seed=seed)
    order = np.argsort(calibration_idx)
    return choice, calibrator, calibration_idx[order]


def evaluate_split(
    X: pd.DataFrame, y: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray, *,
    fold: int, categorical: Sequence[str], n_trials: int, timeout: float | None, seed: int,
    tuning_split: tuple[np.ndarray, np.ndarray] | None = None, inner_folds: int = INNER_FOLDS,
) -> FoldResult:
    """Tune, fit, blend and calibrate on ``train_idx`` only; score ``test_idx`` with all models.

    The frequency encoding (``training.csv_features``) is fitted on the training part. Without
    ``tuning_split`` (cross-validation), ``inner_folds`` stratified inner folds of the training
    part serve both tuning (mean inner-fold log loss per trial) and calibration (their
    out-of-fold predictions). With ``tuning_split`` = (older fit rows, newer validation rows)
    (time mode), tuning, blending and calibration all use the validation rows, predicted by
    models fitted on the older rows.
    """
    if np.intersect1d(train_idx, test_idx).size:
        raise ValueError("training and test rows overlap")
    encoder = FrequencyEncoder(categorical).fit(X.iloc[train_idx])
    X_lgbm = encoder.transform(X)
    if tuning_split is None:
        inner = StratifiedKFold(n_splits=inner_folds, shuffle=True, random_state=seed)
        splits = [
            (train_idx[a], train_idx[b])
            for a, b in inner.split(np.zeros(train_idx.size), y[train_idx])
        ]
        score = _trial_scorer(X_lgbm, y, categorical, folds=splits)
        tuning_idx = np.sort(train_idx)
    else:
        splits = [tuning_split]
        score = _trial_scorer(X_lgbm, y, categorical, tuning_split=tuning_split)
        tuning_idx = np.sort(np.concatenate(tuning_split))
    params, rounds, tuning = _tune(score, n_trials, timeout, seed)
    held_out, test, contributions, shap_idx = _fit_tuned_models(
        X, X_lgbm, y, splits, test_idx, params, rounds, categorical, seed
    )
    X_train, X_test = X.iloc[train_idx], X.iloc[test_idx]
    baseline_test = {
        DEFAULT_LIGHTGBM: default_lgbm_predict(X_train, y[train_idx], X_test, categorical, seed),
        LOGISTIC: logistic_predict(X_train, y[train_idx], X_test, categorical, seed),
    }
    if tuning_split is not None:  # time mode: forward-in-time predictions over a longer window
        splits = _forward_splits(*tuning_split)
        held_out = _fit_tuned_models(
            X, X_lgbm, y, splits, test_idx, params, rounds, categorical, seed)[0]
        # the test rows are scored by models fitted on the whole training part (fit + tuning
        # rows), as the baselines are, not on the older fit rows alone
        test = _fit_tuned_models(X, X_lgbm, y, [(np.sort(train_idx), tuning_split[1])],
                                 test_idx, params, rounds, categorical, seed)[1]
    choice, calibrator, calibration_idx = _choose_and_calibrate(
        X, y, splits, held_out, categorical, seed, forward=tuning_split is not None)
    weight = float(choice.blend_weight or 0.0)
    raw_test = {TUNED: test["lightgbm"], BLEND: _blend(test["lightgbm"], test["linear"], weight),
                **baseline_test}[choice.chosen]
    predictions = {
        "y": y[test_idx],
        "ours": calibrator.predict(raw_test),
        "ours_uncalibrated": np.asarray(raw_test, dtype=float),
        "lightgbm_default": baseline_test[DEFAULT_LIGHTGBM],
        "logistic_regression": baseline_test[LOGISTIC],
    }
    return FoldResult(
        fold=fold, test_idx=test_idx, tuning_idx=tuning_idx,
        calibration_idx=calibration_idx, predictions=predictions, calibrator=calibrator,
        blend_weight=weight, tuning=tuning, contributions=contributions, shap_idx=shap_idx,
        choice=choice,
    )


def cross_validate(
    X: pd.DataFrame, y: np.ndarray, categorical: Sequence[str], *, n_trials: int,
    timeout: float | None, seed: int, progress: ProgressCallback | None = None,
    inner_folds: int = INNER_FOLDS,
) -> list[FoldResult]:
    """Seeded stratified 5-fold evaluation; every fold is tuned and calibrated on its own."""
    outer = StratifiedKFold(n_splits=OUTER_FOLDS, shuffle=True, random_state=seed)
    per_fold_timeout = None if timeout is None else timeout / OUTER_FOLDS
    results = []
    for fold, (train_idx, test_idx) in enumerate(outer.split(np.zeros(len(y)), y), start=1):
        results.append(evaluate_split(
            X, y, train_idx, test_idx, fold=fold, categorical=categorical, n_trials=n_trials,
            timeout=per_fold_timeout, seed=seed, inner_folds=inner_folds,
        ))
        if progress:
            progress(f"fold {fold}/{OUTER_FOLDS}")
    return results


def time_validate(
    X: pd.DataFrame, y: np.ndarray, times: pd.Series, categorical: Sequence[str], *,
    n_trials: int, timeout: float | None, seed: int,
) -> tuple[list[FoldResult], dict[str, Any]]:
    """Time split: older rows train, the next slice tunes and calibrates, the newest test."""
    positions = pd.DataFrame({"position": np.arange(len(y)), "time": times.to_numpy()})
    try:
        split = time_split(positions, "time", fractions=TIME_FRACTIONS)
    except ValueError as exc:
        raise CsvTrainingError(f"time column: {exc}") from None
    fit_idx, valid_idx, test_idx = (
        part["position"].to_numpy() for part in (split.train, split.valid, split.test)
    )
    for name, idx in (("train", fit_idx), ("tuning", valid_idx), ("test", test_idx)):
        if np.unique(y[idx]).size < 2:
            raise CsvTrainingError(
                f"the {name} slice of the time split holds only one label value; "
                "more rows or a longer period are needed"
            )
    train_idx = np.concatenate([fit_idx, valid_idx])
    result = evaluate_split(
        X, y, train_idx, test_idx, fold=1, categorical=categorical, n_trials=n_trials,
        timeout=timeout, seed=seed, tuning_split=(fit_idx, valid_idx),
    )
    return [result], split.windows()


# ---------------------------------------------------------------------------------------------
# Report, MLflow and the command
# ---------------------------------------------------------------------------------------------

MODEL_NAMES = ("ours", "ours_uncalibrated", "lightgbm_default", "logistic_regression")
HEADLINE_METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "calibration_slope",
                    "calibration_intercept")


def model_choice_summary(results: Sequence[FoldResult]) -> dict[str, Any]:
    """Which candidate each split chose (on its training part), and a plain statement."""
    chosen = [r.choice.chosen for r in results if r.choice is not None]
    counts = {name: chosen.count(name) for name in dict.fromkeys(chosen)}
    simple = [r.choice for r in results if r.choice is not None and r.choice.simple_model_wins]
    statement = ", ".join(f"{LABELS.get(n, n)} in {c} of {len(chosen)} split(s)"
                          for n, c in counts.items())
    if simple:
        statement = f"the simple model wins in {len(simple)} of {len(chosen)} split(s): " \
                    + statement
    return {"chosen": chosen, "counts": counts, "simple_model_wins": bool(simple),
            "statement": statement,
            "reasons": [r.choice.reason for r in results if r.choice is not None],
            "rule": "lowest held-out log loss on the training part (never the test rows)"}


def pooled_predictions(results: Sequence[FoldResult], n_rows: int) -> dict[str, np.ndarray]:
    """Out-of-fold predictions of every model put back in row order (test rows only)."""
    test_idx = np.concatenate([r.test_idx for r in results])
    pooled = {name: np.concatenate([r.predictions[name] for r in results]) for name in MODEL_NAMES}
    y = np.concatenate([r.predictions["y"] for r in results])
    order = np.argsort(test_idx)
    out = {name: values[order] for name, values in pooled.items()}
    out["y"] = y[order]
    out["index"] = test_idx[order]
    if len(results) > 1 and test_idx.size != n_rows:
        raise RuntimeError("cross-validation folds do not cover every row exactly once")
    return out


def _plots(
    pooled: dict[str, np.ndarray], results: Sequence[FoldResult], X: pd.DataFrame, folder: Path
) -> dict[str, Path]:
    from training.plots import calibration_plot, gains_plot, shap_summary_plot

    y = pooled["y"]
    models = {name: pooled[name] for name in MODEL_NAMES}
    paths = {
        "calibration": calibration_plot(y, models, folder / "calibration.png"),
        "gains": gains_plot(y, models, folder / "gains.png"),
    }
    contributions = np.concatenate([r.contributions for r in results])
    rows = np.concatenate([r.shap_idx for r in results])
    paths["shap_summary"] = shap_summary_plot(
        contributions, list(X.columns), X.iloc[rows].reset_index(drop=True),
        folder / "shap_summary.png",
    )
    return paths


def _log_to_mlflow(
    settings: Settings, experiment: str, report: dict[str, Any], plots: dict[str, Path],
    params: dict[str, Any],
) -> dict[str, str]:
    import mlflow

    from training.registry import setup_tracking

    experiment_id = setup_tracking(settings, experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=experiment) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        metrics = {}
        for name, values in report["comparison"].items():
            for metric, value in values.items():
                if value is not None:
                    metrics[f"{name}.{metric}"] = float(value)
        metrics["ece_before_calibration"] = report["calibration"]["ece_before"]
        metrics["ece_after_calibration"] = report["calibration"]["ece_after"]
        mlflow.log_metrics(metrics)
        choice = report.get("model_choice", {})
        mlflow.set_tags({"chosen_models": ",".join(choice.get("chosen", [])),
                         "simple_model_wins": str(choice.get("simple_model_wins", False)),
                         "calibration_methods": ",".join(report["calibration"]["methods"])})
        mlflow.log_dict(report, "report.json")
        for path in plots.values():
            mlflow.log_artifact(str(path), artifact_path="plots")
        return {"experiment": experiment, "experiment_id": experiment_id,
                "run_id": run.info.run_id}


def train_csv(
    path: Path | str,
    label: str,
    id_col: str | None = None,
    time_col: str | None = None,
    drop: Sequence[str] = (),
    allow: Sequence[str] = (),
    guard_threshold: float = 0.90,
    n_trials: int = 30,
    timeout: float | None = None,
    seed: int = 42,
    *,
    settings: Settings | None = None,
    plots_dir: Path | str | None = None,
    log_to_mlflow: bool = True,
    progress: ProgressCallback | None = None,
    keep_predictions: bool = False,
    inner_folds: int = INNER_FOLDS,
    encoding: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate on a CRM export; return the report (see the module docstring).

    ``n_trials`` Optuna trials run per outer fold (``timeout`` seconds is the total tuning
    budget, shared by the folds). Plots go to ``plots_dir`` (a temporary folder when None).
    With ``keep_predictions`` the pooled out-of-fold predictions are returned under the
    private key ``_predictions`` (not JSON; for tests and benchmarks). ``inner_folds``
    (default 4) sets how many inner models per outer fold produce the calibration set.
    ``encoding`` is the CSV's text encoding (default UTF-8; see ``read_export``).
    """
    if inner_folds < 2:
        raise CsvTrainingError(f"inner_folds must be at least 2, got {inner_folds}")
    started = time.perf_counter()
    if n_trials < 1:
        raise CsvTrainingError(f"--trials must be at least 1, got {n_trials}")
    if timeout is not None and timeout <= 0:
        raise CsvTrainingError(f"--timeout must be positive seconds, got {timeout}")
    if not 0.5 < guard_threshold <= 1.0:
        raise CsvTrainingError(f"--guard-threshold must lie in (0.5, 1], got {guard_threshold}")
    file = Path(path)
    frame = read_export(file, encoding)
    file_notes = list(frame.attrs.get("file_notes", []))
    data = clean_export(frame, label, id_col, time_col, drop, allow)
    del frame
    if progress:
        progress("data read")

    data.guard = run_guard(data.features, data.y, guard_threshold, allow=allow, seed=seed)
    data.dropped.update(data.guard.dropped)
    kept = data.guard.kept
    if not kept:
        raise CsvTrainingError(
            f"the leakage guard left no feature column (dropped: {sorted(data.guard.dropped)}); "
            "use --allow COL to keep a column or raise --guard-threshold"
        )
    X = data.features[kept]
    categorical = [c for c in data.categorical if c in kept]
    if progress:
        progress("leakage guard")

    windows: dict[str, Any] | None = None
    if data.times is None:
        results = cross_validate(
            X, data.y, categorical, n_trials=n_trials, timeout=timeout, seed=seed,
            progress=progress, inner_folds=inner_folds,
        )
        protocol = (
            f"seeded stratified {OUTER_FOLDS}-fold cross-validation (seed {seed}); per outer "
            f"fold: frequency encoding fitted on the training part; {inner_folds} stratified "
            "inner folds of the training part score every Optuna trial (mean inner-fold log "
            "loss); the tuned LightGBM, a default LightGBM and a logistic regression fitted on "
            "the same inner folds give out-of-fold predictions that choose the model to ship "
            "(or their blend) and its calibration; the test fold is never seen"
        )
    else:
        results, windows = time_validate(
            X, data.y, data.times, categorical, n_trials=n_trials, timeout=timeout, seed=seed
        )
        protocol = (
            "time split: oldest 60% fit, next 20% tune, newest 20% test; model choice and "
            "calibration on forward-in-time predictions over the fit and tuning rows"
        )
        if progress:
            progress("time split")
    pooled = pooled_predictions(results, len(data.y))
    y_eval = pooled["y"]

    comparison = {}
    report_metrics = {}
    for name in MODEL_NAMES:
        report_metrics[name] = classification_metrics(y_eval, pooled[name])
        comparison[name] = {key: report_metrics[name][key] for key in HEADLINE_METRICS}
    report: dict[str, Any] = {
        "source": {"file": file.name, "label": label, "id_column": id_col,
                   "time_column": time_col, "seed": seed, "notes": file_notes},
        "data": {
            "rows_in_file": data.rows_in_file,
            "rows_without_label": data.rows_without_label,
            "rows": int(len(data.y)),
            "positives": int(data.y.sum()),
            "positive_rate": float(data.y.mean()),
            "columns_in_file": data.columns_in_file,
            "columns_used": list(X.columns),
            "categorical_columns": categorical,
            "numeric_columns": [c for c in X.columns if c not in categorical],
            "yes_no_columns": [c for c in data.yes_no_columns if c in X.columns],
            "columns_dropped": data.dropped,
        },
        "guard": data.guard.to_dict(),
        "evaluation": {
            "mode": "time" if windows else "cross-validation",
            "protocol": protocol,
            "evaluated_rows": int(y_eval.size),
            "time_windows": windows,
            "folds": [r.summary() for r in results],
        },
        "model": classification_metrics(y_eval, pooled["ours"]),
        "baselines": {
            name: classification_metrics(y_eval, pooled[name])
            for name in ("lightgbm_default", "logistic_regression")
        },
        "comparison": comparison,
        "calibration": {
            "ece_before": expected_calibration_error(y_eval, pooled["ours_uncalibrated"]),
            "ece_after": expected_calibration_error(y_eval, pooled["ours"]),
            "log_loss_before": comparison["ours_uncalibrated"]["log_loss"],
            "log_loss_after": comparison["ours"]["log_loss"],
            "slope_intercept_after": {k: report_metrics["ours"][k] for k in (
                "calibration_slope", "calibration_intercept")},
            "tiers_predicted_vs_observed": report_metrics["ours"]["tier_calibration"],
            "methods": [r.calibrator.method for r in results],
            "selections": [r.calibrator.selection for r in results],
            "fitted_on": "held-out predictions inside each training part (never the test rows); "
                         "identity unless a calibrator gains beyond noise",
        },
        "model_choice": model_choice_summary(results),
    }

    temp_dir = None
    if plots_dir is None:
        temp_dir = tempfile.TemporaryDirectory(prefix="leadscore-csv-")
        plots_dir = temp_dir.name
    try:
        plots = _plots(pooled, results, X, Path(plots_dir))
        report["plots"] = {name: p.name for name, p in plots.items()}
        report["seconds"] = round(time.perf_counter() - started, 1)
        if log_to_mlflow:
            params = {
                "label": label, "mode": report["evaluation"]["mode"], "n_trials": n_trials,
                "timeout": timeout, "guard_threshold": guard_threshold, "seed": seed,
                "rows": len(data.y), "features": len(X.columns),
                "guard_dropped": ",".join(sorted(data.guard.dropped)),
            }
            report["mlflow"] = _log_to_mlflow(
                settings or get_settings(), f"csv-{file.stem}", report, plots, params
            )
    finally:
        if temp_dir is not None:
            temp_dir.cleanup()
    if keep_predictions:
        report["_predictions"] = pooled
    return report
