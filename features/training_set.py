"""Point-in-time correct training sets through Feast, and the model's feature list.

One row per lead at its ``created_at`` (``snapshot`` = ``submission``): the entity frame
(``lead_id``, ``person_id``, ``event_timestamp`` = ``created_at``, plus the submitted form as
request columns, its funnel step as the form recorded it) goes through
``get_historical_features`` with the feature service ``settings.feature_service``; the person
snapshot joined is the latest at or before ``created_at`` (built at that very time), and the
on-demand view computes the same features the online path computes.

Beside it, one row per funnel step the lead reached after its form (``snapshot`` = the step's
name; the step events of the events table): the same form with that step, at the step's time
(``snapshot_at``), the person snapshot the build took at that very time
(``features.behaviour.later_step_times``: every event visible by then counted, as the service
counts the events it was sent before it re-scores the lead); the features that describe the
submission itself (``features.training_rows.SUBMISSION_FIXED_FEATURES``) are the submission
row's, as the service's re-scoring keeps them. No row sees a step its lead had not reached by
its time. ``created_at`` and the label are the lead's on every row (``features.training_rows``).

``data/training_set_final_step.parquet`` holds, for comparison only, each lead at submission
with its *final* step (what a replay that sent the future would score); nothing trains on it.

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
from features.training_rows import (
    FINAL_STEP_FILE,
    SNAPSHOT_COLUMN,
    SNAPSHOT_TIME_COLUMN,
    SUBMISSION,
    SUBMISSION_FIXED_FEATURES,
)
from leadscore import schemas
from leadscore.config import Settings

ID_COLUMNS: tuple[str, ...] = ("lead_id", "person_id", "created_at", "label", SNAPSHOT_COLUMN,
                                SNAPSHOT_TIME_COLUMN)
STEP_EVENTS = tuple(schemas.FUNNEL_STEPS[1:])


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
    passed = [c for c in (SNAPSHOT_COLUMN,) if c in result.columns]
    keep = ["lead_id", "person_id", "event_timestamp", *passed, *columns]
    return result[keep]


def step_entities(entities: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """Entity rows at each later step (``steps``: ``lead_id, event_type, event_time``) of the
    leads of ``entities`` (one row per lead at submission): the lead's form with that step, at
    the step's time. Steps at or before their lead's submission are not later steps: dropped."""
    at = pd.to_datetime(steps["event_time"], utc=True)
    rows = pd.DataFrame({"lead_id": steps["lead_id"].astype(str).to_numpy(),
                         "_step": steps["event_type"].astype(str).to_numpy(), "_at": at.array})
    frame = entities.merge(rows, on="lead_id", how="inner", validate="one_to_many")
    frame = frame[frame["_at"] > pd.to_datetime(frame["event_timestamp"], utc=True)]
    frame["event_timestamp"] = frame["_at"]
    frame[request.FORM_PREFIX + "funnel_step"] = frame["_step"].to_numpy()
    frame["request_ts_s"] = tags.to_epoch_us(frame["_at"], "events.event_time") / 1e6
    frame[SNAPSHOT_COLUMN] = frame["_step"].to_numpy()
    return frame.drop(columns=["_step", "_at"]).reset_index(drop=True)


def read_step_events(settings: Settings, lead_ids: pd.Series,
                     end: pd.Timestamp) -> pd.DataFrame:
    """The funnel-step events (``verified``, ``followed_account``, ``booked_trial``) of
    ``lead_ids`` recorded by ``end``; the latest of a (lead, step) pair when the CRM sent one
    twice."""
    path = settings.raw_dir / "events.parquet"
    events = read_parquet(path, "raw table 'events'", ["lead_id", "event_type", "event_time"])
    events = events[events["event_type"].astype(str).isin(STEP_EVENTS)
                    & events["lead_id"].astype(str).isin(set(lead_ids.astype(str)))]
    events = events[pd.to_datetime(events["event_time"], utc=True) <= end]
    return events.sort_values("event_time", kind="stable").drop_duplicates(
        ["lead_id", "event_type"], keep="first").reset_index(drop=True)


def final_steps(leads: pd.DataFrame, steps: pd.DataFrame) -> pd.Series:
    """Per lead (index ``lead_id``), the furthest funnel step: the form's or a later step's."""
    order = {s: i for i, s in enumerate(schemas.FUNNEL_STEPS)}
    form = leads.set_index(leads["lead_id"].astype(str))["funnel_step"].astype(str).map(order)
    later = steps.assign(_r=steps["event_type"].astype(str).map(order)).groupby(
        steps["lead_id"].astype(str))["_r"].max()
    furthest = pd.concat([form, later.reindex(form.index)], axis=1).max(axis=1)
    return furthest.astype(int).map(dict(enumerate(schemas.FUNNEL_STEPS)))


def _fix_submission_features(features: pd.DataFrame) -> pd.DataFrame:
    """Later rows take the submission row's ``SUBMISSION_FIXED_FEATURES`` of their lead."""
    first = features[SNAPSHOT_COLUMN] == SUBMISSION
    fixed = features.loc[first].set_index("lead_id")
    later = ~first
    for name in SUBMISSION_FIXED_FEATURES:
        if name in features.columns:
            features.loc[later, name] = features.loc[later, "lead_id"].map(fixed[name]).to_numpy()
    return features


def build_training_set(
    settings: Settings, out: Path | None = None, as_of: datetime | None = None
) -> pd.DataFrame:
    """Write and return the training set (leads whose label window has closed: a row at
    submission and one per later step, see the module docstring; the final-step comparison rows
    beside it in ``FINAL_STEP_FILE``).

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
    closed_leads = leads.loc[closed].reset_index(drop=True)
    entities = entity_frame(closed_leads, lead_person)
    entities[SNAPSHOT_COLUMN] = SUBMISSION
    steps = read_step_events(settings, entities["lead_id"], end)
    later = step_entities(entities, steps)
    # yesterday's replay sent each form with its lead's final step: scored for comparison only
    final = entities.assign(**{
        request.FORM_PREFIX + "funnel_step": entities["lead_id"].map(
            final_steps(closed_leads, steps)).to_numpy(), SNAPSHOT_COLUMN: "final_step"})
    # two retrievals: the comparison rows share their lead's key and time with its first row
    features = pd.concat([
        historical_features(store, pd.concat([entities, later], ignore_index=True),
                            settings.feature_service),
        historical_features(store, final, settings.feature_service)], ignore_index=True)
    features = features.rename(columns={"event_timestamp": SNAPSHOT_TIME_COLUMN})
    created = pd.Series(tags.from_epoch_us(tags.to_epoch_us(
        entities["event_timestamp"], "leads.created_at")).array, index=entities["lead_id"])
    features.insert(2, "created_at", features["lead_id"].map(created).array)
    label_map = labels.set_index("lead_id")["label"]
    features.insert(3, "label", features["lead_id"].map(label_map).astype("int64"))
    features = features.sort_values(["created_at", "lead_id", SNAPSHOT_TIME_COLUMN],
                                    kind="stable").reset_index(drop=True)
    is_final = (features[SNAPSHOT_COLUMN] == "final_step").to_numpy()
    comparison = features[is_final].drop(columns=[SNAPSHOT_COLUMN]).reset_index(drop=True)
    features = _fix_submission_features(features[~is_final].reset_index(drop=True))
    version = feature_service_version(store, settings.feature_service)
    at_submission = int((features[SNAPSHOT_COLUMN] == SUBMISSION).sum())
    summary: dict[str, Any] = {
        "rows": len(features),
        "leads": at_submission,
        "rows_by_snapshot": {str(k): int(v) for k, v in
                             features[SNAPSHOT_COLUMN].value_counts(sort=False).items()},
        "excluded_open_window": int((~closed).sum()),
        "positive_rate": float(features.loc[features[SNAPSHOT_COLUMN] == SUBMISSION,
                                            "label"].mean()) if len(features) else 0.0,
        "data_end": end.isoformat(),
        "feature_service_version": version,
        "seconds": round(time.perf_counter() - started, 2),
    }
    target = Path(out) if out is not None else settings.data_dir / "training_set.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    for frame, path in ((features, target), (comparison, target.parent / FINAL_STEP_FILE)):
        table = pa.Table.from_pandas(frame, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[b"leadscore.summary"] = json.dumps(summary).encode()
        pq.write_table(table.replace_schema_metadata(meta), path)
    summary["path"] = str(target)
    features.attrs["summary"] = summary
    return features
