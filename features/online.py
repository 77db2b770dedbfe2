"""Online feature read for one form submission (the serving path).

``online_features(store, submission, person_id, at)`` reads the person's latest snapshot from the
online store (materialized by ``features.build.materialize``) and runs the on-demand view
``lead_request_features`` on the submitted form at time ``at``: exactly the code the training set
goes through, so a lead scored at its ``created_at`` gets its training-set row.

A ``person_id`` of None (One ID found nobody) or unknown to the online store gets the
brand-new-person defaults (see ``features.request``). Form fields missing from ``submission``
get their defaults; fields that are not part of the form are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from feast import FeatureStore

from features import request
from features.params import DECLARED_FEATURE_SERVICE
from features.training_set import model_feature_columns

NO_PERSON = "__no_person__"


def _form_value(kind: str, value: Any) -> Any:
    """A form field's value as the request column holds it (None when unusable)."""
    if kind == "string":
        return value if isinstance(value, str) else None
    if kind == "int":
        return int(value) if isinstance(value, int | float) and value == value else None
    if kind == "bool":
        return bool(value) if isinstance(value, bool | int) else None
    return value


def _request_time(at: Any) -> float:
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise ValueError("at: the submission time must be a timezone-aware datetime")
    return at.timestamp()


def submission_request(submission: dict[str, Any], at: datetime) -> dict[str, Any]:
    """The request columns of one submission (``form_*`` fields + ``request_ts_s``)."""
    if not isinstance(submission, dict):
        raise ValueError(
            f"submission must be a mapping of form fields, got {type(submission).__name__}"
        )
    at_s = _request_time(at)
    row = {request.FORM_PREFIX + name: _form_value(kind, submission.get(name))
           for name, kind in request.FORM_FIELDS.items()}
    row["request_ts_s"] = at_s
    return row


def submission_requests(forms: Sequence[dict[str, Any]], times: Sequence[datetime]
                        ) -> dict[str, list[Any]]:
    """``submission_request`` of every (form, time) of a batch, as columns."""
    columns: dict[str, list[Any]] = {
        request.FORM_PREFIX + name: [_form_value(kind, form.get(name)) for form in forms]
        for name, kind in request.FORM_FIELDS.items()
    }
    columns["request_ts_s"] = [_request_time(at) for at in times]
    return columns


def online_features(
    store: FeatureStore, submission: dict[str, Any], person_id: str | None, at: datetime,
    feature_service: str = DECLARED_FEATURE_SERVICE,
) -> dict[str, Any]:
    """Exactly the model features (name → value) for one submission at time ``at``, through
    ``feature_service`` (``settings.feature_service``; default: the declared one)."""
    row = submission_request(submission, at)
    row["person_id"] = person_id if isinstance(person_id, str) and person_id else NO_PERSON
    service = store.get_feature_service(feature_service)
    response = store.get_online_features(features=service, entity_rows=[row]).to_dict()
    return {name: response[name][0] for name in model_feature_columns(store, feature_service)}
