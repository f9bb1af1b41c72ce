"""The command line: a bad configuration is exit 2 with every problem; doctor reports each service."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from shared.cli import main
from shared.config import Settings
from shared.doctor import run_doctor
from shared.health import HealthStatus
from tests.fixtures.core import MakeSettings


def test_bad_configuration_lists_every_problem_and_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("REDIS_URL", "http://not-redis")
    out = io.StringIO()
    assert 2 == main(["doctor"], out=out)
    text = out.getvalue()
    assert "REDIS_URL" in text
    assert "SUPABASE_SERVICE_KEY" in text


async def test_doctor_reports_up_services_with_latency(make_settings: MakeSettings, pg_dsn: str) -> None:
    out = io.StringIO()
    status = await run_doctor(make_settings(database_url=pg_dsn), out=out)
    assert 0 == status, out.getvalue()
    assert "postgres   ok" in out.getvalue()
    assert "all services are up" in out.getvalue()


async def test_doctor_exits_1_and_says_what_is_down(make_settings: MakeSettings) -> None:
    out = io.StringIO()
    settings = make_settings(database_url="postgresql://postgres@127.0.0.1:1/none", db_connect_timeout_seconds=1)
    assert 1 == await run_doctor(settings, out=out)
    assert "postgres   down" in out.getvalue()
    assert "down: postgres" in out.getvalue()


async def test_doctor_reports_a_hanging_check_as_down(settings: Settings) -> None:
    async def hangs(_: Settings) -> HealthStatus:
        import asyncio  # noqa: PLC0415

        await asyncio.sleep(10)
        raise AssertionError  # pragma: no cover

    out = io.StringIO()
    assert 1 == await run_doctor(settings, out=out, checks={"frozen": hangs}, timeout=0.05)
    assert "no answer within 0.05 s" in out.getvalue()


def test_module_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shared", "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert 0 == result.returncode
    assert "doctor" in result.stdout
