"""What mypy says is what runs: after start, every provider returns an instance of its declared type."""

from __future__ import annotations

import asyncio
import collections.abc
import types
import typing
from typing import Any

import httpx
import pytest
from dependency_injector import providers
from pydantic import SecretStr
from supabase import AsyncClient as SupabaseClient

from shared import container as container_module
from shared.auth import TokenVerifier
from shared.config import Settings
from shared.container import Container
from shared.cost_tracking import CostTracker
from shared.database import Database, DatabaseClient
from shared.errors import ConfigError
from shared.jobs import JobRepository
from shared.lifecycle import lifespan
from shared.paid import PaidCalls, PriceCatalogue, RateLimiter
from shared.redis_client import RedisClient
from shared.stages import StageQueue
from shared.telemetry import Telemetry

# The names the Container's annotations use only under TYPE_CHECKING.
_ANNOTATION_NAMES = {
    "httpx": httpx,
    "SupabaseClient": SupabaseClient,
    "CostTracker": CostTracker,
    "DatabaseClient": DatabaseClient,
    "JobRepository": JobRepository,
    "RedisClient": RedisClient,
    "TokenVerifier": TokenVerifier,
    "PaidCalls": PaidCalls,
    "PriceCatalogue": PriceCatalogue,
    "RateLimiter": RateLimiter,
    "Database": Database,
    "Telemetry": Telemetry,
    "StageQueue": StageQueue,
    "AsyncIterator": collections.abc.AsyncIterator,
}
# Providers that yield None when their feature is off (telemetry without OTEL_ENABLED).
_OPTIONAL = {"telemetry"}


def shared_providers() -> dict[str, providers.Provider[Any]]:
    """Return the Container's own providers (not the Self provider dependency-injector may add)."""
    return {name: p for name, p in Container.providers.items() if not isinstance(p, providers.Self)}


def declared_type(provider: providers.Provider[Any]) -> type[Any]:
    """Return the class a provider promises: its factory's return type, or what its resource function yields."""
    if isinstance(provider, providers.Selector):
        raise TypeError("a Selector declares no type of its own")
    target = provider.provides  # type: ignore[attr-defined]  # every provider of the Container has one
    if isinstance(target, type):
        return target
    hints = typing.get_type_hints(target, {**vars(container_module), **_ANNOTATION_NAMES})
    declared = hints["return"]
    origin = typing.get_origin(declared)
    if origin in {collections.abc.AsyncGenerator, collections.abc.Iterator, collections.abc.AsyncIterator}:
        declared = typing.get_args(declared)[0]
    if isinstance(declared, types.UnionType):  # `X | None`: a feature that may be off
        (declared,) = [arg for arg in typing.get_args(declared) if arg is not type(None)]
    assert isinstance(declared, type), f"{target.__name__} declares {declared!r}"
    return declared


def test_every_provider_of_the_shared_container_declares_a_class() -> None:
    names = {name for name, provider in shared_providers().items() if not isinstance(provider, providers.Selector)}
    assert {"settings", "db", "redis", "jobs", "cost_tracker", "http_client", "storage_local"} <= names
    for name in names:
        assert isinstance(declared_type(Container.providers[name]), type), name


@pytest.mark.parametrize("backend", ["local", "supabase"])
async def test_after_start_every_provider_returns_its_declared_type_not_a_future(
    real_container: Container, backend: str
) -> None:
    container = real_container
    # No request is sent: building the Supabase client and storage needs only a URL.
    settings = container.settings().model_copy(
        update={
            "storage_backend": backend,
            "supabase_url": "http://127.0.0.1:9",
            "supabase_service_key": SecretStr("sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz"),
        }
    )
    container.settings.override(settings)
    container.reset_singletons()
    checked = []
    for name, provider in shared_providers().items():
        value = getattr(container, name)()
        assert not isinstance(value, asyncio.Future), f"container.{name}() is a Future after start"
        assert not asyncio.iscoroutine(value), f"container.{name}() is a coroutine after start"
        if isinstance(provider, providers.Selector):
            expected = declared_type(Container.providers[f"storage_{backend}"])
        else:
            expected = declared_type(provider)
        if value is None and name in _OPTIONAL:
            checked.append(name)
            continue
        assert isinstance(value, expected), f"container.{name}() is {type(value).__name__}, not {expected.__name__}"
        checked.append(name)
    assert {"db", "redis", "jobs", "cost_tracker", "storage", "token_verifier"} <= set(checked)
    assert isinstance(container.settings(), Settings)


async def test_the_pins_are_removed_at_shutdown_and_restored_at_the_next_start(real_container: Container) -> None:
    settings = real_container.settings()
    container = Container()
    container.settings.override(settings)
    async with lifespan(container):
        first = container.db()
        assert first is container.db()
    assert not container.db.overridden
    async with lifespan(container):
        second = container.db()
        assert second is not first
        assert not isinstance(second, asyncio.Future)


async def test_the_supabase_client_without_a_url_is_a_config_error(real_container: Container) -> None:
    with pytest.raises(ConfigError, match="SUPABASE_URL") as caught:
        real_container.supabase()
    assert 2 == len(caught.value.problems)
