"""The container and its lifecycle: overrides, resets, failed starts that leave nothing open, shutdown."""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from dependency_injector import containers, providers

import containers as app_containers
from shared.config import Settings
from shared.errors import PipelineError, ValidationError
from shared.lifecycle import LifecycleError, lifespan, overridden, start_resources, stop_resources
from shared.logging import LoggerFactory
from tests.fixtures.core import MakeSettings


class Tracker:
    def __init__(self) -> None:
        self.opened: list[str] = []
        self.closed: list[str] = []


async def good_async(tracker: Tracker, name: str, delay: float = 0.0) -> AsyncIterator[str]:
    await asyncio.sleep(delay)
    tracker.opened.append(name)
    try:
        yield name
    finally:
        tracker.closed.append(name)


async def failing_async(tracker: Tracker, delay: float = 0.01) -> AsyncIterator[str]:
    await asyncio.sleep(delay)
    raise ValidationError("this resource refuses to open")
    yield "never"  # pragma: no cover


def good_sync(tracker: Tracker, name: str) -> Iterator[str]:
    tracker.opened.append(name)
    try:
        yield name
    finally:
        tracker.closed.append(name)


def lab(**extra: providers.Provider[object]) -> containers.DynamicContainer:
    instance = containers.DynamicContainer()
    tracker = Tracker()
    instance.tracker = providers.Object(tracker)
    instance.fast = providers.Resource(good_async, tracker=tracker, name="fast")
    instance.slow = providers.Resource(good_async, tracker=tracker, name="slow", delay=0.05)
    instance.sync = providers.Resource(good_sync, tracker=tracker, name="sync")
    for name, provider in extra.items():
        setattr(instance, name, provider)
    return instance


async def test_lifespan_opens_every_resource_and_closes_them_on_exit() -> None:
    instance = lab()
    tracker: Tracker = instance.tracker()
    async with lifespan(instance, startup_timeout=5, shutdown_timeout=5):
        assert {"fast", "slow", "sync"} == set(tracker.opened)
    assert {"fast", "slow", "sync"} == set(tracker.closed)


async def test_failed_start_closes_what_had_opened_and_raises_the_resource_error() -> None:
    instance = lab()
    tracker: Tracker = instance.tracker()
    instance.broken = providers.Resource(failing_async, tracker=tracker)
    with pytest.raises(ValidationError, match="refuses to open"):
        await start_resources(instance, timeout=5)
    assert set(tracker.opened) == set(tracker.closed)
    assert {"fast", "slow", "sync"} == set(tracker.opened)
    assert not any(p.initialized for p in instance.traverse(types=[providers.Resource]))


async def test_start_past_its_time_limit_closes_everything_and_says_so() -> None:
    instance = lab()
    tracker: Tracker = instance.tracker()
    instance.hanging = providers.Resource(good_async, tracker=tracker, name="hanging", delay=30)
    with pytest.raises(LifecycleError, match=r"longer than 0\.2 s"):
        await start_resources(instance, timeout=0.2)
    assert "hanging" not in tracker.opened
    assert set(tracker.opened) == set(tracker.closed)


async def test_a_non_pipeline_start_failure_is_wrapped_with_its_cause() -> None:
    def explode() -> Iterator[str]:
        raise OSError("disk on fire")
        yield "never"  # pragma: no cover

    instance = lab(boom=providers.Resource(explode))
    with pytest.raises(LifecycleError) as caught:
        await start_resources(instance, timeout=5)
    assert isinstance(caught.value.__cause__, OSError)
    assert set(instance.tracker().opened) == set(instance.tracker().closed)


async def test_only_sync_resources_are_handled_too() -> None:
    """init_resources() returns None when no resource is async."""
    instance = containers.DynamicContainer()
    tracker = Tracker()
    instance.sync = providers.Resource(good_sync, tracker=tracker, name="sync")
    async with lifespan(instance, startup_timeout=1, shutdown_timeout=1):
        assert ["sync"] == tracker.opened
    assert ["sync"] == tracker.closed


async def test_stop_is_safe_to_call_twice() -> None:
    instance = lab()
    await start_resources(instance, timeout=5)
    await stop_resources(instance, timeout=5)
    await stop_resources(instance, timeout=5)
    assert 3 == len(instance.tracker().closed)


async def test_a_failing_close_is_reported_and_leaves_nothing_marked_open() -> None:
    async def bad_close() -> AsyncIterator[str]:
        yield "x"
        raise RuntimeError("close failed")

    instance = lab(bad=providers.Resource(bad_close))
    await start_resources(instance, timeout=5)
    with pytest.raises(LifecycleError, match="failed to close"):
        await stop_resources(instance, timeout=5)
    assert not any(p.initialized for p in instance.traverse(types=[providers.Resource]))


async def test_application_container_starts_and_stops_its_logger(service_settings: Settings, tmp_path: Path) -> None:
    log_file = tmp_path / "app.jsonl"
    container = app_containers.Container()
    container.settings.override(service_settings.model_copy(update={"log_file": log_file, "log_level": "INFO"}))
    async with lifespan(container):
        factory = container.logger_factory()
        assert isinstance(factory, LoggerFactory)
        assert factory.running
        for i in range(100):
            factory.get_logger("vg.app").info("line %d", i)
    assert not factory.running
    assert 100 == len([line for line in log_file.read_text().splitlines() if '"vg.app"' in line])


async def test_logger_factory_can_be_overridden_to_capture_records(container: app_containers.Container) -> None:
    stream = io.StringIO()
    capturing = LoggerFactory(level="DEBUG", stream=stream, root="vgcapture")
    capturing.start()
    try:
        with container.logger_factory.override(providers.Object(capturing)):
            container.logger_factory().get_logger("vgcapture.m").info("captured")
    finally:
        capturing.stop()
    assert '"message":"captured"' in stream.getvalue()


async def test_overridden_resets_singletons_built_before_the_override(make_settings: MakeSettings) -> None:
    container = app_containers.Container()
    container.settings.override(make_settings(redis_key_prefix="first:"))
    container.reporter = providers.Singleton(lambda s: s.redis_key_prefix, container.settings)
    assert "first:" == container.reporter()
    with overridden(container, settings=make_settings(redis_key_prefix="second:")):
        assert "second:" == container.reporter()
    assert "first:" == container.reporter()


def test_plain_override_without_reset_keeps_the_stale_singleton(make_settings: MakeSettings) -> None:
    """The pitfall `overridden` designs out: a Singleton built before an override keeps the old value."""
    container = app_containers.Container()
    container.settings.override(make_settings(redis_key_prefix="first:"))
    container.reporter = providers.Singleton(lambda s: s.redis_key_prefix, container.settings)
    assert "first:" == container.reporter()
    with container.settings.override(make_settings(redis_key_prefix="second:")):
        assert "first:" == container.reporter()


def test_overriding_an_unknown_provider_is_refused() -> None:
    with pytest.raises(PipelineError, match="no provider of that name"), overridden(app_containers.Container(), dbb=1):
        pass


def test_a_container_cannot_be_started_again_from_another_live_loop(service_settings: Settings) -> None:
    container = app_containers.Container()
    container.settings.override(service_settings)
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(start_resources(container, timeout=5))
        with pytest.raises(LifecycleError, match="one container per event loop"):
            asyncio.run(start_resources(container, timeout=5))
        first.run_until_complete(stop_resources(container, timeout=5))
    finally:
        first.close()


@pytest.mark.parametrize("round_", [1, 2, 3])
async def test_one_container_per_test_survives_a_new_loop_each_time(
    container: app_containers.Container, round_: int
) -> None:
    """Each test gets its own loop and container; a shared one fails every second test."""
    assert container.logger_factory().running
    assert round_ in {1, 2, 3}


def test_importing_containers_does_not_import_heavy_clients() -> None:
    code = (
        "import sys, containers; containers.Container(); "
        "heavy = ('supabase', 'storage3', 'asyncpg', 'redis', 'httpx', 'jwt', 'mutagen'); "
        "heavy = [m for m in heavy if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "" == result.stdout.strip()


def test_settings_are_a_singleton_built_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_KEY_PREFIX", "from-env:")
    container = app_containers.Container()
    assert container.settings() is container.settings()
    assert "from-env:" == container.settings().redis_key_prefix


def test_the_lifecycle_logs_through_standard_logging() -> None:
    assert "shared.lifecycle" == logging.getLogger("shared.lifecycle").name
