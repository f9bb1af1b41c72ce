"""The route through the app, with starlette's TestClient and videogen-shared's glue fixtures (no conftest)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from shared.api.testing import MakeToken
from shared.testing.fixtures import Fakes

from title_stage.app import create_app
from title_stage.container import StageContainer


@pytest.fixture
def api_app(api_container: StageContainer) -> FastAPI:
    return create_app(api_container)


def test_post_title_runs_the_stage_for_the_jobs_owner(
    api_client: TestClient, fakes: Fakes, make_token: MakeToken
) -> None:
    job = asyncio.run(fakes.add_job(budget_limit=Decimal(1), prompt="glass birds at dawn"))  # fakes bind no loop
    answer = api_client.post(f"/jobs/{job.id}/title", headers={"Authorization": f"Bearer {make_token(job.user_id)}"})
    assert 200 == answer.status_code, answer.text
    assert "Glass Birds At Dawn" == answer.json()["title"]
    assert Decimal("0.0200") == fakes.world.jobs[job.id].total_cost


def test_another_users_job_is_404_and_anonymous_is_401(
    api_client: TestClient, fakes: Fakes, make_token: MakeToken
) -> None:
    job = asyncio.run(fakes.add_job(budget_limit=Decimal(1)))
    stranger = api_client.post(f"/jobs/{job.id}/title", headers={"Authorization": f"Bearer {make_token()}"})
    assert (404, "job_not_found") == (stranger.status_code, stranger.json()["error"]["code"])
    assert 401 == api_client.post(f"/jobs/{job.id}/title").status_code
    assert Decimal(0) == fakes.world.jobs[job.id].total_cost  # nothing ran for either


def test_health_route_reports_each_service(api_client: TestClient) -> None:
    answer = api_client.get("/health")
    report = {service["name"]: service["status"] for service in answer.json()["services"]}
    # On the fakes no database is configured: the route says so with a 503, never a 500.
    assert (503, {"db": "down", "redis": "ok", "storage": "ok"}) == (answer.status_code, report)
