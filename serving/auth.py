"""API key handling: where the key comes from, and the ASGI middleware that enforces it.

The key comes from ``LEADSCORE_API_KEY`` (or ``api_key`` in the config file). With neither,
``leadscore serve`` creates one on first use in ``<workdir>/.leadscore_api_key`` (mode 0600).
The service never runs without a key.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from leadscore.config import Settings

# health, readiness, metrics and documentation need no key
OPEN_PATHS = frozenset(
    {"/", "/healthz", "/livez", "/readyz", "/metrics", "/docs", "/docs.json", "/schema.json"}
)
OPEN_PREFIXES = ("/static_content/", "/assets/")
KEY_FILE_NAME = ".leadscore_api_key"


class MissingApiKeyError(RuntimeError):
    """The service was started with no API key configured."""


def key_file(settings: Settings) -> Path:
    """Where ``leadscore serve`` keeps the key it created (mode 0600)."""
    return settings.workdir / KEY_FILE_NAME


def resolve_api_key(settings: Settings, create: bool = False) -> tuple[str, str]:
    """Return ``(key, source)``; with ``create`` make a key file when none is configured."""
    if settings.api_key:
        return settings.api_key, "environment/config"
    path = key_file(settings)
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key, str(path)
    if not create:
        raise MissingApiKeyError(
            "no API key: set LEADSCORE_API_KEY or run `leadscore serve` once to create one"
        )
    key = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key, str(path)


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class ApiKeyMiddleware:
    """Bearer-token check (401 without a key, 403 with a wrong one) for every API route but
    the ``delegated`` path prefixes, whose app authenticates the caller itself.

    Field-level validation (422) happens inside, at the door (``serving.fast_routes``).
    """

    def __init__(self, app, api_key: str | None = None,  # noqa: ANN001 - ASGI app
                 key_loader: Callable[[], str] | None = None,
                 delegated: tuple[str, ...] = ()) -> None:
        if api_key is None:
            if key_loader is None:
                raise MissingApiKeyError("ApiKeyMiddleware needs api_key or key_loader")
            api_key = key_loader()  # raises MissingApiKeyError: no key, no service
        if not api_key:
            raise MissingApiKeyError("the API key is empty")
        self.app = app
        self._key = api_key.encode()
        # paths whose app checks the caller itself (agent tokens: serving.portrait_api)
        self._delegated = tuple(delegated)

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI signature
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if scope["type"] != "http" or _is_open(path) or any(
                path == p or path.startswith(p + "/") for p in self._delegated):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if not auth or scheme.lower() != b"bearer" or not token:
            await _json(send, 401, {"error": "missing API key: send 'Authorization: Bearer <key>'"})
            return
        if not hmac.compare_digest(token.strip(), self._key):
            await _json(send, 403, {"error": "wrong API key"})
            return
        await self.app(scope, receive, send)


async def _json(send, status: int, payload: dict) -> None:  # noqa: ANN001
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
