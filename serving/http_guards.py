"""Request guards in front of the BentoML app: header size, body size, content type, the docs.

* Request headers may total at most ``MAX_HEADER_BYTES`` (names and values; → 431, before the
  API key is even read): ``HeaderLimitMiddleware``, outside the key check.
* ``POST`` bodies must be JSON (``application/json``; anything else → 415) and at most
  ``MAX_BODY_BYTES`` (→ 413, checked on ``Content-Length`` and while reading the body, which
  is then handed to the app in one piece).
  BentoML would otherwise pick a serde from the content type (multipart, pickle …).
* ``GET /docs`` serves BentoML's Swagger UI (the index page), which loads ``/docs.json``;
  ``GET /docs.json`` answers the service's own OpenAPI document (``serving.openapi``: the
  statuses the service really answers), built once on first request.

The fast routes of ``/predict`` and ``/predict_batch`` are ``serving.fast_routes`` (inside this).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

MAX_BODY_BYTES = 2 * 1024 * 1024  # a full batch of 1,000 submissions is ~0.5 MB
# all request header names and values together (browsers and proxies send ~1-2 KB)
MAX_HEADER_BYTES = 16 * 1024
JSON_TYPES = frozenset({b"application/json", b""})


class HeaderLimitMiddleware:
    """ASGI middleware: 431 when the request headers total more than ``max_header_bytes``."""

    def __init__(self, app: Any, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            size = 0
            for name, value in scope.get("headers") or ():
                size += len(name) + len(value)
            if size > self.max_header_bytes:
                await send_json(send, 431, {"error": "request headers over "
                                                     f"{self.max_header_bytes} bytes"})
                return
        await self.app(scope, receive, send)


class RequestGuardMiddleware:
    """ASGI middleware: 413/415 for unusable bodies, ``/docs`` → the Swagger UI, ``/docs.json``
    → ``openapi`` (the service's spec as a JSON-ready dict, built on first request)."""

    def __init__(self, app: Any, max_body_bytes: int = MAX_BODY_BYTES,
                 openapi: Callable[[], dict] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._openapi = openapi
        self._openapi_body: bytes | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path")
        if path == "/docs":
            scope = {**scope, "path": "/", "raw_path": b"/"}
        elif path == "/docs.json" and self._openapi is not None and scope.get("method") == "GET":
            if self._openapi_body is None:
                self._openapi_body = json.dumps(self._openapi(), separators=(",", ":")).encode()
            await send_body(send, 200, self._openapi_body)
            return
        if scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media not in JSON_TYPES:
            await send_json(send, 415, {"error": "send the body as JSON "
                                                 "(Content-Type: application/json)"})
            return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > self.max_body_bytes
            except ValueError:
                await send_json(send, 400, {"error": "malformed Content-Length header"})
                return
            if too_large:
                await self._refuse_size(send)
                return
        # read the body here (bounded), then hand it to the app in one message
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._refuse_size(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse_size(self, send: Any) -> None:
        await send_json(send, 413, {"error": f"request body over {self.max_body_bytes} bytes; "
                                             "send at most 1,000 submissions per batch"})


async def send_json(send: Any, status: int, payload: dict) -> None:
    """Send a complete JSON response through an ASGI ``send``."""
    await send_body(send, status, json.dumps(payload).encode())


async def send_body(send: Any, status: int, body: bytes,
                    extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send complete JSON bytes (with a Content-Length) through an ASGI ``send``."""
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *(extra_headers or ())],
    })
    await send({"type": "http.response.body", "body": body})
