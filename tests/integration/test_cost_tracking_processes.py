"""Budgets hold across processes: 4 worker processes against one job, and a connection lost after a commit."""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from decimal import Decimal
from typing import TypeVar

import pytest

from shared.cost_tracking import CostTracker
from shared.database import DatabaseClient, init_database
from shared.jobs import JobRepository
from shared.models import StageName
from tests.fixtures.core import MakeSettings
from tests.fixtures.postgres import MakeUser
from tests.integration import cost_workers

pytestmark = pytest.mark.slow
T = TypeVar("T")
PROCESSES = 4


async def new_job(db: DatabaseClient, make_user: MakeUser, budget: Decimal) -> uuid.UUID:
    job = await JobRepository(db).create_job(
        user_id=await make_user(), audio_url="a.mp3", user_prompt="p", budget_limit=budget
    )
    return job.id


async def in_processes(function: Callable[..., T], *args: object) -> list[T]:
    """Run ``function(*args, seed)`` in each of the worker processes at once."""
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [loop.run_in_executor(pool, functools.partial(function, *args, seed)) for seed in range(PROCESSES)]
        return list(await asyncio.gather(*futures))


async def test_reservations_from_four_processes_never_pass_the_limit(
    db: DatabaseClient, make_user: MakeUser, pg_dsn: str
) -> None:
    limit = Decimal(100)
    job = await new_job(db, make_user, limit)

    results = await in_processes(cost_workers.reserve_and_commit, pg_dsn, job, 50)

    reported = sum((r[0] for r in results), start=Decimal(0))
    committed = sum(r[1] for r in results)
    refused = sum(r[2] for r in results)
    total = await db.fetchval("select total_cost from jobs where id = $1", job)
    rows_sum = await db.fetchval("select coalesce(sum(cost), 0) from job_costs where job_id = $1", job)
    rows = await db.fetchval("select count(*) from job_costs where job_id = $1", job)
    assert total <= limit
    assert total == rows_sum == reported
    assert PROCESSES * 50 == committed + refused
    assert committed == rows
    assert refused > 0  # the limit was reached, so the test exercised refusals
    assert 0 == await db.fetchval("select count(*) from job_cost_reservations where status = 'active'")


async def test_track_cost_from_four_processes_adds_up_exactly(
    db: DatabaseClient, make_user: MakeUser, pg_dsn: str
) -> None:
    job = await new_job(db, make_user, Decimal(1000))
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
        sent = await asyncio.gather(
            *(loop.run_in_executor(pool, cost_workers.track_many, pg_dsn, job, 250) for _ in range(PROCESSES))
        )
    assert 1000 == sum(sent)
    assert Decimal("10.0000") == await db.fetchval("select total_cost from jobs where id = $1", job)
    assert 1000 == await db.fetchval("select count(*) from job_costs where job_id = $1", job)


class DroppingProxy:
    """A TCP proxy to PostgreSQL that, once armed, drops the client's connection instead of relaying an answer."""

    def __init__(self) -> None:
        self.armed = False
        self.dropped = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", 5432)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answers: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if answers and self.armed:
                        # The server has committed and answered; the client never hears it.
                        self.armed = False
                        self.dropped += 1
                        break
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                for stream in (client_writer, upstream_writer):
                    stream.close()

        await asyncio.gather(
            pipe(client_reader, upstream_writer, answers=False), pipe(upstream_reader, client_writer, answers=True)
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def proxy() -> AsyncIterator[DroppingProxy]:
    instance = DroppingProxy()
    await instance.start()
    yield instance
    await instance.stop()


async def test_answer_lost_after_commit_then_retried_with_the_same_key_counts_once(
    make_settings: MakeSettings,
    pg_dsn: str,
    proxy: DroppingProxy,
    make_user: MakeUser,
    db: DatabaseClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert proxy.server is not None
    port = proxy.server.sockets[0].getsockname()[1]
    database = pg_dsn.rsplit("/", 1)[1]
    settings = make_settings(
        database_url=f"postgresql://postgres@127.0.0.1:{port}/{database}", db_pool_min_size=1, db_pool_max_size=1
    )
    job = await new_job(db, make_user, Decimal(100))
    async for proxied in init_database(settings):
        tracker = CostTracker(proxied, default_budget=Decimal(100), reservation_ttl=timedelta(minutes=15))
        await tracker.track_cost(job, StageName.CLIP_GENERATION, "replicate", 1, idempotency_key="warm-up")
        proxy.armed = True
        with caplog.at_level(logging.WARNING, logger="shared.database"):
            row = await tracker.track_cost(job, StageName.CLIP_GENERATION, "replicate", 2, idempotency_key="clip-7")
    assert 1 == proxy.dropped
    assert any("connection lost" in record.getMessage() for record in caplog.records)
    assert Decimal(2) == row.cost
    assert Decimal(3) == await db.fetchval("select total_cost from jobs where id = $1", job)
    assert 1 == await db.fetchval("select count(*) from job_costs where idempotency_key = 'clip-7'")


async def test_reserve_commit_and_track_cost_on_one_hot_job_never_deadlock(
    db: DatabaseClient, make_user: MakeUser, make_settings: MakeSettings, pg_dsn: str
) -> None:
    """A commit or track_cost that upgraded its row lock while a reservation waited would deadlock (40P01)."""
    job = await new_job(db, make_user, Decimal(100_000))
    deadlocks = "select deadlocks from pg_stat_database where datname = current_database()"
    before = await db.fetchval(deadlocks)
    async for wide in init_database(make_settings(database_url=pg_dsn, db_pool_min_size=40, db_pool_max_size=40)):
        tracker = CostTracker(wide, default_budget=Decimal(50), reservation_ttl=timedelta(minutes=15))
        await asyncio.gather(*(spend(tracker, job, n) for n in range(1500)))
    spent = await db.fetchval("select total_cost from jobs where id = $1", job)
    assert Decimal(500) * Decimal("0.01") + Decimal(500) * Decimal("0.5") == spent
    await asyncio.sleep(0.6)  # the statistics collector reports with a short delay
    assert 0 == await db.fetchval(deadlocks) - before  # the client retries a deadlock, so count them at the source


async def spend(tracker: CostTracker, job: uuid.UUID, n: int) -> None:
    """Record a cost directly, or reserve and commit, or reserve and release, by turns."""
    if n % 3 == 0:
        await tracker.track_cost(job, StageName.PROMPT_GENERATION, "openai", Decimal("0.01"))
        return
    async with tracker.reserve(job, StageName.CLIP_GENERATION, "replicate", Decimal(1)) as reservation:
        if n % 3 == 1:
            await reservation.commit(Decimal("0.5"))
