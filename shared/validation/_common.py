"""What the format modules share: the result model, the refusals, the limits and the one-pass reader."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import IO, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ValidationError

__all__ = [
    "ACCEPTED_AUDIO",
    "MB",
    "AudioFileInfo",
    "AudioFormat",
    "Limits",
    "Reader",
    "Stream",
    "refuse",
    "too_long",
    "truncated",
]

AudioFormat = Literal["mp3", "wav", "flac"]

ACCEPTED_AUDIO: Final = "MP3, WAV (PCM 16/24-bit or float), FLAC"
MB: Final = 1024 * 1024


class AudioFileInfo(BaseModel):
    """What validation learnt about an accepted audio file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: AudioFormat
    mime_type: str
    size_bytes: int = Field(ge=1)
    duration_seconds: float = Field(gt=0)
    sample_rate: int = Field(gt=0)
    channels: int = Field(gt=0)


@dataclass(frozen=True, slots=True)
class Stream:
    """The facts a format parser hands back: the duration is what its frames or samples hold."""

    format: AudioFormat
    duration_seconds: float
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class Limits:
    """The duration limits, which also bound the work: a walk stops once the audio is known to be too long."""

    min_duration_seconds: float
    max_duration_seconds: float

    def max_units(self, units_per_second: float) -> int:
        """Return how many frames (or samples) of ``units_per_second`` fit in the maximum, plus a margin."""
        if not math.isfinite(self.max_duration_seconds):
            return 1 << 62
        return int(self.max_duration_seconds * units_per_second) + 2


def refuse(problem: str, *, field: str = "audio") -> ValidationError:
    """Build the error for an audio file that cannot be accepted, naming what is."""
    return ValidationError(f"{problem}. Accepted: {ACCEPTED_AUDIO}.", field=field)


def truncated(what: str) -> ValidationError:
    """Build the error for a file that stops before what its header promises."""
    return refuse(f"The audio file is cut short (did the upload break off?): {what}")


def too_long(seconds: float, limits: Limits, *, at_least: bool = False) -> ValidationError:
    """Build the error for audio longer than the maximum."""
    measured = f"at least {seconds:.1f} s" if at_least else f"{seconds:.1f} s"
    return ValidationError(
        f"Audio is too long: {measured}, the maximum is {limits.max_duration_seconds:g} s; trim it "
        f"(accepted: {ACCEPTED_AUDIO}, {limits.min_duration_seconds:g} to {limits.max_duration_seconds:g} s long)",
        field="audio",
    )


class Reader:
    """Read a file forward in one pass, in chunks, keeping memory bounded.

    ``window`` moves forward only, so the walks of the format modules read each byte at most once; ``peek``
    serves the few small reads elsewhere (the signature, the tags at the end). ``bytes_read`` counts both.
    """

    CHUNK: Final = 1024 * 1024

    def __init__(self, handle: IO[bytes] | None, data: bytes | None, size: int) -> None:
        self._handle = handle
        self._buffer = data if data is not None else b""
        self._base = 0
        self._whole = data is not None
        self.size = size
        self.bytes_read = 0

    def _read(self, offset: int, count: int) -> bytes:
        assert self._handle is not None  # only files that are not in memory read  # noqa: S101
        self._handle.seek(offset)
        data = self._handle.read(count)
        if not isinstance(data, bytes):
            raise ValidationError("the file object must be opened in binary mode", field="audio")
        self.bytes_read += len(data)
        return data

    def peek(self, offset: int, count: int) -> bytes:
        """Return up to ``count`` bytes at ``offset`` without moving the window."""
        offset, count = max(offset, 0), max(min(count, self.size - offset), 0)
        start = offset - self._base
        if self._whole or (start >= 0 and start + count <= len(self._buffer)):
            return self._buffer[start : start + count]
        return self._read(offset, count)

    def window(self, offset: int, count: int) -> tuple[bytes, int]:
        """Return ``(buffer, base)``: ``buffer[offset - base:]`` holds the ``count`` bytes at ``offset`` (fewer at EOF).

        Offsets must not go backwards between calls (the bytes before the last offset are dropped).
        """
        buffer, base = self._buffer, self._base
        if self._whole or (offset >= base and offset + count <= base + len(buffer)):
            return buffer, base
        end = base + len(buffer)
        keep = buffer[offset - base :] if base <= offset < end else b""
        start = offset + len(keep)
        more = self._read(start, max(count - len(keep), self.CHUNK)) if start < self.size else b""
        self._buffer, self._base = keep + more, offset
        return self._buffer, offset
