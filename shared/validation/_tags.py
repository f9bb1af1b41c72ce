"""Tags around the audio: ID3v2 in front (bounded), ID3v1 and APEv2 behind, and archives appended."""

from __future__ import annotations

import struct
from typing import Final

from shared.validation._common import Reader, refuse

__all__ = ["ARCHIVE_TAIL", "MAX_ID3V2_TAGS", "appended_archive", "audio_end", "skip_id3v2"]

# Taggers write one ID3v2 tag, a few write two; ffmpeg follows any number, so a file of millions of empty
# chained tags costs it seconds. More than this many in a row is refused (a deliberate refusal).
MAX_ID3V2_TAGS: Final = 16
_ID3_HEADER: Final = 10


def skip_id3v2(reader: Reader) -> int:
    """Return where the bytes after the ID3v2 tags at the start of the file begin (0 without a tag).

    Raises:
        ValidationError: more than :data:`MAX_ID3V2_TAGS` tags in a row, or a tag header that is malformed.
    """
    position = 0
    for _ in range(MAX_ID3V2_TAGS):
        header = reader.peek(position, _ID3_HEADER)
        if len(header) < _ID3_HEADER or header[:3] != b"ID3":
            return position
        major, flags, size_bytes = header[3], header[5], header[6:10]
        if major not in (2, 3, 4) or header[4] == 0xFF or any(byte & 0x80 for byte in size_bytes):
            raise refuse("The file begins with a malformed ID3v2 tag header, so where its audio begins is unknown")
        size = (size_bytes[0] << 21) | (size_bytes[1] << 14) | (size_bytes[2] << 7) | size_bytes[3]
        footer = _ID3_HEADER if major == 4 and flags & 0x10 else 0
        position += _ID3_HEADER + size + footer
    if reader.peek(position, 3) == b"ID3":
        raise refuse(
            f"The file begins with more than {MAX_ID3V2_TAGS} ID3v2 tags in a row; no tagger writes that many "
            "(save the audio again with one tag)"
        )
    return position


def audio_end(reader: Reader, start: int) -> int:
    """Return where the audio ends: before a trailing ID3v1 tag and an APEv2 tag, if present."""
    end = reader.size
    if end - start >= 128 and reader.peek(end - 128, 3) == b"TAG":
        end -= 128
    if end - start >= 32:
        footer = reader.peek(end - 32, 32)
        if footer[:8] == b"APETAGEX":
            tag_size, _, flags = struct.unpack_from("<III", footer, 12)
            tag_size += 32 if flags & 0x80000000 else 0
            if tag_size <= end - start:
                end -= tag_size
    return end


# A ZIP's end-of-central-directory record, a 7-Zip, RAR or gzip signature: what `zipfile` and friends find.
_ARCHIVE_MARKS: Final = ((b"PK\x05\x06", "a ZIP archive"), (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"))
ARCHIVE_TAIL: Final = 64 * 1024 + 22  # the EOCD record sits within the last 64 KiB (its comment) + 22 bytes


def appended_archive(tail: bytes) -> str | None:
    """Name the archive whose end record sits in ``tail`` (the last bytes of the audio), if any."""
    for mark, name in _ARCHIVE_MARKS:
        index = tail.rfind(mark)
        if index != -1 and (mark != b"PK\x05\x06" or len(tail) - index >= 22):
            return name
    return None
