"""The in-process scoring path behind the service: One ID → features → model → routing → log.

``Predictor.predict`` is what ``POST /predict`` and ``/predict_batch`` run; it has no HTTP in it,
so the benchmark measures its floor directly. Pieces that can fail at run time (online store,
model) fail soft where a useful answer exists (degraded mode) and loudly where it does not
(no model: ``ModelUnavailableError``, never a made-up score).
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from features import request as request_features
from features.online import online_features, submission_request
from leadscore.config import Settings
from leadscore.identifiers import email_domain_type, hash_identifier
from leadscore.identity import load_identity_state, lookup_person, new_person_id
from leadscore.prediction_log import PredictionLog, PredictionRecord, open_prediction_log
from routing.control import route_with_control
from routing.policy import RoutingPolicy, load_policy
from serving.schemas import Prediction, Submission

logger = logging.getLogger("leadscore.predictor")

# identifier kinds in the order One ID trusts them
_ID_FIELDS = (("phone", "phone"), ("wechat", "wechat_id"), ("email", "email"),
              ("cookie", "cookie_id"))
TAG_FIELDS = ("channel", "funnel_step", "rule_score", "fit_score", "interest_score",
              "intent_score", "days_since_last_touch", "prior_leads", "rfm_segment")


class ModelUnavailableError(RuntimeError):
    """No champion model could be loaded."""


@dataclass(frozen=True)
class LoadedModel:
    """The model the service answers with; swapped as one object on reload."""

    python_model: Any
    name: str
    version: str


def load_champion(settings: Settings) -> LoadedModel:
    """The champion from the BentoML model store (a Bento) or else the MLflow registry."""
    import mlflow

    from serving.model_store import load_bento_champion

    bento = load_bento_champion(settings)
    if bento is not None:
        return bento
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(settings.model_name, "champion")
    except Exception as exc:  # registry empty or unreachable
        raise ModelUnavailableError(
            f"no champion of '{settings.model_name}' in the MLflow registry "
            f"({type(exc).__name__}); run `leadscore train`"
        ) from None
    pyfunc = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@champion")
    return LoadedModel(pyfunc.unwrap_python_model(), settings.model_name, str(version.version))


class Predictor:
    """Scores submissions; thread-safe; the model reference is swapped atomically."""

    def __init__(self, settings: Settings, store: Any, identifier_person: dict[str, str],
                 policy: RoutingPolicy, log: PredictionLog) -> None:
        self.settings = settings
        self.store = store
        self.identifier_person = identifier_person
        self.policy = policy
        self.log = log
        self.load_error: str | None = None
        self._model: LoadedModel | None = None
        self._reload_lock = threading.Lock()
        self.degraded_count = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Predictor:
        """Build from the work folder: feature store, One ID state, policy, log, champion."""
        from features.store import get_store

        store = get_store(settings)
        state = load_identity_state(settings.identity_dir)
        identifier_person = dict(
            zip(state.identifier_person["id_hash"], state.identifier_person["person_id"],
                strict=True)
        )
        optimized = settings.reports_dir / "routing_policy.yaml"
        policy_path = settings.routing_policy or (optimized if optimized.exists() else None)
        predictor = cls(settings, store, identifier_person, load_policy(policy_path),
                        open_prediction_log(settings))
        predictor.reload()
        return predictor

    # ---- model -------------------------------------------------------------------------------
    def ready(self) -> bool:
        return self._model is not None

    def reload(self) -> str | None:
        """Load the current champion; on failure keep serving the old one (if any)."""
        with self._reload_lock:
            try:
                self._model = load_champion(self.settings)
                self.load_error = None
            except Exception as exc:
                self.load_error = str(exc)
                logger.error("model load failed: %s", exc)
        return self._model.version if self._model else None

    # ---- scoring -----------------------------------------------------------------------------
    def resolve(self, sub: Submission) -> tuple[str, dict[str, Any], dict[str, str]]:
        """Person id, the form as feature inputs, and rejected identifier kinds (no raw values)."""
        hashes: list[str] = []
        rejected: dict[str, str] = {}
        for id_type, field in _ID_FIELDS:
            raw = getattr(sub.identifiers, field)
            if raw is None:
                continue
            hashed, reason = hash_identifier(id_type, raw, self.settings.hash_salt)
            if hashed is None:
                rejected[field] = reason or "unusable"
            else:
                hashes.append(hashed)
        person = lookup_person(hashes, self.identifier_person) or new_person_id(sub.lead_id)
        phone_raw = sub.identifiers.phone
        form = {
            "channel": sub.channel,
            "campaign": sub.campaign,
            "landing_page": sub.landing_page,
            "funnel_step": sub.funnel_step,
            "grade": sub.form.grade,
            "subject": sub.form.subject,
            "city": sub.form.city,
            "city_tier": sub.form.city_tier,
            "device": sub.form.device,
            "phone_valid": phone_raw is not None and "phone" not in rejected,
            "email_domain_type": email_domain_type(sub.identifiers.email)
            if isinstance(sub.identifiers.email, str | type(None)) else "invalid",
        }
        return person, form, rejected

    def _features(self, form: dict[str, Any], person: str, at: datetime
                  ) -> tuple[dict[str, Any], bool]:
        try:
            return online_features(self.store, form, person, at), False
        except Exception as exc:  # online store down: answer from the request alone
            logger.warning("online store read failed (%s): degraded answer", type(exc).__name__)
            inputs = {k: [v] for k, v in submission_request(form, at).items()}
            row = request_features.transform_request(inputs)
            return {name: values[0] for name, values in row.items()}, True

    def predict(self, submissions: list[Submission]) -> list[Prediction]:
        """Score submissions in order and append them to the prediction log."""
        model = self._model
        if model is None:
            raise ModelUnavailableError(self.load_error or "no model loaded")
        resolved = [self.resolve(s) for s in submissions]
        rows: list[dict[str, Any]] = []
        degraded: list[bool] = []
        for sub, (person, form, _) in zip(submissions, resolved, strict=True):
            features, was_degraded = self._features(form, person, sub.submitted_at)
            rows.append(features)
            degraded.append(was_degraded)
        frame = pd.DataFrame(rows)
        scored = model.python_model.predict_with_reasons(frame, top_k=3)
        routing_input = pd.DataFrame(
            {
                "person_id": [r[0] for r in resolved],
                "probability": [s["probability"] for s in scored],
                "rule_score": frame["rule_score"].to_numpy()
                if "rule_score" in frame else [0.0] * len(frame),
            }
        )
        routed = route_with_control(routing_input, self.policy)
        now = datetime.now(UTC)
        answers: list[Prediction] = []
        records: list[PredictionRecord] = []
        for i, sub in enumerate(submissions):
            person, _, rejected = resolved[i]
            features = {k: _plain(v) for k, v in rows[i].items()}
            tier, channel = str(routed["tier"].iat[i]), str(routed["channel"].iat[i])
            control = bool(routed["control"].iat[i])
            answers.append(
                Prediction(
                    lead_id=sub.lead_id,
                    person_id=person,
                    probability=round(scored[i]["probability"], 6),
                    tier=tier,
                    channel=channel,
                    control=control,
                    reasons={"positive": scored[i]["positive_reasons"],
                             "negative": scored[i]["negative_reasons"]},
                    tags={k: features[k] for k in TAG_FIELDS if k in features},
                    identifiers_rejected=rejected,
                    model={"name": model.name, "version": model.version},
                    policy=self.policy.version,
                    degraded=degraded[i],
                    scored_at=now,
                )
            )
            records.append(
                PredictionRecord(
                    request_id=uuid.uuid4().hex, lead_id=sub.lead_id, person_id=person,
                    submitted_at=sub.submitted_at, scored_at=now,
                    probability=scored[i]["probability"], tier=tier, channel=channel,
                    control=control, degraded=degraded[i], model_name=model.name,
                    model_version=model.version, policy_version=self.policy.version,
                    features=features,
                )
            )
        self.degraded_count += sum(degraded)
        self.log.append(records)
        return answers


def _plain(value: Any) -> float | int | str | bool | None:
    """A JSON/log friendly scalar (numpy scalars → Python, NaN → None)."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)
