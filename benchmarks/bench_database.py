"""DatabaseClient against raw asyncpg on the same pool and the same query (issue 3: at least 0.9 of raw).

A primary-key read of a random job among 1,000 (``select * from public.jobs where id = $1``), from 64
concurrent tasks, 20,000 operations a round: ``DatabaseClient.fetchrow`` against ``client.pool.fetchrow``,
and the same for ``fetch`` and ``execute``. Both sides share one pool (opened by ``init_database`` with the
default settings), so they pay the same acquire, reset-on-release and server work; the difference is what
the client adds (timeouts, transaction lookup, error translation). Rounds are interleaved, the order reversed every
other round (ABBA), so the machine's noise and the cost of going first fall on both alike; the best round of
each is reported with the ratio of bests and the median ratio of back-to-back pairs, never asserted as a timing.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable

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

__all__ = ["main"]

JOBS = 1_000
OPERATIONS = 10_000
WARM_UP = 1_000
ROUNDS = 8
TARGET = 0.9
QUERY = "select * from public.jobs where id = $1"


Method = Callable[..., Awaitable[object]]


def _query(method: Method) -> Callable[[uuid.UUID], Awaitable[object]]:
    """Return QUERY for one job id through ``method``."""
    return lambda job_id: method(QUERY, job_id)


async def _measure() -> tuple[int, dict[str, Rates]]:
    async with scratch_database() as dsn, open_client(dsn) as db:
        job_ids = await seed_jobs(db, JOBS)
        ids: list[uuid.UUID] = random.choices(job_ids, k=OPERATIONS)
        pool = db.pool
        pairs: dict[str, tuple[Method, Method]] = {
            "fetchrow": (db.fetchrow, pool.fetchrow),
            "fetch": (db.fetch, pool.fetch),
            "execute": (db.execute, pool.execute),
        }
        results: dict[str, Rates] = {}
        for name, (ours, raw) in pairs.items():
            for warm_up in (ours, raw):  # every pool connection opened, the statement prepared on each
                await ops_per_second(_query(warm_up), ids[:WARM_UP])
            results[name] = await interleaved(
                ROUNDS, {"ours": a_round(_query(ours), ids), "raw": a_round(_query(raw), ids)}
            )
        return pool.get_max_size(), results


def main() -> str:
    """Measure the three methods and return a Markdown report."""
    pool_size, results = asyncio.run(_measure())
    rows = [
        f"| PK read of a random job among {JOBS:,}, {TASKS} tasks, {OPERATIONS:,} ops a round, {ROUNDS} ABBA "
        f"rounds, one pool of {pool_size} | DatabaseClient ops/s (best) | asyncpg pool ops/s (best) "
        "| ours / raw, best / best | median of paired rounds |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, rates in results.items():
        ratio = rates.ratio("ours", "raw")
        target = "" if method != "fetchrow" else (" (target >= 0.9)" if ratio >= TARGET else " **below 0.9**")
        rows.append(
            f"| `{method}` | {rates.best('ours'):,.0f} | {rates.best('raw'):,.0f} | {ratio:.3f}{target} "
            f"| {rates.median_paired_ratio('ours', 'raw'):.2f} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(main())
