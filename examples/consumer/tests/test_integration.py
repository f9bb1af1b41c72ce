"""The stage on the real local services, run by a real worker: PostgreSQL (a database of the test's own), Redis,
local storage, and the stage engine's queue."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

from shared.stages import StageWorker
from shared.testing.users import create_job_for_new_user

from title_stage.container import StageContainer
from title_stage.stage import BUCKET, STAGE, stages


async def test_a_worker_runs_the_stage_end_to_end_on_the_real_services(real_container: StageContainer) -> None:
    db = real_container.db()
    job = await create_job_for_new_user(db, budget_limit=Decimal(1), user_prompt="a tide of paper boats")
    await real_container.stages().submit(job.id, STAGE.value, payload={})
    settings = real_container.settings()
    worker = StageWorker(
        stages,
        db=db,
        dsn=settings.database_dsn,
        statement_cache_size=settings.statement_cache_size,
        heartbeat_interval=1.0,
        retry_base_delay=0.01,
        container=real_container,
    )
    running = asyncio.create_task(worker.run())
    deadline = time.monotonic() + 60
    query = "select status, result, attempt, error from stage_runs where job_id = $1"
    while (row := await db.fetchrow(query, job.id)) is None or row["status"] != "completed":
        assert row is None or row["status"] in ("queued", "running"), row
        assert time.monotonic() < deadline, "the stage did not complete within 60 s"
        await asyncio.sleep(0.05)
    worker.stop()
    await running

    assert "A Tide Of Paper Boats" == row["result"]["title"]
    assert 2 == row["attempt"]  # the simulated API's 503 (development), then the title
    storage = real_container.storage()
    assert b"A Tide Of Paper Boats" == await storage.download_file(BUCKET, f"{job.id}/title.txt")
    assert b"A Tide Of Paper Boats" == await real_container.redis().get(f"title:{job.id}")
    cost = await db.fetchrow("select cost, usage from job_costs where job_id = $1", job.id)
    assert cost is not None
    assert "gpt-4o-mini" == cost["usage"]["model"]
    assert cost["cost"] == await real_container.cost_tracker().get_total_cost(job.id)
    assert 0 == await db.fetchval("select count(*) from job_cost_reservations where status = 'active'")
