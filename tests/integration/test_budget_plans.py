"""The budget statements read the rows in flight, never a job's retained reservations, under any plan.

Issue 24: ``get_budget`` joined every reservation a job keeps (30 days), 127.6 ms at 100k on one job, and once
PostgreSQL had cached the generic plan made on that hot job, an empty job paid for the sequential scan too.
Here the data is skewed the same way (one job with 100k committed reservations beside many empty jobs,
statistics analyzed) and the statement is run as the code sends it under ``plan_cache_mode =
force_generic_plan``. What is checked is the buffers each run touches (a count, not a time).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest

from shared.cost_tracking import _BUDGET, CostTracker
from shared.database import DatabaseClient
from shared.models import StageName

HOT_RESERVATIONS = 100_000
EMPTY_JOBS = 200
# A few index and heap pages per run: the job row, its totals row, the active index's entries.
MAX_BUFFERS = 30


async def buffers(connection: asyncpg.Connection, job: uuid.UUID) -> int:
    """Return the shared buffers one run of the prepared budget statement touches for ``job``."""
    plan: list[dict[str, Any]] = orjson.loads(
        await connection.fetchval(f"explain (analyze, buffers, format json) execute budget('{job}', null, 50)")
    )
    top = plan[0]["Plan"]
    return int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))


@pytest.fixture
async def skewed(db: DatabaseClient) -> tuple[uuid.UUID, list[uuid.UUID]]:
    user = uuid.uuid4()
    await db.execute("insert into auth.users (id) values ($1)", user)
    rows = await db.fetch(
        "insert into public.jobs (user_id, audio_url, user_prompt) select $1, 'a.mp3', 'p' "
        "from generate_series(1, $2) returning id",
        user,
        EMPTY_JOBS + 1,
    )
    hot, *empty = [row["id"] for row in rows]
    await db.execute(
        """
        insert into public.job_cost_reservations
               (job_id, stage_name, api_name, estimated_cost, actual_cost, status, expires_at)
        select $1, 'clip_generation', 'replicate', 0.01, 0.02, 'committed', now()
          from generate_series(1, $2)
        """,
        hot,
        HOT_RESERVATIONS,
    )
    await db.execute("analyze public.jobs, public.job_cost_reservations, public.job_budget_totals")
    return hot, empty


async def test_budget_reads_the_same_few_buffers_for_a_hot_job_and_an_empty_one_under_the_generic_plan(
    db: DatabaseClient, pg_dsn: str, skewed: tuple[uuid.UUID, list[uuid.UUID]]
) -> None:
    hot, empty = skewed
    connection = await asyncpg.connect(pg_dsn)
    try:
        await connection.execute("set plan_cache_mode = force_generic_plan")
        await connection.execute(f"prepare budget(uuid, numeric, numeric) as {_BUDGET}")
        for _ in range(6):  # past the five custom plans PostgreSQL tries before it settles on one
            await buffers(connection, hot)
        touched = {"hot": await buffers(connection, hot), "empty": await buffers(connection, empty[0])}
        await connection.execute("deallocate budget")
    finally:
        await connection.close()
    assert {"hot": True, "empty": True} == {name: count <= MAX_BUFFERS for name, count in touched.items()}, touched


async def test_budget_of_the_hot_job_is_right_at_100k_retained_reservations(
    db: DatabaseClient, skewed: tuple[uuid.UUID, list[uuid.UUID]]
) -> None:
    hot, _ = skewed
    tracker = CostTracker(db, default_budget=Decimal(5000), reservation_ttl=timedelta(minutes=15))
    async with tracker.reserve(hot, StageName.CLIP_GENERATION, "replicate", "0.50") as held:
        status = await tracker.get_budget(hot)
        assert (Decimal("0.50"), Decimal(0)) == (status.reserved, status.overrun)
        await held.commit("0.75")
    assert Decimal("0.25") == (await tracker.get_budget(hot)).overrun
