"""Prompt validation: normalised text back, or a ValidationError that says why and what is accepted."""

from __future__ import annotations

import pytest

from shared.errors import ValidationError
from shared.validation import validate_prompt
from shared.validation.prompt import MAX_CODE_POINTS_PER_CHARACTER, raw_limit


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  a neon city at night  ", "a neon city at night"),
        ("rain\t\ton\n\nglass\r\nwindows", "rain on glass windows"),
        ("cafe\u0301 au lait", "caf\u00e9 au lait"),  # NFC composes e + combining acute
        ("wide\u3000space\u00a0and\u2028lines", "wide space and lines"),
        ("🎸 guitar 👩‍🎤 singer", "🎸 guitar 👩‍🎤 singer"),  # the zero-width joiner is kept
    ],
)
def test_prompt_is_normalised(raw: str, expected: str) -> None:
    assert expected == validate_prompt(raw)


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\x0b", "\x1f"])
def test_control_characters_are_refused_with_their_position(char: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_prompt(f"dance{char}floor")
    assert "prompt" == caught.value.field
    assert f"(U+{ord(char):04X}) at position 5" in caught.value.message
    assert "without control characters" in caught.value.message


def test_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValidationError, match="lone surrogate"):
        validate_prompt("sun\ud800set")


@pytest.mark.parametrize("raw", ["", "   ", "\t\n\r ", "\u3000\u2003"])
def test_prompt_empty_after_normalisation_is_refused(raw: str) -> None:
    with pytest.raises(ValidationError, match="empty") as caught:
        validate_prompt(raw)
    assert "prompt" == caught.value.field


def test_lengths_count_characters_after_normalisation() -> None:
    assert "abc" == validate_prompt("  a\u0062c  ", min_length=3)
    assert "\u00e9t\u00e9" == validate_prompt("e\u0301te\u0301", min_length=3, max_length=3)  # 5 code points in
    with pytest.raises(ValidationError, match="too short: 2 characters after normalisation, the minimum is 3"):
        validate_prompt("  a\u0062  ")
    with pytest.raises(ValidationError, match="too long: 2,001 characters after normalisation, the maximum is 2,000"):
        validate_prompt("x" * 2001)
    assert 2000 == len(validate_prompt("x" * 2000))


def test_limits_are_arguments() -> None:
    assert "hi" == validate_prompt("hi", min_length=1, max_length=2)
    with pytest.raises(ValidationError, match="accepted: 1 to 2 characters"):
        validate_prompt("hey", min_length=1, max_length=2)


def test_non_text_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="must be text"):
        validate_prompt(b"bytes")  # type: ignore[arg-type]  # proving the runtime check


FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # 7 code points, one character
ENGLAND = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"  # an emoji tag sequence


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("\u200b" * 20, "invisible format character (U+200B) at position 0"),
        ("\u200d\u200d\u200d", "zero-width joiner that joins nothing (U+200D) at position 0"),
        ("safe \u202eevil", "bidirectional control (U+202E) at position 5"),
        ("a\u2066b\u2069c", "bidirectional control (U+2066)"),
        ("hi" + "".join(chr(0xE0000 + 0x41 + i % 26) for i in range(48)), "TAG character (U+E0041) at position 2"),
        ("\u0301" * 50, "combining mark with no character to sit on (U+0301) at position 0"),
        ("ok \u0301\u0301", "combining mark with no character to sit on (U+0301) at position 3"),
        ("\ue000\ue001\ue002", "private-use character (U+E000) at position 0"),
        ("\U000f0000 x y z", "private-use character (U+F0000)"),
        ("soft\u00adhyphen", "invisible format character (U+00AD)"),
        ("word\u2060joiner", "invisible format character (U+2060)"),
        ("bom\ufeff", "invisible format character (U+FEFF)"),
        ("a" + "\u0301" * 40, f"more than {MAX_CODE_POINTS_PER_CHARACTER}"),
    ],
)
def test_invisible_or_reordering_text_is_refused(raw: str, fragment: str) -> None:
    """Each observation of issue 14 point 4: invisible, reordering or base-less characters are refused."""
    with pytest.raises(ValidationError) as caught:
        validate_prompt(raw)
    assert "prompt" == caught.value.field
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("\u3000\u00a0 ", "empty"),
        ("\u0300", "no character to sit on"),
        ("\u0378\u0379", "no visible character"),  # unassigned code points
        ("\u3164\u3164\u3164\u3164", "no visible character"),  # Hangul filler (a "letter" by category)
        ("\uffa0\uffa0\uffa0", "no visible character"),  # halfwidth Hangul filler
        ("\u115f\u1160\u115f\u1160", "no visible character"),  # Hangul choseong and jungseong fillers
        ("\u3164 \uffa0 \u115f \u1160", "no visible character"),
        ("\u2800\u2800\u2800", "no visible character"),  # blank Braille pattern
        ("\U0001f3b8", "too short: 1 characters"),
    ],
)
def test_prompt_without_two_visible_characters_is_refused(raw: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        validate_prompt(raw, min_length=2)


def test_punctuation_and_symbols_are_visible() -> None:
    assert "... \U0001f3b8!" == validate_prompt("... \U0001f3b8!")


def test_joiners_inside_words_and_emoji_are_kept() -> None:
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # "I want", with a zero-width non-joiner
    assert persian == validate_prompt(persian)
    assert f"{FAMILY} dancing" == validate_prompt(f"{FAMILY} dancing")
    assert f"flag {ENGLAND} waving" == validate_prompt(f"flag {ENGLAND} waving")


def test_lengths_count_grapheme_clusters() -> None:
    """500 emoji families are 500 characters (3,500 code points), and a flag with its tags is one."""
    assert 500 * 7 == len(FAMILY * 500)
    assert FAMILY * 500 == validate_prompt(FAMILY * 500, max_length=500)
    with pytest.raises(ValidationError, match="too long: 501 characters"):
        validate_prompt(FAMILY * 501, max_length=500)
    assert ENGLAND == validate_prompt(ENGLAND, min_length=1, max_length=1)


def test_size_is_checked_before_any_normalisation() -> None:
    """A 10 MB prompt is refused by its size, before any scan (its invisible characters are never reported)."""
    huge = "\u200b" + "x" * (10 * 1024 * 1024)
    with pytest.raises(ValidationError) as caught:
        validate_prompt(huge)
    assert "code points before normalisation" in caught.value.message
    assert "U+200B" not in caught.value.message
    assert 2000 * 16 + 256 == raw_limit(2000)
    assert len(validate_prompt("x " * 1000 + " " * (raw_limit(2000) - 2000))) == 1999


def test_hangul_fillers_beside_visible_text_are_kept() -> None:
    """Old Hangul is written with the fillers: they are refused only when nothing else is visible."""
    assert "\u115f\u1161 rain" == validate_prompt("\u115f\u1161 rain")
