"""Load typed settings from the environment and ``.env``; refuse bad ones with every problem at once.

Nothing here runs at import: the container builds :class:`Settings` (``providers.Singleton(Settings)``).
Any missing or invalid value raises :class:`~shared.errors.ConfigError`, one line per problem, naming the
variable and what was expected, never the value of a secret.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pydantic
from pydantic import Field, SecretStr, ValidatorFunctionWrapHandler, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_REDIS_URL",
    "PLACEHOLDER_VALUES",
    "Environment",
    "LogLevel",
    "Settings",
    "StorageBackend",
]


class Environment(StrEnum):
    """Where the pipeline runs; staging and production demand every credential."""

    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
StorageBackend = Literal["supabase", "local"]

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/videogen"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# The credential values `.env.example` ships with; staging and production refuse them.
# tests/unit/test_config.py proves every placeholder in .env.example is listed here.
PLACEHOLDER_VALUES = frozenset(
    {
        "https://your-project-ref.supabase.co",
        "sb_secret_replace-me",
        "sb_publishable_replace-me",
        "sk-replace-me",
        "r8_replace-me",
        "replace-me-with-at-least-32-random-characters",
    }
)

# Secret-bearing fields and the environment variable each is read from, in the order they are reported.
CREDENTIALS: dict[str, str] = {
    "supabase_url": "SUPABASE_URL",
    "supabase_service_key": "SUPABASE_SERVICE_KEY",
    "supabase_anon_key": "SUPABASE_ANON_KEY",
    "database_url": "DATABASE_URL",
    "redis_url": "REDIS_URL",
    "openai_api_key": "OPENAI_API_KEY",
    "replicate_api_token": "REPLICATE_API_TOKEN",
    "jwt_secret_key": "JWT_SECRET_KEY",
}

_JWT = re.compile(r"^[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]+={0,2}$")


def _plain(value: object) -> str | None:
    """Return the text of a value that may be a SecretStr, a str or missing."""
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


def _is_supabase_key(value: str, new_prefix: str) -> bool:
    return bool(_JWT.match(value)) or (value.startswith(new_prefix) and len(value) > len(new_prefix))


class Settings(BaseSettings):
    """Every setting of the pipeline, typed; read from the environment (then ``.env``) by the container."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
        frozen=True,
    )

    environment: Environment = Environment.DEVELOPMENT
    log_level: LogLevel = "INFO"
    log_file: Path | None = Field(
        default=None, description="JSON log file, shared safely by many processes; rotate it externally (logrotate)"
    )
    log_console: bool = Field(default=True, description="JSON lines on stderr too (off when only the file is wanted)")

    supabase_url: str | None = None
    supabase_service_key: SecretStr | None = None
    supabase_anon_key: SecretStr | None = None
    openai_api_key: SecretStr | None = None
    replicate_api_token: SecretStr | None = None
    jwt_secret_key: SecretStr | None = None

    database_url: SecretStr | None = Field(
        default=None, description=f"defaults to {DEFAULT_DATABASE_URL} in development"
    )
    db_pool_min_size: int = Field(default=1, ge=0)
    db_pool_max_size: int = Field(default=10, ge=1)
    db_connect_timeout_seconds: float = Field(default=10.0, gt=0)
    db_command_timeout_seconds: float = Field(default=30.0, gt=0)
    db_connect_attempts: int = Field(default=3, ge=1)
    # None: automatic (0 behind Supabase's transaction pooler on port 6543, else asyncpg's default of 100).
    db_statement_cache_size: int | None = Field(default=None, ge=0)

    redis_url: SecretStr | None = Field(default=None, description=f"defaults to {DEFAULT_REDIS_URL} in development")
    redis_key_prefix: str = "videogen:cache:"
    redis_max_connections: int = Field(default=50, ge=1)
    redis_operation_timeout_seconds: float = Field(default=1.0, gt=0)
    redis_strict: bool = False
    redis_cluster: bool = Field(default=False, description="REDIS_URL names a node of a Redis Cluster")
    redis_max_value_bytes: int = Field(default=4 * 1024 * 1024, gt=0, description="larger cache values are refused")

    storage_backend: StorageBackend = "local"
    storage_local_root: Path = Path(".data/storage")
    storage_max_upload_bytes: int = Field(default=2 * 1024**3, gt=0)
    storage_timeout_seconds: float = Field(default=60.0, gt=0)
    storage_chunk_size_bytes: int = Field(default=6 * 1024 * 1024, ge=5 * 1024 * 1024)

    default_job_budget: Decimal = Field(default=Decimal("50.0000"), ge=0, max_digits=12, decimal_places=4)
    reservation_ttl_seconds: int = Field(default=15 * 60, gt=0)

    audio_max_size_mb: int = Field(default=100, gt=0)
    audio_min_duration_seconds: float = Field(default=5.0, ge=0)
    audio_max_duration_seconds: float = Field(default=15 * 60.0, gt=0)
    prompt_min_length: int = Field(default=3, ge=1)
    prompt_max_length: int = Field(default=2000, ge=1)

    startup_timeout_seconds: float = Field(default=30.0, gt=0)
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("db_statement_cache_size", "log_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("environment", "storage_backend", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="wrap")
    @classmethod
    def _check_everything(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Settings:
        """Collect type errors and cross-field problems together, so one start lists them all."""
        problems: list[str] = []
        try:
            settings: Settings = handler(data)
        except pydantic.ValidationError as exc:
            failed: set[str] = set()
            for error in exc.errors(include_input=False, include_url=False):
                field = str(error["loc"][0]) if error["loc"] else ""
                failed.add(field)
                problems.append(f"{field.upper() or 'SETTINGS'}: {error['msg']}")
            raw = dict(data) if isinstance(data, dict) else {}
            partial = cls.model_construct(**{k: v for k, v in raw.items() if k not in failed})
            problems.extend(partial._credential_problems(skip=failed))
            raise ConfigError(problems=tuple(problems)) from None
        problems.extend(settings._credential_problems(skip=set()))
        if problems:
            raise ConfigError(problems=tuple(problems))
        return settings

    def _credential_problems(self, *, skip: set[str]) -> list[str]:
        """Check formats and what the environment requires; never quote a value."""
        problems: list[str] = []
        values = {field: _plain(getattr(self, field, None)) for field in CREDENTIALS}
        try:
            environment = Environment(str(getattr(self, "environment", "development")).lower())
        except ValueError:
            environment = Environment.DEVELOPMENT
        deployed = environment is not Environment.DEVELOPMENT
        backend = str(getattr(self, "storage_backend", "local"))

        required = set(CREDENTIALS) if deployed else set()
        if backend == "supabase":
            required |= {"supabase_url", "supabase_service_key"}
        for field, variable in CREDENTIALS.items():
            if field in skip:
                continue
            value = values[field]
            if not value:
                if field in required:
                    why = f"the {environment.value} environment" if deployed else "STORAGE_BACKEND=supabase"
                    problems.append(f"{variable}: required by {why}; set it (see .env.example)")
                continue
            if deployed and value in PLACEHOLDER_VALUES:
                problems.append(f"{variable}: still the placeholder from .env.example; set the real value")
                continue
            problem = _format_problem(field, value, deployed=deployed)
            if problem:
                problems.append(f"{variable}: {problem}")
        if "db_pool_max_size" not in skip and "db_pool_min_size" not in skip:
            low, high = getattr(self, "db_pool_min_size", 1), getattr(self, "db_pool_max_size", 10)
            if isinstance(low, int) and isinstance(high, int) and low > high:
                problems.append("DB_POOL_MIN_SIZE: must not be larger than DB_POOL_MAX_SIZE")
        return problems

    @property
    def database_dsn(self) -> str:
        """Return the PostgreSQL connection string (the local default in development)."""
        return _plain(self.database_url) or DEFAULT_DATABASE_URL

    @property
    def redis_dsn(self) -> str:
        """Return the Redis URL (the local default in development)."""
        return _plain(self.redis_url) or DEFAULT_REDIS_URL

    @property
    def statement_cache_size(self) -> int:
        """Return asyncpg's statement cache size: 0 behind a transaction pooler (port 6543) unless set."""
        if self.db_statement_cache_size is not None:
            return self.db_statement_cache_size
        try:
            port = urlsplit(self.database_dsn).port
        except ValueError:
            port = None
        return 0 if port == 6543 else 100

    @property
    def reservation_ttl(self) -> timedelta:
        """Return how long an uncommitted budget reservation keeps counting."""
        return timedelta(seconds=self.reservation_ttl_seconds)

    def secret_values(self) -> list[str]:
        """Return the value of every secret set, for log redaction (longest first)."""
        secrets = [_plain(getattr(self, field)) for field in CREDENTIALS if field != "supabase_url"]
        found = {s for s in secrets if s and len(s) >= 6}
        # A URL's password is a secret of its own: redact it even where the URL is logged in pieces.
        for dsn in (self.database_dsn, self.redis_dsn):
            try:
                password = urlsplit(dsn).password
            except ValueError:
                password = None
            if password and len(password) >= 4:
                found.add(password)
        return sorted(found, key=len, reverse=True)


def _format_problem(field: str, value: str, *, deployed: bool) -> str | None:
    """Return what is wrong with one credential's format, or None."""
    if field == "supabase_url":
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            return "expected an http(s) URL with a host, such as https://<project-ref>.supabase.co"
        if deployed and parts.scheme != "https":
            return "must use https:// outside development"
        return None
    if field == "database_url":
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in {"postgres", "postgresql"}:
            return "expected a postgres:// or postgresql:// connection string"
        try:
            urlsplit(value).port  # noqa: B018 - parsing the port validates it
        except ValueError:
            return "the port is not a number between 0 and 65535"
        return None
    if field == "redis_url":
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in {"redis", "rediss"}:
            return "expected a redis:// or rediss:// (TLS) URL"
        return None
    if field == "supabase_service_key":
        ok = _is_supabase_key(value, "sb_secret_")
        return None if ok else "expected a JWT (three base64url parts) or an sb_secret_... key"
    if field == "supabase_anon_key":
        ok = _is_supabase_key(value, "sb_publishable_")
        return None if ok else "expected a JWT (three base64url parts) or an sb_publishable_... key"
    if field == "openai_api_key":
        return None if value.startswith("sk-") and len(value) > 3 else "expected an OpenAI key starting with sk-"
    if field == "replicate_api_token":
        return None if value.startswith("r8_") and len(value) > 3 else "expected a Replicate token starting with r8_"
    if field == "jwt_secret_key":
        return None if len(value) >= 32 else f"expected at least 32 characters (got {len(value)})"
    return None
