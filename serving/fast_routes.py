"""Fast twin of BentoML's request routing for ``POST /predict`` and ``/predict_batch``.

``FastRouteMiddleware`` (ASGI, inside the API key check and ``serving.http_guards``) hands the
body of a request whose path has a *fast route* (path → handler of the body) to that handler: an
answer ``(status, JSON bytes)`` is sent directly, skipping BentoML's per-request routing, request
objects and input parsing; None hands the request to the app unchanged (validation errors, no
model: BentoML answers and logs them). The middlewares outside this one (metrics, timeout,
concurrency, API key, the guards) still run. The handlers (``serving.service``) validate with the
same pydantic models and answer the same JSON as the API methods (``tests/integration/
test_service.py`` runs every endpoint test through them).

Kept for: single ``POST /predict`` (p50 ≤ 3 ms, p99 ≤ 10 ms at 200/s; today ~1.7 ms served) —
BentoML's own routing and parsing cost more than the noise band of today's p50 (measured ratio
and date in ``docs/scaling.md``, "Library paths and the fast twins we keep",
``benchmarks/bench_library_paths.py``).

Validation at the door: every API route's body is validated here (``serving.schemas.
parse_request``: the request model, plus no key repeated in a JSON object) whether or not it is
answered here, so BentoML's routing only ever sees valid input and both paths refuse alike. An
invalid body gets ``refusal``: a 422 with one entry per problem (field location, type, message;
never the input) and one WARNING log line naming the fields — not BentoML's ERROR traceback.
``validating_route`` is the handler of a route that only needs that check (``/events``,
``/outcomes``, ``/reload``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from serving.http_guards import send_body
from serving.schemas import (
    BatchRequest,
    Event,
    EventsRequest,
    FormFields,
    Identifiers,
    OutcomesRequest,
    ReloadRequest,
    Submission,
    parse_request,
)

FastRoute = Callable[[bytes], Awaitable["tuple[int, bytes] | tuple[int, bytes, list] | None"]]

logger = logging.getLogger("leadscore.service")
# field names that may appear in a log line; any other key (an unknown or repeated one, chosen
# by the client) is logged as <key>, so no client text reaches the log
LOGGED_FIELDS = frozenset(
    name for model in (Submission, FormFields, Identifiers, BatchRequest, Event, EventsRequest,
                       OutcomesRequest, ReloadRequest) for name in model.model_fields)
MAX_LOGGED_PROBLEMS = 5


def _logged_location(loc: tuple[str | int, ...]) -> str:
    parts = [str(p) if isinstance(p, int) or p in LOGGED_FIELDS else "<key>" for p in loc]
    return ".".join(parts) or "<body>"


def refusal(path: str, error: ValidationError) -> tuple[int, bytes]:
    """The 422 answer to an invalid body, logged as one WARNING line naming the fields."""
    problems = error.errors(include_url=False, include_context=False, include_input=False)
    named = [f"{_logged_location(p['loc'])} ({p['type']})" for p in problems]
    more = len(named) - MAX_LOGGED_PROBLEMS
    logger.warning("422 on POST %s: %s%s", path, ", ".join(named[:MAX_LOGGED_PROBLEMS]),
                   f" and {more} more" if more > 0 else "")
    count = len(problems)
    body = {"error": f"{count} validation error{'s' if count != 1 else ''} for {error.title}",
            "detail": problems}
    return 422, json.dumps(body, separators=(",", ":")).encode()


def validating_route(path: str, model: type[BaseModel]) -> FastRoute:
    """A route handler that refuses an invalid body (422) and hands a valid one to the app."""

    async def check(body: bytes) -> tuple[int, bytes] | None:
        try:
            parse_request(model, body)
        except ValidationError as exc:
            return refusal(path, exc)
        return None

    return check


class FastRouteMiddleware:
    """ASGI middleware: answer ``POST`` requests of the fast routes without BentoML's routing."""

    def __init__(self, app: Any, routes: Mapping[str, FastRoute],
                 server_header: str | None = None) -> None:
        self.app = app
        self.routes = routes
        self._extra_headers = ([(b"server", server_header.encode())] if server_header else [])

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        route = (self.routes.get(scope.get("path", ""))
                 if scope["type"] == "http" and scope.get("method") == "POST" else None)
        if route is None:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:  # the guards outside bound the size and replay the body in one message
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        answer = await route(body)
        if answer is not None:  # (status, body) or (status, body, extra headers)
            headers = [*self._extra_headers, *answer[2]] if len(answer) > 2 else self._extra_headers
            await send_body(send, answer[0], answer[1], headers)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
