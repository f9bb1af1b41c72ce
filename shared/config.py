"""Load typed settings from the environment and ``.env``; refuse bad ones with every problem at once.

Nothing here runs at import: the container builds :class:`Settings` (``providers.Singleton(Settings)``).
Any missing or invalid value raises :class:`~shared.errors.ConfigError`, one line per problem, naming the
variable and what was expected, never the value of a secret.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import pydantic
from pydantic import (
    Field,
    SecretStr,
    SerializerFunctionWrapHandler,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared._connection_urls import host_kind, looks_like_url, mask_url, query_values, url_credentials, url_hosts
from shared._container_only import container_only
from shared.errors import ConfigError
from shared.input_limits import (
    DEFAULT_AUDIO_MAX_DURATION_SECONDS,
    DEFAULT_AUDIO_MAX_SIZE_MB,
    DEFAULT_AUDIO_MIN_DURATION_SECONDS,
    DEFAULT_PROMPT_MAX_LENGTH,
    DEFAULT_PROMPT_MIN_LENGTH,
)

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_PAID_LIMITS",
    "DEFAULT_REDIS_URL",
    "MAX_URL_LENGTH",
    "MIN_SECRET_LENGTH",
    "PLACEHOLDER_VALUES",
    "Environment",
    "LogLevel",
    "ModuleSettings",
    "RateLimits",
    "Settings",
    "StorageBackend",
    "check_env_file",
]


class Environment(StrEnum):
    """Where the pipeline runs; staging and production demand every credential."""

    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
StorageBackend = Literal["supabase", "local"]


class RateLimits(pydantic.BaseModel):
    """A provider's limits for one API key (and model): requests and tokens per minute, requests per second,
    simultaneous calls. None: not limited on that axis. Shared by every process (shared.paid.limiter)."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    rps: int | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, gt=0)


# Per-provider defaults, below the providers' own lowest paid tiers so that a fresh key is not refused:
# OpenAI tier 1 (500 RPM, 200k TPM on gpt-4o-mini, 30k on gpt-4o), Replicate's 600 predictions created per
# minute. PAID_LIMITS overrides any of them by "provider" or "provider/model" (the more specific wins).
DEFAULT_PAID_LIMITS: dict[str, RateLimits] = {
    "openai": RateLimits(rpm=500, tpm=30_000, rps=10, concurrency=50),
    "openai/gpt-4o-mini": RateLimits(rpm=500, tpm=200_000, rps=10, concurrency=50),
    "openai/gpt-image-1": RateLimits(rpm=5, tpm=100_000, rps=1, concurrency=5),
    "replicate": RateLimits(rpm=600, rps=10, concurrency=10),
}

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
# Supabase's new API keys: the prefix, then at least 20 base64url characters (22 random and an 8-character
# checksum as issued: sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz).
_NEW_KEY_BODY = re.compile(r"^[A-Za-z0-9_-]{20,}$")
# What a legacy JWT key's role claim must say, per setting.
_LEGACY_ROLES = {"supabase_service_key": "service_role", "supabase_anon_key": "anon"}
# A secret shorter than this is not one: the log redactor skips short values, and a guess finds it.
MIN_SECRET_LENGTH = 16
# No URL setting is longer than this; a longer value is a mistake or an attack (a 1 MB DATABASE_URL).
MAX_URL_LENGTH = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _plain(value: object) -> str | None:
    """Return the text of a value that may be a SecretStr, a str or missing."""
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


def _is_supabase_key(value: str, new_prefix: str) -> bool:
    if value.startswith(new_prefix):
        return bool(_NEW_KEY_BODY.match(value[len(new_prefix) :]))
    return bool(_JWT.match(value))


def _jwt_role(value: str) -> str | None:
    """Return the ``role`` claim of a legacy key (a JWT), unverified; None when it has none."""
    payload = value.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    role = claims.get("role") if isinstance(claims, dict) else None
    return role if isinstance(role, str) else None


def check_env_file(path: Path, encoding: str = "utf-8") -> None:
    """Refuse a ``.env`` file that cannot be read as written, naming the line (python-dotenv would skip it).

    Raises:
        ConfigError: the file is not UTF-8 (saved as UTF-16?), a line holds a NUL byte, or a line does not parse
            (an unterminated quote: the setting would silently fall back to its default, another database).
    """
    from dotenv.parser import parse_stream  # noqa: PLC0415 - pydantic-settings' own dependency, used when reading

    data = path.read_bytes()
    where = f"{path.name}"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(problems=(f"{where}: saved as UTF-16; save it as UTF-8 (line 1 onwards)",))
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        msg = f"{where} line {line}: not {encoding} (saved as UTF-16 or Latin-1?); save the file as UTF-8"
        raise ConfigError(problems=(msg,)) from None
    problems = [
        f"{where} line {number}: holds a NUL byte; remove it"
        for number, line in enumerate(text.splitlines(), start=1)
        if "\x00" in line
    ]
    unreadable = "cannot be read (an unterminated quote?); its settings would silently take their defaults"
    problems.extend(
        f"{where} line {binding.original.line}: {unreadable}: close the quote"
        for binding in parse_stream(io.StringIO(text))
        if binding.error
    )
    if problems:
        raise ConfigError(problems=tuple(problems))


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
    log_file: Path | None = Field(default=None, description="JSON log file, shared safely by many processes")
    log_max_bytes: int = Field(
        default=100 * 1024 * 1024, ge=0, description="LOG_FILE is rotated past this size; 0 leaves it to logrotate"
    )
    log_backup_count: int = Field(default=5, ge=1, le=1000, description="rotated LOG_FILEs kept (.1 the newest)")
    log_console: bool = Field(default=True, description="JSON lines on stderr too (off when only the file is wanted)")

    supabase_url: str | None = None
    supabase_service_key: SecretStr | None = None
    supabase_anon_key: SecretStr | None = None
    openai_api_key: SecretStr | None = None
    replicate_api_token: SecretStr | None = None
    jwt_secret_key: SecretStr | None = None
    # The one way to let staging or production talk plaintext (http://, redis://, sslmode other than
    # require/verify-*) and only to hosts on a private network: loopback, private ranges, internal names.
    allow_insecure_private_network: bool = False

    database_url: SecretStr | None = Field(
        default=None, description=f"defaults to {DEFAULT_DATABASE_URL} in development"
    )
    db_pool_min_size: int = Field(default=1, ge=0, le=1000)
    db_pool_max_size: int = Field(default=10, ge=1, le=1000)
    db_max_client_connections: int | None = Field(
        default=None,
        ge=1,
        description="client connections the database or its pooler accepts (Supabase's session pooler: its pool size)",
    )
    db_connect_timeout_seconds: float = Field(default=10.0, gt=0, le=600, allow_inf_nan=False)
    db_command_timeout_seconds: float = Field(default=30.0, gt=0, le=24 * 3600, allow_inf_nan=False)
    db_connect_attempts: int = Field(default=3, ge=1, le=100)
    # None: automatic (0 behind Supabase's transaction pooler on port 6543, else asyncpg's default of 100).
    db_statement_cache_size: int | None = Field(default=None, ge=0, le=100_000)

    redis_url: SecretStr | None = Field(default=None, description=f"defaults to {DEFAULT_REDIS_URL} in development")
    redis_key_prefix: str = "videogen:cache:"
    redis_max_connections: int = Field(default=50, ge=1, le=10_000)
    redis_operation_timeout_seconds: float = Field(default=1.0, gt=0, le=300, allow_inf_nan=False)
    redis_strict: bool = False
    redis_cluster: bool = Field(default=False, description="REDIS_URL names a node of a Redis Cluster")
    redis_max_value_bytes: int = Field(default=4 * 1024 * 1024, gt=0, description="larger cache values are refused")

    storage_backend: StorageBackend = "local"
    storage_local_root: Path = Path(".data/storage")
    storage_max_upload_bytes: int = Field(default=2 * 1024**3, gt=0, le=5 * 1024**4)
    storage_timeout_seconds: float = Field(default=60.0, gt=0, le=3600, allow_inf_nan=False)
    # MiB per TUS PATCH of a large upload to Supabase Storage. None: by the host, 6 MiB on Supabase's platform
    # (*.supabase.co, *.supabase.in), the whole body in one PATCH on a self-hosted server (see tus_chunk_size).
    storage_tus_chunk_mb: int | None = Field(default=None, ge=5, le=5 * 1024 * 1024)
    # Seconds one storage call keeps retrying a retryable failure (drops, 5xx, 429): the default outlasts a
    # Supabase Storage restart, which takes 3 to 16 s.
    storage_retry_window_seconds: float = Field(default=30.0, gt=0, le=3600, allow_inf_nan=False)

    default_job_budget: Decimal = Field(default=Decimal("50.0000"), ge=0, max_digits=12, decimal_places=4)
    reservation_ttl_seconds: int = Field(default=15 * 60, gt=0, le=7 * 24 * 3600)

    # Paid calls (shared.paid): limits shared by every process, on top of DEFAULT_PAID_LIMITS.
    paid_limits: dict[str, RateLimits] = Field(
        default_factory=dict, description='JSON: {"openai/gpt-4o": {"rpm": 500, "tpm": 30000}, ...}'
    )
    paid_concurrency_lease_seconds: float = Field(default=60.0, ge=1, le=3600, allow_inf_nan=False)
    # Added to the 1 s and 60 s windows: absorbs the varying delay between a grant and the call's arrival.
    paid_rate_margin_seconds: float = Field(default=0.1, ge=0, le=10, allow_inf_nan=False)
    paid_admission_max_wait_seconds: float = Field(default=30.0, ge=0, le=3600, allow_inf_nan=False)
    paid_key_prefix: str = "videogen:paid:"
    paid_replicate_prices_file: Path | None = None

    # Housekeeping (`python -m shared maintain`, shared/maintenance.py).
    stage_heartbeat_interval_seconds: float = Field(default=30.0, gt=0, le=3600, allow_inf_nan=False)
    stage_heartbeat_timeout_seconds: float = Field(
        default=10 * 60.0,
        gt=0,
        le=7 * 24 * 3600,
        allow_inf_nan=False,
        description="a processing job with no sign of life for this long is failed",
    )
    reservation_release_grace_seconds: float = Field(
        default=5 * 60.0,
        ge=0,
        le=7 * 24 * 3600,
        allow_inf_nan=False,
        description="an expired reservation is released this long after it expired",
    )
    reservation_retention_days: float = Field(
        default=30.0,
        gt=0,
        le=3650,
        allow_inf_nan=False,
        description="committed and released reservation rows older than this are deleted",
    )
    maintenance_batch_size: int = Field(default=500, ge=1, le=10_000)

    # The validators' own defaults (shared.validation), so a number is written once.
    audio_max_size_mb: int = Field(default=DEFAULT_AUDIO_MAX_SIZE_MB, gt=0, le=10 * 1024)
    audio_min_duration_seconds: float = Field(
        default=DEFAULT_AUDIO_MIN_DURATION_SECONDS, ge=0, le=24 * 3600, allow_inf_nan=False
    )
    audio_max_duration_seconds: float = Field(
        default=DEFAULT_AUDIO_MAX_DURATION_SECONDS, gt=0, le=24 * 3600, allow_inf_nan=False
    )
    prompt_min_length: int = Field(default=DEFAULT_PROMPT_MIN_LENGTH, ge=1, le=100_000)
    prompt_max_length: int = Field(default=DEFAULT_PROMPT_MAX_LENGTH, ge=1, le=100_000)

    startup_timeout_seconds: float = Field(default=30.0, gt=0, le=3600, allow_inf_nan=False)
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0, le=3600, allow_inf_nan=False)

    # Access tokens (shared.auth): leeway for exp/nbf, and how long the project's JWKS is kept.
    auth_leeway_seconds: float = Field(default=10.0, ge=0, le=300, allow_inf_nan=False)
    auth_jwks_cache_seconds: float = Field(default=600.0, gt=0, le=86400, allow_inf_nan=False)
    auth_jwks_refetch_seconds: float = Field(default=30.0, ge=0, le=3600, allow_inf_nan=False)
    auth_jwks_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, allow_inf_nan=False, description="the whole JWKS answer, not each read"
    )
    auth_issuer: str | None = Field(
        default=None, description="the tokens' iss; defaults to SUPABASE_URL/auth/v1 (set it behind a custom domain)"
    )
    auth_hs256_enabled: bool = Field(
        default=True,
        description="accept HS256 tokens (JWT_SECRET_KEY); false once the legacy secret is revoked",
    )
    auth_max_token_lifetime_seconds: float = Field(
        default=86400.0,
        gt=0,
        le=30 * 86400,
        allow_inf_nan=False,
        description="exp minus iat; longer tokens are refused",
    )

    # The HTTP edge (shared.api.server): how long a client may take to send a request.
    api_head_timeout_seconds: float = Field(default=10.0, gt=0, le=300, allow_inf_nan=False)
    api_body_grace_seconds: float = Field(default=10.0, ge=0, le=300, allow_inf_nan=False)
    api_body_min_bytes_per_second: int = Field(default=32 * 1024, gt=0)
    api_keep_alive_seconds: float = Field(default=5.0, gt=0, le=300, allow_inf_nan=False)
    api_max_connections: int = Field(default=1000, ge=1)
    # Serving with several processes (shared.api.server.serve): a slow import must not count as a hung worker.
    api_workers: int = Field(default=1, ge=1, le=256)
    api_worker_startup_grace_seconds: float = Field(default=60.0, gt=0, le=3600, allow_inf_nan=False)
    api_worker_healthcheck_seconds: float = Field(default=5.0, ge=1, le=600, allow_inf_nan=False)

    def __init__(self, **values: Any) -> None:
        """Load the settings; a ``.env`` file that cannot be read as written is a ConfigError naming the line."""
        chosen = values.get("_env_file", self.model_config.get("env_file"))
        files = chosen if isinstance(chosen, list | tuple) else [chosen]
        encoding = values.get("_env_file_encoding") or self.model_config.get("env_file_encoding") or "utf-8"
        for file in files:
            if isinstance(file, str | Path) and Path(file).is_file():
                check_env_file(Path(file), encoding)
        super().__init__(**values)

    # OpenTelemetry (shared.telemetry, the [otel] extra): off unless OTEL_ENABLED. The SDK reads the other
    # standard OTEL_* variables itself (OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_EXPORTER_OTLP_HEADERS...).
    otel_enabled: bool = Field(default=False, description="traces and metrics on (needs videogen-shared[otel])")
    otel_service_name: str | None = Field(default=None, max_length=200)
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP collector base URL (http://collector:4318); unset: no OTLP export"
    )
    otel_exporter_prometheus_host: str = Field(default="127.0.0.1", min_length=1)
    otel_exporter_prometheus_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve /metrics for Prometheus on this port; unset: no endpoint"
    )
    # summary: no span per statement, the enclosing span counts them (db.client.statements, db.client.seconds);
    # statement: one lean span per statement; asyncpg: asyncpg's instrumentor (the costliest, benchmarks/README).
    otel_db_spans: Literal["summary", "statement", "asyncpg"] = "summary"
    otel_genai_cost: bool = Field(default=False, description="a paid call's cost on its span (gen_ai.usage.cost)")
    otel_metrics_database: bool = Field(default=True, description="gauges read from PostgreSQL on each collection")
    otel_metrics_query_timeout_seconds: float = Field(default=2.0, gt=0, le=60, allow_inf_nan=False)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "db_statement_cache_size",
        "db_max_client_connections",
        "log_file",
        "storage_tus_chunk_mb",
        "paid_replicate_prices_file",
        "auth_issuer",
        "otel_service_name",
        "otel_exporter_otlp_endpoint",
        "otel_exporter_prometheus_port",
        mode="before",
    )
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
            rest = {key: value for key, value in raw.items() if key not in failed}
            try:
                # The fields that passed, typed (the failed ones at their defaults), for the cross-field checks.
                partial: Settings = handler(rest)
            except pydantic.ValidationError:
                partial = cls.model_construct(**rest)
            problems.extend(partial._credential_problems(skip=failed))
            problems.extend(partial._number_problems(skip=failed))
            problems.extend(partial._order_problems(skip=failed))
            raise ConfigError(problems=tuple(problems)) from None
        problems.extend(settings._credential_problems(skip=set()))
        problems.extend(settings._number_problems(skip=set()))
        problems.extend(settings._order_problems(skip=set()))
        if problems:
            raise ConfigError(problems=tuple(problems))
        return settings

    def _credential_problems(self, *, skip: set[str]) -> list[str]:
        """Check formats, transport and what the environment requires; never quote a secret."""
        problems: list[str] = []
        values = {field: _plain(getattr(self, field, None)) for field in CREDENTIALS}
        try:
            environment = Environment(str(getattr(self, "environment", "development")).lower())
        except ValueError:
            environment = Environment.DEVELOPMENT
        deployed = environment is not Environment.DEVELOPMENT
        backend = str(getattr(self, "storage_backend", "local"))
        allow_private = getattr(self, "allow_insecure_private_network", False) is True

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
            if value in PLACEHOLDER_VALUES:
                if deployed:
                    problems.append(f"{variable}: still the placeholder from .env.example; set the real value")
                continue  # a developer's copy of .env.example works as it is
            problem = _format_problem(field, value)
            if problem is None and deployed:
                problem = _deployed_problem(field, value, allow_private=allow_private)
            if problem:
                problems.append(f"{variable}: {problem}")
        return problems

    def _number_problems(self, *, skip: set[str]) -> list[str]:
        """Refuse what a field's own bounds let through: NaN, infinity, and sizes no consumer can hold.

        Every field here declares its range; this net catches a field added without one, so that no number
        reaches ``timedelta``, a socket timeout or a C integer it would overflow.
        """
        problems: list[str] = []
        for field in type(self).model_fields:
            value = getattr(self, field, None)
            if field in skip or isinstance(value, bool) or not isinstance(value, int | float | Decimal):
                continue
            limit = next((bound for suffix, bound in _UNIT_LIMITS if field.endswith(suffix)), _INT64_MAX)
            if isinstance(value, float | Decimal) and not math.isfinite(value):
                problems.append(f"{field.upper()}: must be a finite number")
            elif (abs(value) if isinstance(value, int) else abs(float(value))) > limit:
                problems.append(f"{field.upper()}: must be at most {limit}")
        return problems

    def _order_problems(self, *, skip: set[str]) -> list[str]:
        """Refuse a lower bound above its upper bound (pool sizes, durations, prompt lengths, sizes)."""
        problems: list[str] = []
        for low_field, high_field, scale in _ORDERED:
            if {low_field, high_field} & skip:
                continue
            low, high = getattr(self, low_field, None), getattr(self, high_field, None)
            if isinstance(low, int | float) and isinstance(high, int | float) and low * scale > high:
                problems.append(f"{low_field.upper()}: must not be larger than {high_field.upper()}")
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
    def stage_heartbeat_interval(self) -> timedelta:
        """Return how often a running stage's worker renews its heartbeat (``stage_heartbeat(every=...)``)."""
        return timedelta(seconds=self.stage_heartbeat_interval_seconds)

    @property
    def reservation_ttl(self) -> timedelta:
        """Return how long an uncommitted budget reservation keeps counting."""
        return timedelta(seconds=self.reservation_ttl_seconds)

    def rate_limits(self, provider: str, model: str) -> RateLimits:
        """Return the limits of ``provider``/``model``: PAID_LIMITS, then the defaults, the model's entry first."""
        merged: dict[str, int | None] = {}
        for key in (f"{provider}/{model}", provider):
            for table in (self.paid_limits, DEFAULT_PAID_LIMITS):
                if key in table:
                    for name, value in table[key].model_dump(exclude_unset=True).items():
                        merged.setdefault(name, value)
        return RateLimits.model_validate(merged)

    def secret_values(self) -> list[str]:
        """Return the value of every secret set, for log redaction (longest first).

        Besides the keys, every credential embedded in a URL-valued setting: the password of its user part
        (as written and percent-decoded) and credential query parameters such as ``?password=``.
        """
        secrets = [_plain(getattr(self, field)) for field in CREDENTIALS if field != "supabase_url"]
        found = {s for s in secrets if s and len(s) >= 6}
        for dsn in (self.database_dsn, self.redis_dsn, *self._url_values().values()):
            found |= url_credentials(dsn)
        return sorted(found, key=len, reverse=True)

    def _url_values(self) -> dict[str, str]:
        """Return every setting whose value is a URL, by field name (secret ones revealed)."""
        urls: dict[str, str] = {}
        for field in type(self).model_fields:
            text = _plain(getattr(self, field, None))
            if isinstance(getattr(self, field, None), str | SecretStr) and text and looks_like_url(text):
                urls[field] = text
        return urls

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Show URL-valued settings with their credentials masked (secret ones are masked whole)."""
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if isinstance(value, str) and looks_like_url(value) else value

    @model_serializer(mode="wrap")
    def _mask_urls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump URL-valued settings with their credentials masked, in model_dump() and model_dump_json()."""
        data: dict[str, Any] = handler(self)
        return {
            key: mask_url(value) if isinstance(value, str) and looks_like_url(value) else value
            for key, value in data.items()
        }


_INT64_MAX = 2**63 - 1
# The largest value that makes sense for a field named with this unit: one year of seconds, ten of days.
_UNIT_LIMITS = (("_seconds", 366 * 24 * 3600), ("_days", 3660))

# Lower and upper bounds that must be ordered: (lower field, upper field, factor applied to the lower).
_ORDERED: tuple[tuple[str, str, int], ...] = (
    ("db_pool_min_size", "db_pool_max_size", 1),
    ("audio_min_duration_seconds", "audio_max_duration_seconds", 1),
    ("prompt_min_length", "prompt_max_length", 1),
    ("audio_max_size_mb", "storage_max_upload_bytes", 1024 * 1024),  # a valid audio file must be storable
)
_SECURE_SSLMODES = frozenset({"require", "verify-ca", "verify-full"})
_UNVERIFIED_CERT_REQS = frozenset({"none", "optional", "cert_none", "cert_optional"})
# Query parameters of REDIS_URL that redis-py lets override the bounded settings.
_REDIS_OVERRIDES = {
    "socket_timeout": "REDIS_OPERATION_TIMEOUT_SECONDS",
    "socket_connect_timeout": "REDIS_OPERATION_TIMEOUT_SECONDS",
    "timeout": "REDIS_OPERATION_TIMEOUT_SECONDS",
    "max_connections": "REDIS_MAX_CONNECTIONS",
}


def _format_problem(field: str, value: str) -> str | None:
    """Return what is wrong with one credential's format in any environment, or None."""
    if _CONTROL.search(value) or (field not in {"database_url", "redis_url"} and " " in value):
        return "contains whitespace or a control character (a trailing newline? a NUL?); remove it"
    if field in {"supabase_url", "database_url", "redis_url"} and len(value) > MAX_URL_LENGTH:
        return f"is {len(value):,} characters long; a URL here is at most {MAX_URL_LENGTH:,}"
    if field == "supabase_url":
        try:
            parts = urlsplit(value)
            host = parts.hostname
        except ValueError:
            host = None
        if parts.scheme not in {"http", "https"} or not host:
            return "expected an http(s) URL with a host, such as https://<project-ref>.supabase.co"
        if url_credentials(value):
            return (
                "must not carry a user, password or key (before '@' or in the query): Supabase authenticates "
                "with SUPABASE_SERVICE_KEY, and a URL is logged and shown; remove it"
            )
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
        try:
            urlsplit(value).port  # noqa: B018 - parsing the port validates it
        except ValueError:
            return "the port is not a number between 0 and 65535"
        for parameter, setting in _REDIS_OVERRIDES.items():
            if query_values(value, parameter):
                return f"its query sets {parameter}, which would override {setting}; remove it and set {setting}"
        return None
    if field in _LEGACY_ROLES:
        prefix = "sb_secret_" if field == "supabase_service_key" else "sb_publishable_"
        if not _is_supabase_key(value, prefix):
            return f"expected a JWT (three base64url parts) or an {prefix}... key (20 or more base64url characters)"
        expected = _LEGACY_ROLES[field]
        if not value.startswith(prefix) and (role := _jwt_role(value)) != expected:
            said = f"role {role!r}" if role in {"anon", "service_role", "authenticated"} else "no known role"
            return f"this legacy key (a JWT) has {said}, not {expected!r}: the other key was put here? swap them"
    if field == "openai_api_key":
        return None if value.startswith("sk-") and len(value) > 3 else "expected an OpenAI key starting with sk-"
    if field == "replicate_api_token":
        return None if value.startswith("r8_") and len(value) > 3 else "expected a Replicate token starting with r8_"
    if field == "jwt_secret_key":
        return None if len(value) >= 32 else f"expected at least 32 characters (got {len(value)})"
    return None


def _deployed_problem(field: str, value: str, *, allow_private: bool) -> str | None:
    """Return why a well-formed credential is unsafe in staging or production, or None."""
    short = _short_secret(field, value)
    if short:
        return short
    if field == "database_url" and value == DEFAULT_DATABASE_URL:
        return "still the development default (the local PostgreSQL); set the deployed database's URL"
    if field == "redis_url" and value == DEFAULT_REDIS_URL:
        return "still the development default (the local Redis); set the deployed Redis URL (rediss://)"
    weakness, fix = _plaintext(field, value)
    if weakness is None:
        return None
    hosts = {host: host_kind(host) for host in url_hosts(value)}
    public = sorted(host for host, kind in hosts.items() if kind == "public")
    if public:
        only = "ALLOW_INSECURE_PRIVATE_NETWORK covers private hosts only"
        return f"{weakness}, to the public host {public[0]}; {fix} ({only})"
    if set(hosts.values()) != {"socket"} and not allow_private:
        # A Unix socket alone crosses no network; anything else on a private network needs the explicit setting.
        return f"{weakness}; {fix}, or set ALLOW_INSECURE_PRIVATE_NETWORK=true if its private network is trusted"
    return None


def _short_secret(field: str, value: str) -> str | None:
    """Return why a secret (a key, or a URL's password) is too short to be one, or None; never quote it."""
    if field in {"database_url", "redis_url", "supabase_url"}:
        for credential in url_credentials(value):
            if len(credential) < MIN_SECRET_LENGTH:
                return (
                    f"its password is {len(credential)} characters long; use one of at least {MIN_SECRET_LENGTH} "
                    "random characters (a short one is guessed, and too short for the log redactor to hide)"
                )
        return None
    if len(value) < MIN_SECRET_LENGTH:
        return f"is {len(value)} characters long, too short to be a secret (at least {MIN_SECRET_LENGTH}); set the key"
    return None


def _plaintext(field: str, value: str) -> tuple[str | None, str]:
    """Return how the URL's traffic would go unprotected (or None) and how to protect it."""
    if field == "supabase_url":
        plain = value.split("://", 1)[0].lower() == "http"
        return ("http:// sends the service key in plaintext" if plain else None), "use https://"
    if field == "database_url":
        fix = "add sslmode=require (or verify-full) to the URL"
        modes = query_values(value, "sslmode")
        if not modes:
            return "has no sslmode, so the driver falls back to plaintext when TLS fails", fix
        weak = [mode for mode in modes if mode.lower() not in _SECURE_SSLMODES]
        return (f"sslmode={weak[0]} allows plaintext" if weak else None), fix
    if field == "redis_url":
        fix = "use rediss:// with certificate checks"
        if value.split("://", 1)[0].lower() == "redis":
            return "redis:// sends the password and data in plaintext", fix
        if any(v.lower() in _UNVERIFIED_CERT_REQS for v in query_values(value, "ssl_cert_reqs")):
            return "ssl_cert_reqs turns off certificate checks", fix
        if any(v.lower() in {"false", "no", "0", "n", "f"} for v in query_values(value, "ssl_check_hostname")):
            return "ssl_check_hostname=false turns off host name checks", fix
    return None, ""


class ModuleSettings(BaseSettings):
    """The base of a pipeline module's own settings, read like :class:`Settings` (environment, then ``.env``).

    Subclass it with the module's fields and an ``env_prefix`` of its own, and add it to the module's container
    subclass as a Singleton; ``lifespan`` builds it at start, so a bad value stops the start with the rest::

        class TitleSettings(ModuleSettings):
            model_config = SettingsConfigDict(env_prefix="TITLE_")  # merged with the base's
            max_words: int = Field(default=8, ge=1)

        class StageContainer(Container):
            title_settings = providers.Singleton(TitleSettings)

    Any invalid value raises :class:`~shared.errors.ConfigError`, one line per problem, as Settings does.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
        frozen=True,
    )

    @pydantic.model_validator(mode="wrap")
    @classmethod
    def _as_config_error(cls, data: Any, handler: pydantic.ValidatorFunctionWrapHandler) -> Any:
        """Turn pydantic's error into a ConfigError that names each variable (with the prefix), never a value."""
        try:
            return handler(data)
        except pydantic.ValidationError as exc:
            prefix = str(cls.model_config.get("env_prefix", "")).upper()
            problems = tuple(
                f"{prefix}{str(error['loc'][0]).upper() if error['loc'] else 'SETTINGS'}: {error['msg']}"
                for error in exc.errors(include_input=False, include_url=False)
            )
            raise ConfigError(problems=problems) from None


# `from shared.config import settings` (an older task list's name) names its provider.
if not TYPE_CHECKING:  # to mypy a module __getattr__ would make every misspelt name importable
    __getattr__ = container_only("shared.config", {"settings": "settings"})
