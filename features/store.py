"""The one place that configures the Feast store (with ``feature_repo/feature_store.yaml``).

Profiles (``settings.profile``):
- ``embedded`` (default): file registry and an SQLite online store under
  ``<workdir>/feature_repo/data``, DuckDB offline store over the Parquet tables in
  ``<workdir>/data/features``. When ``features.online_store.FastSqliteOnlineStore`` exists it is
  used in place of Feast's stock SQLite store (same file layout, same config keys).
- ``production``: SQL registry on PostgreSQL (``settings.postgres_url``) and a Redis online store
  (``settings.redis_url``); offline store unchanged. Switching is a settings change only.

``feature_repo/feature_store.yaml`` is this module's embedded configuration for the default work
folder, with paths relative to the repo (``render_feature_store_yaml`` writes it; a test checks
they agree). The declarations in ``feature_repo/definitions.py`` take their source paths from
``leadscore.config.get_settings()``; ``apply_definitions`` registers them for any settings.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from feast import FeatureStore, RepoConfig

from leadscore.config import PROJECT_ROOT, Settings
from leadscore.profiles import feast_registry_path, redis_online_store

PROJECT = "leadscore"
FAST_ONLINE_STORE_TYPE = "features.online_store.FastSqliteOnlineStore"
DEFINITIONS_FILE = "definitions.py"


def repo_config_dict(settings: Settings, relative: bool = False) -> dict[str, Any]:
    """The Feast repo configuration as a plain mapping (``relative``: paths for the default
    work folder, relative to ``feature_repo/``, as written in feature_store.yaml)."""
    state = "data" if relative else str(settings.feast_state_dir)
    if settings.profile == "production":
        registry: dict[str, Any] = {
            "registry_type": "sql",
            "path": feast_registry_path(settings),
            "cache_ttl_seconds": 60,
            "sqlalchemy_config_kwargs": {"pool_pre_ping": True},
        }
        online: dict[str, Any] = redis_online_store(settings)
    else:
        registry = {
            "registry_type": "file",
            "path": f"{state}/registry.db",
            "cache_ttl_seconds": 60,
        }
        online = {"type": FAST_ONLINE_STORE_TYPE, "path": f"{state}/online_store.db"}
    return {
        "project": PROJECT,
        "provider": "local",
        "registry": registry,
        "online_store": online,
        "offline_store": {"type": "duckdb"},
        "entity_key_serialization_version": 3,
    }


def repo_config(settings: Settings) -> RepoConfig:
    """The ``RepoConfig`` for ``settings`` (state under ``settings.feast_state_dir``)."""
    config = RepoConfig(**repo_config_dict(settings))
    config.repo_path = settings.feature_repo_dir
    return config


def render_feature_store_yaml(settings: Settings, relative: bool = True) -> str:
    """feature_store.yaml text for ``settings`` (relative paths: the committed default)."""
    header = (
        "# Generated from features/store.py (repo_config_dict): edit there, then re-render with\n"
        "#   python -c 'from features.store import write_feature_store_yaml as w; w()'\n"
    )
    return header + yaml.safe_dump(repo_config_dict(settings, relative=relative), sort_keys=False)


def write_feature_store_yaml(
    settings: Settings | None = None, path: Path | None = None, relative: bool = True
) -> Path:
    """Write feature_store.yaml (default: the project's ``feature_repo/feature_store.yaml``)."""
    if settings is None:
        settings = Settings()
    target = path or PROJECT_ROOT / "feature_repo" / "feature_store.yaml"
    target.write_text(render_feature_store_yaml(settings, relative=relative))
    return target


def get_store(settings: Settings) -> FeatureStore:
    """A ``FeatureStore`` for ``settings`` (the project's declarations, the workdir's state)."""
    settings.feast_state_dir.mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=repo_config(settings), repo_path=str(settings.feature_repo_dir))


def load_definitions_module() -> ModuleType:
    """Import ``feature_repo/definitions.py`` (a plain file, not a package)."""
    name = "leadscore_feature_definitions"
    if name in sys.modules:
        return sys.modules[name]
    path = PROJECT_ROOT / "feature_repo" / DEFINITIONS_FILE
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"Feast definitions not found at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def apply_definitions(store: FeatureStore, settings: Settings) -> None:
    """Register the entities, views and services of ``definitions.py`` for ``settings``."""
    definitions = load_definitions_module()
    store.apply(definitions.build_definitions(settings))


def _registered_signature(store: FeatureStore, settings: Settings) -> tuple | None:
    try:
        service = store.get_feature_service(settings.feature_service)
        odfv = store.get_on_demand_feature_view("lead_request_features")
    except Exception:  # noqa: BLE001 - Feast raises several "not found" types
        return None
    features = tuple(f.name for p in service.feature_view_projections for f in p.features)
    requests = tuple(
        sorted(f.name for src in odfv.source_request_sources.values() for f in src.schema)
    )
    return features, requests


def ensure_applied(store: FeatureStore, settings: Settings) -> None:
    """Apply the definitions when the registry lacks them or holds an older feature set."""
    from features.request import MODEL_FEATURES, SUBMISSION_FIELDS

    wanted = (tuple(MODEL_FEATURES), tuple(sorted(SUBMISSION_FIELDS)))
    if _registered_signature(store, settings) != wanted:
        apply_definitions(store, settings)
