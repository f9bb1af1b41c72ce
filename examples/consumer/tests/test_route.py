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
from title_stage.stage import STAGE


@pytest.fixture
def api_app(api_container: StageContainer) -> FastAPI:
    return create_app(api_container)


def test_post_title_queues_the_stage_once_for_the_jobs_owner(
    api_client: TestClient, fakes: Fakes, make_token: MakeToken
) -> None:
    job = asyncio.run(fakes.add_job(budget_limit=Decimal(1), prompt="glass birds at dawn"))  # fakes bind no loop
    headers = {"Authorization": f"Bearer {make_token(job.user_id)}"}
    answer = api_client.post(f"/jobs/{job.id}/title", headers=headers)
    assert 202 == answer.status_code, answer.text
    assert {"job_id": str(job.id), "stage": STAGE.value, "queued": True} == answer.json()
    again = api_client.post(f"/jobs/{job.id}/title", headers=headers)
    assert (202, False) == (again.status_code, again.json()["queued"])  # asked before: nothing more is queued
    [submitted] = fakes.queue.submitted
    assert (job.id, STAGE.value, [""]) == (submitted.job_id, submitted.stage, list(submitted.items))


def test_another_users_job_is_404_and_anonymous_is_401(
    api_client: TestClient, fakes: Fakes, make_token: MakeToken
) -> None:
    job = asyncio.run(fakes.add_job(budget_limit=Decimal(1)))
    stranger = api_client.post(f"/jobs/{job.id}/title", headers={"Authorization": f"Bearer {make_token()}"})
    assert (404, "job_not_found") == (stranger.status_code, stranger.json()["error"]["code"])
    assert 401 == api_client.post(f"/jobs/{job.id}/title").status_code
    assert [] == fakes.queue.submitted  # nothing was queued for either


def test_health_route_reports_each_service(api_client: TestClient) -> None:
    answer = api_client.get("/health")
    report = {service["name"]: service["status"] for service in answer.json()["services"]}
    # On the fakes no database is configured: the route says so with a 503, never a 500.
    assert (503, {"db": "down", "redis": "ok", "storage": "ok"}) == (answer.status_code, report)
