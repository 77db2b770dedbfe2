"""Checks of the active profile's backing services and state: what is wrong, and the fix.

Each check returns a :class:`CheckResult` (component, URL with the password masked, status, detail,
hint). Statuses: ``ok``; ``missing`` (something not produced or created yet: the hint names the
command that makes it); ``fail`` (unreachable, unwritable or misconfigured). Every network check
uses a timeout of at most :data:`TIMEOUT_SECONDS`. The checks read state directly (SQLite files,
SQL tables, Redis PING, HTTP health) instead of importing MLflow or Feast, which alone take
seconds to import.

``leadscore doctor`` (``commands.doctor``) prints them; training uses them to fail early.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from leadscore.config import ConfigError, Settings
from leadscore.profiles import (
    MAINTENANCE_DATABASE,
    mask_password,
    postgres_url,
    production_databases,
    redis_client,
    redis_online_store,
    service_urls,
)
from leadscore.schemas import CHAMPION_ALIAS

TIMEOUT_SECONDS = 2
OK, MISSING, FAIL, SKIPPED = "ok", "missing", "fail", "skipped"
FEAST_PROJECT = "leadscore"
CREATE_HINT = "run `leadscore doctor --create-databases` (or profiles.ensure_databases)"
FEAST_HINT = "apply the Feast definitions (`leadscore demo` does it; features.store.ensure_applied)"
TRAIN_HINT = "train and register a model (`leadscore demo` or the train command)"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check."""

    component: str
    url: str
    status: str
    detail: str
    hint: str = ""

    @property
    def ok(self) -> bool:
        return self.status in {OK, SKIPPED}


def _result(component: str, url: str, status: str, detail: str, hint: str = "") -> CheckResult:
    return CheckResult(component, mask_password(url), status, detail, hint if status != OK else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# ---- files ----------------------------------------------------------------------------------
def _writable(folder: Path) -> tuple[bool, str]:
    """Whether files can be written in ``folder`` (or in the nearest existing parent)."""
    probe_dir = folder
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            return False, "no existing parent folder"
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        return False, f"{probe_dir} is a file, not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".doctor-"):
            pass
    except OSError as exc:
        return False, f"cannot write in {probe_dir}: {exc.strerror or exc}"
    return True, "writable" if probe_dir == folder else f"absent; {probe_dir} is writable"


def check_folders(settings: Settings) -> CheckResult:
    """Every folder the work folder writes into is writable (or can be created)."""
    folders = {
        "data": settings.data_dir, "raw": settings.raw_dir, "identity": settings.identity_dir,
        "features": settings.features_dir, "feast state": settings.feast_state_dir,
        "mlruns": settings.mlruns_dir, "reports": settings.reports_dir,
    }
    problems = [f"{name}: {why}" for name, path in folders.items()
                for ok, why in [_writable(path)] if not ok]
    if problems:
        return _result("work folders", str(settings.workdir), FAIL, "; ".join(problems),
                       "fix the permissions or pass --workdir to a writable folder")
    return _result("work folders", str(settings.workdir), OK, f"{len(folders)} folders writable")


def _sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def _sqlite_tables(path: Path) -> set[str]:
    """Table names of an existing SQLite file, opened read-only."""
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=TIMEOUT_SECONDS)
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    finally:
        conn.close()
    return {row[0] for row in rows}


def check_sqlite_file(component: str, path: Path, expected_table: str | None) -> CheckResult:
    """An SQLite file: absent but creatable, or a readable database (with ``expected_table``)."""
    url = str(path)
    if not path.exists():
        ok, why = _writable(path.parent)
        if ok:
            return _result(component, url, OK, "not created yet; created on first use")
        return _result(component, url, FAIL, why, "make the folder writable")
    try:
        tables = _sqlite_tables(path)
    except sqlite3.DatabaseError as exc:
        return _result(component, url, FAIL, f"not a readable SQLite database: {exc}",
                       "move the file away; it is recreated on first use")
    if expected_table and tables and expected_table not in tables:
        return _result(component, url, FAIL, f"SQLite file lacks table {expected_table!r}",
                       "the file belongs to something else: move it away")
    return _result(component, url, OK, f"SQLite database, {len(tables)} tables")


# ---- SQL stores (SQLAlchemy URLs) -----------------------------------------------------------
class ServerMemory:
    """Remembers servers that already failed, so that dependent checks fail fast."""

    def __init__(self) -> None:
        self.failed: dict[str, str] = {}

    @staticmethod
    def key(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port}"


def _engine(url: str) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args = {"connect_timeout": TIMEOUT_SECONDS,
                        "options": f"-c statement_timeout={TIMEOUT_SECONDS * 1000}"}
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


def _sql_tables(url: str) -> set[str]:
    from sqlalchemy import inspect

    engine = _engine(url)
    try:
        with engine.connect():
            return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _sql_scalar(url: str, query: str, params: dict[str, Any]) -> Any:
    from sqlalchemy import text

    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(query), params).scalar()
    finally:
        engine.dispose()


def check_sql_store(component: str, url: str, marker_table: str, what: str,
                    memory: ServerMemory) -> tuple[CheckResult, set[str] | None]:
    """A SQLAlchemy-URL store is reachable; reports whether ``marker_table`` (its schema) exists.

    Returns the result and the table names (None when unreachable)."""
    if url.startswith("sqlite:///"):
        path = _sqlite_path(url)
        result = check_sqlite_file(component, path, marker_table)
        tables = _sqlite_tables(path) if path.exists() and result.ok else set()
        return result, tables
    server = ServerMemory.key(url)
    if server in memory.failed:
        return _result(component, url, FAIL, f"server unreachable ({memory.failed[server]})",
                       "see the PostgreSQL row"), None
    try:
        tables = _sql_tables(url)
    except Exception as exc:  # noqa: BLE001 - drivers raise many types; report the message
        message = _first_line(exc)
        if "does not exist" in message:
            return _result(component, url, MISSING, "database does not exist", CREATE_HINT), None
        memory.failed[server] = message
        return _result(component, url, FAIL, message,
                       "check that the server runs and the URL (host, port, user)"), None
    if marker_table in tables:
        return _result(component, url, OK, f"reachable; {what} schema present"), tables
    return _result(component, url, OK, f"reachable; empty ({what} creates its tables on first "
                                       "use)"), tables


# ---- PostgreSQL and Redis -------------------------------------------------------------------
def check_postgres(settings: Settings, memory: ServerMemory) -> list[CheckResult]:
    """The server answers, and each production database exists (or this role may create it)."""
    import psycopg

    dsn = postgres_url(settings, MAINTENANCE_DATABASE, driver=None)
    try:
        with psycopg.connect(dsn, connect_timeout=TIMEOUT_SECONDS, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            present = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            can_create = bool(conn.execute(
                "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()[0])
    except psycopg.Error as exc:
        message = _first_line(exc)
        memory.failed[ServerMemory.key(dsn)] = message
        return [_result("PostgreSQL", dsn, FAIL, message,
                        "start PostgreSQL or fix LEADSCORE_POSTGRES_URL")]
    results = [_result("PostgreSQL", dsn, OK, f"reachable, server {version}")]
    for service, database in production_databases(settings).items():
        url = postgres_url(settings, database, driver=None)
        component = f"database {database} ({service})"
        if database in present:
            results.append(_result(component, url, OK, "exists"))
        elif can_create:
            results.append(_result(component, url, MISSING, "absent; this role can create it",
                                   CREATE_HINT))
        else:
            results.append(_result(component, url, FAIL, "absent and this role lacks CREATEDB",
                                   "create it as an administrator: CREATE DATABASE " + database))
    return results


def check_redis(settings: Settings) -> CheckResult:
    """Redis (or Redis Cluster) answers PING."""
    import redis

    url = settings.redis_url
    try:
        config = redis_online_store(settings)
    except ConfigError as exc:
        return _result("Redis (Feast online store)", url, FAIL, str(exc), "fix LEADSCORE_REDIS_URL")
    component = f"Redis (Feast online store, {config['redis_type']})"
    try:
        client = redis_client(settings, timeout=TIMEOUT_SECONDS)
        try:
            client.ping()
            version = client.info("server").get("redis_version", "?")
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        return _result(component, url, FAIL, _first_line(exc),
                       "start Redis or fix LEADSCORE_REDIS_URL")
    return _result(component, url, OK, f"PING ok, Redis {version}")


# ---- MLflow ---------------------------------------------------------------------------------
def _http_get(url: str) -> Any:
    import httpx

    return httpx.get(url, timeout=TIMEOUT_SECONDS)


def check_mlflow(settings: Settings, memory: ServerMemory) -> tuple[CheckResult, set[str] | None]:
    """The MLflow tracking store (database or tracking server) is reachable."""
    uri = settings.tracking_uri
    component = "MLflow tracking store"
    if uri.startswith(("http://", "https://")):
        try:
            response = _http_get(uri.rstrip("/") + "/health")
        except Exception as exc:  # noqa: BLE001 - httpx raises many transport errors
            return _result(component, uri, FAIL, _first_line(exc),
                           "start the MLflow server or fix MLFLOW_TRACKING_URI"), None
        if response.status_code != 200:
            return _result(component, uri, FAIL, f"/health answered {response.status_code}",
                           "check the MLflow server"), None
        return _result(component, uri, OK, "tracking server healthy"), None
    if "://" not in uri or uri.startswith("file:"):
        return _result(component, uri, SKIPPED, "file store: not checked"), None
    if uri.startswith(("sqlite:///", "postgresql", "mysql", "mssql")):
        return check_sql_store(component, uri, "alembic_version", "MLflow", memory)
    return _result(component, uri, SKIPPED, f"scheme {uri.split(':')[0]!r}: not checked"), None


def _dependent(component: str, url: str, parent: CheckResult, what: str) -> CheckResult:
    """The result of a check that could not run because ``parent`` (its store) is not ok."""
    if parent.status == MISSING:
        return _result(component, url, MISSING, f"{what} does not exist yet", parent.hint)
    if parent.status == SKIPPED:
        return _result(component, url, SKIPPED, f"{what} not checked")
    return _result(component, url, FAIL, f"{what} unreachable", f"see the {parent.component} row")


def check_champion(settings: Settings, mlflow: CheckResult,
                   mlflow_tables: set[str] | None) -> CheckResult:
    """A model version of ``settings.model_name`` carries the ``champion`` alias."""
    uri = settings.tracking_uri
    component = f"champion of {settings.model_name}"
    if uri.startswith(("http://", "https://")):
        try:
            response = _http_get(
                f"{uri.rstrip('/')}/api/2.0/mlflow/registered-models/alias"
                f"?name={settings.model_name}&alias={CHAMPION_ALIAS}"
            )
        except Exception as exc:  # noqa: BLE001
            return _result(component, uri, FAIL, _first_line(exc), "see the MLflow row")
        if response.status_code == 200:
            version = response.json().get("model_version", {}).get("version", "?")
            return _result(component, uri, OK, f"version {version}")
        return _result(component, uri, MISSING, "no champion alias", TRAIN_HINT)
    if mlflow_tables is None:
        return _dependent(component, uri, mlflow, "MLflow store")
    if "registered_model_aliases" not in mlflow_tables:
        return _result(component, uri, MISSING, "no model registered yet", TRAIN_HINT)
    query = ("SELECT version FROM registered_model_aliases WHERE name = :name AND alias = :alias")
    params = {"name": settings.model_name, "alias": CHAMPION_ALIAS}
    try:
        if uri.startswith("sqlite:///"):
            conn = sqlite3.connect(f"{_sqlite_path(uri).as_uri()}?mode=ro", uri=True,
                                   timeout=TIMEOUT_SECONDS)
            try:
                row = conn.execute(query.replace(":name", "?").replace(":alias", "?"),
                                   (params["name"], params["alias"])).fetchone()
            finally:
                conn.close()
            version = row[0] if row else None
        else:
            version = _sql_scalar(uri, query, params)
    except Exception as exc:  # noqa: BLE001
        return _result(component, uri, FAIL, _first_line(exc), "see the MLflow row")
    if version is None:
        return _result(component, uri, MISSING, "no version has the champion alias", TRAIN_HINT)
    return _result(component, uri, OK, f"version {version}")


# ---- Feast ----------------------------------------------------------------------------------
def check_feast_file_registry(settings: Settings) -> list[CheckResult]:
    """Embedded: the registry file exists and holds the feature service (Feast repo applied)."""
    path = Path(service_urls(settings).feast_registry)
    component = "Feast registry (file)"
    if not path.exists():
        return [_result(component, str(path), MISSING, "no registry yet: repo not applied",
                        FEAST_HINT)]
    # the registry is a protobuf; the feature service name is stored as a plain string
    if settings.feature_service.encode() not in path.read_bytes():
        return [_result(component, str(path), MISSING,
                        f"feature service {settings.feature_service!r} not registered",
                        FEAST_HINT)]
    return [_result(component, str(path), OK,
                    f"applied: feature service {settings.feature_service!r} registered")]


def check_feast_sql_registry(settings: Settings, memory: ServerMemory) -> list[CheckResult]:
    """Production: the SQL registry is reachable and holds the feature service."""
    url = service_urls(settings).feast_registry
    reach, tables = check_sql_store("Feast registry (SQL)", url, "feature_services", "Feast",
                                    memory)
    results = [reach]
    component = "Feast repo applied"
    if tables is None:
        results.append(_dependent(component, url, reach, "registry"))
        return results
    if "feature_services" not in tables:
        results.append(_result(component, url, MISSING, "registry is empty", FEAST_HINT))
        return results
    try:
        found = _sql_scalar(
            url, "SELECT COUNT(*) FROM feature_services WHERE feature_service_name = :name "
                 "AND project_id = :project",
            {"name": settings.feature_service, "project": FEAST_PROJECT},
        )
    except Exception as exc:  # noqa: BLE001
        results.append(_result(component, url, FAIL, _first_line(exc), "see the registry row"))
        return results
    if not found:
        results.append(_result(component, url, MISSING,
                               f"feature service {settings.feature_service!r} not registered",
                               FEAST_HINT))
    else:
        results.append(_result(component, url, OK,
                               f"feature service {settings.feature_service!r} registered"))
    return results


# ---- the checks per profile -----------------------------------------------------------------
def embedded_checks(settings: Settings) -> list[CheckResult]:
    """Folders, SQLite files, MLflow store, Feast registry, champion (embedded profile)."""
    urls = service_urls(settings)
    memory = ServerMemory()
    results = [check_folders(settings)]
    mlflow_result, mlflow_tables = check_mlflow(settings, memory)
    results.append(mlflow_result)
    if urls.optuna_storage.startswith("sqlite:///"):
        results.append(check_sqlite_file("Optuna storage", _sqlite_path(urls.optuna_storage),
                                         "studies"))
    results.append(check_sqlite_file("prediction log", Path(urls.prediction_log), "predictions"))
    results.append(check_sqlite_file("Feast online store (SQLite)",
                                     Path(urls.feast_online_store), None))
    results.extend(check_feast_file_registry(settings))
    results.append(check_champion(settings, mlflow_result, mlflow_tables))
    return results


def production_checks(settings: Settings) -> list[CheckResult]:
    """PostgreSQL and its databases, Redis, MLflow, Optuna, Feast registry, champion."""
    memory = ServerMemory()
    results = check_postgres(settings, memory)
    results.append(check_redis(settings))
    mlflow_result, mlflow_tables = check_mlflow(settings, memory)
    results.append(mlflow_result)
    results.append(check_sql_store("Optuna storage", settings.optuna_storage, "studies", "Optuna",
                                   memory)[0])
    results.extend(check_feast_sql_registry(settings, memory))
    results.append(check_champion(settings, mlflow_result, mlflow_tables))
    return results


def run_checks(settings: Settings) -> list[CheckResult]:
    """All checks of ``settings.profile``; configuration errors become a failed check."""
    checks: Callable[[Settings], list[CheckResult]] = (
        production_checks if settings.profile == "production" else embedded_checks
    )
    try:
        return checks(settings)
    except ConfigError as exc:
        return [CheckResult("configuration", "", FAIL, str(exc), "fix the setting it names")]
