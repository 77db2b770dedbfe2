"""The BentoML service the CRM calls on form submission.

``bentoml serve serving.service:LeadScoring`` (or ``leadscore serve``) runs it. The champion
model comes from the BentoML model store (imported from the MLflow registry by
``leadscore serve`` or at ``bentoml build``; the import records the registry version).
"""

from __future__ import annotations

import logging

import bentoml
from bentoml.exceptions import BentoMLException, ServiceUnavailable

from leadscore.config import get_settings
from serving.auth import ApiKeyMiddleware, resolve_api_key
from serving.predictor import ModelUnavailableError, Predictor
from serving.schemas import (
    BatchRequest,
    BatchResponse,
    EventsRequest,
    EventsResponse,
    Prediction,
    Submission,
)

logger = logging.getLogger("leadscore.service")

_settings = get_settings()
_api_key, _ = resolve_api_key(_settings, create=False)


@bentoml.service(
    name="lead-scoring",
    traffic={"timeout": 10, "max_concurrency": 256},
    workers=1,
    http={"port": 3000},
)
class LeadScoring:
    """Conversion probability, tier, follow-up channel and reasons for CRM form submissions."""

    def __init__(self) -> None:
        self.predictor = Predictor.from_settings(_settings)

    def __is_ready__(self) -> bool:
        return self.predictor.ready()

    def _require_model(self) -> None:
        if not self.predictor.ready():
            raise ServiceUnavailable(
                "no model is loaded: train and register a champion (`leadscore train`), "
                f"then reload; detail: {self.predictor.load_error}"
            )

    @bentoml.api(route="/predict", input_spec=Submission, output_spec=Prediction)
    def predict(self, **submission: object) -> Prediction:
        """Score one form submission."""
        self._require_model()
        try:
            return self.predictor.predict([Submission.model_validate(submission)])[0]
        except ModelUnavailableError as exc:
            raise ServiceUnavailable(str(exc)) from None

    @bentoml.api(route="/predict_batch", input_spec=BatchRequest, output_spec=BatchResponse)
    def predict_batch(self, submissions: list[Submission]) -> BatchResponse:
        """Score up to 1,000 submissions, answered in order."""
        self._require_model()
        try:
            return BatchResponse(predictions=self.predictor.predict(submissions))
        except ModelUnavailableError as exc:
            raise ServiceUnavailable(str(exc)) from None

    @bentoml.api(route="/events", input_spec=EventsRequest, output_spec=EventsResponse)
    def events(self, events: list) -> EventsResponse:
        """Push behaviour events into the online store so the next prediction sees them."""
        try:
            return self.predictor.push_events(events)
        except BentoMLException:
            raise
        except Exception as exc:  # the online store is down: say so, do not 500
            logger.warning("event push failed: %s", type(exc).__name__)
            raise ServiceUnavailable("the online feature store is unreachable; retry") from None

    @bentoml.api(route="/reload")
    def reload(self) -> dict:
        """Load the current champion atomically (the old model serves until the swap)."""
        version = self.predictor.reload()
        return {"model_version": version, "ready": self.predictor.ready()}


LeadScoring.add_asgi_middleware(ApiKeyMiddleware, api_key=_api_key)
