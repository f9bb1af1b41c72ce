"""The fakes never ignore what they are told, and a test that reaches for their missing database learns why."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from dependency_injector import providers

from shared.container import Container
from shared.errors import BudgetExceededError, NoDatabaseError
from shared.health import HealthStatus
from shared.models import StageName
from shared.testing.fixtures import Fakes


async def test_explicit_budget_on_a_job_the_world_knows_takes_effect(fakes: Fakes) -> None:
    job = await fakes.add_job()  # the tracker's default budget ($50)
    fakes.costs.add_job(job.id, budget_limit=Decimal("0.03"))
    async with fakes.costs.reserve(job.id, StageName.CLIP_GENERATION, "api", Decimal("0.02")) as first:
        await first.commit(Decimal("0.02"))
    with pytest.raises(BudgetExceededError) as refused:  # the second $0.02 call is refused
        async with fakes.costs.reserve(job.id, StageName.CLIP_GENERATION, "api", Decimal("0.02")):
            pass
    assert Decimal("0.03") == refused.value.limit
    assert Decimal("0.03") == (await fakes.jobs.get_job(job.id)).budget_limit


async def test_add_job_without_a_budget_leaves_a_known_jobs_budget(fakes: Fakes) -> None:
    job = await fakes.add_job(budget_limit=Decimal("0.05"))
    fakes.costs.add_job(job.id)
    assert Decimal("0.05") == (await fakes.jobs.get_job(job.id)).budget_limit


async def test_a_second_explicit_budget_on_a_tracker_only_job_takes_effect(fakes: Fakes) -> None:
    job_id = uuid.uuid4()
    fakes.costs.add_job(job_id, budget_limit=Decimal(1))
    fakes.costs.add_job(job_id, budget_limit=Decimal("0.01"))
    with pytest.raises(BudgetExceededError):
        async with fakes.costs.reserve(job_id, StageName.CLIP_GENERATION, "api", Decimal("0.02")):
            pass


async def test_the_fakes_database_raises_a_pipeline_error_that_says_what_to_do(fake_container: Container) -> None:
    db = fake_container.db()
    with pytest.raises(NoDatabaseError, match=r"use `real_container`.*override `db`") as raised:
        await db.fetch("select 1")
    assert "no_database" == raised.value.code
    assert HealthStatus("db", "down", 0.0, "not configured") == await db.health_check()


async def test_the_fakes_database_can_be_overridden(fake_container: Container) -> None:
    mine = object()
    fake_container.db.override(providers.Object(mine))
    assert mine is fake_container.db()


async def test_paid_calls_on_the_fakes_record_no_usage_instead_of_failing(fake_container: Container) -> None:
    assert await fake_container.paid_calls().usage_of(uuid.uuid4()) is None
