"""``leadscore train --csv``: train and evaluate a conversion model on a flat CRM export.

Pipeline: read the CSV robustly → clean it (placeholders such as ``Select`` and blanks become
missing, Yes/No → 0/1, text → pandas ``category`` for LightGBM's native handling) → checks that
need no model, before any work (options, the time column's dates — none unparseable, none in
the future —, both label values in every time slice, the Optuna storage reachable) → leakage
guard (``training.leakage``: identifiers and columns above the hard threshold dropped, a column
standing far above all others flagged) → evaluation that never lets tuning or calibration see
the test rows:

* random (no ``--time``, no ``--order-is-time``): seeded stratified 5-fold cross-validation.
  In each outer fold, 3 stratified inner folds of the outer training part (at most
  ``TUNING_MAX_ROWS`` of its rows) score every Optuna trial of LightGBM (mean inner-fold log
  loss with early stopping: one study per fold, nested); the tuned LightGBM, a default
  LightGBM and a logistic regression are then fitted on the same inner folds, whose
  out-of-fold predictions choose the model to ship — tuned LightGBM, default LightGBM,
  logistic regression or their blend (``training.selection.choose_model``, lowest log loss)
  — and its calibration (identity unless a calibrator gains beyond noise,
  ``training.calibration``); the test fold is scored by the chosen model, calibrated.
  Metrics are computed on the pooled out-of-fold predictions.
* forward (``--time COL``, or ``--order-is-time`` when the rows are in time order without a
  date column): oldest 60% fit, next 20% tune, newest 20% test; the choice and the
  calibration use forward-in-time predictions over the fit and tuning rows (each block
  predicted by models fitted on the blocks before it); a calibrator is not kept when the
  calibration of those blocks drifts (``calibration_drift``): it would carry a trend of the
  base rate forward. The forward figures are the headline; the random 5-fold evaluation runs
  beside it (unless ``random_check=False``) and ``evaluation_agreement`` compares the two on
  the same newest rows (paired bootstrap of the AUC difference), warning when random folds
  flatter beyond noise.

The splits (5 random folds, the forward split) run in parallel worker processes, one LightGBM
thread each (``CsvSpeed``; ``run_splits``), and report every Optuna trial to the progress
callback.

LightGBM also sees generic engineered features (``training.csv_features``: the share of each
categorical value among the training part's rows), fitted without labels on the training part
only; its search space (``suggest_csv_params``) adds LightGBM's categorical knobs and strong
column subsampling to the product's. SHAP contributions are folded back onto the export's
columns.

Baselines (default LightGBM, one-hot logistic regression) are fitted on the same outer training
parts and scored on the same test rows; the shipped model's differences to them carry
paired-bootstrap intervals. The run is logged to MLflow (experiment ``csv-<file stem>``) with
the report and plots; only column names, never cell values, leave the process.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import io
import multiprocessing
import os
import queue as queue_module
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit, logit
from scipy.stats import chi2
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split

from crm_data.export_files import DamagedFileError, decode_export, scan_csv
from leadscore.config import Settings, get_settings
from leadscore.schemas import PROBABILITY_CLIP
from training.baselines import LogisticBaseline
from training.calibration import Calibrator, fit_calibrator
from training.csv_features import FrequencyEncoder, fold_contributions, source_positions
from training.evaluate import (
    classification_metrics,
    expected_calibration_error,
    paired_bootstrap,
)
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
INNER_FOLDS = 3  # inner folds that score the Optuna trials
FIT_FOLDS = 4  # inner folds whose models choose, calibrate and (averaged) score the test fold
TIME_FRACTIONS = (0.6, 0.2, 0.2)
MIN_ROWS_PER_CLASS = 20
MAX_LISTED_VALUES = 10
DEFAULT_LGBM_ROUNDS = 100  # LightGBM's own default number of boosting rounds
REPORT_EVERY = 5
CSV_MAX_ROUNDS = 3000  # small learning rates on small tables need more than tune.py's 1000
EARLY_STOPPING_ROUNDS = 30  # at the learning rate 0.1: as far as 50 rounds at 0.06
CSV_LEARNING_RATE = 0.1  # fixed, not tuned: see _tune
BAGGED_SEEDS = 3  # boosters (seeds) averaged per inner fold
TUNING_MAX_ROWS = 12_000  # inner folds of at most this many training rows score the trials
FUTURE_TOLERANCE = pd.Timedelta(days=1)  # time zones and clocks: a day ahead is not the future
# One thread per model: on a shared 2-core machine two OpenMP threads busy-wait against other
# processes and train up to 50x slower; folds are small enough for one core. Splits run in
# parallel processes instead (``CsvSpeed.workers``).
LGBM_OVERRIDES: dict[str, Any] = {"n_jobs": 1}
SHAP_ROWS_PER_FOLD = 400
# Forward vs random evaluation: AUC difference (random − forward) on the same test rows.
AGREEMENT_BOOT = 1000


@dataclass(frozen=True)
class CsvSpeed:
    """How much work each split's search and fits do (see ``docs/csv_training.md``).

    The default, measured on X Education (``benchmarks/bench_csv_speed.py``): a learning rate of
    0.1 (fewer boosting rounds per trial and per model) with early stopping after 30 rounds
    without gain (as far as 50 rounds at the former 0.06), 3 inner folds scoring the trials
    (``fit_folds``, 4, for the models fitted after tuning; None: the same), log loss alone
    evaluated each round (AUC once per trial, at its best round), at most ``TUNING_MAX_ROWS``
    training rows in the inner folds that score the trials (final models see every training
    row), and the splits in ``workers`` parallel processes (``None``: one per core, at most
    2). ``PREVIOUS`` reproduces the former settings for side-by-side measurements.
    """

    learning_rate: float = CSV_LEARNING_RATE
    early_stopping_rounds: int = EARLY_STOPPING_ROUNDS
    inner_folds: int = INNER_FOLDS
    fit_folds: int | None = FIT_FOLDS
    bagged_seeds: int = BAGGED_SEEDS
    tuning_max_rows: int | None = TUNING_MAX_ROWS
    auc_each_round: bool = False
    workers: int | None = None

    def worker_count(self, tasks: int) -> int:
        cores = os.cpu_count() or 1
        wanted = min(2, cores) if self.workers is None else self.workers
        return max(1, min(wanted, tasks))


PREVIOUS_SPEED = CsvSpeed(learning_rate=0.06, early_stopping_rounds=50, inner_folds=4,
                          fit_folds=None, bagged_seeds=3,
                          tuning_max_rows=None, auc_each_round=True, workers=1)

ProgressCallback = Callable[[str, float], None]


def suggest_csv_params(
    trial: optuna.Trial, learning_rate: float = CSV_LEARNING_RATE
) -> dict[str, Any]:
    """LightGBM search space for flat exports (merged over ``BASE_PARAMS``).

    Differs from the product's shared space where small tables need it: feature_fraction
    down to 0.1 (strong column subsampling regularises well on a few thousand rows), smaller
    trees, LightGBM's categorical knobs (min_data_per_group, cat_l2, cat_smooth,
    max_cat_threshold) for the text columns exports are full of, and a fixed learning rate
    (see ``_tune``).
    """
    params = {
        "learning_rate": learning_rate,
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


def csv_params_from(
    sampled: dict[str, Any], learning_rate: float = CSV_LEARNING_RATE
) -> dict[str, Any]:
    """Full LightGBM parameters for a trial's sampled values (replayed through the space)."""
    return suggest_csv_params(optuna.trial.FixedTrial(sampled), learning_rate)


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
    if not present.any():
        raise CsvTrainingError(f"label column {series.name!r} is empty on every row")
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
    now = pd.Timestamp.now(tz="UTC")
    future = parsed > now + FUTURE_TOLERANCE
    if future.any():
        examples = series[future].astype(str).unique()[:3].tolist()
        raise CsvTrainingError(
            f"time column {series.name!r} has {int(future.sum())} date(s) in the future "
            f"(after {now:%Y-%m-%d}), e.g. {examples}: a wrong column, format or year?"
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
    calibration_drift: dict[str, Any] | None = None
    cpu_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            "test_rows": int(self.test_idx.size),
            "tuning_rows": int(self.tuning_idx.size),
            "calibration_rows": int(self.calibration_idx.size),
            "blend_weight_lightgbm": self.blend_weight,
            "calibrator": self.calibrator.to_dict(),
            "model_choice": self.choice.to_dict() if self.choice else None,
            "calibration_drift": self.calibration_drift,
            "tuning": self.tuning,
            "cpu_seconds": round(self.cpu_seconds, 1),
            "test_roc_auc": float(
                roc_auc_score(self.predictions["y"], self.predictions["ours"])
            ),
        }


Splits = Sequence[tuple[np.ndarray, np.ndarray]]
TrialScorer = Callable[[dict[str, Any], "optuna.Trial | None"], tuple[float, float, int]]
TrialProgress = Callable[[int, int, "float | None"], None]  # trials done, trials, best loss


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
    auc_each_round: bool = False, early_stopping_rounds: int = EARLY_STOPPING_ROUNDS,
) -> TrialScorer:
    """A function scoring one parameter set: (log loss, ROC-AUC, early-stopped rounds).

    With ``folds`` (cross-validation mode): the mean over those inner folds of the training
    part (``lgb.cv``, early stopping on the mean log loss) — much less noisy than one split on
    a small export. With ``tuning_split`` (time mode): fit on the older rows, validate on the
    newer ones. Datasets are binned once and reused by every trial. With a trial, its
    intermediate log loss is reported to Optuna's pruner. Only the log loss is evaluated each
    round unless ``auc_each_round``; the AUC is then measured once, at the best round.
    """
    metrics = [OBJECTIVE_METRIC, *(["auc"] if auc_each_round else [])]
    if folds is not None:
        rows = np.unique(np.concatenate([np.concatenate(pair) for pair in folds]))
        position = np.full(len(y), -1)
        position[rows] = np.arange(rows.size)
        local = [(position[a], position[b]) for a, b in folds]
        X_rows, y_rows = X.iloc[rows], y[rows]
        dataset = _lgb_dataset(X_rows, y_rows, categorical, free_raw_data=False)
        dataset.construct()

        def score_cv(
            params: dict[str, Any], trial: optuna.Trial | None = None
        ) -> tuple[float, float, int]:
            callbacks = [
                lgb.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False)
            ]
            if trial is not None:
                callbacks.append(_cv_pruning_callback(trial))
            result = lgb.cv(
                {**params, "metric": metrics}, dataset, num_boost_round=CSV_MAX_ROUNDS,
                folds=local, callbacks=callbacks, return_cvbooster=not auc_each_round,
            )
            losses = result[f"{VALID_NAME} {OBJECTIVE_METRIC}-mean"]
            if auc_each_round:
                auc = float(result[f"{VALID_NAME} auc-mean"][-1])
            else:
                boosters = result["cvbooster"].boosters
                auc = float(np.mean([
                    roc_auc_score(y_rows[held], booster.predict(
                        X_rows.iloc[held], num_iteration=len(losses)))
                    if np.unique(y_rows[held]).size == 2 else 0.5
                    for booster, (_, held) in zip(boosters, local, strict=True)]))
            return float(losses[-1]), auc, len(losses)

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
            early_stopping_rounds=early_stopping_rounds,
            extra_callbacks=(
                [] if trial is None else [pruning_callback(trial, report_every=REPORT_EVERY)]
            ),
        )
        scores = booster.best_score[VALID_NAME]
        return (float(scores[OBJECTIVE_METRIC]), float(scores["auc"]),
                int(booster.best_iteration or 1))

    return score_split


def _tune(
    score: TrialScorer, n_trials: int, timeout: float | None, seed: int, *,
    learning_rate: float = CSV_LEARNING_RATE, storage: str | None = None,
    study_name: str | None = None, on_trial: TrialProgress | None = None,
) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """Optuna study (seeded TPE, median pruning) of ``suggest_csv_params``, minimising the
    held-out log loss that ``score`` (see ``_trial_scorer``) measures.

    Trials run at a fixed ``learning_rate``: the median pruner compares intermediate
    log losses, which penalises slow learning rates unfairly when they are tuned too. Each
    split runs its own study from scratch (no warm start from another fold, whose training
    part holds this fold's test rows). With ``storage`` the study is kept there under
    ``study_name``; ``on_trial`` hears after every trial.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize", storage=storage, study_name=study_name,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=5, n_warmup_steps=30, interval_steps=REPORT_EVERY
        ),
    )

    def objective(trial: optuna.Trial) -> float:
        params = {**suggest_csv_params(trial, learning_rate), **LGBM_OVERRIDES, "seed": seed}
        loss, auc, rounds = score(params, trial)
        trial.set_user_attr("best_iteration", rounds)
        trial.set_user_attr("valid_auc", auc)
        return loss

    def heard(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if on_trial is not None:
            complete = [t.value for t in study.trials
                        if t.state == optuna.trial.TrialState.COMPLETE]
            on_trial(len(study.trials), n_trials, min(complete) if complete else None)

    started = time.perf_counter()
    study.optimize(objective, n_trials=n_trials, timeout=timeout, gc_after_trial=False,
                   callbacks=[heard])
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise CsvTrainingError("no Optuna trial completed: raise --trials or --timeout")
    best = study.best_trial
    params = {**csv_params_from(best.params, learning_rate), **LGBM_OVERRIDES, "seed": seed}
    rounds = max(1, int(best.user_attrs["best_iteration"]))
    summary = {
        "study_name": study.study_name if storage else None,
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
    categorical: Sequence[str], seed: int, bagged_seeds: int = BAGGED_SEEDS,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Held-out and test predictions of tuned LightGBM and logistic regression.

    Each (fit, held-out) split trains both models on its fit rows (LightGBM on ``X_lgbm``, the
    export's columns plus the engineered ones, averaged over ``bagged_seeds`` seeds since
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
    X_test = X_lgbm.iloc[test_idx]
    for fit_idx, held_idx in splits:
        dataset = _lgb_dataset(X_lgbm.iloc[fit_idx], y[fit_idx], categorical)
        held = np.zeros(held_idx.size)
        X_held = X_lgbm.iloc[held_idx]
        for offset in range(bagged_seeds):
            booster = lgb.train({**params, "seed": seed + offset}, dataset, rounds)
            if first is None:
                first = booster
            held += booster.predict(X_held) / bagged_seeds
            test["lightgbm"] += booster.predict(X_test) / (bagged_seeds * len(splits))
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
DRIFT_P_VALUE = 0.01  # calibration-in-the-large differs between time blocks beyond this


def _forward_splits(fit_idx: np.ndarray, valid_idx: np.ndarray) -> list[tuple[np.ndarray,
                                                                              np.ndarray]]:
    """Forward chaining over the time-ordered fit rows (in ``FORWARD_FIT_BLOCKS`` blocks) and
    then the validation rows: each block is predicted by models fitted on the blocks before."""
    blocks = [*np.array_split(fit_idx, FORWARD_FIT_BLOCKS), valid_idx]
    return [(np.concatenate(blocks[:k]), blocks[k]) for k in range(1, len(blocks))]


def calibration_drift(p: Any, y: Any, blocks: Any) -> dict[str, Any]:
    """Does the calibration of out-of-time predictions drift between time blocks?

    Per block, the calibration-in-the-large offset ``a`` (logits added to every prediction so
    that the block's mean prediction equals its observed rate); a likelihood-ratio test of one
    common offset against one per block (chi-square, blocks − 1 degrees of freedom). When the
    offsets differ beyond ``DRIFT_P_VALUE``, a calibrator fitted on those blocks would carry
    their trend forward: a forecast of the base rate, not a calibration.
    """
    p_arr = np.clip(np.asarray(p, dtype=float), PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    y_arr = np.asarray(y, dtype=float)
    b_arr = np.asarray(blocks)
    z = logit(p_arr)

    def offset(zb: np.ndarray, yb: np.ndarray) -> float:
        target = float(np.clip(yb.sum(), 0.5, yb.size - 0.5))
        return float(brentq(lambda a: expit(zb + a).sum() - target, -30.0, 30.0))

    def loglik(zb: np.ndarray, yb: np.ndarray, a: float) -> float:
        q = np.clip(expit(zb + a), PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
        return float(np.sum(yb * np.log(q) + (1 - yb) * np.log(1 - q)))

    labels = np.unique(b_arr)
    common = offset(z, y_arr)
    offsets = [offset(z[b_arr == b], y_arr[b_arr == b]) for b in labels]
    statistic = 2 * (sum(loglik(z[b_arr == b], y_arr[b_arr == b], a)
                         for b, a in zip(labels, offsets, strict=True))
                     - loglik(z, y_arr, common))
    p_value = float(chi2.sf(max(statistic, 0.0), labels.size - 1)) if labels.size > 1 else 1.0
    return {
        "blocks": int(labels.size),
        "observed_rate": [round(float(y_arr[b_arr == b].mean()), 4) for b in labels],
        "mean_predicted": [round(float(p_arr[b_arr == b].mean()), 4) for b in labels],
        "offset_logits": [round(a, 3) for a in offsets],
        "p_value": p_value,
        "drifts": bool(p_value < DRIFT_P_VALUE),
        "rule": f"one calibration-in-the-large offset per block vs one for all "
                f"(likelihood ratio, chi-square); drift when p < {DRIFT_P_VALUE}",
    }


def _choose_and_calibrate(
    X: pd.DataFrame, y: np.ndarray, splits: Splits, held_out: dict[str, np.ndarray],
    categorical: Sequence[str], seed: int, *, forward: bool,
) -> tuple[ModelChoice, Calibrator, np.ndarray, dict[str, Any] | None]:
    """Choose among tuned LightGBM, default LightGBM, logistic regression and their blend on
    the held-out rows of ``splits`` (training part only) and fit the chosen one's calibrator
    there (identity unless a calibrator gains beyond noise; forward in time when
    ``forward``, and then identity too when the calibration drifts between the time blocks:
    ``calibration_drift``). Returns the choice, the calibrator, the held-out row positions and
    the drift check (None when not forward)."""
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
    drift = None
    if forward:
        drift = calibration_drift(candidates[choice.chosen], y_held, blocks)
        if drift["drifts"] and calibrator.method != "identity":
            kept = calibrator.selection
            calibrator = dataclasses.replace(
                fit_calibrator(candidates[choice.chosen], y_held, method="identity",
                               blocks=blocks, seed=seed),
                selection=(
                    f"identity: the calibration drifts between the time blocks (observed "
                    f"{drift['observed_rate']} vs predicted {drift['mean_predicted']}, "
                    f"p={drift['p_value']:.2g}); a calibrator fitted on them would carry "
                    f"their trend forward (it would have been: {kept})"))
    order = np.argsort(calibration_idx)
    return choice, calibrator, calibration_idx[order], drift


def _tuning_rows(
    rows: np.ndarray, y: np.ndarray, max_rows: int | None, seed: int
) -> np.ndarray:
    """At most ``max_rows`` of ``rows``, stratified by label (all when None or fewer)."""
    if max_rows is None or rows.size <= max_rows:
        return rows
    kept, _ = train_test_split(rows, train_size=max_rows, stratify=y[rows], random_state=seed)
    return np.sort(kept)


def evaluate_split(
    X: pd.DataFrame, y: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray, *,
    fold: int, categorical: Sequence[str], n_trials: int, timeout: float | None, seed: int,
    tuning_split: tuple[np.ndarray, np.ndarray] | None = None, inner_folds: int | None = None,
    speed: CsvSpeed | None = None, storage: str | None = None, study_name: str | None = None,
    on_trial: TrialProgress | None = None,
) -> FoldResult:
    """Tune, fit, blend and calibrate on ``train_idx`` only; score ``test_idx`` with all models.

    The frequency encoding (``training.csv_features``) is fitted on the training part. Without
    ``tuning_split`` (cross-validation), ``speed.inner_folds`` stratified inner folds of the
    training part (at most ``speed.tuning_max_rows`` rows) score the trials (mean inner-fold
    log loss) and ``speed.fit_folds`` inner folds give the out-of-fold predictions that choose
    and calibrate (``inner_folds``, when given, sets both). With ``tuning_split`` = (older fit
    rows, newer validation rows) (time mode), tuning uses the validation rows, predicted by
    models fitted on the older rows; blending and calibration use forward-in-time predictions
    over the whole training part.
    """
    speed = speed or CsvSpeed()
    fit_folds = inner_folds or speed.fit_folds or speed.inner_folds  # given: both
    inner_folds = inner_folds or speed.inner_folds
    cpu_started = time.process_time()
    if np.intersect1d(train_idx, test_idx).size:
        raise ValueError("training and test rows overlap")
    encoder = FrequencyEncoder(categorical).fit(X.iloc[train_idx])
    X_lgbm = encoder.transform(X)
    if tuning_split is None:
        inner = StratifiedKFold(n_splits=inner_folds, shuffle=True, random_state=seed)
        tune_rows = _tuning_rows(train_idx, y, speed.tuning_max_rows, seed)
        tune_splits = [
            (tune_rows[a], tune_rows[b])
            for a, b in inner.split(np.zeros(tune_rows.size), y[tune_rows])
        ]
        fitting = StratifiedKFold(n_splits=fit_folds, shuffle=True, random_state=seed)
        splits = [
            (train_idx[a], train_idx[b])
            for a, b in fitting.split(np.zeros(train_idx.size), y[train_idx])
        ]
        score = _trial_scorer(X_lgbm, y, categorical, folds=tune_splits,
                              auc_each_round=speed.auc_each_round,
                              early_stopping_rounds=speed.early_stopping_rounds)
        tuning_idx = np.sort(tune_rows)
    else:
        fit_idx, valid_idx = tuning_split
        budget = None if speed.tuning_max_rows is None else max(
            speed.tuning_max_rows - valid_idx.size, speed.tuning_max_rows // 2)
        tuning_split = (_tuning_rows(fit_idx, y, budget, seed), valid_idx)
        splits = [tuning_split]
        score = _trial_scorer(X_lgbm, y, categorical, tuning_split=tuning_split,
                              early_stopping_rounds=speed.early_stopping_rounds)
        tuning_idx = np.sort(np.concatenate(tuning_split))
        tuning_split = (fit_idx, valid_idx)
    params, rounds, tuning = _tune(score, n_trials, timeout, seed,
                                   learning_rate=speed.learning_rate, storage=storage,
                                   study_name=study_name, on_trial=on_trial)
    X_train, X_test = X.iloc[train_idx], X.iloc[test_idx]
    baseline_test = {
        DEFAULT_LIGHTGBM: default_lgbm_predict(X_train, y[train_idx], X_test, categorical, seed),
        LOGISTIC: logistic_predict(X_train, y[train_idx], X_test, categorical, seed),
    }
    if tuning_split is None:
        held_out, test, contributions, shap_idx = _fit_tuned_models(
            X, X_lgbm, y, splits, test_idx, params, rounds, categorical, seed,
            speed.bagged_seeds)
    else:  # time mode: forward-in-time predictions over a longer window than the tuning slice
        splits = _forward_splits(*tuning_split)
        held_out = _fit_tuned_models(
            X, X_lgbm, y, splits, test_idx, params, rounds, categorical, seed,
            speed.bagged_seeds)[0]
        # the test rows are scored by models fitted on the whole training part (fit + tuning
        # rows), as the baselines are, not on the older fit rows alone
        _, test, contributions, shap_idx = _fit_tuned_models(
            X, X_lgbm, y, [(np.sort(train_idx), tuning_split[1])], test_idx, params, rounds,
            categorical, seed, speed.bagged_seeds)
    choice, calibrator, calibration_idx, drift = _choose_and_calibrate(
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
        choice=choice, calibration_drift=drift,
        cpu_seconds=time.process_time() - cpu_started,
    )


# ---- running the splits (in parallel processes) -----------------------------------------------


@dataclass(frozen=True)
class SplitTask:
    """One evaluation split: ``name`` for the progress bar, positions in the prepared data."""

    name: str
    fold: int
    train_idx: np.ndarray
    test_idx: np.ndarray
    tuning_split: tuple[np.ndarray, np.ndarray] | None = None
    study_name: str | None = None


_WORKER_QUEUE: Any = None


def _worker_context() -> Any:
    """A fork server that preloads this module: workers start from a clean, single-threaded
    process (a fork of a process that already ran multi-threaded OpenMP can hang)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["training.csv_train"])
    return context


@contextlib.contextmanager
def _callers_main_hidden() -> Iterator[None]:
    """While workers start, hide the caller's script from ``multiprocessing``, which would
    run it again in every worker (a script without a ``__main__`` guard would recurse); the
    workers need only ``training.csv_train``."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _init_worker(queue: Any) -> None:
    global _WORKER_QUEUE
    _WORKER_QUEUE = queue


def _evaluate_task(
    X: pd.DataFrame, y: np.ndarray, categorical: Sequence[str], task: SplitTask,
    options: dict[str, Any], on_trial: TrialProgress | None,
) -> FoldResult:
    return evaluate_split(
        X, y, task.train_idx, task.test_idx, fold=task.fold, categorical=categorical,
        tuning_split=task.tuning_split, study_name=task.study_name, on_trial=on_trial,
        **options,
    )


def _task_in_worker(
    X: pd.DataFrame, y: np.ndarray, categorical: Sequence[str], task: SplitTask,
    options: dict[str, Any], key: int,
) -> FoldResult:
    def on_trial(done: int, total: int, best: float | None) -> None:
        if _WORKER_QUEUE is not None:
            _WORKER_QUEUE.put((key, done, total, best))

    return _evaluate_task(X, y, categorical, task, options, on_trial)


def run_splits(
    X: pd.DataFrame, y: np.ndarray, categorical: Sequence[str], tasks: Sequence[SplitTask], *,
    n_trials: int, timeout: float | None, seed: int, speed: CsvSpeed | None = None,
    inner_folds: int | None = None, storage: str | None = None,
    progress: ProgressCallback | None = None, span: tuple[float, float] = (0.0, 1.0),
) -> list[FoldResult]:
    """Evaluate every split, in ``speed.worker_count`` parallel processes (spawned: each loads
    the libraries once), one LightGBM thread each; the results come back in ``tasks`` order.

    ``timeout`` (seconds of tuning in all) is shared out between the splits. ``progress``
    hears (description, fraction done), the fraction moving within ``span``, after every
    Optuna trial of every split.
    """
    speed = speed or CsvSpeed()
    workers = speed.worker_count(len(tasks))
    options = {"n_trials": n_trials, "seed": seed, "speed": speed, "inner_folds": inner_folds,
               "storage": storage,
               "timeout": None if timeout is None else timeout * workers / len(tasks)}
    state = {i: {"done": 0, "best": None, "finished": False} for i in range(len(tasks))}

    def report() -> None:
        if progress is None:
            return
        share = sum(0.8 * min(s["done"], n_trials) / n_trials + 0.2 * s["finished"]
                    for s in state.values()) / len(tasks)
        finished = sum(s["finished"] for s in state.values())
        text = f"{finished}/{len(tasks)} splits done"
        running = [i for i, s in state.items() if not s["finished"] and s["done"]]
        for i in running[:workers]:
            s = state[i]
            text += f" · {tasks[i].name}: trial {s['done']}/{n_trials}"
            if s["done"] >= n_trials:
                text += " (fitting)"
            elif s["best"] is not None:
                text += f", best log loss {s['best']:.4f}"
        progress(text, span[0] + (span[1] - span[0]) * share)

    if workers == 1:
        results = []
        for i, task in enumerate(tasks):
            def on_trial(done: int, total: int, best: float | None, i: int = i) -> None:
                state[i].update(done=done, best=best)
                report()

            results.append(_evaluate_task(X, y, categorical, task, options, on_trial))
            state[i]["finished"] = True
            report()
        return results

    context = _worker_context()
    queue = context.Queue()
    with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                             initializer=_init_worker, initargs=(queue,)) as pool:
        with _callers_main_hidden():  # workers start on submit
            futures = {pool.submit(_task_in_worker, X, y, categorical, task, options, i): i
                       for i, task in enumerate(tasks)}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            while True:
                try:
                    key, done, _, best = queue.get_nowait()
                except queue_module.Empty:
                    break
                state[key].update(done=done, best=best)
            for future in finished:
                state[futures[future]]["finished"] = True
                if future.exception() is not None:  # a split's error: stop the others
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise future.exception()
            report()
        return [future.result() for future in sorted(futures, key=futures.__getitem__)]


def cross_validation_tasks(y: np.ndarray, seed: int, study_prefix: str | None = None,
                           label: str = "random fold") -> list[SplitTask]:
    """Seeded stratified ``OUTER_FOLDS``-fold splits as tasks."""
    outer = StratifiedKFold(n_splits=OUTER_FOLDS, shuffle=True, random_state=seed)
    return [
        SplitTask(name=f"{label} {fold}/{OUTER_FOLDS}", fold=fold, train_idx=train_idx,
                  test_idx=test_idx,
                  study_name=f"{study_prefix}-random-fold{fold}" if study_prefix else None)
        for fold, (train_idx, test_idx) in enumerate(outer.split(np.zeros(len(y)), y), start=1)
    ]


def cross_validate(
    X: pd.DataFrame, y: np.ndarray, categorical: Sequence[str], *, n_trials: int,
    timeout: float | None, seed: int, progress: ProgressCallback | None = None,
    inner_folds: int | None = None, speed: CsvSpeed | None = None,
) -> list[FoldResult]:
    """Seeded stratified 5-fold evaluation; every fold is tuned and calibrated on its own."""
    return run_splits(X, y, categorical, cross_validation_tasks(y, seed), n_trials=n_trials,
                      timeout=timeout, seed=seed, speed=speed, inner_folds=inner_folds,
                      progress=progress)


@dataclass(frozen=True)
class ForwardPlan:
    """The time split of a flat export: positions of the fit, tuning and test rows."""

    fit_idx: np.ndarray
    valid_idx: np.ndarray
    test_idx: np.ndarray
    windows: dict[str, Any]

    def task(self, study_name: str | None = None) -> SplitTask:
        return SplitTask(name="forward", fold=1,
                         train_idx=np.concatenate([self.fit_idx, self.valid_idx]),
                         test_idx=self.test_idx, tuning_split=(self.fit_idx, self.valid_idx),
                         study_name=study_name)


def plan_forward(y: np.ndarray, times: pd.Series, field_name: str) -> ForwardPlan:
    """Oldest 60% fit, next 20% tune, newest 20% test — checked before any work: every slice,
    and every forward block of the fit rows, must hold both label values."""
    positions = pd.DataFrame({"position": np.arange(len(y)), "time": times.to_numpy()})
    try:
        split = time_split(positions, "time", fractions=TIME_FRACTIONS)
    except ValueError as exc:
        raise CsvTrainingError(f"{field_name}: {exc}") from None
    fit_idx, valid_idx, test_idx = (
        part["position"].to_numpy() for part in (split.train, split.valid, split.test)
    )
    windows = split.windows()
    for name, idx in (("train", fit_idx), ("tuning", valid_idx), ("test", test_idx)):
        if np.unique(y[idx]).size < 2:
            raise CsvTrainingError(
                f"label column: the {name} slice of the time split ({field_name}) holds only "
                f"label {int(y[idx][0])} on its {idx.size} rows; more rows or a longer period "
                "are needed"
            )
    for k, block in enumerate(np.array_split(fit_idx, FORWARD_FIT_BLOCKS)[:1], start=1):
        if np.unique(y[block]).size < 2:
            raise CsvTrainingError(
                f"label column: the oldest forward block {k} of the time split ({field_name}, "
                f"{block.size} rows) holds only label {int(y[block][0])}: models fitted on it "
                "cannot predict the next block; more rows or a longer period are needed"
            )
    return ForwardPlan(fit_idx=fit_idx, valid_idx=valid_idx, test_idx=test_idx, windows=windows)


def time_validate(
    X: pd.DataFrame, y: np.ndarray, times: pd.Series, categorical: Sequence[str], *,
    n_trials: int, timeout: float | None, seed: int, speed: CsvSpeed | None = None,
) -> tuple[list[FoldResult], dict[str, Any]]:
    """Time split: older rows train, the next slice tunes and calibrates, the newest test."""
    plan = plan_forward(y, times, "time column")
    result = run_splits(X, y, categorical, [plan.task()], n_trials=n_trials, timeout=timeout,
                        seed=seed, speed=speed)
    return result, plan.windows


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
                         "calibration_methods": ",".join(report["calibration"]["methods"]),
                         "guard_flagged": ",".join(report["guard"].get("flagged", {})),
                         "evaluations_disagree": str(report["evaluation"].get(
                             "agreement", {}).get("disagree", False))})
        mlflow.log_dict(report, "report.json")
        for path in plots.values():
            mlflow.log_artifact(str(path), artifact_path="plots")
        return {"experiment": experiment, "experiment_id": experiment_id,
                "run_id": run.info.run_id}


def _weighted_auc(groups: np.ndarray, positive: np.ndarray, weights: np.ndarray,
                  n_groups: int) -> float:
    """ROC-AUC with row weights; ``groups`` are the dense ranks of the scores (ties share)."""
    pos = np.bincount(groups, weights * positive, minlength=n_groups)
    neg = np.bincount(groups, weights * (1 - positive), minlength=n_groups)
    below = np.cumsum(neg) - neg
    total = pos.sum() * neg.sum()
    return float((pos * (below + 0.5 * neg)).sum() / total) if total > 0 else np.nan


def bootstrap_auc_difference(
    y: Any, p_a: Any, p_b: Any, *, n_boot: int = AGREEMENT_BOOT, seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """AUC(a) − AUC(b) on the same rows with its paired-bootstrap percentile interval (the
    resamples as row weights on the scores' ranks: fast enough for thousands of rows)."""
    y_arr = np.asarray(y, dtype=float).ravel()
    ranks = [np.unique(np.asarray(p, dtype=float).ravel(), return_inverse=True)[1]
             for p in (p_a, p_b)]
    sizes = [int(r.max()) + 1 for r in ranks]
    ones = np.ones(y_arr.size)
    point = (_weighted_auc(ranks[0], y_arr, ones, sizes[0])
             - _weighted_auc(ranks[1], y_arr, ones, sizes[1]))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        weights = np.bincount(rng.integers(0, y_arr.size, y_arr.size), minlength=y_arr.size)
        weights = weights.astype(float)
        draws.append(_weighted_auc(ranks[0], y_arr, weights, sizes[0])
                     - _weighted_auc(ranks[1], y_arr, weights, sizes[1]))
    tail = (1 - confidence) / 2
    low, high = np.nanquantile(draws, [tail, 1 - tail])
    return {"difference": float(point), "low": float(low), "high": float(high),
            "confidence": confidence, "n_boot": n_boot}


def evaluation_agreement(
    forward: dict[str, np.ndarray], random: dict[str, np.ndarray], seed: int = 0,
    n_boot: int = AGREEMENT_BOOT,
) -> dict[str, Any]:
    """Random k-fold vs forward-in-time evaluation on the same (newest) test rows.

    Both predicted every row of the forward test slice: the random folds with models that saw
    rows from before and after it, the forward split with models that saw only the past. The
    AUC difference (random − forward) of the shipped model gets a paired-bootstrap 95%
    interval; the two disagree beyond noise when the interval excludes 0.
    """
    rows = forward["index"]
    y = forward["y"]
    diff = bootstrap_auc_difference(y, random["ours"][rows], forward["ours"], n_boot=n_boot,
                                    seed=seed)
    by_model = {
        name: {"random": float(roc_auc_score(y, random[name][rows])),
               "forward": float(roc_auc_score(y, forward[name]))}
        for name in ("ours", "lightgbm_default", "logistic_regression")
    }
    random_all = float(roc_auc_score(random["y"], random["ours"]))
    disagree = diff["low"] > 0 or diff["high"] < 0
    interval = (f"{diff['difference']:+.3f}, 95% interval [{diff['low']:+.3f}, "
                f"{diff['high']:+.3f}]")
    if diff["low"] > 0:
        statement = (
            f"random cross-validation flatters: AUC {by_model['ours']['random']:.3f} vs "
            f"{by_model['ours']['forward']:.3f} forward in time on the same newest rows "
            f"({interval}); the rows are in time order — trust the forward figure")
    elif diff["high"] < 0:
        statement = (f"the forward evaluation scores higher than random cross-validation on "
                     f"the same rows ({interval}): the newest rows differ from the rest")
    else:
        statement = f"random and forward evaluations agree within noise ({interval})"
    return {"rows": int(rows.size), "auc_random_minus_forward": diff,
            "auc_by_model_on_forward_test_rows": by_model, "random_auc_all_rows": random_all,
            "disagree": bool(disagree), "statement": statement,
            "rule": "paired bootstrap of the AUC difference on the forward test rows; "
                    "disagreement when its 95% interval excludes 0"}


def _metrics_block(pooled: dict[str, np.ndarray]) -> tuple[dict, dict]:
    y = pooled["y"]
    full = {name: classification_metrics(y, pooled[name]) for name in MODEL_NAMES}
    return full, {name: {key: full[name][key] for key in HEADLINE_METRICS} for name in full}


def _check_storage(storage: str | None) -> None:
    """Open the Optuna storage before any work; a clear error naming ``--storage`` if not."""
    if not storage:
        return
    try:
        from sqlalchemy.engine import make_url

        shown = make_url(storage).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is reported below
        shown = storage.split("@")[-1]
    try:
        optuna.storages.RDBStorage(storage, engine_kwargs={"pool_pre_ping": True})
    except Exception as exc:  # noqa: BLE001 - any driver error means unusable
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CsvTrainingError(
            f"--storage {shown} cannot be used: {first[:300]}") from None


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
    order_is_time: bool = False,
    random_check: bool = True,
    settings: Settings | None = None,
    plots_dir: Path | str | None = None,
    log_to_mlflow: bool = True,
    progress: ProgressCallback | None = None,
    keep_predictions: bool = False,
    inner_folds: int | None = None,
    encoding: str | None = None,
    storage: str | None = None,
    speed: CsvSpeed | None = None,
) -> dict[str, Any]:
    """Train and evaluate on a CRM export; return the report (see the module docstring).

    ``n_trials`` Optuna trials run per split (``timeout`` seconds is the total tuning budget,
    shared by the splits). ``time_col`` or ``order_is_time`` (the rows are in time order)
    make the forward-in-time split the headline; with ``random_check`` the random k-fold
    evaluation runs beside it and the two are compared (``evaluation_agreement``). Plots go to
    ``plots_dir`` (a temporary folder when None). With ``keep_predictions`` the pooled
    predictions of the headline evaluation are returned under the private key
    ``_predictions`` (and the random ones under ``_random_predictions``; not JSON; for tests
    and benchmarks). ``inner_folds`` overrides ``speed.inner_folds``; ``encoding`` is the
    CSV's text encoding (default UTF-8; see ``read_export``); ``storage`` an Optuna storage
    URL that keeps every split's study; ``speed`` the search and fit settings (``CsvSpeed``).
    """
    started = time.perf_counter()
    speed = speed or CsvSpeed()
    if inner_folds is not None and inner_folds < 2:
        raise CsvTrainingError(f"inner_folds must be at least 2, got {inner_folds}")
    if n_trials < 1:
        raise CsvTrainingError(f"--trials must be at least 1, got {n_trials}")
    if timeout is not None and timeout <= 0:
        raise CsvTrainingError(f"--timeout must be positive seconds, got {timeout}")
    if not 0.5 < guard_threshold <= 1.0:
        raise CsvTrainingError(f"--guard-threshold must lie in (0.5, 1], got {guard_threshold}")
    if time_col and order_is_time:
        raise CsvTrainingError("--time and --order-is-time exclude each other: give the time "
                               "column, or say that the rows are in time order, not both")
    _check_storage(storage)
    file = Path(path)
    frame = read_export(file, encoding)
    file_notes = list(frame.attrs.get("file_notes", []))
    data = clean_export(frame, label, id_col, time_col, drop, allow)
    del frame
    times = data.times
    if order_is_time:
        times = pd.Series(np.arange(len(data.y)), name="row order")
    clock = f"time column {time_col!r}" if time_col else "--order-is-time (row order)"
    plan = plan_forward(data.y, times, clock) if times is not None else None
    if progress:
        progress("data read", 0.02)

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
        progress("leakage guard", 0.06)

    folds_used = inner_folds or speed.inner_folds
    prefix = (f"csv-{re.sub(r'[^A-Za-z0-9_.-]+', '-', file.stem)}-"
              f"{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S}") if storage else None
    tasks: list[SplitTask] = []
    if plan is not None:
        tasks.append(plan.task(f"{prefix}-forward" if prefix else None))
    if plan is None or random_check:
        tasks.extend(cross_validation_tasks(data.y, seed, prefix))
    results = run_splits(X, data.y, categorical, tasks, n_trials=n_trials, timeout=timeout,
                         seed=seed, speed=speed, inner_folds=inner_folds, storage=storage,
                         progress=progress, span=(0.06, 0.95))
    forward_results = results[:1] if plan is not None else []
    random_results = results[1:] if plan is not None else results
    primary = forward_results or random_results
    pooled = pooled_predictions(primary, len(data.y))
    y_eval = pooled["y"]
    report_metrics, comparison = _metrics_block(pooled)

    random_protocol = (
        f"seeded stratified {OUTER_FOLDS}-fold cross-validation (seed {seed}); per outer "
        f"fold: frequency encoding fitted on the training part; {folds_used} stratified "
        "inner folds of the training part score every Optuna trial (mean inner-fold log "
        "loss); the tuned LightGBM, a default LightGBM and a logistic regression fitted on "
        "the same inner folds give out-of-fold predictions that choose the model to ship "
        "(or their blend) and its calibration; the test fold is never seen"
    )
    warnings: list[str] = list(file_notes)
    for column, why in data.guard.flagged.items():
        warnings.append(f"column {column!r}: {why}")
    evaluation: dict[str, Any] = {
        "mode": ("order" if order_is_time else "time") if plan is not None
        else "cross-validation",
        "protocol": random_protocol if plan is None else (
            f"forward in time ({clock}): oldest 60% fit, next 20% tune, newest 20% test; "
            "model choice and calibration on forward-in-time predictions over the fit and "
            "tuning rows"),
        "evaluated_rows": int(y_eval.size),
        "time_windows": plan.windows if plan is not None else None,
        "folds": [r.summary() for r in primary],
    }
    random_pooled = None
    if forward_results and random_results:
        random_pooled = pooled_predictions(random_results, len(data.y))
        agreement = evaluation_agreement(pooled, random_pooled, seed=seed)
        evaluation["random"] = {
            "protocol": random_protocol,
            "evaluated_rows": int(random_pooled["y"].size),
            "comparison": _metrics_block(random_pooled)[1],
            "model_choice": model_choice_summary(random_results),
            "folds": [r.summary() for r in random_results],
        }
        evaluation["agreement"] = agreement
        if agreement["disagree"]:
            warnings.append(agreement["statement"])
    drifts = [r.calibration_drift for r in primary if r.calibration_drift]
    for drift in drifts:
        if drift["drifts"]:
            warnings.append(
                f"the base rate drifts over time (per forward block observed "
                f"{drift['observed_rate']} vs predicted {drift['mean_predicted']}, "
                f"p={drift['p_value']:.2g}): probabilities are the model's own, not "
                "recalibrated to a trend; watch the newest outcomes")
    report: dict[str, Any] = {
        "source": {"file": file.name, "label": label, "id_column": id_col,
                   "time_column": time_col, "order_is_time": order_is_time, "seed": seed,
                   "notes": file_notes},
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
        "evaluation": evaluation,
        "model": report_metrics["ours"],
        "baselines": {name: report_metrics[name]
                      for name in ("lightgbm_default", "logistic_regression")},
        "comparison": comparison,
        "shipped_minus_baselines": {
            name: {"log_loss": paired_bootstrap(y_eval, pooled["ours"], pooled[name],
                                                seed=seed),
                   "roc_auc": bootstrap_auc_difference(y_eval, pooled["ours"], pooled[name],
                                                       seed=seed)}
            for name in ("lightgbm_default", "logistic_regression")},
        "calibration": {
            "ece_before": expected_calibration_error(y_eval, pooled["ours_uncalibrated"]),
            "ece_after": expected_calibration_error(y_eval, pooled["ours"]),
            "log_loss_before": comparison["ours_uncalibrated"]["log_loss"],
            "log_loss_after": comparison["ours"]["log_loss"],
            "slope_intercept_after": {k: report_metrics["ours"][k] for k in (
                "calibration_slope", "calibration_intercept")},
            "tiers_predicted_vs_observed": report_metrics["ours"]["tier_calibration"],
            "methods": [r.calibrator.method for r in primary],
            "selections": [r.calibrator.selection for r in primary],
            "drift": drifts or None,
            "fitted_on": "held-out predictions inside each training part (never the test rows); "
                         "identity unless a calibrator gains beyond noise (and, forward in "
                         "time, unless the calibration drifts between the time blocks)",
        },
        "model_choice": model_choice_summary(primary),
        "speed": dataclasses.asdict(speed) | {"inner_folds": folds_used,
                                              "workers_used": speed.worker_count(len(tasks)),
                                              "splits": len(tasks),
                                              "splits_cpu_seconds": round(sum(
                                                  r.cpu_seconds for r in results), 1)},
        "warnings": warnings,
    }

    temp_dir = None
    if plots_dir is None:
        temp_dir = tempfile.TemporaryDirectory(prefix="leadscore-csv-")
        plots_dir = temp_dir.name
    try:
        plots = _plots(pooled, primary, X, Path(plots_dir))
        report["plots"] = {name: p.name for name, p in plots.items()}
        report["seconds"] = round(time.perf_counter() - started, 1)
        if log_to_mlflow:
            params = {
                "label": label, "mode": report["evaluation"]["mode"], "n_trials": n_trials,
                "timeout": timeout, "guard_threshold": guard_threshold, "seed": seed,
                "rows": len(data.y), "features": len(X.columns),
                "guard_dropped": ",".join(sorted(data.guard.dropped)),
                "guard_flagged": ",".join(sorted(data.guard.flagged)),
            }
            report["mlflow"] = _log_to_mlflow(
                settings or get_settings(), f"csv-{file.stem}", report, plots, params
            )
    finally:
        if temp_dir is not None:
            temp_dir.cleanup()
    if progress:
        progress("done", 1.0)
    if keep_predictions:
        report["_predictions"] = pooled
        if random_pooled is not None:
            report["_random_predictions"] = random_pooled
    return report
