"""One place for paths and settings.

Values come, in rising order of precedence, from the defaults below, an optional YAML config
file (``LEADSCORE_CONFIG`` or ``leadscore.yaml`` in the project root) and environment variables
named ``LEADSCORE_<FIELD>`` (e.g. ``LEADSCORE_WORKDIR``, ``LEADSCORE_HASH_SALT``).
Every derived path hangs off ``workdir`` so that ``--workdir DIR`` moves all state under DIR.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "LEADSCORE_"
DEFAULT_SALT = "leadscore-dev-salt-change-me"
# PostgreSQL identifiers: max 63 bytes, so leave room for the "_mlflow"-style suffixes
DATABASE_PREFIX_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,39}")


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the field."""


@dataclass(frozen=True)
class Settings:
    """All settings of the product. Paths are absolute once resolved."""

    workdir: Path = PROJECT_ROOT
    profile: str = "embedded"
    hash_salt: str = DEFAULT_SALT
    conversion_window_days: int = 30
    seed: int = 42
    intent_half_life_days: float = 14.0
    scoring_config: Path | None = None
    routing_policy: Path | None = None
    api_key: str | None = None
    mlflow_tracking_uri: str | None = None
    model_name: str = "lead-conversion"
    feature_service: str = "lead_conversion_v1"
    # weekly drift report: exit 3 when this share of feature columns (or more) drifted
    drift_share_threshold: float = 0.05
    # production profile connection settings (used by a later profile; harmless here)
    redis_url: str = "redis://127.0.0.1:6379/0"
    postgres_url: str = "postgresql://postgres@127.0.0.1:5432"
    # production PostgreSQL database names: <prefix>_mlflow, <prefix>_optuna, <prefix>_feast and
    # <prefix> (prediction log); a unique prefix isolates tests and parallel deployments
    database_prefix: str = "leadscore"
    # MLflow artifact root (e.g. s3://bucket/mlflow); default: <workdir>/mlruns/artifacts
    artifact_root: str | None = None

    # ---- derived paths -------------------------------------------------------------
    @property
    def project_root(self) -> Path:
        return PROJECT_ROOT

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def raw_dir(self) -> Path:
        """Validated CRM tables (leads, identities, events, orders, outcomes)."""
        return self.data_dir / "raw"

    @property
    def truth_dir(self) -> Path:
        """Generator ground truth: only tests, benchmarks and simulations may read it."""
        return self.data_dir / "truth"

    @property
    def identity_dir(self) -> Path:
        """One ID state: lead → person and identifier → person maps."""
        return self.data_dir / "identity"

    @property
    def features_dir(self) -> Path:
        """Offline feature tables (Parquet) that the Feast sources read."""
        return self.data_dir / "features"

    @property
    def feature_repo_dir(self) -> Path:
        """The Feast repository: declarations only, always the project's own."""
        return PROJECT_ROOT / "feature_repo"

    @property
    def feast_state_dir(self) -> Path:
        """Feast registry and SQLite online store for this workdir."""
        return self.workdir / "feature_repo" / "data"

    @property
    def mlruns_dir(self) -> Path:
        return self.workdir / "mlruns"

    @property
    def reports_dir(self) -> Path:
        return self.workdir / "reports"

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI: ``MLFLOW_TRACKING_URI`` wins, else SQLite in ``mlruns/``."""
        return (
            os.environ.get("MLFLOW_TRACKING_URI")
            or self.mlflow_tracking_uri
            or (self._production_url("mlflow") if self.profile == "production" else None)
            or f"sqlite:///{self.mlruns_dir / 'mlflow.db'}"
        )

    @property
    def artifact_location(self) -> str:
        return self.artifact_root or (self.mlruns_dir / "artifacts").as_uri()

    @property
    def optuna_storage(self) -> str:
        if self.profile == "production":
            return self._production_url("optuna")
        return f"sqlite:///{self.mlruns_dir / 'optuna.db'}"

    def _production_url(self, service: str) -> str:
        """Production-profile URL of ``service`` (see ``leadscore.profiles``)."""
        from leadscore.profiles import production_service_url

        return production_service_url(self, service)

    @property
    def prediction_log_path(self) -> Path:
        return self.data_dir / "predictions.sqlite"

    def ensure_dirs(self) -> None:
        """Create the folders this workdir writes into."""
        for path in (
            self.data_dir,
            self.raw_dir,
            self.truth_dir,
            self.identity_dir,
            self.features_dir,
            self.feast_state_dir,
            self.mlruns_dir,
            self.reports_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)

    def with_workdir(self, workdir: Path | str | None) -> Settings:
        """A copy of these settings rooted at ``workdir`` (unchanged when None)."""
        if workdir is None:
            return self
        return dataclasses.replace(self, workdir=Path(workdir).expanduser().resolve())


def _coerce(name: str, raw: Any, annotation: str) -> Any:
    """Convert a raw config/env value to the field's type, naming the field on failure."""
    if raw is None or (isinstance(raw, str) and raw == "" and "None" in annotation):
        return None
    try:
        if annotation.startswith("Path"):
            return Path(str(raw)).expanduser().resolve()
        if annotation == "int":
            return int(raw)
        if annotation == "float":
            return float(raw)
        if annotation.startswith("str"):
            return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"config field '{name}': cannot read {raw!r} as {annotation} ({exc})"
        ) from None
    return raw


def _validate(settings: Settings) -> Settings:
    if settings.profile not in {"embedded", "production"}:
        raise ConfigError(
            f"config field 'profile': {settings.profile!r} is not one of 'embedded', 'production'"
        )
    if settings.conversion_window_days <= 0:
        raise ConfigError("config field 'conversion_window_days': must be a positive day count")
    if settings.intent_half_life_days <= 0:
        raise ConfigError("config field 'intent_half_life_days': must be positive")
    if not settings.hash_salt:
        raise ConfigError("config field 'hash_salt': must not be empty")
    if (not DATABASE_PREFIX_PATTERN.fullmatch(settings.database_prefix)
            or settings.database_prefix in {"postgres", "template0", "template1"}):
        raise ConfigError(
            f"config field 'database_prefix': {settings.database_prefix!r} must be 1-40 lowercase "
            "letters, digits or underscores, starting with a letter or underscore, and not a "
            "PostgreSQL system database name"
        )
    return settings


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build settings from defaults, the optional YAML file and ``LEADSCORE_*`` variables."""
    env = dict(os.environ if env is None else env)
    known = {f.name: f for f in fields(Settings)}
    values: dict[str, Any] = {}

    config_path = env.get(ENV_PREFIX + "CONFIG")
    path = Path(config_path) if config_path else PROJECT_ROOT / "leadscore.yaml"
    if config_path and not path.exists():
        raise ConfigError(f"LEADSCORE_CONFIG points to {path}, which does not exist")
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field: value")
        unknown = sorted(set(loaded) - set(known))
        if unknown:
            raise ConfigError(
                f"config file {path}: unknown field(s) {unknown}; known: {sorted(known)}"
            )
        values.update(loaded)

    for name in known:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = env[key]

    coerced = {
        name: _coerce(name, raw, str(known[name].type)) for name, raw in values.items()
    }
    return _validate(Settings(**coerced))


@cache
def get_settings() -> Settings:
    """The process-wide settings (cached; call ``get_settings.cache_clear()`` after env edits)."""
    return load_settings()
