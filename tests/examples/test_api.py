"""The example gateway: who may do what, uploads limited while they stream, cleanup after failures, schemathesis."""

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
from starlette.testclient import TestClient

from containers import Container
from examples import api
from shared.api.testing import MakeToken
from shared.config import Settings
from shared.demo import generate_song
from shared.errors import DatabaseUnavailableError
from shared.models import StageName
from shared.testing import FakeCache, FakeCostTracker, FakeJobStore, FakeStorage, assert_injections
from shared.testing.fixtures import Fakes

SONG = generate_song(seconds=6)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload(audio: bytes = SONG, prompt: str = "rain on a neon city", **fields: str) -> dict[str, Any]:
    return {
        "files": {"audio": ("song.mp3", io.BytesIO(audio), "audio/mpeg")},  # the name and type claimed lie
        "data": {"prompt": prompt, **fields},
    }


def test_injections_match_their_providers() -> None:
    assert_injections(api)


def test_post_job_creates_it_for_the_tokens_user(api_client: TestClient, fakes: Fakes, make_token: MakeToken) -> None:
    user = fakes.jobs.add_user()
    response = api_client.post("/jobs", **upload(SONG, "  rain  on neon "), headers=bearer(make_token(user)))
    assert 201 == response.status_code, response.text
    job = response.json()
    assert (str(user), "queued", "rain on neon") == (job["user_id"], job["status"], job["user_prompt"])
    assert job["audio_url"].endswith("/song.wav")  # the content decided: a WAV, whatever the name claimed
    [(bucket, path)] = list(fakes.storage.objects)
    assert "audio" == bucket
    assert f"memory://fake-storage/object/audio/{path}" == job["audio_url"]  # upload_file's URL is what is stored


@pytest.mark.parametrize(("method", "path"), [("POST", "/jobs"), ("GET", "/jobs/00000000-0000-4000-8000-000000000000")])
def test_anonymous_requests_are_401(api_client: TestClient, method: str, path: str) -> None:
    response = api_client.request(method, path, **(upload() if method == "POST" else {}))
    assert 401 == response.status_code
    assert "authentication_failed" == response.json()["error"]["code"]
    assert "Bearer" == response.headers["www-authenticate"]


def test_a_bad_token_is_401_and_says_so(api_client: TestClient, make_token: MakeToken, fakes: Fakes) -> None:
    expired = make_token(fakes.jobs.add_user(), expires_in=-3600)
    response = api_client.get(f"/jobs/{uuid.uuid4()}", headers=bearer(expired))
    assert (401, 'Bearer error="invalid_token"') == (response.status_code, response.headers["www-authenticate"])
    assert "expired" in response.json()["error"]["message"]


def test_the_x_user_id_header_is_no_identity(api_client: TestClient, fakes: Fakes) -> None:
    response = api_client.post("/jobs", **upload(), headers={"X-User-Id": str(fakes.jobs.add_user())})
    assert 401 == response.status_code
    assert {} == fakes.storage.objects


async def test_the_owner_reads_the_job_with_stages_and_costs(
    api_client: TestClient, fakes: Fakes, make_token: MakeToken
) -> None:
    job = await fakes.add_job()
    await fakes.jobs.start_stage(job.id, StageName.AUDIO_ANALYSIS)
    await fakes.costs.track_cost(job.id, StageName.AUDIO_ANALYSIS, "openai", Decimal("0.0123"))
    body = api_client.get(f"/jobs/{job.id}", headers=bearer(make_token(job.user_id))).json()
    assert str(job.id) == body["job"]["id"]
    assert ["audio_analysis"] == [stage["stage_name"] for stage in body["stages"]]
    assert ["0.0123"] == [cost["cost"] for cost in body["costs"]]


async def test_another_users_job_is_404_exactly_like_a_missing_one(
    api_client: TestClient, fakes: Fakes, make_token: MakeToken
) -> None:
    job = await fakes.add_job()
    stranger = make_token(fakes.jobs.add_user())
    theirs = api_client.get(f"/jobs/{job.id}", headers=bearer(stranger))
    await fakes.jobs.fail_job(job.id, "gone")  # still there; now compare with a job that never existed
    missing_id = uuid.uuid4()
    missing = api_client.get(f"/jobs/{missing_id}", headers=bearer(stranger))
    assert (404, 404) == (theirs.status_code, missing.status_code)
    assert theirs.json()["error"] | {"job_id": None} == missing.json()["error"] | {"job_id": None}
    assert str(job.id) == theirs.json()["error"]["job_id"]


async def test_the_service_role_may_act_for_any_user(
    api_client: TestClient, fakes: Fakes, make_token: MakeToken
) -> None:
    service = bearer(make_token(role="service_role"))
    job = await fakes.add_job()
    assert 200 == api_client.get(f"/jobs/{job.id}", headers=service).status_code
    user = fakes.jobs.add_user()
    created = api_client.post("/jobs", **upload(user_id=str(user)), headers=service)
    assert (201, str(user)) == (created.status_code, created.json()["user_id"])
    unnamed = api_client.post("/jobs", **upload(), headers=service)
    assert 422 == unnamed.status_code


async def test_a_user_cannot_create_a_job_for_someone_else(
    api_client: TestClient, fakes: Fakes, make_token: MakeToken
) -> None:
    me, other = fakes.jobs.add_user(), fakes.jobs.add_user()
    response = api_client.post("/jobs", **upload(user_id=str(other)), headers=bearer(make_token(me)))
    assert (404, "user_not_found") == (response.status_code, response.json()["error"]["code"])
    assert [] == [*fakes.storage.objects, *await fakes.jobs.list_jobs_for_user(other)]


def test_unknown_user_is_404_and_the_stored_audio_is_deleted(
    api_client: TestClient, fakes: Fakes, make_token: MakeToken
) -> None:
    """Observed before: a 404 for an unknown user left the upload in storage, per request."""
    response = api_client.post("/jobs", **upload(), headers=bearer(make_token(uuid.uuid4())))
    assert (404, "user_not_found") == (response.status_code, response.json()["error"]["code"])
    assert ["upload_file", "delete_file"] == [call[0] for call in fakes.storage.calls]
    assert {} == fakes.storage.objects


async def test_bad_audio_is_refused_with_400_and_nothing_is_stored(
    api_client: TestClient, fakes: Fakes, make_token: MakeToken
) -> None:
    user = fakes.jobs.add_user()
    response = api_client.post("/jobs", **upload(b"<html>not audio</html>"), headers=bearer(make_token(user)))
    assert (400, "validation_error") == (response.status_code, response.json()["error"]["code"])
    assert "Accepted" in response.json()["error"]["message"]
    assert ([], {}) == (await fakes.jobs.list_jobs_for_user(user), fakes.storage.objects)


def test_a_form_without_audio_is_422_with_the_error_body(api_client: TestClient, make_token: MakeToken) -> None:
    response = api_client.post("/jobs", data={"prompt": "x y z"}, headers=bearer(make_token()))
    assert (422, "request_invalid") == (response.status_code, response.json()["error"]["code"])
    assert ["body.audio: a file part named audio is required"] == response.json()["error"]["problems"]


def test_a_malformed_upload_gets_the_same_error_body(api_client: TestClient, make_token: MakeToken) -> None:
    response = api_client.post(
        "/jobs",
        content=b"--x\r\nnot a part--x--\r\n",
        headers={"content-type": "multipart/form-data; boundary=x", **bearer(make_token())},
    )
    assert (400, "http_400") == (response.status_code, response.json()["error"]["code"])


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nowhere", 404), ("DELETE", "/jobs", 405), ("GET", "/jobs/not-a-uuid", 422)],
)
def test_framework_errors_get_the_error_body(
    api_client: TestClient, make_token: MakeToken, method: str, path: str, status: int
) -> None:
    response = api_client.request(method, path, headers=bearer(make_token()))
    assert status == response.status_code
    assert {"code", "message"} <= set(response.json()["error"])


def test_health_lists_every_service(api_client: TestClient, api_container: Container) -> None:
    class Down(FakeCache):
        async def health_check(self):  # type: ignore[no-untyped-def] # the fake's own signature
            from shared.health import HealthStatus  # noqa: PLC0415

            return HealthStatus("redis", "down", 1.0, "gone")

    with api_container.db.override(providers.Object(HealthyDb())):
        ok = api_client.get("/health")
        with api_container.redis.override(providers.Object(Down())):
            down = api_client.get("/health")
    no_db = api_client.get("/health")  # the fake world has no database: reported down, not a 500
    assert (200, "ok") == (ok.status_code, ok.json()["status"])
    assert ["postgres", "redis", "storage"] == [s["name"] for s in ok.json()["services"]]
    assert (503, "down") == (down.status_code, down.json()["status"])
    assert (503, "db") == (no_db.status_code, no_db.json()["services"][0]["name"])


class HealthyDb:
    async def health_check(self) -> object:
        from shared.health import HealthStatus  # noqa: PLC0415

        return HealthStatus("postgres", "ok", 0.5)


def test_retryable_errors_carry_retry_after(
    api_client: TestClient, api_container: Container, make_token: MakeToken
) -> None:
    class Unavailable(FakeJobStore):
        async def get_job(self, job_id: uuid.UUID):  # type: ignore[no-untyped-def] # raising is the point
            raise DatabaseUnavailableError("PostgreSQL is restarting; retry", retry_after=7)

    with api_container.jobs.override(providers.Object(Unavailable())):
        response = api_client.get(f"/jobs/{uuid.uuid4()}", headers=bearer(make_token()))
    assert (503, "7") == (response.status_code, response.headers["retry-after"])


# --- the body limit, while the upload streams (httpx's ASGI transport pulls the body only as the app reads it) ---


class CountingBody:
    """A request body of ``total`` bytes in chunks, counting how much the server pulled."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total, self.chunk, self.pulled = total, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        boundary = b'--b\r\ncontent-disposition: form-data; name="audio"; filename="a.wav"\r\n\r\n'
        self.pulled += len(boundary)
        yield boundary
        while self.pulled < self.total:
            self.pulled += self.chunk
            yield b"\0" * self.chunk


@pytest.fixture
async def asgi(api_container: Container, api_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Yield an httpx client on the gateway built with a 1 MB audio limit, its lifespan in the test's loop."""
    api_container.settings.override(api_settings.model_copy(update={"audio_max_size_mb": 1}))
    app = api.create_app(api_container)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield client


async def test_a_declared_500_mb_upload_is_413_before_a_byte_is_read(
    asgi: httpx.AsyncClient, make_token: MakeToken, fakes: Fakes
) -> None:
    body = CountingBody(500 * 1024 * 1024)
    headers = {
        "content-type": "multipart/form-data; boundary=b",
        "content-length": str(body.total),
        **bearer(make_token(fakes.jobs.add_user())),
    }
    response = await asgi.post("/jobs", content=body, headers=headers)
    assert (413, "payload_too_large") == (response.status_code, response.json()["error"]["code"])
    assert "close" == response.headers["connection"]
    assert 0 == body.pulled


async def test_a_chunked_upload_is_cut_at_the_limit(
    asgi: httpx.AsyncClient, make_token: MakeToken, fakes: Fakes, api_container: Container
) -> None:
    """Observed before: a 500 MB upload wrote 467 MB to temporary disk before the 400."""
    body = CountingBody(50 * 1024 * 1024)
    headers = {"content-type": "multipart/form-data; boundary=b", **bearer(make_token(fakes.jobs.add_user()))}
    response = await asgi.post("/jobs", content=body, headers=headers)
    assert 413 == response.status_code
    assert (
        body.pulled <= api.upload_limit(api_container.settings()) + 2 * body.chunk
    )  # never more than the limit was read
    assert {} == fakes.storage.objects


async def test_an_anonymous_upload_is_refused_before_its_body_is_read(asgi: httpx.AsyncClient, fakes: Fakes) -> None:
    body = CountingBody(10 * 1024 * 1024)
    response = await asgi.post("/jobs", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert (401, 0) == (response.status_code, body.pulled)


# --- schemathesis: no 5xx and nothing off the schema, with and without a valid token ---


SCHEMA_USER = uuid.UUID("00000000-0000-4000-8000-0000000000aa")
SCHEMA_SECRET = "schemathesis-secret-with-32-characters-or-more"


def schema_app() -> FastAPI:
    container = Container()
    container.settings.override(
        Settings(
            _env_file=None,
            environment="development",
            log_console=False,
            supabase_url="http://127.0.0.1:9",
            jwt_secret_key=SCHEMA_SECRET,
        )
    )
    jobs = FakeJobStore()
    jobs.add_user(SCHEMA_USER)
    container.jobs.override(providers.Object(jobs))
    container.cost_tracker.override(providers.Object(FakeCostTracker()))
    container.storage.override(providers.Object(FakeStorage()))
    container.redis.override(providers.Object(FakeCache()))
    container.db.override(providers.Object(HealthyDb()))
    return api.create_app(container)


def schema_token() -> str:
    import time  # noqa: PLC0415

    import jwt  # noqa: PLC0415

    now = int(time.time())
    claims = {"iss": "http://127.0.0.1:9/auth/v1", "aud": "authenticated", "sub": str(SCHEMA_USER)}
    return jwt.encode({**claims, "role": "authenticated", "iat": now, "exp": now + 3600}, SCHEMA_SECRET)


schema = schemathesis.openapi.from_asgi("/openapi.json", schema_app())
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_never_answers_with_a_server_error_or_off_its_schema(case: schemathesis.Case[Any]) -> None:
    """No 5xx and no response outside the schema, signed in (the routes' own logic) and anonymous (401)."""
    case.call_and_validate(headers=bearer(schema_token()), checks=CHECKS)
    case.call_and_validate(checks=CHECKS)


def test_an_anonymous_sign_in_cannot_create_a_paid_job_but_reads_its_own(
    api_client: TestClient, fakes: Fakes, make_token: MakeToken
) -> None:
    """POST /jobs spends paid-API budget (PayingUser): 403 for an anonymous user, before the upload is read."""
    user = fakes.jobs.add_user()
    anonymous = make_token(user, is_anonymous=True, amr=[{"method": "anonymous", "timestamp": 1}])
    response = api_client.post("/jobs", **upload(SONG, "rain on neon"), headers=bearer(anonymous))
    assert (403, "permission_denied") == (response.status_code, response.json()["error"]["code"])
    assert "sign up" in response.json()["error"]["message"]
    assert 404 == api_client.get(f"/jobs/{uuid.uuid4()}", headers=bearer(anonymous)).status_code  # not a 403
