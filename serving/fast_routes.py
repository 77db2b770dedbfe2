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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from serving.http_guards import send_body

FastRoute = Callable[[bytes], Awaitable["tuple[int, bytes] | None"]]


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
        if answer is not None:
            await send_body(send, answer[0], answer[1], self._extra_headers)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
