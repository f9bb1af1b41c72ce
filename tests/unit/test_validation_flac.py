"""FLAC bodies checked frame by frame: holes, dropped frames and tiny frames (issue: FLAC holes)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import ValidationError
from shared.validation import validate_audio_file
from shared.validation.flac import FREE_PARSES, JUMP
from tests.fixtures.audio import AudioCorpus, fake_flac_tail, flac_frame_starts, random_hole, tiny_flac

REAL = ["flac_reference_encoder", "flac_ffmpeg", "flac_96khz_24bit", "flac_mono"]


def _refusal(data: bytes) -> str:
    with pytest.raises(ValidationError) as caught:
        validate_audio_file(data, min_duration_seconds=0)
    assert "audio" == caught.value.field
    return caught.value.message


@pytest.mark.parametrize("size", [60_000, 20_000, 5_000])
@pytest.mark.parametrize("place", ["start", "middle", "end"])
def test_a_random_hole_in_a_real_flac_is_refused_with_its_offset(
    audio_corpus: AudioCorpus, size: int, place: str
) -> None:
    """The checkpoints of before let holes smaller than one uncompressed frame (~17 KB here) through."""
    data = audio_corpus.good["flac_reference_encoder"].path.read_bytes()
    frames = flac_frame_starts(data)
    at = {"start": frames[1] + 100, "middle": len(data) // 2, "end": frames[-2] - size + 1_000}[place]
    message = _refusal(random_hole(data, at / len(data), size, seed=size))
    assert "The FLAC file is damaged" in message
    assert "byte " in message


@pytest.mark.parametrize("which", ["second", "middle", "last but one"])
def test_a_real_flac_with_one_frame_dropped_is_refused(audio_corpus: AudioCorpus, which: str) -> None:
    """ffmpeg plays such a file without a word; its frame numbers jump, so it is refused."""
    data = audio_corpus.good["flac_ffmpeg"].path.read_bytes()
    frames = flac_frame_starts(data)
    index = {"second": 1, "middle": len(frames) // 2, "last but one": len(frames) - 2}[which]
    message = _refusal(data[: frames[index]] + data[frames[index + 1] :])
    assert f"a frame is missing or out of order at byte {frames[index]:,}" in message


def test_every_frame_of_a_real_flac_is_found(audio_corpus: AudioCorpus) -> None:
    """The fixture's frame finder (used to place holes) agrees with the walk: the frames hold the duration."""
    sample = audio_corpus.good["flac_reference_encoder"]
    frames = flac_frame_starts(sample.path.read_bytes())
    assert int(sample.duration_seconds * sample.sample_rate / 4096) + 1 == len(frames)


def test_tiny_frames_are_accepted_past_the_budget_and_holes_in_them_refused() -> None:
    """Frames of 12-15 bytes spend the walk's budget; the jumps still refuse a hole and a dropped frame."""
    count = FREE_PARSES + 8 * JUMP // 12  # far past the free parses: several jumps, then the last frame
    data = tiny_flac(count)
    assert len(data) > 4 * JUMP
    assert count * 16 / 44100 == validate_audio_file(data, min_duration_seconds=0).duration_seconds
    frames = flac_frame_starts(data)
    assert "fail their CRC-16 check" in _refusal(random_hole(data, 0.5, 3))
    assert "fail their CRC-16 check" in _refusal(random_hole(data, 0.999, 3))
    middle = frames[len(frames) // 2]
    assert "frames are missing between" in _refusal(data[:middle] + data[frames[len(frames) // 2 + 1] :])


def test_a_last_frame_whose_crc_ends_in_a_zero_byte_is_accepted() -> None:
    """A regression: one valid FLAC in 256 was refused as "other data follows", its CRC-16 taken for padding."""
    data = tiny_flac(500, last_crc_ends_in_zero=True)
    assert 0 == data[-1]
    assert 500 * 16 / 44100 == validate_audio_file(data, min_duration_seconds=0).duration_seconds
    assert "other data follows it" in _refusal(data + bytes(3))


@settings(deadline=5000, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_change_to_the_frames_of_a_real_flac_is_refused(audio_corpus: AudioCorpus, data: st.DataObject) -> None:
    """Bytes overwritten anywhere from the first frame on are refused (a CRC-16 misses 1 change in 65,536)."""
    content = audio_corpus.good[data.draw(st.sampled_from(REAL))].path.read_bytes()
    first = flac_frame_starts(content)[0]
    at = data.draw(st.integers(first, len(content) - 1))
    size = data.draw(st.integers(1, 60_000))
    original = content[at : at + size]
    noise = data.draw(st.binary(min_size=len(original), max_size=len(original)).filter(lambda b: b != original))
    with pytest.raises(ValidationError):
        validate_audio_file(content[:at] + noise + content[at + size :], min_duration_seconds=0)


def test_a_damaged_byte_in_the_last_frame_of_a_whole_flac_is_refused(audio_corpus: AudioCorpus) -> None:
    """Its frames hold every sample STREAMINFO promises, so the last frame failing is damage (or a cut in it)."""
    data = bytearray(audio_corpus.good["flac_reference_encoder"].path.read_bytes())
    last = flac_frame_starts(bytes(data))[-1]
    data[(last + len(data)) // 2] ^= 0x10
    assert f"its last frame (at byte {last:,}) fails its CRC-16 check" in _refusal(bytes(data))


@pytest.mark.parametrize(
    ("filler", "max_blocksize", "fragment"),
    [
        (bytes(3 * JUMP), 16, "no audio frame within 132 bytes"),
        (fake_flac_tail(8 * JUMP), 65535, "more than 64 false frame headers"),  # a window of 278 KB to search
    ],
)
def test_a_stretch_without_frames_where_the_walk_jumps_is_refused(
    filler: bytes, max_blocksize: int, fragment: str
) -> None:
    """Past the budget the walk jumps: zeros or fake headers where it lands are refused there, not skipped."""
    data = tiny_flac(FREE_PARSES + 32 * JUMP // 12)
    data = data[:10] + max_blocksize.to_bytes(2, "big") + data[12:]
    at = len(data) // 3
    message = _refusal(data[:at] + filler + data[at + len(filler) :])
    assert "The FLAC file is damaged" in message
    assert fragment in message
