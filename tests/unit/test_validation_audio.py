"""Audio validation: the content decides, cut-off uploads are refused, memory and reads stay bounded."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from shared import validation
from shared.errors import ValidationError
from shared.validation import ACCEPTED_AUDIO, AudioFileInfo, AudioInput, validate_audio_file, validate_file_size
from tests.fixtures.audio import (
    AudioCorpus,
    MakeAudio,
    flac_audio_start,
    id3v2_tag,
    patch_flac_total_samples,
    patch_xing_frames,
    sparse_wav,
    wav_header,
)

GOOD = [
    "mp3_id3v2_cover",
    "mp3_no_tag",
    "mp3_no_xing",
    "mp3_vbr_xing",
    "mp3_mono",
    "mp3_ffmpeg",
    "mp3_8000hz",
    "mp3_11025hz",
    "mp3_16000hz",
    "mp3_22050hz",
    "mp3_32000hz",
    "mp3_48000hz",
    "wav_pcm16",
    "wav_pcm16_mono",
    "wav_pcm24",
    "wav_float32",
    "wav_float64",
    "wav_extensible_pcm24",
    "wav_8000hz",
    "wav_96000hz",
    "flac_reference_encoder",
    "flac_ffmpeg",
    "flac_96khz_24bit",
    "flac_mono",
    "flac_behind_id3v2",
]
BAD = [
    "ogg_opus",
    "aac_adts",
    "m4a",
    "video_mp4",
    "mp2",
    "aiff",
    "wav_pcm8",
    "wav_pcm32",
    "wav_rf64",
    "png",
    "text",
    "zip_of_an_mp3",
    "empty",
    "mp3_truncated_xing",
    "mp3_truncated_no_xing",
    "wav_truncated",
    "flac_truncated",
    "flac_ffmpeg_truncated",
    "wav_header_only",
    "flac_metadata_cut",
    "flac_streaminfo_only",
    "mp3_id3_only",
    "random_after_mpeg_sync",
]
MIME = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac"}


def test_corpus_names_match_the_lists(audio_corpus: AudioCorpus) -> None:
    """Every variant the corpus makes is tested here, and nothing tested is missing from it."""
    assert sorted(GOOD) == sorted(audio_corpus.good)
    assert sorted(BAD) == sorted(audio_corpus.bad)


@pytest.mark.parametrize("name", GOOD)
def test_accepted_variant_is_described_by_its_content(audio_corpus: AudioCorpus, name: str) -> None:
    sample = audio_corpus.good[name]
    info = validate_audio_file(sample.path)
    assert (sample.format, MIME[sample.format]) == (info.format, info.mime_type)
    assert (sample.sample_rate, sample.channels) == (info.sample_rate, info.channels)
    assert sample.path.stat().st_size == info.size_bytes
    assert sample.duration_seconds == pytest.approx(info.duration_seconds, abs=0.1)


@pytest.mark.parametrize("name", BAD)
def test_refused_input_names_the_problem_and_what_is_accepted(audio_corpus: AudioCorpus, name: str) -> None:
    path, fragment = audio_corpus.bad[name]
    with pytest.raises(ValidationError) as caught:
        validate_audio_file(path, min_duration_seconds=0)
    assert "audio" == caught.value.field
    assert fragment.lower() in caught.value.message.lower()
    assert f"Accepted: {ACCEPTED_AUDIO}." in caught.value.message


def test_file_name_and_claimed_type_do_not_matter(audio_corpus: AudioCorpus, tmp_path: Path) -> None:
    """A FLAC named .mp3 is a FLAC; a PNG named .wav is refused."""
    disguised = tmp_path / "song.mp3"
    disguised.write_bytes(audio_corpus.good["flac_ffmpeg"].path.read_bytes())
    assert "flac" == validate_audio_file(disguised).format
    fake = tmp_path / "song.wav"
    fake.write_bytes(audio_corpus.bad["png"][0].read_bytes())
    with pytest.raises(ValidationError, match="PNG"):
        validate_audio_file(fake)


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "path_str", "pathlike"])
def test_every_input_kind_gives_the_same_answer(audio_corpus: AudioCorpus, kind: str) -> None:
    path = audio_corpus.good["mp3_id3v2_cover"].path
    data = path.read_bytes()
    arguments: dict[str, AudioInput] = {
        "bytes": data,
        "bytearray": bytearray(data),
        "memoryview": memoryview(data),
        "path_str": str(path),
        "pathlike": path,
    }
    assert validate_audio_file(path) == validate_audio_file(arguments[kind])


def test_upload_file_object_is_read_from_its_start_and_put_back(audio_corpus: AudioCorpus) -> None:
    """A SpooledTemporaryFile (what FastAPI's UploadFile.file is) keeps its position."""
    data = audio_corpus.good["wav_pcm24"].path.read_bytes()
    with tempfile.SpooledTemporaryFile(max_size=1024) as upload:
        upload.write(data)
        upload.seek(123)
        info = validate_audio_file(upload)
        assert 123 == upload.tell()
    assert ("wav", len(data)) == (info.format, info.size_bytes)


def test_a_starlette_upload_file_is_accepted_as_a_route_holds_it(audio_corpus: AudioCorpus) -> None:
    """FastAPI's UploadFile has coroutine methods; its spooled ``.file`` is what gets read."""
    from starlette.datastructures import UploadFile  # noqa: PLC0415 - the [api] extra

    data = audio_corpus.good["wav_pcm24"].path.read_bytes()
    upload = UploadFile(io.BytesIO(data), filename="song.mp3")
    info = validate_audio_file(upload)
    assert ("wav", len(data)) == (info.format, info.size_bytes)
    assert 0 == upload.file.tell()


def test_an_async_reader_without_a_file_is_refused_with_what_to_pass() -> None:
    class AsyncOnly:
        async def read(self, size: int = -1) -> bytes:
            return b""

        async def seek(self, offset: int) -> None:
            return None

    with pytest.raises(ValidationError, match=r"upload\.file"):
        validate_audio_file(AsyncOnly())  # type: ignore[arg-type]  # proving the runtime check


def test_position_is_put_back_when_the_file_is_refused(audio_corpus: AudioCorpus) -> None:
    upload = io.BytesIO(audio_corpus.bad["wav_truncated"][0].read_bytes())
    upload.seek(7)
    with pytest.raises(ValidationError, match="cut short"):
        validate_audio_file(upload)
    assert 7 == upload.tell()


def test_audio_info_is_frozen(audio_corpus: AudioCorpus) -> None:
    info = validate_audio_file(audio_corpus.good["flac_mono"].path)
    with pytest.raises(Exception, match="frozen"):
        info.channels = 2  # type: ignore[misc]  # proving the model refuses assignment
    assert AudioFileInfo.model_validate(info.model_dump()) == info


def test_size_is_checked_before_parsing(audio_corpus: AudioCorpus) -> None:
    """An oversized PNG is refused for its size, not its format: the parser never ran."""
    png = audio_corpus.bad["png"][0]
    with pytest.raises(ValidationError) as caught:
        validate_audio_file(png, max_size_mb=10 / 1024 / 1024)
    assert "audio" == caught.value.field
    assert "too large" in caught.value.message
    assert "PNG" not in caught.value.message


def test_default_size_limit_is_the_settings_default(tmp_path: Path) -> None:
    over = sparse_wav(tmp_path / "big.wav", 100 * 1024 * 1024)
    with pytest.raises(ValidationError, match=r"over the limit of 100\.0 MB"):
        validate_audio_file(over)
    assert validation.DEFAULT_AUDIO_MAX_SIZE_MB == 100


def test_short_audio_is_refused_with_the_minimum(make_audio: MakeAudio) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_audio_file(make_audio("mp3", 3.0))
    assert "audio" == caught.value.field
    assert "too short" in caught.value.message
    assert "minimum is 5 s" in caught.value.message


@pytest.mark.parametrize("fmt", ["mp3", "wav", "flac"])
def test_long_audio_is_refused_with_the_maximum(make_audio: MakeAudio, fmt: str) -> None:
    path = make_audio(fmt, 12.0, rate=8000, channels=1)
    # An MP3's walk stops once its frames pass the maximum, so it reports "at least" what it has seen.
    with pytest.raises(ValidationError, match=r"too long: (at least 1\d|12)\.\d s, the maximum is 10 s"):
        validate_audio_file(path, max_duration_seconds=10)
    assert 12.0 == pytest.approx(validate_audio_file(path, max_duration_seconds=13).duration_seconds, abs=0.3)


def test_missing_path_is_a_validation_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="could not be opened") as caught:
        validate_audio_file(tmp_path / "nowhere.mp3")
    assert isinstance(caught.value.__cause__, OSError)


def test_wrong_argument_kinds_are_validation_errors() -> None:
    with pytest.raises(ValidationError, match="path, bytes or a binary file"):
        validate_audio_file(42)  # type: ignore[arg-type]  # proving the runtime check


def test_unseekable_stream_is_a_validation_error() -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)
    with open(read_end, "rb", buffering=0) as pipe, pytest.raises(ValidationError, match="seekable"):
        validate_audio_file(pipe)


class CountingReader(io.FileIO):
    """A file that counts the bytes read from it."""

    bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_a_large_wav_is_read_in_kilobytes_not_megabytes(tmp_path: Path) -> None:
    path = sparse_wav(tmp_path / "long.wav", 400 * 1024 * 1024)
    with CountingReader(path) as handle:
        info = validate_audio_file(handle, max_size_mb=500, max_duration_seconds=10_000)
        assert handle.bytes_read < 64 * 1024
    assert 400 * 1024 * 1024 / 176_400 == pytest.approx(info.duration_seconds)


@pytest.mark.parametrize("name", ["mp3_id3v2_cover", "flac_reference_encoder", "wav_pcm16"])
def test_reads_stay_small_for_every_format(audio_corpus: AudioCorpus, name: str) -> None:
    path = audio_corpus.good[name].path
    with CountingReader(path) as handle:
        validate_audio_file(handle)
        assert handle.bytes_read < 300 * 1024


# Hand-made inputs for the branches the encoders never produce.


def _wav(fmt: bytes, data: bytes = b"\x00" * 8, extra: bytes = b"") -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"RIFF" + struct.pack("<I", 12) + b"WAVE" + b"LIST" + struct.pack("<I", 4) + b"INFO", "no fmt chunk"),
        (b"RIFF" + struct.pack("<I", 22) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + bytes(10), "ends early"),
        (_wav(b"\x00" * 2000), "impossible size"),
        (_wav(struct.pack("<HHIIHH", 0xFFFE, 2, 44100, 176400, 4, 16) + b"\x16\x00"), "lacks the sub-format"),
        (_wav(struct.pack("<HHIIHH", 1, 2, 44100, 176400, 3, 16)), "inconsistent"),
        (_wav(struct.pack("<HHIIHH", 1, 0, 44100, 0, 0, 16)), "inconsistent"),
        (_wav(struct.pack("<HHIIHH", 0x55, 2, 44100, 176400, 4, 16)), "format 0x0055"),
        (_wav(struct.pack("<HHIIHH", 1, 2, 44100, 176400, 4, 16), data=b""), "no audio"),
        (_wav(struct.pack("<HHIIHH", 1, 2, 44100, 176400, 4, 16))[:-12], "no data chunk"),
        (wav_header(1000)[:36], "no data chunk"),
    ],
)
def test_malformed_wav_is_refused(data: bytes, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        validate_audio_file(data, min_duration_seconds=0)


def test_extensible_float_wav_is_accepted() -> None:
    guid_float = struct.pack("<H", 3) + bytes.fromhex("000000001000800000aa00389b71")
    fmt = struct.pack("<HHIIHH", 0xFFFE, 1, 8000, 32000, 4, 32) + struct.pack("<HHI", 22, 32, 4) + guid_float
    info = validate_audio_file(_wav(fmt, data=bytes(4 * 8000 * 6)))
    assert ("wav", 8000, 1, 6.0) == (info.format, info.sample_rate, info.channels, info.duration_seconds)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"fLaC" + b"\x01\x00\x00\x22" + bytes(34), "does not begin with a STREAMINFO"),
        (b"fLaC" + b"\x00\x00\x00\x22" + bytes(10), "STREAMINFO block ends early"),
        (b"fLaC\x80\x00\x00\x22" + bytes(34) + b"\xff\x00\x00\x00", "STREAMINFO block is damaged"),
    ],
)
def test_malformed_flac_is_refused(data: bytes, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        validate_audio_file(data, min_duration_seconds=0)


def _flac_parts(audio_corpus: AudioCorpus) -> tuple[bytes, bytes]:
    """Split the reference FLAC into (fLaC + STREAMINFO marked last, the audio frames)."""
    data = audio_corpus.good["flac_reference_encoder"].path.read_bytes()
    position = flac_audio_start(data)
    head = bytearray(data[:42])
    head[4] |= 0x80
    return bytes(head), data[position:]


def test_flac_with_invalid_metadata_block_or_garbage_audio_is_refused(audio_corpus: AudioCorpus) -> None:
    head, frames = _flac_parts(audio_corpus)
    not_last = bytearray(head)
    not_last[4] &= 0x7F
    with pytest.raises(ValidationError, match="invalid metadata block"):
        validate_audio_file(bytes(not_last) + b"\xff\x00\x00\x00" + frames)
    with pytest.raises(ValidationError, match="no audio frame where its audio should begin"):
        validate_audio_file(head + b"\x00" * 100 + frames)
    with pytest.raises(ValidationError, match="more than 1024 metadata blocks"):
        validate_audio_file(bytes(not_last) + b"\x01\x00\x00\x00" * 1100 + frames)


def test_flac_without_total_samples_is_measured_by_its_frames(audio_corpus: AudioCorpus) -> None:
    """A total sample count of 0 (unknown, as a streaming encoder writes) is no reason to refuse: the frames say."""
    head, frames = _flac_parts(audio_corpus)
    unknown_length = bytearray(head)
    unknown_length[21] &= 0xF0  # total samples: 36 bits from the low nibble of byte 21
    unknown_length[22:26] = b"\x00\x00\x00\x00"
    assert 6.0 == pytest.approx(validate_audio_file(bytes(unknown_length) + frames).duration_seconds, abs=0.01)


def test_flac_with_data_after_its_last_frame_is_refused(audio_corpus: AudioCorpus) -> None:
    head, frames = _flac_parts(audio_corpus)
    with pytest.raises(ValidationError, match="The FLAC file is damaged"):
        validate_audio_file(head + frames + b"\x00" * 300_000, max_size_mb=10)
    with pytest.raises(ValidationError, match=r"last frame .* is damaged or other data follows it"):
        validate_audio_file(head + frames + b"\x00" * 100, max_size_mb=10)


def test_flac_and_mp3_trailing_tags_are_ignored(audio_corpus: AudioCorpus) -> None:
    """An ID3v1 tag and an APEv2 tag after the audio are not mistaken for truncation."""
    ape_footer = b"APETAGEX" + struct.pack("<IIII", 2000, 32, 0, 0x80000000) + bytes(8)
    ape = b"APETAGEX" + struct.pack("<IIII", 2000, 32, 0, 0xA0000000) + bytes(8) + ape_footer
    id3v1 = b"TAG" + bytes(125)
    for name in ("flac_reference_encoder", "mp3_no_xing"):
        data = audio_corpus.good[name].path.read_bytes() + ape + id3v1
        assert audio_corpus.good[name].format == validate_audio_file(data).format


def test_mp3_after_zero_padding_behind_its_tag_is_accepted(audio_corpus: AudioCorpus) -> None:
    data = id3v2_tag() + bytes(500) + audio_corpus.good["mp3_no_tag"].path.read_bytes()
    assert 6.0 == pytest.approx(validate_audio_file(data).duration_seconds, abs=0.1)


def test_mp3_vbri_byte_count_past_the_end_is_refused(audio_corpus: AudioCorpus) -> None:
    """A Fraunhofer VBRI header promising more bytes than follow marks a cut-off file."""
    data = bytearray(audio_corpus.good["mp3_no_xing"].path.read_bytes())
    vbri = b"VBRI" + struct.pack(">HHHIIHHHH", 1, 0, 75, 10_000_000, 230, 0, 1, 2, 1)
    data[36 : 36 + len(vbri)] = vbri
    with pytest.raises(ValidationError, match="promises 10,000,000 bytes"):
        validate_audio_file(bytes(data))


def test_mp3_that_is_only_a_few_frames_is_measured(audio_corpus: AudioCorpus) -> None:
    data = audio_corpus.good["mp3_no_xing"].path.read_bytes()
    two_frames = data[: 2 * 417 + 1]  # 128 kb/s at 44.1 kHz: 417 or 418 bytes a frame
    info_or_error: object
    try:
        info_or_error = validate_audio_file(two_frames, min_duration_seconds=0)
    except ValidationError as exc:
        info_or_error = exc
    assert isinstance(info_or_error, AudioFileInfo | ValidationError)


def test_id3_tag_followed_by_something_else_is_refused() -> None:
    with pytest.raises(ValidationError, match="an ID3 tag followed by something else"):
        validate_audio_file(id3v2_tag() + b"hello" * 100)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(40), "PNG"),
        (b"%PDF-1.7\n" + bytes(40), "PDF"),
        (b"\x00\x01\x02\x03\xfe\xfd\xfc", "unrecognised bytes starting 00 01 02"),
        ("Ünïcödé text, still text\n".encode(), "text"),
        (b"BM" + bytes(60), "Bitmap"),
    ],
)
def test_unrecognised_content_is_described(data: bytes, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        validate_audio_file(data)


def test_validate_file_size_refuses_negative_and_over_the_limit() -> None:
    validate_file_size(0, 10)
    validate_file_size(10, 10)
    with pytest.raises(ValidationError, match="negative") as negative:
        validate_file_size(-1, 10)
    assert "file_size" == negative.value.field
    with pytest.raises(ValidationError, match=r"11 bytes\) is over the limit of 10 bytes"):
        validate_file_size(11, 10)
    with pytest.raises(ValidationError, match=r"150\.0 MB .* over the limit of 100\.0 MB"):
        validate_file_size(150 * 1024 * 1024, 100 * 1024 * 1024)
    with pytest.raises(ValidationError, match="must be positive"):
        validate_file_size(1, 0)


def test_public_names() -> None:
    assert sorted(validation.__all__) == sorted(name for name in validation.__all__ if hasattr(validation, name))
    assert {"AudioFileInfo", "validate_audio_file", "validate_prompt", "validate_file_size"} <= set(validation.__all__)


PCM16 = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) & 1)


def _riff(*chunks: bytes, size: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) if size is None else size) + body


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (_riff(_chunk(b"data", bytes(16)), _chunk(b"fmt ", PCM16)), "data chunk before its fmt chunk"),
        (_riff(_chunk(b"fmt ", PCM16), *[_chunk(b"junk", b"")] * 300, _chunk(b"data", bytes(16))), "more than 256"),
        (_riff(_chunk(b"fmt ", PCM16), _chunk(b"data", bytes(16))) + b"\x01\x02garbage!", "not RIFF chunks"),
        (_riff(_chunk(b"fmt ", PCM16), _chunk(b"data", bytes(16))) + b"LIST" + struct.pack("<I", 999), "more bytes"),
    ],
)
def test_wav_chunks_are_walked_to_the_end(data: bytes, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        validate_audio_file(data, min_duration_seconds=0)


@pytest.mark.parametrize(("riff_size", "data_size"), [(0xFFFFFFFF, 0xFFFFFFFF), (0, 0), (0xFFFFFFFF, 0)])
def test_streamed_wav_runs_to_the_end_of_the_file(riff_size: int, data_size: int) -> None:
    """A WAV written to a pipe cannot go back to fill in its sizes; the audio is what follows the header."""
    data = b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + _chunk(b"fmt ", PCM16)
    data += b"data" + struct.pack("<I", data_size) + bytes(2 * 8000 * 6 + 1)  # an odd last byte is ignored
    assert 6.0 == validate_audio_file(data).duration_seconds


def test_a_wav_with_a_list_chunk_after_its_data_is_accepted() -> None:
    data = _riff(
        _chunk(b"fmt ", PCM16), _chunk(b"data", bytes(2 * 8000 * 6)), _chunk(b"LIST", b"INFOISFT\x03\x00\x00\x00ab")
    )
    assert 6.0 == validate_audio_file(data).duration_seconds


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"ID3\x09\x00\x00\x00\x00\x00\x10" + bytes(100), "malformed ID3v2 tag header"),
        (b"ID3\x03\x00\x00\x00\x00\x00\x80" + bytes(100), "malformed ID3v2 tag header"),
        (b"ID3\x03\x00\x00\x00\x00\x01\x00", "ID3 tag but no audio"),
        ((b"ID3\x03\x00\x00\x00\x00\x00\x00") * 17 + b"\xff\xfb\x90\x64", "more than 16 ID3v2 tags"),
        (b"\xff\xfb\x90\x64" + bytes(100), "needs 313 more bytes"),
        (b"\xff\xff\xff\xff" + bytes(100), "begin like an MPEG frame header but are not one"),
    ],
)
def test_malformed_mp3_is_refused(data: bytes, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        validate_audio_file(data, min_duration_seconds=0)


def test_mp3_frame_cut_short_and_vbr_byte_count_are_checked(audio_corpus: AudioCorpus) -> None:
    data = audio_corpus.good["mp3_no_xing"].path.read_bytes()
    with pytest.raises(ValidationError, match="cut short"):
        validate_audio_file(data[:-100])
    fake_frame = b"\xff\xfb\x90\x64" + bytes(413)
    assert validate_audio_file(data + fake_frame).duration_seconds > 6.0  # silence is audio


@pytest.mark.parametrize("fmt", ["mp3", "flac"])
def test_a_20_minute_file_whose_header_claims_8_s_is_too_long(make_audio: MakeAudio, tmp_path: Path, fmt: str) -> None:
    """Issue 14: a 1,200 s MP3 (Xing patched) and FLAC (STREAMINFO patched) passed the 900 s limit."""
    if fmt == "mp3":  # VBR, so that lame writes a Xing header (its CBR files at low rates have none)
        wav = make_audio("wav", 1200.0, rate=16000, channels=1)
        subprocess.run(["lame", "--quiet", "-V", "5", str(wav), str(tmp_path / "long.mp3")], check=True, timeout=120)
        data = (tmp_path / "long.mp3").read_bytes()
    else:
        data = make_audio(fmt, 1200.0, rate=16000, channels=1).read_bytes()
    forged = patch_xing_frames(data, 8 * 16000 // 576) if fmt == "mp3" else patch_flac_total_samples(data, 8 * 16000)
    with pytest.raises(ValidationError, match=r"too long: (at least )?\d+\.\d s, the maximum is 900 s"):
        validate_audio_file(forged)
    assert 1200.0 == pytest.approx(validate_audio_file(forged, max_duration_seconds=2000).duration_seconds, abs=0.1)


def test_an_8_s_mp3_whose_xing_header_claims_600_s_is_refused(make_audio: MakeAudio) -> None:
    """Issue 14: it validated as 600.74 s; its frames hold 8 s, so its header is forged or the file is cut."""
    data = make_audio("mp3", 8.0).read_bytes()
    with pytest.raises(ValidationError, match=r"promises 600\.\d s but its frames hold 8\.\d s"):
        validate_audio_file(patch_xing_frames(data, 600 * 44100 // 1152))


def test_bytes_and_paths_agree_when_the_last_frame_is_tiny(tmp_path: Path) -> None:
    """A regression: in memory, the walk lost its place in the last 38 bytes (a 36-byte final MP3 frame)."""
    first = b"\xff\xf3\x88\xc4" + bytes(284)  # MPEG-2 Layer III, 64 kb/s, 16 kHz, mono: 288 bytes, silent
    frame = b"\xff\xf3\x18\xc4" + bytes(32)  # the same at 8 kb/s: 36 bytes
    data = first + frame * 999
    path = tmp_path / "tiny-frames.mp3"
    path.write_bytes(data)
    assert validate_audio_file(path, min_duration_seconds=0) == validate_audio_file(data, min_duration_seconds=0)
    assert 1000 * 576 / 16000 == validate_audio_file(data, min_duration_seconds=0).duration_seconds


@pytest.mark.parametrize("name", GOOD)
def test_every_accepted_variant_gives_the_same_answer_from_bytes(audio_corpus: AudioCorpus, name: str) -> None:
    path = audio_corpus.good[name].path
    assert validate_audio_file(path) == validate_audio_file(path.read_bytes())
