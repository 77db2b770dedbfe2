"""A real HTTP receiver of the CRM webhook on loopback, for tests and benchmarks.

It does what docs/api.md asks of a receiver: checks the ``X-Leadscore-Signature`` (HMAC-SHA256)
and de-duplicates on ``Idempotency-Key``. Its ``mode`` can be switched while it runs:
``ok`` (200), ``fail`` (500), ``hang`` (holds the request ``hang_seconds``, then drops it
unanswered), ``redirect`` (302 to itself: a redirect loop for a client that follows redirects).
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from leadscore.schemas import CHANNELS, DEVICES, GRADES, SUBJECTS
from serving.webhook import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify_signature


@dataclass
class Delivery:
    """One accepted (200) delivery."""

    key: str
    received: float  # time.time()
    body: dict[str, Any]
    raw: bytes


@dataclass
class WebhookReceiver:
    """``with WebhookReceiver(secret) as r: r.url …``; ``r.deliveries`` (first per key)."""

    secret: str
    mode: str = "ok"
    hang_seconds: float = 10.0
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    duplicates: int = 0
    bad_signatures: int = 0
    requests: int = 0
    refused: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                return

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver._handle(self, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/leadscore-hook"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler, status: int,
                headers: dict[str, str] | None = None) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        with self._lock:
            self.requests += 1
        mode = self.mode
        if mode == "hang":  # holds the request, then drops the connection unanswered
            time.sleep(self.hang_seconds)
            handler.close_connection = True
            return
        if mode == "fail":
            with self._lock:
                self.refused += 1
            self._answer(handler, 500)
            return
        elif mode == "redirect":
            with self._lock:
                self.refused += 1
            self._answer(handler, 302, {"Location": self.url})
            return
        if not verify_signature(self.secret, handler.headers.get(SIGNATURE_HEADER), body):
            with self._lock:
                self.bad_signatures += 1
            self._answer(handler, 401)
            return
        key = handler.headers.get(IDEMPOTENCY_HEADER, "")
        with self._lock:
            if key in self.deliveries:
                self.duplicates += 1  # already processed: acknowledge, do nothing
            else:
                self.deliveries[key] = Delivery(key, time.time(), json.loads(body), body)
        self._answer(handler, 200)

    def wait_for(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` distinct keys arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.deliveries) >= n:
                return True
            time.sleep(0.05)
        return len(self.deliveries) >= n


def varied_submissions(ids: list[str], seed: int = 1) -> list[dict]:
    """Form submissions at the form's step, spread over channels, grades, cities, devices."""
    rng = random.Random(seed)
    at = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    return [{"lead_id": lead, "submitted_at": at, "channel": rng.choice(CHANNELS),
             "funnel_step": "submitted", "landing_page": rng.choice(["/trial/math", "/",
                                                                      "/pricing"]),
             "form": {"grade": rng.choice(GRADES), "subject": rng.choice(SUBJECTS),
                      "city": rng.choice(["Beijing", "Hangzhou", "Foshan", "Luoyang"]),
                      "device": rng.choice(DEVICES)},
             "identifiers": {"phone": f"+86 139 {rng.randrange(10**8):08d}"}} for lead in ids]


def engaged_events(lead_ids: list[str], now: datetime | None = None) -> list[dict]:
    """Per lead: pages and classes visited minutes ago, then a booked trial — the answer of a
    new person's lead moves well across a tier cut-off (the step and the intent both rise)."""
    now = now or datetime.now(UTC)
    kinds = ("pricing_page", "trial_class", "live_class", "course_page", "web_visit", "app_open")
    events = []
    for lead in lead_ids:
        events.extend({"lead_id": lead, "event_type": kind, "dwell_seconds": 300,
                       "url": "/pricing" if kind == "pricing_page" else "/course",
                       "event_time": (now - timedelta(minutes=3, seconds=j)).isoformat()}
                      for j, kind in enumerate(kinds))
        events.append({"lead_id": lead, "event_type": "booked_trial",
                       "event_time": now.isoformat()})
    return events
