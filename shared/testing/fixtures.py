"""Pytest fixtures for pipeline modules, loaded by pytest itself wherever videogen-shared[testing] is installed.

Nothing goes in a module's conftest: this module is a pytest plugin, loaded by the ``pytest11`` entry
point ``videogen_shared`` (:mod:`shared.testing.plugin`) under its module's name, so a conftest's
``pytest_plugins = ["shared.testing.fixtures"]`` is harmless. Two ini options point the fixtures at the
module's own container and modules::

    [tool.pytest.ini_options]
    videogen_container = "my_stage.container:StageContainer"   # default: shared.container:Container
    videogen_wire = ["my_stage.stage"]                         # modules wired for the test, unwired after
    videogen_retry_testing = true                              # retries wait 0 s (shared.retry.set_testing)

``fake_container``: the Container with every collaborator replaced by its in-memory fake (no service needed),
opened and closed around the test; the fakes are also the ``fakes`` fixture, to arrange and inspect.
``real_container``: the Container on the real local services: a migrated PostgreSQL database of the test's own
(dropped afterwards), the machine's Redis under a key prefix of the test's own (its keys deleted afterwards),
and local storage in the test's temporary folder. Both belong to the test's event loop.
"""

from __future__ import annotations

import importlib
import importlib.util
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
from dependency_injector import providers
from pydantic import SecretStr

from shared import retry
from shared.config import Settings
from shared.container import Container
from shared.lifecycle import lifespan
from shared.models import Job
from shared.testing.cache import FakeCache
from shared.testing.costs import FakeCostTracker
from shared.testing.databases import database_for_test
from shared.testing.jobs import FakeJobStore
from shared.testing.limiter import FakeRateLimiter
from shared.testing.no_database import NoDatabase
from shared.testing.stages import FakeStageQueue
from shared.testing.storage import FakeStorage
from shared.testing.world import FakeWorld

__all__ = [
    "Fakes",
    "container_class",
    "fake_container",
    "fakes",
    "override_with_fakes",
    "pytest_addoption",
    "pytest_configure",
    "real_container",
    "retry_testing",
    "test_settings",
    "wired_modules",
]

_CONTAINER_OPTION = "videogen_container"
_WIRE_OPTION = "videogen_wire"
_RETRY_OPTION = "videogen_retry_testing"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare the ini options that name the module's container and the modules to wire."""
    parser.addini(
        _CONTAINER_OPTION,
        "the Container the videogen fixtures build, as 'package.module:Class' (default shared.container:Container)",
        default="shared.container:Container",
    )
    parser.addini(_WIRE_OPTION, "modules the videogen fixtures wire to the container for each test", type="linelist")
    parser.addini(
        _RETRY_OPTION,
        "retry_with_backoff waits zero seconds in this test session (shared.retry.set_testing); default false",
        type="bool",
        default=False,
    )


@pytest.fixture
def container_class(pytestconfig: pytest.Config) -> type[Container]:
    """Return the Container class the fixtures build (ini option ``videogen_container``)."""
    target = str(pytestconfig.getini(_CONTAINER_OPTION))
    module_name, _, attribute = target.partition(":")
    found = getattr(importlib.import_module(module_name), attribute or "Container", None)
    if not (isinstance(found, type) and issubclass(found, Container)):
        raise pytest.UsageError(f"{_CONTAINER_OPTION} = {target!r} is not a subclass of shared.container.Container")
    return found


@pytest.fixture
def wired_modules(pytestconfig: pytest.Config) -> list[str]:
    """Return the modules to wire for each test (ini option ``videogen_wire``); override the fixture to change."""
    return [str(name) for name in pytestconfig.getini(_WIRE_OPTION)]


@dataclass
class Fakes:
    """The in-memory collaborators a ``fake_container`` hands out, sharing one :class:`FakeWorld`."""

    jobs: FakeJobStore
    costs: FakeCostTracker
    cache: FakeCache
    storage: FakeStorage
    world: FakeWorld = field(default_factory=FakeWorld)
    limiter: FakeRateLimiter = field(default_factory=FakeRateLimiter)  # paid admission's slots (ctx.paid)
    queue: FakeStageQueue = field(default_factory=FakeStageQueue)  # what was submitted (Container.stages)

    async def add_job(self, *, budget_limit: Decimal | None = None, prompt: str = "a test prompt") -> Job:
        """Create a user and a queued job (known to the cost tracker too, as in the database)."""
        return await self.jobs.create_job(
            user_id=self.jobs.add_user(), audio_url="audio/test.wav", user_prompt=prompt, budget_limit=budget_limit
        )


def override_with_fakes(container: Container, fakes: Fakes) -> None:
    """Override every service provider of ``container`` with its fake.

    ``db`` becomes a :class:`~shared.testing.no_database.NoDatabase` (nothing opens a pool): a query through it
    raises :class:`~shared.errors.NoDatabaseError`, which says to use ``real_container`` or override ``db``.
    ``rate_limiter`` becomes a :class:`~shared.testing.limiter.FakeRateLimiter`, so ``paid_calls`` admits on the
    fakes (the fake ledger holds the budget), and ``stages`` a :class:`~shared.testing.stages.FakeStageQueue`
    that records submits (run them with :func:`~shared.testing.stages.run_stage`).
    """
    replacements: dict[str, object] = {
        "db": NoDatabase(),
        "redis": fakes.cache,
        "jobs": fakes.jobs,
        "cost_tracker": fakes.costs,
        "storage": fakes.storage,
        "rate_limiter": fakes.limiter,
        "stages": fakes.queue,
    }
    for name, fake in replacements.items():
        getattr(container, name).override(providers.Object(fake))


def pytest_configure(config: pytest.Config) -> None:
    """Load the HTTP fixtures (``shared.api.testing``) too where the ``[api]`` extra is installed, and turn the
    retry waits off for the session when the ini option ``videogen_retry_testing`` is true."""
    if importlib.util.find_spec("fastapi") is not None:  # PyJWT, which they use too, is a core dependency
        config.pluginmanager.import_plugin("shared.api.testing")
    if config.getini(_RETRY_OPTION):
        retry.set_testing(True)


@pytest.fixture
def retry_testing() -> Iterator[None]:
    """Make ``retry_with_backoff`` wait zero seconds during the test (the attempts stay as in production)."""
    before = retry.is_testing()
    retry.set_testing(True)
    yield
    retry.set_testing(before)


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
    """Return a fresh set of fakes (the ones ``fake_container`` provides), sharing one world."""
    world = FakeWorld()
    return Fakes(
        FakeJobStore(world=world),
        FakeCostTracker(
            default_budget=test_settings.default_job_budget, reservation_ttl=test_settings.reservation_ttl, world=world
        ),
        FakeCache(),
        FakeStorage(),
        world,
    )


@pytest.fixture
async def fake_container(
    test_settings: Settings, fakes: Fakes, container_class: type[Container], wired_modules: list[str]
) -> AsyncIterator[Container]:
    """Yield the Container with every service replaced by its fake, wired, opened and closed around the test."""
    container = container_class()
    container.settings.override(test_settings)
    override_with_fakes(container, fakes)
    if wired_modules:
        container.wire(modules=wired_modules)
    try:
        async with lifespan(container):
            yield container
    finally:
        container.unwire()
        container.reset_override()


@pytest.fixture
def _real_database() -> Iterator[str]:
    with database_for_test() as dsn:
        yield dsn


@pytest.fixture
async def real_container(
    test_settings: Settings, _real_database: str, container_class: type[Container], wired_modules: list[str]
) -> AsyncIterator[Container]:
    """Yield the Container on the real local services (a database and a Redis key prefix of the test's own)."""
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    settings = test_settings.model_copy(update={"database_url": SecretStr(_real_database), "redis_key_prefix": prefix})
    container = container_class()
    container.settings.override(settings)
    if wired_modules:
        container.wire(modules=wired_modules)
    try:
        async with lifespan(container):
            yield container
            cache = container.redis()
            keys = [key async for key in cache.raw.scan_iter(match=f"{prefix}*")]
            if keys:
                await cache.raw.delete(*keys)
    finally:
        container.unwire()
        container.reset_override()
