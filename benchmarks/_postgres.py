"""What the data-layer benchmarks share: a scratch database, concurrent load, interleaved rounds.

Each benchmark runs in a database of its own (``vg_bench_<random>``) on the machine's PostgreSQL
(``BENCH_DATABASE_URL``, default the local one), migrated with :func:`shared.migrations.migrate` and dropped
at the end, so it never touches another database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.config import Settings
from shared.database import DatabaseClient, init_database
from shared.migrations import migrate

__all__ = [
    "ADMIN_DSN",
    "TASKS",
    "Rates",
    "a_round",
    "interleaved",
    "open_client",
    "ops_per_second",
    "scratch_database",
    "seed_jobs",
]

ADMIN_DSN = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TASKS = 64
T = TypeVar("T")


@contextlib.asynccontextmanager
async def scratch_database(*, synchronous_commit: bool = True) -> AsyncIterator[str]:
    """Create and migrate a database of this run's own, yield its DSN, and drop it afterwards.

    ``synchronous_commit=False`` takes the WAL flush out of each write's commit, so that a write benchmark
    measures the client and the statement rather than this machine's disk.
    """
    name = f"vg_bench_{uuid.uuid4().hex[:12]}"
    dsn = urlunsplit(urlsplit(ADMIN_DSN)._replace(path=f"/{name}"))
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'create database "{name}"')
        try:
            if not synchronous_commit:
                await admin.execute(f'alter database "{name}" set synchronous_commit = off')
            await migrate(dsn)
            yield dsn
        finally:
            await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def open_client(dsn: str, **values: Any) -> AsyncIterator[DatabaseClient]:
    """Yield a DatabaseClient opened the way the container opens it (``init_database``), closed afterwards."""
    # init_database is the container's Resource generator; aclose() is its shutdown.
    settings = Settings(_env_file=None, database_url=dsn, **values)
    opened = init_database(settings)
    db = await anext(opened)
    try:
        yield db
    finally:
        await opened.aclose()


async def seed_jobs(db: DatabaseClient, count: int, *, budget_limit: str | None = None) -> list[uuid.UUID]:
    """Insert one user and ``count`` queued jobs of theirs; return the job ids."""
    user_id = uuid.uuid4()
    await db.execute("insert into auth.users (id) values ($1)", user_id)
    rows = await db.fetch(
        """
        insert into public.jobs (user_id, audio_url, user_prompt, budget_limit)
        select $1, 'https://example.com/song-' || n || '.mp3', 'a neon city at night', $3::numeric
          from generate_series(1, $2) as n
        returning id
        """,
        user_id,
        count,
        budget_limit,
    )
    return [row["id"] for row in rows]


async def ops_per_second(operation: Callable[[T], Awaitable[object]], arguments: Sequence[T]) -> float:
    """Run ``operation`` once per argument from TASKS concurrent tasks; return the operations per second."""

    async def worker(first: int) -> None:
        for index in range(first, len(arguments), TASKS):
            await operation(arguments[index])

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:  # one failure cancels the others, rather than leaving them running
        for first in range(TASKS):
            group.create_task(worker(first))
    return len(arguments) / (time.perf_counter() - started)


def a_round(operation: Callable[[T], Awaitable[object]], arguments: Sequence[T]) -> Callable[[], Awaitable[float]]:
    """Return a round to run later: ``operation`` once per argument, its rate in operations per second."""
    return functools.partial(ops_per_second, operation, arguments)


@dataclass(frozen=True, slots=True)
class Rates:
    """Every round's rate of each contender, in the order they ran."""

    rounds: dict[str, list[float]]

    def best(self, name: str) -> float:
        """Return the contender's best round."""
        return max(self.rounds[name])

    def ratio(self, name: str, baseline: str) -> float:
        """Return best against best: what the machine allowed each at its quietest."""
        return self.best(name) / self.best(baseline)

    def median_paired_ratio(self, name: str, baseline: str) -> float:
        """Return the median of the round-by-round ratios (each pair ran back to back: drift cancels)."""
        return statistics.median(a / b for a, b in zip(self.rounds[name], self.rounds[baseline], strict=True))


async def interleaved(rounds: int, contenders: dict[str, Callable[[], Awaitable[float]]]) -> Rates:
    """Run each contender once per round, the order reversed every other round (ABBA), and keep every rate.

    Reversing the order cancels what running first or second costs (a pool just released, a collection).
    """
    results: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for _ in range(rounds):
        for name in order:
            results[name].append(await contenders[name]())
        order.reverse()
    return Rates(results)
