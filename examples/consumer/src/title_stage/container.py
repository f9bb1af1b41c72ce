"""The stage's container: every shared provider and the lifecycle, plus the stage's own paid-API client."""

from __future__ import annotations

from collections.abc import AsyncIterator

from dependency_injector import providers
from shared.config import Settings
from shared.container import Container

from title_stage.api import SimulatedTitleApi
from title_stage.settings import TitleSettings

__all__ = ["StageContainer", "init_title_api"]


async def init_title_api(settings: Settings) -> AsyncIterator[SimulatedTitleApi]:
    """Open the paid-API client for this loop; close it on shutdown (the real one would read its key here)."""
    client = SimulatedTitleApi(failures=1 if settings.environment == "development" else 0)
    try:
        yield client
    finally:
        await client.aclose()


class StageContainer(Container):
    """The shared Container with the stage's own settings and its paid-API client."""

    title_settings = providers.Singleton(TitleSettings)  # built and checked by lifespan, with Settings
    title_api = providers.Resource(init_title_api, settings=Container.settings)
