"""The uplift model's randomised evidence: the history's randomised leads and the prediction
log's live exploration rows (``training.uplift_work.randomised_evidence``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from crm_data.channel_effects import historical_arms
from crm_data.prediction_log import PredictionRecord, SqlitePredictionLog
from leadscore.config import Settings
from training.uplift_work import LOG_SOURCE, randomised_evidence, training_frame

START = datetime(2026, 1, 1, tzinfo=UTC)
UNTIL = pd.Timestamp("2026-03-01", tz="UTC")


def _record(lead_id: str, at: datetime, channel: str, arm: str = "exploration",
            propensity: float = 0.1, grade: str = "G9") -> PredictionRecord:
    return PredictionRecord(
        request_id=f"{lead_id}-{at:%H%M%S}", lead_id=lead_id, person_id=f"P-{lead_id}",
        submitted_at=at, scored_at=at, probability=0.1, tier="C", channel=channel,
        control=False, degraded=False, model_name="m", model_version="1", policy_version="p",
        arm=arm, propensity=propensity if arm == "exploration" else 1.0,
        features={"channel": "wechat_ad", "grade": grade, "events_7d": 3})


def _workdir(tmp_path, snapshots: bool = False) -> tuple[Settings, list[str]]:
    settings = Settings().with_workdir(tmp_path)
    settings.ensure_dirs()
    settings.raw_dir.mkdir(parents=True, exist_ok=True)
    ids = [f"H{i:05d}" for i in range(400)]
    arm, drawn, _ = historical_arms(ids)
    explored = [i for i, a in zip(ids, arm, strict=True) if a == "exploration"]
    policy = [i for i, a in zip(ids, arm, strict=True) if a != "exploration"]
    history = pd.DataFrame({
        "lead_id": ids, "person_id": ids,
        "created_at": pd.date_range(START, periods=len(ids), freq="h"),
        "label": np.arange(len(ids)) % 4 == 0, "grade": "G7", "channel": "organic_search",
        "events_7d": 1})
    if snapshots:  # a later per-step snapshot of every lead beside its submission row
        history = pd.concat([history.assign(snapshot="submission"),
                             history.assign(snapshot="verified", grade="G12")])
    history.to_parquet(settings.data_dir / "training_set.parquet")
    live = {  # lead → (submitted, logged channel, recorded follow-up, converted after days)
        "N1": (START + timedelta(days=40), "tmk", "tmk", 3),
        "N2": (START + timedelta(days=41), "sales", None, None),  # follow-up not recorded
        "N3": (START + timedelta(days=42), "sales", "ai_bot", 2),  # followed up otherwise
        "N4": (START + timedelta(days=43), "tmk", "tmk", 35),  # paid after the window
        "N5": (START + timedelta(days=75), "tmk", "tmk", None),  # after `until`
        "N6": (START + timedelta(days=58), "tmk", "tmk", None),  # in `until`, window open
        "N7": (START + timedelta(days=44), "sales", "sales", 1),  # a policy lead
        policy[0]: (START + timedelta(days=1), "top_sales", "top_sales", 2),
        explored[0]: (START + timedelta(days=1), "tmk", "tmk", None),  # already in history
    }
    follow = {i: (d if a == "exploration" else "ai_bot")
              for i, a, d in zip(ids, arm, drawn, strict=True)}
    outcomes = [{"lead_id": i, "converted": False, "converted_at": None,
                 "followup_channel": follow[i]} for i in ids if i not in live]
    for lead, (at, _, recorded, days) in live.items():
        outcomes.append({"lead_id": lead, "converted": days is not None,
                         "converted_at": None if days is None else at + timedelta(days=days),
                         "followup_channel": recorded})
    outcomes.append({"lead_id": "N9", "converted": False, "converted_at": None,
                     "followup_channel": "tmk"})
    frame = pd.DataFrame(outcomes)
    frame["converted_at"] = pd.to_datetime(frame["converted_at"], utc=True)
    # the data end: 90 days after the start (N6's window is still open then)
    frame.loc[len(frame)] = {"lead_id": "Z", "converted": True,
                             "converted_at": pd.Timestamp(START + timedelta(days=80)),
                             "followup_channel": "ai_bot"}
    frame.to_parquet(settings.raw_dir / "outcomes.parquet")
    with SqlitePredictionLog(settings.prediction_log_path) as log:
        records = [_record(lead, at, channel, "policy" if lead == "N7" else "exploration")
                   for lead, (at, channel, _, _) in live.items()]
        records.append(_record("N8", START + timedelta(days=45), "tmk"))  # no outcome row
        lacking = _record("N9", START + timedelta(days=46), "tmk")
        lacking.features.pop("events_7d")  # a feature every training row holds
        records.append(lacking)
        records.append(_record("N1", START + timedelta(days=40, hours=1), "ai_bot"))  # rescored
        log.append(records)
    return settings, [policy[0], explored[0]]


def test_live_exploration_rows_join_history_once_each(tmp_path) -> None:
    settings, (in_set, in_history) = _workdir(tmp_path)
    frame = training_frame(settings)
    rows, sources = randomised_evidence(settings, frame, UNTIL)
    history = int(((frame["arm"] == "exploration")
                   & (pd.to_datetime(frame["created_at"], utc=True) < UNTIL)).sum())
    detail = sources["prediction_log_detail"]
    assert sources["history"] == history and sources[LOG_SOURCE] == 4
    live = rows[rows["source"] == LOG_SOURCE].set_index("lead_id")
    assert sorted(live.index) == sorted(["N1", "N2", "N4", in_set])
    assert rows["lead_id"].is_unique
    assert (detail["already_in_history"], detail["followed_up_otherwise"],
            detail["no_outcome_row"], detail["window_open"], detail["features_missing"]) == (
        1, 1, 1, 1, 1)
    # the first logged draw of a rescored lead, with its logged propensity
    assert live.loc["N1", "followup_channel"] == "tmk" and live.loc["N1", "propensity"] == 0.1
    # converted within the window only
    assert live["label"].to_dict() == {"N1": 1, "N2": 0, "N4": 0, in_set: 1}
    # features: the training set's row when the lead has one, else the logged ones (the
    # logged source channel under its own name)
    assert live.loc[in_set, "grade"] == "G7" and live.loc["N1", "grade"] == "G9"
    assert live.loc["N1", "channel"] == "wechat_ad"
    assert (detail["features_from_training_set"], detail["features_from_prediction_log"]) == (
        1, 3)
    # `until` also bounds the log: nothing after it
    rows, sources = randomised_evidence(settings, frame, pd.Timestamp("2026-02-11", tz="UTC"))
    assert sorted(rows.loc[rows["source"] == LOG_SOURCE, "lead_id"]) == sorted(["N1", in_set])


def test_submission_rows_are_the_ones_learned_from(tmp_path) -> None:
    settings, _ = _workdir(tmp_path, snapshots=True)
    frame = training_frame(settings)
    assert frame["lead_id"].is_unique and (frame["grade"] == "G7").all()
    assert "snapshot" not in frame.columns


def test_without_a_prediction_log_the_history_alone_is_used(tmp_path) -> None:
    settings, _ = _workdir(tmp_path)
    settings.prediction_log_path.unlink()
    rows, sources = randomised_evidence(settings, training_frame(settings), UNTIL)
    assert sources[LOG_SOURCE] == 0 and len(rows) == sources["history"]
    assert "no prediction log" in sources["prediction_log_detail"]["note"]
