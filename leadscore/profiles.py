"""Where each backing service lives for the active profile: one place for every service URL.

``embedded`` (default): SQLite files and Parquet under the work folder.
``production``: one PostgreSQL server (``settings.postgres_url``) holding one database per
component, and Redis (``settings.redis_url``) as the Feast online store:

| component | database / URL |
|---|---|
| MLflow tracking + registry | ``leadscore_mlflow`` (``postgresql+psycopg://…/leadscore_mlflow``) |
| MLflow artifacts | ``settings.artifact_root`` (default ``<workdir>/mlruns/artifacts``) |
| Optuna studies | ``leadscore_optuna`` (its own database, not MLflow's) |
| Feast registry (SQL registry) | ``leadscore_feast`` |
| Feast online store | Redis ``settings.redis_url`` |
| prediction log | ``leadscore`` |

The names shown are for the default ``settings.database_prefix`` (``leadscore``); another
prefix ``p`` gives ``p_mlflow``, ``p_optuna``, ``p_feast`` and ``p``. Those names and their
URLs are composed in ``leadscore.config`` (``Settings.tracking_uri`` and ``optuna_storage`` use
them; this module depends on ``leadscore.config``, never the reverse) and offered here as well.

Redis Cluster is a connection-string change: ``LEADSCORE_REDIS_URL=redis+cluster://h1:6379,
h2:6379,h3:6379`` (``rediss+cluster://`` for TLS) selects Feast's ``redis_type: redis_cluster``
with those start-up nodes. ``MLFLOW_TRACKING_URI`` / ``LEADSCORE_MLFLOW_TRACKING_URI`` still win
over the profile's MLflow URL (e.g. an MLflow tracking server ``http://mlflow:5000``).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from leadscore.config import (  # the PostgreSQL URL helpers live beside Settings, which uses them
    ConfigError,
    mask_password,
    postgres_url,
    production_databases,
    production_service_url,
)

if TYPE_CHECKING:
    from leadscore.config import Settings

MLFLOW_DATABASE = "leadscore_mlflow"
OPTUNA_DATABASE = "leadscore_optuna"
FEAST_DATABASE = "leadscore_feast"
PREDICTION_LOG_DATABASE = "leadscore"  # = crm_data.prediction_log.POSTGRES_DATABASE
PRODUCTION_DATABASES: dict[str, str] = {
    "mlflow": MLFLOW_DATABASE,
    "optuna": OPTUNA_DATABASE,
    "feast": FEAST_DATABASE,
    "prediction_log": PREDICTION_LOG_DATABASE,
}
MAINTENANCE_DATABASE = "postgres"
CLUSTER_SCHEMES = {"redis+cluster", "rediss+cluster"}
REDIS_SCHEMES = {"redis", "rediss"} | CLUSTER_SCHEMES


@dataclass(frozen=True)
class ServiceUrls:
    """The URL (or path) of every backing service of one profile."""

    profile: str
    mlflow_tracking: str
    mlflow_artifacts: str
    optuna_storage: str
    feast_registry_type: str
    feast_registry: str
    feast_online_store_type: str
    feast_online_store: str
    prediction_log: str
    postgres_databases: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (passwords masked): safe to print or log."""
        return {
            key: (mask_password(value) if isinstance(value, str) else value)
            for key, value in asdict(self).items()
        }


def feast_registry_path(settings: Settings) -> str:
    """Feast registry ``path``: SQL registry URL (production) or the registry file (embedded)."""
    if settings.profile == "production":
        return production_service_url(settings, "feast")
    return str(settings.feast_state_dir / "registry.db")


def redis_online_store(settings: Settings) -> dict[str, str]:
    """Feast ``online_store`` keys for ``settings.redis_url``: ``type``, ``redis_type`` and
    ``connection_string`` (``host:port,db=N[,password=…][,ssl=true]``; cluster: the nodes)."""
    url = settings.redis_url
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in REDIS_SCHEMES:
        raise ConfigError(
            f"config field 'redis_url': {mask_password(url)!r} must start with one of "
            f"{sorted(s + '://' for s in REDIS_SCHEMES)}"
        )
    userinfo, _, hosts_and_path = rest.rpartition("@")
    hosts, _, path = hosts_and_path.partition("/")
    password = unquote(userinfo.partition(":")[2]) if ":" in userinfo else unquote(userinfo)
    nodes = []
    for node in filter(None, hosts.split(",")):
        host, _, port = node.rpartition(":") if ":" in node else (node, "", "6379")
        if not host or not port.isdigit():
            raise ConfigError(
                f"config field 'redis_url': node {node!r} is not host:port"
            )
        nodes.append(f"{host}:{port}")
    if not nodes:
        raise ConfigError(f"config field 'redis_url': {mask_password(url)!r} names no host")
    cluster = scheme in CLUSTER_SCHEMES
    if not cluster and len(nodes) > 1:
        raise ConfigError(
            "config field 'redis_url': several hosts need the redis+cluster:// scheme"
        )
    db = path.strip("/") or "0"
    if not db.isdigit():
        raise ConfigError(f"config field 'redis_url': database {db!r} is not a number")
    params = [] if cluster else [f"db={db}"]
    if password:
        params.append(f"password={password}")
    if scheme.startswith("rediss"):
        params.append("ssl=true")
    return {
        "type": "redis",
        "redis_type": "redis_cluster" if cluster else "redis",
        "connection_string": ",".join(nodes + params),
    }


def service_urls(settings: Settings) -> ServiceUrls:
    """Every backing service's URL for ``settings.profile``."""
    if settings.profile == "production":
        online = redis_online_store(settings)
        return ServiceUrls(
            profile="production",
            mlflow_tracking=settings.tracking_uri,
            mlflow_artifacts=settings.artifact_location,
            optuna_storage=settings.optuna_storage,
            feast_registry_type="sql",
            feast_registry=feast_registry_path(settings),
            feast_online_store_type=f"redis ({online['redis_type']})",
            feast_online_store=settings.redis_url,
            prediction_log=production_service_url(settings, "prediction_log"),
            postgres_databases=tuple(production_databases(settings).values()),
        )
    return ServiceUrls(
        profile=settings.profile,
        mlflow_tracking=settings.tracking_uri,
        mlflow_artifacts=settings.artifact_location,
        optuna_storage=settings.optuna_storage,
        feast_registry_type="file",
        feast_registry=feast_registry_path(settings),
        feast_online_store_type="sqlite",
        feast_online_store=str(settings.feast_state_dir / "online_store.db"),
        prediction_log=str(settings.prediction_log_path),
        postgres_databases=(),
    )


def ensure_databases(
    settings: Settings,
    databases: tuple[str, ...] | list[str] | None = None,
    connect_timeout: int = 2,
) -> list[str]:
    """Create the PostgreSQL ``databases`` that do not exist yet (default: the production
    profile's four; none for the embedded profile). Returns the names created.

    Raises ``ConnectionError`` naming the server (password masked) when it cannot be reached.
    """
    import psycopg
    from psycopg import sql

    if databases is None:
        databases = service_urls(settings).postgres_databases
    if not databases:
        return []
    dsn = postgres_url(settings, MAINTENANCE_DATABASE, driver=None)
    created: list[str] = []
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout) as conn:
            for name in databases:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
                ).fetchone()
                if exists:
                    continue
                # another process may create it at the same moment
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    created.append(name)
    except psycopg.OperationalError as exc:
        raise ConnectionError(
            f"PostgreSQL at {mask_password(dsn)} is not reachable: {_first_line(exc)}"
        ) from None
    return created


def drop_databases(settings: Settings, connect_timeout: int = 5) -> None:
    """Drop the profile's PostgreSQL databases, closing other sessions on them (tests and
    benchmarks on a throw-away ``database_prefix`` clean up with this)."""
    import psycopg
    from psycopg import sql

    dsn = postgres_url(settings, MAINTENANCE_DATABASE, driver=None)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout) as conn:
        for name in production_databases(settings).values():
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def redis_client(settings: Settings, timeout: float = 2.0) -> Any:
    """A redis-py client (``Redis`` or ``RedisCluster``) for ``settings.redis_url``."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    config = redis_online_store(settings)
    timeouts = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    if config["redis_type"] == "redis_cluster":
        pieces = config["connection_string"].split(",")
        nodes = [ClusterNode(*p.rsplit(":", 1)) for p in pieces if "=" not in p]
        params = dict(p.split("=", 1) for p in pieces if "=" in p)
        return RedisCluster(startup_nodes=nodes, password=params.get("password"),
                            ssl=params.get("ssl") == "true", **timeouts)
    return redis.Redis.from_url(settings.redis_url, **timeouts)


def require_services(
    settings: Settings,
    services: tuple[str, ...] = ("postgres", "redis"),
    timeout: float = 2.0,
) -> None:
    """Production profile: make sure the backing services answer before any work starts.

    ``postgres``: the server is reachable and the profile's databases exist (missing ones are
    created). ``redis``: the online store answers PING. The embedded profile needs nothing.
    Raises ``ConnectionError`` naming every unreachable service (passwords masked).
    """
    if settings.profile != "production":
        return
    import redis

    problems: list[str] = []
    if "postgres" in services:
        try:
            ensure_databases(settings, connect_timeout=max(1, int(timeout)))
        except ConnectionError as exc:
            problems.append(str(exc))
    if "redis" in services:
        try:
            client = redis_client(settings, timeout=timeout)
            try:
                client.ping()
            finally:
                client.close()
        except (redis.RedisError, OSError) as exc:
            problems.append(
                f"Redis at {mask_password(settings.redis_url)} is not reachable: "
                f"{_first_line(exc)}"
            )
    if problems:
        raise ConnectionError(
            "; ".join(problems) + " (profile 'production'; `leadscore doctor` shows every check)"
        )
