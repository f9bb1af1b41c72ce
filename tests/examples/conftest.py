"""The gateway example's app for the glue's TestClient fixtures (``shared.api.testing``)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

import containers
from examples import api
from shared.container import Container


@pytest.fixture
def api_container_class() -> type[Container]:
    return containers.Container


@pytest.fixture
def api_app(api_container: Container) -> FastAPI:
    return api.create_app(api_container)
