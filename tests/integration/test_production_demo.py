"""The main job end to end under the production profile (PostgreSQL + Redis), isolated.

Unique ``database_prefix`` (its four PostgreSQL databases are dropped afterwards) and a Redis
database other than 0 (flushed before and after). Needs the local PostgreSQL and Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from leadscore.config import ConfigError, Settings, get_settings, load_settings
from leadscore.profiles import (
    PRODUCTION_DATABASES,
    drop_databases,
    postgres_url,
    production_databases,
    redis_client,
    service_urls,
)
from tests.integration.service_fixtures import production_settings, unique_prefix

pytestmark = pytest.mark.services

REDIS_TEST_URL = "redis://127.0.0.1:6379/13"
N_LEADS = 3000
# the replayed traffic is answered from Redis: only leads without any online row may degrade
MAX_DEGRADED_SHARE = 0.2


def test_database_prefix_names_every_database(tmp_path: Path) -> None:
    default = load_settings({"LEADSCORE_WORKDIR": str(tmp_path), "LEADSCORE_PROFILE": "production"})
    assert production_databases(default) == PRODUCTION_DATABASES
    settings = load_settings({"LEADSCORE_WORKDIR": str(tmp_path), "LEADSCORE_PROFILE": "production",
                              "LEADSCORE_DATABASE_PREFIX": "ci_42"})
    assert service_urls(settings).postgres_databases == (
        "ci_42_mlflow", "ci_42_optuna", "ci_42_feast", "ci_42")
    for bad in ("Upper", "with-dash", "", "1abc", "postgres", "x" * 41):
        with pytest.raises(ConfigError, match="database_prefix"):
            load_settings({"LEADSCORE_DATABASE_PREFIX": bad})


@pytest.fixture
def production(postgres_available: None, redis_available: None, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Production settings on unique databases and Redis db 13; everything removed after."""
    settings = production_settings(monkeypatch, tmp_path / "work", unique_prefix("demo"),
                                   REDIS_TEST_URL)
    client = redis_client(settings)
    client.flushdb()
    try:
        yield settings
    finally:
        client.flushdb()
        client.close()
        drop_databases(settings)
        get_settings.cache_clear()


@pytest.mark.slow
def test_demo_runs_on_postgres_and_redis(production: Settings) -> None:
    import psycopg
    from mlflow import MlflowClient

    from pipelines.demo import STAGES, run_demo

    settings = production
    summary = run_demo(settings, n_leads=N_LEADS, seed=11, trials=2)
    assert summary["completed"] == [name for name, _ in STAGES]

    databases = production_databases(settings)
    # the champion is registered in the PostgreSQL MLflow registry
    assert settings.tracking_uri.endswith("/" + databases["mlflow"])
    champion = MlflowClient(tracking_uri=settings.tracking_uri).get_model_version_by_alias(
        settings.model_name, "champion")
    assert str(champion.version) == str(summary["stages"]["serve"]["registry_version"])

    def rows(database: str, query: str) -> list[tuple]:
        with psycopg.connect(postgres_url(settings, database, driver=None)) as conn:
            return conn.execute(query).fetchall()

    # the Feast registry lives in PostgreSQL (SQL registry tables)
    assert rows(databases["feast"], "SELECT count(*) FROM feature_views")[0][0] > 0
    # Redis holds the materialized feature rows
    client = redis_client(settings)
    try:
        assert client.dbsize() > 100
    finally:
        client.close()
    # the replayed traffic was served from Redis: mostly not degraded
    served, degraded = rows(databases["prediction_log"],
                            "SELECT count(*), count(*) FILTER (WHERE degraded) FROM predictions")[0]
    print(f"prediction log: {served} answers, {degraded} degraded ({degraded / served:.1%})")
    assert served >= summary["stages"]["serve"]["submissions"] > 0
    assert degraded / served <= MAX_DEGRADED_SHARE, (degraded, served)
