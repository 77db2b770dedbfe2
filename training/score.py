"""Batch scoring of a period's leads with the champion: the predictive tags.

For each lead created in ``[since, until)`` the model features come from Feast offline
(``get_historical_features`` at the lead's ``created_at``, the same path as the training set);
the champion (``models:/<name>@champion``) gives probability, tier, top reasons and its version.
The tags are written to ``features_dir/predictive_tags.parquet`` (re-scored leads replace their
older rows), which the Feast feature view ``lead_predictive_tags`` (entity ``lead``) reads; the
view is applied and materialized to the online store so ``get_online_features`` returns it.

The tag's ``event_timestamp`` is the scoring time, not the lead's ``created_at``: a tag exists
only from the moment it was computed, so a point-in-time join never sees it earlier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from leadscore.config import Settings
from leadscore.schemas import TIERS
from training.evaluate import assign_tiers
from training.explain import reasons_as_text
from training.registry import CHAMPION, alias_version, champion_uri, setup_tracking

TAG_VIEW = "lead_predictive_tags"
TAG_FILE = "predictive_tags.parquet"
DEFAULT_CUTOFFS: dict[str, float] = {"A": 0.35, "B": 0.15, "C": 0.05}
SCORE_BATCH = 5_000


@dataclass
class ScoreSummary:
    """What a scoring run did."""

    leads: int
    model_version: str
    since: str | None
    until: str | None
    tiers: dict[str, int]
    mean_probability: float
    path: str
    materialized: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _utc(value: datetime | str | None, name: str) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        moment = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {value!r} is not a date or timestamp ({exc})") from None
    return moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")


def leads_in_period(settings: Settings, since: pd.Timestamp | None,
                    until: pd.Timestamp | None) -> pd.DataFrame:
    """Raw leads with ``since <= created_at < until`` (either bound optional)."""
    path = settings.raw_dir / "leads.parquet"
    if not path.exists():
        raise FileNotFoundError(f"raw table 'leads' not found at {path}")
    leads = pd.read_parquet(path)
    created = pd.to_datetime(leads["created_at"], utc=True)
    mask = pd.Series(True, index=leads.index)
    if since is not None:
        mask &= created >= since
    if until is not None:
        mask &= created < until
    return leads.loc[mask].reset_index(drop=True)


def offline_features(settings: Settings, leads: pd.DataFrame) -> pd.DataFrame:
    """Model features of ``leads`` at their ``created_at`` through Feast (point in time)."""
    from features.store import ensure_applied, get_store
    from features.training_set import entity_frame, historical_features

    path = settings.identity_dir / "lead_person.parquet"
    if not path.exists():
        raise FileNotFoundError(f"One ID table 'lead_person' not found at {path}")
    lead_person = pd.read_parquet(path)  # with the as-of person when One ID wrote it
    store = get_store(settings)
    ensure_applied(store, settings)
    entities = entity_frame(leads, lead_person)
    return historical_features(store, entities, settings.feature_service)


def score_frame(python_model: Any, features: pd.DataFrame, version: str,
                cutoffs: Mapping[str, float], scored_at: pd.Timestamp) -> pd.DataFrame:
    """Predictive-tag rows for a feature frame (``lead_id`` + the model's features)."""
    parts = []
    for start in range(0, len(features), SCORE_BATCH):
        chunk = features.iloc[start:start + SCORE_BATCH]
        rows = python_model.predict_with_reasons(chunk, top_k=3)
        probability = [r["probability"] for r in rows]
        parts.append(pd.DataFrame({
            "lead_id": chunk["lead_id"].astype(str).to_numpy(),
            "event_timestamp": scored_at,
            "created_timestamp": scored_at,
            "conversion_probability": probability,
            "conversion_tier": assign_tiers(probability, cutoffs),
            "top_reasons": [
                reasons_as_text({"positive": r["positive_reasons"],
                                 "negative": r["negative_reasons"]}) for r in rows
            ],
            "model_version": version,
        }))
    return pd.concat(parts, ignore_index=True)


def write_tags(path: Path, tags: pd.DataFrame) -> Path:
    """Merge ``tags`` into the tag file (new rows replace older rows of the same leads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        old = pd.read_parquet(path)
        old = old[~old["lead_id"].isin(tags["lead_id"])]
        tags = pd.concat([old, tags], ignore_index=True)
    for column in ("event_timestamp", "created_timestamp"):
        tags[column] = pd.to_datetime(tags[column], utc=True).astype("datetime64[us, UTC]")
    tmp = path.with_suffix(".parquet.tmp")
    tags.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def publish_tags(settings: Settings, start: datetime, end: datetime) -> None:
    """Materialize the ``lead_predictive_tags`` view (declared with the others) to the online
    store."""
    from features.store import ensure_applied, get_store

    store = get_store(settings)
    ensure_applied(store, settings)
    store.materialize(start_date=start, end_date=end, feature_views=[TAG_VIEW])


def score_leads(
    settings: Settings,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    cutoffs: Mapping[str, float] | None = None,
) -> ScoreSummary:
    """Score the leads created in ``[since, until)`` with the champion and publish the tags."""
    start, stop = _utc(since, "--since"), _utc(until, "--until")
    if start is not None and stop is not None and start >= stop:
        raise ValueError(f"--since ({start}) must be before --until ({stop})")
    setup_tracking(settings)
    client = MlflowClient()
    champion = alias_version(client, settings.model_name, CHAMPION)
    if champion is None:
        raise FileNotFoundError(
            f"model {settings.model_name!r} has no champion in {settings.tracking_uri}; "
            "run `leadscore train` first"
        )
    leads = leads_in_period(settings, start, stop)
    if leads.empty:
        raise ValueError(f"no leads created in [{since or '-inf'}, {until or '+inf'})")
    python_model = mlflow.pyfunc.load_model(
        champion_uri(settings.model_name)).unwrap_python_model()
    features = offline_features(settings, leads)
    scored_at = pd.Timestamp(datetime.now(UTC))
    tags = score_frame(python_model, features, str(champion.version),
                       dict(cutoffs or DEFAULT_CUTOFFS), scored_at)
    path = write_tags(settings.features_dir / TAG_FILE, tags)
    publish_tags(settings, scored_at.to_pydatetime() - timedelta(days=3650),
                 scored_at.to_pydatetime() + timedelta(seconds=1))
    counts = tags["conversion_tier"].value_counts()
    return ScoreSummary(
        leads=len(tags), model_version=str(champion.version),
        since=None if start is None else start.isoformat(),
        until=None if stop is None else stop.isoformat(),
        tiers={tier: int(counts.get(tier, 0)) for tier in TIERS},
        mean_probability=float(tags["conversion_probability"].mean()),
        path=str(path), materialized=True,
    )
