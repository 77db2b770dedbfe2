"""Traffic for the main job: generated leads replayed as the CRM's form submissions.

The raw identifiers of generated leads are never stored; the generator draws them again in
memory from the same seed (``SyntheticCrm.raw_identifiers_of``), so the service receives them
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


def _raw_identifiers(settings: Settings, seed: int, n_leads: int) -> dict[str, dict[str, str]]:
    """lead_id → {field: raw value}, drawn again in memory (empty when unavailable)."""
    from leadscore.generate import simulate_crm

    crm = simulate_crm(n_leads, seed, salt=settings.hash_salt)
    of = getattr(crm, "raw_identifiers_of", None)
    return of() if callable(of) else {}


def replay_submissions(settings: Settings, seed: int, since: datetime) -> list[dict[str, Any]]:
    """``POST /predict`` bodies for every lead created at or after ``since``, oldest first."""
    leads = pd.read_parquet(settings.raw_dir / "leads.parquet")
    leads = leads[leads["created_at"] >= pd.Timestamp(since)].sort_values("created_at")
    raw = _raw_identifiers(settings, seed, n_leads=len(pd.read_parquet(
        settings.raw_dir / "leads.parquet", columns=["lead_id"])))
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
            "identifiers": {field: ids.get(kind) for kind, field in _IDENTIFIER_FIELDS.items()},
        })
    return bodies
