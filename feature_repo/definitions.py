"""Feast declarations of leadscore: entities, sources, feature views, on-demand views, services.

Declarations only: the tags are computed by ``features.build`` (offline tables) and
``features.request`` (request-time transformations, imported by the on-demand view). Source
paths follow ``leadscore.config.get_settings()`` (``LEADSCORE_WORKDIR`` moves them);
``build_definitions(settings)`` builds the same objects for any settings.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Bool, Float64, Int64, String
from feast.value_type import ValueType

from features.request import (
    BEHAVIOUR_SNAPSHOT_FIELDS,
    MODEL_FEATURES,
    RFM_SNAPSHOT_FIELDS,
    SUBMISSION_FIELDS,
)
from leadscore.config import Settings, get_settings

FEAST_TYPES = {"string": String, "int": Int64, "float": Float64, "bool": Bool}
# snapshots are valid until the next one; the TTL only bounds how far back a lookup reaches
PERSON_TTL = timedelta(days=3650)
LEAD_FACT_FIELDS: dict[str, str] = {
    "person_id": "string", "channel": "string", "campaign": "string", "landing_page": "string",
    "landing_page_type": "string", "grade": "string", "subject": "string", "city_tier": "int",
    "device": "string", "funnel_step": "string", "funnel_step_ordinal": "int",
    "phone_valid": "int", "email_domain_type": "string", "submit_hour_cn": "int",
    "submit_weekday_cn": "int", "prior_leads": "int", "prior_channels": "int",
}


def _fields(spec: dict[str, str]) -> list[Field]:
    return [Field(name=name, dtype=FEAST_TYPES[kind]) for name, kind in spec.items()]


def build_definitions(settings: Settings) -> list[Any]:
    """All Feast objects for ``settings`` (sources under ``settings.features_dir``)."""
    features_dir = settings.features_dir
    lead = Entity(name="lead", join_keys=["lead_id"], value_type=ValueType.STRING,
                  description="One form submission (LID).")
    person = Entity(name="person", join_keys=["person_id"], value_type=ValueType.STRING,
                    description="A One ID person (PID).")

    lead_facts_source = FileSource(
        name="lead_facts_source", path=str(features_dir / "lead_facts.parquet"),
        timestamp_field="created_at",
    )
    behaviour_source = FileSource(
        name="person_behaviour_source", path=str(features_dir / "person_behaviour.parquet"),
        timestamp_field="event_timestamp",
    )
    # events pushed by the service (serving.events) update a person's snapshot online
    behaviour_push_source = PushSource(
        name="person_behaviour_push", batch_source=behaviour_source,
        description="Incremental behaviour snapshots pushed by POST /events.",
    )
    rfm_source = FileSource(
        name="person_rfm_source", path=str(features_dir / "person_rfm.parquet"),
        timestamp_field="event_timestamp",
    )

    lead_facts = FeatureView(
        name="lead_facts", entities=[lead], ttl=timedelta(0), online=False,
        schema=_fields(LEAD_FACT_FIELDS), source=lead_facts_source,
        description="Fact tags of each lead at its submission (offline analysis, batch use).",
    )
    person_behaviour = FeatureView(
        name="person_behaviour", entities=[person], ttl=PERSON_TTL, online=True,
        schema=_fields(BEHAVIOUR_SNAPSHOT_FIELDS), source=behaviour_push_source,
        description="Behaviour snapshot of a person at each of its leads' created_at.",
    )
    person_rfm = FeatureView(
        name="person_rfm", entities=[person], ttl=PERSON_TTL, online=True,
        schema=_fields(RFM_SNAPSHOT_FIELDS), source=rfm_source,
        description="Orders of a person before each of its leads' created_at.",
    )
    submission = RequestSource(name="submission", schema=_fields(SUBMISSION_FIELDS))

    @on_demand_feature_view(
        name="lead_request_features",
        sources=[submission, person_behaviour, person_rfm],
        schema=_fields(MODEL_FEATURES),
        mode="python",
        description="The model's features: form tags + person snapshot brought to request time.",
    )
    def lead_request_features(inputs: dict[str, Any]) -> dict[str, Any]:
        from features.request import transform_request

        return transform_request(inputs)

    service = FeatureService(
        name=settings.feature_service, features=[lead_request_features],
        description="Features of the lead conversion model.",
    )
    return [lead, person, lead_facts_source, behaviour_source, rfm_source, lead_facts,
            person_behaviour, person_rfm, submission, lead_request_features, service,
            behaviour_push_source]


# module-level objects for `feast apply` / `feast plan` run inside feature_repo/
(
    lead_entity, person_entity, lead_facts_source, person_behaviour_source, person_rfm_source,
    lead_facts_view, person_behaviour_view, person_rfm_view, submission_request,
    lead_request_features_view, lead_conversion_service, person_behaviour_push_source,
) = build_definitions(get_settings())


# ---- predictive tags: written by `leadscore score` (training/score.py) ---------------------
PREDICTIVE_TAG_FIELDS: dict[str, str] = {
    "conversion_probability": "float", "conversion_tier": "string", "top_reasons": "string",
    "model_version": "string",
}


def build_predictive_tag_definitions(settings: Settings) -> list[Any]:
    """The ``lead_predictive_tags`` view (entity lead) over ``predictive_tags.parquet``.

    ``event_timestamp`` is the scoring time: a tag never appears before it was computed.
    """
    lead = Entity(name="lead", join_keys=["lead_id"], value_type=ValueType.STRING,
                  description="One form submission (LID).")
    source = FileSource(
        name="lead_predictive_tags_source",
        path=str(settings.features_dir / "predictive_tags.parquet"),
        timestamp_field="event_timestamp", created_timestamp_column="created_timestamp",
    )
    view = FeatureView(
        name="lead_predictive_tags", entities=[lead], ttl=PERSON_TTL, online=True,
        schema=_fields(PREDICTIVE_TAG_FIELDS), source=source,
        description="Predictive tags: champion's probability, tier, reasons and version.",
    )
    return [lead, source, view]


lead_predictive_tags_source, lead_predictive_tags_view = build_predictive_tag_definitions(
    get_settings()
)[1:]
