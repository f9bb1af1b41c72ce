"""The limiter against its candidate libraries on the same Redis (not part of `make bench`: the peers are not kept).

Run in a scratch venv that has the peers, with the project importable::

    python -m venv /tmp/paid_peers && /tmp/paid_peers/bin/pip install throttled-py pyrate-limiter
    PYTHONPATH=. /tmp/paid_peers/bin/python -m benchmarks.peers_paid

Every contender checks the same three limits a paid call needs (requests per minute, requests per second, tokens
per minute, weight 200), none of them ever refusing, from 64 tasks, ABBA-interleaved rounds; ours also takes a
concurrency lease in the same script. Rates are the best round of each; round trips are per check.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from benchmarks._postgres import a_round, interleaved
from shared.config import RateLimits, Settings
from shared.paid import RateLimiter, RateScope
from shared.redis_client import build_client

URL = "redis://127.0.0.1:6379/0"
CHECKS = 2_000
ROUNDS = 4
BIG = 10**8


async def _run() -> str:
    from limits import RateLimitItemPerMinute, RateLimitItemPerSecond  # noqa: PLC0415
    from limits.aio.storage import RedisStorage  # noqa: PLC0415
    from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter  # noqa: PLC0415
    from pyrate_limiter import Duration, Limiter, Rate, RedisBucket  # noqa: PLC0415
    from throttled.asyncio import (  # type: ignore[import-not-found]  # noqa: PLC0415 - a peer, scratch venv only
        RateLimiterType,
        RedisStore,
        Throttled,
        per_min,
        per_sec,
    )

    prefix = f"peers:{uuid.uuid4().hex[:8]}:"
    cache = build_client(Settings(_env_file=None, redis_url=URL, redis_max_connections=64))
    ours = RateLimiter(cache, prefix=prefix)
    limits3 = RateLimits(rpm=BIG, rps=BIG, tpm=BIG * 100, concurrency=BIG)
    scopes = [RateScope("bench", f"m{i}", "k") for i in range(50)]

    storage = RedisStorage(URL.replace("redis://", "async+redis://"), implementation="redispy", key_prefix=prefix)
    moving, counter = MovingWindowRateLimiter(storage), SlidingWindowCounterRateLimiter(storage)
    rpm, rps, tpm = RateLimitItemPerMinute(BIG), RateLimitItemPerSecond(BIG), RateLimitItemPerMinute(BIG * 100)

    store = RedisStore(server=URL, options={"MAX_CONNECTIONS": 64})
    throttles = {
        kind: (
            Throttled(using=kind, quota=per_min(BIG), store=store, timeout=-1, key_prefix=f"{prefix}t"),
            Throttled(using=kind, quota=per_sec(BIG), store=store, timeout=-1, key_prefix=f"{prefix}t"),
            Throttled(using=kind, quota=per_min(BIG * 100), store=store, timeout=-1, key_prefix=f"{prefix}t"),
        )
        for kind in (RateLimiterType.SLIDING_WINDOW.value, RateLimiterType.GCRA.value)
    }

    pyrate_redis = aioredis.Redis.from_url(URL, max_connections=64)
    requests = await RedisBucket.init(
        [Rate(BIG, Duration.SECOND), Rate(BIG * 10, Duration.MINUTE)], pyrate_redis, f"{prefix}pr"
    )
    tokens = await RedisBucket.init([Rate(BIG * 100, Duration.MINUTE)], pyrate_redis, f"{prefix}pt")
    pyrate_requests, pyrate_tokens = Limiter(requests), Limiter(tokens)

    async def c_ours(i: int) -> object:
        return await ours.try_acquire(scopes[i % 50], uuid.uuid4().hex, 200, limits3)

    async def c_moving(i: int) -> object:
        name = f"m{i % 50}"
        return (
            await moving.hit(rpm, name, "rpm")
            and await moving.hit(rps, name, "rps")
            and await moving.hit(tpm, name, "tpm", cost=200)
        )

    async def c_counter(i: int) -> object:
        name = f"m{i % 50}"
        return (
            await counter.hit(rpm, name, "rpm")
            and await counter.hit(rps, name, "rps")
            and await counter.hit(tpm, name, "tpm", cost=200)
        )

    def c_throttled(kind: str) -> Callable[[int], Awaitable[object]]:
        minute, second, weight = throttles[kind]

        async def check(i: int) -> object:
            name = f"m{i % 50}"
            return (
                not (await minute.limit(f"{name}:rpm")).limited
                and not (await second.limit(f"{name}:rps")).limited
                and not (await weight.limit(f"{name}:tpm", cost=200)).limited
            )

        return check

    async def c_pyrate(i: int) -> object:
        name = f"m{i % 50}"
        return await pyrate_requests.try_acquire_async(name, blocking=False) and await pyrate_tokens.try_acquire_async(
            name, weight=200, blocking=False
        )

    contenders = {
        "ours": (c_ours, 1),
        "limits moving window": (c_moving, 3),
        "limits sliding window counter": (c_counter, 3),
        "throttled-py sliding window": (c_throttled(RateLimiterType.SLIDING_WINDOW.value), 3),
        "throttled-py GCRA": (c_throttled(RateLimiterType.GCRA.value), 3),
        "pyrate-limiter (RPS+RPM bucket, TPM bucket)": (c_pyrate, 2),
    }
    args = list(range(CHECKS))
    try:
        for check, _ in contenders.values():
            for i in range(100):
                await check(i)
        rates = await interleaved(ROUNDS, {name: a_round(check, args) for name, (check, _) in contenders.items()})
    finally:
        await cache.aclose()
        await pyrate_redis.aclose()
        cleanup = aioredis.Redis.from_url(URL)
        keys = [key async for key in cleanup.scan_iter(match=f"{prefix}*")]
        if keys:
            await cleanup.delete(*keys)
        await cleanup.aclose()
    rows = [
        f"| {name} | {rates.best(name):,.0f} | {trips} | {rates.ratio(name, 'limits moving window'):.2f} |"
        for name, (_, trips) in contenders.items()
    ]
    return "\n".join(
        [
            f"| {CHECKS:,} checks of RPM + RPS + TPM from 64 tasks | checks/s (best) | round trips "
            "| vs `limits` moving window |",
            "|---|---:|---:|---:|",
            *rows,
        ]
    )


if __name__ == "__main__":
    print(asyncio.run(_run()))
