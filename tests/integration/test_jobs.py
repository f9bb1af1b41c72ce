"""JobRepository against the real PostgreSQL: creation, forward-only moves, stages, idempotent retries."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from shared.database import DatabaseClient
from shared.errors import DatabaseError, InvalidStateError, JobNotFoundError, NotFoundError, ValidationError
from shared.jobs import JobRepository
from shared.models import Job, StageName
from tests.fixtures.postgres import MakeUser


async def new_job(jobs: JobRepository, make_user: MakeUser, budget_limit: Decimal | None = None) -> Job:
    return await jobs.create_job(
        user_id=await make_user(),
        audio_url="audio/song.mp3",
        user_prompt="neon city at night",
        budget_limit=budget_limit,
    )


async def test_create_for_an_unknown_user_says_so(jobs: JobRepository) -> None:
    with pytest.raises(NotFoundError) as caught:
        await jobs.create_job(user_id=uuid.uuid4(), audio_url="a.mp3", user_prompt="p")
    assert "user_not_found" == caught.value.code
    assert isinstance(caught.value.__cause__, DatabaseError)


async def test_list_jobs_pages_newest_first(jobs: JobRepository, make_user: MakeUser, db: DatabaseClient) -> None:
    user = await make_user()
    created = [await jobs.create_job(user_id=user, audio_url=f"{n}.mp3", user_prompt="p") for n in range(5)]
    await new_job(jobs, make_user)  # someone else's
    first_page = await jobs.list_jobs_for_user(user, limit=3)
    second_page = await jobs.list_jobs_for_user(user, limit=3, before=first_page[-1].created_at)
    assert [job.id for job in reversed(created)] == [job.id for job in first_page + second_page]
    with pytest.raises(ValidationError):
        await jobs.list_jobs_for_user(user, limit=0)
    assert 6 == await db.fetchval("select count(*) from jobs")


async def test_constraints_refuse_rows_the_repository_would_never_write(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser
) -> None:
    job = await new_job(jobs, make_user)
    bad_updates = [
        "update jobs set progress = 101 where id = $1",
        "update jobs set status = 'done' where id = $1",
        "update jobs set total_cost = -1 where id = $1",
        "update jobs set status = 'completed', video_url = 'v' where id = $1",  # no completed_at
        "update jobs set completed_at = now() where id = $1",  # not completed
        "insert into job_costs (job_id, stage_name, api_name, cost) values ($1, 'composition', 'x', -0.01)",
        "insert into job_stages (job_id, stage_name, status) values ($1, 'composition', 'failed')",  # no error
    ]
    for statement in bad_updates:
        with pytest.raises(DatabaseError) as caught:
            await db.execute(statement, job.id)
        assert caught.value.sqlstate in {"23514", "23502"}, statement
    keyed = "insert into job_costs (job_id, stage_name, api_name, cost, idempotency_key) values ($1, $2, 'x', 1, 'k')"
    await db.execute(keyed, job.id, "composition")
    with pytest.raises(DatabaseError) as duplicate:
        await db.execute(keyed, job.id, "composition")
    assert "23505" == duplicate.value.sqlstate


async def test_updated_at_is_kept_by_the_trigger(db: DatabaseClient, jobs: JobRepository, make_user: MakeUser) -> None:
    job = await new_job(jobs, make_user)
    await db.execute("update jobs set updated_at = created_at - interval '1 day' where id = $1", job.id)
    after = await db.fetchrow("select updated_at, created_at from jobs where id = $1", job.id)
    assert after is not None
    assert after["updated_at"] >= after["created_at"]


@pytest.mark.parametrize(
    ("given", "stored"),
    [(1.5, Decimal("1.5")), ("1.00", Decimal(1)), (3, Decimal(3)), (Decimal("0.00001"), Decimal("0.0001"))],
)
async def test_budget_limit_goes_through_to_money(
    jobs: JobRepository, make_user: MakeUser, given: object, stored: Decimal
) -> None:
    """The observed break: a float or a string budget raised AttributeError."""
    job = await new_job(jobs, make_user, given)  # type: ignore[arg-type] # every Money type, on purpose
    assert stored == job.budget_limit
    assert stored == (await jobs.get_job(job.id)).budget_limit


@pytest.mark.parametrize("bad", [10**30, "1e28", Decimal("1E+30"), "NaN", -1, True, "abc", float("inf")])
async def test_bad_budget_limit_is_a_validation_error(jobs: JobRepository, make_user: MakeUser, bad: object) -> None:
    with pytest.raises(ValidationError) as caught:
        await new_job(jobs, make_user, bad)  # type: ignore[arg-type] # bad on purpose
    assert "budget_limit" == caught.value.field


async def test_errors_carry_the_job_id_and_the_field(jobs: JobRepository, make_user: MakeUser) -> None:
    missing = uuid.uuid4()
    for call in (jobs.get_job(missing), jobs.update_progress(missing, StageName.COMPOSITION, 5)):
        with pytest.raises(JobNotFoundError) as caught:
            await call
        assert missing == caught.value.job_id
    job = await new_job(jobs, make_user)
    await jobs.start_stage(job.id, StageName.COMPOSITION)
    with pytest.raises(ValidationError) as refused:
        await jobs.fail_stage(job.id, StageName.COMPOSITION, " ")
    assert "error" == refused.value.field
    with pytest.raises(ValidationError) as paged:
        await jobs.list_jobs_for_user(job.user_id, limit=0)
    assert "limit" == paged.value.field
    assert [job.id] == [j.id for j in await jobs.list_jobs_for_user(job.user_id, limit=1)]
    assert [job.id] == [j.id for j in await jobs.list_jobs_for_user(job.user_id, limit=1000)]


async def test_progress_names_the_current_stage(jobs: JobRepository, make_user: MakeUser) -> None:
    job = await new_job(jobs, make_user)
    moved = await jobs.update_progress(job.id, StageName.SCENE_PLANNING, 10, 60)
    assert (StageName.SCENE_PLANNING, 10, 60) == (moved.current_stage, moved.progress, moved.estimated_remaining)


async def test_a_users_jobs_come_fifty_to_a_page_by_default(
    jobs: JobRepository, make_user: MakeUser, db: DatabaseClient
) -> None:
    user = await make_user()
    await db.executemany("insert into jobs (user_id, audio_url, user_prompt) values ($1, 'a.mp3', 'p')", [(user,)] * 51)
    assert 50 == len(await jobs.list_jobs_for_user(user))


async def test_refused_moves_say_where_the_job_is_and_where_it_was_asked_to_go(
    jobs: JobRepository, make_user: MakeUser
) -> None:
    job = await new_job(jobs, make_user)
    with pytest.raises(InvalidStateError) as never_started:
        await jobs.complete_stage(job.id, StageName.COMPOSITION)
    await jobs.start_stage(job.id, StageName.COMPOSITION)
    await jobs.fail_stage(job.id, StageName.COMPOSITION, "boom")
    with pytest.raises(InvalidStateError) as failed_stage:
        await jobs.complete_stage(job.id, StageName.COMPOSITION)
    await jobs.complete_job(job.id, "videos/1.mp4")
    with pytest.raises(InvalidStateError) as completed_job:
        await jobs.fail_job(job.id, "too late")
    found = [(e.value.current, e.value.requested, e.value.job_id) for e in (never_started, failed_stage, completed_job)]
    assert [(None, "completed", job.id), ("failed", "completed", job.id), ("completed", "failed", job.id)] == found


async def test_empty_urls_and_messages_name_their_field(jobs: JobRepository, make_user: MakeUser) -> None:
    job = await new_job(jobs, make_user)
    with pytest.raises(ValidationError) as video:
        await jobs.complete_job(job.id, " ")
    with pytest.raises(ValidationError) as message:
        await jobs.fail_job(job.id, "")
    with pytest.raises(ValidationError) as page:
        await jobs.list_jobs_for_user(job.user_id, limit=1001)
    assert ["video_url", "error_message", "limit"] == [e.value.field for e in (video, message, page)]
