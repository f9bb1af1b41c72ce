"""Validate what users upload, at the door: audio decided by its content, prompts, and sizes.

One module per concern: :mod:`~shared.validation.audio` picks the format from the bytes and hands the file to
:mod:`~shared.validation.mp3`, :mod:`~shared.validation.wav` or :mod:`~shared.validation.flac`, which check
every header claim against what the file holds; :mod:`~shared.validation.prompt` and
:mod:`~shared.validation.size` check the rest. mutagen is imported in ``_mutagen`` alone.

Every refusal, and every misuse (an argument of the wrong kind), is a :class:`~shared.errors.ValidationError`
whose ``field`` names the input and whose message says what was wrong, what was found or the limit, and what
is accepted. No other exception leaves this package.
"""

from shared.validation._common import ACCEPTED_AUDIO, AudioFileInfo, AudioFormat
from shared.validation.audio import (
    DEFAULT_AUDIO_MAX_DURATION_SECONDS,
    DEFAULT_AUDIO_MIN_DURATION_SECONDS,
    AudioInput,
    UploadLike,
    validate_audio_file,
)
from shared.validation.prompt import DEFAULT_PROMPT_MAX_LENGTH, DEFAULT_PROMPT_MIN_LENGTH, validate_prompt
from shared.validation.size import DEFAULT_AUDIO_MAX_SIZE_MB, validate_file_size

__all__ = [
    "ACCEPTED_AUDIO",
    "DEFAULT_AUDIO_MAX_DURATION_SECONDS",
    "DEFAULT_AUDIO_MAX_SIZE_MB",
    "DEFAULT_AUDIO_MIN_DURATION_SECONDS",
    "DEFAULT_PROMPT_MAX_LENGTH",
    "DEFAULT_PROMPT_MIN_LENGTH",
    "AudioFileInfo",
    "AudioFormat",
    "AudioInput",
    "UploadLike",
    "validate_audio_file",
    "validate_file_size",
    "validate_prompt",
]
