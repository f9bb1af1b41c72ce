"""The stage step at the wire's limit (issue 24), side by side with a minimal client on one raw asyncpg connection.

A stage step is: reserve, the paid call (nothing here), commit, progress, one log line. The project runs it as
a module does (``CostTracker.reserve`` / ``commit``, ``JobRepository.update_progress``, a ``logging`` line);
the minimal client sends the same three statements on one raw ``asyncpg.connect()`` connection.

- **Round trips**, counted on the wire by a proxy (benchmarks/_wire.py: Sync, Flush and Query messages),
  directly and through pgbouncer in transaction mode with ``DB_STATEMENT_CACHE_SIZE=0``.
- **Client CPU per step** (``time.process_time``), steps run one after another, ABAB rounds.
- **get_budget** at 100k committed reservations on one job against a job with 10, and on an empty job on a
  connection whose cached plan was made for the hot one against a fresh connection.
- **DatabaseClient.transaction()** (an update and an insert) against raw asyncpg on the same pool, ABBA.

Nothing is asserted; the figures go in benchmarks/README.md.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from benchmarks._postgres import TASKS, a_round, interleaved, open_client, scratch_database, seed_jobs
from benchmarks._wire import wire_counter
from shared.cost_tracking import CostTracker
from shared.database import DatabaseClient
from shared.jobs import JobRepository
from shared.models import StageName

__all__ = ["main"]

CLIPS = StageName.CLIP_GENERATION
STEPS = 300
CPU_ROUNDS = 6
BUDGET_CALLS = 300
HOT = 100_000
TX_OPERATIONS = 3_000
TX_ROUNDS = 6
_log = logging.getLogger("bench.stage_step")
CPU_LABELS = {
    "project": "project, a pooled connection per statement",
    "held": "project inside `db.hold_connection()` (one connection for the step)",
    "pool": "raw asyncpg pool, `pool.fetchrow` (its default reset)",
    "minimal": "minimal: one raw asyncpg connection",
}

RESERVE = "select * from public.reserve_job_budget($1, $2, $3, $4, $5, $6, $7, $8, $9)"
COMMIT = "select * from public.commit_job_reservation($1, $2)"
PROGRESS = """
update public.jobs set status = 'processing', current_stage = $2, progress = $3, estimated_remaining = $4
 where id = $1 and status = any($5::text[])
returning *
"""


def _log_step(job: uuid.UUID, progress: int) -> None:
    _log.info("stage step done", extra={"job_id": str(job), "progress": progress})


async def _project_step(db: DatabaseClient, job: uuid.UUID, progress: int) -> None:
    tracker = CostTracker(db, default_budget=Decimal(10_000_000), reservation_ttl=timedelta(minutes=15))
    async with tracker.reserve(job, CLIPS, "replicate", "0.01") as reservation:
        await reservation.commit("0.01")
    await JobRepository(db).update_progress(job, CLIPS, progress % 100)
    _log_step(job, progress)


async def _minimal_step(connection: asyncpg.Connection, job: uuid.UUID, progress: int) -> None:
    row = await connection.fetchrow(
        RESERVE, uuid.uuid4(), job, CLIPS.value, "replicate", Decimal("0.01"), None, Decimal(10_000_000),
        timedelta(minutes=15), None,
    )  # fmt: skip
    assert row is not None  # noqa: S101 - the job exists
    await connection.fetchrow(COMMIT, row["reservation_id"], Decimal("0.01"))
    await connection.fetchrow(PROGRESS, job, CLIPS.value, progress % 100, None, ["queued", "processing"])
    _log_step(job, progress)


async def _held_step(db: DatabaseClient, job: uuid.UUID, progress: int) -> None:
    async with db.hold_connection():
        await _project_step(db, job, progress)


async def _pool_step(pool: asyncpg.Pool, job: uuid.UUID, progress: int) -> None:
    row = await pool.fetchrow(
        RESERVE, uuid.uuid4(), job, CLIPS.value, "replicate", Decimal("0.01"), None, Decimal(10_000_000),
        timedelta(minutes=15), None,
    )  # fmt: skip
    assert row is not None  # noqa: S101 - the job exists
    await pool.fetchrow(COMMIT, row["reservation_id"], Decimal("0.01"))
    await pool.fetchrow(PROGRESS, job, CLIPS.value, progress % 100, None, ["queued", "processing"])
    _log_step(job, progress)


async def _round_trips(dsn: str, job: uuid.UUID, *, pooled: bool) -> dict[str, int]:
    """Return the round trips of one warm step, the project's and the minimal client's."""
    upstream = urlsplit(dsn).port or 5432
    bouncer: Any = None
    if pooled:
        from tests.fixtures.servers import start_pgbouncer  # noqa: PLC0415 - the pooler only for this figure

        bouncer = start_pgbouncer(pool_mode="transaction", pool_size=2, upstream_port=upstream)
        upstream = bouncer.port
    try:
        async with wire_counter(upstream) as counter:
            values: dict[str, Any] = {"db_pool_min_size": 1, "db_pool_max_size": 1}
            if pooled:
                values["db_statement_cache_size"] = 0
            counts: dict[str, int] = {}
            async with open_client(counter.dsn(dsn), **values) as db:
                for n in range(2):
                    await _project_step(db, job, n)
                counter.reset()
                await _project_step(db, job, 3)
                counts["project"] = counter.round_trips
            connection = await asyncpg.connect(counter.dsn(dsn), statement_cache_size=0 if pooled else 100)
            try:
                for n in range(2):
                    await _minimal_step(connection, job, n)
                counter.reset()
                await _minimal_step(connection, job, 3)
                counts["raw asyncpg"] = counter.round_trips
            finally:
                await connection.close()
            return counts
    finally:
        if bouncer is not None:
            bouncer.stop()


async def _cpu_per_step(dsn: str, job: uuid.UUID) -> dict[str, list[float]]:
    """Return each round's client CPU per step in microseconds, project and minimal, ABAB."""
    results: dict[str, list[float]] = {name: [] for name in CPU_LABELS}
    async with open_client(dsn, db_pool_min_size=1, db_pool_max_size=1) as db:
        connection = await asyncpg.connect(dsn)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        try:
            steps: dict[str, Callable[[int], Awaitable[None]]] = {
                "project": lambda n: _project_step(db, job, n),
                "held": lambda n: _held_step(db, job, n),
                "pool": lambda n: _pool_step(pool, job, n),
                "minimal": lambda n: _minimal_step(connection, job, n),
            }
            for step in steps.values():
                for n in range(20):
                    await step(n)
            order = list(steps)
            for _ in range(CPU_ROUNDS):
                for name in order:
                    started = time.process_time()
                    for n in range(STEPS):
                        await steps[name](n)
                    results[name].append((time.process_time() - started) / STEPS * 1e6)
                order.reverse()
        finally:
            await connection.close()
            await pool.close()
    return results


async def _median_ms(call: Callable[[], Awaitable[object]], times: int = BUDGET_CALLS) -> float:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


async def _budgets(dsn: str) -> dict[str, float]:
    """Return get_budget's median milliseconds at 100k and 10 reservations, and empty-after-hot vs fresh."""
    async with open_client(dsn, db_pool_min_size=1, db_pool_max_size=1) as db:
        hot, small, empty = await seed_jobs(db, 3)
        for job, count in ((hot, HOT), (small, 10)):
            await db.execute(
                """
                insert into public.job_cost_reservations
                       (job_id, stage_name, api_name, estimated_cost, actual_cost, status, expires_at)
                select $1, 'clip_generation', 'replicate', 0.01, 0.01, 'committed', now()
                  from generate_series(1, $2)
                """,
                job,
                count,
            )
        await db.execute("analyze")
        tracker = CostTracker(db, default_budget=Decimal(50), reservation_ttl=timedelta(minutes=15))
        figures = {
            "at 100k": await _median_ms(lambda: tracker.get_budget(hot)),
            "at 10": await _median_ms(lambda: tracker.get_budget(small)),
        }
        # The one pooled connection has run the statement on the hot job many times: its plan is settled.
        figures["empty job after the hot one"] = await _median_ms(lambda: tracker.get_budget(empty))
    async with open_client(dsn, db_pool_min_size=1, db_pool_max_size=1) as fresh:
        tracker = CostTracker(fresh, default_budget=Decimal(50), reservation_ttl=timedelta(minutes=15))
        await tracker.get_budget(empty)  # prepared once, as on the other connection
        figures["empty job, fresh connection"] = await _median_ms(lambda: tracker.get_budget(empty))
    return figures


async def _transactions(dsn: str) -> dict[str, list[float]]:
    """Return transactions per second (an update and an insert each), DatabaseClient against raw asyncpg, ABBA."""
    async with open_client(dsn) as db:
        jobs = await seed_jobs(db, 1_000)
        pool = db.pool
        args = [(job, uuid.uuid4()) for job in jobs * (TX_OPERATIONS // len(jobs))]

        async def ours(arg: tuple[uuid.UUID, uuid.UUID]) -> None:
            async with db.transaction():
                await db.execute("update public.jobs set progress = (progress + 1) % 100 where id = $1", arg[0])
                await db.execute(
                    "insert into public.job_costs (id, job_id, stage_name, api_name, cost) "
                    "values ($2, $1, 'composition', 'x', 0.01)",
                    *arg,
                )

        async def raw(arg: tuple[uuid.UUID, uuid.UUID]) -> None:
            async with pool.acquire() as connection, connection.transaction():
                await connection.execute("update public.jobs set progress = (progress + 1) % 100 where id = $1", arg[0])
                await connection.execute(
                    "insert into public.job_costs (id, job_id, stage_name, api_name, cost) "
                    "values ($2, $1, 'composition', 'x', 0.01)",
                    *arg,
                )

        def fresh(operation: Callable[[tuple[uuid.UUID, uuid.UUID]], Awaitable[None]]) -> Any:
            async def run() -> float:
                return await a_round(operation, [(job, uuid.uuid4()) for job, _ in args])()

            return run

        for warm in (ours, raw):
            await fresh(warm)()
        rates = await interleaved(TX_ROUNDS, {"ours": fresh(ours), "raw": fresh(raw)})
        return rates.rounds


async def _measure() -> dict[str, Any]:
    async with scratch_database(synchronous_commit=False) as dsn:
        async with open_client(dsn) as db:
            (job,) = await seed_jobs(db, 1, budget_limit="10000000")
        figures: dict[str, Any] = {"direct": await _round_trips(dsn, job, pooled=False)}
        if shutil.which("pgbouncer") or shutil.which("/usr/sbin/pgbouncer"):
            figures["pooled"] = await _round_trips(dsn, job, pooled=True)
        figures["cpu"] = await _cpu_per_step(dsn, job)
        figures["budget"] = await _budgets(dsn)
        figures["transactions"] = await _transactions(dsn)
        return figures


def main() -> str:
    """Measure the stage step and return a Markdown report."""
    logging.getLogger("bench").setLevel(logging.INFO)
    figures = asyncio.run(_measure())
    rows = [
        "| Stage step round trips (wire proxy) | project | raw asyncpg, one connection |",
        "|---|---:|---:|",
        f"| direct | {figures['direct']['project']} | {figures['direct']['raw asyncpg']} |",
    ]
    if "pooled" in figures:
        pooled = figures["pooled"]
        rows.append(
            f"| pgbouncer transaction mode, statement cache 0 | {pooled['project']} | {pooled['raw asyncpg']} |"
        )
    cpu = figures["cpu"]
    rows += [
        "",
        f"| Client CPU per step, {CPU_ROUNDS} rounds of {STEPS} steps, order reversed each round | µs (best) "
        "| / minimal, best | / minimal, median of paired rounds (range) |",
        "|---|---:|---:|---:|",
    ]
    for name, label in CPU_LABELS.items():
        ratios = [a / b for a, b in zip(cpu[name], cpu["minimal"], strict=True)]
        rows.append(
            f"| {label} | {min(cpu[name]):,.0f} | {min(cpu[name]) / min(cpu['minimal']):.2f} "
            f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )
    rows.append("\nTarget: <= 1.5 x the minimal client.")
    budget = figures["budget"]
    rows += [
        "",
        "| get_budget, median ms | ms | ratio |",
        "|---|---:|---:|",
        f"| 100k committed reservations on the job | {budget['at 100k']:.3f} "
        f"| {budget['at 100k'] / budget['at 10']:.2f} x at 10 (target <= 1.3) |",
        f"| 10 reservations | {budget['at 10']:.3f} | |",
        f"| empty job after the hot one, same connection | {budget['empty job after the hot one']:.3f} "
        f"| {budget['empty job after the hot one'] / budget['empty job, fresh connection']:.2f} x fresh "
        "(target <= 1.3) |",
        f"| empty job, a connection that never saw the hot one | {budget['empty job, fresh connection']:.3f} | |",
    ]
    tx = figures["transactions"]
    tx_ratios = [a / b for a, b in zip(tx["ours"], tx["raw"], strict=True)]
    rows += [
        "",
        f"| Transactions (update + insert), {TASKS} tasks, {TX_ROUNDS} ABBA rounds | ours /s | raw asyncpg /s "
        "| ours / raw |",
        "|---|---:|---:|---:|",
        f"| best | {max(tx['ours']):,.0f} | {max(tx['raw']):,.0f} | {max(tx['ours']) / max(tx['raw']):.2f} "
        "(target >= 0.95) |",
        f"| median of paired rounds (range {min(tx_ratios):.2f}-{max(tx_ratios):.2f}) | | "
        f"| {statistics.median(tx_ratios):.2f} |",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    print(main())
