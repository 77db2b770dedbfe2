"""The one place that configures the Feast store of a work folder and registers its definitions.

Every work folder ``DIR`` has its own Feast repo folder ``DIR/feature_repo``: the state
(``data/registry.db`` and ``data/online_store.db`` in the embedded profile) and
``feature_store.yaml``, written by ``get_store`` so that Feast's own CLI reads the same state::

    feast -c DIR/feature_repo feature-views list

Profiles (``settings.profile``):
- ``embedded`` (default): file registry and an SQLite online store under ``DIR/feature_repo/data``
  (``features.fast_online_store.FastSqliteOnlineStore``: Feast's SQLite store with bulk writes),
  DuckDB offline store over the Parquet tables in ``DIR/data/features``;
- ``production``: SQL registry on PostgreSQL (``settings.postgres_url``) and a Redis online store
  (``settings.redis_url``); offline store unchanged. Switching is a settings change only.

The project folder's ``feature_repo/feature_store.yaml`` is the embedded configuration with paths
relative to the repo (committed; a test checks it is what this module renders). In the production
profile the project folder's file is ``feature_store.production.yaml`` instead. A password in
the PostgreSQL or Redis URL is never written: the file names
``${LEADSCORE_FEAST_REGISTRY_PASSWORD}`` / ``${LEADSCORE_FEAST_REDIS_PASSWORD}`` in its place
(Feast expands environment variables in feature_store.yaml).

The declarations are the project's ``feature_repo/definitions.py`` (plain Feast declarations, file
sources relative to the repo folder, so they resolve under each work folder).
``feature_definitions(params, service)`` gives them for one feature version: the on-demand view
computing with ``params`` (``features.params``) and the feature service named ``service``
carrying the parameters as tags; ``apply_definitions`` / ``ensure_applied`` register them.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from feast import Entity, FeatureService, FeatureStore, FeatureView, FileSource, RepoConfig
from feast.data_source import DataSource
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.transformation.udf_rehydrate import rehydrate_udf_from_source

from features.params import FeatureParams
from leadscore.config import PROJECT_ROOT, Settings
from leadscore.profiles import feast_registry_path, redis_online_store

PROJECT = "leadscore"
FAST_ONLINE_STORE_TYPE = "features.fast_online_store.FastSqliteOnlineStore"
DECLARATIONS_DIR = PROJECT_ROOT / "feature_repo"
DEFINITIONS_FILE = "definitions.py"
FEATURE_STORE_YAML = "feature_store.yaml"
DEFAULT_PARAMS_CALL = "feature_params()"
REGISTRY_PASSWORD_VAR = "LEADSCORE_FEAST_REGISTRY_PASSWORD"
REDIS_PASSWORD_VAR = "LEADSCORE_FEAST_REDIS_PASSWORD"
YAML_HEADER = (
    "# Written by features/store.py (repo_config_dict) for this work folder. Feast's CLI:\n"
    "#   feast -c <this folder> feature-views list\n"
)


# ---- the store configuration ---------------------------------------------------------------
def repo_dir(settings: Settings) -> Path:
    """The work folder's Feast repo folder (``<workdir>/feature_repo``: state and yaml)."""
    return settings.feast_state_dir.parent


def repo_config_dict(settings: Settings, relative: bool = False) -> dict[str, Any]:
    """The Feast repo configuration as a plain mapping (``relative``: state paths relative to
    the repo folder, as in the committed feature_store.yaml)."""
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
    """The ``RepoConfig`` for ``settings`` (repo folder: the work folder's ``feature_repo``)."""
    config = RepoConfig(**repo_config_dict(settings))
    config.repo_path = repo_dir(settings)
    return config


def _is_project_folder(settings: Settings) -> bool:
    return repo_dir(settings).resolve() == DECLARATIONS_DIR.resolve()


def feature_store_yaml_path(settings: Settings) -> Path:
    """Where the work folder's feature_store.yaml lives (``<workdir>/feature_repo``; on the
    project folder in the production profile ``feature_store.production.yaml``, the committed
    ``feature_store.yaml`` being the embedded one)."""
    if _is_project_folder(settings) and settings.profile != "embedded":
        return DECLARATIONS_DIR / f"feature_store.{settings.profile}.yaml"
    return repo_dir(settings) / FEATURE_STORE_YAML


def _without_passwords(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with URL passwords replaced by ``${VAR}`` references (expanded by Feast)."""
    registry = dict(config["registry"])
    parts = urlsplit(str(registry["path"]))
    if parts.password:
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:${{{REGISTRY_PASSWORD_VAR}}}@{host}"
        if parts.port:
            netloc += f":{parts.port}"
        registry["path"] = urlunsplit(parts._replace(netloc=netloc))
    online = dict(config["online_store"])
    if "connection_string" in online:
        online["connection_string"] = re.sub(
            r"password=[^,]*", f"password=${{{REDIS_PASSWORD_VAR}}}",
            str(online["connection_string"]))
    return {**config, "registry": registry, "online_store": online}


def render_feature_store_yaml(settings: Settings, relative: bool = True) -> str:
    """feature_store.yaml text for ``settings`` (``relative``: the committed project file)."""
    config = _without_passwords(repo_config_dict(settings, relative=relative))
    return YAML_HEADER + yaml.safe_dump(config, sort_keys=False)


def write_feature_store_yaml(
    settings: Settings | None = None, path: Path | None = None, relative: bool | None = None
) -> Path:
    """Write the work folder's feature_store.yaml (default: ``feature_store_yaml_path``;
    relative paths only for the project folder) when its text differs; return its path."""
    if settings is None:
        settings = Settings()
    target = path or feature_store_yaml_path(settings)
    if relative is None:
        relative = _is_project_folder(settings) and path is None
    text = render_feature_store_yaml(settings, relative=relative)
    if target.exists() and target.read_text() == text:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(target)
    return target


def get_store(settings: Settings) -> FeatureStore:
    """A ``FeatureStore`` on the work folder's state (its feature_store.yaml written too)."""
    settings.feast_state_dir.mkdir(parents=True, exist_ok=True)
    write_feature_store_yaml(settings)
    return FeatureStore(config=repo_config(settings), repo_path=str(repo_dir(settings)))


# ---- the declarations ----------------------------------------------------------------------
def load_definitions_module() -> ModuleType:
    """Import ``feature_repo/definitions.py`` (a plain file, not a package)."""
    name = "leadscore_feature_definitions"
    if name in sys.modules:
        return sys.modules[name]
    path = DECLARATIONS_DIR / DEFINITIONS_FILE
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"Feast definitions not found at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def definitions_digest() -> str:
    """Short hash of ``definitions.py`` (recorded on the feature service: a changed file is
    re-applied by ``ensure_applied``)."""
    text = (DECLARATIONS_DIR / DEFINITIONS_FILE).read_bytes()
    return hashlib.sha256(text).hexdigest()[:12]


def declared_objects() -> list[Any]:
    """Every Feast object declared at module level in definitions.py, in file order."""
    kinds = (Entity, DataSource, FeatureView, OnDemandFeatureView, FeatureService)
    return [value for value in vars(load_definitions_module()).values()
            if isinstance(value, kinds)]


def with_params(view: OnDemandFeatureView, params: FeatureParams) -> OnDemandFeatureView:
    """The on-demand view computing with ``params``: its declared source with the call
    ``feature_params()`` replaced by the literal call of ``params`` (the declared view itself
    for the default parameters)."""
    declared = view.udf_string or ""
    if DEFAULT_PARAMS_CALL not in declared:
        raise ValueError(
            f"definitions.py: the on-demand view '{view.name}' must pass "
            f"`{DEFAULT_PARAMS_CALL}` to the package (its parameters are bound per feature "
            "version)")
    if params == FeatureParams():
        return view
    source = declared.replace(DEFAULT_PARAMS_CALL, params.call_source())
    # exactly what Feast does with the source text it reads back from the registry
    udf = rehydrate_udf_from_source(source, preferred_name=view.udf.__name__)
    if udf is None:
        raise ValueError(f"on-demand view '{view.name}': its source does not compile")
    return OnDemandFeatureView(
        name=view.name, sources=view.sources, schema=view.features, mode=view.mode,
        description=view.description, tags=view.tags, owner=view.owner,
        udf=udf, udf_string=source,
    )


def service_tags(params: FeatureParams, repo: Path = DECLARATIONS_DIR) -> dict[str, str]:
    """The tags of the feature service for one feature version and work folder: the
    parameters, the declarations' digest and the repo folder the sources were resolved in."""
    return {**params.tags(), "definitions": definitions_digest(), "repo": str(repo)}


def resolve_sources(objects: list[Any], repo: Path) -> list[Any]:
    """A copy of ``objects`` whose file sources with a path relative to the repo folder point
    into ``repo`` (Feast's DuckDB offline store reads a relative path from the current folder,
    not from the repo: the registry gets the work folder's absolute paths)."""
    objects = copy.deepcopy(objects)  # one memo: views keep pointing at the copied sources
    for obj in objects:
        if isinstance(obj, FileSource) and not Path(obj.path).is_absolute() and (
                "://" not in obj.path):
            obj.file_options.uri = os.path.normpath(repo / obj.path)
    return objects


def feature_definitions(params: FeatureParams, feature_service: str,
                        repo: Path = DECLARATIONS_DIR) -> list[Any]:
    """The declared Feast objects for one feature version and work folder: file sources
    resolved against the work folder's ``repo`` folder, on-demand views computing with
    ``params``, the (single) declared feature service named ``feature_service`` and tagged
    with the parameters."""
    objects = resolve_sources(declared_objects(), repo)
    bound = {o.name: with_params(o, params) for o in objects
             if isinstance(o, OnDemandFeatureView)}
    services = [o for o in objects if isinstance(o, FeatureService)]
    if len(services) != 1:
        raise ValueError(f"definitions.py must declare one feature service, found "
                         f"{[s.name for s in services]}")
    views = {o.name: o for o in objects if isinstance(o, FeatureView)} | bound
    out: list[Any] = []
    for obj in objects:
        if isinstance(obj, OnDemandFeatureView):
            out.append(bound[obj.name])
        elif isinstance(obj, FeatureService):
            features = []
            for projection in obj.feature_view_projections:
                view = views[projection.name]
                names = [f.name for f in projection.features]
                whole = [f.name for f in view.features]
                features.append(view if names == whole else view[names])
            out.append(FeatureService(
                name=feature_service, features=features, description=obj.description,
                owner=obj.owner, tags={**obj.tags, **service_tags(params, repo)},
            ))
        else:
            out.append(obj)
    return out


def apply_definitions(store: FeatureStore, settings: Settings,
                      params: FeatureParams | None = None) -> None:
    """Register the declarations for the feature version of ``settings`` (``params``: its
    parameters, built from the settings when not given)."""
    params = params or FeatureParams.from_settings(settings)
    store.apply(feature_definitions(params, settings.feature_service, repo_dir(settings)))


def ensure_applied(store: FeatureStore, settings: Settings,
                   params: FeatureParams | None = None) -> None:
    """Apply the declarations when the registry lacks this feature version, or holds it with
    other parameters or older declarations."""
    params = params or FeatureParams.from_settings(settings)
    try:
        tags = store.get_feature_service(settings.feature_service).tags
    except Exception:  # noqa: BLE001 - Feast raises several "not found" types
        tags = {}
    wanted = service_tags(params, repo_dir(settings))
    if any(tags.get(key) != value for key, value in wanted.items()):
        apply_definitions(store, settings, params)
