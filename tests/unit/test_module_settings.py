"""A module's own settings: a ModuleSettings subclass on its container subclass, built and checked at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from dependency_injector import providers
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.config import ModuleSettings, Settings
from shared.container import Container
from shared.errors import ConfigError
from shared.lifecycle import lifespan
from shared.testing.fixtures import Fakes, override_with_fakes


class TitleSettings(ModuleSettings):
    model_config = SettingsConfigDict(env_prefix="TITLE_")  # pydantic merges it with the base's config

    max_words: int = Field(default=8, ge=1, le=50)


class StageContainer(Container):
    title_settings = providers.Singleton(TitleSettings)


def _container(test_settings: Settings, fakes: Fakes) -> StageContainer:
    container = StageContainer()
    container.settings.override(test_settings)
    override_with_fakes(container, fakes)
    return container


async def test_a_module_setting_is_read_from_its_prefixed_variable(
    test_settings: Settings, fakes: Fakes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("TITLE_MAX_WORDS", "5")
    container = _container(test_settings, fakes)
    async with lifespan(container):
        assert 5 == container.title_settings().max_words


async def test_a_bad_module_setting_stops_the_start_with_a_config_error_naming_the_variable(
    test_settings: Settings, fakes: Fakes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TITLE_MAX_WORDS", "0")
    container = _container(test_settings, fakes)
    with pytest.raises(ConfigError) as refused:
        async with lifespan(container):
            pytest.fail("the container started with an invalid module setting")
    assert 1 == len(refused.value.problems)
    assert refused.value.problems[0].startswith("TITLE_MAX_WORDS: ")


def test_a_module_settings_subclass_keeps_the_bases_config() -> None:
    assert TitleSettings.model_config["frozen"]
    assert ".env" == TitleSettings.model_config["env_file"]
