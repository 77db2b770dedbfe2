"""Shared fixtures: an isolated work folder per test session, service reachability."""

from __future__ import annotations

import os
import socket

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest


def service_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip with a clear reason when a service is down; fail instead when CI is set."""
    if service_reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture
def postgres_available() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)


@pytest.fixture
def redis_available() -> None:
    require_service("Redis", "127.0.0.1", 6379)
