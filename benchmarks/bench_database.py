"""DatabaseClient against raw asyncpg on the same pool and the same query (issue 3: at least 0.9 of raw).

A primary-key read of a random job among 1,000 (``select * from public.jobs where id = $1``), from 64
concurrent tasks, 20,000 operations a round: ``DatabaseClient.fetchrow`` against ``client.pool.fetchrow``,
and the same for ``fetch`` and ``execute``. Both sides share one pool (opened by ``init_database`` with the
default settings), so they pay the same acquire, reset-on-release and server work; the difference is what
the client adds (timeouts, transaction lookup, error translation). Rounds are interleaved (ABAB...) so the
machine's noise falls on both; the best round of each is reported, as a ratio, never asserted as a timing.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable

from benchmarks._postgres import TASKS, best_of_interleaved, open_client, ops_per_second, scratch_database, seed_jobs

__all__ = ["main"]

JOBS = 1_000
OPERATIONS = 20_000
ROUNDS = 5
TARGET = 0.9
QUERY = "select * from public.jobs where id = $1"


Method = Callable[..., Awaitable[object]]


def _round(method: Method, ids: list[uuid.UUID]) -> Callable[[], Awaitable[float]]:
    """Return a round of QUERY through ``method``, one call per id."""

    async def run() -> float:
        return await ops_per_second(lambda job_id: method(QUERY, job_id), ids)

    return run


async def _measure() -> tuple[int, dict[str, tuple[float, float]]]:
    async with scratch_database() as dsn, open_client(dsn) as db:
        job_ids = await seed_jobs(db, JOBS)
        ids: list[uuid.UUID] = random.choices(job_ids, k=OPERATIONS)
        pool = db.pool
        pairs: dict[str, tuple[Method, Method]] = {
            "fetchrow": (db.fetchrow, pool.fetchrow),
            "fetch": (db.fetch, pool.fetch),
            "execute": (db.execute, pool.execute),
        }
        results: dict[str, tuple[float, float]] = {}
        for name, (ours, raw) in pairs.items():
            contenders = {"ours": _round(ours, ids), "raw": _round(raw, ids)}
            for warm_up in contenders.values():  # every pool connection opened, the statement prepared on each
                await warm_up()
            best = await best_of_interleaved(ROUNDS, contenders)
            results[name] = (best["ours"], best["raw"])
        return pool.get_max_size(), results


def main() -> str:
    """Measure the three methods and return a Markdown report."""
    pool_size, results = asyncio.run(_measure())
    rows = [
        f"| PK read of a random job among {JOBS:,}, {TASKS} tasks, {OPERATIONS:,} ops, best of {ROUNDS} "
        f"interleaved rounds, one pool of {pool_size} | DatabaseClient ops/s | asyncpg pool ops/s | ours / raw |",
        "|---|---:|---:|---:|",
    ]
    for method, (ours, raw) in results.items():
        ratio = ours / raw
        verdict = "" if method != "fetchrow" else (" (target >= 0.9)" if ratio >= TARGET else " **below 0.9**")
        rows.append(f"| `{method}` | {ours:,.0f} | {raw:,.0f} | {ratio:.2f}{verdict} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(main())
