"""One winner per stage: concurrent starts and completes, fail_job stopping its stages, progress forward only.

The real repository and the fake share the rules (shared.rules.check_stage_start / check_stage_finish); these
run both against the same races.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from shared.errors import InvalidStateError, StageConflictError
from shared.jobs import JobRepository, JobStore
from shared.models import StageName, StageStatus
from shared.testing import FakeJobStore
from tests.fixtures.postgres import MakeUser

CLIPS = StageName.CLIP_GENERATION
NewJob = Callable[[], Awaitable[object]]


@pytest.fixture(params=["real", "fake"])
async def store(request: pytest.FixtureRequest, jobs: JobRepository, make_user: MakeUser) -> tuple[JobStore, NewJob]:
    if request.param == "real":
        repo: JobStore = jobs

        async def new_real() -> object:
            job = await jobs.create_job(user_id=await make_user(), audio_url="a.mp3", user_prompt="neon city")
            return job.id

        return repo, new_real
    fake = FakeJobStore()

    async def new_fake() -> object:
        job = await fake.create_job(user_id=fake.add_user(), audio_url="a.mp3", user_prompt="neon city")
        return job.id

    return fake, new_fake


async def test_of_concurrent_starts_one_wins_and_the_others_are_told_who(store: tuple[JobStore, NewJob]) -> None:
    repo, new_job = store
    job = await new_job()
    outcomes = await asyncio.gather(
        *(repo.start_stage(job, CLIPS, {"by": n}, worker=f"w{n}") for n in range(5)),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    won = [o for o in outcomes if not isinstance(o, BaseException)]
    lost = [o for o in outcomes if isinstance(o, StageConflictError)]
    assert (1, 4) == (len(won), len(lost))
    winner = str(won[0].worker)
    assert all(winner in str(error) for error in lost)
    (row,) = await repo.list_stages(job)  # type: ignore[arg-type]
    assert (winner, {"by": int(str(winner)[1:])}) == (row.worker, row.metadata)


async def test_a_completed_stage_is_never_reopened(store: tuple[JobStore, NewJob]) -> None:
    repo, new_job = store
    job = await new_job()
    await repo.start_stage(job, CLIPS, {"clips": 3}, worker="w1")  # type: ignore[arg-type]
    await repo.complete_stage(job, CLIPS, {"done": 3}, worker="w1")  # type: ignore[arg-type]
    with pytest.raises(StageConflictError, match="completed"):
        await repo.start_stage(job, CLIPS, {}, worker="w2")  # type: ignore[arg-type]
    (row,) = await repo.list_stages(job)  # type: ignore[arg-type]
    assert (StageStatus.COMPLETED, {"clips": 3, "done": 3}) == (row.status, row.metadata)


async def test_of_two_completes_with_different_results_one_wins(store: tuple[JobStore, NewJob]) -> None:
    repo, new_job = store
    job = await new_job()
    await repo.start_stage(job, CLIPS)  # type: ignore[arg-type]
    outcomes = await asyncio.gather(
        repo.complete_stage(job, CLIPS, {"video": "a.mp4"}),  # type: ignore[arg-type]
        repo.complete_stage(job, CLIPS, {"video": "b.mp4"}),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    assert 1 == sum(isinstance(o, StageConflictError) for o in outcomes)
    (row,) = await repo.list_stages(job)  # type: ignore[arg-type]
    kept = next(o for o in outcomes if not isinstance(o, BaseException))
    assert row.metadata == kept.metadata
    again = await repo.complete_stage(job, CLIPS, row.metadata)  # type: ignore[arg-type]  # a resent call
    assert row.metadata == again.metadata


async def test_fail_job_stops_its_running_stage(store: tuple[JobStore, NewJob]) -> None:
    repo, new_job = store
    job = await new_job()
    await repo.start_stage(job, CLIPS, worker="w1")  # type: ignore[arg-type]
    assert await repo.heartbeat_stage(job, CLIPS, worker="w1")  # type: ignore[arg-type]
    await repo.fail_job(job, "the budget ran out")  # type: ignore[arg-type]
    assert not await repo.heartbeat_stage(job, CLIPS, worker="w1")  # type: ignore[arg-type]
    with pytest.raises(InvalidStateError):
        await repo.complete_stage(job, CLIPS, {"done": 1}, worker="w1")  # type: ignore[arg-type]
    (row,) = await repo.list_stages(job)  # type: ignore[arg-type]
    assert (StageStatus.FAILED, "the budget ran out") == (row.status, row.error)


async def test_progress_never_goes_back(store: tuple[JobStore, NewJob]) -> None:
    repo, new_job = store
    job = await new_job()
    await repo.update_progress(job, CLIPS, 80)  # type: ignore[arg-type]
    moved = await repo.update_progress(job, CLIPS, 50)  # type: ignore[arg-type]
    assert 80 == moved.progress
