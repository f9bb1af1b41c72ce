"""The stage engine's statements with an in-process worker on the real PostgreSQL (no subprocess start-up).

The fan-in count across submits, the claim that takes a stale item over (and gives back the money its dead
attempt held), the worker's one heartbeat statement for all its items, and the paid-call seam of a context.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest

from shared.cost_tracking import CostTracker
from shared.database import DatabaseClient
from shared.errors import BudgetExceededError, ConfigError, RetryableError
from shared.jobs import JobRepository
from shared.maintenance import MaintenancePolicy, maintain
from shared.models import StageName
from shared.stages import StageContext, StageQueue, Stages, StageWorker
from tests.fixtures.postgres import MakeUser

pytestmark = pytest.mark.slow


async def new_job(jobs: JobRepository, make_user: MakeUser) -> UUID:
    job = await jobs.create_job(user_id=await make_user(), audio_url="a.mp3", user_prompt="neon city")
    return job.id


async def wait_for(db: DatabaseClient, query: str, *args: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await db.fetchval(query, *args):
        assert time.monotonic() < deadline, f"not true within {timeout} s: {query}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(stages: Stages, db: DatabaseClient, dsn: str, interval: float = 1.0) -> AsyncIterator[StageWorker]:
    worker = StageWorker(stages, db=db, dsn=dsn, statement_cache_size=100, heartbeat_interval=interval, drain_seconds=1)
    ready = asyncio.Event()
    task = asyncio.create_task(worker.run(ready.set))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


async def test_a_later_submit_of_more_items_waits_for_them_before_its_then(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, pg_dsn: str
) -> None:
    stages = Stages()
    gate = asyncio.Event()
    seen: list[str] = []

    @stages.handler("clip_generation")
    async def clip(ctx: StageContext) -> dict[str, Any]:
        if ctx.item == "hold":
            await gate.wait()
        return {"n": ctx.item}

    @stages.handler("composition")
    async def compose(ctx: StageContext) -> dict[str, Any]:
        seen.append(",".join(sorted(await ctx.results("clip_generation"))))
        return {}

    job = await new_job(jobs, make_user)
    queue = StageQueue(db)
    await queue.submit(job, "clip_generation", items={"a": {}, "hold": {}}, then="composition")
    async with running(stages, db, pg_dsn):
        await wait_for(db, "select count(*) = 1 from stage_runs where job_id = $1 and status = 'completed'", job)
        # Two more items of the same stage: the fan-in now waits for four.
        assert 2 == len(await queue.submit(job, "clip_generation", items={"b": {}, "c": {}}))
        await wait_for(db, "select count(*) = 3 from stage_runs where job_id = $1 and status = 'completed'", job)
        assert 0 == await db.fetchval(
            "select count(*) from stage_runs where job_id = $1 and stage = 'composition'", job
        )
        gate.set()
        await wait_for(
            db, "select status = 'completed' from stage_runs where job_id = $1 and stage = 'composition'", job
        )
    assert ["a,b,c,hold"] == seen
    group = "select array[expected, done] from stage_groups where job_id = $1 and stage = 'clip_generation'"
    assert [4, 4] == await db.fetchval(group, job)


async def test_a_takeover_releases_the_dead_attempts_holds_and_its_late_commit_is_an_overrun(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, pg_dsn: str
) -> None:
    stages = Stages()
    attempts: list[UUID] = []

    @stages.handler("clip_generation", max_attempts=3)
    async def clip(ctx: StageContext) -> dict[str, Any]:
        attempts.append(ctx.attempt_id)
        return {}

    job = await new_job(jobs, make_user)
    await db.execute("update jobs set budget_limit = 1 where id = $1", job)
    [run] = await StageQueue(db).submit(job, "clip_generation", payload={})
    # A worker that died holding the item: running, a stale heartbeat, and 0.80 of the budget held by its attempt.
    dead = uuid4()
    await db.execute(
        "update stage_runs set status = 'running', attempt = 1, attempt_id = $2, started_at = now(),"
        " heartbeat_at = now() - interval '1 hour' where id = $1",
        run,
        dead,
    )
    tracker = CostTracker(db, default_budget=Decimal(50), reservation_ttl=timedelta(minutes=15))
    async with contextlib.AsyncExitStack() as holds:
        reservation = await holds.enter_async_context(
            tracker.reserve(job, StageName.CLIP_GENERATION, "replicate", Decimal("0.80"), attempt_id=dead)
        )
        # A reservation of another attempt stays held.
        await holds.enter_async_context(
            tracker.reserve(job, StageName.CLIP_GENERATION, "replicate", Decimal("0.10"), attempt_id=uuid4())
        )
        async with running(stages, db, pg_dsn):
            # pgqueuer's delivery of the item is queued; the stale attempt is taken over at once.
            await wait_for(db, "select status = 'completed' from stage_runs where id = $1", run)
        assert 1 == len(attempts)
        assert attempts[0] != dead
        assert 2 == await db.fetchval("select attempt from stage_runs where id = $1", run)
        released = await db.fetchrow(
            "select status, lapsed_at is not null as lapsed from job_cost_reservations where id = $1", reservation.id
        )
        assert ("released", True) == tuple(released)  # type: ignore[arg-type]
        active = "select count(*) from job_cost_reservations where job_id = $1 and status = 'active'"
        assert 1 == await db.fetchval(active, job)
        # The dead attempt was only paused: its commit is still recorded, all of it an overrun.
        cost = await reservation.commit(Decimal("0.80"))
        assert Decimal("0.80") == cost.cost
    assert Decimal("0.80") == await db.fetchval("select total_cost from jobs where id = $1", job)


async def test_one_heartbeat_statement_stops_only_the_items_taken_away(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, pg_dsn: str
) -> None:
    stages = Stages()
    started: dict[str, asyncio.Event] = {"kept": asyncio.Event(), "taken": asyncio.Event()}
    cancelled: list[str] = []
    release = asyncio.Event()

    @stages.handler("clip_generation", max_attempts=1)
    async def clip(ctx: StageContext) -> dict[str, Any]:
        started[ctx.item].set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.append(ctx.item)
            raise
        return {"item": ctx.item}

    job = await new_job(jobs, make_user)
    await StageQueue(db).submit(job, "clip_generation", items={"kept": {}, "taken": {}})
    async with running(stages, db, pg_dsn, interval=0.6):
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started.values())), 30)
        beats = await db.fetchval("select max(heartbeat_at) from stage_runs where job_id = $1", job)
        await wait_for(db, "select min(heartbeat_at) > $2 from stage_runs where job_id = $1", job, beats)
        # Another attempt takes one item over: the worker's next beat misses it and cancels only that one.
        await db.execute(
            "update stage_runs set attempt_id = gen_random_uuid() where job_id = $1 and item = 'taken'", job
        )
        deadline = time.monotonic() + 5
        while not cancelled:
            assert time.monotonic() < deadline, "the taken item was not stopped"
            await asyncio.sleep(0.05)
        release.set()
        await wait_for(db, "select status = 'completed' from stage_runs where job_id = $1 and item = 'kept'", job)
    assert ["taken"] == cancelled
    # The item taken over is left to the attempt that holds it: the old one wrote nothing.
    assert "running" == await db.fetchval("select status from stage_runs where job_id = $1 and item = 'taken'", job)


async def test_a_context_without_a_container_says_how_to_get_one(db: DatabaseClient) -> None:
    row = {"id": uuid4(), "job_id": uuid4(), "stage": "clip_generation", "item": "", "attempt": 1}
    ctx = StageContext(db, {**row, "attempt_id": uuid4(), "payload": {}})
    with pytest.raises(ConfigError, match="python -m shared worker"):
        _ = ctx.container
    with pytest.raises(ConfigError, match="python -m shared worker"):
        async with ctx.paid.admit(provider="openai", model="gpt-4o", estimate={"input_tokens": 1}):
            pytest.fail("admitted without a container")
    odd = StageContext(db, {**row, "stage": "thumbnails", "attempt_id": uuid4(), "payload": {}})
    with pytest.raises(ConfigError, match="not one of the pipeline's stages"):
        await odd.paid.track_usage(provider="openai", model="gpt-4o", usage={"input_tokens": 1})


async def test_a_delivery_that_finds_its_item_held_comes_back_when_the_holder_would_be_stale(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, pg_dsn: str
) -> None:
    stages = Stages()
    claimed: list[float] = []

    @stages.handler("clip_generation")
    async def clip(ctx: StageContext) -> dict[str, Any]:
        claimed.append(time.monotonic())
        return {}

    job = await new_job(jobs, make_user)
    [run] = await StageQueue(db).submit(job, "clip_generation", payload={})
    # pgqueuer hands the delivery out while the item's holder looks alive (it beat just now), then dies.
    await db.execute(
        "update stage_runs set status = 'running', attempt = 1, attempt_id = gen_random_uuid(), started_at = now(),"
        " heartbeat_at = now() where id = $1",
        run,
    )
    held = time.monotonic()
    async with running(stages, db, pg_dsn, interval=1.0):
        await wait_for(db, "select status = 'completed' from stage_runs where id = $1", run)
    assert 2 == await db.fetchval("select attempt from stage_runs where id = $1", run)
    # Run again once the holder's heartbeat was stale (1.5 x the interval), not dropped with the delivery.
    assert claimed[0] - held >= 1.5


async def test_the_handlers_max_attempts_holds_when_the_submit_gives_none(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, pg_dsn: str
) -> None:
    stages = Stages()
    tries: list[int] = []

    @stages.handler("clip_generation", max_attempts=2)
    async def clip(ctx: StageContext) -> dict[str, Any]:
        tries.append(ctx.attempt)
        raise RetryableError("the provider is busy", retry_after=0.05)

    job = await new_job(jobs, make_user)
    [run] = await StageQueue(db).submit(job, "clip_generation", payload={})
    async with running(stages, db, pg_dsn):
        await wait_for(db, "select status = 'failed' from stage_runs where id = $1", run)
    assert [1, 2] == tries
    assert "failed after 2 attempts" in await db.fetchval("select error_message from jobs where id = $1", job)
    with pytest.raises(ConfigError, match="between 1 and 100"):
        await StageQueue(db).submit(job, "composition", payload={}, max_attempts=0)


async def test_the_last_stage_completing_its_job_is_not_stopped_by_its_heartbeat(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, pg_dsn: str
) -> None:
    stages = Stages()

    @stages.handler("composition", max_attempts=1)
    async def compose(ctx: StageContext) -> dict[str, Any]:
        await JobRepository(ctx.db).complete_job(ctx.job_id, "file:///video.mp4")
        await asyncio.sleep(1.2)  # beats go on while the handler finishes its work after completing the job
        return {"video": "file:///video.mp4"}

    job = await new_job(jobs, make_user)
    [run] = await StageQueue(db).submit(job, "composition", payload={})
    async with running(stages, db, pg_dsn, interval=0.6):
        await wait_for(db, "select status in ('completed', 'cancelled') from stage_runs where id = $1", run)
    assert "completed" == await db.fetchval("select status from stage_runs where id = $1", run)


async def test_a_budget_refusal_only_because_of_others_holds_waits_and_a_spent_budget_fails(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, pg_dsn: str
) -> None:
    stages = Stages()
    tracker = CostTracker(db, default_budget=Decimal(50), reservation_ttl=timedelta(minutes=15))
    refused: list[int] = []

    @stages.handler("clip_generation", max_attempts=1)
    async def clip(ctx: StageContext) -> dict[str, Any]:
        try:
            async with tracker.reserve(ctx.job_id, StageName.CLIP_GENERATION, "replicate", Decimal("0.50")) as held:
                await held.commit(Decimal("0.50"))
        except BudgetExceededError:
            refused.append(ctx.attempt)
            raise
        return {}

    job = await new_job(jobs, make_user)
    await db.execute("update jobs set budget_limit = 1 where id = $1", job)
    async with contextlib.AsyncExitStack() as holds:
        # Another item holds 0.80: 0.50 more does not fit now, but would once that hold is gone.
        other = await holds.enter_async_context(
            tracker.reserve(job, StageName.CLIP_GENERATION, "replicate", Decimal("0.80"))
        )
        [run] = await StageQueue(db).submit(job, "clip_generation", payload={})
        async with running(stages, db, pg_dsn):
            await wait_for(db, "select count(*) > 0 from stage_runs where id = $1 and error like 'Budget%'", run)
            await other.commit(Decimal("0.30"))  # the other item spent less than it held
            await wait_for(db, "select status = 'completed' from stage_runs where id = $1", run)
            # Its wait was not an attempt (max_attempts=1).
            assert 1 == await db.fetchval("select attempt from stage_runs where id = $1", run)
            assert refused
            # Now 0.80 is spent: another 0.50 can never fit, and the job fails with the budget's message.
            [second] = await StageQueue(db).submit(job, "clip_generation", items={"again": {}})
            await wait_for(db, "select status = 'failed' from stage_runs where id = $1", second)
    assert "raise the job's budget" in await db.fetchval("select error_message from jobs where id = $1", job)


async def test_a_call_left_to_a_next_attempt_that_never_comes_is_recorded_once_when_the_item_ends(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser
) -> None:
    job = await new_job(jobs, make_user)
    queue = StageQueue(db)
    [run] = await queue.submit(job, "clip_generation", items={"7": {}})
    usage = {
        "provider": "replicate",
        "model": "m",
        "units": {"predict_time_seconds": "60"},
        "unit_prices": {"predict_time_seconds": "0.0014"},
        "cost": "0.084",
        "price_version": "test",
    }
    owed = {"stage": "clip_generation", "api_name": "replicate/m", "cost": "0.084", "usage": usage}
    # A drained attempt left its call to the next one (owed), which never runs: the job fails first.
    await db.execute(
        "insert into stage_checkpoints (run_id, name, value, attempt) values ($1, 'owed:clip', $2, 1)", run, owed
    )
    await queue.cancel_job(job, "the budget ran out")
    await queue.cancel_job(job, "the budget ran out")  # again: nothing more
    rows = await db.fetch("select cost, idempotency_key, usage from job_costs where job_id = $1", job)
    assert [(Decimal("0.0840"), f"owed:{run}:clip", usage)] == [tuple(row) for row in rows]
    assert Decimal("0.084") == await db.fetchval("select total_cost from jobs where id = $1", job)
    assert "cancelled" == await db.fetchval("select status from stage_runs where id = $1", run)
    assert await db.fetchval("select value from stage_checkpoints where run_id = $1 and name = 'paid:clip'", run)
    # A call an attempt settled (paid:) is not recorded again, even if an owed mark was left behind.
    [other] = await queue.submit(job, "composition", payload={})
    await db.execute(
        "insert into stage_checkpoints (run_id, name, value, attempt)"
        " values ($1, 'owed:x', $2, 1), ($1, 'paid:x', '{}', 1)",
        other,
        owed,
    )
    assert 0 == await db.fetchval("select public.stage_record_owed(array[$1::uuid])", other)


async def test_maintain_hands_an_item_that_lost_its_delivery_back_to_the_queue(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, pg_dsn: str
) -> None:
    stages = Stages()

    @stages.handler("clip_generation")
    async def clip(ctx: StageContext) -> dict[str, Any]:
        return {"ok": True}

    job = await new_job(jobs, make_user)
    [lost, fresh] = await StageQueue(db).submit(job, "clip_generation", items={"lost": {}, "fresh": {}})
    # Both lose their delivery; only the one queued long ago is past the stage timeout.
    await db.execute("delete from pgqueuer.pgqueuer")
    await db.execute("update stage_runs set queued_at = now() - interval '1 hour' where id = $1", lost)
    policy = MaintenancePolicy(
        stage_timeout=timedelta(minutes=10),
        release_grace=timedelta(0),
        retention=timedelta(days=30),
        batch_size=100,
    )
    report = await maintain(db, policy)
    assert 1 == report.redelivered_stages
    assert "queued 1 stage item(s) whose delivery was lost" in report.summary()
    assert 0 == (await maintain(db, policy)).redelivered_stages  # it has its delivery now
    async with running(stages, db, pg_dsn):
        await wait_for(db, "select status = 'completed' from stage_runs where id = $1", lost)
    assert "queued" == await db.fetchval("select status from stage_runs where id = $1", fresh)
