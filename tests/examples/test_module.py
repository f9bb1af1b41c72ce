"""The example stage, first on the fakes with shared.testing.run_stage, then by a real worker on the local services."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest
from dependency_injector import providers

from examples import module
from examples.module import MODEL, PLAN_ESTIMATE, PlanningContainer, PlanningModel, SimulatedPlanner
from shared.container import Container
from shared.errors import BudgetExceededError
from shared.lifecycle import resolve
from shared.models import AudioAnalysis, ClipBoundary, JobStatus, Mood, ScenePlan
from shared.stages import StageQueue, StageWorker
from shared.testing import run_stage
from shared.testing.fixtures import Fakes

STAGE = "scene_planning"


@pytest.fixture
def container_class() -> type[Container]:
    return PlanningContainer  # the fixtures build the module's own container


def analysis(job_id: uuid.UUID) -> AudioAnalysis:
    return AudioAnalysis(
        job_id=job_id,
        bpm=100,
        duration=12,
        mood=Mood(primary="wistful", energy_level="low", confidence=0.7),
        clip_boundaries=[ClipBoundary(start=0, end=6), ClipBoundary(start=6, end=12)],
    )


def payload(job_id: uuid.UUID) -> dict[str, Any]:
    return analysis(job_id).model_dump(mode="json")


async def test_stage_on_the_fakes_retries_the_503_prices_the_usage_stores_and_caches(
    fake_container: PlanningContainer, fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    job = await fakes.add_job(budget_limit=Decimal(1))
    planner = SimulatedPlanner(failures=2)
    fake_container.planner.override(providers.Object(planner))
    with caplog.at_level(logging.INFO):
        run = await run_stage(module.stages, STAGE, container=fake_container, job_id=job.id, payload=payload(job.id))

    assert (3, 3) == (run.attempts, planner.calls)  # two 503s, each a new attempt by the failure policy
    plan = ScenePlan.model_validate_json(await fakes.storage.download_file("plans", f"{job.id}/scene_plan.json"))
    assert [0, 1] == [clip.clip_index for clip in plan.clip_scripts]
    assert {"plan_url": mock.ANY, "clips": 2} == run.result
    assert plan == await fakes.cache.get_json(f"scene_plan:{job.id}", model=ScenePlan)
    _, answer = await SimulatedPlanner(failures=0).plan(analysis(job.id), job.user_prompt)
    priced = fake_container.price_catalogue().price_openai(answer, model=MODEL)
    [cost] = await fakes.costs.list_costs(job.id)  # one row: the 503 attempts released their reservations
    assert priced.cost.quantize(Decimal("0.0001"), rounding="ROUND_CEILING") == cost.cost
    assert 0 == sum(fakes.limiter.in_flight.values())  # every slot given back
    assert 3 == len(fakes.limiter.grants)
    assert 30 == (await fakes.jobs.get_job(job.id)).progress
    tagged = [r for r in caplog.records if r.name == "examples.scene_planning" and r.levelno == logging.INFO]
    assert str(job.id) == str(getattr(tagged[-1], "job_id", None))


async def test_stage_fails_the_job_before_spending_when_the_budget_is_too_small(
    fake_container: PlanningContainer, fakes: Fakes
) -> None:
    estimate = fake_container.price_catalogue().estimate("openai", MODEL, PLAN_ESTIMATE)
    job = await fakes.add_job(budget_limit=estimate / 2)
    planner = mock.create_autospec(PlanningModel, instance=True)
    fake_container.planner.override(providers.Object(planner))
    with pytest.raises(BudgetExceededError):
        await run_stage(module.stages, STAGE, container=fake_container, job_id=job.id, payload=payload(job.id))
    planner.plan.assert_not_called()
    assert [] == fakes.limiter.grants  # a budget refusal takes no rate slot
    failed = await fakes.jobs.get_job(job.id)
    assert JobStatus.FAILED == failed.status
    assert "Budget exceeded" in str(failed.error_message)
    assert Decimal(0) == await fakes.costs.get_total_cost(job.id)


async def test_a_worker_runs_the_stage_on_the_real_services(real_container: PlanningContainer) -> None:
    db = await resolve(real_container.db)
    jobs = real_container.jobs()
    user = uuid.uuid4()
    await db.execute("insert into auth.users (id) values ($1)", user)
    job = await jobs.create_job(
        user_id=user, audio_url="audio/a.wav", user_prompt="rain on neon", budget_limit=Decimal(1)
    )
    await StageQueue(db).submit(job.id, STAGE, payload=payload(job.id))
    settings = real_container.settings()
    worker = StageWorker(
        module.stages,
        db=db,
        dsn=settings.database_dsn,
        statement_cache_size=settings.statement_cache_size,
        heartbeat_interval=1.0,
        retry_base_delay=0.01,
        container=real_container,
    )
    running = asyncio.create_task(worker.run())
    deadline = time.monotonic() + 60
    while (status := await db.fetchval("select status from stage_runs where job_id = $1", job.id)) != "completed":
        assert status in ("queued", "running"), await db.fetchval(
            "select error from stage_runs where job_id = $1", job.id
        )
        assert time.monotonic() < deadline, "the stage did not complete in 60 s"
        await asyncio.sleep(0.05)
    worker.stop()
    await running

    plan = ScenePlan.model_validate_json(
        await real_container.storage().download_file("plans", f"{job.id}/scene_plan.json")
    )
    assert plan == await real_container.redis().get_json(f"scene_plan:{job.id}", model=ScenePlan)
    assert 2 == await db.fetchval("select attempt from stage_runs where job_id = $1", job.id)  # the 503, then the plan
    row = await db.fetchrow("select cost, usage from job_costs where job_id = $1", job.id)
    assert row is not None
    assert ("openai", MODEL) == (row["usage"]["provider"], row["usage"]["model"])
    assert row["cost"] == await db.fetchval("select total_cost from jobs where id = $1", job.id)
    assert 0 == await db.fetchval("select count(*) from job_cost_reservations where status = 'active'")
    assert 30 == (await jobs.get_job(job.id)).progress
