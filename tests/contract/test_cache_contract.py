"""One contract for every Cache: RedisClient on the machine's Redis and the in-memory FakeCache."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from shared.errors import CacheError, ValidationError
from shared.models import AudioAnalysis, ClipBoundary, Mood
from shared.redis_client import Cache, RedisClient, init_redis
from shared.testing.cache import FakeCache
from tests.fixtures.core import MakeSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Subject:
    cache: Cache
    wait: Callable[[float], Awaitable[None]]  # let ``seconds`` pass for TTLs


@pytest.fixture(params=["redis", "fake"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "fake":
        clock = Clock()

        async def advance(seconds: float) -> None:
            clock.now += seconds

        yield Subject(FakeCache(clock=clock), advance)
        return
    settings = request.getfixturevalue("redis_settings")
    async for client in init_redis(settings):
        yield Subject(client, asyncio.sleep)


def analysis() -> AudioAnalysis:
    return AudioAnalysis(
        job_id=uuid.uuid4(),
        bpm=128.5,
        duration=60,
        beat_timestamps=[0.1, 0.6],
        mood=Mood(primary="calm", energy_level="low", confidence=0.5),
        clip_boundaries=[ClipBoundary(start=0, end=30), ClipBoundary(start=30, end=60)],
        metadata={"cost": "0.0100"},
    )


async def test_implements_the_protocol(subject: Subject) -> None:
    assert isinstance(subject.cache, Cache)


async def test_set_get_delete_exists(subject: Subject) -> None:
    cache = subject.cache
    assert await cache.set("a", b"1")
    assert await cache.set("b", "two")
    assert b"1" == await cache.get("a")
    assert b"two" == await cache.get("b")
    assert await cache.exists("a")
    assert 2 == await cache.delete("a", "b", "never-set")
    assert await cache.get("a") is None
    assert not await cache.exists("a")
    assert 0 == await cache.delete()


async def test_models_round_trip_as_themselves(subject: Subject) -> None:
    value = analysis()
    await subject.cache.set_json("analysis", value)
    assert value == await subject.cache.get_json("analysis", model=AudioAnalysis)


async def test_plain_json_keeps_decimal_uuid_and_aware_datetime_exactly(subject: Subject) -> None:
    job = uuid.uuid4()
    when = datetime(2026, 11, 25, 13, 5, 7, 123456, tzinfo=timezone(timedelta(hours=2)))
    value = {"cost": Decimal("0.1000"), "job": job, "at": when, "tags": ["a"]}
    await subject.cache.set_json("mixed", value)
    typed = await subject.cache.get_json("mixed", model=dict[str, Decimal | uuid.UUID | datetime | list[str]])
    assert typed is not None
    assert Decimal("0.1000") == typed["cost"]
    assert str(Decimal("0.1000")) == str(typed["cost"])
    assert job == uuid.UUID(str(typed["job"]))
    plain = await subject.cache.get_json("mixed")
    assert {"cost": "0.1000", "job": str(job), "at": when.isoformat(), "tags": ["a"]} == plain
    assert when == datetime.fromisoformat(plain["at"])


async def test_missing_key_reads_none(subject: Subject) -> None:
    assert await subject.cache.get("nothing") is None
    assert await subject.cache.get_json("nothing", model=AudioAnalysis) is None


async def test_value_that_is_not_valid_json_is_a_miss_and_deleted(subject: Subject) -> None:
    await subject.cache.set("broken", b"{not json")
    assert await subject.cache.get_json("broken") is None
    assert not await subject.cache.exists("broken")
    await subject.cache.set_json("wrong-shape", {"bpm": "fast"})
    assert await subject.cache.get_json("wrong-shape", model=AudioAnalysis) is None
    assert not await subject.cache.exists("wrong-shape")


async def test_many_in_one_call(subject: Subject) -> None:
    assert await subject.cache.set_many({"k1": b"1", "k2": b"2"}, ttl=60)
    assert {"k1": b"1", "k2": b"2", "k3": None} == await subject.cache.get_many(["k1", "k2", "k3"])
    assert {} == await subject.cache.get_many([])
    assert await subject.cache.set_many({})


async def test_ttl_expires_values(subject: Subject) -> None:
    await subject.cache.set("short", b"x", ttl=timedelta(milliseconds=300))
    await subject.cache.set("long", b"y", ttl=60)
    assert b"x" == await subject.cache.get("short")
    await subject.wait(0.6)
    assert await subject.cache.get("short") is None
    assert b"y" == await subject.cache.get("long")


@pytest.mark.parametrize("ttl", [0, -1, timedelta(0), timedelta(seconds=-5), 1.5, True])
async def test_ttl_must_be_positive_seconds_or_timedelta(subject: Subject, ttl: object) -> None:
    with pytest.raises(ValidationError):
        await subject.cache.set("k", b"v", ttl=ttl)  # type: ignore[arg-type] # bad on purpose
    with pytest.raises(ValidationError):
        await subject.cache.set_many({"k": b"v"}, ttl=ttl)  # type: ignore[arg-type] # bad on purpose


@pytest.mark.parametrize("key", ["", "has space", "tab\there", "new\nline", "nul\x00", "x" * 513, "bell\x07"])
async def test_bad_keys_are_refused(subject: Subject, key: str) -> None:
    with pytest.raises(ValidationError):
        await subject.cache.set(key, b"v")
    with pytest.raises(ValidationError):
        await subject.cache.get(key)


async def test_value_that_cannot_be_json_is_refused(subject: Subject) -> None:
    with pytest.raises(ValidationError, match="cannot store"):
        await subject.cache.set_json("k", object())


@pytest.mark.parametrize("value", [{"a": 1}, ["a"], 1.5, None, object()], ids=repr)
async def test_a_value_that_is_not_bytes_or_str_is_refused(subject: Subject, value: object) -> None:
    with pytest.raises(ValidationError, match="must be bytes or str"):
        await subject.cache.set("k", value)  # type: ignore[arg-type]  # the caller's mistake under test
    with pytest.raises(ValidationError, match="must be bytes or str"):
        await subject.cache.set_many({"k": value})  # type: ignore[dict-item]  # the caller's mistake under test
    assert await subject.cache.get("k") is None


async def test_a_value_over_the_size_limit_is_refused_before_it_is_sent(subject: Subject) -> None:
    limit = 4 * 1024 * 1024
    assert await subject.cache.set("fits", b"x" * limit)
    with pytest.raises(ValidationError, match="at most 4,194,304"):
        await subject.cache.set("big", b"x" * (limit + 1))
    with pytest.raises(ValidationError, match="at most 4,194,304"):
        await subject.cache.set("big", "\u00e9" * (limit // 2 + 1))  # the limit counts UTF-8 bytes
    with pytest.raises(ValidationError, match="at most 4,194,304"):
        await subject.cache.set_many({"small": b"v", "big": b"x" * (limit + 1)})
    assert {"big": None, "small": None} == await subject.cache.get_many(["big", "small"])


async def test_health_check_reports_ok(subject: Subject) -> None:
    health = await subject.cache.health_check()
    assert ("redis", "ok") == (health.name, health.status)


async def test_keys_are_stored_under_the_prefix(redis_client: RedisClient, redis_prefix: str) -> None:
    import redis.asyncio as aioredis  # noqa: PLC0415

    await redis_client.set("job:1", b"v")
    raw = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        assert b"v" == await raw.get(f"{redis_prefix}job:1")
    finally:
        await raw.aclose()


async def test_invalid_json_is_logged(redis_client: RedisClient, caplog: pytest.LogCaptureFixture) -> None:
    await redis_client.set("bad", b"\xff")
    with caplog.at_level(logging.WARNING, logger="shared.redis_client"):
        assert await redis_client.get_json("bad") is None
    assert any("not valid JSON" in record.getMessage() for record in caplog.records)


async def test_a_wrong_value_type_fails_that_caller_only(
    redis_client: RedisClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: redis-py's DataError marked the cache down, and other callers' hits missed for 0.5 s."""
    await redis_client.set("shared", b"hit")
    with caplog.at_level(logging.WARNING, logger="shared.redis_client"):
        with pytest.raises(ValidationError):
            await redis_client.set("x", {"a": 1})  # type: ignore[arg-type]  # the caller's mistake under test
        assert redis_client.available
        assert b"hit" == await redis_client.get("shared")
    assert [] == [r for r in caplog.records if "unavailable" in r.getMessage()]


async def test_arguments_redis_py_refuses_are_a_validation_error_not_an_outage(redis_client: RedisClient) -> None:
    """A DataError that gets past our checks (here from the raw command) is still the caller's, not an outage."""
    with pytest.raises(ValidationError, match="cannot take these arguments"):
        await redis_client._call(lambda: redis_client.raw.set("k", {"a": 1}), fallback=False)  # type: ignore[arg-type]
    assert redis_client.available


async def test_a_100_mb_value_is_refused_without_storing_anything(redis_client: RedisClient, redis_prefix: str) -> None:
    """Before: set returned False after 1-2 s, Redis stored all 104,857,600 bytes and the cache was marked down."""
    with pytest.raises(ValidationError, match="REDIS_MAX_VALUE_BYTES"):
        await redis_client.set("huge", b"x" * 104_857_600)
    assert redis_client.available
    assert 0 == await redis_client.raw.exists(f"{redis_prefix}huge")


async def test_the_size_limit_is_a_setting(make_settings: MakeSettings, redis_prefix: str) -> None:
    settings = make_settings(redis_key_prefix=redis_prefix, redis_max_value_bytes=10)
    async for client in init_redis(settings):
        assert await client.set("k", b"x" * 10)
        with pytest.raises(ValidationError, match="at most 10 are allowed"):
            await client.set_json("k", "x" * 20)
        assert client.available


async def test_more_tasks_than_connections_wait_for_one_instead_of_missing(
    make_settings: MakeSettings, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        redis_url="redis://127.0.0.1:6379/0", redis_key_prefix=redis_prefix, redis_max_connections=3
    )
    async for client in init_redis(settings):
        await client.set("k", b"v")
        with caplog.at_level(logging.WARNING, logger="shared.redis_client"):
            values = await asyncio.gather(*(client.get("k") for _ in range(200)))
        assert [b"v"] * 200 == values
        assert [] == [r for r in caplog.records if "unavailable" in r.getMessage()]


@pytest.mark.parametrize("strict", [False, True])
async def test_every_connection_busy_for_the_whole_bound_is_a_miss_not_an_outage(
    make_settings: MakeSettings, redis_prefix: str, caplog: pytest.LogCaptureFixture, strict: bool
) -> None:
    settings = make_settings(
        redis_key_prefix=redis_prefix, redis_max_connections=1, redis_operation_timeout_seconds=0.2, redis_strict=strict
    )
    async for client in init_redis(settings):
        await client._slots.acquire()  # another caller holds the only connection
        with caplog.at_level(logging.WARNING, logger="shared.redis_client"):
            if strict:
                with pytest.raises(CacheError, match="busy"):
                    await client.get("k")
            else:
                assert await client.get("k") is None
        client._slots.release()
        assert client.available
        assert [] == [r for r in caplog.records if "unavailable" in r.getMessage()]
