"""Prompt validation: normalised text back, or a ValidationError that says why and what is accepted."""

from __future__ import annotations

import pytest

from shared.errors import ValidationError
from shared.validation import validate_prompt


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


def test_non_text_is_a_type_error() -> None:
    with pytest.raises(ValidationError, match="must be text"):
        validate_prompt(b"bytes")  # type: ignore[arg-type]  # proving the runtime check
