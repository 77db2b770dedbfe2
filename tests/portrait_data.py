"""A small CRM history taken through the real door for portrait and audience tests: exports with
raw phones, e-mails and WeChat ids are ingested (hashed and masked there), resolved by One ID,
a few predictions logged, and the person store built as of ``NOW``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from crm_data.identity import resolve_identities
from crm_data.ingest import ingest_batch
from crm_data.prediction_log import PredictionRecord, SqlitePredictionLog
from features.portrait_store import build_portrait_store
from leadscore.config import Settings

NOW = datetime(2026, 11, 30, tzinfo=UTC)
N_PERSONS = 40
EVENT_TYPES = ("web_visit", "pricing_page", "email_open", "live_class", "whitepaper_download",
               "trial_class")
URLS = ("/pricing", "/course/math", "/course/english", "/trial/book", "/blog/tips")


def phone_of(k: int) -> str:
    return f"+86 138 {k:04d} 8000"


def write_batch(folder: Path, seed: int = 7) -> None:
    """``leads.csv`` (with raw identifier columns) and ``events.csv`` for ``N_PERSONS``."""
    rng = np.random.default_rng(seed)
    leads, events = [], []
    for k in range(N_PERSONS):
        for j in range(1 + k % 3):
            lead_id = f"L-{k:03d}-{j}"
            created = NOW - timedelta(days=int(rng.integers(1, 55)), hours=int(rng.integers(24)))
            leads.append({
                "lead_id": lead_id, "created_at": created.isoformat(),
                "channel": ("sem", "seo", "wechat_private", "feed_ads")[(k + j) % 4],
                "campaign": "winter-2026", "landing_page": "/trial/math",
                "grade": f"G{1 + k % 12}", "subject": ("math", "english", "coding")[k % 3],
                "city": ("Beijing", "Hangzhou", "Foshan")[k % 3], "city_tier": 1 + k % 3,
                "device": "ios", "funnel_step": ("submitted", "verified", "booked_trial")[k % 3],
                "phone": phone_of(k), "email": f"user{k}@example.com" if k % 2 == 0 else "",
                "wechat_id": f"wx_user{k:03d}" if k % 3 == 0 else "",
            })
            for e in range(int(rng.integers(0, 8))):
                at = created - timedelta(hours=int(rng.integers(1, 24 * 20)))
                events.append({
                    "event_id": f"E-{lead_id}-{e}", "lead_id": lead_id,
                    "event_type": EVENT_TYPES[int(rng.integers(len(EVENT_TYPES)))],
                    "event_time": at.isoformat(), "url": URLS[int(rng.integers(len(URLS)))],
                    "dwell_seconds": float(rng.integers(5, 300)),
                })
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(leads).to_csv(folder / "leads.csv", index=False)
    pd.DataFrame(events).to_csv(folder / "events.csv", index=False)


def build_workdir(workdir: Path, seed: int = 7) -> Settings:
    """Ingest, resolve, log predictions and build the store in ``workdir``; the settings."""
    settings = Settings(workdir=workdir, api_key="test-api-key-portrait")
    settings.ensure_dirs()
    write_batch(workdir / "batch", seed)
    ingest_batch(workdir / "batch", settings.raw_dir, settings.hash_salt)
    leads = pd.read_parquet(settings.raw_dir / "leads.parquet")
    identities = pd.read_parquet(settings.raw_dir / "identities.parquet")
    resolve_identities(identities, leads, settings.identity_dir)
    person_of = pd.read_parquet(settings.identity_dir / "lead_person.parquet").set_index(
        "lead_id")["person_id"]
    records = []
    for i, lead in enumerate(leads.sort_values("lead_id").itertuples()):
        for step in range(2):
            at = lead.created_at.to_pydatetime() + timedelta(hours=step * 24)
            p = float(np.clip(0.1 + 0.02 * (i % 30) + 0.05 * step, 0, 1))
            records.append(PredictionRecord(
                request_id=f"r-{lead.lead_id}-{step}", lead_id=lead.lead_id,
                person_id=person_of[lead.lead_id], submitted_at=at, scored_at=at,
                probability=p, tier="A" if p > 0.5 else "C", channel="sales", control=False,
                degraded=False, model_name="lead-conversion", model_version="1",
                policy_version="test"))
    with SqlitePredictionLog(settings.prediction_log_path) as log:
        log.append(records)
    build_portrait_store(settings, now=NOW)
    return settings


def person_ids(settings: Settings) -> list[str]:
    frame = pd.read_parquet(settings.identity_dir / "lead_person.parquet")
    return sorted(frame["person_id"].unique())
