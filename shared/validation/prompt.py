"""Prompt checks: visible text, normalised, its length counted in what a reader sees as characters.

A prompt is refused, with the position of the first offending character, when it holds a control character
(other than tab, line feed and carriage return), a lone surrogate, a private-use character, a bidirectional
control (U+202A to U+202E, U+2066 to U+2069), a TAG character (U+E0000 to U+E007F) outside an emoji tag
sequence (the flag of England), any other format character (Unicode category Cf: zero-width spaces, word
joiners, soft hyphens, ...) except a zero-width joiner or non-joiner between two characters (emoji families,
Persian and Indic text need them), or a combining mark with no character to sit on. A prompt with no visible
character (letter, number, punctuation or symbol) is refused; characters that render as nothing do not count
as visible even where their category says letter (the Hangul fillers U+115F, U+1160, U+3164, U+FFA0 and the
other Default_Ignorable code points, and the blank Braille pattern U+2800). They stay allowed beside visible
text: old Hangul is written with the fillers.

Lengths count grapheme clusters (an emoji family is one character, not seven code points), with the
``regex`` module's ``\\X``. The size is checked before anything else, in O(1): a prompt of more than
:func:`raw_limit` code points is refused before any scan or normalisation.
"""

from __future__ import annotations

import unicodedata
from typing import Final

import regex

from shared.errors import ValidationError
from shared.input_limits import DEFAULT_PROMPT_MAX_LENGTH, DEFAULT_PROMPT_MIN_LENGTH
from shared.telemetry import traced

__all__ = [
    "DEFAULT_PROMPT_MAX_LENGTH",
    "DEFAULT_PROMPT_MIN_LENGTH",
    "MAX_CODE_POINTS_PER_CHARACTER",
    "raw_limit",
    "validate_prompt",
]


# The longest emoji ZWJ sequences are 10 code points; a character built of more is a stack of marks ("zalgo").
MAX_CODE_POINTS_PER_CHARACTER: Final = 32

_FORBIDDEN: Final = regex.compile(
    r"(?P<emoji_tag_sequence>\U0001F3F4[\U000E0020-\U000E007E]{1,32}\U000E007F)"
    r"|(?P<control>[^\P{Cc}\t\n\r])"
    r"|(?P<surrogate>\p{Cs})"
    r"|(?P<private>\p{Co})"
    r"|(?P<bidi>[\u202a-\u202e\u2066-\u2069])"
    r"|(?P<tag>[\U000E0000-\U000E007F])"
    r"|(?P<joiner>(?:^|(?<=[\s\u200c\u200d]))[\u200c\u200d]|[\u200c\u200d](?=[\s\u200c\u200d]|$))"
    r"|(?P<format>[^\P{Cf}\u200c\u200d])"
    r"|(?P<mark>(?:^|(?<=\s))\p{M})"
)
_KINDS: Final = {
    "control": "a control character",
    "surrogate": "a lone surrogate",
    "private": "a private-use character",
    "bidi": "a bidirectional control",
    "tag": "an invisible TAG character",
    "joiner": "a zero-width joiner that joins nothing",
    "format": "an invisible format character",
    "mark": "a combining mark with no character to sit on",
}
# Letters, numbers, punctuation and symbols, but not those that render as nothing: the Default_Ignorable code
# points among them (the Hangul fillers U+115F, U+1160, U+3164 and U+FFA0 are letters by category) and the
# blank Braille pattern U+2800, both used to pass blank text off as visible.
_VISIBLE: Final = regex.compile(r"[[\p{L}\p{N}\p{P}\p{S}]--[\p{Default_Ignorable_Code_Point}\u2800]]", regex.V1)
_GRAPHEME: Final = regex.compile(r"\X")


def raw_limit(max_length: int) -> int:
    """Return the most code points a prompt of ``max_length`` characters is allowed before normalisation."""
    return max_length * 16 + 256


@traced("validation.prompt")
def validate_prompt(
    prompt: str,
    min_length: int = DEFAULT_PROMPT_MIN_LENGTH,
    max_length: int = DEFAULT_PROMPT_MAX_LENGTH,
) -> str:
    """Return the prompt normalised: Unicode NFC, trimmed, each run of whitespace one space.

    Lengths count grapheme clusters (user-perceived characters) after normalisation.

    Raises:
        ValidationError: (``field="prompt"``) the prompt is not a ``str``; is longer than :func:`raw_limit`
            code points before normalisation; holds a character that is invisible or reorders text (see the
            module docstring); has no visible character; or is shorter than ``min_length`` or longer than
            ``max_length`` characters after normalisation.
    """
    if not isinstance(prompt, str):
        raise ValidationError(f"prompt must be text, got {type(prompt).__name__}", field="prompt")
    accepted = (
        f"accepted: {min_length} to {max_length} characters of visible text without control characters "
        "or invisible formatting"
    )
    if len(prompt) > raw_limit(max_length):
        raise ValidationError(
            f"Prompt is too long: {len(prompt):,} code points before normalisation, far more than "
            f"{max_length:,} characters can take; shorten it ({accepted})",
            field="prompt",
        )
    for match in _FORBIDDEN.finditer(prompt):
        kind = match.lastgroup
        if kind == "emoji_tag_sequence" or kind is None:
            continue
        char = match.group()
        raise ValidationError(
            f"Prompt contains {_KINDS[kind]} (U+{ord(char):04X}) at position {match.start()}; remove it ({accepted})",
            field="prompt",
        )
    normalised = " ".join(unicodedata.normalize("NFC", prompt).split())
    if not normalised:
        raise ValidationError(
            f"Prompt is empty (after trimming whitespace); describe the video ({accepted})", field="prompt"
        )
    if _VISIBLE.search(normalised) is None:
        raise ValidationError(
            f"Prompt has no visible character (no letter, number, punctuation or symbol); describe the video "
            f"({accepted})",
            field="prompt",
        )
    characters = _GRAPHEME.findall(normalised)
    heaviest = max(characters, key=len)
    if len(heaviest) > MAX_CODE_POINTS_PER_CHARACTER:
        raise ValidationError(
            f"Prompt contains a character built of {len(heaviest)} code points (stacked marks?), more than "
            f"{MAX_CODE_POINTS_PER_CHARACTER}; remove it ({accepted})",
            field="prompt",
        )
    length = len(characters)
    if length < min_length:
        raise ValidationError(
            f"Prompt is too short: {length} characters after normalisation, the minimum is {min_length} ({accepted})",
            field="prompt",
        )
    if length > max_length:
        raise ValidationError(
            f"Prompt is too long: {length:,} characters after normalisation, the maximum is {max_length:,}; "
            f"shorten it ({accepted})",
            field="prompt",
        )
    return normalised
