"""Validate uploaded audio by its content: the bytes pick the format, the frames decide the duration.

The signature picks MP3 (optionally behind ID3v2 tags), WAV (RIFF/WAVE) or FLAC (optionally behind an ID3v2
tag), never the file name or the content type the client claimed; then the format's module checks what the
headers claim against what the file holds (:mod:`~shared.validation.mp3`, :mod:`~shared.validation.wav`,
:mod:`~shared.validation.flac`). The work is bounded by the file: it is read forward at most once, in chunks
of 1 MiB (memory stays bounded), and a walk stops as soon as the audio is known to be too long.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Final, Protocol, cast

from shared.errors import ValidationError
from shared.input_limits import DEFAULT_AUDIO_MAX_DURATION_SECONDS, DEFAULT_AUDIO_MIN_DURATION_SECONDS
from shared.telemetry import traced
from shared.validation._common import ACCEPTED_AUDIO, MB, AudioFileInfo, AudioFormat, Limits, Reader, Stream, refuse
from shared.validation._tags import audio_end, skip_id3v2
from shared.validation.flac import parse_flac
from shared.validation.mp3 import is_adts, is_mpeg_sync, parse_mp3
from shared.validation.size import DEFAULT_AUDIO_MAX_SIZE_MB, validate_file_size
from shared.validation.wav import parse_wav

__all__ = [
    "DEFAULT_AUDIO_MAX_DURATION_SECONDS",
    "DEFAULT_AUDIO_MIN_DURATION_SECONDS",
    "AudioInput",
    "UploadLike",
    "validate_audio_file",
]


class UploadLike(Protocol):
    """An upload that holds its body in a binary file object: FastAPI's and Starlette's ``UploadFile``."""

    @property
    def file(self) -> IO[bytes]:
        """The spooled body (read synchronously; ``UploadFile.read`` itself is a coroutine)."""
        ...


_Readable = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
AudioInput = _Readable | UploadLike


_MIME: Final[dict[AudioFormat, str]] = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac"}


@traced("validation.audio")
def validate_audio_file(
    file: AudioInput,
    *,
    max_size_mb: float | None = None,
    min_duration_seconds: float = DEFAULT_AUDIO_MIN_DURATION_SECONDS,
    max_duration_seconds: float = DEFAULT_AUDIO_MAX_DURATION_SECONDS,
) -> AudioFileInfo:
    """Decide from its content whether ``file`` is acceptable audio, and describe it.

    Args:
        file: a path (``str`` or path-like), the bytes themselves, a seekable binary file object
            (a ``SpooledTemporaryFile``, ``BytesIO``), or FastAPI's/Starlette's ``UploadFile`` as a route holds
            it (its ``.file`` is read; call this in a thread, ``asyncio.to_thread``, as it reads synchronously).
            A file object is read from its start and its position is put back afterwards.
        max_size_mb: the size limit in MiB; ``None`` uses the Settings default (100).
        min_duration_seconds: the shortest audio accepted.
        max_duration_seconds: the longest audio accepted.

    Raises:
        ValidationError: (``field="audio"``) for anything unacceptable: too large, empty, not one of the
            accepted formats, headers whose claims the content does not bear out, a hole or trailing data,
            cut short, too short or too long; also for a ``file`` of none of the kinds above, a file object
            that cannot seek, or one opened in text mode.
    """
    limit_mb = DEFAULT_AUDIO_MAX_SIZE_MB if max_size_mb is None else max_size_mb
    limits = Limits(min_duration_seconds, max_duration_seconds)
    with _opened(file) as reader:
        validate_file_size(reader.size, int(limit_mb * MB), field="audio")
        if reader.size == 0:
            raise refuse("The audio file is empty (0 bytes)")
        stream = _parse(reader, limits)
    if stream.duration_seconds < min_duration_seconds:
        raise ValidationError(
            f"Audio is too short: {stream.duration_seconds:.1f} s, the minimum is {min_duration_seconds:g} s "
            f"(accepted: {_accepted(limits)})",
            field="audio",
        )
    return AudioFileInfo(
        format=stream.format,
        mime_type=_MIME[stream.format],
        size_bytes=reader.size,
        duration_seconds=stream.duration_seconds,
        sample_rate=stream.sample_rate,
        channels=stream.channels,
    )


def _accepted(limits: Limits) -> str:
    return f"{ACCEPTED_AUDIO}, {limits.min_duration_seconds:g} to {limits.max_duration_seconds:g} s long"


def _unwrap_upload(upload: AudioInput) -> _Readable:
    """Return an UploadFile's spooled binary file (its own methods are coroutines); anything else as it is."""
    if not inspect.iscoroutinefunction(getattr(upload, "read", None)):
        return cast("_Readable", upload)
    inner = getattr(upload, "file", None)
    if inner is None or inspect.iscoroutinefunction(getattr(inner, "read", None)):
        raise ValidationError(
            f"validate_audio_file reads synchronously and {type(upload).__name__}.read is a coroutine; "
            "pass the upload's binary file object (for an UploadFile, upload.file)",
            field="audio",
        )
    return cast("IO[bytes]", inner)


@contextmanager
def _opened(upload: AudioInput) -> Iterator[Reader]:
    """Yield a one-pass reader over ``file``, and put a caller's file object back where it was."""
    file = _unwrap_upload(upload)
    if isinstance(file, bytes | bytearray | memoryview):
        data = file if isinstance(file, bytes) else bytes(file)
        yield Reader(None, data, len(data))
    elif isinstance(file, str | os.PathLike):
        try:
            handle = open(file, "rb", buffering=0)  # noqa: SIM115 (closed by the with below)
        except OSError as exc:
            raise refuse(f"The audio file could not be opened ({exc.strerror or type(exc).__name__})") from exc
        with handle:
            yield Reader(handle, None, os.fstat(handle.fileno()).st_size)
    elif callable(getattr(file, "read", None)) and callable(getattr(file, "seek", None)):
        seekable = getattr(file, "seekable", None)
        if callable(seekable) and not seekable():
            raise ValidationError(
                "validate_audio_file needs a seekable file object; spool the upload to a file first", field="audio"
            )
        try:
            position = file.tell()
            size = file.seek(0, os.SEEK_END)
        except (OSError, ValueError) as exc:
            raise refuse("The audio upload could not be read") from exc
        try:
            yield Reader(file, None, size)
        finally:
            file.seek(position)
    else:
        raise ValidationError(
            f"file must be a path, bytes or a binary file object, got {type(file).__name__}", field="audio"
        )


def _parse(reader: Reader, limits: Limits) -> Stream:
    """Pick the parser from the signature; turn what a file object raises into a ValidationError."""
    try:
        head = reader.peek(0, 64)
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            return parse_wav(reader, limits)
        if head[:4] in (b"RF64", b"RIFX", b"BW64"):
            raise refuse(f"This WAV variant ({head[:4].decode()}) is not accepted; save it as a standard WAV")
        audio_start = skip_id3v2(reader)
        if audio_start >= reader.size:
            raise refuse("The file has an ID3 tag but no audio behind it")
        signature = reader.peek(audio_start, 4)
        if signature == b"fLaC":
            return parse_flac(reader, audio_start, limits)
        if audio_start > 0 or (is_mpeg_sync(signature) and not is_adts(signature)):
            return parse_mp3(reader, audio_start, audio_end(reader, audio_start), limits)
        raise refuse(f"Not an accepted audio format: found {describe(head)}")
    except (OSError, ValueError) as exc:  # what a caller's file object may raise while it is read
        raise refuse(f"The audio upload could not be read ({type(exc).__name__}: {exc})") from exc


_SIGNATURES: Final = (
    (0, b"OggS", "an Ogg file (Vorbis, Opus or FLAC in Ogg)"),
    (0, b"\x89PNG", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF8", "a GIF image"),
    (0, b"PK\x03\x04", "a ZIP archive"),
    (0, b"%PDF", "a PDF document"),
    (0, b"\x1a\x45\xdf\xa3", "a Matroska/WebM file"),
    (0, b"FORM", "an AIFF/IFF file"),
    (0, b"RIFF", "a RIFF file that is not WAVE (AVI or WebP?)"),
    (4, b"ftyp", "an MP4/M4A/MOV file (AAC audio or video)"),
)


def describe(head: bytes) -> str:
    """Name what the first bytes look like, for the message."""
    for offset, magic, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return name
    if is_adts(head):
        return "AAC audio (ADTS)"
    try:
        import puremagic  # noqa: PLC0415 (its signature table loads only when a file is unrecognised)

        matches = puremagic.magic_string(head)
    except (puremagic.PureError, ValueError):
        matches = []
    if matches:
        return f"{matches[0].name} ({matches[0].extension})"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(char.isprintable() or char.isspace() for char in text):
        return "text"
    return f"unrecognised bytes starting {head[:8].hex(' ')}"
