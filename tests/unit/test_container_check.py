"""The container's wiring is checked when it starts (dishka's way), and a wrong wiring names its provider."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dependency_injector import containers, providers
from pydantic import Field
from pydantic_settings import SettingsConfigDict

import containers as repository_containers
from shared.config import ModuleSettings, Settings
from shared.container import Container
from shared.container_check import WiringProblem, check_container
from shared.errors import ConfigError, PipelineError, WiringError
from shared.lifecycle import lifespan
from shared.testing import FakeCache, FakeStorage


class ClipSettings(ModuleSettings):
    """A module's own settings."""

    model_config = SettingsConfigDict(env_prefix="CLIP_")
    max_clips: int = Field(default=30, ge=1)


class ClipApi:
    """A module's client, which needs the module's settings."""

    def __init__(self, settings: ClipSettings) -> None:
        self.max_clips = settings.max_clips


opened: list[str] = []


def init_session(settings: Settings) -> Iterator[str]:
    """A resource that records that it opened: a wiring problem must stop the start before it does."""
    opened.append("session")
    yield "session"


def pair(first: int, second: int) -> tuple[int, int]:
    return first, second


class Unbuildable(Container):
    session = providers.Resource(init_session, settings=Container.settings)
    pairs = providers.Singleton(pair, first=1)  # `second` is given by nobody


class MistypedArgument(Container):
    clip_settings = providers.Singleton(ClipSettings)
    clip_api = providers.Singleton(ClipApi, settings=Container.settings)  # the shared Settings, not ClipSettings


class WrongReplacement(Container):
    cost_tracker = providers.Singleton(ClipSettings)  # type: ignore[assignment]  # the point: not a cost tracker


class FakesInPlace(Container):
    """Fakes that implement the Protocols of what they replace may replace it."""

    redis = providers.Object(FakeCache())  # type: ignore[assignment]  # FakeCache is a Cache, as RedisClient
    storage = providers.Singleton(FakeStorage)  # type: ignore[assignment]  # a Storage, as the selector's options
    clip_settings = providers.Singleton(ClipSettings)
    clip_api = providers.Singleton(ClipApi, settings=clip_settings)


def started(container_class: type[Container], settings: Settings) -> Container:
    container = container_class()
    container.settings.override(providers.Object(settings))
    return container


async def test_a_provider_that_cannot_be_built_stops_the_start_before_anything_opens(test_settings: Settings) -> None:
    opened.clear()
    with pytest.raises(WiringError) as refused:
        async with lifespan(started(Unbuildable, test_settings)):
            pytest.fail("the container started with a provider that cannot be built")
    assert ("pairs",) == refused.value.providers
    assert "pair() needs 'second'" in str(refused.value)
    assert [] == opened


async def test_a_module_provider_given_the_shared_settings_for_its_own_is_refused_at_start(
    test_settings: Settings,
) -> None:
    with pytest.raises(WiringError) as refused:
        async with lifespan(started(MistypedArgument, test_settings)):
            pytest.fail("the container started with a mistyped argument")
    assert ("clip_api",) == refused.value.providers
    assert "'settings' wants ClipSettings and is given the provider 'settings', which gives Settings" in str(
        refused.value
    )


async def test_a_subclass_that_replaces_a_provider_with_another_type_is_refused_at_start(
    test_settings: Settings,
) -> None:
    with pytest.raises(WiringError) as refused:
        async with lifespan(started(WrongReplacement, test_settings)):
            pytest.fail("the container started with a cost tracker that is not one")
    assert isinstance(refused.value, PipelineError)
    assert ("cost_tracker",) == refused.value.providers
    assert "replaces Container.cost_tracker (CostTracker) with ClipSettings" in str(refused.value)


async def test_a_missing_module_setting_stops_the_start_naming_the_provider(
    test_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIP_MAX_CLIPS", "0")
    with pytest.raises(ConfigError) as refused:
        async with lifespan(started(FakesInPlace, test_settings)):
            pytest.fail("the container started with an invalid module setting")
    assert refused.value.problems[0].startswith("CLIP_MAX_CLIPS: ")
    assert "(provider 'clip_settings', ClipSettings)" in refused.value.problems[0]


def test_a_dependency_that_nothing_provides_is_named() -> None:
    class Declared(containers.DeclarativeContainer):
        clock = providers.Dependency(instance_of=float)

    assert [WiringProblem("clock", "a Dependency that nothing provides: override it, or give it a default")] == (
        check_container(Declared())
    )
    provided = Declared()
    provided.clock.override(providers.Object(1.0))
    assert [] == check_container(provided)


def test_an_override_on_an_instance_that_cannot_be_built_is_named() -> None:
    container = Container()
    container.jobs.override(providers.Factory(pair, first=1))
    assert ["jobs"] == [problem.provider for problem in check_container(container)]


def test_fakes_that_implement_the_replaced_protocol_pass() -> None:
    assert [] == check_container(FakesInPlace)


@pytest.mark.parametrize("container_class", [Container, repository_containers.Container], ids=["shared", "repository"])
def test_the_shipped_containers_are_wired_right_with_every_type_checked(
    container_class: type[containers.DeclarativeContainer],
) -> None:
    assert [] == check_container(container_class, every_type=True)
