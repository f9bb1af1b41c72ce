"""The budget holds: with room for two titles and one more estimate, the third is refused before the API is called."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from uuid import UUID

import pytest
from shared.errors import BudgetExceededError
from shared.testing import run_stage
from shared.testing.fixtures import Fakes
from shared.testing.users import create_job_for_new_user

from title_stage.api import MODEL, SimulatedTitleApi
from title_stage.container import StageContainer
from title_stage.stage import ESTIMATE, STAGE, stages

PROMPT = "paper boats on a flooded street"
MakeJob = Callable[[Decimal], Awaitable[UUID]]


@pytest.fixture(params=["fakes", "real services"])
def setup(request: pytest.FixtureRequest) -> tuple[StageContainer, MakeJob]:
    if request.param == "fakes":
        container: StageContainer = request.getfixturevalue("fake_container")
        fakes: Fakes = request.getfixturevalue("fakes")

        async def fake_job(limit: Decimal) -> UUID:
            return (await fakes.add_job(budget_limit=limit, prompt=PROMPT)).id

        return container, fake_job
    real: StageContainer = request.getfixturevalue("real_container")

    async def real_job(limit: Decimal) -> UUID:
        return (await create_job_for_new_user(real.db(), budget_limit=limit, user_prompt=PROMPT)).id

    return real, real_job


def ledger(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.0001"), rounding="ROUND_CEILING")  # the ledger's 4 places, rounded up


async def costs(container: StageContainer) -> tuple[Decimal, Decimal]:
    """Return what one title costs and what its admission holds, both from the price catalogue."""
    catalogue = container.price_catalogue()
    answer = (await SimulatedTitleApi().suggest_title(PROMPT)).answer
    actual = catalogue.price_openai(answer, model=MODEL).cost
    return ledger(actual), ledger(catalogue.estimate("openai", MODEL, ESTIMATE))


async def test_the_third_title_is_refused_and_charged_nothing(setup: tuple[StageContainer, MakeJob]) -> None:
    container, make_job = setup
    actual, held = await costs(container)
    job_id = await make_job(2 * actual + held - Decimal("0.0001"))
    api = container.title_api()
    for item in ("first", "second"):  # two requests for a title: two items of the stage
        await run_stage(stages, STAGE.value, container=container, job_id=job_id, item=item)
    calls = api.calls
    with pytest.raises(BudgetExceededError) as refused:
        await run_stage(stages, STAGE.value, container=container, job_id=job_id, item="third")
    assert calls == api.calls  # the API was not called for the refused request
    assert 2 * actual == refused.value.spent
    assert 2 * actual == await container.cost_tracker().get_total_cost(job_id)
    job = await container.jobs().get_job(job_id)
    assert 2 * actual == job.total_cost
    assert "Budget exceeded" in str(job.error_message)  # the worker's policy: the job fails with the budget's message


async def test_a_budget_set_on_the_fakes_for_a_known_job_is_the_one_that_holds(
    fake_container: StageContainer, fakes: Fakes
) -> None:
    """0.1.0's fakes ignored it (the job was known already), and this test stopped guarding the spending."""
    actual, held = await costs(fake_container)
    job = await fakes.add_job(prompt=PROMPT)
    fakes.costs.add_job(job.id, budget_limit=actual + held - Decimal("0.0001"))
    api = fake_container.title_api()
    await run_stage(stages, STAGE.value, container=fake_container, job_id=job.id, item="first")
    calls = api.calls
    with pytest.raises(BudgetExceededError):
        await run_stage(stages, STAGE.value, container=fake_container, job_id=job.id, item="second")
    assert calls == api.calls
