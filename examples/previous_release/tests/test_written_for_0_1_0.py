"""A module's tests as 0.1.0's README showed them: the old container import, the fakes, a budget on them."""

from __future__ import annotations

import importlib
import sys
from decimal import Decimal

import pytest
from shared.errors import BudgetExceededError


def test_from_containers_import_container_warns_and_still_builds_the_container() -> None:
    sys.modules.pop("containers", None)
    with pytest.warns(DeprecationWarning, match=r"from shared\.container import Container"):
        from containers import Container

    assert "cost_tracker" in Container.providers
    assert "shared.container" == Container.__module__
    assert importlib.import_module("shared.container").Container is Container


async def test_a_budget_set_on_the_fakes_holds(fakes) -> None:
    job = await fakes.add_job()
    fakes.costs.add_job(job.id, budget_limit=Decimal("0.03"))
    await fakes.costs.track_cost(job.id, "scene_planning", "openai", Decimal("0.02"), idempotency_key="call-1")
    with pytest.raises(BudgetExceededError):
        async with fakes.costs.reserve(job.id, "scene_planning", "openai", Decimal("0.02")):
            pytest.fail("a second $0.02 call was admitted under a $0.03 budget")
    assert Decimal("0.02") == await fakes.costs.get_total_cost(job.id)
