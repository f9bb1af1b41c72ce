"""Settings under hostile values: short secrets in production, loose key formats, legacy keys of the wrong role,
URLs with a newline or a megabyte, and `.env` files in each broken form (each a ConfigError naming the line)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.config import MAX_URL_LENGTH, MIN_SECRET_LENGTH, Settings, check_env_file
from shared.errors import ConfigError
from tests.unit.test_config import ANON_JWT, JWT, PRODUCTION

NEW_SECRET = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*Settings.model_fields]:
        monkeypatch.delenv(name.upper(), raising=False)


def problems_of(**values: Any) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        Settings(_env_file=None, **values)
    return caught.value.problems


def legacy_key(role: str) -> str:
    payload = base64.urlsafe_b64encode(json.dumps({"role": role, "iss": "supabase"}).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{payload}.c2lnbmF0dXJl"


@pytest.mark.parametrize("environment", ["staging", "production"])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("redis_url", "rediss://default:abc@cache.example.com:6380/0"),
        ("database_url", "postgresql://app:short-pw@db.example.com/app?sslmode=require"),
        ("openai_api_key", "sk-abc"),
        ("replicate_api_token", "r8_abc"),
    ],
)
def test_deployed_environments_refuse_secrets_too_short_to_be_secrets(environment: str, field: str, value: str) -> None:
    secret = value.rsplit(":", 1)[-1].split("@", maxsplit=1)[0] if "://" in value else value
    [problem] = problems_of(**dict(PRODUCTION, environment=environment, **{field: value}))
    assert problem.startswith(field.upper() + ":")
    assert f"at least {MIN_SECRET_LENGTH}" in problem
    assert secret not in problem


def test_development_keeps_accepting_a_short_local_password() -> None:
    Settings(_env_file=None, redis_url="redis://default:abc@127.0.0.1:6379/0")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("supabase_service_key", "sb_secret_x"),
        ("supabase_service_key", "sb_secret_N7UND0UgjKTVK Uodkm0Hg_xSvEMPvz"),
        ("supabase_service_key", NEW_SECRET + "\n"),
        ("supabase_service_key", NEW_SECRET + " "),
        ("supabase_anon_key", "sb_publishable_ACJWlzQHlZjBrEguHvfOxg\x00"),
        ("supabase_service_key", JWT + "\n"),
        ("openai_api_key", "sk-proj-0123456789abcdef\n"),
    ],
    ids=["too-short", "space", "newline", "trailing-space", "nul", "jwt-newline", "openai-newline"],
)
def test_loose_key_formats_are_refused_in_any_environment(field: str, value: str) -> None:
    [problem] = problems_of(**{field: value})
    assert problem.startswith(field.upper() + ":")


@pytest.mark.parametrize(
    ("field", "role"),
    [("supabase_anon_key", "service_role"), ("supabase_service_key", "anon"), ("supabase_anon_key", "authenticated")],
)
def test_a_legacy_key_of_the_wrong_role_is_refused(field: str, role: str) -> None:
    [problem] = problems_of(**{field: legacy_key(role)})
    assert f"role '{role}'" in problem
    assert "swap" in problem


def test_legacy_keys_of_the_right_role_are_accepted() -> None:
    Settings(_env_file=None, supabase_anon_key=ANON_JWT, supabase_service_key=JWT)
    Settings(_env_file=None, supabase_anon_key=legacy_key("anon"), supabase_service_key=legacy_key("service_role"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("database_url", "postgresql://postgres@127.0.0.1:5432/videogen\nX-Injected: 1"),
        ("database_url", "postgresql://postgres@127.0.0.1:5432/" + "a" * (1024 * 1024)),
        ("redis_url", "redis://127.0.0.1:6379/0\r\n"),
        ("supabase_url", "https://abcdefgh.supabase.co/" + "a" * MAX_URL_LENGTH),
    ],
    ids=["newline", "one-megabyte", "crlf", "long-supabase-url"],
)
def test_urls_with_a_newline_or_a_megabyte_are_refused(field: str, value: str) -> None:
    [problem] = problems_of(**{field: value})
    assert problem.startswith(field.upper() + ":")
    assert len(problem) < 300  # the value is not echoed


@given(st.text(max_size=60))
def test_any_service_key_is_accepted_or_refused_with_a_config_error(value: str) -> None:
    try:
        settings = Settings(_env_file=None, supabase_service_key=value)
    except ConfigError:
        return
    key = settings.supabase_service_key
    assert key is None or not any(c.isspace() or ord(c) < 32 for c in key.get_secret_value())


# .env files in each broken form.


def load(tmp_path: Path, content: bytes) -> Settings:
    env = tmp_path / ".env"
    env.write_bytes(content)
    return Settings(_env_file=env)


def test_a_utf16_env_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="UTF-16"):
        load(tmp_path, "DATABASE_URL=postgresql://u@h/db\n".encode("utf-16"))


def test_a_latin1_env_file_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.env line 2: not utf-8"):
        load(tmp_path, "LOG_LEVEL=INFO\nOPENAI_API_KEY=sk-caf\xe9\n".encode("latin-1"))


def test_an_unterminated_quote_is_a_config_error_not_another_database(tmp_path: Path) -> None:
    content = b'LOG_LEVEL=INFO\nDATABASE_URL="postgresql://app@db.example.com/app\nREDIS_PREFIX=x\n'
    with pytest.raises(ConfigError, match=r"\.env line 2: cannot be read \(an unterminated quote\?\)"):
        load(tmp_path, content)


def test_a_nul_byte_in_a_value_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.env line 1: holds a NUL byte"):
        load(tmp_path, b"DATABASE_URL=postgresql://postgres@127.0.0.1:5432/video\x00gen\n")


def test_a_well_formed_env_file_loads(tmp_path: Path) -> None:
    settings = load(tmp_path, b'# comment\nLOG_LEVEL=debug\nDATABASE_URL="postgresql://u@h/db"\nAUTH_ISSUER=\n')
    assert "DEBUG" == settings.log_level
    assert "postgresql://u@h/db" == settings.database_dsn
    assert settings.auth_issuer is None


def test_the_env_example_passes_the_check() -> None:
    check_env_file(Path(__file__).resolve().parents[2] / ".env.example")
