"""MP3 (MPEG-1/2/2.5 Layer III): every frame is walked, so the duration is what the frames hold.

From the first byte of audio to the last, each frame header must lead to the next one, with the same MPEG
version, layer and sample rate, and each frame's side information must be decodable (``big_values`` at most
288, no reserved block type: what ffmpeg reports as "big_values too big" or "invalid block type"). So random
bytes that begin with a sync word, a run of fake frame headers, a random hole and anything appended (a ZIP
archive, another format) are refused where the frames stop. The Xing/Info or VBRI header's claims (frames,
bytes) are checked against the walk: a file holding fewer frames than its header promises is cut short (or
its header is wrong), and one holding more is measured by its frames.

The work is bounded: one forward pass over the bytes, and the walk stops as soon as the frames exceed the
maximum duration (an MP3 frame lasts at least 24 ms). Runs of frames are walked by a regular expression compiled
for the stream (:func:`_run_patterns`), which checks the same things as the frame-by-frame loop but in C: the loop
handles only the first frame, the frames across a window's edge and the frame where a run stops. So even 24-byte
frames, the most frames a file can hold per byte, cost a fraction of a microsecond each. A stream's patterns are
built on its first use in the process (about 0.1 s; there are nine Layer III streams) and kept.
"""

from __future__ import annotations

import functools
import itertools
import re
import struct
from collections.abc import Callable, Iterable
from typing import Final

from shared.validation._common import Limits, Reader, Stream, refuse, too_long, truncated
from shared.validation._mutagen import VbrHeader, vbr_header

__all__ = ["MPEG_RUN", "is_adts", "is_mpeg_sync", "parse_mp3"]

MPEG_RUN: Final = 4  # frames that must follow one another before a short file counts as MP3

_BITRATES: Final = {
    3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0),  # MPEG-1 Layer III
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0),  # MPEG-2 and 2.5 Layer III
}
_SAMPLE_RATES: Final = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_VERSIONS: Final = {3: 1.0, 2: 2.0, 0: 2.5}
_LAYERS: Final = {3: 1, 2: 2, 1: 3}
# Ignored when frames are compared: the private, mode-extension, copyright and original bits.
_HEADER_MASK: Final = 0xFFFFFEC3
_STREAM_MASK: Final = 0xFFFE0C00  # sync, version, layer, sample rate: the same in every frame
_LOOKAHEAD: Final = 4 + 2 + 32  # header, CRC, the largest side information
_MAX_FRAME: Final = 2 * 1441 + 2
_PADDING_RUN: Final = 4096
_SIDE_CACHE: Final = 4096
_RUN_SPAN: Final = 1024 * 1024  # the most bytes one regular-expression run walks before the limits are checked

_unpack_header = struct.Struct(">I").unpack_from


def is_mpeg_sync(data: bytes) -> bool:
    """Tell whether ``data`` begins with an MPEG audio sync word (11 set bits)."""
    return len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0


def is_adts(data: bytes) -> bool:
    """Tell AAC's ADTS header (layer bits 00, which MPEG audio never uses) from an MPEG audio frame."""
    return len(data) >= 2 and data[0] == 0xFF and data[1] & 0xF6 == 0xF0


# A frame kind: (length without padding, side information offset, its length, big_values/window shifts)
_Kind = tuple[int, int, int, tuple[tuple[int, int, int], ...]]


def _side_shifts(mpeg1: bool, channels: int, side_length: int) -> tuple[tuple[int, int, int], ...]:
    """Return, per granule and channel, the bit shifts of big_values, window_switching and block_type."""
    total = side_length * 8
    offset = 9 + (5 if channels == 1 else 3) + 4 * channels if mpeg1 else 8 + (1 if channels == 1 else 2)
    granule_bits, switch_at = (59, 33) if mpeg1 else (63, 38)
    shifts = []
    for _ in range(2 if mpeg1 else 1):
        for _ in range(channels):
            shifts.append(
                (total - (offset + 12 + 9), total - (offset + switch_at + 1), total - (offset + switch_at + 3))
            )
            offset += granule_bits
    return tuple(shifts)


def _side_info_ok(side: bytes, shifts: tuple[tuple[int, int, int], ...]) -> bool:
    """Tell whether a frame's side information can be decoded: big_values at most 288, no reserved block type."""
    bits = int.from_bytes(side, "big")
    for values_shift, switch_shift, block_shift in shifts:
        if (bits >> values_shift) & 0x1FF > 288 or ((bits >> switch_shift) & 1 and not (bits >> block_shift) & 3):
            return False
    return True


def _frame_kind(header: int, stream: int) -> _Kind | None:
    """Describe a frame header of the stream ``stream`` (its masked first header); ``None`` if it is not one."""
    if header & _STREAM_MASK != stream:
        return None
    version, bitrate_index = (header >> 19) & 3, (header >> 12) & 15
    if (header >> 17) & 3 != 1 or not 0 < bitrate_index < 15 or header & 3 == 2:
        return None
    mpeg1 = version == 3
    rate = _SAMPLE_RATES[version][(header >> 10) & 3]
    bitrate = _BITRATES[3 if mpeg1 else 2][bitrate_index] * 1000
    length = (144 if mpeg1 else 72) * bitrate // rate
    channels = 1 if (header >> 6) & 3 == 3 else 2
    side_length = (17 if channels == 1 else 32) if mpeg1 else (9 if channels == 1 else 17)
    side_offset = 4 if header & 0x10000 else 6  # protection bit 0: a CRC follows the header
    if length < side_offset + side_length:
        return None
    return length, side_offset, side_length, _side_shifts(mpeg1, channels, side_length)


def _first_frame(header: int) -> tuple[float, int, int, int] | None:
    """Return (version, layer, sample rate, samples per frame) of an MPEG audio header, or ``None``."""
    if header >> 21 != 0x7FF:
        return None
    version, layer, rate_index = (header >> 19) & 3, (header >> 17) & 3, (header >> 10) & 3
    if version == 1 or layer == 0 or rate_index == 3:
        return None
    layer_number = _LAYERS[layer]
    samples = 384 if layer_number == 1 else 1152 if version == 3 or layer_number == 2 else 576
    return _VERSIONS[version], _LAYERS[layer], _SAMPLE_RATES[version][rate_index], samples


def _byte_class(values: Iterable[int]) -> str:
    """Render a set of byte values as a pattern: one escaped byte, ``.`` for all 256, else a class of ranges."""
    chosen = sorted(set(values))
    if len(chosen) == 256:
        return "."
    if len(chosen) == 1:
        return f"\\x{chosen[0]:02x}"
    ranges: list[str] = []
    low = previous = chosen[0]
    for value in [*chosen[1:], -1]:
        if value != previous + 1:
            ranges.append(f"\\x{low:02x}" if low == previous else f"\\x{low:02x}-\\x{previous:02x}")
            low = value
        previous = value
    return "[" + "".join(ranges) + "]"


def _skip(count: int) -> str:
    return "" if count == 0 else "." if count == 1 else f".{{{count}}}"


# A constraint on the side information: (first bit, counted from the left, width, accepted value)
_Constraint = tuple[int, int, Callable[[int], bool]]


def _side_constraints(side_length: int, shifts: tuple[tuple[int, int, int], ...]) -> list[_Constraint]:
    """Turn :func:`_side_info_ok`'s shifts into bit ranges: big_values at most 288, no window switch to block 0."""
    total = side_length * 8
    constraints: list[_Constraint] = []
    for values_shift, switch_shift, _block_shift in shifts:
        constraints.append((total - values_shift - 9, 9, lambda value: value <= 288))
        constraints.append((total - switch_shift - 1, 3, lambda value: value != 0b100))  # switch set, block type 0
    return sorted(constraints, key=lambda constraint: constraint[0])


@functools.lru_cache(maxsize=8)
def _side_pattern(side_length: int, shifts: tuple[tuple[int, int, int], ...]) -> str:
    """Build the pattern that matches exactly the side information :func:`_side_info_ok` accepts."""
    parts: list[str] = []
    cursor = 0  # the next byte of the side information not yet matched
    for first_bit, width, accepted in _side_constraints(side_length, shifts):
        first_byte, last_byte = first_bit // 8, (first_bit + width - 1) // 8
        if first_byte < cursor or last_byte - first_byte > 1:
            raise AssertionError("MP3 side-information constraints must lie in separate pairs of bytes")
        parts.append(_skip(first_byte - cursor))
        spare = (last_byte + 1) * 8 - first_bit - width  # bits after the field in its last byte
        if first_byte == last_byte:
            mask = (1 << width) - 1
            parts.append(_byte_class(b for b in range(256) if accepted((b >> spare) & mask)))
        else:
            low_bits = 8 - spare  # the field's bits in the second byte; the rest are the first byte's last bits
            high_mask, low_mask = (1 << (width - low_bits)) - 1, (1 << low_bits) - 1
            highs_by_lows: dict[tuple[int, ...], list[int]] = {}  # few groups: one alternative each
            for high in range(high_mask + 1):
                lows = tuple(low for low in range(low_mask + 1) if accepted(high << low_bits | low))
                if lows:
                    highs_by_lows.setdefault(lows, []).append(high)
            alternatives = (
                _byte_class(b for b in range(256) if b & high_mask in highs)
                + _byte_class(b for b in range(256) if (b >> spare) & low_mask in lows)
                for lows, highs in highs_by_lows.items()
            )
            parts.append("(?:" + "|".join(alternatives) + ")")
        cursor = last_byte + 1
    parts.append(_skip(side_length - cursor))
    return "".join(parts)


@functools.lru_cache(maxsize=16)
def _run_patterns(stream: int) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """Compile, for one stream (its masked first header), a pattern for one frame and one for a run of them.

    The frame pattern accepts exactly the frames the loop in :func:`parse_mp3` accepts: a lookahead checks the
    side information as :func:`_side_info_ok` does (it depends on the CRC and the channels only), then every
    header :func:`_frame_kind` describes (with any private, mode-extension, copyright and original bits) is
    followed by the rest of its length. Its alternatives begin with different bytes, so it matches one way
    only and a run is walked without backtracking (a possessive repeat).
    """
    lengths: dict[int, dict[int, dict[int, list[int]]]] = {}  # byte 1 -> byte 2 -> length -> bytes 3
    sides: dict[int, dict[str, list[int]]] = {}  # byte 1 -> side-information pattern -> bytes 3
    for protection, bitrate_index, padding, mode, emphasis in itertools.product(
        (0, 1), range(16), (0, 1), range(4), range(4)
    ):
        header = stream | protection << 16 | bitrate_index << 12 | padding << 9 | mode << 6 | emphasis
        kind = _frame_kind(header, stream)
        if kind is None:
            continue
        length, side_offset, side_length, shifts = kind
        byte1, byte2 = (header >> 16) & 0xFF, (header >> 8) & 0xFF
        thirds = [value for value in range(256) if value & 0xC3 == header & 0xC3]  # any ignored bit
        by_length = lengths.setdefault(byte1, {}).setdefault(byte2, {})
        by_length.setdefault(length + padding, []).extend(thirds)
        side = _skip(side_offset - 4) + _side_pattern(side_length, shifts)
        sides.setdefault(byte1, {}).setdefault(side, []).extend(thirds)
    side_check = "|".join(
        _byte_class([byte1]) + ".(?:" + "|".join(_byte_class(thirds) + side for side, thirds in by_side.items()) + ")"
        for byte1, by_side in sides.items()
    )
    framing = "|".join(
        _byte_class([byte1])
        + "(?:"
        + "|".join(
            _byte_class([byte2, byte2 | 1])
            + "(?:"
            + "|".join(_byte_class(thirds) + _skip(length - 4) for length, thirds in by_length.items())
            + ")"
            for byte2, by_length in by_byte2.items()
        )
        + ")"
        for byte1, by_byte2 in lengths.items()
    )
    frame = f"\\xff(?=(?:{side_check}))(?:{framing})"
    # The empty group makes findall return the empty bytes (one shared object) per frame: counting is cheaper.
    return re.compile(f"{frame}()".encode(), re.DOTALL), re.compile(f"(?:{frame})*+".encode(), re.DOTALL)


def parse_mp3(  # noqa: PLR0915 (one tight loop)
    reader: Reader, start: int, end: int, limits: Limits, *, fast: bool = True
) -> Stream:
    """Walk the MPEG frames of ``[start, end)`` and measure them.

    ``fast=False`` walks every frame in the loop, without the run patterns (the tests compare the two).

    Raises:
        ValidationError: no MPEG frames, not Layer III, frames that stop before the end (a hole, trailing
            data, fake headers), a last frame cut off, fewer frames than the VBR header promises, too long.
    """
    if reader.peek(start, 1) == b"\x00":  # some taggers leave zero padding after the ID3v2 tag; skip only that
        lead = reader.peek(start, _PADDING_RUN)
        start += len(lead) - len(lead.lstrip(b"\x00"))
    if start >= end:
        raise refuse("The file has an ID3 tag but no audio behind it")
    head = reader.peek(start, 4)
    first = _first_frame(_unpack_header(head)[0]) if len(head) == 4 else None
    if first is None:
        found = "an ID3 tag followed by something else" if start else _describe_start(head)
        raise refuse(f"Not an accepted audio format: no MPEG audio frame where the audio should start (found {found})")
    version, layer, rate, samples_per_frame = first
    if layer != 3:
        raise refuse(f"MPEG-{version:g} Layer {layer} audio is not accepted; convert it to MP3 (Layer III)")
    stream = _unpack_header(head)[0] & _STREAM_MASK
    max_frames = limits.max_units(rate / samples_per_frame) + 1
    kinds: dict[int, _Kind | None] = {}
    checked: dict[bytes, bool] = {}  # side information already judged (silence repeats it frame after frame)
    channels = 1 if (_unpack_header(head)[0] >> 6) & 3 == 3 else 2
    frames, position, vbr = 0, start, None
    buffer, base = reader.window(position, _MAX_FRAME)
    frame_pattern, run = _run_patterns(stream)
    while position < end:
        index = position - base
        if index + _LOOKAHEAD > len(buffer):
            buffer, base = reader.window(position, _MAX_FRAME)
            index = position - base
        if fast and frames:  # after the first frame (its VBR header), whole runs at once
            walked = run.match(buffer, index, min(len(buffer), end - base, index + _RUN_SPAN))
            stop = walked.end() if walked else index  # a possessive repeat always matches, if only nothing
            if stop > index:
                frames += len(frame_pattern.findall(buffer, index, stop))
                position = base + stop
                if frames > max_frames:
                    raise too_long(frames * samples_per_frame / rate, limits, at_least=True)
                continue
        if end - position < 4:
            break
        header = _unpack_header(buffer, index)[0]
        masked = header & _HEADER_MASK
        if masked in kinds:
            kind = kinds[masked]
        else:
            kind = kinds[masked] = _frame_kind(masked, stream)
        if kind is None:
            break
        length, side_offset, side_length, shifts = kind
        length += (header >> 9) & 1
        if position + length > end:
            raise truncated(f"its MPEG frame at byte {position:,} needs {position + length - end:,} more bytes")
        side = index + side_offset
        side_bytes = buffer[side : side + side_length]
        decodable = checked.get(side_bytes)
        if decodable is None:
            decodable = _side_info_ok(side_bytes, shifts)
            if len(checked) < _SIDE_CACHE:
                checked[side_bytes] = decodable
        if decodable:
            if frames == 0:
                vbr = _vbr(buffer[index : index + length], side_offset + side_length, samples_per_frame)
            frames += 1
            position += length
            if frames > max_frames:
                raise too_long(frames * samples_per_frame / rate, limits, at_least=True)
            continue
        break  # the side information of this frame cannot be decoded: not a real frame
    if position < end:
        _refuse_stop(frames, position, start, end, rate=rate, samples_per_frame=samples_per_frame)
    return _measure(
        frames,
        vbr,
        rate=rate,
        channels=channels,
        samples_per_frame=samples_per_frame,
        audio_bytes=position - start,
        limits=limits,
    )


def _describe_start(head: bytes) -> str:
    if is_mpeg_sync(head) and not is_adts(head):
        return "bytes that begin like an MPEG frame header but are not one"
    return "no MPEG sync word"


def _vbr(frame: bytes, side_end: int, samples_per_frame: int) -> VbrHeader | None:
    """Parse the first frame's VBR header: Xing/Info right after the side information, VBRI at byte 36."""
    del samples_per_frame
    return vbr_header(frame, side_end, 36)


def _refuse_stop(frames: int, position: int, start: int, end: int, *, rate: int, samples_per_frame: int) -> None:
    """Refuse a file whose frames stop before the end of its audio."""
    if frames < MPEG_RUN:
        raise refuse(
            f"Not an accepted audio format: the bytes start like an MPEG frame but only {frames} of the "
            f"{MPEG_RUN} MPEG frames that should follow one another do"
        )
    seconds = frames * samples_per_frame / rate
    raise refuse(
        f"The MP3's frames stop at byte {position:,} ({seconds:.1f} s into the audio) and {end - position:,} "
        f"bytes that are not MPEG audio follow (a damaged file, fake frames, or something appended to it; "
        f"{position - start:,} bytes of audio were read)"
    )


def _measure(
    frames: int,
    vbr: VbrHeader | None,
    *,
    rate: int,
    channels: int,
    samples_per_frame: int,
    audio_bytes: int,
    limits: Limits,
) -> Stream:
    """Turn the walked frames into a duration, after checking the VBR header's claims against them."""
    audio_frames = frames - (1 if vbr is not None and vbr.kind != "VBRI" else 0)
    if vbr is not None:
        promised_frames = vbr.frames
        if promised_frames > audio_frames + 1 or vbr.bytes > audio_bytes + _MAX_FRAME:
            promised = max(promised_frames, 0) * samples_per_frame / rate
            detail = (
                f"{promised:.1f} s"
                if promised_frames > audio_frames + 1
                else f"{vbr.bytes:,} bytes (found {audio_bytes:,})"
            )
            raise truncated(
                f"its {vbr.kind} header promises {detail} but its frames hold "
                f"{audio_frames * samples_per_frame / rate:.1f} s (or the header is wrong: export it again)"
            )
    samples = audio_frames * samples_per_frame
    if vbr is not None and vbr.encoder_delay + vbr.encoder_padding < samples:
        samples -= vbr.encoder_delay + vbr.encoder_padding  # what a decoder plays, as ffmpeg trims it
    if samples <= 0:
        raise refuse("The MP3 file holds no audio")
    seconds = samples / rate
    if seconds > limits.max_duration_seconds:
        raise too_long(seconds, limits)
    return Stream("mp3", seconds, rate, channels)
