"""One contract for every JobStore: JobRepository on PostgreSQL and the in-memory FakeJobStore."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from shared.database import DatabaseClient, init_database
from shared.errors import InvalidStateError, JobNotFoundError, ValidationError
from shared.jobs import JobRepository, JobStore
from shared.models import Job, JobStatus, StageName, StageStatus
from shared.testing.jobs import FakeJobStore
from tests.fixtures.postgres import MakeUser


@pytest.fixture(params=["postgres", "fake"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[tuple[JobStore, MakeUser]]:
    if request.param == "fake":
        fake = FakeJobStore()

        async def add_user() -> uuid.UUID:
            return fake.add_user()

        yield fake, add_user
        return
    settings = request.getfixturevalue("make_settings")(database_url=request.getfixturevalue("pg_dsn"))
    async for db in init_database(settings):
        yield JobRepository(db), functools.partial(sign_up, db)


async def sign_up(db: DatabaseClient) -> uuid.UUID:
    """Insert a user in auth.users, as signing up does on Supabase."""
    user = uuid.uuid4()
    await db.execute("insert into auth.users (id) values ($1)", user)
    return user


@pytest.fixture
def jobs(store: tuple[JobStore, MakeUser]) -> JobStore:
    return store[0]


@pytest.fixture
def make_user(store: tuple[JobStore, MakeUser]) -> MakeUser:
    return store[1]


async def new_job(jobs: JobStore, make_user: MakeUser, budget_limit: Decimal | None = None) -> Job:
    return await jobs.create_job(
        user_id=await make_user(),
        audio_url="audio/song.mp3",
        user_prompt="neon city at night",
        budget_limit=budget_limit,
    )


async def test_created_job_is_queued_with_defaults(jobs: JobStore, make_user: MakeUser) -> None:
    job = await new_job(jobs, make_user)
    assert isinstance(jobs, JobStore)
    assert (JobStatus.QUEUED, 0, Decimal(0), None) == (job.status, job.progress, job.total_cost, job.completed_at)
    assert job == await jobs.get_job(job.id)


async def test_create_with_the_same_id_returns_the_first_job(jobs: JobStore, make_user: MakeUser) -> None:
    job_id = uuid.uuid4()
    user = await make_user()
    first = await jobs.create_job(user_id=user, audio_url="a.mp3", user_prompt="p1", job_id=job_id)
    again = await jobs.create_job(user_id=user, audio_url="a.mp3", user_prompt="p1", job_id=job_id)
    assert first == again
    assert 1 == len(await jobs.list_jobs_for_user(user))


async def test_create_with_an_id_of_another_users_job_is_refused(jobs: JobStore, make_user: MakeUser) -> None:
    job = await new_job(jobs, make_user)
    with pytest.raises(InvalidStateError):
        await jobs.create_job(user_id=await make_user(), audio_url="b.mp3", user_prompt="p", job_id=job.id)


@pytest.mark.parametrize(
    ("audio_url", "prompt", "budget", "field"),
    [
        ("", "p", None, "audio_url"),
        ("a.mp3", "  ", None, "user_prompt"),
        ("a.mp3", "p", Decimal(-1), "budget_limit"),
        ("a.mp3", "p", Decimal("NaN"), "budget_limit"),
    ],
)
async def test_create_refuses_bad_input(
    jobs: JobStore, make_user: MakeUser, audio_url: str, prompt: str, budget: Decimal | None, field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        await jobs.create_job(user_id=await make_user(), audio_url=audio_url, user_prompt=prompt, budget_limit=budget)
    assert field == caught.value.field


async def test_unknown_job_is_job_not_found(jobs: JobStore) -> None:
    missing = uuid.uuid4()
    for call in (
        jobs.get_job(missing),
        jobs.update_progress(missing, StageName.AUDIO_ANALYSIS, 5),
        jobs.start_stage(missing, StageName.AUDIO_ANALYSIS),
        jobs.complete_stage(missing, StageName.AUDIO_ANALYSIS),
        jobs.complete_job(missing, "v.mp4"),
        jobs.fail_job(missing, "boom"),
    ):
        with pytest.raises(JobNotFoundError) as caught:
            await call
        assert missing == caught.value.job_id


async def test_a_job_goes_through_its_stages_to_completion(jobs: JobStore, make_user: MakeUser) -> None:
    job = await new_job(jobs, make_user, budget_limit=Decimal("12.5"))
    stage = await jobs.start_stage(job.id, StageName.AUDIO_ANALYSIS, {"model": "v1"})
    moving = await jobs.update_progress(job.id, StageName.AUDIO_ANALYSIS, 10, estimated_remaining=300)
    done = await jobs.complete_stage(job.id, StageName.AUDIO_ANALYSIS, {"bpm": 120})
    await jobs.start_stage(job.id, StageName.COMPOSITION)
    final = await jobs.complete_job(job.id, "videos/final.mp4")

    assert (StageStatus.RUNNING, {"model": "v1"}) == (stage.status, stage.metadata)
    assert (JobStatus.PROCESSING, 10, 300) == (moving.status, moving.progress, moving.estimated_remaining)
    assert (StageStatus.COMPLETED, {"model": "v1", "bpm": 120}) == (done.status, done.metadata)
    assert done.completed_at is not None
    assert (JobStatus.COMPLETED, 100, "videos/final.mp4") == (final.status, final.progress, final.video_url)
    assert final.completed_at is not None
    assert final.updated_at >= final.created_at
    assert [StageName.AUDIO_ANALYSIS, StageName.COMPOSITION] == [s.stage_name for s in await jobs.list_stages(job.id)]
    assert Decimal("12.5") == final.budget_limit


async def test_repeating_a_move_returns_the_row_unchanged(jobs: JobStore, make_user: MakeUser) -> None:
    job = await new_job(jobs, make_user)
    await jobs.start_stage(job.id, StageName.AUDIO_ANALYSIS)
    first = await jobs.fail_stage(job.id, StageName.AUDIO_ANALYSIS, "model timed out")
    again = await jobs.fail_stage(job.id, StageName.AUDIO_ANALYSIS, "model timed out")
    done = await jobs.fail_job(job.id, "audio analysis failed")
    assert first == again
    assert done == await jobs.fail_job(job.id, "audio analysis failed")


async def test_failed_stage_can_start_again(jobs: JobStore, make_user: MakeUser) -> None:
    job = await new_job(jobs, make_user)
    await jobs.start_stage(job.id, StageName.CLIP_GENERATION)
    await jobs.fail_stage(job.id, StageName.CLIP_GENERATION, "replicate 503")
    again = await jobs.start_stage(job.id, StageName.CLIP_GENERATION)
    assert (StageStatus.RUNNING, None, None) == (again.status, again.error, again.completed_at)


async def test_status_never_moves_back(jobs: JobStore, make_user: MakeUser) -> None:
    job = await new_job(jobs, make_user)
    with pytest.raises(InvalidStateError) as caught:
        await jobs.complete_job(job.id, "v.mp4")  # queued cannot jump to completed
    assert ("queued", "completed") == (caught.value.current, caught.value.requested)
    await jobs.start_stage(job.id, StageName.AUDIO_ANALYSIS)
    await jobs.complete_job(job.id, "v.mp4")
    for move in (
        jobs.fail_job(job.id, "late"),
        jobs.update_progress(job.id, StageName.COMPOSITION, 50),
        jobs.start_stage(job.id, StageName.COMPOSITION),
        jobs.complete_job(job.id, "other.mp4"),
    ):
        with pytest.raises(InvalidStateError) as refused:
            await move
        assert "completed" == refused.value.current
    assert JobStatus.COMPLETED == (await jobs.get_job(job.id)).status


async def test_stage_moves_need_a_running_stage(jobs: JobStore, make_user: MakeUser) -> None:
    job = await new_job(jobs, make_user)
    with pytest.raises(InvalidStateError, match="never started"):
        await jobs.complete_stage(job.id, StageName.SCENE_PLANNING)
    await jobs.start_stage(job.id, StageName.SCENE_PLANNING)
    await jobs.complete_stage(job.id, StageName.SCENE_PLANNING)
    with pytest.raises(InvalidStateError, match="is completed"):
        await jobs.fail_stage(job.id, StageName.SCENE_PLANNING, "late failure")


@pytest.mark.parametrize(("progress", "remaining"), [(-1, None), (101, None), (50, -5)])
async def test_progress_out_of_range_is_refused(
    jobs: JobStore, make_user: MakeUser, progress: int, remaining: int | None
) -> None:
    job = await new_job(jobs, make_user)
    with pytest.raises(ValidationError):
        await jobs.update_progress(job.id, StageName.AUDIO_ANALYSIS, progress, remaining)


async def test_empty_messages_are_refused(jobs: JobStore, make_user: MakeUser) -> None:
    job = await new_job(jobs, make_user)
    with pytest.raises(ValidationError):
        await jobs.fail_job(job.id, " ")
    with pytest.raises(ValidationError):
        await jobs.complete_job(job.id, "")


async def test_pages_walked_with_the_cursor_return_every_job_once_newest_first(
    jobs: JobStore, make_user: MakeUser
) -> None:
    user = await make_user()
    for n in range(5):
        await jobs.create_job(user_id=user, audio_url=f"a{n}.mp3", user_prompt=f"p{n}")
    everything = await jobs.list_jobs_for_user(user, limit=10)
    walked: list[Job] = []
    page = await jobs.list_jobs_for_user(user, limit=2)
    while page:
        walked.extend(page)
        page = await jobs.list_jobs_for_user(user, limit=2, before=page[-1].created_at, before_id=page[-1].id)
    assert [job.id for job in everything] == [job.id for job in walked]
    assert sorted(everything, key=lambda job: (job.created_at, job.id), reverse=True) == everything
    with pytest.raises(ValidationError) as refused:
        await jobs.list_jobs_for_user(user, before_id=everything[0].id)
    assert "before_id" == refused.value.field


async def test_a_heartbeat_counts_only_for_a_running_stage(jobs: JobStore, make_user: MakeUser) -> None:
    job = await new_job(jobs, make_user)
    assert not await jobs.heartbeat_stage(job.id, StageName.AUDIO_ANALYSIS)  # never started
    await jobs.start_stage(job.id, StageName.AUDIO_ANALYSIS)
    assert await jobs.heartbeat_stage(job.id, StageName.AUDIO_ANALYSIS)
    [stage] = await jobs.list_stages(job.id)
    assert stage.heartbeat_at is not None
    await jobs.complete_stage(job.id, StageName.AUDIO_ANALYSIS)
    assert not await jobs.heartbeat_stage(job.id, StageName.AUDIO_ANALYSIS)
