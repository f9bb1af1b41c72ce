"""FLAC: every frame's CRC-16 and number are checked through the whole body; the last frame gives the length.

The metadata blocks are walked (pictures are skipped, never loaded) and STREAMINFO is read with mutagen. FLAC
frames carry no length, so the body is walked frame by frame: from each frame header the next is searched for
forward (the sync code, then a header with its CRC-8 right and the stream's blocking, sample rate, channels and
sample size), and it is the next frame only if it carries the next frame number (the next sample number when
the blocking is variable) and the bytes from the frame before up to it check with their CRC-16 (fastcrc, in
Rust: 10 MB in about a millisecond). So each frame's extent is proved exactly, a frame missing is refused
where the numbers jump, and a hole or a damaged byte anywhere is refused at the frame it falls in.

The work is bounded by the file's size: the walk earns one header parse per :data:`BYTES_PER_PARSE` bytes it
covers (plus :data:`FREE_PARSES`), and at most :data:`MAX_CANDIDATES` false sync codes are examined per
search. Real music frames (1-16 KB) are all walked; crafted files of tiny frames (16 samples, constant
subframes: 12-19 bytes a frame), and long silences, would cost a parse per few bytes; where the budget is
spent the walk jumps :data:`JUMP` bytes to the next frame header there (whose number must be higher, and the
frame after it must follow as above) and checks the CRC-16 of the whole stretch jumped over in one call:
frames that each check make a stretch that checks (the CRC register is 0 at every frame boundary), so a hole
in it is still refused (missed with odds of 1 in 65,536), and a frame dropped from it is refused when the
stretch holds fewer sync codes than its frame numbers need. Near the end the walk jumps to the last frame,
found backwards as in a jump.

The last frame must end exactly at the end of the file (before ID3v1/APEv2 tags): its CRC-16 must check, and
more than two zero bytes at its end (its CRC is two bytes) are taken as data appended; other data (an
appended archive) fails the CRC. The duration is where the last frame ends; STREAMINFO's total sample count
is checked against it: fewer samples in the frames than promised is a file cut short. The file is read once,
forward, in chunks.

ffmpeg plays a FLAC with a frame missing, or with whole frames wiped out by a hole, without a word (it skips to
the next header); those are refused on purpose: the upload is damaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from fastcrc import crc8, crc16

from shared.errors import ValidationError
from shared.validation._common import Limits, Reader, Stream, refuse, too_long, truncated
from shared.validation._mutagen import FlacStreamInfo, flac_stream_info
from shared.validation._tags import appended_archive, audio_end

__all__ = ["BYTES_PER_PARSE", "FREE_PARSES", "JUMP", "MAX_CANDIDATES", "parse_flac"]

MAX_CANDIDATES: Final = 64  # sync codes examined per search; real audio has a false one about every 64 KiB
BYTES_PER_PARSE: Final = 1024  # a parse and a CRC call cost 4-7 us: at most ~0.07 s per 10 MB of frames
FREE_PARSES: Final = 1024  # short files are walked frame by frame whatever their frames' size
JUMP: Final = 64 * 1024  # how far the walk jumps when its budget is spent
_MAX_BLOCKS: Final = 1024
_HEADER_BYTES: Final = 16
_MIN_FRAME: Final = 8  # a header of 6 bytes, one subframe byte, a CRC-16 is already 9
_SAMPLE_SIZES: Final = {0: 0, 1: 8, 2: 12, 4: 16, 5: 20, 6: 24, 7: 32}
_LEADING_ONES: Final = tuple(next((n for n in range(8) if byte & (0x80 >> n) == 0), 8) for byte in range(256))


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
        table.append(crc)
    return tuple(table)


_CRC16: Final = _crc16_table()


def _checks(body: bytes) -> bool:
    """Return whether ``body`` is whole frames: FLAC's CRC-16 over a frame and its stored CRC is 0."""
    return crc16.umts(body) == 0


def _ends_early(body: bytes) -> bool:
    """Return whether a prefix of ``body`` (a failed last frame) checks: a frame with other data after it.

    Only a refusal's message depends on it, so the byte loop in Python (50 ns a byte) runs once, over one frame.
    """
    crc, table = 0, _CRC16
    for index, byte in enumerate(body):
        if crc == 0 and index >= _MIN_FRAME:
            return True
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return False


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
    extra = _LEADING_ONES[lead]  # of a UTF-8-style number: how many bytes follow the first
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
    if len(data) <= cursor or crc8.smbus(data[:cursor]) != data[cursor]:
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


def _bound(block_size: int, info: FlacStreamInfo) -> int:
    """Return the most bytes a frame of ``block_size`` samples can take: verbatim (a side channel has one more bit)."""
    return (block_size * info.channels * (info.bits_per_sample + 1) + 7) // 8 + 64


class _Walk:
    """The walk of one FLAC body, frame by frame, with its budget of header parses."""

    def __init__(self, reader: Reader, info: FlacStreamInfo, first: _Frame, start: int, end: int) -> None:
        self.reader, self.info, self.first, self.start, self.end = reader, info, first, start, end
        self.sync = b"\xff\xf9" if first.variable else b"\xff\xf8"
        self.block = max(first.block_size, info.max_blocksize if 16 <= info.max_blocksize <= 65535 else 0)
        self.span = _bound(self.block, info)  # the most a frame of the stream can take
        self.parses = 0

    def sample(self, frame: _Frame) -> int:
        return frame.number if frame.variable else frame.number * self.first.block_size

    def header(self, data: bytes) -> _Frame | None:
        """Parse a frame header of this stream (counted against the budget)."""
        self.parses += 1
        frame = _frame(data, self.info)
        first = self.first
        if frame is None or (frame.rate_code, frame.size_code) != (first.rate_code, first.size_code):
            return None
        return frame

    def over_budget(self, offset: int) -> bool:
        return self.parses > (offset - self.start) // BYTES_PER_PARSE + FREE_PARSES

    def next_frame(self, offset: int, frame: _Frame) -> tuple[int, _Frame] | None:
        """Return the frame after the one at ``offset``, its bytes proved by the CRC-16; ``None`` if it is the last."""
        expected = self.sample(frame) + frame.block_size
        stop = min(offset + _bound(frame.block_size, self.info), self.end)
        buffer, base = self.reader.window(offset, stop - offset + _HEADER_BYTES)
        index, limit, later = offset + _MIN_FRAME - base, stop - base, False
        for _ in range(MAX_CANDIDATES):
            index = buffer.find(self.sync, index, limit)
            if index == -1:
                break
            candidate = self.header(buffer[index : index + _HEADER_BYTES])
            if candidate is not None:
                if _checks(buffer[offset - base : index]):
                    if self.sample(candidate) == expected:
                        return base + index, candidate
                    raise refuse(
                        f"The FLAC file is damaged: a frame is missing or out of order at byte {base + index:,} "
                        f"(the frame there starts at sample {self.sample(candidate):,}, the one before it ends at "
                        f"sample {expected:,})"
                    )
                later = later or self.sample(candidate) >= expected
            index += 1
        else:
            raise _false_headers(offset)
        # A later frame's header behind bytes that fail: this frame is damaged, unless it is the last and checks
        # (the header was a false one inside it).
        if stop == self.end and not (later and not _checks(buffer[offset - base : limit])):
            return None
        if later:
            raise refuse(
                f"The FLAC file is damaged at byte {offset:,}: the audio frame there fails its CRC-16 check (a hole "
                "or damaged bytes)"
            )
        raise refuse(
            f"The FLAC file is damaged: no audio frame follows the one at byte {offset:,} within {stop - offset:,} "
            "bytes (a hole, or data that is not FLAC audio)"
        )

    def jump(self, offset: int, frame: _Frame) -> tuple[int, _Frame]:
        """Return the first frame header from :data:`JUMP` bytes on, the stretch up to it checked in one CRC-16."""
        point = offset + JUMP
        buffer, base = self.reader.window(offset, JUMP + self.span + _HEADER_BYTES)
        index, limit, damaged = point - base, point + self.span - base, False
        for _ in range(MAX_CANDIDATES):
            index = buffer.find(self.sync, index, limit)
            if index == -1:
                break
            candidate = self.header(buffer[index : index + _HEADER_BYTES])
            if candidate is not None and self.sample(candidate) > self.sample(frame):
                if _checks(buffer[offset - base : index]):
                    self.count_frames(buffer, base, (offset, base + index), frame, candidate)
                    return base + index, candidate
                damaged = True
            index += 1
        else:
            raise _false_headers(point)
        if damaged:
            raise _damaged_between(offset, point + self.span)
        raise refuse(
            f"The FLAC file is damaged: no audio frame within {self.span:,} bytes of byte {point:,} (a hole, or "
            "data that is not FLAC audio)"
        )

    def last(self, offset: int, frame: _Frame) -> tuple[int, _Frame]:
        """Return the last frame header, found backwards; the stretch from ``offset`` up to it checked in one CRC-16."""
        buffer, base = self.reader.window(offset, self.end - offset)
        floor, index = max(offset, self.end - self.span) - base, self.end - base
        for _ in range(MAX_CANDIDATES):
            index = buffer.rfind(self.sync, floor, index)
            if index == -1:
                break
            if index + base == offset:
                return offset, frame
            candidate = self.header(buffer[index : index + _HEADER_BYTES])
            later = candidate is not None and self.sample(candidate) > self.sample(frame)
            if later and candidate is not None and _checks(buffer[offset - base : index]):
                self.count_frames(buffer, base, (offset, base + index), frame, candidate)
                return base + index, candidate
        raise _damaged_between(offset, self.end)

    def count_frames(self, buffer: bytes, base: int, stretch: tuple[int, int], frame: _Frame, after: _Frame) -> None:
        """Refuse a stretch holding fewer sync codes than its frame numbers need: a frame was dropped from it."""
        start, stop = stretch
        delta = self.sample(after) - self.sample(frame)
        frames = delta // self.first.block_size if not frame.variable else -(-delta // self.block)
        if buffer.count(self.sync, start - base, stop - base) < frames:
            raise refuse(
                f"The FLAC file is damaged: frames are missing between byte {start:,} and byte {stop:,} (its "
                f"frame numbers need {frames:,} frames there)"
            )


def _false_headers(offset: int) -> ValidationError:
    return refuse(
        f"The FLAC file is damaged near byte {offset:,}: more than {MAX_CANDIDATES} false frame headers in a row "
        "where audio frames should be"
    )


def _damaged_between(start: int, stop: int) -> ValidationError:
    return refuse(
        f"The FLAC file is damaged between byte {start:,} and byte {stop:,}: its frames fail their CRC-16 check "
        "(a hole or damaged bytes)"
    )


def parse_flac(reader: Reader, start: int, limits: Limits) -> Stream:
    """Check the FLAC frames at ``start`` through to the end of the file, and measure them.

    Raises:
        ValidationError: no STREAMINFO or first frame, a frame that fails its CRC-16, a frame missing, a
            stretch without frames, trailing data, fewer samples than STREAMINFO promises, too long.
    """
    info, position = _metadata(reader, start)
    end = audio_end(reader, position)
    if position >= end:
        raise refuse("The FLAC file has a header but no audio frames behind it")
    first = _frame(reader.peek(position, _HEADER_BYTES), info)
    if first is None or first.number != 0:
        raise refuse("The FLAC file has no audio frame where its audio should begin")
    walk = _Walk(reader, info, first, position, end)
    max_samples = limits.max_units(info.sample_rate)
    offset, frame = position, first
    while True:
        if walk.over_budget(offset):
            if offset + JUMP + 2 * walk.span >= end:
                offset, frame = walk.last(offset, frame)
                break
            offset, frame = walk.jump(offset, frame)
        else:
            hit = walk.next_frame(offset, frame)
            if hit is None:
                break
            offset, frame = hit
        if walk.sample(frame) > max_samples:
            raise too_long(walk.sample(frame) / info.sample_rate, limits, at_least=True)
    heard = walk.sample(frame) + frame.block_size
    _check_last_frame(walk, offset, heard)
    return _measure(info, heard, first.block_size, end - position, limits)


def _check_last_frame(walk: _Walk, offset: int, heard: int) -> None:
    """Refuse a last frame that does not end exactly at the end of the audio: cut off, damaged or followed by data."""
    buffer, base = walk.reader.window(offset, walk.end - offset)
    body = buffer[offset - base : walk.end - base]
    if _checks(body) and len(body) >= _MIN_FRAME:
        if len(body) - len(body.rstrip(b"\x00")) <= 2:  # its CRC-16 may end in zero bytes, nothing more may
            return
    else:
        rate, total = walk.info.sample_rate, walk.info.total_samples
        if total and heard < total:
            raise truncated(
                f"its last frame (at byte {offset:,}) is cut off, at {heard / rate:.1f} s of the "
                f"{total / rate:.1f} s its header promises"
            )
        if not _ends_early(body):
            raise refuse(
                f"The FLAC file is damaged or cut short: its last frame (at byte {offset:,}) fails its CRC-16 "
                "check; export the audio again"
            )
    archive = appended_archive(body)
    found = f"{archive} is appended to it" if archive else "other data follows it"
    raise refuse(
        f"The FLAC file's last frame (at byte {offset:,}) is damaged or {found}; export the audio again as a plain FLAC"
    )


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
