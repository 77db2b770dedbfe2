"""The product's uplift model: what each follow-up channel does for which lead, learned on the
randomised leads of a work folder (``leadscore uplift train`` without ``--csv``).

Rows: the training set's leads (features as of each lead's creation, label = converted within
the window; ``features.training_set``) joined with the follow-up each lead got
(``outcomes.followup_channel``). Only the randomised leads are used — arm ``exploration`` with
the probability of their draw — from two sources:

* the history: the CRM's per-lead random follow-up (``crm_data.channel_effects.historical_arms``,
  recomputed from the lead ids);
* the service's live exploration: the prediction log's rows with arm ``exploration`` (the logged
  channel and propensity), their outcome window closed by the data's end, joined with the
  ingested outcomes (``crm_data.prediction_log.join_outcomes``; a lead whose recorded
  ``followup_channel`` differs from the logged draw was not followed up as drawn and is left
  out), one row per lead, a lead already among the history's randomised rows not counted twice.
  Features: the training set's row of the lead (as of its creation, the same point-in-time
  build as every other row) when it has one; otherwise the features the service logged at
  submission (the online path of the same feature definitions, held equal to the point-in-time
  row by ``tests/integration/test_event_replay.py``).

Both only for leads created before ``until`` (default: the first held-out day of
``reports/holdout_scored.parquet``), so `route evaluate` never judges on a lead the model saw.
The reference arm is the AI bot; the model is ``training.uplift.fit_uplift`` (EconML X-learner on
LightGBM, cross-fitted, Optuna-tuned), registered as ``lead-uplift`` with its own gate.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from crm_data.channel_effects import historical_arms
from crm_data.prediction_log import feature_column, join_outcomes, open_prediction_log
from features.parquet_io import read_parquet
from features.training_set import categorical_feature_columns, data_end, model_feature_columns
from leadscore.config import Settings
from leadscore.schemas import FOLLOWUP_CHANNELS
from training.uplift import ProgressCallback, UpliftInputError, fit_uplift
from training.uplift_registry import PRODUCT_UPLIFT_MODEL, save_uplift_outputs

REFERENCE_CHANNEL = "ai_bot"
# Below this many randomised leads with a known outcome, or fewer than MIN_POSITIVES_PER_CHANNEL
# conversions under any channel, the learned effects are too noisy to route by (measured:
# benchmarks/bench_causal_routing.py, docs/uplift.md) and routing keeps the cold-start prior.
MIN_RANDOMISED_LEADS = 2000
MIN_POSITIVES_PER_CHANNEL = 30
DEFAULT_VALUE_PER_CONVERSION = 1000.0  # RMB; the model's own recommend() trade-off only
# the training set may carry one row per lead at submission plus later per-step snapshots;
# the uplift model learns from the lead as it was at submission (when the channel was drawn)
SNAPSHOT_COLUMN = "snapshot"
SUBMISSION_SNAPSHOT = "submission"
HISTORY_SOURCE = "history"
LOG_SOURCE = "prediction_log"


def uplift_model_dir(settings: Settings) -> Path:
    """Where the work folder's uplift model is saved (``<workdir>/models/lead_uplift``)."""
    return settings.workdir / "models" / "lead_uplift"


def training_frame(settings: Settings) -> pd.DataFrame:
    """The training set (``data/training_set.parquet``) with each lead's follow-up, arm and
    propensity."""
    path = settings.data_dir / "training_set.parquet"
    frame = submission_rows(read_parquet(path, "training set (run `leadscore train` or "
                                             "`leadscore features training-set` first)"))
    outcomes = read_parquet(settings.raw_dir / "outcomes.parquet", "raw table 'outcomes'",
                            ["lead_id", "followup_channel"])
    frame = frame.merge(outcomes, on="lead_id", how="left", validate="one_to_one")
    known = frame["followup_channel"].dropna().astype(str)
    unknown = sorted(set(known) - set(FOLLOWUP_CHANNELS))
    if unknown:
        raise UpliftInputError(f"outcomes.followup_channel: unknown channel(s) {unknown[:5]}; "
                               f"known: {list(FOLLOWUP_CHANNELS)}")
    arm, drawn, propensity = historical_arms(frame["lead_id"])
    frame["arm"] = arm
    frame["propensity"] = propensity
    # a randomised lead whose recorded follow-up differs from its draw was not followed up as
    # randomised (e.g. re-routed by hand): it is not randomised evidence
    frame.loc[(arm == "exploration") & (frame["followup_channel"].to_numpy() != drawn),
              "arm"] = "policy"
    return frame


def submission_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per lead as submitted: the ``snapshot == "submission"`` rows when the training set
    carries per-step snapshot rows, else the frame as it is."""
    if SNAPSHOT_COLUMN not in frame.columns:
        return frame
    keep = frame[SNAPSHOT_COLUMN].astype(str) == SUBMISSION_SNAPSHOT
    return frame[keep].drop(columns=[SNAPSHOT_COLUMN]).reset_index(drop=True)


def randomised_rows(frame: pd.DataFrame, until: pd.Timestamp | None = None) -> pd.DataFrame:
    """The exploration leads with a known outcome and follow-up, created before ``until``."""
    keep = (frame["arm"] == "exploration") & frame["followup_channel"].notna()
    if until is not None:
        keep &= pd.to_datetime(frame["created_at"], utc=True) < until
    return frame[keep].reset_index(drop=True)


def _read_log(settings: Settings, until: pd.Timestamp | None) -> tuple[pd.DataFrame | None, str]:
    """The prediction log's rows submitted before ``until`` (None and why when there is none)."""
    if settings.profile != "production" and not settings.prediction_log_path.exists():
        return None, "no prediction log in the work folder"
    try:
        log = open_prediction_log(settings)
    except Exception as exc:  # noqa: BLE001 - the history alone still trains; the report says so
        return None, f"prediction log not readable ({type(exc).__name__}: {exc})"
    try:
        return log.read(None, None if until is None else until.to_pydatetime()), "read"
    finally:
        log.close()


def logged_exploration_rows(settings: Settings, frame: pd.DataFrame, history: pd.DataFrame,
                            until: pd.Timestamp | None, log: pd.DataFrame | None = None
                            ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The prediction log's randomised evidence as training rows (module docstring) and the
    counts of what was kept and left out. ``frame``: the training frame (features by lead);
    ``history``: the history's randomised rows (their leads are not counted twice); ``log``:
    the log's rows (default: read from the work folder)."""
    columns = [c for c in model_feature_columns(settings) if c in frame.columns]
    info: dict[str, Any] = {"rows": 0}
    if log is None:
        log, status = _read_log(settings, until)
        if log is None:
            return pd.DataFrame(columns=frame.columns), {**info, "note": status}
    explored = log[(log["arm"] == "exploration")
                   & log["channel"].isin(FOLLOWUP_CHANNELS)].sort_values(
        "submitted_at", kind="stable").drop_duplicates("lead_id", keep="first")
    info["exploration_leads_logged"] = int(len(explored))
    if until is not None:
        explored = explored[explored["submitted_at"] < until]
    end = data_end(settings)
    window = pd.Timedelta(days=settings.conversion_window_days)
    matured = explored[explored["submitted_at"] + window <= end]
    info["window_open"] = int(len(explored) - len(matured))
    outcomes = read_parquet(settings.raw_dir / "outcomes.parquet", "raw table 'outcomes'")
    if "followup_channel" not in outcomes.columns:
        outcomes = outcomes.assign(followup_channel=None)
    joined = join_outcomes(matured, outcomes, settings.conversion_window_days)
    info["no_outcome_row"] = int(len(matured) - len(joined))
    recorded = joined["lead_id"].map(outcomes.drop_duplicates("lead_id").set_index("lead_id")[
        "followup_channel"])
    followed = recorded.isna() | (recorded.astype(object) == joined["channel"].astype(object))
    info["followed_up_otherwise"] = int((~followed).sum())
    joined = joined[followed.to_numpy()]
    duplicate = joined["lead_id"].isin(set(history["lead_id"]))
    info["already_in_history"] = int(duplicate.sum())
    joined = joined[~duplicate.to_numpy()].reset_index(drop=True)
    in_set = joined["lead_id"].isin(set(frame["lead_id"]))
    by_lead = frame.drop_duplicates("lead_id").set_index("lead_id")
    features = pd.DataFrame(index=joined.index)
    for name in columns:
        logged = (joined[feature_column(name)] if feature_column(name) in joined.columns
                  else pd.Series(None, index=joined.index, dtype=object))
        features[name] = joined["lead_id"].map(by_lead[name]).where(in_set, logged)
    # a feature the training rows always hold must not be missing from a live row (the
    # learners take no missing value where training had none): such rows are left out
    reference = history if len(history) else frame
    complete = [c for c in columns if reference[c].notna().all()]
    whole = ~features[complete].isna().any(axis=1)
    info["features_missing"] = int((~whole).sum())
    joined, features, in_set = joined[whole], features[whole], in_set[whole]
    rows = features.assign(
        lead_id=joined["lead_id"].astype(str),
        person_id=joined["person_id"], created_at=joined["submitted_at"],
        label=joined["converted"].astype("int64"), followup_channel=joined["channel"],
        arm="exploration", propensity=joined["propensity"].astype(float))
    info.update({"rows": int(len(rows)), "features_from_training_set": int(in_set.sum()),
                 "features_from_prediction_log": int((~in_set).sum())})
    return rows, info


def randomised_evidence(settings: Settings, frame: pd.DataFrame, until: pd.Timestamp | None,
                        log: pd.DataFrame | None = None
                        ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The history's randomised rows and the prediction log's exploration rows before
    ``until``, with a ``source`` column, and how many came from each source."""
    history = randomised_rows(frame, until).assign(source=HISTORY_SOURCE)
    logged, info = logged_exploration_rows(settings, frame, history, until, log)
    rows = history if logged.empty else pd.concat(
        [history, logged.assign(source=LOG_SOURCE)], ignore_index=True)
    return rows, {HISTORY_SOURCE: int(len(history)), LOG_SOURCE: int(len(logged)),
                  "prediction_log_detail": info}


def check_enough(rows: pd.DataFrame) -> dict[str, Any]:
    """Counts of the randomised evidence and whether it reaches the minimum to route by."""
    per_channel = {c: int(((rows["followup_channel"] == c) & (rows["label"] == 1)).sum())
                   for c in FOLLOWUP_CHANNELS}
    enough = (len(rows) >= MIN_RANDOMISED_LEADS
              and min(per_channel.values()) >= MIN_POSITIVES_PER_CHANNEL)
    return {"randomised_leads": int(len(rows)), "positives_per_channel": per_channel,
            "min_randomised_leads": MIN_RANDOMISED_LEADS,
            "min_positives_per_channel": MIN_POSITIVES_PER_CHANNEL, "enough": bool(enough)}


def first_holdout_time(settings: Settings) -> pd.Timestamp | None:
    """The first ``created_at`` of the held-out scored leads (None when there are none)."""
    path = settings.reports_dir / "holdout_scored.parquet"
    if not path.exists():
        return None
    created = pd.read_parquet(path, columns=["created_at"])["created_at"]
    return pd.Timestamp(pd.to_datetime(created, utc=True).min())


def train_uplift_work(
    settings: Settings, costs: Mapping[str, float], *, until: pd.Timestamp | None = None,
    value: float = DEFAULT_VALUE_PER_CONVERSION, folds: int = 5, trials: int = 8,
    seed: int = 42, register: bool = True, promote: bool = True,
    model_out: Path | None = None, report_path: Path | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Fit the channel uplift model on the work folder's randomised leads; save it; register
    and gate it as ``lead-uplift``; return the report (written to ``report_path``, default
    ``reports/uplift_leads.json``). Refuses (``UpliftInputError``, nothing written) below the
    minimum evidence."""
    started = time.perf_counter()
    frame = training_frame(settings)
    if until is None:
        until = first_holdout_time(settings)
    rows, sources = randomised_evidence(settings, frame, until)
    evidence = {**check_enough(rows), "sources": sources}
    if not evidence["enough"]:
        raise UpliftInputError(
            f"randomised leads: {evidence['randomised_leads']} with outcomes before "
            f"{until} ({sources[HISTORY_SOURCE]} from the history, {sources[LOG_SOURCE]} from "
            f"the prediction log's exploration), conversions per channel "
            f"{evidence['positives_per_channel']}; at least "
            f"{MIN_RANDOMISED_LEADS} and {MIN_POSITIVES_PER_CHANNEL} per channel are needed "
            "(routing keeps the cold-start prior relative_conversion until then)")
    columns = [c for c in model_feature_columns(settings) if c in rows.columns]
    categorical = [c for c in categorical_feature_columns(settings) if c in columns]
    features = rows[columns]
    channels = [REFERENCE_CHANNEL, *[c for c in FOLLOWUP_CHANNELS if c != REFERENCE_CHANNEL]]
    order = {c: i for i, c in enumerate(channels)}
    arms = rows["followup_channel"].astype(str)
    # fit_uplift orders arms reference first, then sorted; keep the cost map complete
    result = fit_uplift(
        features, arms.tolist(), rows["label"].to_numpy(), control=REFERENCE_CHANNEL,
        categorical=categorical, costs={c: float(costs[c]) for c in order},
        value=value, folds=folds, trials=trials, seed=seed,
        treatment_column="followup_channel", outcome_column="label",
        propensity=rows["propensity"].to_numpy(), progress=progress)
    # serving: per-channel boosters distilled from the effects (one request in well under a
    # millisecond, where the cross-fitted X-learners take tens of milliseconds)
    known = frame if until is None else frame[pd.to_datetime(frame["created_at"], utc=True)
                                              < until]
    distilled = result.model.distil(known[columns].reset_index(drop=True), seed=seed)
    result.model.metadata.update({"source": "work folder randomised leads",
                                  "rows_from_history": sources[HISTORY_SOURCE],
                                  "rows_from_prediction_log": sources[LOG_SOURCE],
                                  "trained_until": None if until is None else str(until)})
    report: dict[str, Any] = {"evidence": evidence,
                              "serving_distillation_correlation": dict(zip(
                                  result.model.arms[1:], distilled, strict=True)),
                              "trained_until": None if until is None else str(until),
                              **result.report}
    out_dir = Path(model_out) if model_out is not None else uplift_model_dir(settings)
    path = Path(report_path) if report_path is not None else (
        settings.reports_dir / "uplift_leads.json")
    return save_uplift_outputs(
        settings, result, features, out_dir, report, path, started, register=register,
        model_name=PRODUCT_UPLIFT_MODEL, promote=promote,
        run_params={"source": "work folder", "folds": folds, "trials": trials, "seed": seed,
                    "rows": int(result.y.size), "trained_until": str(until),
                    "rows_from_history": sources[HISTORY_SOURCE],
                    "rows_from_prediction_log": sources[LOG_SOURCE]})


