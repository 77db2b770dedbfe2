"""The prediction log on PostgreSQL (production) behaves like the SQLite one (embedded).

The same checks as ``tests/data/test_prediction_log.py`` on a throw-away database; and the
skip/fail rule every ``services`` test follows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from crm_data.prediction_log import PostgresPredictionLog, PredictionLogError, postgres_dsn
from leadscore.config import Settings
from leadscore.profiles import ensure_databases
from tests.data.test_prediction_log import check_roundtrip, hammer, record
from tests.services import require_service

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def postgres_database(postgres_available: None) -> Iterator[str]:
    """A throw-away database on the local PostgreSQL; dropped afterwards."""
    name = f"leadscore_test_{uuid.uuid4().hex[:10]}"
    ensure_databases(Settings().with_(postgres_url=POSTGRES_URL), [name])
    yield name
    with psycopg.connect(postgres_dsn(POSTGRES_URL, "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.services
def test_postgres_log_behaves_like_sqlite(postgres_database: str) -> None:
    dsn = postgres_dsn(POSTGRES_URL, postgres_database)
    with PostgresPredictionLog(dsn) as log:
        check_roundtrip(log)
    with PostgresPredictionLog(dsn) as log:  # table exists: reopened, rows kept
        assert log.count() == 6
        with pytest.raises(PredictionLogError, match="probability"):
            log.append([record(1, probability=-0.1)])
        assert log.count() == 6


@pytest.mark.services
def test_postgres_concurrent_appends_lose_nothing(postgres_database: str) -> None:
    dsn = postgres_dsn(POSTGRES_URL, postgres_database)
    with PostgresPredictionLog(dsn) as log:
        sent = hammer(log, threads=6, batches=15)
        assert log.count() == sent
    with PostgresPredictionLog(dsn) as log:
        assert log.read()["request_id"].is_unique


def test_services_marker_fails_under_ci_when_postgres_is_down(monkeypatch) -> None:
    """The skip/fail rule of the services tests (checked on a port nothing listens on)."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_service("nothing", "127.0.0.1", 1)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_service("nothing", "127.0.0.1", 1)
    assert os.environ.get("CI") is None
