"""Pytest fixtures for an app built on the glue, through starlette's TestClient.

Loaded with the kit's plugin wherever the ``[api]`` extra is installed (no conftest line); define ``api_app``
(usually ``return create_app(api_container)``) and take ``api_client``.

TestClient runs the app in an event loop of its own, in a thread. A container opened in the test's loop
(``fake_container``) would belong to the wrong loop, so ``api_container`` is *not* started: the app's lifespan
(:func:`shared.api.container_lifespan`) starts it inside TestClient's loop when ``api_client`` enters, and
stops it when the test ends. Its collaborators are the ``fakes`` of ``shared.testing.fixtures``; its settings
(``api_settings``) carry a JWT secret of the test's own, with which ``make_token`` signs access tokens.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.testclient import TestClient

from shared.config import Settings
from shared.container import Container
from shared.testing.fixtures import Fakes, override_with_fakes

__all__ = ["MakeToken", "api_app", "api_client", "api_container", "api_container_class", "api_settings", "make_token"]

MakeToken = Callable[..., str]
# Nothing listens on the discard port: HS256 tokens never need the JWKS, and an ES256 one gets a 503, not traffic.
TEST_SUPABASE_URL = "http://127.0.0.1:9"


@pytest.fixture
def api_settings(test_settings: Settings) -> Settings:
    """Return the test's Settings with a SUPABASE_URL (the tokens' issuer) and a JWT secret of the test's own."""
    return test_settings.model_copy(
        update={"supabase_url": TEST_SUPABASE_URL, "jwt_secret_key": SecretStr(secrets.token_urlsafe(32))}
    )


@pytest.fixture
def make_token(api_settings: Settings) -> MakeToken:
    """Return ``make(user_id=None, *, role="authenticated", expires_in=3600, **claims)``: an HS256 access token.

    The claims are those Supabase Auth issues (iss, aud, sub, role, email, session_id, iat, exp); ``claims``
    replace or, with the value None, remove them.
    """
    assert api_settings.jwt_secret_key is not None  # noqa: S101 - set by api_settings
    secret = api_settings.jwt_secret_key.get_secret_value()

    def make(
        user_id: uuid.UUID | None = None, *, role: str = "authenticated", expires_in: int = 3600, **claims: Any
    ) -> str:
        now = int(time.time())
        values: dict[str, Any] = {
            "iss": f"{api_settings.supabase_url}/auth/v1",
            "aud": "authenticated",
            "sub": str(user_id or uuid.uuid4()),
            "role": role,
            "email": "user@example.com",
            "session_id": str(uuid.uuid4()),
            "iat": now,
            "exp": now + expires_in,
        }
        values.update(claims)
        return jwt.encode({k: v for k, v in values.items() if v is not None}, secret, algorithm="HS256")

    return make


@pytest.fixture
def api_container_class(request: pytest.FixtureRequest) -> type[Container]:
    """Return the Container class ``api_container`` builds: the kit's ``container_class`` where it has one, else
    the shared Container; override this fixture to return a module's own subclass."""
    try:
        chosen: type[Container] = request.getfixturevalue("container_class")
    except pytest.FixtureLookupError:
        return Container
    return chosen


@pytest.fixture
def api_container(api_container_class: type[Container], api_settings: Settings, fakes: Fakes) -> Iterator[Container]:
    """Yield a Container whose collaborators are the ``fakes``, not started (the app's lifespan starts it)."""
    container = api_container_class()
    container.settings.override(api_settings)
    override_with_fakes(container, fakes)
    yield container
    container.reset_override()


@pytest.fixture
def api_app() -> FastAPI:
    """Define this fixture in your conftest: ``return create_app(api_container)``."""
    raise pytest.UsageError(
        "define an `api_app` fixture that returns your app, e.g. `return create_app(api_container)`"
    )


@pytest.fixture
def api_client(api_app: FastAPI) -> Iterator[TestClient]:
    """Yield a TestClient on ``api_app`` with its lifespan entered (the container open in TestClient's loop)."""
    with TestClient(api_app, base_url="http://testserver") as client:
        yield client
