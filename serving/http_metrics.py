"""Request metrics with one ``endpoint`` label per route the service has, and ``GET /metrics``.

BentoML's own request metrics label every request with its raw path, so each distinct path,
even a 401 or 404 one, became a new time series: 2,000 unauthenticated GETs to random paths
grew ``/metrics`` from 219 KB to 8.1 MB, slowed ``/predict`` thirty-fold and filled the
Prometheus files (and, with phone-like paths, showed them on the open ``/metrics``). The service
therefore turns BentoML's metrics off (``metrics.enabled: false``) and this middleware, the
outermost one, records the same series under a bounded label set:

* ``endpoint``: the request's path when it is a route of the service (``ROUTE_LABELS``: the API
  routes, health, readiness, metrics, docs), else ``other``;
* ``http_response_code``: the answered status; ``service_name``.

Series (names as BentoML's): ``bentoml_service_request_total``,
``bentoml_service_request_duration_seconds`` (histogram), ``bentoml_service_request_in_progress``
and ``bentoml_service_last_request_timestamp_seconds``. ``GET /metrics`` renders every metric of
the process group (prometheus_client's multiprocess collector over ``PROMETHEUS_MULTIPROC_DIR``,
which ``serving.launcher`` keeps on a RAM-backed folder outside the work folder), including the
service's own ``leadscore_*`` metrics.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import anyio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

OTHER = "other"
NAMESPACE = "bentoml_service"
# paths answered by BentoML itself, always labelled by name
SYSTEM_ROUTES = ("/", "/healthz", "/livez", "/readyz", "/metrics", "/docs", "/docs.json",
                 "/schema.json")
# latency buckets (seconds): fine below 10 ms, where /predict answers
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
           float("inf"))

REQUEST_TOTAL = Counter(
    "request_total", "Total number of HTTP requests (endpoint 'other': not a route).",
    labelnames=["endpoint", "service_name", "http_response_code"], namespace=NAMESPACE)
REQUEST_DURATION = Histogram(
    "request_duration_seconds", "HTTP request duration in seconds.",
    labelnames=["endpoint", "service_name", "http_response_code"], namespace=NAMESPACE,
    buckets=BUCKETS)
REQUEST_IN_PROGRESS = Gauge(
    "request_in_progress", "HTTP requests in progress now.",
    labelnames=["endpoint", "service_name"], namespace=NAMESPACE, multiprocess_mode="livesum")
LAST_REQUEST = Gauge(
    "last_request_timestamp_seconds", "Unix time of the last request to a route.",
    labelnames=["service_name"], namespace=NAMESPACE, multiprocess_mode="mostrecent")


def render_metrics() -> bytes:
    """The Prometheus text of every metric of the service's processes."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # in-process app (tests): this process
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry)


class RouteMetricsMiddleware:
    """ASGI middleware: count and time every HTTP request under its route (or ``other``);
    answer ``GET /metrics``."""

    def __init__(self, app: Any, routes: Iterable[str], service_name: str,
                 prefixes: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.labels = frozenset((*SYSTEM_ROUTES, *routes))
        # mounted routes: a path equal to a key, or under a key ending in "/", is labelled by
        # its template (e.g. "/leads/" → "/leads/{lead_id}"), never by its raw path
        self.prefixes = dict(prefixes or {})
        self.service_name = service_name
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def _series(self, endpoint: str, status: int) -> tuple[Any, Any]:
        key = (endpoint, status)
        series = self._children.get(key)
        if series is None:
            labels = (endpoint, self.service_name, str(status))
            series = (REQUEST_TOTAL.labels(*labels), REQUEST_DURATION.labels(*labels))
            self._children[key] = series
        return series

    def _template(self, path: str) -> str:
        for prefix, label in self.prefixes.items():
            if path == prefix or (prefix.endswith("/") and path.startswith(prefix)
                                  and "/" not in path[len(prefix):]):
                return label
        return OTHER

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/metrics" and scope.get("method") in ("GET", "HEAD"):
            body = await anyio.to_thread.run_sync(render_metrics)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode()),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body",
                        "body": b"" if scope["method"] == "HEAD" else body})
            return
        endpoint = path if path in self.labels else self._template(path)
        started = time.perf_counter()
        status = 0

        async def counting_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                total, duration = self._series(endpoint, status)
                total.inc()
                duration.observe(time.perf_counter() - started)
            await send(message)

        if endpoint != OTHER:
            LAST_REQUEST.labels(self.service_name).set(time.time())
        in_progress = REQUEST_IN_PROGRESS.labels(endpoint, self.service_name)
        in_progress.inc()
        try:
            await self.app(scope, receive, counting_send)
        finally:
            in_progress.dec()
