"""The [api] glue on its own: error mapping and bodies, the container lifespan, current_user, the body guard."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.testclient import TestClient

from shared.api import (
    CurrentUser,
    PayloadTooLargeError,
    RequestLimits,
    RequestTimeoutError,
    add_health_route,
    container_lifespan,
    error_response,
    get_container,
    install_error_handlers,
    status_for,
)
from shared.auth import AuthenticationError, AuthUnavailableError, Principal, Role
from shared.config import Settings
from shared.container import Container
from shared.errors import (
    BudgetExceededError,
    ConfigError,
    DatabaseUnavailableError,
    InvalidStateError,
    JobNotFoundError,
    PipelineError,
    ValidationError,
)
from tests.fixtures.jwks import JwksServer, claims, make_ec_key, sign


def test_import_shared_loads_no_web_framework() -> None:
    """Only ``import shared.api`` loads FastAPI (dependency-injector's own wiring module imports it when present)."""
    code = (
        "import sys, shared, shared.auth, shared.errors, shared.config\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in {'fastapi', 'starlette', 'uvicorn'}], 'loaded'\n"
        "import shared.container\n"
        "assert 'shared.api' not in sys.modules\n"
        "import shared.api\n"
        "assert 'shared.api' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (AuthenticationError("no", reason="missing"), 401),
        (PayloadTooLargeError(limit=10), 413),
        (RequestTimeoutError("slow"), 408),
        (ValidationError("bad"), 400),
        (BudgetExceededError(job_id=uuid.uuid4(), spent=Decimal(1), limit=Decimal(1)), 402),
        (JobNotFoundError(job_id=uuid.uuid4()), 404),
        (InvalidStateError("no"), 409),
        (DatabaseUnavailableError("down", retry_after=7), 503),
        (AuthUnavailableError("jwks down", retry_after=5), 503),
        (ConfigError(problems=("X: missing",)), 500),
        (PipelineError("other"), 500),
    ],
)
def test_every_pipeline_error_maps_to_a_status(error: PipelineError, status: int) -> None:
    assert status == status_for(error)
    assert status == error_response(error).status_code


def test_a_5xx_that_is_not_retryable_hides_its_message() -> None:
    response = error_response(ConfigError(problems=("DATABASE_URL: secret-ish detail",)))
    assert b"secret-ish" not in response.body
    assert b"internal error; see the logs" in response.body


@pytest.mark.parametrize(("reason", "header"), [("missing", "Bearer"), ("expired", 'Bearer error="invalid_token"')])
def test_authentication_errors_say_how_to_authenticate(reason: str, header: str) -> None:
    response = error_response(AuthenticationError("sign in", reason=reason))
    assert header == response.headers["www-authenticate"]


def glue_app(container: Container, **lifespan: Any) -> FastAPI:
    app = FastAPI(lifespan=container_lifespan(container, **lifespan))
    install_error_handlers(app)
    add_health_route(app)

    @app.get("/me")
    async def me(user: CurrentUser) -> dict[str, str]:
        return {"user_id": str(user.user_id), "role": user.role.value}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("an internal detail")

    return app


@pytest.fixture
def glue_settings(api_settings: Settings, jwks_server: JwksServer) -> Settings:
    return api_settings.model_copy(update={"supabase_url": jwks_server.url})


def test_current_user_verifies_the_bearer_token(
    api_container: Container, glue_settings: Settings, jwks_server: JwksServer
) -> None:
    key = make_ec_key()
    jwks_server.keys = [key.jwk]
    container = api_container
    container.settings.override(glue_settings)
    payload = claims(jwks_server.issuer)
    with TestClient(glue_app(container)) as client:
        ok = client.get("/me", headers={"Authorization": f"Bearer {sign(payload, key)}"})
        anonymous = client.get("/me")
        basic = client.get("/me", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert (200, {"user_id": payload["sub"], "role": "authenticated"}) == (ok.status_code, ok.json())
    assert (401, 401) == (anonymous.status_code, basic.status_code)


def test_jwks_unreachable_without_a_cached_copy_is_503_not_401(
    api_container: Container, glue_settings: Settings, jwks_server: JwksServer
) -> None:
    container = api_container
    container.settings.override(glue_settings)
    token = sign(claims(jwks_server.issuer), make_ec_key())
    jwks_server.stop()
    with TestClient(glue_app(container)) as client:
        response = client.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert (503, "auth_unavailable") == (response.status_code, response.json()["error"]["code"])
    assert "retry-after" in response.headers


def test_an_unexpected_exception_is_a_500_with_the_error_body(api_container: Container) -> None:
    with TestClient(glue_app(api_container), raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert (500, "internal_error") == (response.status_code, response.json()["error"]["code"])
    assert "an internal detail" not in response.text


def test_a_misconfigured_verifier_stops_the_start_and_closes_what_opened(
    api_container: Container, test_settings: Settings
) -> None:
    container = api_container
    container.settings.override(test_settings)  # no SUPABASE_URL
    app = glue_app(container, build=["token_verifier"])
    with pytest.raises(ConfigError), TestClient(app):
        pass
    assert not container.http_client.initialized


def test_the_lifespan_wires_the_modules_and_unwires_them(api_container: Container) -> None:
    from examples import api  # noqa: PLC0415 - a module with Provide markers

    container: Any = api_container  # wired_to_modules is on the DynamicContainer, not in the declared type
    app = FastAPI(lifespan=container_lifespan(api_container, modules=[api]))
    with TestClient(app):
        assert api in container.wired_to_modules
    assert [] == list(container.wired_to_modules)


async def test_get_container_refuses_an_app_without_the_lifespan() -> None:
    request = Request({"type": "http", "app": FastAPI(), "headers": []})
    with pytest.raises(PipelineError) as caught:
        get_container(request)
    assert "no_container" == caught.value.code


def test_principal_is_a_frozen_value() -> None:
    principal = Principal(user_id=uuid.uuid4(), role=Role.AUTHENTICATED)
    with pytest.raises(AttributeError):
        principal.email = "x"  # type: ignore[misc]


async def test_a_body_that_stops_arriving_gets_408() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    stalled = asyncio.Event()

    async def stream() -> Any:
        yield b"first bytes"
        await stalled.wait()  # the client never sends the rest
        yield b""

    guarded = RequestLimits(app, max_body_bytes=1000, min_bytes_per_second=1000, grace_seconds=0.05)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://x") as client:
        response = await client.post("/", content=stream())
    assert (408, "close") == (response.status_code, response.headers["connection"])
