"""Settings: typed, every problem reported at once, secrets never quoted, environments enforced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.config import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, PLACEHOLDER_VALUES, Environment, Settings
from shared.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
PRODUCTION: dict[str, Any] = {
    "environment": "production",
    "supabase_url": "https://abcdefgh.supabase.co",
    "supabase_service_key": "sb_secret_0123456789abcdef",
    "supabase_anon_key": JWT,
    "database_url": "postgresql://postgres.abcdefgh:s3cr3t-pw@aws-0.pooler.supabase.com:6543/postgres",
    "redis_url": "rediss://default:redis-pw@cache.example.com:6380/0",
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
        database_url="mysql://u:pw@h/db",
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
    assert ("SUPABASE_URL: must use https:// outside development",) == problems


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
        ("supabase_anon_key", "sb_publishable_abc123"),
        ("supabase_url", "http://127.0.0.1:54321"),
    ],
)
def test_wellformed_credentials_are_accepted_in_development(field: str, value: str) -> None:
    make(**{field: value})


def test_pool_bounds_must_be_ordered() -> None:
    assert ("DB_POOL_MIN_SIZE: must not be larger than DB_POOL_MAX_SIZE",) == problems_of(
        db_pool_min_size=5, db_pool_max_size=2
    )


def test_statement_cache_follows_the_setting_or_the_port() -> None:
    assert 100 == make().statement_cache_size
    assert 0 == make(database_url="postgresql://u@h:6543/db").statement_cache_size
    assert 7 == make(database_url="postgresql://u@h:6543/db", db_statement_cache_size=7).statement_cache_size


def test_secret_values_include_url_passwords_and_keys() -> None:
    secrets = make(**PRODUCTION).secret_values()
    assert {"s3cr3t-pw", "redis-pw", PRODUCTION["openai_api_key"], PRODUCTION["jwt_secret_key"]} <= set(secrets)
    assert PRODUCTION["supabase_url"] not in secrets


def test_reservation_ttl_is_a_timedelta() -> None:
    assert 900 == make().reservation_ttl.total_seconds()


@given(st.text(max_size=200))
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
