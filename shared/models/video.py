"""What prompt generation, clip generation and composition produce, up to the finished video."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import Field, model_validator

from shared.models._base import Model, Money, check_contiguous

__all__ = ["Clip", "ClipPrompt", "ClipPrompts", "Clips", "VideoOutput"]

Duration = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Elapsed = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ClipPrompt(Model):
    """The text-to-video prompt for one clip, with the reference images it is conditioned on."""

    clip_index: Annotated[int, Field(ge=0)]
    prompt: Annotated[str, Field(min_length=1, max_length=4000)]
    negative_prompt: str | None = None
    duration: Duration
    scene_reference_url: str | None = None
    character_reference_urls: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)


class ClipPrompts(Model):
    """Produced by prompt generation: one prompt per clip, in clip order."""

    job_id: UUID
    clip_prompts: list[ClipPrompt] = Field(min_length=1)
    generation_time: Elapsed = 0.0

    @model_validator(mode="after")
    def _contiguous(self) -> ClipPrompts:
        check_contiguous([prompt.clip_index for prompt in self.clip_prompts], what="clip prompt")
        return self


class Clip(Model):
    """One generated video clip (or the record of its failure)."""

    clip_index: Annotated[int, Field(ge=0)]
    status: Literal["success", "failed"]
    video_url: str | None = None
    target_duration: Duration
    actual_duration: Duration | None = None
    cost: Money = Decimal(0)
    retry_count: Annotated[int, Field(ge=0)] = 0
    generation_time: Elapsed = 0.0
    error: str | None = None

    @property
    def duration_diff(self) -> float | None:
        """Return how much longer (positive) or shorter the clip came out than asked for."""
        return None if self.actual_duration is None else self.actual_duration - self.target_duration

    @model_validator(mode="after")
    def _consistent(self) -> Clip:
        if self.status == "success" and (self.video_url is None or self.actual_duration is None):
            msg = "a successful clip has a video_url and an actual_duration"
            raise ValueError(msg)
        if self.status == "failed" and not self.error:
            msg = "a failed clip says why in error"
            raise ValueError(msg)
        return self


class Clips(Model):
    """Produced by clip generation: every clip in order, and what they cost together."""

    job_id: UUID
    clips: list[Clip] = Field(min_length=1)

    @property
    def successful(self) -> list[Clip]:
        """Return the clips that were generated."""
        return [clip for clip in self.clips if clip.status == "success"]

    @property
    def total_cost(self) -> Decimal:
        """Return the cost of every clip together, failed attempts included."""
        return sum((clip.cost for clip in self.clips), start=Decimal(0))

    @model_validator(mode="after")
    def _contiguous(self) -> Clips:
        check_contiguous([clip.clip_index for clip in self.clips], what="clip")
        return self


class VideoOutput(Model):
    """Produced by composition: the finished video and how well it kept to the song."""

    job_id: UUID
    video_url: Annotated[str, Field(min_length=1)]
    duration: Duration
    audio_duration: Duration
    clips_used: Annotated[int, Field(ge=1)]
    clips_trimmed: Annotated[int, Field(ge=0)] = 0
    clips_looped: Annotated[int, Field(ge=0)] = 0
    transitions_applied: Annotated[int, Field(ge=0)] = 0
    file_size_bytes: Annotated[int, Field(ge=0)]
    composition_time: Elapsed = 0.0
    cost: Money = Decimal(0)

    @property
    def sync_drift(self) -> float:
        """Return how far the video's length is from the song's, in seconds."""
        return abs(self.duration - self.audio_duration)

    @model_validator(mode="after")
    def _counts(self) -> VideoOutput:
        if self.clips_trimmed + self.clips_looped > self.clips_used:
            msg = "more clips trimmed or looped than used"
            raise ValueError(msg)
        if self.transitions_applied > max(self.clips_used - 1, 0):
            msg = "more transitions than gaps between the clips used"
            raise ValueError(msg)
        return self
