"""Service URLs per profile (unit tests: no service needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crm_data.prediction_log import POSTGRES_DATABASE
from leadscore.config import ConfigError, load_settings
from leadscore.profiles import (
    FEAST_DATABASE,
    MLFLOW_DATABASE,
    OPTUNA_DATABASE,
    PREDICTION_LOG_DATABASE,
    mask_password,
    postgres_url,
    redis_online_store,
    service_urls,
)


@pytest.fixture(autouse=True)
def _no_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _settings(tmp_path: Path, **env: str):
    return load_settings({"LEADSCORE_WORKDIR": str(tmp_path),
                          **{f"LEADSCORE_{k.upper()}": v for k, v in env.items()}})


def test_embedded_urls_are_files_under_the_workdir(tmp_path: Path) -> None:
    urls = service_urls(_settings(tmp_path))
    assert urls.profile == "embedded"
    assert urls.mlflow_tracking == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert urls.optuna_storage == f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    assert urls.feast_registry_type == "file"
    assert urls.feast_registry == str(tmp_path / "feature_repo" / "data" / "registry.db")
    assert urls.prediction_log == str(tmp_path / "data" / "predictions.sqlite")
    assert urls.postgres_databases == ()


def test_production_urls_use_one_database_per_component(tmp_path: Path) -> None:
    settings = _settings(tmp_path, profile="production",
                         postgres_url="postgresql://svc:s3cret@db.internal:6543")
    urls = service_urls(settings)
    base = "postgresql+psycopg://svc:s3cret@db.internal:6543"
    assert urls.mlflow_tracking == f"{base}/{MLFLOW_DATABASE}" == settings.tracking_uri
    assert urls.optuna_storage == f"{base}/{OPTUNA_DATABASE}" == settings.optuna_storage
    assert urls.feast_registry_type == "sql"
    assert urls.feast_registry == f"{base}/{FEAST_DATABASE}"
    assert urls.prediction_log == f"postgresql://svc:s3cret@db.internal:6543/{POSTGRES_DATABASE}"
    assert len(set(urls.postgres_databases)) == 4
    assert PREDICTION_LOG_DATABASE == POSTGRES_DATABASE
    # defaults are the local services
    default = service_urls(_settings(tmp_path, profile="production"))
    assert default.mlflow_tracking == (
        "postgresql+psycopg://postgres@127.0.0.1:5432/leadscore_mlflow"
    )
    assert default.feast_online_store == "redis://127.0.0.1:6379/0"


def test_explicit_tracking_uri_wins_over_the_profile(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path, profile="production",
                         mlflow_tracking_uri="http://mlflow.internal:5000")
    assert service_urls(settings).mlflow_tracking == "http://mlflow.internal:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://other:5000")
    assert settings.tracking_uri == "http://other:5000"


def test_artifact_root_setting(tmp_path: Path) -> None:
    assert _settings(tmp_path).artifact_location == (tmp_path / "mlruns" / "artifacts").as_uri()
    settings = _settings(tmp_path, artifact_root="s3://models/mlflow")
    assert settings.artifact_location == "s3://models/mlflow"
    assert service_urls(settings).mlflow_artifacts == "s3://models/mlflow"


@pytest.mark.parametrize(
    ("redis_url", "redis_type", "connection_string"),
    [
        ("redis://127.0.0.1:6379/0", "redis", "127.0.0.1:6379,db=0"),
        ("redis://cache:6380/2", "redis", "cache:6380,db=2"),
        ("rediss://:pw@cache:6380", "redis", "cache:6380,db=0,password=pw,ssl=true"),
        ("redis+cluster://n1:7000,n2:7001,n3:7002", "redis_cluster", "n1:7000,n2:7001,n3:7002"),
        ("rediss+cluster://:pw@n1:7000,n2", "redis_cluster",
         "n1:7000,n2:6379,password=pw,ssl=true"),
    ],
)
def test_redis_url_becomes_the_feast_online_store(
    tmp_path: Path, redis_url: str, redis_type: str, connection_string: str
) -> None:
    config = redis_online_store(_settings(tmp_path, redis_url=redis_url))
    assert config == {"type": "redis", "redis_type": redis_type,
                      "connection_string": connection_string}


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"redis_url": "http://cache:6379"}, "redis_url"),
        ({"redis_url": "redis://a:1,b:2"}, "redis\\+cluster"),
        ({"redis_url": "redis://cache:port"}, "host:port"),
        ({"postgres_url": "mysql://u@h:3306"}, "postgres_url"),
    ],
)
def test_bad_urls_name_the_setting(tmp_path: Path, env: dict[str, str], problem: str) -> None:
    settings = _settings(tmp_path, profile="production", **env)
    with pytest.raises(ConfigError, match=problem):
        service_urls(settings)


def test_postgres_url_without_driver_is_a_libpq_dsn(tmp_path: Path) -> None:
    settings = _settings(tmp_path, postgres_url="postgresql://u@h:5/ignored")
    assert postgres_url(settings, "x", driver=None) == "postgresql://u@h:5/x"
    assert postgres_url(settings, "x") == "postgresql+psycopg://u@h:5/x"


def test_mask_password_hides_secrets_only() -> None:
    assert mask_password("postgresql+psycopg://svc:s3cret@h:5/db") == (
        "postgresql+psycopg://svc:***@h:5/db"
    )
    assert mask_password("postgresql://postgres@h:5/db") == "postgresql://postgres@h:5/db"
    assert mask_password("rediss://:pw@cache:6380/0") == "rediss://:***@cache:6380/0"
    assert mask_password("cache:6380,db=0,password=pw,ssl=true") == (
        "cache:6380,db=0,password=***,ssl=true"
    )
    assert "s3cret" not in str(service_urls(load_settings({
        "LEADSCORE_PROFILE": "production",
        "LEADSCORE_POSTGRES_URL": "postgresql://svc:s3cret@h:5",
        "LEADSCORE_REDIS_URL": "redis://:s3cret@cache:6379/0",
    })).to_dict())
