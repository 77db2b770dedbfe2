"""``leadscore uplift train`` on the work folder learns from the service's live exploration
beside the history's randomised leads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from crm_data.channel_effects import historical_arms
from crm_data.prediction_log import PredictionRecord, SqlitePredictionLog
from leadscore.config import Settings
from leadscore.schemas import FOLLOWUP_CHANNELS
from training import uplift_work
from training.uplift import UpliftInputError

START = datetime(2026, 1, 1, tzinfo=UTC)
COSTS = {"top_sales": 150, "sales": 60, "tmk": 15, "ai_bot": 2}
LIFT = {"top_sales": 0.25, "sales": 0.2, "tmk": 0.1, "ai_bot": 0.0}


def _workdir(tmp_path) -> Settings:
    settings = Settings().with_workdir(tmp_path)
    settings.ensure_dirs()
    settings.raw_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    ids = [f"H{i:05d}" for i in range(1200)]
    arm, drawn, _ = historical_arms(ids)
    channel = np.where(arm == "exploration", drawn, "ai_bot")
    grade = rng.choice(["G7", "G9", "G12"], len(ids))
    label = rng.random(len(ids)) < 0.2 + np.array([LIFT[c] for c in channel])
    pd.DataFrame({"lead_id": ids, "person_id": ids,
                  "created_at": pd.date_range(START, periods=len(ids), freq="30min"),
                  "label": label.astype(int), "grade": grade,
                  "events_7d": rng.poisson(2, len(ids))}).to_parquet(
        settings.data_dir / "training_set.parquet")
    live = [f"N{i:04d}" for i in range(800)]
    live_channel = rng.choice(FOLLOWUP_CHANNELS, len(live))
    live_label = rng.random(len(live)) < 0.2 + np.array([LIFT[c] for c in live_channel])
    submitted = [START + timedelta(days=30, minutes=20 * i) for i in range(len(live))]
    outcomes = pd.DataFrame({
        "lead_id": ids + live, "converted": np.concatenate([label, live_label]),
        "converted_at": [START + timedelta(days=100)] * len(ids)
        + [s + timedelta(days=2) for s in submitted],
        "followup_channel": list(channel) + list(live_channel)})
    outcomes["converted_at"] = pd.to_datetime(outcomes["converted_at"], utc=True).where(
        outcomes["converted"])
    outcomes.loc[len(outcomes)] = {"lead_id": "end", "converted": True,
                                   "converted_at": pd.Timestamp(START + timedelta(days=120)),
                                   "followup_channel": "ai_bot"}
    outcomes.to_parquet(settings.raw_dir / "outcomes.parquet")
    with SqlitePredictionLog(settings.prediction_log_path) as log:
        log.append([PredictionRecord(
            request_id=f"r{lead}", lead_id=lead, person_id=f"P{lead}", submitted_at=at,
            scored_at=at, probability=0.2, tier="C", channel=str(c), control=False,
            degraded=False, model_name="m", model_version="1", policy_version="p",
            arm="exploration", propensity=0.25,
            features={"grade": str(rng.choice(["G7", "G9", "G12"])),
                      "events_7d": int(rng.poisson(2))})
            for lead, at, c in zip(live, submitted, live_channel, strict=True)])
    return settings


def test_live_exploration_rows_are_learned_from(tmp_path, monkeypatch) -> None:
    settings = _workdir(tmp_path)
    monkeypatch.setattr(uplift_work, "MIN_RANDOMISED_LEADS", 600)
    until = pd.Timestamp(START + timedelta(days=60))
    history_only = pd.Timestamp(START + timedelta(days=29))
    with pytest.raises(UpliftInputError, match=r"\(\d+ from the history, 0 from the prediction"):
        uplift_work.train_uplift_work(settings, COSTS, until=history_only, register=False)
    result = uplift_work.train_uplift_work(settings, COSTS, until=until, folds=2, trials=1,
                                           register=False)
    sources = result["evidence"]["sources"]
    assert sources["prediction_log"] == 800 and 250 < sources["history"] < 350
    assert result["data"]["rows"] == sources["history"] + sources["prediction_log"]
    assert result["evidence"]["randomised_leads"] == result["data"]["rows"]
    # the live rows carry a real effect: top sales above the bot
    effect = result["per_arm"]["top_sales"]["dr_average_effect"]
    assert effect > 0.1
