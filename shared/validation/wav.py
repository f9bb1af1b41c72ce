"""WAV (RIFF/WAVE, PCM 16/24-bit or IEEE float): the data chunk's size is checked against the file.

Every chunk is walked from the RIFF header to the end of the file: a data chunk that promises more bytes than
follow is a file cut short, except the streaming marker (a data size of 0xFFFFFFFF or 0 under a RIFF size of
0xFFFFFFFF or 0, which ffmpeg writes to a pipe), for which the audio runs to the end of the file. Whatever
follows the data chunk must be well-formed chunks (LIST, id3, ...) up to the end: other bytes (an appended
archive, another file) are refused. PCM samples themselves cannot be checked, so a WAV needs no full read:
the walk touches only the chunk headers.
"""

from __future__ import annotations

import struct
from typing import Final

from shared.validation._common import Limits, Reader, Stream, refuse, too_long, truncated

__all__ = ["parse_wav"]

_WAVE_FORMAT_PCM: Final = 0x0001
_WAVE_FORMAT_IEEE_FLOAT: Final = 0x0003
_WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE
_ACCEPTED_BITS: Final = {_WAVE_FORMAT_PCM: (16, 24), _WAVE_FORMAT_IEEE_FLOAT: (32, 64)}
_MAX_FMT_SIZE: Final = 1024
_MAX_CHUNKS: Final = 256
_STREAMING: Final = (0xFFFFFFFF, 0)


def _chunk_id_ok(chunk_id: bytes) -> bool:
    return len(chunk_id) == 4 and all(0x20 <= byte < 0x7F for byte in chunk_id)


def parse_wav(reader: Reader, limits: Limits) -> Stream:
    """Walk the RIFF chunks, read the fmt chunk, and measure the data chunk against the file.

    Raises:
        ValidationError: no fmt or data chunk, an encoding not accepted, a data chunk longer than the file,
            bytes after the audio that are not RIFF chunks, too long.
    """
    riff_size = struct.unpack_from("<I", reader.peek(4, 4))[0]
    streamed = riff_size in _STREAMING
    position, fmt, chunks = 12, b"", 0
    data_offset, data_size = -1, 0
    while position + 8 <= reader.size:
        chunks += 1
        if chunks > _MAX_CHUNKS:
            raise refuse(f"The WAV file has more than {_MAX_CHUNKS} chunks; save it again as a plain WAV")
        header = reader.peek(position, 8)
        chunk_id, size = header[:4], struct.unpack_from("<I", header, 4)[0]
        if not _chunk_id_ok(chunk_id):
            break
        body = position + 8
        if chunk_id == b"fmt ":
            if not 16 <= size <= _MAX_FMT_SIZE:
                raise refuse(f"The WAV fmt chunk has an impossible size ({size:,} bytes)")
            fmt = reader.peek(body, size)
            if len(fmt) < 16:
                raise truncated("the WAV fmt chunk ends early")
        elif chunk_id == b"data" and data_offset < 0:
            if not fmt:
                raise refuse("The WAV file has its data chunk before its fmt chunk, so its audio cannot be read")
            data_offset, available = body, reader.size - body
            if size > available:
                if not (streamed or size == 0xFFFFFFFF):
                    raise truncated(
                        f"its data chunk promises {size:,} bytes of audio but only {max(available, 0):,} follow"
                    )
                size = available  # a streamed WAV: the audio runs to the end of the file
            elif size == 0 and streamed:
                size = available
            data_size = size
        position = body + size + (size & 1)
    if not fmt:
        raise refuse("The WAV file has no fmt chunk, so its audio cannot be read")
    channels, sample_rate, block_align = _check_fmt(fmt)
    if data_offset < 0:
        raise refuse("The WAV file has a header but no data chunk: there is no audio in it")
    if position < reader.size and not (position + 1 == reader.size and reader.peek(position, 1) == b"\x00"):
        extra = reader.size - position
        after = " after its audio" if position >= data_offset + data_size else ""
        raise refuse(
            f"The WAV file has {extra:,} bytes{after} at byte {position:,} that are not RIFF chunks (a damaged "
            "file, or another file appended to it); save the audio again as a plain WAV"
        )
    if position > reader.size + 1 and position - (data_offset + data_size) > 1:
        raise truncated(f"its last chunk promises {position - reader.size:,} more bytes than the file holds")
    frames = data_size // block_align
    if frames == 0:
        raise refuse("The WAV file holds no audio (its data chunk is empty)")
    seconds = frames / sample_rate
    if seconds > limits.max_duration_seconds:
        raise too_long(seconds, limits)
    return Stream("wav", seconds, sample_rate, channels)


def _check_fmt(fmt: bytes) -> tuple[int, int, int]:
    """Return (channels, sample rate, bytes per frame) of an accepted fmt chunk."""
    format_tag, channels, sample_rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if format_tag == _WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < 40:
            raise refuse("The WAV file says WAVE_FORMAT_EXTENSIBLE but its fmt chunk lacks the sub-format")
        format_tag = struct.unpack_from("<H", fmt, 24)[0]
    if format_tag not in _ACCEPTED_BITS or bits not in _ACCEPTED_BITS[format_tag]:
        kind = {_WAVE_FORMAT_PCM: "PCM", _WAVE_FORMAT_IEEE_FLOAT: "float"}.get(format_tag, f"format 0x{format_tag:04X}")
        raise refuse(f"This WAV encoding is not accepted: {kind}, {bits}-bit")
    if channels == 0 or sample_rate == 0 or block_align != channels * bits // 8:
        raise refuse(
            f"The WAV fmt chunk is inconsistent ({channels} channels, {sample_rate} Hz, "
            f"{bits}-bit, {block_align} bytes per frame)"
        )
    return channels, sample_rate, block_align
