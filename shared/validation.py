"""Validate what users upload, at the door: audio decided by its content, prompts, and sizes.

The audio format is decided by the bytes, never by the file name or the content type the client claimed:
the signature picks MP3 (optionally behind ID3v2 tags), WAV (RIFF/WAVE) or FLAC (optionally behind an ID3v2
tag), then mutagen reads that format's headers (MPEG frames, RIFF chunks, STREAMINFO). On top of mutagen this
module checks what mutagen does not: that several MPEG frames follow one another from the first byte of audio
(so random bytes that begin with a sync word are refused), and that a file was not cut short (a WAV data chunk
longer than the file, an MP3 whose Xing/VBRI byte count or last frame runs past the end, a FLAC whose last
frame stops before the sample count its STREAMINFO promises).

Memory stays bounded whatever the size of the upload: paths and file objects are read with seeks, a few
kilobytes at a time, never whole. Every refusal is a :class:`~shared.errors.ValidationError` whose ``field``
names the input and whose message says what was wrong, what was found or the limit, and what is accepted.
"""

from __future__ import annotations

import io
import os
import struct
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Final, Literal

from mutagen import MutagenError
from mutagen.flac import StreamInfo as FlacStreamInfo
from mutagen.mp3 import HeaderNotFoundError, MPEGFrame, MPEGInfo, skip_id3
from mutagen.mp3._util import VBRIHeader, VBRIHeaderError, XingHeader, XingHeaderError
from mutagen.wave import _WaveFile
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ValidationError

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
    "validate_audio_file",
    "validate_file_size",
    "validate_prompt",
]

AudioFormat = Literal["mp3", "wav", "flac"]
AudioInput = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]

ACCEPTED_AUDIO: Final = "MP3, WAV (PCM 16/24-bit or float), FLAC"

# The same defaults as Settings; pipeline modules pass their settings' values explicitly.
DEFAULT_AUDIO_MAX_SIZE_MB: Final = 100
DEFAULT_AUDIO_MIN_DURATION_SECONDS: Final = 5.0
DEFAULT_AUDIO_MAX_DURATION_SECONDS: Final = 900.0
DEFAULT_PROMPT_MIN_LENGTH: Final = 3
DEFAULT_PROMPT_MAX_LENGTH: Final = 2000

# Typed views of mutagen's unannotated functions (mutagen ships py.typed but leaves these untyped).
_skip_id3: Callable[[IO[bytes]], None] = skip_id3
_wave_file: Callable[[IO[bytes]], _WaveFile] = _WaveFile
_mpeg_frame: Callable[[IO[bytes]], MPEGFrame] = MPEGFrame
_xing_header: Callable[[IO[bytes]], XingHeader] = XingHeader
_xing_offset: Callable[[MPEGFrame], int] = XingHeader.get_offset
_vbri_header: Callable[[IO[bytes]], VBRIHeader] = VBRIHeader
_vbri_offset: Callable[[MPEGFrame], int] = VBRIHeader.get_offset
_flac_stream_info: Callable[[bytes], FlacStreamInfo] = FlacStreamInfo
_mpeg_info: Callable[..., MPEGInfo] = MPEGInfo

_MB: Final = 1024 * 1024
_MIME: Final[dict[AudioFormat, str]] = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac"}

# Errors mutagen and the stdlib raise on hostile bytes; each is turned into a ValidationError at the call.
_PARSE_ERRORS: Final = (
    MutagenError,
    HeaderNotFoundError,
    XingHeaderError,
    VBRIHeaderError,
    OSError,
    EOFError,
    struct.error,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    OverflowError,
    AssertionError,
)


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
class _Stream:
    """The facts a format parser hands back."""

    format: AudioFormat
    duration_seconds: float
    sample_rate: int
    channels: int


def _refuse(problem: str, *, field: str = "audio") -> ValidationError:
    """Build the error for an audio file that cannot be accepted, naming what is."""
    return ValidationError(f"{problem}. Accepted: {ACCEPTED_AUDIO}.", field=field)


def _truncated(what: str) -> ValidationError:
    return _refuse(f"The audio file is cut short (did the upload break off?): {what}")


# --------------------------------------------------------------------------------------------- sizes


def _format_bytes(count: float) -> str:
    if count >= _MB:
        return f"{count / _MB:,.1f} MB"
    return f"{int(count):,} bytes"


def validate_file_size(file_size_bytes: int, max_size_bytes: int, *, field: str = "file_size") -> None:
    """Refuse a size that is negative or over ``max_size_bytes``.

    Raises:
        ValidationError: the size is negative or larger than the limit.
        ValueError: ``max_size_bytes`` is not positive (a configuration mistake, not the user's).
    """
    if max_size_bytes <= 0:
        raise ValidationError(f"max_size_bytes must be positive, got {max_size_bytes}", field="max_size_bytes")
    if file_size_bytes < 0:
        raise ValidationError(
            f"File size {file_size_bytes} is negative; a size is 0 or more bytes "
            f"(accepted: up to {_format_bytes(max_size_bytes)})",
            field=field,
        )
    if file_size_bytes > max_size_bytes:
        raise ValidationError(
            f"File is too large: {_format_bytes(file_size_bytes)} ({file_size_bytes:,} bytes) is over the limit of "
            f"{_format_bytes(max_size_bytes)}; upload a shorter or more compressed file "
            f"(accepted: {ACCEPTED_AUDIO}, up to {_format_bytes(max_size_bytes)})",
            field=field,
        )


# --------------------------------------------------------------------------------------------- prompts

# Tab, line feed and carriage return are whitespace a person types; every other control character is refused.
_WHITESPACE_CONTROLS: Final = frozenset("\t\n\r")


def validate_prompt(
    prompt: str,
    min_length: int = DEFAULT_PROMPT_MIN_LENGTH,
    max_length: int = DEFAULT_PROMPT_MAX_LENGTH,
) -> str:
    """Return the prompt normalised: Unicode NFC, trimmed, each run of whitespace one space.

    Lengths count characters (code points) after normalisation.

    Raises:
        ValidationError: the prompt holds a control character or a lone surrogate, is empty after
            normalisation, or is shorter than ``min_length`` or longer than ``max_length``.
        TypeError: ``prompt`` is not a ``str``.
    """
    if not isinstance(prompt, str):
        raise ValidationError(f"prompt must be text, got {type(prompt).__name__}", field="prompt")
    accepted = f"accepted: {min_length} to {max_length} characters of text without control characters"
    for position, char in enumerate(prompt):
        category = unicodedata.category(char)
        if (category == "Cc" and char not in _WHITESPACE_CONTROLS) or category == "Cs":
            kind = "a control character" if category == "Cc" else "a lone surrogate"
            raise ValidationError(
                f"Prompt contains {kind} (U+{ord(char):04X}) at position {position}; remove it ({accepted})",
                field="prompt",
            )
    normalised = " ".join(unicodedata.normalize("NFC", prompt).split())
    length = len(normalised)
    if length == 0:
        raise ValidationError(
            f"Prompt is empty (after trimming whitespace); describe the video ({accepted})", field="prompt"
        )
    if length < min_length:
        raise ValidationError(
            f"Prompt is too short: {length} characters after normalisation, the minimum is {min_length} ({accepted})",
            field="prompt",
        )
    if length > max_length:
        raise ValidationError(
            f"Prompt is too long: {length:,} characters after normalisation, the maximum is {max_length:,}; "
            f"shorten it ({accepted})",
            field="prompt",
        )
    return normalised


# --------------------------------------------------------------------------------------------- audio


def validate_audio_file(
    file: AudioInput,
    *,
    max_size_mb: float | None = None,
    min_duration_seconds: float = DEFAULT_AUDIO_MIN_DURATION_SECONDS,
    max_duration_seconds: float = DEFAULT_AUDIO_MAX_DURATION_SECONDS,
) -> AudioFileInfo:
    """Decide from its content whether ``file`` is acceptable audio, and describe it.

    Args:
        file: a path (``str`` or path-like), the bytes themselves, or a seekable binary file object
            (``UploadFile.file``, a ``SpooledTemporaryFile``, ``BytesIO``). A file object is read from its
            start and its position is put back afterwards.
        max_size_mb: the size limit in MiB; ``None`` uses the Settings default (100).
        min_duration_seconds: the shortest audio accepted.
        max_duration_seconds: the longest audio accepted.

    Raises:
        ValidationError: (``field="audio"``) for anything unacceptable: too large, empty, not one of the
            accepted formats, a header with no audio behind it, cut short, too short or too long.
        TypeError: ``file`` is none of the kinds above, or a file object that cannot seek.
    """
    limit_mb = DEFAULT_AUDIO_MAX_SIZE_MB if max_size_mb is None else max_size_mb
    with _opened(file) as (handle, size):
        validate_file_size(size, int(limit_mb * _MB), field="audio")
        if size == 0:
            raise _refuse("The audio file is empty (0 bytes)")
        stream = _parse(handle, size)
    if stream.duration_seconds < min_duration_seconds:
        raise ValidationError(
            f"Audio is too short: {stream.duration_seconds:.1f} s, the minimum is {min_duration_seconds:g} s "
            f"(accepted: {ACCEPTED_AUDIO}, {min_duration_seconds:g} to {max_duration_seconds:g} s long)",
            field="audio",
        )
    if stream.duration_seconds > max_duration_seconds:
        raise ValidationError(
            f"Audio is too long: {stream.duration_seconds:.1f} s, the maximum is {max_duration_seconds:g} s; "
            f"trim it (accepted: {ACCEPTED_AUDIO}, {min_duration_seconds:g} to {max_duration_seconds:g} s long)",
            field="audio",
        )
    return AudioFileInfo(
        format=stream.format,
        mime_type=_MIME[stream.format],
        size_bytes=size,
        duration_seconds=stream.duration_seconds,
        sample_rate=stream.sample_rate,
        channels=stream.channels,
    )


@contextmanager
def _opened(file: AudioInput) -> Iterator[tuple[IO[bytes], int]]:
    """Yield a seekable binary handle on ``file`` and its size, and put a caller's file object back."""
    if isinstance(file, bytes | bytearray | memoryview):
        data = file if isinstance(file, bytes) else bytes(file)
        yield io.BytesIO(data), len(data)
    elif isinstance(file, str | os.PathLike):
        try:
            handle = open(file, "rb")  # noqa: SIM115 (closed by the with below; open errors are the user's)
        except OSError as exc:
            raise _refuse(f"The audio file could not be opened ({exc.strerror or type(exc).__name__})") from exc
        with handle:
            yield handle, os.fstat(handle.fileno()).st_size
    elif callable(getattr(file, "read", None)) and callable(getattr(file, "seek", None)):
        seekable = getattr(file, "seekable", None)
        if callable(seekable) and not seekable():
            raise ValidationError(
                "validate_audio_file needs a seekable file object; spool the upload to a file first", field="audio"
            )
        try:
            position = file.tell()
            size = file.seek(0, os.SEEK_END)
        except OSError as exc:
            raise _refuse("The audio upload could not be read") from exc
        try:
            yield file, size
        finally:
            file.seek(position)
    else:
        raise ValidationError(
            f"file must be a path, bytes or a binary file object, got {type(file).__name__}", field="audio"
        )


def _read_at(handle: IO[bytes], offset: int, count: int) -> bytes:
    handle.seek(offset)
    data = handle.read(count)
    if not isinstance(data, bytes):
        raise ValidationError("the file object must be opened in binary mode", field="audio")
    return data


def _parse(handle: IO[bytes], size: int) -> _Stream:
    """Pick the parser from the signature; translate whatever a parser meets into a ValidationError."""
    try:
        head = _read_at(handle, 0, 64)
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            return _parse_wav(handle, size)
        if head[:4] in (b"RF64", b"RIFX", b"BW64"):
            raise _refuse(f"This WAV variant ({head[:4].decode()}) is not accepted; save it as a standard WAV")
        handle.seek(0)
        _skip_id3(handle)
        audio_start = handle.tell()
        signature = _read_at(handle, audio_start, 4)
        if signature == b"fLaC":
            return _parse_flac(handle, size, audio_start)
        if audio_start > 0 or _is_mpeg_sync(signature):
            return _parse_mp3(handle, size, audio_start)
        raise _refuse(f"Not an accepted audio format: found {_describe(head)}")
    except ValidationError:
        raise
    except _PARSE_ERRORS as exc:
        raise _refuse(f"The audio file could not be read as {_guess_name(handle)}: it is damaged ({exc})") from exc


def _guess_name(handle: IO[bytes]) -> str:
    try:
        head = _read_at(handle, 0, 12)
    except _PARSE_ERRORS:
        return "audio"
    if head[:4] == b"RIFF":
        return "WAV"
    return "FLAC" if b"fLaC" in head else "MP3"


def _is_mpeg_sync(data: bytes) -> bool:
    return len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0


def _is_adts(data: bytes) -> bool:
    """Tell AAC's ADTS header (layer bits 00, which MPEG audio never uses) from an MPEG audio frame."""
    return len(data) >= 2 and data[0] == 0xFF and data[1] & 0xF6 == 0xF0


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


def _describe(head: bytes) -> str:
    """Name what the first bytes look like, for the message."""
    for offset, magic, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return name
    if _is_adts(head):
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


def _audio_end(handle: IO[bytes], size: int, start: int) -> int:
    """Return where the audio ends: before a trailing ID3v1 tag and an APEv2 tag, if present."""
    end = size
    if end - start >= 128 and _read_at(handle, end - 128, 3) == b"TAG":
        end -= 128
    if end - start >= 32:
        footer = _read_at(handle, end - 32, 32)
        if footer[:8] == b"APETAGEX":
            tag_size, _, flags = struct.unpack_from("<III", footer, 12)
            tag_size += 32 if flags & 0x80000000 else 0
            if tag_size <= end - start:
                end -= tag_size
    return end


# ------------------------------------------------------------------------------------------------ WAV

_WAVE_FORMAT_PCM: Final = 0x0001
_WAVE_FORMAT_IEEE_FLOAT: Final = 0x0003
_WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE
_ACCEPTED_BITS: Final = {_WAVE_FORMAT_PCM: (16, 24), _WAVE_FORMAT_IEEE_FLOAT: (32, 64)}
_MAX_FMT_SIZE: Final = 1024


def _parse_wav(handle: IO[bytes], size: int) -> _Stream:
    """Read the fmt and data chunks through mutagen's RIFF reader, then check what they promise."""
    wave = _wave_file(handle)
    if "fmt" not in wave:
        raise _refuse("The WAV file has no fmt chunk, so its audio cannot be read")
    fmt_chunk = wave["fmt"]
    if not 16 <= fmt_chunk.data_size <= _MAX_FMT_SIZE:
        raise _refuse(f"The WAV fmt chunk has an impossible size ({fmt_chunk.data_size:,} bytes)")
    fmt = fmt_chunk.read()
    if len(fmt) < 16:
        raise _truncated("the WAV fmt chunk ends early")
    format_tag, channels, sample_rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if format_tag == _WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < 40:
            raise _refuse("The WAV file says WAVE_FORMAT_EXTENSIBLE but its fmt chunk lacks the sub-format")
        format_tag = struct.unpack_from("<H", fmt, 24)[0]
    if format_tag not in _ACCEPTED_BITS or bits not in _ACCEPTED_BITS[format_tag]:
        kind = {_WAVE_FORMAT_PCM: "PCM", _WAVE_FORMAT_IEEE_FLOAT: "float"}.get(format_tag, f"format 0x{format_tag:04X}")
        raise _refuse(f"This WAV encoding is not accepted: {kind}, {bits}-bit")
    if channels == 0 or sample_rate == 0 or block_align != channels * bits // 8:
        raise _refuse(
            f"The WAV fmt chunk is inconsistent ({channels} channels, {sample_rate} Hz, "
            f"{bits}-bit, {block_align} bytes per frame)"
        )
    if "data" not in wave:
        raise _refuse("The WAV file has a header but no data chunk: there is no audio in it")
    data = wave["data"]
    available = size - data.data_offset
    if data.data_size > available:
        raise _truncated(
            f"its data chunk promises {data.data_size:,} bytes of audio but only {max(available, 0):,} follow"
        )
    frames = data.data_size // block_align
    if frames == 0:
        raise _refuse("The WAV file holds no audio (its data chunk is empty)")
    return _Stream("wav", frames / sample_rate, sample_rate, channels)


# ------------------------------------------------------------------------------------------------ MP3

_MPEG_RUN: Final = 4  # frames that must follow one another from the first byte of audio
_MPEG_TAIL: Final = 4 * 1024  # more than two of the largest Layer III frames (1,441 bytes)


def _mpeg_run(handle: IO[bytes], offset: int, end: int, limit: int) -> tuple[list[MPEGFrame], int]:
    """Follow MPEG frames from ``offset``; return the frames read and where the last one ends."""
    frames: list[MPEGFrame] = []
    position = offset
    while len(frames) < limit and position < end:
        handle.seek(position)
        try:
            frame = _mpeg_frame(handle)
        except HeaderNotFoundError:
            break
        first = frames[0] if frames else frame
        if (frame.version, frame.layer, frame.sample_rate) != (first.version, first.layer, first.sample_rate):
            break
        frames.append(frame)
        position = handle.tell()
    return frames, position


def _parse_mp3(handle: IO[bytes], size: int, start: int) -> _Stream:
    """Check that MPEG frames begin the audio and run to its end, then let mutagen measure it."""
    # Some taggers leave zero padding after the ID3v2 tag; skip it, but nothing else.
    if _read_at(handle, start, 1) == b"\x00":
        lead = _read_at(handle, start, 4096)
        start += len(lead) - len(lead.lstrip(b"\x00"))
    if start >= size:
        raise _refuse("The file has an ID3 tag but no audio behind it")
    end = _audio_end(handle, size, start)
    frames, position = _mpeg_run(handle, start, end, _MPEG_RUN)
    if not frames:
        head = _read_at(handle, 0, 64)
        if start:
            found = "an ID3 tag followed by something else"
        elif _is_mpeg_sync(head) and not _is_adts(head):
            found = "bytes that begin like an MPEG frame header but are not one"
        else:
            found = _describe(head)
        raise _refuse(f"Not an accepted audio format: no MPEG audio frame where the audio should start (found {found})")
    first = frames[0]
    if first.layer != 3:
        raise _refuse(
            f"MPEG-{first.version:g} Layer {first.layer} audio is not accepted; convert it to MP3 (Layer III)"
        )
    if position > end:
        raise _truncated(f"its MPEG frame at byte {frames[-1].frame_offset:,} runs past the end of the file")
    if len(frames) < _MPEG_RUN and position != end:
        raise _refuse(
            f"Not an accepted audio format: the bytes start like an MPEG frame but only {len(frames)} of the "
            f"{_MPEG_RUN} frames that should follow one another do"
        )
    _check_vbr_header(handle, first, start, size)
    if position < end:
        _check_mpeg_tail(handle, first, start, end)
    info = _mpeg_info(handle, offset=start)
    if info.length <= 0:
        raise _refuse("The MP3 file holds no audio")
    return _Stream("mp3", float(info.length), int(first.sample_rate), int(first.channels))


def _check_vbr_header(handle: IO[bytes], first: MPEGFrame, start: int, size: int) -> None:
    """Refuse a file shorter than the byte count its Xing/Info or VBRI header promises."""
    promised = -1
    handle.seek(start + _xing_offset(first))
    try:
        promised = _xing_header(handle).bytes
    except XingHeaderError:
        handle.seek(start + _vbri_offset(first))
        try:
            promised = _vbri_header(handle).bytes
        except VBRIHeaderError:
            return
    if promised > size - start:
        raise _truncated(f"its VBR header promises {promised:,} bytes of audio but only {size - start:,} follow")


def _check_mpeg_tail(handle: IO[bytes], first: MPEGFrame, start: int, end: int) -> None:
    """Find the frames at the end of the file and refuse the file if the last one runs past it."""
    window_start = max(start, end - _MPEG_TAIL)
    window = _read_at(handle, window_start, end - window_start)
    index = window.find(b"\xff")
    while index != -1:
        if _is_mpeg_sync(window[index : index + 2]):
            frames, position = _mpeg_run(handle, window_start + index, end, limit=_MPEG_TAIL)
            same = bool(frames) and (frames[0].version, frames[0].sample_rate) == (first.version, first.sample_rate)
            if same and len(frames) >= 2:
                if position > end:
                    overrun = position - end
                    raise _truncated(f"its last MPEG frame needs {overrun:,} more bytes than the file holds")
                return
        index = window.find(b"\xff", index + 1)


# ----------------------------------------------------------------------------------------------- FLAC

_FLAC_MAX_BLOCKS: Final = 1024
_FLAC_TAIL_DEFAULT: Final = 256 * 1024
_FLAC_SAMPLE_SIZES: Final = {0: 0, 1: 8, 2: 12, 4: 16, 5: 20, 6: 24, 7: 32}


def _parse_flac(handle: IO[bytes], size: int, start: int) -> _Stream:
    """Walk the metadata blocks (never loading pictures), read STREAMINFO with mutagen, check the frames."""
    position = start + 4
    info: FlacStreamInfo | None = None
    for _ in range(_FLAC_MAX_BLOCKS):
        header = _read_at(handle, position, 4)
        if len(header) < 4:
            raise _truncated("its metadata ends before the audio begins")
        kind, length = header[0] & 0x7F, int.from_bytes(header[1:4], "big")
        if info is None:
            if kind != 0 or length < 34:
                raise _refuse("The FLAC file does not begin with a STREAMINFO block")
            block = _read_at(handle, position + 4, 34)
            if len(block) < 34:
                raise _truncated("its STREAMINFO block ends early")
            info = _flac_stream_info(block)
        elif kind == 127:
            raise _refuse("The FLAC file has an invalid metadata block")
        position += 4 + length
        if position > size:
            raise _truncated("a metadata block runs past the end of the file")
        if header[0] & 0x80:
            break
    else:
        raise _refuse(f"The FLAC file has more than {_FLAC_MAX_BLOCKS} metadata blocks")
    assert info is not None  # the first loop either set it or raised  # noqa: S101
    end = _audio_end(handle, size, position)
    if position >= end:
        raise _refuse("The FLAC file has a header but no audio frames behind it")
    first = _flac_frame(_read_at(handle, position, 16), info)
    if first is None:
        raise _refuse("The FLAC file has no audio frame where its audio should begin")
    if info.total_samples == 0:
        raise _refuse("The FLAC file does not record how many samples it holds, so its length is unknown")
    _check_flac_tail(handle, info, first, position, end)
    return _Stream("flac", info.total_samples / info.sample_rate, int(info.sample_rate), int(info.channels))


@dataclass(frozen=True, slots=True)
class _FlacFrame:
    variable: bool  # blocking strategy: the coded number is a sample number, not a frame number
    number: int
    block_size: int
    rate_code: int
    channel_code: int
    size_code: int


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _flac_frame(data: bytes, info: FlacStreamInfo) -> _FlacFrame | None:
    """Parse a FLAC frame header at the start of ``data``; ``None`` unless it is valid with a matching CRC-8."""
    if len(data) < 6 or data[0] != 0xFF or data[1] & 0xFE != 0xF8:
        return None
    block_code, rate_code = data[2] >> 4, data[2] & 0x0F
    channel_code, size_code = data[3] >> 4, (data[3] >> 1) & 0x07
    if block_code == 0 or rate_code == 15 or channel_code > 10 or size_code == 3 or data[3] & 1:
        return None
    channels = channel_code + 1 if channel_code < 8 else 2
    if channels != info.channels or _FLAC_SAMPLE_SIZES[size_code] not in (0, info.bits_per_sample):
        return None
    lead = data[4]
    extra = next((n for n in range(7) if lead & (0x80 >> n) == 0), 7)  # leading ones of a UTF-8-style number
    if extra in {1, 7}:
        return None
    length = 1 if extra == 0 else extra
    if len(data) < 4 + length:
        return None
    number = lead & (0x7F >> extra)
    for byte in data[5 : 4 + length]:
        if byte & 0xC0 != 0x80:
            return None
        number = (number << 6) | (byte & 0x3F)
    cursor = 4 + length
    if block_code in (6, 7):
        width = block_code - 5
        block_size = int.from_bytes(data[cursor : cursor + width], "big") + 1
        cursor += width
    elif block_code == 1:
        block_size = 192
    else:
        block_size = 576 << (block_code - 2) if block_code < 8 else 256 << (block_code - 8)
    cursor += {12: 1, 13: 2, 14: 2}.get(rate_code, 0)
    if len(data) <= cursor or _crc8(data[:cursor]) != data[cursor]:
        return None
    return _FlacFrame(bool(data[1] & 1), number, block_size, rate_code, channel_code, size_code)


def _check_flac_tail(handle: IO[bytes], info: FlacStreamInfo, first: _FlacFrame, start: int, end: int) -> None:
    """Find the last frame header and refuse the file if it stops before STREAMINFO's sample count."""
    span = info.max_framesize + 32 if info.max_framesize else _FLAC_TAIL_DEFAULT
    window_start = max(start, end - span)
    window = _read_at(handle, window_start, end - window_start)
    index = window.rfind(b"\xff")
    while index != -1:
        frame = _flac_frame(window[index : index + 16], info)
        if frame is not None and (frame.variable, frame.rate_code, frame.size_code) == (
            first.variable,
            first.rate_code,
            first.size_code,
        ):
            first_sample = frame.number if frame.variable else frame.number * first.block_size
            last_sample = first_sample + frame.block_size
            if last_sample < info.total_samples:
                heard, promised = last_sample / info.sample_rate, info.total_samples / info.sample_rate
                raise _truncated(f"its frames stop at {heard:.1f} s of the {promised:.1f} s its header promises")
            return
        index = window.rfind(b"\xff", 0, index)
    raise _truncated("no FLAC frame was found at its end")
