"""The budget holds: the third $0.02 call under a $0.05 limit is refused before the API is called."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from uuid import UUID

import pytest
from shared.errors import BudgetExceededError
from shared.testing.fixtures import Fakes
from shared.testing.users import create_job_for_new_user

from title_stage.container import StageContainer
from title_stage.stage import title_job

MakeJob = Callable[[Decimal], Awaitable[UUID]]


@pytest.fixture(params=["fakes", "real services"])
def setup(request: pytest.FixtureRequest) -> tuple[StageContainer, MakeJob]:
    if request.param == "fakes":
        container: StageContainer = request.getfixturevalue("fake_container")
        fakes: Fakes = request.getfixturevalue("fakes")

        async def fake_job(limit: Decimal) -> UUID:
            return (await fakes.add_job(budget_limit=limit)).id

        return container, fake_job
    real: StageContainer = request.getfixturevalue("real_container")

    async def real_job(limit: Decimal) -> UUID:
        return (await create_job_for_new_user(real.db(), budget_limit=limit)).id

    return real, real_job


async def test_the_third_call_is_refused_and_charged_nothing(setup: tuple[StageContainer, MakeJob]) -> None:
    container, make_job = setup
    job_id = await make_job(Decimal("0.05"))
    api = container.title_api()
    await title_job(job_id)
    await title_job(job_id)
    calls = api.calls
    with pytest.raises(BudgetExceededError) as refused:
        await title_job(job_id)
    assert calls == api.calls  # the API was not called for the refused request
    assert Decimal("0.04") == refused.value.spent
    assert Decimal("0.0400") == await container.cost_tracker().get_total_cost(job_id)
    assert Decimal("0.0400") == (await container.jobs().get_job(job_id)).total_cost


async def test_a_budget_set_on_the_fakes_for_a_known_job_is_the_one_that_holds(
    fake_container: StageContainer, fakes: Fakes
) -> None:
    """0.1.0's fakes ignored it (the job was known already), and this test stopped guarding the spending."""
    job = await fakes.add_job()
    fakes.costs.add_job(job.id, budget_limit=Decimal("0.03"))
    api = fake_container.title_api()
    await title_job(job.id)
    calls = api.calls
    with pytest.raises(BudgetExceededError):
        await title_job(job.id)  # the second $0.02 call
    assert calls == api.calls
