"""The BentoML service the CRM calls on form submission.

``leadscore serve`` (or ``python -m serving.launcher serving.service:LeadScoring`` with
``LEADSCORE_WORKDIR`` and ``LEADSCORE_API_KEY`` set: ``bentoml serve`` with its Prometheus files
on a RAM-backed folder of its own, see ``serving.launcher``) runs it. Endpoints: ``POST
/predict``, ``/predict_batch``, ``/events``, ``/outcomes``, ``/reload`` (Bearer key), ``/healthz``,
``/livez``, ``/readyz``, ``/metrics`` (``serving.http_metrics``: one series per route, ``other``
for any other path) and the OpenAPI docs at ``/docs`` and ``/docs.json`` (``serving.openapi``;
open).
See docs/api.md.

Settings are read when the service starts (not at import), so ``bentoml build`` can import this
module without a key or a work folder. The service refuses to start without an API key.

Speed (``benchmarks/bench_serving.py``): a valid ``POST /predict`` or ``/predict_batch`` is
answered by its fast route (``FAST_ROUTES``, ``serving.fast_routes``: the same validation,
prediction and JSON as the API methods, without BentoML's per-request routing and parsing);
the no-model case falls through to the BentoML API methods. Every API body is validated at the
door (``serving.fast_routes``: 422 and one WARNING line naming the fields), so BentoML's routing
only sees valid input.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import Callable
from typing import Any

import anyio
import bentoml
from prometheus_client import Counter, Gauge
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from leadscore.config import get_settings
from serving.auth import ApiKeyMiddleware, resolve_api_key
from serving.fast_online_reader import OnlineStoreError
from serving.fast_routes import FastRoute, FastRouteMiddleware, refusal, validating_route
from serving.http_guards import HeaderLimitMiddleware, RequestGuardMiddleware, send_body
from serving.http_metrics import RouteMetricsMiddleware
from serving.launcher import die_with_server
from serving.lead_routes import LEADS_APP, OPENAPI_PATHS, ROUTE_LABELS
from serving.log_writer import Receipt
from serving.model_store import ModelUnavailableError
from serving.openapi import service_openapi
from serving.portrait_api import AGENT_PATHS, portrait_app, portrait_openapi
from serving.portrait_api import ROUTE_LABELS as PORTRAIT_LABELS
from serving.predictor import Predictor
from serving.rescoring import LeadStateRecovering
from serving.schemas import (
    BatchRequest,
    BatchResponse,
    Event,
    EventsRequest,
    EventsResponse,
    OutcomesRequest,
    OutcomesResponse,
    Prediction,
    ReloadRequest,
    Submission,
    parse_request,
)

logger = logging.getLogger("leadscore.service")
SERVICE_NAME = "lead-scoring"
# POST /predict and /predict_batch answered by the request guard without BentoML's per-request
# routing and parsing (see ``serving.fast_routes``); filled when the service starts
FAST_ROUTES: dict[str, FastRoute] = {}
# the API routes (metrics label them by name; every other path is "other")
API_ROUTES = ("/predict", "/predict_batch", "/events", "/outcomes", "/reload")
# whether the answered predictions' records were on disk (fsync'd journal) before the answer;
# see docs/api.md, "Durability of the prediction log"
DURABLE_HEADER = b"x-leadscore-durable"
DURABLE_WAIT_SECONDS = 2.0  # longer than this, the answer goes out marked not durable
# what /readyz checks beyond the model: name → () -> (healthy, reason); filled at start-up
READINESS: dict[str, Callable[[], tuple[bool, str | None]]] = {}
INTERNAL_ERROR = json.dumps({"error": "An unexpected error has occurred, please check the "
                                      "server log."}, separators=(",", ":")).encode()

# prometheus_client directly (BentoML 1.4 runs it in multiprocess mode behind /metrics)
DEGRADED_TOTAL = Counter(
    name="leadscore_degraded_predictions_total",
    documentation="Predictions answered from the request alone, by reason.",
    labelnames=["reason"],
)
MODEL_INFO = Gauge(
    name="leadscore_model_loaded",
    documentation="1 for the registry version of the model being served.",
    labelnames=["version"],
    multiprocess_mode="livemax",
)


def _api_key() -> str:
    key, _ = resolve_api_key(get_settings(), create=False)
    return key


def _freeze_heap() -> None:
    """Move everything alive now (libraries, feature store, model) out of the collector's reach.

    The process holds ~0.5 M long-lived objects; a full collection over them takes ~250 ms and
    used to land on a request now and then (p99 of /predict ~200 ms). Frozen objects are never
    scanned again; what requests allocate is still collected as usual.
    """
    gc.collect()
    gc.freeze()


def _json(body: bytes, durable: bool | None = None) -> Response:
    """An answer as BentoML would send it (``model_dump_json`` of the output model), but with a
    Content-Length instead of BentoML's chunked ``IterableResponse`` (fewer socket writes);
    with ``durable``, the ``x-leadscore-durable`` header."""
    headers = None if durable is None else {DURABLE_HEADER.decode(): str(durable).lower()}
    return Response(body, media_type="application/json", headers=headers)


def _unavailable(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=503)


def _durable_header(durable: bool) -> list[tuple[bytes, bytes]]:
    return [(DURABLE_HEADER, b"true" if durable else b"false")]


async def _durable(receipt: Receipt | None, waits: bool) -> bool:
    """Whether the records behind an answer are durable: the receipt's answer, awaited for at
    most ``DURABLE_WAIT_SECONDS`` when the log writer fsyncs (``waits``); None: stored already."""
    if receipt is None:
        return True
    if receipt.done():
        return bool(receipt.result())
    if not waits:
        return False
    try:
        return bool(await asyncio.wait_for(asyncio.wrap_future(receipt), DURABLE_WAIT_SECONDS))
    except TimeoutError:
        return False


def _durable_now(receipt: Receipt | None, waits: bool) -> bool:
    """``_durable`` from a worker thread (BentoML's sync API methods)."""
    if receipt is None:
        return True
    if not waits and not receipt.done():
        return False
    try:
        return bool(receipt.result(timeout=DURABLE_WAIT_SECONDS))
    except TimeoutError:
        return False


class ReadinessMiddleware:
    """``GET /readyz``: 503 with the reason while a ``READINESS`` check fails (the prediction
    log cannot be written …); otherwise BentoML answers (model loaded or not)."""

    def __init__(self, app: Any, checks: dict[str, Callable[[], tuple[bool, str | None]]]
                 ) -> None:
        self.app = app
        self.checks = checks

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") == "/readyz":
            reasons = [reason or name for name, check in list(self.checks.items())
                       for ok, reason in [check()] if not ok]
            if reasons:
                body = json.dumps({"ready": False, "reasons": reasons}).encode()
                await send_body(send, 503, body)
                return
        await self.app(scope, receive, send)


def _start_rescoring(predictor: Predictor, settings: Any) -> Any:
    """The re-scorer of events (``serving.rescoring``) and the webhook, started; None (and a
    /readyz reason) when the lead-state store cannot be opened."""
    from serving import lead_routes
    from serving.rescoring import Rescorer

    try:
        rescoring = Rescorer.from_settings(predictor, settings).start()
    except Exception as exc:  # noqa: BLE001 - serve predictions; say why re-scoring is off
        reason = f"lead state unavailable: {type(exc).__name__}"
        logger.error("re-scoring is off: %s", reason)
        READINESS["lead_state"] = lambda: (False, reason)
        lead_routes.bind(None)
        return None
    predictor.on_scored = rescoring.register
    lead_routes.bind(rescoring)
    READINESS["lead_state"] = rescoring.recovery_status
    return rescoring


@bentoml.asgi_app(LEADS_APP, path="/", name="leads")
@bentoml.asgi_app(portrait_app, path="/", name="portraits")
@bentoml.service(
    name=SERVICE_NAME,
    traffic={"timeout": 30, "max_concurrency": 256},
    workers=1,
    http={"port": 3000},
    # per-request cost kept off the hot path (benchmarks/bench_serving.py): no access log line
    # (uvicorn/BentoML still log errors; degraded answers are logged and counted), tracing
    # sampled at 0 (no span export) and skipped for every path: the OpenTelemetry middleware
    # still made 4 non-recording spans per request, and BentoML's timeout timer keeps each
    # request's context (spans included) alive for the full timeout, so a burst of 10,000
    # requests left ~200,000 objects for every full garbage collection to scan for 30 s
    # (/predict p99 5 → 17 ms; benchmarks/bench_faults.py --only metrics_flood).
    logging={"access": {"enabled": False}},
    # BentoML's request metrics label each request with its raw path (unbounded: any random
    # path became a series); serving.http_metrics records them per route, "other" for the rest
    metrics={"enabled": False},
    tracing={"sample_rate": 0.0, "excluded_urls": [r".*"]},
)
class LeadScoring:
    """Conversion probability, tier, follow-up channel and reasons for CRM form submissions."""

    def __init__(self) -> None:
        die_with_server()  # a worker of serving.launcher ends with it, even on SIGKILL
        settings = get_settings()
        _api_key()  # no key, no service: fail at start-up with a clear message
        self.predictor = Predictor.from_settings(settings)
        self.predictor.on_degraded = lambda reason, n: DEGRADED_TOTAL.labels(reason=reason).inc(n)
        self._report_model()
        if not self.predictor.ready():
            logger.error("serving without a model: %s", self.predictor.load_error)
        self._batch_limiter: anyio.CapacityLimiter | None = None
        FAST_ROUTES.clear()
        FAST_ROUTES.update({"/predict": self._fast_predict, "/predict_batch": self._fast_batch,
                            "/events": validating_route("/events", EventsRequest),
                            "/outcomes": validating_route("/outcomes", OutcomesRequest),
                            "/reload": validating_route("/reload", ReloadRequest)})
        READINESS.clear()
        READINESS["prediction_log"] = self.predictor.log_status
        self.rescoring = _start_rescoring(self.predictor, settings)
        self._waits = bool(getattr(self.predictor.log, "waits_for_durability", False))
        _freeze_heap()

    def __is_ready__(self) -> bool:
        return self.predictor.ready() and self.predictor.log_status()[0]

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Store the queued prediction-log records (a bounded drain: what is left stays in the
        journal and is stored at the next start) before the process ends."""
        FAST_ROUTES.clear()
        READINESS.clear()
        if self.rescoring is not None:
            self.rescoring.close()
        self.predictor.close()

    # ---- the fast routes: the same answers as the API methods below, parsed here -------------
    async def _fast_predict(self, body: bytes) -> tuple[int, bytes, list] | None:
        """``POST /predict`` inline on the event loop (~1 ms of CPU, no thread hop), answered
        once its record is durable (the journal's group commit, awaited off the loop)."""
        return await self._durably(self._answer("/predict", body, batch=False))

    async def _fast_batch(self, body: bytes) -> tuple[int, bytes, list] | None:
        """``POST /predict_batch`` in a worker thread, one batch at a time (as BentoML runs a
        sync API), so that single predictions keep being answered meanwhile."""
        if self._batch_limiter is None:
            self._batch_limiter = anyio.CapacityLimiter(1)
        return await self._durably(await anyio.to_thread.run_sync(
            self._answer, "/predict_batch", body, True, limiter=self._batch_limiter))

    async def _durably(self, answer: tuple[int, bytes, Receipt | None] | None
                       ) -> tuple[int, bytes, list] | None:
        """The answer with its ``x-leadscore-durable`` header, once the records are durable
        (or known not to be)."""
        if answer is None:
            return None
        status, body, receipt = answer
        if status != 200:
            return status, body, []
        return status, body, _durable_header(await _durable(receipt, self._waits))

    def _answer(self, path: str, body: bytes, batch: bool
                ) -> tuple[int, bytes, Receipt | None] | None:
        """(status, JSON, log receipt) of a prediction request, or None to let BentoML answer
        it: invalid input (422 with the fields, logged by BentoML) or no model (503)."""
        try:  # validated at the door first, whatever the state (422, one WARNING line)
            submissions = (parse_request(BatchRequest, body).submissions if batch
                           else [parse_request(Submission, body)])
        except ValidationError as exc:
            return *refusal(path, exc), None
        if not self.predictor.ready():
            return None
        try:
            return 200, *self.predictor.predict_json_logged(submissions, batch=batch)
        except ModelUnavailableError:
            return None
        except Exception:  # as BentoML: logged, a 500 without details
            logger.exception("Exception on %s [POST]", path)
            return 500, INTERNAL_ERROR, None

    def _report_model(self) -> None:
        model = self.predictor.model
        if model is not None:
            MODEL_INFO.labels(version=model.version).set(1)

    def _no_model(self) -> JSONResponse:
        return _unavailable(
            "no model is loaded: train and register a champion (`leadscore train`), then "
            f"POST /reload. Detail: {self.predictor.load_error or 'none'}"
        )

    @bentoml.api(route="/predict", input_spec=Submission, output_spec=Prediction)
    async def predict(self, **fields: Any) -> Prediction | Response:
        """Score one form submission (inline on the event loop: ~1 ms of CPU, no thread hop)."""
        if not self.predictor.ready():
            return self._no_model()
        try:
            body, receipt = self.predictor.predict_json_logged(
                [Submission.model_construct(**fields)])
        except ModelUnavailableError:
            return self._no_model()
        return _json(body, await _durable(receipt, self._waits))

    @bentoml.api(route="/predict_batch", input_spec=BatchRequest, output_spec=BatchResponse)
    def predict_batch(self, submissions: list[Submission]) -> BatchResponse | Response:
        """Score up to 1,000 submissions, answered in the order given."""
        if not self.predictor.ready():
            return self._no_model()
        try:
            body, receipt = self.predictor.predict_json_logged(submissions, batch=True)
        except ModelUnavailableError:
            return self._no_model()
        return _json(body, _durable_now(receipt, self._waits))

    @bentoml.api(route="/events", input_spec=EventsRequest, output_spec=EventsResponse)
    def events(self, events: list[Event]) -> EventsResponse | JSONResponse:
        """Push behaviour events into the online store; the person's next prediction sees them."""
        try:
            if self.rescoring is not None:  # events re-score the persons' open leads
                return self.rescoring.handle_events(events)
            return self.predictor.push_events(events)
        except OnlineStoreError as exc:
            logger.warning("event push failed: %s", exc)
            return _unavailable(getattr(exc, "public_message",
                                        "the online feature store is unreachable; retry later"))
        except LeadStateRecovering as exc:
            return _unavailable(exc.public_message)
        except Exception as exc:  # noqa: BLE001 - Feast/SQLite write errors: store trouble
            logger.warning("event push failed: %s", type(exc).__name__)
            return _unavailable("the online feature store could not be updated; retry later")

    @bentoml.api(route="/outcomes", input_spec=OutcomesRequest, output_spec=OutcomesResponse)
    def outcomes(self, outcomes: list[Any]) -> OutcomesResponse | JSONResponse:
        """Close leads with the CRM's outcomes (converted / closed); each item is checked on
        its own and a bad one refused with its field and reason (docs/api.md, "Outcomes")."""
        if self.rescoring is None:
            return _unavailable("the lead state is not available (see the service log)")
        try:
            return self.rescoring.handle_outcomes(outcomes)
        except LeadStateRecovering as exc:
            return _unavailable(exc.public_message)
        except Exception as exc:  # noqa: BLE001 - lead-state store trouble: retry later
            logger.warning("outcomes not recorded: %s", type(exc).__name__)
            return _unavailable("the lead state could not be written; retry later")

    @bentoml.api(route="/reload")
    def reload(self) -> dict:
        """Load the current champion atomically (the old model serves until the swap)."""
        version = self.predictor.reload()
        self._report_model()
        _freeze_heap()
        return {"model_version": version, "ready": self.predictor.ready(),
                "error": self.predictor.load_error}


# the first added is the outermost: request metrics (by route), the header cap, the key check,
# the guards (body size, type, /docs, /docs.json), the fast routes (door validation)
LeadScoring.add_asgi_middleware(RouteMetricsMiddleware, routes=API_ROUTES,
                                service_name=SERVICE_NAME,
                                prefixes={**ROUTE_LABELS, **PORTRAIT_LABELS})
LeadScoring.add_asgi_middleware(HeaderLimitMiddleware)
LeadScoring.add_asgi_middleware(ApiKeyMiddleware, key_loader=_api_key, delegated=AGENT_PATHS)
LeadScoring.add_asgi_middleware(
    RequestGuardMiddleware, openapi=lambda: service_openapi(
        LeadScoring.openapi_spec.asdict(),
        extra_paths={**OPENAPI_PATHS, **(portraits := portrait_openapi())["paths"]},
        extra_schemas=portraits["schemas"]))
LeadScoring.add_asgi_middleware(FastRouteMiddleware, routes=FAST_ROUTES,
                                server_header=f"BentoML Service/{SERVICE_NAME}")
LeadScoring.add_asgi_middleware(ReadinessMiddleware, checks=READINESS)
