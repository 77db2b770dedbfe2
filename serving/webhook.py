"""Telling the CRM that a lead's answer changed: a signed HTTP webhook from a durable outbox.

The re-scorer (``serving.rescoring``) writes each notification into the outbox in the same
transaction as the lead's new state (``crm_data.lead_state``); ``WebhookDeliverer`` (one
thread of the service, a small pool of senders) leases the due ones, POSTs them to
``settings.webhook_url`` and records the outcome:

* a 2xx answer → ``delivered``;
* anything else — another status (a 3xx is never followed: a redirect loop is one failed
  attempt), a refused connection, a timeout (connect ≤ 1 s, each read ≤
  ``webhook_timeout_seconds``) — is a failed attempt, retried after an exponential back-off
  (``webhook_backoff_seconds`` × 2^(attempt−1), at most ``webhook_backoff_max_seconds``, times
  a random 0.8–1.0 so that a recovered receiver is not hit by every message at once);
* after ``webhook_max_attempts`` failed attempts the message is ``dead`` (kept; ``leadscore
  outbox retry`` puts it back).

Delivery is at least once: a message leased by a process that dies before recording the
answer is leased again when the lease ends, so the receiver must de-duplicate on the
``Idempotency-Key`` header (also in the body). Each request carries ``X-Leadscore-Signature:
t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body under webhook_secret>``; receivers check
it with :func:`verify_signature` or its few lines in another language (docs/api.md).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from crm_data.lead_state import MICROS, LeadStateStore, now_us
from leadscore.config import Settings
from serving.log_writer import lower_thread_priority

WORKER_NICE = 3  # as the re-scoring worker: the webhook latency waits for this thread

logger = logging.getLogger("leadscore.webhook")

SIGNATURE_HEADER = "X-Leadscore-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_TOLERANCE_SECONDS = 300  # receivers refuse older signatures (replays)
CONNECT_TIMEOUT_SECONDS = 1.0
IDLE_WAIT_SECONDS = 0.25  # the deliverer looks for due retries at least this often


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret``."""
    return hmac.new(secret.encode(), str(int(timestamp)).encode() + b"." + body,
                    hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Leadscore-Signature`` value of ``body``: ``t=<unix seconds>,v1=<hex>``."""
    stamp = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={stamp},v1={sign(secret, stamp, body)}"


def verify_signature(secret: str, header: str | None, body: bytes,
                     tolerance_seconds: float = SIGNATURE_TOLERANCE_SECONDS,
                     now: float | None = None) -> bool:
    """The receiving side: True when ``header`` signs ``body`` with ``secret`` and its time
    lies within ``tolerance_seconds`` of ``now`` (constant-time comparison)."""
    if not header:
        return False
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        stamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance_seconds:
        return False
    return hmac.compare_digest(parts.get("v1", ""), sign(secret, stamp, body))


def backoff_seconds(attempts: int, base: float, cap: float, jitter: float | None = None
                    ) -> float:
    """Wait before the next attempt after ``attempts`` failed ones: ``base × 2^(attempts−1)``
    capped at ``cap``, times ``jitter`` (default: uniform in [0.8, 1.0])."""
    if attempts < 1:
        raise ValueError("attempts: at least one attempt has failed before a back-off")
    factor = random.uniform(0.8, 1.0) if jitter is None else jitter
    return min(cap, base * 2.0 ** min(attempts - 1, 60)) * factor


class WebhookDeliverer:
    """Delivers the outbox to one URL from a background thread (``start``/``notify``/``close``)."""

    def __init__(self, store: LeadStateStore, url: str, secret: str, timeout_seconds: float,
                 max_attempts: int, backoff_base: float, backoff_max: float,
                 concurrency: int = 16, batch: int = 64) -> None:
        import httpx

        self.store = store
        self.url = url
        self.secret = secret
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.batch = batch
        self.timeout = timeout_seconds
        rounds = -(-batch // concurrency)
        # longer than sending a whole batch takes, even with every request timing out
        self.lease_seconds = rounds * (timeout_seconds + CONNECT_TIMEOUT_SECONDS) + 5.0
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_seconds, connect=min(CONNECT_TIMEOUT_SECONDS,
                                                               timeout_seconds)),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=concurrency,
                                max_keepalive_connections=concurrency),
        )
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="webhook")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.failed_attempts = 0

    @classmethod
    def from_settings(cls, store: LeadStateStore, settings: Settings) -> WebhookDeliverer | None:
        """The deliverer of the configured webhook (None when no URL is configured)."""
        if not settings.webhook_url or not settings.webhook_secret:
            return None
        return cls(store, settings.webhook_url, settings.webhook_secret,
                   settings.webhook_timeout_seconds, settings.webhook_max_attempts,
                   settings.webhook_backoff_seconds, settings.webhook_backoff_max_seconds)

    # ---- running ---------------------------------------------------------------------------
    def start(self) -> WebhookDeliverer:
        self._thread = threading.Thread(target=self._run, name="webhook-deliverer", daemon=True)
        self._thread.start()
        return self

    def notify(self) -> None:
        """New messages are in the outbox: look now."""
        self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the batch in flight (what is left stays pending in the outbox)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def _run(self) -> None:
        lower_thread_priority(WORKER_NICE)
        while not self._stop.is_set():
            try:
                sent = self.deliver_due()
            except Exception as exc:  # noqa: BLE001 - the store is down: try again shortly
                logger.warning("webhook delivery round failed: %s", type(exc).__name__)
                sent = 0
            if sent == 0:
                self._wake.wait(IDLE_WAIT_SECONDS)
                self._wake.clear()

    # ---- one round -------------------------------------------------------------------------
    def deliver_due(self) -> int:
        """Lease the due messages (one batch), send them, record the outcomes; messages sent."""
        messages = self.store.claim_due(self.batch, self.lease_seconds)
        if not messages:
            return 0
        outcomes = list(self._pool.map(self._send, messages))
        delivered: list[int] = []
        failed: list[tuple[int, int, int, str, bool]] = []
        for message, error in zip(messages, outcomes, strict=True):
            if error is None:
                delivered.append(message["id"])
                continue
            attempts = int(message["attempts"]) + 1
            dead = attempts >= self.max_attempts
            wait = backoff_seconds(attempts, self.backoff_base, self.backoff_max)
            failed.append((message["id"], attempts, now_us() + int(wait * MICROS), error, dead))
            if dead:
                logger.warning("webhook message %s dead after %d attempts (%s)",
                               message["idempotency_key"], attempts, error)
        self.store.record_attempts(delivered, failed)
        self.delivered += len(delivered)
        self.failed_attempts += len(failed)
        return len(messages)

    def _send(self, message: dict[str, Any]) -> str | None:
        """POST one message; None when delivered, else why not (no body, no values)."""
        import httpx

        body = message["payload"].encode()
        headers = {"Content-Type": "application/json",
                   IDEMPOTENCY_HEADER: message["idempotency_key"],
                   SIGNATURE_HEADER: signature_header(self.secret, body)}
        try:
            response = self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError as exc:
            return f"connection failed ({type(exc).__name__})"
        if 200 <= response.status_code < 300:
            return None
        if 300 <= response.status_code < 400:
            return f"HTTP {response.status_code} (redirects are not followed)"
        return f"HTTP {response.status_code}"
