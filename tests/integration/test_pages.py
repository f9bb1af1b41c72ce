"""Bounded lists: keyset pages of jobs and costs (ties included), a streaming iterator, a summary summed in SQL."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from shared.cost_tracking import CostLine, CostTracker
from shared.database import DatabaseClient
from shared.errors import JobNotFoundError, ValidationError
from shared.jobs import JobRepository
from shared.models import StageName
from tests.fixtures.postgres import MakeUser


@pytest.fixture
def tracker(db: DatabaseClient) -> CostTracker:
    return CostTracker(db, default_budget=Decimal(50), reservation_ttl=timedelta(minutes=15))


async def jobs_at_one_instant(db: DatabaseClient, user: uuid.UUID, count: int) -> list[uuid.UUID]:
    """Insert ``count`` jobs in one statement: they share ``created_at`` (now() is the transaction's start)."""
    rows = await db.fetch(
        """
        insert into public.jobs (user_id, audio_url, user_prompt)
        select $1, 'song-' || n || '.mp3', 'a neon city' from generate_series(1, $2) as n
        returning id
        """,
        user,
        count,
    )
    return [row["id"] for row in rows]


async def test_job_pages_with_the_id_cursor_return_every_tied_job_once_in_order(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser
) -> None:
    user = await make_user()
    ids = await jobs_at_one_instant(db, user, 7)
    await jobs_at_one_instant(db, await make_user(), 3)  # someone else's
    seen: list[uuid.UUID] = []
    page = await jobs.list_jobs_for_user(user, limit=3)
    while page:
        seen.extend(job.id for job in page)
        page = await jobs.list_jobs_for_user(user, limit=3, before=page[-1].created_at, before_id=page[-1].id)

    assert sorted(ids, reverse=True) == seen  # ties on created_at ordered by id, newest first


async def test_job_page_before_a_time_alone_excludes_that_instant(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser
) -> None:
    user = await make_user()
    await jobs_at_one_instant(db, user, 2)
    newest = (await jobs.list_jobs_for_user(user, limit=1))[0]
    assert [] == await jobs.list_jobs_for_user(user, before=newest.created_at)
    assert 2 == len(await jobs.list_jobs_for_user(user, before=newest.created_at + timedelta(microseconds=1)))


async def test_job_page_refuses_an_id_cursor_without_its_time(jobs: JobRepository, make_user: MakeUser) -> None:
    with pytest.raises(ValidationError) as caught:
        await jobs.list_jobs_for_user(await make_user(), before_id=uuid.uuid4())
    assert "before_id" == caught.value.field


async def new_job(jobs: JobRepository, make_user: MakeUser) -> uuid.UUID:
    return (await jobs.create_job(user_id=await make_user(), audio_url="a.mp3", user_prompt="p")).id


async def costs_at_one_instant(db: DatabaseClient, job_id: uuid.UUID, count: int) -> None:
    await db.execute(
        """
        insert into public.job_costs (job_id, stage_name, api_name, cost)
        select $1, 'clip_generation', 'replicate', 0.0001 from generate_series(1, $2)
        """,
        job_id,
        count,
    )


async def test_cost_pages_and_the_iterator_return_every_tied_row_once_in_order(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, tracker: CostTracker
) -> None:
    job_id = await new_job(jobs, make_user)
    await costs_at_one_instant(db, job_id, 2_500)
    expected = [row["id"] for row in await db.fetch("select id from job_costs where job_id = $1 order by id", job_id)]

    first = await tracker.list_costs(job_id)
    second = await tracker.list_costs(job_id, after=first[-1].created_at, after_id=first[-1].id)
    streamed = [cost.id async for cost in tracker.iter_costs(job_id, page_size=700)]

    assert (1000, 1000) == (len(first), len(second))
    assert expected[:2000] == [cost.id for cost in first + second]
    assert expected == streamed


async def test_cost_page_size_is_bounded(jobs: JobRepository, make_user: MakeUser, tracker: CostTracker) -> None:
    job_id = await new_job(jobs, make_user)
    for limit in (0, 1001):
        with pytest.raises(ValidationError):
            await tracker.list_costs(job_id, limit=limit)
    with pytest.raises(ValidationError):
        await tracker.list_costs(job_id, after_id=uuid.uuid4())


async def test_cost_summary_sums_per_stage_and_per_api_in_sql(
    jobs: JobRepository, make_user: MakeUser, tracker: CostTracker
) -> None:
    job_id = await new_job(jobs, make_user)
    await tracker.track_cost(job_id, StageName.SCENE_PLANNING, "openai", "0.10")
    await tracker.track_cost(job_id, StageName.PROMPT_GENERATION, "openai", "0.05")
    await tracker.track_cost(job_id, StageName.CLIP_GENERATION, "replicate", "1.20")
    await tracker.track_cost(job_id, StageName.CLIP_GENERATION, "replicate", "1.30")

    summary = await tracker.cost_summary(job_id)

    assert CostLine(4, Decimal("2.6500")) == summary.total
    assert summary.total.cost == await tracker.get_total_cost(job_id)
    assert {
        StageName.SCENE_PLANNING: CostLine(1, Decimal("0.1000")),
        StageName.PROMPT_GENERATION: CostLine(1, Decimal("0.0500")),
        StageName.CLIP_GENERATION: CostLine(2, Decimal("2.5000")),
    } == summary.by_stage
    assert {"openai": CostLine(2, Decimal("0.1500")), "replicate": CostLine(2, Decimal("2.5000"))} == summary.by_api


async def test_cost_summary_of_a_job_without_costs_is_zero_and_of_an_unknown_job_not_found(
    jobs: JobRepository, make_user: MakeUser, tracker: CostTracker
) -> None:
    summary = await tracker.cost_summary(await new_job(jobs, make_user))
    assert (CostLine(0, Decimal(0)), {}, {}) == (summary.total, summary.by_stage, summary.by_api)
    with pytest.raises(JobNotFoundError):
        await tracker.cost_summary(uuid.uuid4())
