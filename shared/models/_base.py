"""What every model shares: strictness, money and time types, and the interval checks stages rely on."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "Model",
    "Money",
    "Seconds",
    "StageName",
    "Timestamp",
    "check_contiguous",
    "check_intervals",
]

# Money is Decimal, never float: numeric(12,4) in SQL.
Money = Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=4, allow_inf_nan=False)]
# A point or a span in a song, in seconds.
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Timestamp = AwareDatetime


class StageName(StrEnum):
    """The pipeline's stages, in the order a job goes through them."""

    AUDIO_ANALYSIS = "audio_analysis"
    SCENE_PLANNING = "scene_planning"
    REFERENCE_GENERATION = "reference_generation"
    PROMPT_GENERATION = "prompt_generation"
    CLIP_GENERATION = "clip_generation"
    COMPOSITION = "composition"


class Model(BaseModel):
    """Base of every model: unknown fields refused, values validated on assignment, frozen once built."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class _Span(Protocol):
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...


def check_intervals(spans: Sequence[_Span], *, what: str, duration: float | None = None, overlap: bool = False) -> None:
    """Raise ValueError unless ``spans`` are sorted, each ends after it starts, and (optionally) fit the song."""
    previous_end = 0.0
    previous_start = 0.0
    for number, span in enumerate(spans):
        if span.end <= span.start:
            msg = f"{what} {number} ends ({span.end}) at or before it starts ({span.start})"
            raise ValueError(msg)
        if span.start < previous_start or (not overlap and span.start < previous_end):
            msg = f"{what} {number} starts at {span.start}, before the previous one ends ({previous_end}): sort them"
            raise ValueError(msg if not overlap else f"{what} {number} is out of order: sort them by start")
        if duration is not None and span.end > duration + 1e-6:
            msg = f"{what} {number} ends at {span.end}, after the song ends ({duration})"
            raise ValueError(msg)
        previous_start, previous_end = span.start, span.end


def check_contiguous(indexes: Sequence[int], *, what: str) -> None:
    """Raise ValueError unless ``indexes`` are exactly 0, 1, ..., n-1 in order."""
    expected = list(range(len(indexes)))
    if list(indexes) != expected:
        msg = f"{what} indexes must run 0..{len(indexes) - 1} in order without gaps; got {list(indexes)}"
        raise ValueError(msg)
