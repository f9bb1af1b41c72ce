"""Properties: arbitrary input gives an answer or a ValidationError, never another exception, never a hang."""

from __future__ import annotations

import io
import unicodedata

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shared.errors import ValidationError
from shared.validation import AudioFileInfo, validate_audio_file, validate_prompt
from tests.fixtures.audio import AudioCorpus

SIGNATURES = [b"", b"RIFF\x00\x00\x00\x00WAVE", b"fLaC", b"ID3\x04\x00\x00\x00\x00\x00\x10", b"\xff\xfb", b"\xff\xf1"]
FAST = settings(deadline=2000, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


def _validate(data: bytes) -> AudioFileInfo | ValidationError:
    try:
        return validate_audio_file(data, min_duration_seconds=0)
    except ValidationError as exc:
        return exc


@FAST
@given(prefix=st.sampled_from(SIGNATURES), body=st.binary(max_size=4096))
@example(prefix=b"\xff\xfb", body=b"\x90\x64" + bytes(413) + b"\xff\xfb\x90\x64" + bytes(413))
def test_arbitrary_bytes_give_info_or_validation_error(prefix: bytes, body: bytes) -> None:
    result = _validate(prefix + body)
    assert isinstance(result, AudioFileInfo | ValidationError)
    if isinstance(result, ValidationError):
        assert "audio" == result.field


@settings(deadline=2000, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mangled_real_files_give_info_or_validation_error(audio_corpus: AudioCorpus, data: st.DataObject) -> None:
    """Cut, overwrite or splice real files: still an answer or a ValidationError."""
    name = data.draw(st.sampled_from(sorted(audio_corpus.good)))
    content = bytearray(audio_corpus.good[name].path.read_bytes()[:300_000])
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(0, len(content) - 1))
        content[at : at + 8] = data.draw(st.binary(min_size=1, max_size=8))
    cut = data.draw(st.integers(0, len(content)))
    result = _validate(bytes(content[:cut]))
    assert isinstance(result, AudioFileInfo | ValidationError)


@settings(deadline=2000, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_real_files_cut_short_are_refused(audio_corpus: AudioCorpus, data: st.DataObject) -> None:
    """A file cut anywhere in its first 90 % is refused, whichever format."""
    name = data.draw(st.sampled_from(["mp3_id3v2_cover", "mp3_vbr_xing", "wav_pcm24", "flac_ffmpeg"]))
    content = audio_corpus.good[name].path.read_bytes()
    cut = data.draw(st.integers(0, int(len(content) * 0.9)))
    result = _validate(content[:cut])
    assert isinstance(result, ValidationError), f"{name} cut at {cut} of {len(content)} was accepted"


def _prompt_or_none(text: str) -> str | None:
    try:
        return validate_prompt(text, min_length=1, max_length=10_000)
    except ValidationError as exc:
        field = exc.field
    assert "prompt" == field
    return None


@settings(deadline=500, max_examples=500)
@given(st.text())
def test_prompt_normalisation_is_idempotent_and_clean(text: str) -> None:
    normalised = _prompt_or_none(text)
    if normalised is not None:
        assert normalised == validate_prompt(normalised, min_length=1, max_length=10_000)
        assert normalised == normalised.strip()
        assert "  " not in normalised
        assert unicodedata.normalize("NFC", normalised) == normalised
        assert not any(unicodedata.category(char) == "Cc" for char in normalised)


@settings(deadline=500, max_examples=200)
@given(st.lists(st.sampled_from(["a", "é", "e\u0301", " ", "\t", "\n", "\u00a0", "ß", "\u3000"]), max_size=30))
def test_prompt_length_is_counted_after_normalisation(pieces: list[str]) -> None:
    text = "".join(pieces)
    expected = " ".join(unicodedata.normalize("NFC", text).split())
    assert (expected or None) == _prompt_or_none(text)


INVISIBLE = ["\u200b", "\u200d", "\u202e", "\u2066", "\u00ad", "\ufeff", "\ue000", "\U000e0041", "\u0301", "\x07"]


@settings(deadline=500, max_examples=400)
@given(st.text(alphabet=st.sampled_from(["a", "é", " ", "\U0001f469", *INVISIBLE]), max_size=40))
def test_accepted_prompt_is_visible_text(text: str) -> None:
    """Whatever is accepted holds a visible character and no invisible one, except joiners between characters."""
    normalised = _prompt_or_none(text)
    if normalised is not None:
        assert any(unicodedata.category(char)[0] in "LNPS" for char in normalised)
        for index, char in enumerate(normalised):
            category = unicodedata.category(char)
            assert category not in {"Cc", "Co", "Cs"}
            if category == "Cf":
                assert char in "\u200c\u200d"
                assert 0 < index < len(normalised) - 1
                assert not normalised[index - 1].isspace()
                assert not normalised[index + 1].isspace()
            if category.startswith("M"):
                assert index > 0
                assert not normalised[index - 1].isspace()


@settings(deadline=500, max_examples=100)
@given(families=st.integers(1, 60), extra=st.integers(0, 3))
def test_prompt_length_counts_grapheme_clusters(families: int, extra: int) -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
    text = family * families + "x" * extra
    assert text == validate_prompt(text, min_length=1, max_length=families + extra)
    assert _prompt_or_none_limit(text, families + extra - 1) is None


def _prompt_or_none_limit(text: str, max_length: int) -> str | None:
    try:
        return validate_prompt(text, min_length=0, max_length=max_length)
    except ValidationError:
        return None


@settings(deadline=500, max_examples=60)
@given(st.integers(0, 10 * 1024 * 1024))
def test_oversized_prompt_is_refused_by_size(size: int) -> None:
    text = "\u200b" * min(size, 64) + "x" * size
    result = _prompt_or_none_limit(text, 2000)
    assert result is None or len(text) <= 2000 * 16 + 256


class _Counting(io.BytesIO):
    bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


@settings(deadline=5000, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_file_is_read_at_most_once(audio_corpus: AudioCorpus, data: st.DataObject) -> None:
    """Real, mangled or extended files: the bytes read stay under the size plus 64 KiB of small reads."""
    name = data.draw(st.sampled_from(sorted(audio_corpus.good)))
    content = bytearray(audio_corpus.good[name].path.read_bytes())
    for _ in range(data.draw(st.integers(0, 3))):
        at = data.draw(st.integers(0, len(content) - 1))
        content[at : at + 64] = data.draw(st.binary(min_size=1, max_size=64))
    content += data.draw(st.binary(max_size=2048))
    handle = _Counting(bytes(content))
    field = "audio"
    try:
        validate_audio_file(handle, min_duration_seconds=0)
    except ValidationError as exc:
        field = exc.field or ""
    assert "audio" == field
    assert handle.bytes_read <= len(content) + 64 * 1024


@settings(deadline=5000, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_bytes_appended_to_real_audio_are_refused(audio_corpus: AudioCorpus, data: st.DataObject) -> None:
    """Random bytes after the audio (not a tag) are refused, whichever format."""
    name = data.draw(st.sampled_from(["mp3_no_tag", "mp3_vbr_xing", "wav_pcm16", "flac_reference_encoder"]))
    tail = data.draw(st.binary(min_size=16, max_size=4096).filter(lambda b: b[:3] not in (b"TAG", b"APE")))
    result = _validate(audio_corpus.good[name].path.read_bytes() + tail)
    assert isinstance(result, ValidationError), f"{name} + {len(tail)} random bytes was accepted"
