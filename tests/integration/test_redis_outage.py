"""Redis outages never fail a job: a killed or frozen server, calls bounded in time, one warning, recovery."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection

from shared.errors import CacheError, RetryableError
from shared.redis_client import RedisClient, build_client, init_redis
from tests.fixtures.core import MakeSettings
from tests.fixtures.redis import RedisServer
from tests.fixtures.servers import free_port, wait_for_port

pytestmark = pytest.mark.slow
BOUND = 1.0  # the configured bound (default), timeouts and retries together
SLACK = 0.5  # scheduling noise on a shared machine; the behaviour under test is "about a second, not a minute"


@pytest.fixture
async def outage(
    make_settings: MakeSettings, redis_server: Callable[[], RedisServer]
) -> AsyncIterator[tuple[RedisServer, RedisClient]]:
    server = redis_server()
    settings = make_settings(redis_url=server.url, redis_operation_timeout_seconds=BOUND)
    async for client in init_redis(settings):
        yield server, client


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]


async def timed(call: object) -> tuple[object, float]:
    started = time.monotonic()
    result = await call  # type: ignore[misc] # an awaitable under test
    return result, time.monotonic() - started


async def recover_within(client: RedisClient, seconds: float) -> float:
    """Write until a write lands; return how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < seconds + BOUND + SLACK:
        if await client.set("probe", b"1"):
            return time.monotonic() - started
    return float("inf")


@pytest.mark.parametrize("how", ["killed", "frozen"])
async def test_outage_degrades_to_misses_within_the_bound_with_one_warning(
    outage: tuple[RedisServer, RedisClient], caplog: pytest.LogCaptureFixture, how: str
) -> None:
    server, client = outage
    assert await client.set("k", b"v")
    if how == "killed":
        server.kill()
    else:
        server.freeze()
    durations: list[float] = []
    with caplog.at_level(logging.WARNING, logger="shared.redis_client"):
        for _ in range(6):
            value, took = await timed(client.get("k"))
            assert value is None
            durations.append(took)
            stored, took = await timed(client.set("k", b"w"))
            assert stored is False
            durations.append(took)
        health = await client.health_check()
    assert max(durations) < BOUND + SLACK, durations
    assert 1 == len(outage_warnings(caplog))
    assert "down" == health.status
    assert str(server.port) in (health.detail or "")
    if how == "killed":
        server.start()
    else:
        server.thaw()
    assert await recover_within(client, 2.0) < 2.0
    assert client.available
    assert (await client.health_check()).ok


async def test_misses_during_an_outage_do_not_touch_the_network(outage: tuple[RedisServer, RedisClient]) -> None:
    server, client = outage
    server.freeze()
    await client.get("k")  # the call that finds the outage waits for the bound
    _, took = await timed(client.get("k"))  # the next ones miss at once until the probe time
    assert took < 0.1


async def test_strict_mode_raises_a_retryable_cache_error(
    make_settings: MakeSettings, redis_server: Callable[[], RedisServer]
) -> None:
    server = redis_server()
    settings = make_settings(redis_url=server.url, redis_strict=True)
    async for client in init_redis(settings):
        server.kill()
        with pytest.raises(CacheError) as caught:
            await client.get("k")
        assert isinstance(caught.value, RetryableError)
        assert caught.value.__cause__ is not None
        assert caught.value.retry_after is not None
        with pytest.raises(CacheError):
            await client.set("k", b"v")  # inside the probe window: raised at once


def test_rediss_url_uses_tls(make_settings: MakeSettings) -> None:
    client = build_client(make_settings(redis_url="rediss://:secret-password@cache.example.com:6380/0"))
    assert isinstance(client.raw, aioredis.Redis)
    assert issubclass(client.raw.connection_pool.connection_class, SSLConnection)
    assert "secret-password" not in client._where


async def test_rediss_against_a_real_tls_server(make_settings: MakeSettings, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
        async for client in init_redis(make_settings(redis_url=url)):
            assert await client.set("tls", b"yes")
            assert b"yes" == await client.get("tls")
        plain = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
        with pytest.raises(Exception):  # noqa: B017 - a plain-text client cannot talk to a TLS port
            await plain.ping()
        await plain.aclose()
    finally:
        process.kill()
        process.wait()
