"""Shared fixtures and the tier rules of the suite.

Every test lives in one tier folder and gets that folder's marker (``unit``, ``data``,
``model``, ``integration``), so ``-m`` can pick tiers. A test that asks for PostgreSQL or Redis
(the ``postgres_available`` / ``redis_available`` fixtures) is marked ``services``, and every
``services`` test must sit in ``tests/integration/``: collection stops with the test named
otherwise. MLflow's URI variables are put back after every test.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from tests.services import POSTGRES, REDIS, require_service

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "data", "model", "integration")
SERVICE_FIXTURES = frozenset({"postgres_available", "redis_available"})
MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def tier_of(path: Path) -> str | None:
    """The tier folder ``path`` sits in (``None`` outside ``tests/<tier>/``)."""
    try:
        parts = path.resolve().relative_to(TESTS).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier (and ``services`` when it asks for a service); refuse a
    test outside the tier folders or a ``services`` test outside ``tests/integration/``."""
    misplaced: list[str] = []
    for item in items:
        tier = tier_of(item.path)
        if tier is None:
            misplaced.append(f"{item.nodeid}: not in a tier folder ({', '.join(TIERS)})")
            continue
        item.add_marker(getattr(pytest.mark, tier))
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)
        if tier != "integration" and item.get_closest_marker("services") is not None:
            misplaced.append(f"{item.nodeid}: needs PostgreSQL/Redis, so it belongs in "
                             "tests/integration/")
    if misplaced:
        raise pytest.UsageError("tests outside their tier:\n  " + "\n  ".join(misplaced))


@pytest.fixture
def postgres_available() -> None:
    """Skip (fail under CI) unless the local PostgreSQL answers."""
    require_service(*POSTGRES)


@pytest.fixture
def redis_available() -> None:
    """Skip (fail under CI) unless the local Redis answers."""
    require_service(*REDIS)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """Put MLflow's URI variables back after each test (its fixtures' set-up included).

    ``mlflow.set_tracking_uri`` exports ``MLFLOW_TRACKING_URI`` whenever the URI changes, and
    ``Settings.tracking_uri`` lets that variable win: without this, a test (or a shared work
    folder's set-up) that loads a champion from one work folder would point every later test at
    that folder's registry, and the outcome would depend on the order the tiers run in.
    """
    saved = {name: os.environ.get(name) for name in MLFLOW_URI_VARIABLES}
    try:
        return (yield)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
