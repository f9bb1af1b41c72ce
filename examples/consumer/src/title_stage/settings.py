"""The stage's own settings: read from the environment (TITLE_*) and .env, checked when the container starts."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from shared.config import ModuleSettings

__all__ = ["TitleSettings"]


class TitleSettings(ModuleSettings):
    """How the stage titles a video (``TITLE_MAX_WORDS``)."""

    model_config = SettingsConfigDict(env_prefix="TITLE_")  # merged with ModuleSettings' own

    max_words: int = Field(default=8, ge=1, le=50)
