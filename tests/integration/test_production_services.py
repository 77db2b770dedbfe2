"""The production profile against the real PostgreSQL and Redis (``-m services``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import typer
from typer.testing import CliRunner

from commands.doctor import doctor
from leadscore.config import get_settings, load_settings
from leadscore.profiles import (
    MAINTENANCE_DATABASE,
    PRODUCTION_DATABASES,
    ensure_databases,
    postgres_url,
)

pytestmark = pytest.mark.services

SERVICE_ROWS = (
    "PostgreSQL", "Redis (Feast online store, redis)", "MLflow tracking store", "Optuna storage",
    "Feast registry (SQL)",
)


def _doctor(*args: str) -> tuple[int, dict[str, dict[str, str]]]:
    app = typer.Typer()
    app.command("doctor")(doctor)
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.stdout.strip(), result.output
    return result.exit_code, {row["component"]: row for row in json.loads(result.stdout)}


@pytest.fixture
def production_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.setenv("LEADSCORE_WORKDIR", str(tmp_path))
    monkeypatch.setenv("LEADSCORE_PROFILE", "production")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LEADSCORE_MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_ensure_databases_creates_a_missing_database(postgres_available: None,
                                                     tmp_path: Path) -> None:
    settings = load_settings({"LEADSCORE_WORKDIR": str(tmp_path),
                              "LEADSCORE_PROFILE": "production"})
    name = f"leadscore_test_{uuid.uuid4().hex[:10]}"
    admin = postgres_url(settings, MAINTENANCE_DATABASE, driver=None)
    try:
        assert ensure_databases(settings, [name]) == [name]
        assert ensure_databases(settings, [name]) == []  # idempotent
        with psycopg.connect(postgres_url(settings, name, driver=None), connect_timeout=2) as c:
            assert c.execute("SELECT current_database()").fetchone()[0] == name
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=2) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def test_ensure_databases_names_an_unreachable_server(tmp_path: Path) -> None:
    settings = load_settings({"LEADSCORE_WORKDIR": str(tmp_path),
                              "LEADSCORE_POSTGRES_URL": "postgresql://postgres:pw@127.0.0.1:1"})
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:1.*not reachable") as info:
        ensure_databases(settings, ["whatever"])
    assert "pw" not in str(info.value)


def test_doctor_reports_the_real_services_as_ok(postgres_available: None,
                                                redis_available: None,
                                                production_env: Path) -> None:
    code, rows = _doctor("--create-databases")
    for component in SERVICE_ROWS:
        assert rows[component]["status"] == "ok", rows[component]
    for database in PRODUCTION_DATABASES.values():
        assert any(c.startswith(f"database {database} ") and r["status"] == "ok"
                   for c, r in rows.items())
    # pipeline state (Feast applied, champion) may or may not exist on a shared server,
    # but it is never a failure when the services answer
    assert all(r["status"] in {"ok", "missing"} for r in rows.values()), rows
    assert code == (0 if all(r["status"] == "ok" for r in rows.values()) else 1)
    assert "PING ok" in rows["Redis (Feast online store, redis)"]["detail"]


def test_doctor_on_wrong_ports_fails_clearly(production_env: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADSCORE_POSTGRES_URL", "postgresql://postgres:secret@127.0.0.1:1")
    monkeypatch.setenv("LEADSCORE_REDIS_URL", "redis://127.0.0.1:1/0")
    code, rows = _doctor()
    assert code == 1
    postgres = rows["PostgreSQL"]
    assert postgres["status"] == "fail"
    assert "127.0.0.1" in postgres["detail"] and "LEADSCORE_POSTGRES_URL" in postgres["hint"]
    assert "secret" not in json.dumps(rows)
    assert postgres["url"] == "postgresql://postgres:***@127.0.0.1:1/postgres"
    redis_row = rows["Redis (Feast online store, redis)"]
    assert redis_row["status"] == "fail" and "LEADSCORE_REDIS_URL" in redis_row["hint"]
    # the stores on the dead server fail fast, pointing at the PostgreSQL row
    assert rows["MLflow tracking store"]["status"] == "fail"
    assert "unreachable" in rows["Optuna storage"]["detail"]


def test_doctor_refuses_a_bad_redis_url_with_the_setting_name(production_env: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setenv("LEADSCORE_REDIS_URL", "http://127.0.0.1:6379")
    code, rows = _doctor()
    assert code == 1
    assert any("redis_url" in r["detail"] for r in rows.values())
