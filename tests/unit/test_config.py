"""Settings: typed, every problem reported at once, secrets never quoted, environments enforced."""

from __future__ import annotations

import ctypes
import io
import math
import socket
import string
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, unquote

import pytest
from hypothesis import given
from hypothesis import settings as settings_profile
from hypothesis import strategies as st
from pydantic import Field

from shared._connection_urls import MASK, host_kind, mask_url, url_credentials, url_hosts
from shared.config import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, PLACEHOLDER_VALUES, Environment, Settings
from shared.errors import ConfigError
from shared.logging import LoggerFactory

ROOT = Path(__file__).resolve().parents[2]
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"  # role service_role
ANON_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"  # role anon
PRODUCTION: dict[str, Any] = {
    "environment": "production",
    "supabase_url": "https://abcdefgh.supabase.co",
    "supabase_service_key": "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz",
    "supabase_anon_key": ANON_JWT,
    "database_url": (
        "postgresql://postgres.abcdefgh:s3cr3t-pw-0123456789@aws-0.pooler.supabase.com:6543/postgres?sslmode=require"
    ),
    "redis_url": "rediss://default:redis-pw-0123456789@cache.example.com:6380/0",
    "openai_api_key": "sk-proj-0123456789abcdef",
    "replicate_api_token": "r8_0123456789abcdef",
    "jwt_secret_key": "x" * 40,
    "storage_backend": "supabase",
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the machine's variables out of these tests."""
    for name in [*Settings.model_fields]:
        monkeypatch.delenv(name.upper(), raising=False)


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def problems_of(**values: Any) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        make(**values)
    return caught.value.problems


def test_development_needs_nothing_and_points_at_local_services() -> None:
    settings = make()
    assert settings.environment == Environment.DEVELOPMENT
    assert settings.database_dsn == DEFAULT_DATABASE_URL
    assert settings.redis_dsn == DEFAULT_REDIS_URL
    assert "local" == settings.storage_backend


def test_production_with_every_credential_loads() -> None:
    settings = make(**PRODUCTION)
    assert settings.environment == Environment.PRODUCTION
    assert 0 == settings.statement_cache_size  # port 6543 is Supabase's transaction pooler


def test_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("DB_POOL_MAX_SIZE", "25")
    monkeypatch.setenv("DEFAULT_JOB_BUDGET", "12.5")
    settings = make()
    assert "DEBUG" == settings.log_level
    assert 25 == settings.db_pool_max_size
    assert "12.5" == str(settings.default_job_budget)


def test_settings_are_read_from_a_dotenv_file(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("REDIS_KEY_PREFIX=other:\nSTORAGE_BACKEND=LOCAL\n")
    settings = Settings(_env_file=env)
    assert "other:" == settings.redis_key_prefix
    assert "local" == settings.storage_backend


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        environment="production",
        log_level="LOUD",
        db_pool_min_size="many",
        database_url="mysql://u:pw-0123456789abcdef@h/db",
        openai_api_key="sk-replace-me",
        supabase_url="http://abc.supabase.co",
        jwt_secret_key="short",
    )
    variables = [line.split(":", 1)[0] for line in problems]
    assert {
        "LOG_LEVEL",
        "DB_POOL_MIN_SIZE",
        "DATABASE_URL",
        "OPENAI_API_KEY",
        "SUPABASE_URL",
        "JWT_SECRET_KEY",
        "SUPABASE_SERVICE_KEY",
        "SUPABASE_ANON_KEY",
        "REDIS_URL",
        "REPLICATE_API_TOKEN",
    } == set(variables)
    assert len(variables) == len(set(variables))


def test_no_secret_value_appears_in_the_error() -> None:
    bad = dict(PRODUCTION, openai_api_key="not-a-key-but-secret", replicate_api_token="tok-secret-value")
    bad["database_url"] = "mysql://user:hunter2-password@host/db"
    with pytest.raises(ConfigError) as caught:
        make(**bad)
    text = str(caught.value) + repr(caught.value)
    for secret in ("not-a-key-but-secret", "tok-secret-value", "hunter2-password"):
        assert secret not in text


def test_secrets_do_not_appear_in_the_settings_repr() -> None:
    settings = make(**PRODUCTION)
    text = repr(settings) + str(settings.model_dump())
    for field in ("supabase_service_key", "openai_api_key", "jwt_secret_key", "database_url", "redis_url"):
        value = PRODUCTION[field]
        assert value not in text


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_deployed_environments_require_every_credential(environment: str) -> None:
    problems = problems_of(environment=environment)
    assert 8 == sum("required by the" in line for line in problems)


def test_deployed_environments_refuse_plain_http_supabase() -> None:
    problems = problems_of(**dict(PRODUCTION, supabase_url="http://abc.supabase.co"))
    assert 1 == len(problems)
    assert problems[0].startswith("SUPABASE_URL: http:// sends the service key in plaintext")
    assert "use https://" in problems[0]


def test_deployed_environments_refuse_every_placeholder_of_env_example() -> None:
    example = _env_example()
    placeholders = {k.lower(): v for k, v in example.items() if v in PLACEHOLDER_VALUES}
    problems = problems_of(**dict(PRODUCTION, **placeholders))
    assert len(placeholders) == len(problems)
    assert all("placeholder" in line for line in problems)


def test_env_example_placeholders_are_all_known() -> None:
    """A credential placeholder added to .env.example must be refused in production too."""
    example = _env_example()
    credentials = [
        "SUPABASE_URL",
        "SUPABASE_SERVICE_KEY",
        "SUPABASE_ANON_KEY",
        "OPENAI_API_KEY",
        "REPLICATE_API_TOKEN",
        "JWT_SECRET_KEY",
    ]
    assert {example[name] for name in credentials} <= PLACEHOLDER_VALUES


def test_env_example_documents_every_setting_with_a_working_local_value() -> None:
    example = _env_example()
    assert {name.upper() for name in Settings.model_fields} == set(example)
    settings = Settings(_env_file=ROOT / ".env.example")
    assert "development" == settings.environment


def test_development_with_supabase_storage_needs_its_credentials() -> None:
    problems = problems_of(storage_backend="supabase")
    assert [
        "SUPABASE_URL: required by STORAGE_BACKEND=supabase; set it (see .env.example)",
        "SUPABASE_SERVICE_KEY: required by STORAGE_BACKEND=supabase; set it (see .env.example)",
    ] == list(problems)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("supabase_url", "ftp://x.supabase.co", "expected an http(s) URL"),
        ("supabase_url", "https://", "expected an http(s) URL"),
        ("database_url", "postgresql://h:notaport/db", "port is not a number"),
        ("redis_url", "http://localhost:6379", "redis:// or rediss://"),
        ("supabase_service_key", "service-key", "sb_secret_"),
        ("supabase_anon_key", "sb_secret_0123456789", "sb_publishable_"),
        ("openai_api_key", "pk-123", "starting with sk-"),
        ("replicate_api_token", "r9_123", "starting with r8_"),
        ("jwt_secret_key", "x" * 31, "at least 32 characters (got 31)"),
    ],
)
def test_malformed_credentials_are_refused(field: str, value: str, expected: str) -> None:
    problems = problems_of(**{field: value})
    assert 1 == len(problems)
    assert problems[0].startswith(field.upper() + ":")
    assert expected in problems[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("database_url", "postgres://u@h:5432/db"),
        ("redis_url", "rediss://h:6380/0"),
        ("supabase_service_key", JWT),
        ("supabase_anon_key", "sb_publishable_ACJWlzQHlZjBrEguHvfOxg_3BJgxAaH"),
        ("supabase_anon_key", ANON_JWT),
        ("supabase_url", "http://127.0.0.1:54321"),
    ],
)
def test_wellformed_credentials_are_accepted_in_development(field: str, value: str) -> None:
    make(**{field: value})


@pytest.mark.parametrize(
    ("low", "high", "values"),
    [
        ("db_pool_min_size", "db_pool_max_size", {"db_pool_min_size": 5, "db_pool_max_size": 2}),
        (
            "audio_min_duration_seconds",
            "audio_max_duration_seconds",
            {"audio_min_duration_seconds": 60.5, "audio_max_duration_seconds": 60},
        ),
        ("prompt_min_length", "prompt_max_length", {"prompt_min_length": 500, "prompt_max_length": 20}),
        (
            "audio_max_size_mb",
            "storage_max_upload_bytes",
            {"audio_max_size_mb": 10, "storage_max_upload_bytes": 10 * 1024 * 1024 - 1},
        ),
    ],
)
def test_a_lower_bound_above_its_upper_bound_is_refused(low: str, high: str, values: dict[str, Any]) -> None:
    assert (f"{low.upper()}: must not be larger than {high.upper()}",) == problems_of(**values)
    make(**dict(values, **{low: values[high] if low != "audio_max_size_mb" else 9}))  # equal (or below) is fine


def test_statement_cache_follows_the_setting_or_the_port() -> None:
    assert 100 == make().statement_cache_size
    assert 0 == make(database_url="postgresql://u@h:6543/db").statement_cache_size
    assert 7 == make(database_url="postgresql://u@h:6543/db", db_statement_cache_size=7).statement_cache_size


def test_secret_values_include_url_passwords_and_keys() -> None:
    secrets = make(**PRODUCTION).secret_values()
    assert {
        "s3cr3t-pw-0123456789",
        "redis-pw-0123456789",
        PRODUCTION["openai_api_key"],
        PRODUCTION["jwt_secret_key"],
    } <= set(secrets)
    assert PRODUCTION["supabase_url"] not in secrets


def test_reservation_ttl_is_a_timedelta() -> None:
    assert 900 == make().reservation_ttl.total_seconds()


def test_stage_heartbeat_interval_is_the_timedelta_stage_heartbeat_takes() -> None:
    assert timedelta(seconds=30) == make().stage_heartbeat_interval
    assert timedelta(seconds=2.5) == make(stage_heartbeat_interval_seconds=2.5).stage_heartbeat_interval


@given(st.text(max_size=200))
@settings_profile(deadline=None)  # builds a whole Settings per example: its time depends on the machine's load
def test_any_database_url_is_accepted_or_refused_with_a_config_error(value: str) -> None:
    problems: tuple[str, ...] = ()
    try:
        make(database_url=value)
    except ConfigError as error:
        problems = error.problems
    assert all(line.startswith("DATABASE_URL: ") for line in problems)


def _env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


# --- production refuses what is only safe on a developer's machine ---

_NUMBER_TYPES = {int, float, Decimal, int | None, float | None, Decimal | None}


class WithUnboundedNumbers(Settings):
    """Settings as another module extends them, with numbers whose fields declare no upper bound."""

    retry_window_seconds: float = Field(default=30.0, gt=0)
    retention_days: float = 30.0
    max_value_bytes: int = Field(default=4 * 1024 * 1024, gt=0)


def numeric_fields(model: type[Settings]) -> list[str]:
    return sorted(name for name, field in model.model_fields.items() if field.annotation in _NUMBER_TYPES)


NUMERIC_FIELDS = numeric_fields(Settings)
TIMEOUT_FIELDS = [name for name in NUMERIC_FIELDS if name.endswith("_seconds")]


def test_production_refuses_the_development_defaults() -> None:
    problems = problems_of(**dict(PRODUCTION, database_url=DEFAULT_DATABASE_URL, redis_url=DEFAULT_REDIS_URL))
    assert ["DATABASE_URL", "REDIS_URL"] == [line.split(":", 1)[0] for line in problems]
    assert all("still the development default" in line for line in problems)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (
            "database_url",
            "postgresql://u:pw-0123456789abcdef@db.example.com:5432/app?sslmode=disable",
            "sslmode=disable allows plaintext",
        ),
        (
            "database_url",
            "postgresql://u:pw-0123456789abcdef@db.example.com:5432/app?sslmode=prefer",
            "sslmode=prefer allows plaintext",
        ),
        (
            "database_url",
            "postgresql://u:pw-0123456789abcdef@db.example.com:5432/app?sslmode=allow",
            "sslmode=allow allows plaintext",
        ),
        ("database_url", "postgresql://u:pw-0123456789abcdef@db.example.com:5432/app", "has no sslmode"),
        (
            "database_url",
            "postgresql://u:pw-0123456789abcdef@db.example.com/app?sslmode=require&sslmode=disable",
            "sslmode=disable",
        ),
        (
            "database_url",
            "postgresql://u:pw-0123456789abcdef@10.0.0.5/app?host=db.example.com&sslmode=disable",
            "db.example.com",
        ),
        ("redis_url", "redis://default:pw-0123456789abcdef@cache.example.com:6379/0", "redis:// sends the password"),
        (
            "redis_url",
            "rediss://default:pw-0123456789abcdef@cache.example.com:6380/0?ssl_cert_reqs=none",
            "certificate checks",
        ),
        (
            "redis_url",
            "rediss://default:pw-0123456789abcdef@cache.example.com:6380/0?ssl_check_hostname=false",
            "host name checks",
        ),
        ("supabase_url", "http://abcdefgh.supabase.co", "http:// sends the service key"),
    ],
)
def test_production_refuses_plaintext_to_a_public_host_even_with_the_private_setting(
    field: str, value: str, expected: str
) -> None:
    for allow in (False, True):
        problems = problems_of(**dict(PRODUCTION, allow_insecure_private_network=allow, **{field: value}))
        assert 1 == len(problems), problems
        assert problems[0].startswith(field.upper() + ": ")
        assert expected in problems[0]
        assert "public host" in problems[0]
        assert "pw@" not in problems[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("database_url", "postgresql://u:pw-0123456789abcdef@10.0.0.5:5432/app?sslmode=disable"),
        ("database_url", "postgresql://u:pw-0123456789abcdef@postgres:5432/app"),
        ("database_url", "postgresql://u:pw-0123456789abcdef@127.0.0.1:6432/app"),
        ("database_url", "postgresql://u:pw-0123456789abcdef@[fd00::5]:5432/app?sslmode=prefer"),
        ("redis_url", "redis://default:pw-0123456789abcdef@redis:6379/0"),
        ("redis_url", "redis://default:pw-0123456789abcdef@cache.prod.internal:6379/0"),
        ("redis_url", "redis://default:pw-0123456789abcdef@192.168.1.20:6379/0"),
        ("supabase_url", "http://kong.svc:8000"),
    ],
)
def test_plaintext_to_a_private_host_needs_the_one_explicit_setting(field: str, value: str) -> None:
    problems = problems_of(**dict(PRODUCTION, **{field: value}))
    assert 1 == len(problems)
    assert "ALLOW_INSECURE_PRIVATE_NETWORK=true" in problems[0]
    settings = make(**dict(PRODUCTION, allow_insecure_private_network=True, **{field: value}))
    assert settings.allow_insecure_private_network


def test_a_unix_socket_database_crosses_no_network_and_needs_no_tls() -> None:
    make(**dict(PRODUCTION, database_url="postgresql://app:pw-0123456789abcdef@/app?host=/var/run/postgresql"))
    make(**dict(PRODUCTION, database_url="postgresql://app:pw-0123456789abcdef@%2Fvar%2Frun%2Fpostgresql/app"))


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
def test_production_accepts_tls_database_urls(mode: str) -> None:
    make(**dict(PRODUCTION, database_url=f"postgresql://u:pw-0123456789abcdef@db.example.com:5432/app?sslmode={mode}"))


def test_development_keeps_its_plaintext_local_services() -> None:
    settings = make(
        database_url="postgresql://u:pw-0123456789abcdef@10.0.0.5/app?sslmode=disable", redis_url="redis://redis:6379/0"
    )
    assert not settings.allow_insecure_private_network


@pytest.mark.parametrize("parameter", ["socket_timeout", "socket_connect_timeout", "timeout", "max_connections"])
def test_redis_url_may_not_override_the_bounded_settings(parameter: str) -> None:
    problems = problems_of(redis_url=f"redis://127.0.0.1:6379/0?{parameter}=1e300")
    assert 1 == len(problems)
    assert problems[0].startswith(f"REDIS_URL: its query sets {parameter}")


# --- numbers: finite, bounded, never an overflow ---


@pytest.mark.parametrize("field", TIMEOUT_FIELDS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity", "1e300", "1e15"])
def test_infinite_nan_and_huge_durations_are_refused(field: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(field.upper(), value)
    with pytest.raises(ConfigError) as caught:
        make()
    assert [field.upper()] == [line.split(":", 1)[0] for line in caught.value.problems]


@pytest.mark.parametrize("value", [1e15, 10**15, "1000000000000000"])
def test_a_huge_reservation_ttl_is_a_config_error_not_an_overflow(value: object) -> None:
    problems = problems_of(reservation_ttl_seconds=value)
    assert 1 == len(problems)
    assert problems[0].startswith("RESERVATION_TTL_SECONDS: ")


def _exercise(settings: Settings) -> None:
    """Use every number the way its consumers do (timedelta, socket timeouts, C integers, byte sizes)."""
    assert settings.reservation_ttl.total_seconds() == settings.reservation_ttl_seconds
    fields = numeric_fields(type(settings))
    with socket.socket() as probe:
        for name in fields:
            value = getattr(settings, name)
            if value is None:
                continue
            assert math.isfinite(value)
            if isinstance(value, int):
                value.to_bytes(8, "little", signed=True)  # fits the C integers asyncpg, redis-py and os use
            if name.endswith("_days"):
                timedelta(days=value)
            if name.endswith("_seconds"):
                timedelta(seconds=value)
                if value > 0:
                    probe.settimeout(value)
                    probe.settimeout(value * 0.4)  # the Redis client sizes its socket timeouts so
    (settings.audio_max_size_mb * 1024 * 1024).to_bytes(8, "little", signed=True)
    settings.default_job_budget.quantize(Decimal("0.0001"))
    if settings.storage_tus_chunk_mb is not None:
        ctypes.c_ssize_t(settings.storage_tus_chunk_mb * 1024 * 1024)


numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e15", "inf", "nan", "-0", "1e309", "9" * 40, "0x10", "1_000", " 7 ", ""]),
    st.from_regex(r"-?[0-9]{1,25}(\.[0-9]{0,6})?([eE][+-]?[0-9]{1,3})?", fullmatch=True),
)


@pytest.mark.parametrize("model", [Settings, WithUnboundedNumbers])
@settings_profile(max_examples=300, deadline=None)
@given(data=st.data(), value=numbers)
def test_every_numeric_setting_is_refused_or_usable(model: type[Settings], data: st.DataObject, value: object) -> None:
    """Also for fields another module adds without an upper bound: the settings' own net catches those."""
    field = data.draw(st.sampled_from(numeric_fields(model)))
    try:
        settings = model(_env_file=None, **{field: cast(Any, value)})
    except ConfigError as error:
        problems = error.problems
    else:
        _exercise(settings)
        return
    assert all(line.split(":", 1)[0] == field.upper() or "must not be larger" in line for line in problems)


@settings_profile(deadline=None)
@given(st.dictionaries(st.sampled_from(NUMERIC_FIELDS), numbers, max_size=6))
def test_any_mix_of_numbers_gives_a_config_error_or_usable_ordered_settings(values: dict[str, object]) -> None:
    try:
        settings = make(**values)
    except ConfigError:
        return
    _exercise(settings)
    assert settings.db_pool_min_size <= settings.db_pool_max_size
    assert settings.audio_min_duration_seconds <= settings.audio_max_duration_seconds
    assert settings.prompt_min_length <= settings.prompt_max_length


def test_production_lists_every_unsafe_choice_at_once() -> None:
    problems = problems_of(
        **dict(
            PRODUCTION,
            database_url=DEFAULT_DATABASE_URL,
            redis_url="redis://default:Redis-Pw-q1@cache.example.com:6379/0",
            supabase_url="https://user:Sb-Pass-x9@abcdefgh.supabase.co",
            db_command_timeout_seconds=float("inf"),
            storage_timeout_seconds=float("nan"),
            reservation_ttl_seconds=10**15,
            db_pool_min_size=20,
            db_pool_max_size=5,
            prompt_min_length=50,
            prompt_max_length=10,
        )
    )
    assert {
        "DATABASE_URL",
        "REDIS_URL",
        "SUPABASE_URL",
        "DB_COMMAND_TIMEOUT_SECONDS",
        "STORAGE_TIMEOUT_SECONDS",
        "RESERVATION_TTL_SECONDS",
        "DB_POOL_MIN_SIZE",
        "PROMPT_MIN_LENGTH",
    } == {line.split(":", 1)[0] for line in problems}
    assert not any("Sb-Pass-x9" in line or "Redis-Pw-q1" in line for line in problems)


def test_crossed_bounds_from_the_environment_are_listed_beside_type_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "LOUD")
    monkeypatch.setenv("DB_POOL_MIN_SIZE", "30")
    monkeypatch.setenv("DB_POOL_MAX_SIZE", "3")
    monkeypatch.setenv("REDIS_URL", "redis://cache.example.com:6379/0")
    monkeypatch.setenv("ENVIRONMENT", "production")
    problems = problems_of()
    variables = [line.split(":", 1)[0] for line in problems]
    assert {"LOG_LEVEL", "DB_POOL_MIN_SIZE", "REDIS_URL"} <= set(variables)
    assert len(variables) == len(set(variables))


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("retry_window_seconds", float("inf"), "must be a finite number"),
        ("retry_window_seconds", 1e300, "must be at most 31622400"),
        ("retention_days", float("nan"), "must be a finite number"),
        ("retention_days", 1e9, "must be at most 3660"),
        ("max_value_bytes", 10**30, "must be at most 9223372036854775807"),
    ],
)
def test_a_number_added_without_bounds_still_cannot_overflow(field: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        WithUnboundedNumbers(_env_file=None, **{field: cast(Any, value)})
    assert (f"{field.upper()}: {expected}",) == caught.value.problems


# --- credentials inside URLs appear nowhere ---

URL_SECRETS = {
    "database_url": (
        "postgresql://app:Db-P%40ss-9f3k-0123456@db.example.com/app?sslmode=require",
        "Db-P%40ss-9f3k-0123456",
        "Db-P@ss-9f3k-0123456",
    ),
    "redis_url": (
        "rediss://default:Redis-Pw-7q2z-0123456@cache.example.com:6380/0",
        "Redis-Pw-7q2z-0123456",
        "Redis-Pw-7q2z-0123456",
    ),
}


class WithWebhook(Settings):
    """Settings as a helper extends them: a plain str URL field the masking must cover without being told."""

    webhook_url: str | None = None


def _every_rendering(settings: Settings) -> str:
    return "\n".join(
        [repr(settings), str(settings), str(settings.model_dump()), settings.model_dump_json(), f"{settings!r}"]
    )


def test_url_credentials_never_appear_in_repr_str_or_dumps() -> None:
    settings = make(**dict(PRODUCTION, **{field: url for field, (url, _, _) in URL_SECRETS.items()}))
    text = _every_rendering(settings)
    for _, raw, decoded in URL_SECRETS.values():
        assert raw not in text
        assert decoded not in text
    assert {raw for _, raw, _ in URL_SECRETS.values()} | {d for _, _, d in URL_SECRETS.values()} <= set(
        settings.secret_values()
    )


def test_a_url_field_added_later_is_masked_too() -> None:
    settings = WithWebhook(
        _env_file=None, webhook_url="https://hook-user:Hook-Secret-1@hooks.example.com/x?token=Tok-77x"
    )
    text = _every_rendering(settings)
    for secret in ("Hook-Secret-1", "Tok-77x"):
        assert secret not in text
        assert secret in settings.secret_values()
    assert "hooks.example.com" in text  # the rest of the URL stays readable
    unchecked = Settings.model_construct(supabase_url="https://user:Sb-Built-Pw-4@abcdefgh.supabase.co")
    assert "Sb-Built-Pw-4" not in _every_rendering(unchecked)  # even one built without validation
    assert "Sb-Built-Pw-4" in unchecked.secret_values()


@pytest.mark.parametrize(
    "url",
    [
        "https://user:Sb-Url-Pass-1@abcdefgh.supabase.co",
        "https://Sb-Url-Token-2@abcdefgh.supabase.co",
        "https://abcdefgh.supabase.co/?apikey=Sb-Url-Key-3",
    ],
)
def test_a_credential_in_supabase_url_is_refused_without_quoting_it(url: str) -> None:
    for environment in ("development", "production"):
        with pytest.raises(ConfigError) as caught:
            make(**dict(PRODUCTION, environment=environment, supabase_url=url))
        assert ["SUPABASE_URL"] == [line.split(":", 1)[0] for line in caught.value.problems]
        assert "Sb-Url-" not in str(caught.value) + repr(caught.value)


def test_url_credentials_are_redacted_from_the_logs() -> None:
    url, raw, decoded = URL_SECRETS["database_url"]
    query_url = "postgresql://app@db.example.com/app?sslmode=require&password=Query-Pw-31x"
    settings = make(database_url=url, redis_url="rediss://h:6380/0?password=Redis-Q-Pw-5")
    stream = io.StringIO()
    factory = LoggerFactory(secrets=settings.secret_values(), stream=stream, root="vgtest.config").start()
    log = factory.get_logger("vgtest.config.urls")
    log.warning("driver said: password %s (decoded %s) failed; redis %s", raw, decoded, "Redis-Q-Pw-5")
    log.warning("connecting to %s", query_url.replace("Query-Pw-31x", decoded))
    factory.stop()
    output = stream.getvalue()
    assert 2 == len(output.splitlines())
    for secret in (raw, decoded, "Redis-Q-Pw-5"):
        assert secret not in output


@settings_profile(deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/?#[]% ", min_size=6, max_size=40))
def test_any_database_password_is_masked_and_redacted(password: str) -> None:
    marked = "Zq9-0123456789ab" + password  # 16 characters at least: staging and production refuse less
    url = f"postgresql://app:{quote(marked, safe='')}@db.example.com/app?sslmode=require"
    settings = make(**dict(PRODUCTION, database_url=url))
    text = _every_rendering(settings)
    assert marked not in text
    assert quote(marked, safe="") not in text
    assert marked in settings.secret_values()


# --- the URL reader behind these checks ---


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("", "socket"),
        ("%2Fvar%2Frun%2Fpostgresql", "socket"),
        ("localhost", "private"),
        ("db.localhost", "private"),
        ("127.0.0.1", "private"),
        ("[::1]", "private"),
        ("10.1.2.3", "private"),
        ("172.16.0.9", "private"),
        ("192.168.0.1", "private"),
        ("100.64.3.4", "private"),
        ("169.254.1.1", "private"),
        ("fd12::1", "private"),
        ("fe80::1%eth0", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("redis", "private"),
        ("db.prod.internal", "private"),
        ("pg.default.svc", "private"),
        ("nas.home.arpa", "private"),
        ("abcdefgh.supabase.co", "public"),
        ("8.8.8.8", "public"),
        ("2001:4860::8888", "public"),
        ("::ffff:8.8.8.8", "public"),
    ],
)
def test_hosts_are_classified_by_where_their_traffic_goes(host: str, kind: str) -> None:
    assert kind == host_kind(host)


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        ("postgresql://u:p@h1:5432,h2:5433/db", ["h1", "h2"]),
        ("postgresql://u:p@[fd00::1]:5432/db", ["fd00::1"]),
        ("postgresql://u@ignored/db?host=a.example.com,b.internal", ["a.example.com", "b.internal"]),
        ("postgresql:///db", [""]),
        ("postgresql://u@[fd00::1/db", []),
    ],
)
def test_url_hosts_read_like_libpq(url: str, hosts: list[str]) -> None:
    assert hosts == url_hosts(url)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:pw-0123456789abcdef@h/db?sslmode=require", f"postgresql://u:{MASK}@h/db?sslmode=require"),
        ("https://token@x.supabase.co/", f"https://{MASK}@x.supabase.co/"),
        ("redis://default@h:6379/0", "redis://default@h:6379/0"),
        (
            "postgresql://u@h/db?Password=x&sslmode=require#frag",
            f"postgresql://u@h/db?Password={MASK}&sslmode=require#frag",
        ),
        ("https://h/cb#access_token=abc&x=1", f"https://h/cb#access_token={MASK}&x=1"),
        ("postgresql:///db?host=/run/pg", "postgresql:///db?host=/run/pg"),
        ("http://[::1", MASK),
    ],
)
def test_mask_url_hides_only_the_credentials(url: str, masked: str) -> None:
    assert masked == mask_url(url)


url_text = st.text(alphabet=string.ascii_letters + string.digits + "-._~%!$&'()*+,;=", min_size=1, max_size=20)
query_text = st.text(alphabet=string.ascii_letters + string.digits + "-._~%!$'()*+,;", min_size=1, max_size=20)


@given(
    st.sampled_from(["postgresql", "redis", "rediss", "https", "http"]),
    url_text,
    url_text,
    query_text,
    st.sampled_from(["db.example.com", "10.0.0.1", "[fd00::1]", "redis", ""]),
    st.sampled_from(["password", "PASSWORD", "sslpassword", "apikey", "token", "pass%77ord"]),
)
def test_mask_url_never_shows_a_credential_it_finds(
    scheme: str, user: str, secret: str, in_query: str, host: str, parameter: str
) -> None:
    password, query_secret = f"Pw{secret}Zz", f"Qs{in_query}Yy"
    url = f"{scheme}://{user}:{password}@{host}/x?{parameter}={query_secret}&sslmode=require"
    found = url_credentials(url)
    assert {password, query_secret} <= found
    masked = mask_url(url)
    for credential in found:
        assert credential not in masked
    assert url_credentials(f"{scheme}://{user}@{host}/x") == (
        {user} | {unquote(user)} if scheme.startswith("http") else set()
    )


@given(st.text(max_size=200))
def test_mask_url_and_url_credentials_accept_any_text(text: str) -> None:
    masked = mask_url(text)
    assert all(credential not in masked for credential in url_credentials(text) if len(credential) > 12)
