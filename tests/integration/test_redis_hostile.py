"""The cache under hostile Redis servers of the tests' own: full, read-only for its user, slow, slow under load.

A command Redis refuses (OOM under noeviction, NOPERM for an ACL user) is that command's failure, not an outage;
a distant Redis still gets its connection opened; and no call outlives the bound, however many wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from shared.errors import CacheError
from shared.redis_client import RedisClient, init_redis
from tests.fixtures.core import MakeSettings
from tests.fixtures.latency import LatencyProxy
from tests.fixtures.redis import RedisServer

pytestmark = pytest.mark.slow
BOUND = 1.0
SLACK = 0.5  # scheduling noise on a shared machine
READER_PASSWORD = "reader-password-0123456789"
MakeProxy = Callable[[int], Awaitable[LatencyProxy]]


@pytest.fixture
async def open_client(make_settings: MakeSettings) -> AsyncIterator[Callable[..., Awaitable[RedisClient]]]:
    """Return a factory of clients (settings as keywords), each closed afterwards."""
    generators: list[AsyncIterator[RedisClient]] = []

    async def open_one(**changes: object) -> RedisClient:
        generator = init_redis(make_settings(redis_operation_timeout_seconds=BOUND, **changes))
        generators.append(generator)
        return await anext(generator)

    yield open_one
    for generator in generators:
        with pytest.raises(StopAsyncIteration):
            await anext(generator)


async def fill(server: RedisServer) -> None:
    """Store 4 MiB, then lower maxmemory below it: under noeviction, every write is now refused with OOM."""
    raw = aioredis.Redis.from_url(server.url)
    try:
        await raw.set("filler", b"x" * (4 * 1024 * 1024))
        await raw.config_set("maxmemory", "1mb")
        with pytest.raises(aioredis.ResponseError, match=r"used memory > .maxmemory."):
            await raw.set("probe", b"x")
    finally:
        await raw.aclose()


@pytest.mark.parametrize("strict", [False, True])
async def test_a_full_redis_refuses_writes_but_reads_keep_hitting(
    redis_server: Callable[..., RedisServer],
    open_client: Callable[..., Awaitable[RedisClient]],
    caplog: pytest.LogCaptureFixture,
    *,
    strict: bool,
) -> None:
    server = redis_server("--maxmemory-policy", "noeviction")
    cache = await open_client(redis_url=server.url, redis_strict=strict)
    assert await cache.set("kept", b"value")
    await fill(server)

    hits = 0
    for _ in range(50):
        if strict:
            with pytest.raises(CacheError, match="refused the command \\(OOM\\)"):
                await cache.set("new", b"v" * 4096)
        else:
            assert await cache.set("new", b"v" * 4096) is False
        hits += await cache.get("kept") == b"value"

    assert 50 == hits
    assert cache.available
    assert (await cache.health_check()).ok
    refusals = [r for r in caplog.records if "refused a command (OOM)" in r.getMessage()]
    assert 1 == len(refusals)  # once a minute per kind, not once per call
    assert not [r for r in caplog.records if "unavailable" in r.getMessage()]


async def test_a_read_only_acl_user_reads_hit_and_writes_are_skipped(
    redis_server: Callable[..., RedisServer], open_client: Callable[..., Awaitable[RedisClient]]
) -> None:
    rules = ("reader", "on", f">{READER_PASSWORD}", "~*", "+@read", "+ping", "+client", "+hello")
    server = redis_server("--user", *rules)
    writer = aioredis.Redis.from_url(server.url)
    try:
        await writer.set("videogen:cache:kept", b"value")
    finally:
        await writer.aclose()
    cache = await open_client(redis_url=f"redis://reader:{READER_PASSWORD}@127.0.0.1:{server.port}/0")

    results = [(await cache.set("new", b"v"), await cache.get("kept")) for _ in range(30)]

    assert [(False, b"value")] * 30 == results
    assert cache.available
    assert (await cache.health_check()).ok


async def test_a_cold_client_gets_its_connection_to_a_distant_redis(
    latency_proxy: MakeProxy, open_client: Callable[..., Awaitable[RedisClient]]
) -> None:
    """At 300 ms per answer the handshake alone nearly fills the bound; the opening goes on after the caller."""
    proxy = await latency_proxy(6379)
    proxy.fixed(0.3)
    cache = await open_client(redis_url=proxy.url, redis_key_prefix="videogen:test-distant:")
    stored = calls = 0
    started = time.monotonic()
    while time.monotonic() - started < 4:
        stored += await cache.set("k", b"v")
        calls += 1
        await asyncio.sleep(0.01)

    assert stored >= 5, (stored, calls)  # a warm call takes one round trip: about 10 fit after the first second
    assert proxy.connections <= 2  # the half-open connection was kept, not thrown away and started anew


async def test_forty_callers_to_a_slow_redis_each_return_within_the_bound(
    latency_proxy: MakeProxy, open_client: Callable[..., Awaitable[RedisClient]]
) -> None:
    proxy = await latency_proxy(6379)
    cache = await open_client(redis_url=proxy.url, redis_key_prefix="videogen:test-slow:", redis_max_connections=10)
    while not await cache.set("k", b"v"):
        await asyncio.sleep(0.1)
    proxy.between(0.2, 1.2)
    durations: list[float] = []

    async def caller() -> None:
        end = time.monotonic() + 4
        while time.monotonic() < end:
            started = time.monotonic()
            await cache.get("k")
            durations.append(time.monotonic() - started)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(caller() for _ in range(40)))

    assert max(durations) < BOUND + SLACK, sorted(durations)[-5:]
