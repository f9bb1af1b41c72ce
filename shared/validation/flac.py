"""FLAC: frames are sampled through the whole body, and the last frame says how long the audio is.

The metadata blocks are walked (pictures are skipped, never loaded) and STREAMINFO is read with mutagen. FLAC
frames carry no length, so the body is checked at points about one uncompressed frame apart: at each point the
next frame header (its CRC-8 right, the stream's blocking, sample rate, channels and sample size) must be
found within one uncompressed frame, and the frame after it must follow with the next frame number. A random
hole, a damaged stretch or a crafted tail has no such pair of frames, and is refused where it begins. The last
frame is found in the last uncompressed frame's worth of bytes and must end exactly at the end of the file
(its CRC-16 is checked), so trailing data (an appended archive) is refused. The duration is where the last
frame ends; STREAMINFO's total sample count is checked against it: fewer samples in the frames than promised
is a file cut short.

The work is bounded: one forward pass over the bytes, a few header parses per checkpoint, at most
:data:`MAX_CANDIDATES` false sync codes examined per checkpoint, and one CRC-16 over the last frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from shared.validation._common import Limits, Reader, Stream, refuse, too_long, truncated
from shared.validation._mutagen import FlacStreamInfo, flac_stream_info
from shared.validation._tags import appended_archive, audio_end

__all__ = ["MAX_CANDIDATES", "parse_flac"]

MAX_CANDIDATES: Final = 64  # sync codes examined per checkpoint; real audio has about one per 64 KiB
_MAX_BLOCKS: Final = 1024
_HEADER_BYTES: Final = 16
_MIN_FRAME: Final = 8  # a header of 6 bytes, one subframe byte, a CRC-16 is already 9
_SAMPLE_SIZES: Final = {0: 0, 1: 8, 2: 12, 4: 16, 5: 20, 6: 24, 7: 32}


def _crc_table(poly: int, width: int) -> tuple[int, ...]:
    top, mask = 1 << (width - 1), (1 << width) - 1
    table = []
    for byte in range(256):
        crc = byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
        table.append(crc)
    return tuple(table)


_CRC8: Final = _crc_table(0x07, 8)
_CRC16: Final = _crc_table(0x8005, 16)


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = _CRC8[crc ^ byte]
    return crc


def _frame_end(body: bytes) -> int:
    """Return how long the frame at the start of ``body`` is: ``len(body)`` if it ends exactly there, else -1 or less.

    A frame followed by its CRC-16 has a CRC of 0, and zeros appended keep it 0: so the whole of ``body`` must
    check and the body one byte short must not. When the whole does not check, a shorter prefix that does
    means the frame ended earlier and other data follows (-2); none means the frame is cut off (-1).
    """
    crc, table, earlier = 0, _CRC16, False
    last = len(body) - 1
    for index, byte in enumerate(body):
        if crc == 0 and index >= _MIN_FRAME:
            earlier = True
            if index == last:
                return -2  # zeros (or a byte) appended after a frame that checked
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    if crc == 0 and len(body) >= _MIN_FRAME:
        return len(body)
    return -2 if earlier else -1


@dataclass(frozen=True, slots=True)
class _Frame:
    variable: bool  # blocking strategy: the coded number is a sample number, not a frame number
    number: int
    block_size: int
    rate_code: int
    size_code: int


def _frame(data: bytes, info: FlacStreamInfo) -> _Frame | None:
    """Parse a FLAC frame header at the start of ``data``; ``None`` unless it is valid with a matching CRC-8."""
    if len(data) < 6 or data[0] != 0xFF or data[1] & 0xFE != 0xF8:
        return None
    block_code, rate_code = data[2] >> 4, data[2] & 0x0F
    channel_code, size_code = data[3] >> 4, (data[3] >> 1) & 0x07
    if block_code == 0 or rate_code == 15 or channel_code > 10 or size_code == 3 or data[3] & 1:
        return None
    channels = channel_code + 1 if channel_code < 8 else 2
    if channels != info.channels or _SAMPLE_SIZES[size_code] not in (0, info.bits_per_sample):
        return None
    lead = data[4]
    extra = next((n for n in range(8) if lead & (0x80 >> n) == 0), 8)  # leading ones of a UTF-8-style number
    if extra in {1, 8}:
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
    return _Frame(bool(data[1] & 1), number, block_size, rate_code, size_code)


def _metadata(reader: Reader, start: int) -> tuple[FlacStreamInfo, int]:
    """Walk the metadata blocks; return STREAMINFO and where the first frame begins."""
    position = start + 4
    info: FlacStreamInfo | None = None
    for _ in range(_MAX_BLOCKS):
        header = reader.peek(position, 4)
        if len(header) < 4:
            raise truncated("its metadata ends before the audio begins")
        kind, length = header[0] & 0x7F, int.from_bytes(header[1:4], "big")
        if info is None:
            if kind != 0 or length < 34:
                raise refuse("The FLAC file does not begin with a STREAMINFO block")
            block = reader.peek(position + 4, 34)
            if len(block) < 34:
                raise truncated("its STREAMINFO block ends early")
            info = flac_stream_info(block)
        elif kind == 127:
            raise refuse("The FLAC file has an invalid metadata block")
        position += 4 + length
        if position > reader.size:
            raise truncated("a metadata block runs past the end of the file")
        if header[0] & 0x80:
            break
    else:
        raise refuse(f"The FLAC file has more than {_MAX_BLOCKS} metadata blocks")
    assert info is not None  # the loop either set it or raised  # noqa: S101
    if info.sample_rate == 0 or not 1 <= info.channels <= 8 or not 4 <= info.bits_per_sample <= 32:
        raise refuse(
            f"The FLAC STREAMINFO block is inconsistent ({info.channels} channels, {info.sample_rate} Hz, "
            f"{info.bits_per_sample}-bit)"
        )
    return info, position


class _Walk:
    """The checkpoints of one FLAC body: frame headers found in a forward window, sample numbers compared."""

    def __init__(self, reader: Reader, info: FlacStreamInfo, first: _Frame, span: int) -> None:
        self.reader, self.info, self.first, self.span = reader, info, first, span
        self.sync = b"\xff\xf9" if first.variable else b"\xff\xf8"

    def sample(self, frame: _Frame) -> int:
        return frame.number if frame.variable else frame.number * self.first.block_size

    def matches(self, frame: _Frame | None) -> bool:
        first = self.first
        return frame is not None and (frame.rate_code, frame.size_code) == (first.rate_code, first.size_code)

    def find(self, start: int, stop: int, after_sample: int) -> tuple[int, _Frame] | None:
        """Return the first frame header in ``[start, stop)`` whose first sample is past ``after_sample``."""
        buffer, base = self.reader.window(start, stop - start + _HEADER_BYTES)
        index, limit = start - base, stop - base
        for _ in range(MAX_CANDIDATES):
            index = buffer.find(self.sync, index, limit)
            if index == -1:
                return None
            frame = _frame(buffer[index : index + _HEADER_BYTES], self.info)
            if frame is not None and self.matches(frame) and self.sample(frame) > after_sample:
                return base + index, frame
            index += 1
        raise refuse(
            f"The FLAC file is damaged near byte {start:,}: more than {MAX_CANDIDATES} false frame headers "
            "in a row where audio frames should be"
        )


def parse_flac(reader: Reader, start: int, limits: Limits) -> Stream:
    """Check the FLAC frames at ``start`` through to the end of the file, and measure them.

    Raises:
        ValidationError: no STREAMINFO or first frame, a stretch without frames, trailing data, fewer samples
            than STREAMINFO promises, too long.
    """
    info, position = _metadata(reader, start)
    end = audio_end(reader, position)
    if position >= end:
        raise refuse("The FLAC file has a header but no audio frames behind it")
    first = _frame(reader.peek(position, _HEADER_BYTES), info)
    if first is None or first.number != 0:
        raise refuse("The FLAC file has no audio frame where its audio should begin")
    block = max(first.block_size, info.max_blocksize if 16 <= info.max_blocksize <= 65535 else 0)
    # The most a frame can take: every sample stored verbatim (one more bit for a side channel), plus headers.
    span = (block * info.channels * (info.bits_per_sample + 1) + 7) // 8 + 64
    walk = _Walk(reader, info, first, span)
    max_samples = limits.max_units(info.sample_rate)
    last_offset, last_sample = position, 0
    point = position + span
    while point + 2 * span < end:
        hit = walk.find(point, point + span, last_sample)
        if hit is None:
            raise refuse(
                f"The FLAC file is damaged: no audio frame within {span:,} bytes of byte {point:,} (a hole, "
                "or data that is not FLAC audio)"
            )
        offset, frame = hit
        following = walk.find(offset + _MIN_FRAME, offset + span, walk.sample(frame))
        if following is None or walk.sample(following[1]) != walk.sample(frame) + frame.block_size:
            raise refuse(f"The FLAC file is damaged: the audio frame at byte {offset:,} is not followed by the next")
        last_offset, last_sample = following[0], walk.sample(following[1])
        if last_sample > max_samples:
            raise too_long(last_sample / info.sample_rate, limits, at_least=True)
        point = last_offset + span
    offset, frame, length = _last_frame(walk, last_offset, last_sample, end)
    heard = walk.sample(frame) + frame.block_size
    if length < 0:
        if length == -1:
            raise truncated(
                f"its last frame (at byte {offset:,}) is cut off, at {heard / info.sample_rate:.1f} s of the "
                f"{info.total_samples / info.sample_rate:.1f} s its header promises"
            )
        buffer, base = reader.window(offset, end - offset)
        archive = appended_archive(buffer[offset - base : end - base])
        found = f"{archive} is appended to it" if archive else "other data follows it"
        raise refuse(
            f"The FLAC file's last frame (at byte {offset:,}) is damaged or {found}; export the audio again "
            "as a plain FLAC"
        )
    return _measure(info, heard, first.block_size, end - position, limits)


def _last_frame(walk: _Walk, after: int, after_sample: int, end: int) -> tuple[int, _Frame, int]:
    """Find the last frame; return its offset, header, and its length by its CRC-16 (-1 if it never checks)."""
    window_start = max(after, end - walk.span)
    buffer, base = walk.reader.window(window_start, end - window_start)
    tail = buffer[window_start - base : end - base]
    index = len(tail)
    for _ in range(MAX_CANDIDATES):
        index = tail.rfind(walk.sync, 0, index)
        if index == -1:
            break
        frame = _frame(tail[index : index + _HEADER_BYTES], walk.info)
        if walk.matches(frame) and frame is not None and walk.sample(frame) >= after_sample:
            return window_start + index, frame, _frame_end(tail[index:])
    raise truncated("no FLAC frame was found at its end") from None


def _measure(info: FlacStreamInfo, heard: int, block_size: int, size: int, limits: Limits) -> Stream:
    """Check STREAMINFO's total and the file's size against the samples the frames hold."""
    rate = info.sample_rate
    if info.total_samples and heard < info.total_samples:
        raise truncated(
            f"its frames stop at {heard / rate:.1f} s of the {info.total_samples / rate:.1f} s its header promises"
        )
    most = heard * info.channels * (info.bits_per_sample + 1) // 8 + 64 * (heard // block_size + 1)
    if size > most:
        raise refuse(f"The FLAC file holds {size:,} bytes of frames, more than {heard / rate:.1f} s of audio can take")
    seconds = heard / rate
    if seconds > limits.max_duration_seconds:
        raise too_long(seconds, limits)
    return Stream("flac", seconds, rate, info.channels)
