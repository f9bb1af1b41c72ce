"""One contract across collaborators: the job store and the cost tracker together, real and fake.

The real pair shares one PostgreSQL, so a job's budget and total are one row; the fakes share one FakeWorld.
The same scenario runs on both, so the fakes cannot drift apart from each other or from the database.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

import pytest

from shared.container import Container
from shared.cost_tracking import CostLedger
from shared.errors import BudgetExceededError
from shared.jobs import JobStore
from shared.models import JobStatus, StageName, StageStatus
from shared.testing.fixtures import Fakes
from shared.testing.users import create_user

CLIPS = StageName.CLIP_GENERATION


@dataclass
class Pair:
    jobs: JobStore
    ledger: CostLedger
    new_user: Callable[[], Awaitable[UUID]]


@pytest.fixture(params=["real", "fake"])
def pair(request: pytest.FixtureRequest) -> Pair:
    if request.param == "fake":
        container: Container = request.getfixturevalue("fake_container")
        fakes: Fakes = request.getfixturevalue("fakes")

        async def new_fake_user() -> UUID:
            return fakes.jobs.add_user()

        return Pair(container.jobs(), container.cost_tracker(), new_fake_user)
    container = request.getfixturevalue("real_container")
    db = container.db()

    async def new_real_user() -> UUID:
        return await create_user(db)

    return Pair(container.jobs(), container.cost_tracker(), new_real_user)


async def test_the_tracker_knows_a_new_job_and_its_budget_at_once(pair: Pair) -> None:
    job = await pair.jobs.create_job(
        user_id=await pair.new_user(), audio_url="a.mp3", user_prompt="p", budget_limit=Decimal("0.05")
    )
    status = await pair.ledger.get_budget(job.id)
    assert Decimal("0.05") == status.limit
    assert Decimal(0) == status.spent


async def test_the_third_two_cent_call_under_five_cents_is_refused_and_costs_nothing(pair: Pair) -> None:
    job = await pair.jobs.create_job(
        user_id=await pair.new_user(), audio_url="a.mp3", user_prompt="p", budget_limit=Decimal("0.05")
    )
    async with pair.ledger.reserve(job.id, CLIPS, "replicate", "0.02") as first:
        await first.commit("0.02")
    assert Decimal("0.0200") == (await pair.jobs.get_job(job.id)).total_cost
    async with pair.ledger.reserve(job.id, CLIPS, "replicate", "0.02") as second:
        await second.commit("0.02")
    with pytest.raises(BudgetExceededError) as refused:
        async with pair.ledger.reserve(job.id, CLIPS, "replicate", "0.02"):
            pytest.fail("the third reservation must be refused")
    assert Decimal("0.04") == refused.value.spent
    assert Decimal("0.0400") == (await pair.jobs.get_job(job.id)).total_cost
    assert Decimal("0.0400") == await pair.ledger.get_total_cost(job.id)
    assert 2 == len(await pair.ledger.list_costs(job.id))


async def test_track_cost_shows_in_the_job_total(pair: Pair) -> None:
    job = await pair.jobs.create_job(user_id=await pair.new_user(), audio_url="a.mp3", user_prompt="p")
    await pair.ledger.track_cost(job.id, CLIPS, "openai", "0.1234", idempotency_key="k1")
    await pair.ledger.track_cost(job.id, CLIPS, "openai", "0.1234", idempotency_key="k1")
    assert Decimal("0.1234") == (await pair.jobs.get_job(job.id)).total_cost


async def test_stage_progress_and_costs_tell_one_story(pair: Pair) -> None:
    job = await pair.jobs.create_job(
        user_id=await pair.new_user(), audio_url="a.mp3", user_prompt="p", budget_limit=Decimal(1)
    )
    await pair.jobs.start_stage(job.id, CLIPS)
    async with pair.ledger.reserve(job.id, CLIPS, "replicate", "0.50") as reservation:
        assert Decimal("0.50") == (await pair.ledger.get_budget(job.id)).reserved
        await reservation.commit("0.45")
    await pair.jobs.update_progress(job.id, CLIPS, 60)
    await pair.jobs.complete_stage(job.id, CLIPS, {"clips": 3})
    current = await pair.jobs.get_job(job.id)
    assert (JobStatus.PROCESSING, CLIPS, 60) == (current.status, current.current_stage, current.progress)
    assert Decimal("0.4500") == current.total_cost
    status = await pair.ledger.get_budget(job.id)
    assert (Decimal("0.4500"), Decimal(0)) == (status.spent, status.reserved)
    [stage] = await pair.jobs.list_stages(job.id)
    assert (StageStatus.COMPLETED, {"clips": 3}) == (stage.status, stage.metadata)
