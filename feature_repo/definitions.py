"""Feast declarations of leadscore: entities, sources, feature views, on-demand view, services.

Plain module-level declarations, as in Feast's own templates. The tags are computed by the
package: ``features.build`` writes the offline tables, ``features.request.transform_request``
is the request-time transformation the on-demand view calls.

File sources are relative to the repo folder (``../data/features``): registered for a work folder
by ``features.store.feature_definitions``, they point to ``<workdir>/data/features``, and the
work folder's ``<workdir>/feature_repo/feature_store.yaml`` locates its registry and online
store, so ``feast -c <workdir>/feature_repo feature-views list`` shows that folder's state.

The on-demand view computes with ``feature_params()``, the shipped parameters (half-life 14 days,
``leadscore/defaults/scoring.yaml``). ``features.store.feature_definitions`` replaces that call by
the literal parameters a work folder configures (its half-life and scoring file) when they differ,
and names the feature service after ``settings.feature_service``: the parameters are then part
of the view's source text in the registry, and tags of the feature service.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Bool, Float64, Int64, String
from feast.value_type import ValueType

from features.params import DECLARED_FEATURE_SERVICE, FeatureParams
from features.request import (
    BEHAVIOUR_SNAPSHOT_FIELDS,
    MODEL_FEATURES,
    RFM_SNAPSHOT_FIELDS,
    SUBMISSION_FIELDS,
)

FEAST_TYPES = {"string": String, "int": Int64, "float": Float64, "bool": Bool}
# snapshots are valid until the next one; the TTL only bounds how far back a lookup reaches
PERSON_TTL = timedelta(days=3650)
TABLES = "../data/features"  # relative to this repo folder: <workdir>/data/features

LEAD_FACT_FIELDS: dict[str, str] = {
    "person_id": "string", "channel": "string", "campaign": "string", "landing_page": "string",
    "landing_page_type": "string", "grade": "string", "subject": "string", "city_tier": "int",
    "device": "string", "funnel_step": "string", "funnel_step_ordinal": "int",
    "phone_valid": "int", "email_domain_type": "string", "submit_hour_cn": "int",
    "submit_weekday_cn": "int", "prior_leads": "int", "prior_channels": "int",
}
PREDICTIVE_TAG_FIELDS: dict[str, str] = {
    "conversion_probability": "float", "conversion_tier": "string", "top_reasons": "string",
    "model_version": "string",
}


def _fields(spec: dict[str, str]) -> list[Field]:
    return [Field(name=name, dtype=FEAST_TYPES[kind]) for name, kind in spec.items()]


# ---- entities ------------------------------------------------------------------------------
lead = Entity(name="lead", join_keys=["lead_id"], value_type=ValueType.STRING,
              description="One form submission (LID).")
person = Entity(name="person", join_keys=["person_id"], value_type=ValueType.STRING,
                description="A One ID person (PID).")

# ---- sources -------------------------------------------------------------------------------
lead_facts_source = FileSource(
    name="lead_facts_source", path=f"{TABLES}/lead_facts.parquet",
    timestamp_field="created_at",
)
person_behaviour_source = FileSource(
    name="person_behaviour_source", path=f"{TABLES}/person_behaviour.parquet",
    timestamp_field="event_timestamp",
)
# events pushed by the service (serving.events) update a person's snapshot online
person_behaviour_push = PushSource(
    name="person_behaviour_push", batch_source=person_behaviour_source,
    description="Incremental behaviour snapshots pushed by POST /events.",
)
person_rfm_source = FileSource(
    name="person_rfm_source", path=f"{TABLES}/person_rfm.parquet",
    timestamp_field="event_timestamp",
)
# predictive tags: written by `leadscore score` (training/score.py); event_timestamp is the
# scoring time, so a tag never appears before it was computed
lead_predictive_tags_source = FileSource(
    name="lead_predictive_tags_source", path=f"{TABLES}/predictive_tags.parquet",
    timestamp_field="event_timestamp", created_timestamp_column="created_timestamp",
)
submission = RequestSource(name="submission", schema=_fields(SUBMISSION_FIELDS))

# ---- feature views -------------------------------------------------------------------------
lead_facts = FeatureView(
    name="lead_facts", entities=[lead], ttl=timedelta(0), online=False,
    schema=_fields(LEAD_FACT_FIELDS), source=lead_facts_source,
    description="Fact tags of each lead at its submission (offline analysis, batch use).",
)
person_behaviour = FeatureView(
    name="person_behaviour", entities=[person], ttl=PERSON_TTL, online=True,
    schema=_fields(BEHAVIOUR_SNAPSHOT_FIELDS), source=person_behaviour_push,
    description="Behaviour snapshot of a person at each of its leads' created_at and later "
                "funnel steps.",
)
person_rfm = FeatureView(
    name="person_rfm", entities=[person], ttl=PERSON_TTL, online=True,
    schema=_fields(RFM_SNAPSHOT_FIELDS), source=person_rfm_source,
    description="Orders of a person before each of its leads' created_at.",
)
lead_predictive_tags = FeatureView(
    name="lead_predictive_tags", entities=[lead], ttl=PERSON_TTL, online=True,
    schema=_fields(PREDICTIVE_TAG_FIELDS), source=lead_predictive_tags_source,
    description="Predictive tags: champion's probability, tier, reasons and version.",
)


# ---- the model's features: form tags + person snapshot brought to request time -------------
@on_demand_feature_view(
    name="lead_request_features",
    sources=[submission, person_behaviour, person_rfm],
    schema=_fields(MODEL_FEATURES),
    mode="python",
    description="The model's features: form tags + person snapshot brought to request time.",
)
def lead_request_features(inputs: dict) -> dict:
    from features.request import feature_params, transform_request

    return transform_request(inputs, feature_params())


lead_conversion_v1 = FeatureService(
    name=DECLARED_FEATURE_SERVICE, features=[lead_request_features],
    description="Features of the lead conversion model.", tags=FeatureParams().tags(),
)
