"""The MP3 run patterns accept exactly what the frame-by-frame loop accepts, so the fast walk changes no verdict.

``parse_mp3`` walks runs of frames with a regular expression compiled per stream and falls back to its loop
where a run stops. These tests hold the two walks to the same answers: every header of every stream, side
information drawn at random, random streams with holes, garbage and cut-off ends, the corpus files, and
files larger than one read window.
"""

from __future__ import annotations

import functools
import io
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import ValidationError
from shared.validation import AudioFileInfo, audio, mp3, validate_audio_file
from shared.validation._common import Limits, Reader, Stream
from tests.fixtures.audio import AudioCorpus

# (version bits, sample-rate index) of every MPEG Layer III stream: MPEG-1, MPEG-2, MPEG-2.5 x three rates
STREAMS = [(version, rate) for version in (3, 2, 0) for rate in range(3)]
LIMITS = Limits(0.0, 900.0)


def _stream_word(version: int, rate: int) -> int:
    return 0xFFE00000 | version << 19 | 1 << 17 | rate << 10


def _frame_length(header: int) -> int | None:
    kind = mp3._frame_kind(header & mp3._HEADER_MASK, header & mp3._STREAM_MASK)
    return None if kind is None else kind[0] + ((header >> 9) & 1)


def _walk(data: bytes, *, fast: bool, handle: bool = False) -> Stream | str:
    reader = Reader(io.BytesIO(data), None, len(data)) if handle else Reader(None, data, len(data))
    try:
        return mp3.parse_mp3(reader, 0, len(data), LIMITS, fast=fast)
    except ValidationError as exc:
        return exc.message


@pytest.mark.parametrize(("version", "rate"), STREAMS)
def test_the_frame_pattern_accepts_exactly_the_headers_the_loop_does(version: int, rate: int) -> None:
    """Every value of header bytes 2 and 3, with and without a CRC, and a wrong layer, against ``_frame_kind``."""
    stream = _stream_word(version, rate)
    frame_pattern, _ = mp3._run_patterns(stream)
    disagreements = []
    for byte1 in {(stream >> 16) & 0xFF, ((stream >> 16) & 0xFF) | 1, ((stream >> 16) & 0xF9) | 0x04}:
        for byte2 in range(256):
            for byte3 in range(256):
                header = 0xFF000000 | byte1 << 16 | byte2 << 8 | byte3
                length = _frame_length(header) if header & mp3._STREAM_MASK == stream else None
                frame = struct.pack(">I", header) + bytes((length or 64) - 4)  # zero side information: decodable
                matched = frame_pattern.match(frame)
                accepted = matched.end() if matched else None
                if accepted != length:
                    disagreements.append((hex(header), accepted, length))
    assert [] == disagreements[:5]


SIDE_LAYOUTS = [(mpeg1, channels) for mpeg1 in (True, False) for channels in (1, 2)]


@settings(max_examples=400, deadline=None)
@given(layout=st.sampled_from(SIDE_LAYOUTS), side=st.binary(min_size=32, max_size=32))
def test_the_side_pattern_accepts_exactly_the_side_information_the_loop_does(
    layout: tuple[bool, int], side: bytes
) -> None:
    import re  # noqa: PLC0415 (only this test compiles a side pattern alone)

    mpeg1, channels = layout
    length = (17 if channels == 1 else 32) if mpeg1 else (9 if channels == 1 else 17)
    shifts = mp3._side_shifts(mpeg1, channels, length)
    pattern = re.compile(mp3._side_pattern(length, shifts).encode(), re.DOTALL)
    assert (pattern.fullmatch(side[:length]) is not None) == mp3._side_info_ok(side[:length], shifts)


@st.composite
def _streams(draw: st.DrawFn) -> bytes:
    """A random MP3 body: frames of one stream with random fields and side information, and some damage."""
    version, rate = draw(st.sampled_from(STREAMS))
    stream = _stream_word(version, rate)
    parts: list[bytes] = []
    for _ in range(draw(st.integers(1, 40))):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            parts.append(draw(st.binary(min_size=1, max_size=64)))  # garbage: a hole, or something appended
            continue
        header = (
            stream
            | draw(st.integers(0, 1)) << 16  # no CRC / CRC
            | draw(st.integers(1, 14)) << 12
            | draw(st.integers(0, 1)) << 9
            | draw(st.integers(0, 1)) << 8
            | draw(st.integers(0, 0xFF)) & (0xFF if choice > 1 else 0xC0)  # mode, extension, flags, emphasis
        )
        length = _frame_length(header) or 40
        side = draw(st.binary(min_size=34, max_size=34)) if draw(st.booleans()) else bytes(34)
        parts.append((struct.pack(">I", header) + side + bytes(length))[:length])
    body = b"".join(parts)
    return body[: draw(st.integers(len(body) // 2, len(body)))]  # maybe cut off


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_streams())
def test_random_streams_get_the_same_answer_from_both_walks(body: bytes) -> None:
    assert _walk(body, fast=True) == _walk(body, fast=False)
    assert _walk(body, fast=True, handle=True) == _walk(body, fast=False)


def _verdict(path: object) -> object:
    try:
        return validate_audio_file(path, min_duration_seconds=0)  # type: ignore[arg-type]  # a Path
    except ValidationError as exc:
        return exc.message


def test_every_corpus_file_gets_the_same_verdict_from_both_walks(
    audio_corpus: AudioCorpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The accepted and the refused corpus (crafted MP3s among them): the same info or the same message."""
    paths = [sample.path for sample in audio_corpus.good.values()] + [path for path, _ in audio_corpus.bad.values()]
    fast = [_verdict(path) for path in paths]
    monkeypatch.setattr(audio, "parse_mp3", functools.partial(mp3.parse_mp3, fast=False))
    assert fast == [_verdict(path) for path in paths]
    assert sum(isinstance(verdict, AudioFileInfo) and verdict.format == "mp3" for verdict in fast) >= 5


def test_a_file_larger_than_the_read_window_is_walked_across_its_windows() -> None:
    """3 MiB of frames read through a file object (1 MiB windows), with a hole near the end, then without."""
    frame = b"\xff\xfb\x90\xc4" + bytes(413)  # MPEG-1, 128 kb/s, 44.1 kHz, mono, silent
    frames = frame * (3 * Reader.CHUNK // len(frame))
    whole = _walk(frames, fast=True, handle=True)
    assert isinstance(whole, Stream)
    assert whole == _walk(frames, fast=False, handle=True)
    assert abs(whole.duration_seconds - len(frames) // len(frame) * 1152 / 44100) < 1e-9
    holed = frames[: -5 * len(frame)] + bytes(len(frame)) + frames[-4 * len(frame) :]
    refused = _walk(holed, fast=True, handle=True)
    assert isinstance(refused, str)
    assert "frames stop at byte" in refused
    assert refused == _walk(holed, fast=False)


def test_a_run_past_the_maximum_duration_is_refused_as_too_long() -> None:
    tiny = b"\xff\xf3\x14\xc0" + bytes(20)  # MPEG-2, 8 kb/s, 24 kHz, mono: 24 ms per frame
    assert isinstance(_walk(tiny * 37_000, fast=True), Stream)  # 888 s
    refused = _walk(tiny * 40_000, fast=True)
    assert isinstance(refused, str)
    assert refused.startswith("Audio is too long: at least")
