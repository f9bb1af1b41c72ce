"""The route through the app, with starlette's TestClient (which runs the app, and its container, in its own loop)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from dependency_injector import providers
from fastapi.testclient import TestClient
from shared.config import Settings
from shared.testing.fixtures import Fakes

from title_stage.app import create_app
from title_stage.container import StageContainer


def test_post_title_runs_the_stage_for_the_job(test_settings: Settings, fakes: Fakes) -> None:
    container = StageContainer()
    container.settings.override(test_settings)
    for name, fake in {"db": None, "redis": fakes.cache, "jobs": fakes.jobs, "cost_tracker": fakes.costs}.items():
        getattr(container, name).override(providers.Object(fake))
    container.storage.override(providers.Object(fakes.storage))
    job = asyncio.run(fakes.add_job(budget_limit=Decimal(1), prompt="glass birds at dawn"))  # fakes bind no loop
    with TestClient(create_app(container)) as client:
        answer = client.post(f"/jobs/{job.id}/title")
    assert 200 == answer.status_code, answer.text
    assert "Glass Birds At Dawn" == answer.json()["title"]
    assert Decimal("0.0200") == fakes.jobs.world.jobs[job.id].total_cost
