"""Weekly data and prediction drift of the logged predictions against the champion's reference.

The reference (the contract is in :mod:`training.drift_reference`) is written by training only
when a model is promoted to champion, and carries that model's version; :func:`load_reference`
checks it against the registry's champion before any report is measured against it.

What a report holds (``drift.json`` beside Evidently's ``drift.html``)
--------------------------------------------------------------------
* data drift per feature (Evidently ``DataDriftPreset``) and overall: ``drift_share`` = share of
  feature columns whose drift test fails, ``dataset_drift`` = ``drift_share >= threshold``;
* prediction drift of ``probability`` and ``tier`` (Evidently ``ValueDrift``);
* ``cohort``: ROC-AUC (Evidently ``RocAuc`` via ``ClassificationPreset``, ``cohort.html``) and
  ECE (10 bins) of the leads whose outcome window closed by the report's end
  (``submitted_at + conversion_window_days <= until``), joined with the CRM's outcomes.

Drift tests: Evidently's defaults for large samples (normed Wasserstein distance for numbers,
Jensen-Shannon distance for categories, threshold 0.1 — effect sizes, so 100k rows do not flag
trivial differences). When either sample has at most 1,000 rows the effect-size estimates are
too noisy (high-cardinality categories look drifted), so calibrated tests are used instead:
K-S for numbers, chi-square (z-test when binary) for categories, drifted when p < 0.01 (strict,
so that with dozens of columns a quiet week does not collect false alarms). Above 20,000 rows a
seeded sample of 20,000 is tested (``n_tested``); counts and shares use every row.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crm_data.prediction_log import feature_column
from leadscore.config import Settings
from leadscore.schemas import TIERS
from training.drift_reference import (
    PREDICTION_COLUMNS,
    ReferenceFileError,
    ReferenceInfo,
    read_reference,
)

EXIT_QUIET = 0
EXIT_BAD_INPUT = 2
EXIT_DRIFT = 3
EXIT_ENVIRONMENT = 4
SMALL_SAMPLE_ROWS = 1000
SMALL_SAMPLE_P_VALUE = 0.01
# Drift tests run on at most this many rows per side (seeded sample): the distance measures
# are effect sizes, estimated to about ±0.01 from 20k rows, and Evidently's cost grows with rows.
DRIFT_SAMPLE_ROWS = 20_000
SAMPLE_SEED = 0
MISSING_CATEGORY = "<missing>"
ECE_BINS = 10
MIN_COHORT_ROWS = 30


class DriftInputError(ValueError):
    """Missing or malformed input of a drift report; the message says what and where."""


class DriftEnvironmentError(RuntimeError):
    """The report could not be made for a reason of the machine, not of its input (a read-only
    or full disk, a store that cannot be opened); the message says what and where."""


def os_problem(exc: BaseException) -> str:
    """A short description of an OS or SQLite failure (``Read-only file system``)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def load_reference(settings: Settings) -> tuple[pd.DataFrame, ReferenceInfo]:
    """The champion's reference sample and its description; clear error when absent or stale.

    The reference carries the model version it belongs to; when the registry has a champion
    and it is another version (a reference left behind by an earlier champion, or written by
    hand), the report refuses it instead of measuring drift against the wrong baseline.
    """
    try:
        frame, info = read_reference(settings)
    except ReferenceFileError as exc:
        raise DriftInputError(str(exc)) from None
    champion = champion_version(settings)
    if champion is not None and champion != info.model_version:
        raise DriftInputError(
            f"the drift reference belongs to {info.model_name} version {info.model_version}, "
            f"but the champion is version {champion}: retrain and promote, or restore the "
            "champion's reference (training writes it on promotion)"
        )
    return frame, info


def champion_version(settings: Settings) -> str | None:
    """The registry's champion version, or None when there is no store or no champion."""
    if not mlflow_store_exists(settings):
        return None
    import mlflow

    from training.registry import CHAMPION, alias_version

    uri = settings.tracking_uri
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = alias_version(client, settings.model_name, CHAMPION)
    return None if version is None else str(version.version)


@dataclass(frozen=True)
class ColumnDrift:
    """Drift test result of one column."""

    column: str
    score: float
    method: str
    threshold: float
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "score": _num(self.score), "method": self.method,
                "threshold": _num(self.threshold), "drifted": self.drifted}


@dataclass
class DriftResult:
    """The numbers of one report (``summary`` is ``drift.json``) and the files written."""

    summary: dict[str, Any]
    columns: list[ColumnDrift]
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return int(self.summary["exit_code"])

    @property
    def dataset_drift(self) -> bool:
        return bool(self.summary["dataset_drift"])

    @property
    def drift_share(self) -> float:
        return float(self.summary["drift_share"])


def _num(value: Any) -> float | None:
    """A JSON-safe float (None for NaN/inf/None)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _prepare(
    frame: pd.DataFrame, columns: dict[str, str], categorical: set[str], source: str
) -> pd.DataFrame:
    """Select ``columns`` (frame column → model column) and give them the types Evidently reads."""
    missing = [src for src in columns if src not in frame.columns]
    if missing:
        raise DriftInputError(f"{source} lack column(s) {missing}")
    out = pd.DataFrame(index=range(len(frame)))
    for src, name in columns.items():
        values = frame[src].reset_index(drop=True)
        if name in categorical:
            out[name] = values.astype("object").where(values.notna(), MISSING_CATEGORY).astype(str)
        else:
            if values.dtype == bool:
                values = values.astype(int)
            numeric = pd.to_numeric(values, errors="coerce")
            bad = int((numeric.isna() & values.notna()).sum())
            if bad:
                raise DriftInputError(
                    f"{source}: column '{src}' has {bad} non-numeric value(s); declare it in "
                    "'categorical_columns' of reference.json if it is a category"
                )
            out[name] = numeric.astype(float)
    return out


def _methods(
    current: pd.DataFrame, reference: pd.DataFrame, categorical: set[str]
) -> dict[str, str] | None:
    """Per-column tests for small samples (see the module docstring); None = Evidently's."""
    if min(len(current), len(reference)) > SMALL_SAMPLE_ROWS:
        return None
    methods = {}
    for column in current.columns:
        if column in categorical:
            n_values = pd.concat([current[column], reference[column]]).nunique()
            methods[column] = "chisquare" if n_values > 2 else "z"
        else:
            methods[column] = "ks"
    return methods


def _sample(frame: pd.DataFrame) -> pd.DataFrame:
    """At most ``DRIFT_SAMPLE_ROWS`` rows, drawn with a fixed seed (the frame when smaller)."""
    if len(frame) <= DRIFT_SAMPLE_ROWS:
        return frame
    return frame.sample(DRIFT_SAMPLE_ROWS, random_state=SAMPLE_SEED).reset_index(drop=True)


def _column_results(snapshot: Any) -> dict[str, ColumnDrift]:
    """Per-column ``ValueDrift`` results of a snapshot: score, method, threshold, verdict."""
    scores: dict[str, tuple[float, str, float]] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith(":ValueDrift"):
            scores[config["column"]] = (
                float(metric["value"]), str(config.get("method")), float(config.get("threshold"))
            )
    failed = {
        test.metric_config.params.get("column")
        for test in snapshot.tests_results
        if test.metric_config.params.get("type", "").endswith(":ValueDrift")
        and test.status == "FAIL"
    }
    return {
        column: ColumnDrift(column, score, method, threshold, column in failed)
        for column, (score, method, threshold) in scores.items()
    }


def _run_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    feature_columns: list[str],
    categorical: set[str],
    threshold: float,
) -> tuple[Any, dict[str, ColumnDrift]]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    columns = [*feature_columns, *PREDICTION_COLUMNS]
    cat = categorical | {"tier"}
    definition = DataDefinition(
        numerical_columns=[c for c in columns if c not in cat],
        categorical_columns=[c for c in columns if c in cat],
    )
    methods = _methods(current[columns], reference[columns], cat)
    p_value = None if methods is None else SMALL_SAMPLE_P_VALUE
    report = Report(
        [
            DataDriftPreset(
                columns=feature_columns,
                drift_share=threshold,
                per_column_method=None if methods is None else
                {c: methods[c] for c in feature_columns},
                threshold=p_value,
            ),
            *(ValueDrift(column=c, method=None if methods is None else methods[c],
                         threshold=p_value)
              for c in PREDICTION_COLUMNS),
        ],
        include_tests=True,
    )
    with warnings.catch_warnings():
        # Evidently's correlation widgets divide by the zero spread of constant columns
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(
            Dataset.from_pandas(current[columns], data_definition=definition),
            Dataset.from_pandas(reference[columns], data_definition=definition),
        )
    return snapshot, _column_results(snapshot)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE over ``n_bins`` equal-width bins, each weighted by its share of rows."""
    from training.evaluate import expected_calibration_error as ece

    return ece(y, p, n_bins=n_bins)


def _cohort_quality(cohort: pd.DataFrame, out_dir: Path) -> dict[str, Any]:
    """ROC-AUC (Evidently) and ECE of a cohort with known outcomes; writes ``cohort.html``."""
    n = len(cohort)
    y = cohort["converted"].to_numpy(dtype=int)
    p = cohort["probability"].to_numpy(dtype=float)
    result: dict[str, Any] = {
        "n": n, "converted": int(y.sum()), "conversion": _num(y.mean()) if n else None,
        "mean_probability": _num(p.mean()) if n else None, "auc": None, "ece": None,
        "note": None,
    }
    if n < MIN_COHORT_ROWS:
        result["note"] = f"only {n} lead(s) with a closed outcome window (need {MIN_COHORT_ROWS})"
        return result
    result["ece"] = _num(expected_calibration_error(y, p))
    if y.min() == y.max():
        result["note"] = "every lead of the cohort has the same outcome: AUC undefined"
        return result

    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset
    from sklearn.exceptions import UndefinedMetricWarning

    frame = pd.DataFrame({"converted": y, "probability": p})
    definition = DataDefinition(
        numerical_columns=["probability"],
        categorical_columns=["converted"],
        classification=[BinaryClassification(
            target="converted", prediction_probas="probability", pos_label=1)],
    )
    with warnings.catch_warnings():
        # label metrics at Evidently's 0.5 cut-off are undefined for rare conversions
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        snapshot = Report([ClassificationPreset()]).run(
            Dataset.from_pandas(frame, data_definition=definition), None
        )
    for metric in snapshot.dict()["metrics"]:
        if metric["config"].get("type", "").endswith(":RocAuc"):
            result["auc"] = _num(metric["value"])
    snapshot.save_html(str(out_dir / "cohort.html"))
    return result


def matured_cohort(
    predictions: pd.DataFrame,
    outcomes: pd.DataFrame | None,
    until: datetime,
    conversion_window_days: int,
) -> pd.DataFrame | None:
    """Predictions whose outcome window closed by ``until``, joined with outcomes; None if none."""
    from crm_data.prediction_log import join_outcomes

    if outcomes is None or predictions.empty:
        return None
    window = pd.Timedelta(days=conversion_window_days)
    closed = predictions[predictions["submitted_at"] + window <= pd.Timestamp(until)]
    if closed.empty:
        return None
    return join_outcomes(closed, outcomes, conversion_window_days)


def _prediction_summary(
    current: pd.DataFrame, reference: pd.DataFrame, results: dict[str, ColumnDrift]
) -> dict[str, Any]:
    def shares(values: pd.Series) -> dict[str, float]:
        counts = values.value_counts(normalize=True)
        return {t: round(float(counts.get(t, 0.0)), 6) for t in TIERS}

    probability = results["probability"].to_dict() | {
        "mean_current": _num(current["probability"].mean()),
        "mean_reference": _num(reference["probability"].mean()),
    }
    tier = results["tier"].to_dict() | {
        "share_current": shares(current["tier"]),
        "share_reference": shares(reference["tier"]),
    }
    for entry in (probability, tier):
        entry.pop("column")
    return {"probability": probability, "tier": tier}


def drift_report(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    feature_columns: list[str],
    categorical_columns: list[str],
    outcomes: pd.DataFrame | None,
    out_dir: Path,
    threshold: float,
    *,
    cohort_predictions: pd.DataFrame | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    week: str | None = None,
    model: dict[str, str] | None = None,
    conversion_window_days: int = 30,
) -> DriftResult:
    """Drift of ``current`` (rows read from the prediction log) against ``reference``.

    ``outcomes`` is the CRM's outcomes table (or None); the quality cohort is taken from
    ``cohort_predictions`` (default: ``current``) — the rows whose outcome window closed by
    ``until``. Writes ``drift.html``, ``drift.json`` (and ``cohort.html``) into ``out_dir``.
    """
    if not 0.0 < threshold <= 1.0:
        raise DriftInputError(f"drift share threshold {threshold} must lie in (0, 1]")
    if current.empty:
        raise DriftInputError("no predictions in the period: nothing to compare")
    feature_columns = list(feature_columns)
    categorical = set(categorical_columns)
    out_dir.mkdir(parents=True, exist_ok=True)

    log_columns = {feature_column(c): c for c in feature_columns}
    log_columns |= {c: c for c in PREDICTION_COLUMNS}
    typed_categorical = categorical | {"tier"}
    cur = _prepare(current, log_columns, typed_categorical, "logged predictions")
    ref = _prepare(reference, {c: c for c in [*feature_columns, *PREDICTION_COLUMNS]},
                   typed_categorical, "reference")

    # A feature that is entirely missing on one side is a broken pipeline: drifted, untested.
    empty = [
        c for c in feature_columns
        if c not in categorical and (cur[c].isna().all() or ref[c].isna().all())
    ]
    tested = [c for c in feature_columns if c not in empty]
    if not tested:
        raise DriftInputError(f"every feature column is empty in one sample: {empty}")
    snapshot, results = _run_drift(_sample(cur), _sample(ref), tested, categorical, threshold)
    snapshot.save_html(str(out_dir / "drift.html"))

    column_results = [results[c] for c in tested] + [
        ColumnDrift(c, 1.0, "all values missing", 0.0, True) for c in empty
    ]
    drifted = [r for r in column_results if r.drifted]
    drift_share = len(drifted) / len(feature_columns)
    dataset_drift = drift_share >= threshold

    until_ts = until or current["submitted_at"].max().to_pydatetime()
    cohort_source = current if cohort_predictions is None else cohort_predictions
    cohort_frame = matured_cohort(cohort_source, outcomes, until_ts, conversion_window_days)
    cohort = None if cohort_frame is None else _cohort_quality(cohort_frame, out_dir)

    versions = current["model_version"].astype(str).value_counts() \
        if "model_version" in current.columns else pd.Series(dtype=int)
    summary: dict[str, Any] = {
        "week": week,
        "since": (since or current["submitted_at"].min()).isoformat(),
        "until": pd.Timestamp(until_ts).isoformat(),
        "n_current": len(current),
        "n_reference": len(reference),
        "n_tested": {"current": min(len(cur), DRIFT_SAMPLE_ROWS),
                     "reference": min(len(ref), DRIFT_SAMPLE_ROWS)},
        "n_degraded": int(current["degraded"].sum()) if "degraded" in current.columns else 0,
        "threshold": threshold,
        "dataset_drift": dataset_drift,
        "drift_share": round(drift_share, 6),
        "drifted_columns": [
            {"column": r.column, "score": _num(r.score), "method": r.method} for r in drifted
        ],
        "columns": [r.to_dict() for r in column_results],
        "prediction_drift": _prediction_summary(cur, ref, results),
        "cohort": cohort,
        "model": model or {},
        "model_versions_logged": {str(k): int(v) for k, v in versions.items()},
        "exit_code": EXIT_DRIFT if dataset_drift else EXIT_QUIET,
    }
    (out_dir / "drift.json").write_text(json.dumps(summary, indent=2))
    paths = {"html": out_dir / "drift.html", "json": out_dir / "drift.json"}
    if (out_dir / "cohort.html").exists() and cohort and cohort.get("auc") is not None:
        paths["cohort_html"] = out_dir / "cohort.html"
    return DriftResult(summary=summary, columns=column_results, paths=paths)


def mlflow_store_exists(settings: Settings) -> bool:
    """True when the tracking store is reachable without creating one (SQLite file exists)."""
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).exists()
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file://")).exists()
    return "://" in uri


def log_to_mlflow(
    settings: Settings, label: str, summary: dict[str, Any], files: list[Path]
) -> str | None:
    """Log a weekly report to MLflow experiment ``drift``; returns the run id (None: no store).

    Only aggregate numbers and the report files go to MLflow (no identifiers).
    """
    if not mlflow_store_exists(settings):
        return None
    import mlflow

    from training.registry import setup_tracking

    experiment_id = setup_tracking(settings, experiment_name="drift")
    model = summary.get("model") or {}
    tags = {"week": label, "model_name": str(model.get("name", "")),
            "model_version": str(model.get("version", ""))}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"drift-{label}", tags=tags):
        metrics = {
            "drift_share": summary["drift_share"],
            "dataset_drift": float(summary["dataset_drift"]),
            "n_current": float(summary["n_current"]),
            "probability_drift_score": summary["prediction_drift"]["probability"]["score"],
            "tier_drift_score": summary["prediction_drift"]["tier"]["score"],
        }
        cohort = summary.get("cohort") or {}
        for key in ("auc", "ece", "n"):
            if cohort.get(key) is not None:
                metrics[f"cohort_{key}"] = float(cohort[key])
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        for path in files:
            if path.exists():
                mlflow.log_artifact(str(path))
        return mlflow.active_run().info.run_id
