"""One place for paths and settings.

Values come, in rising order of precedence, from the defaults below, an optional YAML config
file (``LEADSCORE_CONFIG`` or ``leadscore.yaml`` in the project root) and environment variables
named ``LEADSCORE_<FIELD>`` (e.g. ``LEADSCORE_WORKDIR``, ``LEADSCORE_HASH_SALT``).
Every derived path hangs off ``workdir`` so that ``--workdir DIR`` moves all state under DIR.

``Settings`` is a pydantic-settings model. ``load_settings()`` / ``get_settings()`` read the
YAML file and the environment; ``Settings(**values)`` validates exactly the values given over
the defaults (no file, no environment: what tests and the committed ``feature_store.yaml``
need). Either way a bad value raises ``ConfigError`` naming the field.

The production profile's PostgreSQL database names and URLs are composed here too
(:func:`production_service_url`), because ``Settings.tracking_uri`` and
``Settings.optuna_storage`` derive from them; ``leadscore.profiles`` builds every other service
URL on top of this module and is never imported by it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "LEADSCORE_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"  # names the YAML file; not a field itself
DEFAULT_CONFIG_FILE = PROJECT_ROOT / "leadscore.yaml"
DEFAULT_SALT = "leadscore-dev-salt-change-me"
# PostgreSQL identifiers: max 63 bytes, so leave room for the "_mlflow"-style suffixes
DATABASE_PREFIX_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,39}")
# an origin that may frame the /ui pages: scheme://host[:port], nothing more
ORIGIN_PATTERN = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?")
SYSTEM_DATABASES = frozenset({"postgres", "template0", "template1"})
# production database of each service: <database_prefix><suffix>
DATABASE_SUFFIXES: dict[str, str] = {
    "mlflow": "_mlflow",
    "optuna": "_optuna",
    "feast": "_feast",
    "prediction_log": "",
}
SQLALCHEMY_DRIVER = "psycopg"  # psycopg 3
# values never echoed back in an error message
SECRET_FIELDS = frozenset({"hash_salt", "api_key", "agent_token_secret"})
URL_FIELDS = frozenset({"postgres_url", "redis_url", "mlflow_tracking_uri", "artifact_root"})


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the field."""


@dataclass
class _Load:
    """What one ``load_settings`` call reads, and where each value came from (for errors)."""

    env: Mapping[str, str]
    yaml_file: Path
    yaml_keys: set[str] = field(default_factory=set)


# set only while load_settings() builds a Settings: otherwise only the given values count
_LOADING: ContextVar[_Load | None] = ContextVar("leadscore_settings_load", default=None)


class _EnvSource(EnvSettingsSource):
    """``LEADSCORE_<FIELD>`` variables of an explicit mapping; unknown ``LEADSCORE_*`` names
    are passed on as extra keys so that validation refuses them by name."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._environ = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty,
                              self.env_parse_none_str)

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        prefix = self.env_prefix.lower()
        known = set(self.settings_cls.model_fields) | {CONFIG_ENV[len(ENV_PREFIX):].lower()}
        for key, value in self.env_vars.items():
            name = key[len(prefix):]
            if key.startswith(prefix) and name and name not in known:
                data[name] = value
        return data


class _YamlSource(YamlConfigSettingsSource):
    """pydantic-settings' YAML source; the file must hold a mapping of field: value."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            loaded = super()._read_file(file_path)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file_path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {file_path} must hold a mapping of field: value")
        return loaded


class Settings(BaseSettings):
    """All settings of the product. Paths are absolute once resolved."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        coerce_numbers_to_str=True,  # ``hash_salt: 12345`` in YAML is the string "12345"
    )

    workdir: Path = PROJECT_ROOT
    profile: str = "embedded"
    hash_salt: str = Field(DEFAULT_SALT, repr=False)
    conversion_window_days: int = 30
    seed: int = 42
    intent_half_life_days: float = 14.0
    scoring_config: Path | None = None
    routing_policy: Path | None = None
    api_key: str | None = Field(None, repr=False)
    mlflow_tracking_uri: str | None = None
    model_name: str = "lead-conversion"
    feature_service: str = "lead_conversion_v1"
    # weekly drift report: exit 3 when this share of feature columns (or more) drifted
    drift_share_threshold: float = 0.05
    # champion gate (training.registry): a champion older than this many days is replaced by a
    # challenger whose test log loss is no worse beyond promotion_margin (a share of the
    # champion's log loss, upper end of the 95% bootstrap interval); younger champions only by
    # a challenger better beyond noise
    champion_max_age_days: float = 30.0
    promotion_margin: float = 0.01
    # time split (training.split): the test slice is always embargoed by one conversion window;
    # this many days also separate the train slice's labels from the validation period (0: none,
    # as every day embargoed there is a day of training data lost)
    validation_embargo_days: float = 0.0
    # production profile connection settings (used by a later profile; harmless here)
    redis_url: str = "redis://127.0.0.1:6379/0"
    postgres_url: str = "postgresql://postgres@127.0.0.1:5432"
    # production PostgreSQL database names: <prefix>_mlflow, <prefix>_optuna, <prefix>_feast and
    # <prefix> (prediction log); a unique prefix isolates tests and parallel deployments
    database_prefix: str = "leadscore"
    # MLflow artifact root (e.g. s3://bucket/mlflow); default: <workdir>/mlruns/artifacts
    artifact_root: str | None = None
    # the service's prediction-log journal (docs/api.md, "Durability"): its folder (default
    # <workdir>/journal) and whether an answer waits for its record's fsync ("fsync") or not
    journal_dir: Path | None = None
    log_durability: str = "fsync"
    # re-scoring and the CRM webhook (serving.rescoring, serving.webhook; docs/api.md): a tier
    # changes only when the probability passes the cut-off by this margin (hysteresis); leads
    # below drop_below_probability for drop_after_days are dropped (kept, not re-scored)
    rescore_hysteresis: float = 0.02
    drop_below_probability: float = 0.02
    drop_after_days: float = 60.0
    webhook_url: str | None = None
    webhook_secret: str | None = Field(None, repr=False, validate_default=True)
    webhook_timeout_seconds: float = 2.0
    webhook_max_attempts: int = 10
    webhook_backoff_seconds: float = 1.0
    webhook_backoff_max_seconds: float = 300.0
    # portrait and audience pages (docs/api.md, "Agents"): the secret the CRM signs agent tokens
    # with (HS256; default: derived from the API key), the CRM origin allowed to frame /ui
    # (Content-Security-Policy frame-ancestors), an agent token's longest accepted lifetime
    agent_token_secret: str | None = Field(None, repr=False)
    crm_origin: str | None = None
    agent_token_max_hours: float = 12.0

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, _LOADING.get())) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Highest first: given values, ``LEADSCORE_*`` variables, the YAML file (the last two
        only inside ``load_settings``)."""
        load = _LOADING.get()
        if load is None:
            return (init_settings,)
        yaml_source = _YamlSource(settings_cls, yaml_file=load.yaml_file)
        load.yaml_keys = set(yaml_source.yaml_data)
        return (init_settings, _EnvSource(settings_cls, load.env), yaml_source)

    # ---- validation ----------------------------------------------------------------
    @field_validator("scoring_config", "routing_policy", "api_key", "mlflow_tracking_uri",
                     "artifact_root", "journal_dir", "agent_token_secret", "crm_origin",
                     mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        """An empty value of an optional setting means "not set"."""
        return None if isinstance(value, str) and value == "" else value

    @field_validator("crm_origin")
    @classmethod
    def _origin(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not ORIGIN_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not an origin such as https://crm.example.com "
                             "(scheme, host and optional port; no path)")
        return value

    @field_validator("agent_token_secret")
    @classmethod
    def _long_secret(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) < 32:
            raise ValueError("must be at least 32 bytes (HS256 key; e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("agent_token_max_hours")
    @classmethod
    def _token_hours(cls, value: float) -> float:
        if not 0 < value <= 24 * 30:
            raise ValueError("must be a number of hours in (0, 720]")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("rescore_hysteresis", "drop_below_probability")
    @classmethod
    def _probability_margin(cls, value: float) -> float:
        if not 0 <= value < 1:
            raise ValueError("must be a probability in [0, 1)")
        return value

    @field_validator("drop_after_days", "webhook_timeout_seconds", "webhook_backoff_seconds",
                     "webhook_backoff_max_seconds")
    @classmethod
    def _positive_seconds(cls, value: float) -> float:
        if not value > 0:
            raise ValueError("must be positive")
        return value

    @field_validator("webhook_max_attempts")
    @classmethod
    def _attempts(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be 1 or more")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_needs_secret(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("webhook_url") is not None and not value:
            raise ValueError("required when webhook_url is set (the receiver checks the "
                             "HMAC-SHA256 signature with it)")
        return value

    @field_validator("log_durability")
    @classmethod
    def _known_durability(cls, value: str) -> str:
        if value not in {"fsync", "none"}:
            raise ValueError(f"{value!r} is not one of 'fsync', 'none'")
        return value

    @field_validator("workdir", "scoring_config", "routing_policy", "journal_dir")
    @classmethod
    def _absolute_path(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        if value not in {"embedded", "production"}:
            raise ValueError(f"{value!r} is not one of 'embedded', 'production'")
        return value

    @field_validator("conversion_window_days")
    @classmethod
    def _positive_window(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be a positive day count")
        return value

    @field_validator("champion_max_age_days", "validation_embargo_days")
    @classmethod
    def _age_not_negative(cls, value: float) -> float:
        if not value >= 0:
            raise ValueError("must be a day count of 0 or more")
        return value

    @field_validator("promotion_margin")
    @classmethod
    def _margin_share(cls, value: float) -> float:
        if not 0 <= value < 1:
            raise ValueError("must be a share in [0, 1), e.g. 0.01 for 1% of the champion's "
                             "log loss")
        return value

    @field_validator("intent_half_life_days")
    @classmethod
    def _positive_half_life(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("hash_salt")
    @classmethod
    def _salt_not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("database_prefix")
    @classmethod
    def _database_prefix(cls, value: str) -> str:
        if not DATABASE_PREFIX_PATTERN.fullmatch(value) or value in SYSTEM_DATABASES:
            raise ValueError(
                f"{value!r} must be 1-40 lowercase letters, digits or underscores, starting "
                "with a letter or underscore, and not a PostgreSQL system database name"
            )
        return value

    # ---- copies --------------------------------------------------------------------
    def with_(self, **changes: Any) -> Settings:
        """A validated copy with ``changes`` applied (``ConfigError`` names a bad field)."""
        return type(self)(**{**self.model_dump(), **changes})

    def with_workdir(self, workdir: Path | str | None) -> Settings:
        """A copy of these settings rooted at ``workdir`` (unchanged when None)."""
        if workdir is None:
            return self
        return self.with_(workdir=Path(workdir))

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
            or (production_service_url(self, "mlflow") if self.profile == "production" else None)
            or f"sqlite:///{self.mlruns_dir / 'mlflow.db'}"
        )

    @property
    def artifact_location(self) -> str:
        return self.artifact_root or (self.mlruns_dir / "artifacts").as_uri()

    @property
    def optuna_storage(self) -> str:
        if self.profile == "production":
            return production_service_url(self, "optuna")
        return f"sqlite:///{self.mlruns_dir / 'optuna.db'}"

    @property
    def prediction_log_path(self) -> Path:
        return self.data_dir / "predictions.sqlite"

    @property
    def lead_state_path(self) -> Path:
        """Leads' current answers, score history and the webhook outbox (embedded profile)."""
        return self.data_dir / "lead_state.sqlite"

    @property
    def prediction_journal_dir(self) -> Path:
        """The service's fsync'd journal of answered predictions (``journal_dir``)."""
        return self.journal_dir or self.workdir / "journal"

    @property
    def portrait_store_path(self) -> Path:
        """The DuckDB file behind portraits and audience counts (``features.portrait_store``)."""
        return self.features_dir / "portrait.duckdb"

    @property
    def workspace_db_path(self) -> Path:
        """Assignments, access log and saved audiences (embedded profile; ``crm_data.access``)."""
        return self.data_dir / "workspace.sqlite"

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


def _describe(exc: ValidationError, load: _Load | None) -> str:
    """One line per problem: the field, where its value came from, and what is wrong."""
    known = ", ".join(Settings.model_fields)
    problems = []
    for error in exc.errors(include_url=False):
        name = str(error["loc"][0]) if error["loc"] else "?"
        origin = _origin(name, load)
        where = f" (from {origin})" if origin else ""
        if error["type"] == "extra_forbidden":
            problems.append(f"config field '{name}'{where}: unknown field; known: {known}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        if name in SECRET_FIELDS or not isinstance(value, str | int | float):
            shown = ""
        elif name in URL_FIELDS and isinstance(value, str):
            shown = f"{mask_password(value)!r}: "
        else:
            shown = f"cannot read {value!r}: " if error["type"].endswith("_parsing") else ""
        problems.append(f"config field '{name}'{where}: {shown}{message}")
    return "; ".join(problems)


def _origin(name: str, load: _Load | None) -> str | None:
    """Which source set ``name`` in a ``load_settings`` call (environment beats the file)."""
    if load is None:
        return None
    variable = ENV_PREFIX + name.upper()
    if any(key.upper() == variable for key in load.env):
        return f"environment variable {variable}"
    if name in load.yaml_keys:
        return f"config file {load.yaml_file}"
    return None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from defaults, the optional YAML file and ``LEADSCORE_*`` variables
    (``env``: this mapping instead of ``os.environ``)."""
    env = dict(os.environ if env is None else env)
    config_path = env.get(CONFIG_ENV)
    yaml_file = Path(config_path).expanduser() if config_path else DEFAULT_CONFIG_FILE
    if config_path and not yaml_file.is_file():
        raise ConfigError(f"{CONFIG_ENV} points to {yaml_file}, which does not exist")
    token = _LOADING.set(_Load(env=env, yaml_file=yaml_file))
    try:
        return Settings()
    finally:
        _LOADING.reset(token)


@cache
def get_settings() -> Settings:
    """The process-wide settings (cached; call ``get_settings.cache_clear()`` after env edits)."""
    return load_settings()


# ---- production PostgreSQL databases (the profile's other services: leadscore.profiles) -----
def mask_password(url: str) -> str:
    """``url`` with any password replaced by ``***`` (URLs and Feast ``password=`` params)."""
    scheme, sep, rest = url.partition("://")
    if sep:
        userinfo, at, host_part = rest.rpartition("@")
        if at and ":" in userinfo:
            user = userinfo.partition(":")[0]
            url = f"{scheme}://{user}:***@{host_part}"
    if "password=" in url:
        pieces = url.split(",")
        url = ",".join(
            "password=***" if piece.startswith("password=") else piece for piece in pieces
        )
    return url


def _postgres_parts(settings: Settings) -> SplitResult:
    parts = urlsplit(settings.postgres_url)
    if parts.scheme.split("+", 1)[0] not in {"postgresql", "postgres"} or not parts.hostname:
        raise ConfigError(
            f"config field 'postgres_url': {mask_password(settings.postgres_url)!r} is not a "
            "postgresql://user[:password]@host[:port] URL"
        )
    return parts


def postgres_url(settings: Settings, database: str, driver: str | None = SQLALCHEMY_DRIVER) -> str:
    """``settings.postgres_url`` pointed at ``database``; ``driver`` adds ``+driver`` to the
    scheme for SQLAlchemy (MLflow, Optuna, Feast); ``driver=None`` gives a libpq/psycopg DSN."""
    parts = _postgres_parts(settings)
    scheme = "postgresql" + (f"+{driver}" if driver else "")
    return urlunsplit((scheme, parts.netloc, "/" + database, parts.query, ""))


def production_databases(settings: Settings) -> dict[str, str]:
    """Service → PostgreSQL database name for ``settings.database_prefix`` (the default prefix
    ``leadscore`` gives ``leadscore.profiles.PRODUCTION_DATABASES``)."""
    prefix = settings.database_prefix
    return {service: prefix + suffix for service, suffix in DATABASE_SUFFIXES.items()}


def production_service_url(settings: Settings, service: str) -> str:
    """The production URL of ``service`` (one of :data:`DATABASE_SUFFIXES`' keys)."""
    databases = production_databases(settings)
    if service not in databases:
        raise ConfigError(f"unknown service {service!r}; known: {sorted(databases)}")
    driver = None if service == "prediction_log" else SQLALCHEMY_DRIVER
    return postgres_url(settings, databases[service], driver=driver)
