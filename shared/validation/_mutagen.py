"""The one place that imports mutagen: typed views of what validation uses, private modules included.

mutagen ships ``py.typed`` but leaves these unannotated, and the MPEG VBR headers live in its private
``mutagen.mp3._util``. An upgrade of mutagen that moves them breaks this file alone; the unit tests exercise
each function here on real encoder output.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from mutagen.flac import StreamInfo
from mutagen.mp3._util import VBRIHeader, VBRIHeaderError, XingHeader, XingHeaderError

from shared.validation._common import refuse

__all__ = ["FlacStreamInfo", "VbrHeader", "flac_stream_info", "vbr_header"]

# Typed views of mutagen's unannotated classes.
_xing: Callable[[IO[bytes]], XingHeader] = XingHeader
_vbri: Callable[[IO[bytes]], VBRIHeader] = VBRIHeader
_stream_info: Callable[[bytes], StreamInfo] = StreamInfo


@dataclass(frozen=True, slots=True)
class VbrHeader:
    """What a Xing/Info or VBRI header in an MP3's first frame claims (-1 where it claims nothing)."""

    kind: str
    frames: int
    bytes: int
    encoder_delay: int
    encoder_padding: int


@dataclass(frozen=True, slots=True)
class FlacStreamInfo:
    """The fields of a FLAC STREAMINFO block that validation checks."""

    min_blocksize: int
    max_blocksize: int
    min_framesize: int
    max_framesize: int
    sample_rate: int
    channels: int
    bits_per_sample: int
    total_samples: int


def vbr_header(frame: bytes, xing_offset: int, vbri_offset: int) -> VbrHeader | None:
    """Parse the Xing/Info header (at ``xing_offset``) or the VBRI header (at ``vbri_offset``) of a first frame."""
    try:
        xing = _xing(io.BytesIO(frame[xing_offset:]))
    except XingHeaderError:
        pass
    else:
        lame = xing.lame_header
        return VbrHeader(
            kind="Info" if xing.is_info else "Xing",
            frames=int(xing.frames),
            bytes=int(xing.bytes),
            encoder_delay=int(lame.encoder_delay_start) if lame is not None else 0,
            encoder_padding=int(lame.encoder_padding_end) if lame is not None else 0,
        )
    try:
        vbri = _vbri(io.BytesIO(frame[vbri_offset:]))
    except VBRIHeaderError:
        return None
    return VbrHeader(kind="VBRI", frames=int(vbri.frames), bytes=int(vbri.bytes), encoder_delay=0, encoder_padding=0)


def flac_stream_info(block: bytes) -> FlacStreamInfo:
    """Parse the 34 bytes of a STREAMINFO block.

    Raises:
        ValidationError: mutagen cannot read the block.
    """
    try:
        info = _stream_info(block)
    except Exception as exc:  # mutagen raises several kinds on hostile bytes; all mean a damaged header
        raise refuse(f"The FLAC STREAMINFO block is damaged ({exc})") from exc
    return FlacStreamInfo(
        min_blocksize=int(info.min_blocksize),
        max_blocksize=int(info.max_blocksize),
        min_framesize=int(info.min_framesize),
        max_framesize=int(info.max_framesize),
        sample_rate=int(info.sample_rate),
        channels=int(info.channels),
        bits_per_sample=int(info.bits_per_sample),
        total_samples=int(info.total_samples),
    )
