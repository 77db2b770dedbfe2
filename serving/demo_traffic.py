"""Traffic for the main job: generated leads replayed as the CRM's form submissions.

The raw identifiers of generated leads are never stored; the generator draws them again in
memory from the same seed and matched to the stored hashes, so the service receives them
exactly as a CRM would send them and hashes them at the door.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd

from leadscore.config import Settings

_FORM_FIELDS = ("grade", "subject", "city", "city_tier", "device")
_IDENTIFIER_FIELDS = {"phone": "phone", "wechat": "wechat_id", "email": "email",
                      "cookie": "cookie_id"}


def _raw_identifiers(settings: Settings, seed: int, n_leads: int,
                     lead_ids: set[str]) -> dict[str, dict[str, str]]:
    """lead_id → {form field: raw value} for ``lead_ids``, drawn again in memory.

    The generator's raw values are matched to the stored hashes of each lead, so a value the
    CRM would send is exactly the one whose hash One ID knows.
    """
    from leadscore.generate import simulate_crm
    from leadscore.identifiers import hash_identifier

    crm = simulate_crm(n_leads, seed, salt=settings.hash_salt)
    by_hash: dict[str, str] = {}
    for value in crm.raw_identifiers:
        for id_type in _IDENTIFIER_FIELDS:
            hashed, _ = hash_identifier(id_type, value, settings.hash_salt)
            if hashed is not None:
                by_hash[hashed] = value
    identities = pd.read_parquet(settings.raw_dir / "identities.parquet")
    identities = identities[identities["lead_id"].isin(lead_ids)]
    raw: dict[str, dict[str, str]] = {}
    for lead_id, id_type, id_hash in identities.itertuples(index=False):
        value = by_hash.get(id_hash)
        if value is not None:
            raw.setdefault(lead_id, {})[_IDENTIFIER_FIELDS[id_type]] = value
    return raw


def replay_submissions(settings: Settings, seed: int, since: datetime) -> list[dict[str, Any]]:
    """``POST /predict`` bodies for every lead created at or after ``since``, oldest first."""
    leads = pd.read_parquet(settings.raw_dir / "leads.parquet")
    leads = leads[leads["created_at"] >= pd.Timestamp(since)].sort_values("created_at")
    n_leads = len(pd.read_parquet(settings.raw_dir / "leads.parquet", columns=["lead_id"]))
    raw = _raw_identifiers(settings, seed, n_leads, set(leads["lead_id"]))
    bodies: list[dict[str, Any]] = []
    for row in leads.itertuples(index=False):
        form = {}
        for name in _FORM_FIELDS:
            value = getattr(row, name)
            if not pd.isna(value):
                form[name] = int(value) if name == "city_tier" else value
        ids = raw.get(row.lead_id, {})
        bodies.append({
            "lead_id": row.lead_id,
            "submitted_at": row.created_at.isoformat(),
            "channel": row.channel,
            "campaign": row.campaign,
            "landing_page": row.landing_page,
            "funnel_step": row.funnel_step,
            "form": form,
            "identifiers": {field: ids.get(field) for field in _IDENTIFIER_FIELDS.values()},
        })
    return bodies
