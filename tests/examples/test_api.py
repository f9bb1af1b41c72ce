"""The example gateway over httpx: uploads validated and stored, errors mapped, health, and schemathesis."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import schemathesis
from dependency_injector import providers
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from containers import Container
from examples import api
from shared.demo import generate_song
from shared.errors import (
    BudgetExceededError,
    ConfigError,
    DatabaseUnavailableError,
    InvalidStateError,
    JobNotFoundError,
    PipelineError,
    ValidationError,
)
from shared.models import StageName
from shared.testing import FakeCache, FakeCostTracker, FakeJobStore, FakeStorage, assert_injections
from shared.testing.fixtures import Fakes


@pytest.fixture
async def client(fake_container: Container) -> AsyncIterator[httpx.AsyncClient]:
    app = api.create_app(fake_container)
    async with app.router.lifespan_context(app):  # the app's own lifespan: wiring and resources
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield http


def upload(audio: bytes, prompt: str = "rain on a neon city", user: uuid.UUID | None = None) -> dict[str, object]:
    return {
        "files": {"audio": ("song.mp3", io.BytesIO(audio), "audio/mpeg")},  # the name and type claimed lie
        "data": {"prompt": prompt},
        "headers": {"X-User-Id": str(user or uuid.uuid4())},
    }


def test_injections_match_their_providers() -> None:
    assert_injections(api)


async def test_post_job_validates_stores_and_creates(client: httpx.AsyncClient, fakes: Fakes) -> None:
    user = fakes.jobs.add_user()
    response = await client.post("/jobs", **upload(generate_song(seconds=6), "  rain  on neon ", user))  # type: ignore[arg-type]
    assert 201 == response.status_code, response.text
    job = response.json()
    assert ("queued", "rain on neon") == (job["status"], job["user_prompt"])
    assert job["audio_url"].endswith("/song.wav")  # the content decided: a WAV, whatever the name claimed
    assert await fakes.storage.exists("audio", job["audio_url"])


async def test_bad_audio_is_refused_with_400_and_nothing_is_stored(client: httpx.AsyncClient, fakes: Fakes) -> None:
    user = fakes.jobs.add_user()
    response = await client.post("/jobs", **upload(b"<html>not audio</html>", user=user))  # type: ignore[arg-type]
    assert 400 == response.status_code
    assert "validation_error" == response.json()["error"]["code"]
    assert "Accepted" in response.json()["error"]["message"]
    assert [] == await fakes.jobs.list_jobs_for_user(user)


async def test_get_job_returns_job_stages_and_costs(client: httpx.AsyncClient, fakes: Fakes) -> None:
    job = await fakes.add_job()
    await fakes.jobs.start_stage(job.id, StageName.AUDIO_ANALYSIS)
    await fakes.costs.track_cost(job.id, StageName.AUDIO_ANALYSIS, "openai", Decimal("0.0123"))
    body = (await client.get(f"/jobs/{job.id}")).json()
    assert str(job.id) == body["job"]["id"]
    assert ["audio_analysis"] == [stage["stage_name"] for stage in body["stages"]]
    assert ["0.0123"] == [cost["cost"] for cost in body["costs"]]


async def test_a_malformed_upload_gets_the_same_error_body(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/jobs",
        content=b"--x\r\nnot a part--x--\r\n",
        headers={"content-type": "multipart/form-data; boundary=x", "X-User-Id": str(uuid.uuid4())},
    )
    assert 400 == response.status_code
    assert "http_400" == response.json()["error"]["code"]


async def test_unknown_job_is_404_with_a_json_error(client: httpx.AsyncClient) -> None:
    missing = uuid.uuid4()
    response = await client.get(f"/jobs/{missing}")
    assert 404 == response.status_code
    assert {"code": "job_not_found", "job_id": str(missing)} == {
        k: v for k, v in response.json()["error"].items() if k != "message"
    }


async def test_health_lists_every_service(client: httpx.AsyncClient, fake_container: Container) -> None:
    class Down(FakeCache):
        async def health_check(self):  # type: ignore[no-untyped-def] # the fake's own signature
            from shared.health import HealthStatus  # noqa: PLC0415

            return HealthStatus("redis", "down", 1.0, "gone")

    with fake_container.db.override(providers.Object(HealthyDb())):
        ok = await client.get("/health")
        with fake_container.redis.override(providers.Object(Down())):
            down = await client.get("/health")
    assert (200, "ok") == (ok.status_code, ok.json()["status"])
    assert ["postgres", "redis", "storage"] == [s["name"] for s in ok.json()["services"]]
    assert (503, "down") == (down.status_code, down.json()["status"])


class HealthyDb:
    async def health_check(self) -> object:
        from shared.health import HealthStatus  # noqa: PLC0415

        return HealthStatus("postgres", "ok", 0.5)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ValidationError("bad"), 400),
        (BudgetExceededError(job_id=uuid.uuid4(), spent=Decimal(1), limit=Decimal(1)), 402),
        (JobNotFoundError(job_id=uuid.uuid4()), 404),
        (InvalidStateError("no"), 409),
        (DatabaseUnavailableError("down", retry_after=7), 503),
        (ConfigError(problems=("X: missing",)), 500),
        (PipelineError("other"), 500),
    ],
)
def test_every_pipeline_error_maps_to_a_status(error: PipelineError, status: int) -> None:
    assert status == api.status_for(error)


async def test_retryable_errors_carry_retry_after(client: httpx.AsyncClient, fake_container: Container) -> None:
    class Unavailable(FakeJobStore):
        async def get_job(self, job_id: uuid.UUID):  # type: ignore[no-untyped-def] # raising is the point
            raise DatabaseUnavailableError("PostgreSQL is restarting; retry", retry_after=7)

    with fake_container.jobs.override(providers.Object(Unavailable())):
        response = await client.get(f"/jobs/{uuid.uuid4()}")
    assert (503, "7") == (response.status_code, response.headers["retry-after"])


def schema_app() -> FastAPI:
    container = Container()
    jobs, costs = FakeJobStore(), FakeCostTracker()
    container.jobs.override(providers.Object(jobs))
    container.cost_tracker.override(providers.Object(costs))
    container.storage.override(providers.Object(FakeStorage()))
    container.redis.override(providers.Object(FakeCache()))
    container.db.override(providers.Object(HealthyDb()))
    return api.create_app(container)


schema = schemathesis.openapi.from_asgi("/openapi.json", schema_app())


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_never_answers_with_a_server_error_or_off_its_schema(case: schemathesis.Case[Any]) -> None:
    """No 5xx and no response outside the schema; a schema-valid but refused upload (422) is the point of it."""
    case.call_and_validate(
        checks=[not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
    )
