"""The default limits on a user's input: the one copy that Settings and the validators both read.

Kept apart from :mod:`shared.validation` so that reading the settings does not import the audio parsers.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_AUDIO_MAX_DURATION_SECONDS",
    "DEFAULT_AUDIO_MAX_SIZE_MB",
    "DEFAULT_AUDIO_MIN_DURATION_SECONDS",
    "DEFAULT_PROMPT_MAX_LENGTH",
    "DEFAULT_PROMPT_MIN_LENGTH",
]

DEFAULT_AUDIO_MAX_SIZE_MB: Final = 100
DEFAULT_AUDIO_MIN_DURATION_SECONDS: Final = 5.0
DEFAULT_AUDIO_MAX_DURATION_SECONDS: Final = 900.0
DEFAULT_PROMPT_MIN_LENGTH: Final = 3
DEFAULT_PROMPT_MAX_LENGTH: Final = 2000
