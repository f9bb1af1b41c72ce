"""Worker processes for the cross-process budget tests (importable, so a spawned process can run them)."""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from datetime import timedelta
from decimal import Decimal

from shared.config import Settings
from shared.cost_tracking import CostTracker
from shared.database import init_database
from shared.errors import BudgetExceededError
from shared.models import StageName


def _settings(dsn: str) -> Settings:
    return Settings(_env_file=None, environment="development", database_url=dsn, db_pool_max_size=10)


async def _reserve_and_commit(dsn: str, job_id: uuid.UUID, tasks: int, seed: int) -> tuple[Decimal, int, int]:
    rng = random.Random(seed)
    committed = Decimal(0)
    counts = {"committed": 0, "refused": 0}
    async for db in init_database(_settings(dsn)):
        tracker = CostTracker(db, default_budget=Decimal(50), reservation_ttl=timedelta(minutes=15))

        async def attempt(tracker: CostTracker) -> None:
            nonlocal committed
            estimate = Decimal(rng.randint(50, 500)) / 100
            actual = (estimate * Decimal(rng.randint(50, 100)) / 100).quantize(Decimal("0.0001"))
            try:
                async with tracker.reserve(job_id, StageName.CLIP_GENERATION, "replicate", estimate) as reservation:
                    await asyncio.sleep(rng.random() / 200)  # the paid call
                    await reservation.commit(actual)
            except BudgetExceededError:
                counts["refused"] += 1
                return
            committed += actual
            counts["committed"] += 1

        await asyncio.gather(*(attempt(tracker) for _ in range(tasks)))
    return committed, counts["committed"], counts["refused"]


def reserve_and_commit(dsn: str, job_id: uuid.UUID, tasks: int, seed: int) -> tuple[Decimal, int, int]:
    """Run ``tasks`` concurrent reserve + commit attempts; return the sum committed, commits and refusals."""
    return asyncio.run(_reserve_and_commit(dsn, job_id, tasks, seed))


async def _track(dsn: str, job_id: uuid.UUID, tasks: int) -> int:
    async for db in init_database(_settings(dsn)):
        tracker = CostTracker(db, default_budget=Decimal(1000), reservation_ttl=timedelta(minutes=15))
        await asyncio.gather(
            *(tracker.track_cost(job_id, StageName.PROMPT_GENERATION, "openai", Decimal("0.01")) for _ in range(tasks))
        )
    return tasks


def track_many(dsn: str, job_id: uuid.UUID, tasks: int) -> int:
    """Record ``tasks`` concurrent costs of 0.01; return how many were sent."""
    return asyncio.run(_track(dsn, job_id, tasks))


async def _hold(dsn: str, job_id: uuid.UUID, estimate: Decimal, ttl_seconds: float) -> None:
    async for db in init_database(_settings(dsn)):
        tracker = CostTracker(db, default_budget=Decimal(50), reservation_ttl=timedelta(seconds=ttl_seconds))
        async with tracker.reserve(job_id, StageName.CLIP_GENERATION, "replicate", estimate):
            print("held", flush=True)  # noqa: T201 - the parent waits for this line
            await asyncio.sleep(3600)  # the paid call; the parent kills this process meanwhile


def hold_until_killed() -> None:
    """Reserve (argv: dsn, job id, estimate, TTL seconds), say "held", and wait inside the block to be killed."""
    dsn, job_id, estimate, ttl = sys.argv[1:5]
    asyncio.run(_hold(dsn, uuid.UUID(job_id), Decimal(estimate), float(ttl)))


async def _hold_then_commit(dsn: str, job_id: uuid.UUID, estimate: Decimal, ttl_seconds: float) -> None:
    attempt_id = uuid.uuid4()
    async for db in init_database(_settings(dsn)):
        tracker = CostTracker(db, default_budget=Decimal(50), reservation_ttl=timedelta(seconds=ttl_seconds))
        async with tracker.reserve(
            job_id, StageName.CLIP_GENERATION, "replicate", estimate, attempt_id=attempt_id
        ) as reservation:
            print("held", reservation.id, attempt_id, flush=True)  # noqa: T201 - the parent reads this line
            # The paid call: the parent stops this process (SIGSTOP) meanwhile, and says when it has answered.
            await asyncio.to_thread(sys.stdin.readline)
            cost = await reservation.commit(estimate)
            print("committed", cost.cost, flush=True)  # noqa: T201 - the parent reads this line


def hold_then_commit() -> None:
    """Reserve (argv: dsn, job id, estimate, TTL seconds, "commit"), say "held", commit once stdin has a line."""
    dsn, job_id, estimate, ttl = sys.argv[1:5]
    asyncio.run(_hold_then_commit(dsn, uuid.UUID(job_id), Decimal(estimate), float(ttl)))


if __name__ == "__main__":
    if sys.argv[5:] == ["commit"]:
        hold_then_commit()
    else:
        hold_until_killed()
