"""CostTracker against the raw SQL it runs, its round trips counted, and reserve + commit on one hot row (issue 4).

1. ``track_cost`` from 64 concurrent tasks against the very statement it sends, run through ``pool.fetchrow``
   on the same pool with the same arguments (at least 0.8 of raw). The statement is captured from the wire
   (a query logger on the connection) while ``track_cost`` runs, never copied by hand, so it cannot drift.
   Costs land on random jobs among 1,000 (the client's overhead, not one row's lock), then all on one hot job.
2. Round trips per call, counted: a query logger on the only connection of a one-connection pool records every
   statement sent; the pool's reset on release (``pg_advisory_unlock_all(); CLOSE ALL; ...``) is shown apart.
3. Reserve + commit pairs per second on one hot job (budget high enough never to refuse), against the two
   function calls sent raw.

The scratch database runs with ``synchronous_commit = off``: a commit does not wait for the WAL flush, so
the figures show the client and the statements rather than this machine's disk (with a flush on every commit
both sides would wait on the disk alike and the ratio would look better than the client is). Rounds are
interleaved, the order reversed every other round; the best of each is reported as a ratio, never asserted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal

import asyncpg
from asyncpg.connection import LoggedQuery

from benchmarks._postgres import (
    TASKS,
    Rates,
    a_round,
    interleaved,
    open_client,
    ops_per_second,
    scratch_database,
    seed_jobs,
)
from shared.cost_tracking import CostTracker
from shared.models import StageName

__all__ = ["main"]

JOBS = 1_000
CALLS = 4_000
PAIRS = 2_000
WARM_UP = 500
ROUNDS = 6
TARGET = 0.8
STAGE = StageName.CLIP_GENERATION
API = "replicate"
COST = Decimal("0.0100")
HOT_BUDGET = "99999999.0000"  # the most numeric(12, 4) holds: the hot job never refuses a reservation
TTL = timedelta(minutes=15)
DEFAULT_BUDGET = Decimal("50.0000")


Call = Callable[[uuid.UUID], Awaitable[object]]


class StatementLog:
    """Record every statement a connection sends (asyncpg's query logger runs once per statement)."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def __call__(self, record: LoggedQuery) -> None:
        """Keep the statement's text."""
        self.queries.append(record.query)

    def take(self) -> list[str]:
        """Return what was recorded since the last take, and start afresh."""
        taken, self.queries = self.queries, []
        return taken


class Deadlocks(logging.Handler):
    """Count deadlocks on both sides: raw statements re-sent here, DatabaseClient's retries seen in its log."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(logging.WARNING)
        self._pool = pool
        self.raw = 0
        self.ours = 0

    def emit(self, record: logging.LogRecord) -> None:
        """Count a retry of DatabaseClient's whose cause was a deadlock."""
        if "deadlock" in str(getattr(record, "error", "")).lower():
            self.ours += 1

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        """Run ``query`` on the pool, sent again after a deadlock as DatabaseClient does (here without backoff)."""
        while True:
            try:
                return await self._pool.fetchrow(query, *args)
            except asyncpg.DeadlockDetectedError:
                self.raw += 1


async def _round_trips(dsn: str) -> tuple[str, dict[str, tuple[float, float]]]:
    """Return the statement track_cost sends, and (statements, pool resets) per call of each operation."""
    async with open_client(dsn, db_pool_min_size=1, db_pool_max_size=1) as db:
        (job_id,) = await seed_jobs(db, 1, budget_limit=HOT_BUDGET)
        tracker = CostTracker(db, default_budget=DEFAULT_BUDGET, reservation_ttl=TTL)
        log = StatementLog()
        async with db.pool.acquire() as connection:  # the pool's only connection: it logs every call below
            reset_query = connection.get_reset_query()
            connection.add_query_logger(log)

        async def pair() -> None:
            async with tracker.reserve(job_id, STAGE, API, COST) as reservation:
                await reservation.commit(COST)

        async def released() -> None:
            async with tracker.reserve(job_id, STAGE, API, COST):
                pass  # the paid call failed before any money was spent: the block leaves without a commit

        operations: dict[str, Callable[[], Awaitable[object]]] = {
            "`track_cost`": lambda: tracker.track_cost(job_id, STAGE, API, COST),
            "`reserve` + `commit`": pair,
            "`reserve`, released": released,
        }
        await operations["`track_cost`"]()
        track_cost_statement = next(query for query in log.queries if "insert into public.job_costs" in query)
        calls = 20
        counts: dict[str, tuple[float, float]] = {}
        for name, operation in operations.items():
            await operation()  # warm-up: the statements prepared, so no Parse round trip is counted
            log.take()
            for _ in range(calls):
                await operation()
            sent = log.take()
            resets = sum(query == reset_query for query in sent)
            counts[name] = ((len(sent) - resets) / calls, resets / calls)
        return track_cost_statement, counts


async def _throughput(dsn: str, statement: str) -> tuple[int, dict[str, Rates], dict[str, tuple[int, int]]]:
    async with open_client(dsn) as db:
        tracker = CostTracker(db, default_budget=DEFAULT_BUDGET, reservation_ttl=TTL)
        pool = db.pool
        deadlocks = Deadlocks(pool)
        logging.getLogger("shared.database").addHandler(deadlocks)  # also keeps its retry warnings off stderr
        spread = await seed_jobs(db, JOBS, budget_limit=HOT_BUDGET)
        (hot,) = await seed_jobs(db, 1, budget_limit=HOT_BUDGET)

        async def ours(job_id: uuid.UUID) -> object:
            return await tracker.track_cost(job_id, STAGE, API, COST)

        async def raw(job_id: uuid.UUID) -> object:
            # With a key made per call, as track_cost makes one when it is given none.
            return await deadlocks.fetchrow(statement, job_id, STAGE.value, API, COST, f"auto:{uuid.uuid4()}")

        async def ours_pair(job_id: uuid.UUID) -> None:
            async with tracker.reserve(job_id, STAGE, API, COST) as reservation:
                await reservation.commit(COST)

        async def raw_pair(job_id: uuid.UUID) -> None:
            row = await deadlocks.fetchrow(
                "select * from public.reserve_job_budget($1, $2, $3, $4, $5, $6, $7, $8)",
                *(uuid.uuid4(), job_id, STAGE.value, API, COST, None, DEFAULT_BUDGET, TTL),
            )
            assert row is not None  # noqa: S101  # the hot job exists and its budget never refuses
            await deadlocks.fetchrow("select * from public.commit_job_reservation($1, $2)", row["reservation_id"], COST)

        workloads: dict[str, tuple[Call, Call, list[uuid.UUID]]] = {
            f"`track_cost`, random job among {JOBS:,}": (ours, raw, random.choices(spread, k=CALLS)),
            "`track_cost`, one hot job": (ours, raw, [hot] * CALLS),
            "`reserve` + `commit` pairs, one hot job": (ours_pair, raw_pair, [hot] * PAIRS),
        }
        results: dict[str, Rates] = {}
        met: dict[str, tuple[int, int]] = {}
        for name, (mine, theirs, job_ids) in workloads.items():
            for warm_up in (mine, theirs):
                await ops_per_second(warm_up, job_ids[:WARM_UP])
            deadlocks.raw = deadlocks.ours = 0
            results[name] = await interleaved(ROUNDS, {"ours": a_round(mine, job_ids), "raw": a_round(theirs, job_ids)})
            met[name] = (deadlocks.ours, deadlocks.raw)
        logging.getLogger("shared.database").removeHandler(deadlocks)
        return pool.get_max_size(), results, met


Measured = tuple[dict[str, tuple[float, float]], int, dict[str, Rates], dict[str, tuple[int, int]]]


async def _measure() -> Measured:
    async with scratch_database(synchronous_commit=False) as dsn:
        statement, counts = await _round_trips(dsn)
        return (counts, *await _throughput(dsn, statement))


def main() -> str:
    """Measure throughput and round trips and return a Markdown report."""
    counts, pool_size, results, deadlocks = asyncio.run(_measure())
    rows = [
        f"| {TASKS} tasks, best of {ROUNDS} ABBA rounds, one pool of {pool_size}, synchronous_commit off "
        "| CostTracker /s (best) | raw SQL via asyncpg pool /s (best) | ours / raw, best / best "
        "| median of paired rounds | deadlocks met (ours / raw) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rates in results.items():
        ratio = rates.ratio("ours", "raw")
        target = "" if "pairs" in name else (" (target >= 0.8)" if ratio >= TARGET else " **below 0.8**")
        rows.append(
            f"| {name} | {rates.best('ours'):,.0f} | {rates.best('raw'):,.0f} | {ratio:.3f}{target} "
            f"| {rates.median_paired_ratio('ours', 'raw'):.2f} | {deadlocks[name][0]} / {deadlocks[name][1]} |"
        )
    rows += [
        "",
        "| Round trips per call (statements counted by a query logger on the pool's one connection) "
        "| statements | + pool resets on release |",
        "|---|---:|---:|",
    ]
    rows += [f"| {name} | {statements:g} | {resets:g} |" for name, (statements, resets) in counts.items()]
    return "\n".join(rows)


if __name__ == "__main__":
    print(main())
