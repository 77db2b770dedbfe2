"""Point-in-time correct training sets through Feast, and the model's feature list.

One row per lead at its ``created_at``: the entity frame (``lead_id``, ``person_id``,
``event_timestamp`` = ``created_at``, plus the submitted form as request columns) goes through
``get_historical_features`` with the feature service ``settings.feature_service``; the person
snapshot joined is the latest at or before ``created_at`` (built at that very time), and the
on-demand view computes the same features the online path computes.

``label`` = converted within ``settings.conversion_window_days`` of ``created_at`` (outcomes;
a lead without an outcome row counts as not converted). Leads whose window has not closed by the
data's last timestamp (max over leads, events, orders and conversions) are excluded and counted
(``DataFrame.attrs["summary"]``).
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore

from features import request, tags
from features.params import DECLARED_FEATURE_SERVICE
from features.parquet_io import read_parquet
from features.store import ensure_applied, get_store
from leadscore.config import Settings

ID_COLUMNS: tuple[str, ...] = ("lead_id", "person_id", "created_at", "label")


def model_feature_columns(store_or_settings: FeatureStore | Settings,
                          feature_service: str = DECLARED_FEATURE_SERVICE) -> list[str]:
    """The model's feature names, in order (from the registered ``feature_service`` for a
    store; the contract's ``MODEL_FEATURES`` for settings)."""
    if isinstance(store_or_settings, FeatureStore):
        service = store_or_settings.get_feature_service(feature_service)
        return [f.name for proj in service.feature_view_projections for f in proj.features]
    return list(request.MODEL_FEATURES)


def categorical_feature_columns(store_or_settings: FeatureStore | Settings,
                                feature_service: str = DECLARED_FEATURE_SERVICE) -> list[str]:
    """The categorical (string) model features, in model order."""
    if isinstance(store_or_settings, FeatureStore):
        service = store_or_settings.get_feature_service(feature_service)
        from feast.types import String

        return [
            f.name
            for proj in service.feature_view_projections
            for f in proj.features
            if f.dtype == String
        ]
    return [name for name, kind in request.MODEL_FEATURES.items() if kind == "string"]


def feature_service_version(store: FeatureStore,
                            feature_service: str = DECLARED_FEATURE_SERVICE) -> str:
    """``<service>@<12 hex>``: hash of the feature references and types and of the parameters
    recorded on the registered service (scoring tables' digest, half-life)."""
    service = store.get_feature_service(feature_service)
    refs = sorted(
        f"{proj.name_to_use()}:{f.name}:{f.dtype}"
        for proj in service.feature_view_projections
        for f in proj.features
    )
    tags = service.tags
    missing = [key for key in ("scoring_digest", "half_life_days") if key not in tags]
    if missing:
        raise ValueError(
            f"feature service '{feature_service}' carries no parameter tag(s) {missing}: "
            "apply the definitions again (`leadscore features build`)")
    payload = json.dumps(
        {
            "refs": refs,
            "scoring": tags["scoring_digest"],
            "half_life": float(tags["half_life_days"]),
        }
    )
    return f"{feature_service}@{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def _max_time(path: Path, column: str) -> pd.Timestamp | None:
    if not path.exists():
        return None
    values = pq.read_table(path, columns=[column]).column(column)
    top = pa.compute.max(values).as_py()
    return (
        None
        if top is None
        else pd.Timestamp(top).tz_convert("UTC")
        if pd.Timestamp(top).tzinfo
        else pd.Timestamp(top, tz="UTC")
    )


def data_end(settings: Settings) -> pd.Timestamp:
    """The data's last timestamp over leads, events, orders and conversions."""
    raw = settings.raw_dir
    candidates = [
        _max_time(raw / "leads.parquet", "created_at"),
        _max_time(raw / "events.parquet", "event_time"),
        _max_time(raw / "orders.parquet", "ordered_at"),
        _max_time(raw / "outcomes.parquet", "converted_at"),
    ]
    found = [c for c in candidates if c is not None]
    if not found:
        raise FileNotFoundError(f"no raw tables with timestamps in {raw}")
    return max(found)


def label_leads(
    leads: pd.DataFrame, outcomes: pd.DataFrame, window_days: int, end: pd.Timestamp
) -> pd.DataFrame:
    """``lead_id, created_at, label, window_closed`` per lead."""
    for col in ("lead_id", "converted", "converted_at"):
        if col not in outcomes.columns:
            raise ValueError(f"outcomes table: missing column '{col}'")
    created = pd.to_datetime(leads["created_at"], utc=True)
    out = pd.DataFrame({"lead_id": leads["lead_id"].astype(str), "created_at": created})
    outcome = outcomes.drop_duplicates("lead_id").set_index("lead_id")
    converted = out["lead_id"].map(outcome["converted"].astype(bool)).eq(True)
    conv_at = pd.to_datetime(out["lead_id"].map(outcome["converted_at"]), utc=True)
    window = timedelta(days=window_days)
    out["label"] = (converted & conv_at.notna() & (conv_at <= created + window)).astype("int64")
    out["window_closed"] = (created + window) <= end
    return out


def entity_frame(leads: pd.DataFrame, lead_person: pd.DataFrame) -> pd.DataFrame:
    """The entity frame for ``get_historical_features``: keys, time and the request columns."""
    index, _ = tags.lead_index(leads, lead_person)
    frame = pd.DataFrame(
        {
            "lead_id": index["lead_id"],
            "person_id": index["person_id"],
            "event_timestamp": tags.from_epoch_us(index["created_us"]),
        }
    )
    for col in request.FORM_FIELDS:
        target = request.FORM_PREFIX + col
        if col not in leads.columns:
            frame[target] = None
        elif col == "city_tier":
            frame[target] = pd.to_numeric(leads[col], errors="coerce").astype(float).to_numpy()
        else:
            frame[target] = leads[col].astype(object).where(leads[col].notna(), None).to_numpy()
    frame["request_ts_s"] = index["created_us"].to_numpy() / 1e6
    return frame


def historical_features(store: FeatureStore, entities: pd.DataFrame,
                        feature_service: str = DECLARED_FEATURE_SERVICE) -> pd.DataFrame:
    """Model features for an entity frame (see ``entity_frame``) through Feast, in model order."""
    service = store.get_feature_service(feature_service)
    job = store.get_historical_features(entity_df=entities, features=service)
    result = job.to_df()
    columns = model_feature_columns(store, feature_service)
    keep = ["lead_id", "person_id", "event_timestamp", *columns]
    return result[keep]


def build_training_set(
    settings: Settings, out: Path | None = None, as_of: datetime | None = None
) -> pd.DataFrame:
    """Write and return the training set (one row per lead whose label window has closed).

    ``as_of`` builds it as it could have been built at that moment: only leads whose
    conversion window closed by then, so no label uses an outcome recorded later (default:
    the data's end).
    """
    started = time.perf_counter()
    leads = read_parquet(settings.raw_dir / "leads.parquet", "raw table 'leads'")
    outcomes = read_parquet(
        settings.raw_dir / "outcomes.parquet",
        "raw table 'outcomes'",
        ["lead_id", "converted", "converted_at"],
    )
    lead_person = read_parquet(  # all columns: the as-of person keys the features when present
        settings.identity_dir / "lead_person.parquet",
        "One ID table 'lead_person'",
    )
    end = data_end(settings) if as_of is None else pd.Timestamp(as_of)
    if end.tzinfo is None:
        end = end.tz_localize("UTC")
    labels = label_leads(leads, outcomes, settings.conversion_window_days, end)
    closed = labels["window_closed"].to_numpy()
    store = get_store(settings)
    ensure_applied(store, settings)
    entities = entity_frame(leads.loc[closed].reset_index(drop=True), lead_person)
    features = historical_features(store, entities, settings.feature_service)
    features = features.rename(columns={"event_timestamp": "created_at"})
    label_map = labels.set_index("lead_id")["label"]
    features.insert(3, "label", features["lead_id"].map(label_map).astype("int64"))
    features = features.sort_values(["created_at", "lead_id"], kind="stable").reset_index(drop=True)
    version = feature_service_version(store, settings.feature_service)
    summary: dict[str, Any] = {
        "rows": len(features),
        "excluded_open_window": int((~closed).sum()),
        "positive_rate": float(features["label"].mean()) if len(features) else 0.0,
        "data_end": end.isoformat(),
        "feature_service_version": version,
        "seconds": round(time.perf_counter() - started, 2),
    }
    target = Path(out) if out is not None else settings.data_dir / "training_set.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(features, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"leadscore.summary"] = json.dumps(summary).encode()
    pq.write_table(table.replace_schema_metadata(meta), target)
    summary["path"] = str(target)
    features.attrs["summary"] = summary
    return features
