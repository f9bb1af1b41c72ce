"""The command line: a bad configuration is exit 2 with every problem; doctor reports each service."""

from __future__ import annotations

import asyncio
import gc
import importlib
import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from shared import doctor
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


async def test_a_checks_imports_are_outside_its_time_budget(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow import (supabase takes seconds on a busy host) made doctor report a live service as down."""
    (tmp_path / "vg_slow_import.py").write_text("import time\ntime.sleep(0.5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(doctor._IMPORTS, "slow", ("vg_slow_import",))

    async def slow(_: Settings) -> HealthStatus:
        importlib.import_module("vg_slow_import")  # as check_storage imports shared.container and supabase
        return HealthStatus("slow", "ok", 0.1)

    out = io.StringIO()
    assert 0 == await run_doctor(settings, out=out, checks={"slow": slow}, timeout=0.2, processes=None), out.getvalue()


async def test_a_check_that_ignores_cancellation_does_not_hold_the_doctor(settings: Settings) -> None:
    """The doctor answers within its timeout plus CLEANUP_SECONDS, whatever a driver does once cancelled."""
    released = asyncio.Event()

    async def stubborn(_: Settings) -> HealthStatus:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await released.wait()  # a driver that will not let go
        raise AssertionError  # pragma: no cover

    async def fine(_: Settings) -> HealthStatus:
        return HealthStatus("fine", "ok", 0.1)

    out = io.StringIO()
    status = await run_doctor(settings, out=out, checks={"stubborn": stubborn, "fine": fine}, timeout=0.1)
    assert 1 == status
    assert "stubborn   down" in out.getvalue()
    assert "fine       ok" in out.getvalue()
    assert not released.is_set()  # it returned while the check was still holding on
    released.set()
    await asyncio.sleep(0)


async def test_an_error_a_cancelled_check_leaves_unretrieved_is_not_printed(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """'Future exception was never retrieved' once appeared in doctor's output under load."""

    async def leaves_a_future(_: Settings) -> HealthStatus:
        future = asyncio.get_running_loop().create_future()
        future.set_exception(ConnectionResetError("the server went away"))
        del future  # collected with its exception unread: asyncio reports it through the loop's handler
        gc.collect()
        await asyncio.sleep(30)
        raise AssertionError  # pragma: no cover

    out = io.StringIO()
    with caplog.at_level(logging.DEBUG):
        assert 1 == await run_doctor(settings, out=out, checks={"leaky": leaves_a_future}, timeout=0.1)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert "never retrieved" not in out.getvalue()


@pytest.mark.parametrize(
    ("processes", "limit", "expected"),
    [
        (1, None, "ok"),
        (100_000, None, "down"),
        (2, 15, "down"),
        (1, 15, "ok"),
    ],
)
async def test_the_connection_budget_is_processes_times_the_pool_size(
    make_settings: MakeSettings, pg_dsn: str, processes: int, limit: int | None, expected: str
) -> None:
    settings = make_settings(database_url=pg_dsn, db_pool_max_size=10, db_max_client_connections=limit)
    result = await doctor.check_connection_budget(settings, processes)
    assert expected == result.status, result.detail
    assert f"{processes} process(es) x DB_POOL_MAX_SIZE 10 = {processes * 10}" in str(result.detail)
    if limit is None:
        assert "max_connections" in str(result.detail)


async def test_supabase_session_pooler_without_a_limit_asks_for_it(make_settings: MakeSettings) -> None:
    settings = make_settings(
        database_url="postgresql://postgres.ref:pw@aws-0-eu-west-1.pooler.supabase.com:5432/postgres"
    )
    result = await doctor.check_connection_budget(settings, 3)
    assert "down" == result.status
    assert "DB_MAX_CLIENT_CONNECTIONS" in str(result.detail)
    assert "pw" not in str(result.detail)


async def test_doctor_reports_the_connection_budget(make_settings: MakeSettings, pg_dsn: str) -> None:
    out = io.StringIO()
    assert 1 == await run_doctor(make_settings(database_url=pg_dsn), out=out, processes=100_000)
    assert "connections down" in out.getvalue()
    assert "lower DB_POOL_MAX_SIZE" in out.getvalue()
