"""Size checks: refuse a size that is negative or over the limit, with the limit in the message."""

from __future__ import annotations

from shared.errors import ValidationError
from shared.input_limits import DEFAULT_AUDIO_MAX_SIZE_MB
from shared.validation._common import ACCEPTED_AUDIO, MB

__all__ = ["DEFAULT_AUDIO_MAX_SIZE_MB", "format_bytes", "validate_file_size"]


def format_bytes(count: float) -> str:
    """Write a byte count for a person: MB from one MiB up, bytes below."""
    if count >= MB:
        return f"{count / MB:,.1f} MB"
    return f"{int(count):,} bytes"


def validate_file_size(file_size_bytes: int, max_size_bytes: int, *, field: str = "file_size") -> None:
    """Refuse a size that is negative or over ``max_size_bytes``.

    Raises:
        ValidationError: the size is negative or larger than the limit (``field`` names the input), or
            ``max_size_bytes`` is not positive (``field="max_size_bytes"``: a configuration mistake).
    """
    if max_size_bytes <= 0:
        raise ValidationError(f"max_size_bytes must be positive, got {max_size_bytes}", field="max_size_bytes")
    if file_size_bytes < 0:
        raise ValidationError(
            f"File size {file_size_bytes} is negative; a size is 0 or more bytes "
            f"(accepted: up to {format_bytes(max_size_bytes)})",
            field=field,
        )
    if file_size_bytes > max_size_bytes:
        raise ValidationError(
            f"File is too large: {format_bytes(file_size_bytes)} ({file_size_bytes:,} bytes) is over the limit of "
            f"{format_bytes(max_size_bytes)}; upload a shorter or more compressed file "
            f"(accepted: {ACCEPTED_AUDIO}, up to {format_bytes(max_size_bytes)})",
            field=field,
        )
