"""Paid calls (issue 20): admission's round trips and throughput against a bare reservation, the limiter against
``limits`` called directly.

1. Round trips of one admission, counted: every statement on the only connection of a one-connection pool (a
   query logger) and every command the Redis client sends (a counting client).
2. Throughput from 64 tasks over 1,000 jobs, side by side, ABBA-interleaved, best rounds compared:
   a bare reservation (``reserve`` + ``commit``), admission + commit (budget + rate + concurrency), and
   admission + ``settle`` (the cost priced from usage, the usage written on the row).
3. The limiter's overhead: one admission check of three limits plus a concurrency lease (our one Lua script)
   against ``limits``' moving window called directly, once per limit (3 round trips) and for one limit alone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis

from benchmarks._postgres import a_round, interleaved, open_client, scratch_database, seed_jobs
from shared.config import RateLimits, Settings
from shared.cost_tracking import CostTracker
from shared.models import StageName
from shared.paid import PaidCalls, PriceCatalogue, RateLimiter, RateScope
from shared.redis_client import RedisClient, build_client

__all__ = ["main"]

URL = "redis://127.0.0.1:6379/0"
ROUNDS = 6
CALLS = 2_000
STAGE = StageName.PROMPT_GENERATION
MODEL = "gpt-4o-mini"
ESTIMATE = {"input_tokens": 800, "output_tokens": 200}
USAGE = {"input_tokens": 700, "output_tokens": 150}
OPEN = RateLimits(rpm=10**9, tpm=10**12, rps=10**9, concurrency=10**6)


class Counting(aioredis.Redis):
    """A redis-py client that counts the commands it sends (one round trip each, no pipelines here)."""

    sent = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Count, then send."""
        Counting.sent += 1
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]  # redis-py untyped


def _paid(db: Any, redis: RedisClient, prefix: str) -> PaidCalls:
    settings = Settings(_env_file=None, paid_key_prefix=prefix, paid_limits={f"openai/{MODEL}": OPEN})
    limiter = RateLimiter(redis, prefix=prefix, lease_seconds=60)
    tracker = CostTracker(db, default_budget=Decimal(50), reservation_ttl=timedelta(minutes=15))
    return PaidCalls(limiter=limiter, ledger=tracker, db=db, catalogue=PriceCatalogue(), settings=settings)


async def _round_trips(dsn: str, prefix: str) -> list[str]:
    async with open_client(dsn, db_pool_min_size=1, db_pool_max_size=1) as db:
        (job,) = await seed_jobs(db, 1, budget_limit="99999999.0000")
        statements: list[str] = []
        async with db.pool.acquire() as connection:
            reset = connection.get_reset_query()
            connection.add_query_logger(lambda record: statements.append(record.query))
        redis = RedisClient(Counting.from_url(URL), prefix=prefix)
        paid = _paid(db, redis, prefix)
        rows = []
        try:
            for settle in (False, True, True):  # the first warms the prepared statements and the script cache
                statements.clear()
                Counting.sent = 0
                async with paid.admit(job, STAGE, provider="openai", model=MODEL, estimate=ESTIMATE) as call:
                    admitted = (len([q for q in statements if q != reset]), Counting.sent)
                    statements.clear()
                    Counting.sent = 0
                    if settle:
                        await call.settle(USAGE)
                    else:
                        await call.reservation.commit("0.0002")
                after = (len([q for q in statements if q != reset]), Counting.sent)
            rows = [
                f"| admission (budget + rate + concurrency) | {admitted[0]} | {admitted[1]} | {sum(admitted)} |",
                f"| settle + leaving the block | {after[0]} | {after[1]} | {sum(after)} |",
            ]
        finally:
            await redis.aclose()
        return rows


async def _throughput(dsn: str, prefix: str) -> list[str]:
    async with open_client(dsn) as db:
        jobs = await seed_jobs(db, 1000, budget_limit="99999999.0000")
        settings = Settings(_env_file=None, redis_url=URL, redis_max_connections=64)
        redis = build_client(settings)
        paid = _paid(db, redis, prefix)
        tracker = paid.ledger
        args = [jobs[i % len(jobs)] for i in range(CALLS)]

        async def bare(job: uuid.UUID) -> None:
            async with tracker.reserve(job, STAGE, f"openai/{MODEL}", "0.0003") as reservation:
                await reservation.commit("0.0002")

        async def admitted(job: uuid.UUID) -> None:
            async with paid.admit(job, STAGE, provider="openai", model=MODEL, estimate=ESTIMATE) as call:
                await call.reservation.commit("0.0002")

        async def settled(job: uuid.UUID) -> None:
            async with paid.admit(job, STAGE, provider="openai", model=MODEL, estimate=ESTIMATE) as call:
                await call.settle(USAGE)

        try:
            for fn in (bare, admitted, settled):
                for job in jobs[:50]:
                    await fn(job)
            rates = await interleaved(
                ROUNDS,
                {
                    "bare": a_round(bare, args),
                    "admitted": a_round(admitted, args),
                    "settled": a_round(settled, args),
                },
            )
        finally:
            await redis.aclose()
    return [
        f"| bare reservation (`reserve` + `commit`) | {rates.best('bare'):,.0f} | 1.00 | 1.00 |",
        f"| admission + `commit` | {rates.best('admitted'):,.0f} | {rates.ratio('admitted', 'bare'):.2f} "
        f"| {rates.median_paired_ratio('admitted', 'bare'):.2f} |",
        f"| admission + `settle` (priced, usage written) | {rates.best('settled'):,.0f} "
        f"| {rates.ratio('settled', 'bare'):.2f} | {rates.median_paired_ratio('settled', 'bare'):.2f} |",
    ]


async def _overhead(prefix: str) -> list[str]:
    from limits import RateLimitItemPerMinute, RateLimitItemPerSecond  # noqa: PLC0415 - the kept library
    from limits.aio.storage import RedisStorage  # noqa: PLC0415
    from limits.aio.strategies import MovingWindowRateLimiter  # noqa: PLC0415

    settings = Settings(_env_file=None, redis_url=URL, redis_max_connections=64)
    redis = build_client(settings)
    ours = RateLimiter(redis, prefix=prefix)
    storage = RedisStorage("async+redis://127.0.0.1:6379/0", implementation="redispy", key_prefix=f"{prefix}lim")
    library = MovingWindowRateLimiter(storage)
    rpm, rps, tpm = RateLimitItemPerMinute(10**8), RateLimitItemPerSecond(10**8), RateLimitItemPerMinute(10**9)
    three = RateLimits(rpm=10**8, rps=10**8, tpm=10**9, concurrency=10**6)
    scopes = [RateScope("bench", f"m{i}", "k") for i in range(50)]
    args = list(range(CALLS))

    async def ours_three(i: int) -> object:
        grant = await ours.try_acquire(scopes[i % 50], uuid.uuid4().hex, 200, three)
        assert not isinstance(grant, float)  # noqa: S101 - open limits never refuse
        return grant

    async def limits_three(i: int) -> object:
        name = f"m{i % 50}"
        return (
            await library.hit(rpm, name, "rpm")
            and await library.hit(rps, name, "rps")
            and await library.hit(tpm, name, "tpm", cost=200)
        )

    async def limits_one(i: int) -> object:
        return await library.hit(rpm, f"m{i % 50}", "one")

    contenders: dict[str, Callable[[], Awaitable[float]]] = {
        "ours": a_round(ours_three, args),
        "three": a_round(limits_three, args),
        "one": a_round(limits_one, args),
    }
    try:
        for fn in (ours_three, limits_three, limits_one):
            for i in range(100):
                await fn(i)
        rates = await interleaved(ROUNDS, contenders)
    finally:
        await redis.aclose()
        await storage.reset()
    return [
        f"| ours: RPM + RPS + TPM + a concurrency lease, one script | {rates.best('ours'):,.0f} | 1 | "
        f"{rates.ratio('ours', 'three'):.2f} |",
        f"| `limits` moving window, RPM + RPS + TPM (3 hits) | {rates.best('three'):,.0f} | 3 | 1.00 |",
        f"| `limits` moving window, one limit | {rates.best('one'):,.0f} | 1 | {rates.ratio('one', 'three'):.2f} |",
    ]


async def _run() -> str:
    prefix = f"bench:{uuid.uuid4().hex[:12]}:"
    async with scratch_database(synchronous_commit=False) as dsn:
        trips = await _round_trips(dsn, prefix)
        throughput = await _throughput(dsn, prefix)
    overhead = await _overhead(prefix)
    cleanup = aioredis.Redis.from_url(URL)
    try:
        keys = [key async for key in cleanup.scan_iter(match=f"{prefix}*")]
        if keys:
            await cleanup.delete(*keys)
    finally:
        await cleanup.aclose()
    return "\n".join(
        [
            "| step | PostgreSQL | Redis | round trips |",
            "|---|---:|---:|---:|",
            *trips,
            "",
            f"| {CALLS:,} calls from 64 tasks, {ROUNDS} rounds ABBA | calls/s (best) | vs bare (best) "
            "| vs bare (median of pairs) |",
            "|---|---:|---:|---:|",
            *throughput,
            "",
            f"| limiter, {CALLS:,} checks from 64 tasks | checks/s (best) | round trips | vs `limits` (3 hits) |",
            "|---|---:|---:|---:|",
            *overhead,
        ]
    )


def main() -> str:
    """Run the paid-call benchmark and return its Markdown section."""
    return asyncio.run(_run())
