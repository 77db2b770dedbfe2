"""The product's uplift model: what each follow-up channel does for which lead, learned on the
randomised leads of a work folder (``leadscore uplift train`` without ``--csv``).

Rows: the training set's leads (features as of each lead's creation, label = converted within
the window; ``features.training_set``) joined with the follow-up each lead got
(``outcomes.followup_channel``). Only the randomised leads are used — arm ``exploration`` with
the probability of their draw; in the generated history that is the CRM's per-lead random
follow-up (``crm_data.channel_effects.historical_arms``, recomputed from the lead ids) — and
only those created before ``until`` (default: the first held-out day of
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
from features.parquet_io import read_parquet
from features.training_set import categorical_feature_columns, model_feature_columns
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


def uplift_model_dir(settings: Settings) -> Path:
    """Where the work folder's uplift model is saved (``<workdir>/models/lead_uplift``)."""
    return settings.workdir / "models" / "lead_uplift"


def training_frame(settings: Settings) -> pd.DataFrame:
    """The training set (``data/training_set.parquet``) with each lead's follow-up, arm and
    propensity."""
    path = settings.data_dir / "training_set.parquet"
    frame = read_parquet(path, "training set (run `leadscore train` or `leadscore features "
                               "training-set` first)")
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


def randomised_rows(frame: pd.DataFrame, until: pd.Timestamp | None = None) -> pd.DataFrame:
    """The exploration leads with a known outcome and follow-up, created before ``until``."""
    keep = (frame["arm"] == "exploration") & frame["followup_channel"].notna()
    if until is not None:
        keep &= pd.to_datetime(frame["created_at"], utc=True) < until
    return frame[keep].reset_index(drop=True)


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
    rows = randomised_rows(frame, until)
    evidence = check_enough(rows)
    if not evidence["enough"]:
        raise UpliftInputError(
            f"randomised leads: {evidence['randomised_leads']} with outcomes before "
            f"{until}, conversions per channel {evidence['positives_per_channel']}; at least "
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
                    "rows": int(result.y.size), "trained_until": str(until)})


