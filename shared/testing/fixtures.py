"""Pytest fixtures for pipeline modules: one line in a module's conftest makes them available::

    pytest_plugins = ["shared.testing.fixtures"]

``fake_container``: the Container with every collaborator replaced by its in-memory fake (no service needed),
opened and closed around the test; the fakes are also the ``fakes`` fixture, to arrange and inspect.
``real_container``: the Container on the real local services: a migrated PostgreSQL database of the test's own
(dropped afterwards), the machine's Redis under a key prefix of the test's own (its keys deleted afterwards),
and local storage in the test's temporary folder. Both belong to the test's event loop.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from dependency_injector import providers
from pydantic import SecretStr

from shared.config import Settings
from shared.container import Container
from shared.lifecycle import lifespan, resolve
from shared.models import Job
from shared.testing.cache import FakeCache
from shared.testing.costs import FakeCostTracker
from shared.testing.databases import database_for_test
from shared.testing.jobs import FakeJobStore
from shared.testing.storage import FakeStorage

__all__ = ["Fakes", "fake_container", "fakes", "real_container", "test_settings"]


@dataclass
class Fakes:
    """The in-memory collaborators a ``fake_container`` hands out."""

    jobs: FakeJobStore
    costs: FakeCostTracker
    cache: FakeCache
    storage: FakeStorage

    async def add_job(self, *, budget_limit: Decimal | None = None, prompt: str = "a test prompt") -> Job:
        """Create a user and a queued job known to both the job store and the cost tracker."""
        job = await self.jobs.create_job(
            user_id=self.jobs.add_user(), audio_url="audio/test.wav", user_prompt=prompt, budget_limit=budget_limit
        )
        self.costs.add_job(job.id, budget_limit)
        return job


@pytest.fixture
def test_settings(tmp_path: Path) -> Settings:
    """Return development Settings that ignore ``.env``: local storage in the test's folder, no console logs."""
    return Settings(
        _env_file=None,
        environment="development",
        storage_backend="local",
        storage_local_root=tmp_path / "storage",
        log_console=False,
    )


@pytest.fixture
def fakes(test_settings: Settings) -> Fakes:
    """Return a fresh set of fakes (the ones ``fake_container`` provides)."""
    return Fakes(
        FakeJobStore(),
        FakeCostTracker(default_budget=test_settings.default_job_budget, reservation_ttl=test_settings.reservation_ttl),
        FakeCache(),
        FakeStorage(),
    )


@pytest.fixture
async def fake_container(test_settings: Settings, fakes: Fakes) -> AsyncIterator[Container]:
    """Yield the Container with every service replaced by its fake, opened and closed around the test."""
    container = Container()
    container.settings.override(test_settings)
    replacements: dict[str, object] = {
        "db": None,
        "redis": fakes.cache,
        "jobs": fakes.jobs,
        "cost_tracker": fakes.costs,
        "storage": fakes.storage,
    }
    for name, fake in replacements.items():
        getattr(container, name).override(providers.Object(fake))
    async with lifespan(container):
        yield container
    container.unwire()
    container.reset_override()


@pytest.fixture
def _real_database() -> Iterator[str]:
    with database_for_test() as dsn:
        yield dsn


@pytest.fixture
async def real_container(test_settings: Settings, _real_database: str) -> AsyncIterator[Container]:
    """Yield the Container on the real local services (a database and a Redis key prefix of the test's own)."""
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    settings = test_settings.model_copy(update={"database_url": SecretStr(_real_database), "redis_key_prefix": prefix})
    container = Container()
    container.settings.override(settings)
    async with lifespan(container):
        yield container
        cache = await resolve(container.redis)
        keys = [key async for key in cache.raw.scan_iter(match=f"{prefix}*")]
        if keys:
            await cache.raw.delete(*keys)
    container.unwire()
