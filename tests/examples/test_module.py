"""The example stage, first with the fakes through container.override(), then on the real local services."""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal
from unittest import mock

import pytest

from containers import Container
from examples import module
from examples.module import PLAN_ESTIMATE, PlanningModel, SimulatedPlanner, plan_scenes
from shared.errors import BudgetExceededError
from shared.lifecycle import resolve
from shared.models import AudioAnalysis, ClipBoundary, Mood, ScenePlan, StageName, StageStatus
from shared.testing import assert_injections
from shared.testing.fixtures import Fakes

# The example keeps its production retry delays (2 s, 4 s); its tests turn the waits off.
pytestmark = pytest.mark.usefixtures("retry_testing")


def analysis(job_id: uuid.UUID) -> AudioAnalysis:
    return AudioAnalysis(
        job_id=job_id,
        bpm=100,
        duration=12,
        mood=Mood(primary="wistful", energy_level="low", confidence=0.7),
        clip_boundaries=[ClipBoundary(start=0, end=6), ClipBoundary(start=6, end=12)],
    )


@pytest.fixture
def wired(fake_container: Container) -> Container:
    fake_container.wire(modules=[module])
    return fake_container


def test_injections_match_their_providers() -> None:
    assert_injections(module)


async def test_stage_with_fakes_plans_records_stores_and_caches(
    wired: Container, fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    job = await fakes.add_job(budget_limit=Decimal(1))
    planner = SimulatedPlanner(failures=2)
    with caplog.at_level(logging.INFO):
        plan = await plan_scenes(job.id, analysis(job.id), planner)

    assert 3 == planner.calls  # two 503s retried, then the answer
    assert [0, 1] == [clip.clip_index for clip in plan.clip_scripts]
    assert planner.cost == await fakes.costs.get_total_cost(job.id)
    assert plan == ScenePlan.model_validate_json(
        await fakes.storage.download_file("plans", f"{job.id}/scene_plan.json")
    )
    assert plan == await fakes.cache.get_json(f"scene_plan:{job.id}", model=ScenePlan)
    stage = (await fakes.jobs.list_stages(job.id))[0]
    assert (StageName.SCENE_PLANNING, StageStatus.COMPLETED) == (stage.stage_name, stage.status)
    tagged = [r for r in caplog.records if r.name == "examples.scene_planning" and r.levelno == logging.INFO]
    assert tagged
    assert 30 == (await fakes.jobs.get_job(job.id)).progress


async def test_stage_stops_before_spending_when_the_budget_is_too_small(wired: Container, fakes: Fakes) -> None:
    job = await fakes.add_job(budget_limit=PLAN_ESTIMATE / 2)
    model = mock.create_autospec(PlanningModel, instance=True)
    with pytest.raises(BudgetExceededError):
        await plan_scenes(job.id, analysis(job.id), model)
    model.plan.assert_not_called()
    assert Decimal(0) == await fakes.costs.get_total_cost(job.id)


async def test_stage_on_the_real_services(real_container: Container) -> None:
    real_container.wire(modules=[module])
    db = await resolve(real_container.db)
    jobs = await resolve(real_container.jobs)
    user = uuid.uuid4()
    await db.execute("insert into auth.users (id) values ($1)", user)
    job = await jobs.create_job(
        user_id=user, audio_url="audio/a.wav", user_prompt="rain on neon", budget_limit=Decimal(1)
    )

    plan = await plan_scenes(job.id, analysis(job.id), SimulatedPlanner(failures=1))

    storage = await resolve(real_container.storage)
    cache = await resolve(real_container.redis)
    assert plan == ScenePlan.model_validate_json(await storage.download_file("plans", f"{job.id}/scene_plan.json"))
    assert plan == await cache.get_json(f"scene_plan:{job.id}", model=ScenePlan)
    assert Decimal("0.0950") == await db.fetchval("select total_cost from jobs where id = $1", job.id)
    real_container.unwire()
