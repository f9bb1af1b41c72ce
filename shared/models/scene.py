"""What scene planning and reference-image generation produce: the plan every clip is generated from."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, model_validator

from shared.models._base import Model, Money, Seconds, check_contiguous, check_intervals

__all__ = [
    "Character",
    "ClipScript",
    "ReferenceImage",
    "ReferenceImages",
    "Scene",
    "ScenePlan",
    "Style",
    "Transition",
]

Name = Annotated[str, Field(min_length=1, max_length=100)]
Text = Annotated[str, Field(min_length=1)]


class Character(Model):
    """Someone who appears in the video, described so that every clip draws them the same."""

    id: Name
    name: Name
    description: Text
    role: Literal["main", "supporting", "background"] = "main"


class Scene(Model):
    """A place the video returns to (a rooftop at night, a desert road)."""

    id: Name
    description: Text
    location: str | None = None
    time_of_day: str | None = None


class Style(Model):
    """The look of the whole video: palette, visual style, lighting and camera."""

    color_palette: list[Annotated[str, Field(pattern=r"^#[0-9A-Fa-f]{6}$")]] = Field(default_factory=list)
    visual_style: Text
    mood: Text
    lighting: str | None = None
    cinematography: str | None = None


class ClipScript(Model):
    """What one clip shows, between two clip boundaries of the song."""

    clip_index: Annotated[int, Field(ge=0)]
    start: Seconds
    end: Seconds
    visual_description: Text
    motion: str | None = None
    camera_angle: str | None = None
    characters: list[Name] = Field(default_factory=list)
    scenes: list[Name] = Field(default_factory=list)
    lyrics_context: str | None = None
    beat_intensity: Literal["low", "medium", "high"] = "medium"

    @model_validator(mode="after")
    def _ordered(self) -> ClipScript:
        check_intervals([self], what="clip")
        return self


class Transition(Model):
    """How one clip hands over to the next."""

    from_clip: Annotated[int, Field(ge=0)]
    to_clip: Annotated[int, Field(ge=0)]
    type: Literal["cut", "crossfade", "fade", "wipe"] = "cut"
    duration: Annotated[float, Field(ge=0, le=5, allow_inf_nan=False)] = 0.0

    @model_validator(mode="after")
    def _forward(self) -> Transition:
        if self.to_clip != self.from_clip + 1:
            msg = f"a transition joins a clip to the next one; got {self.from_clip} -> {self.to_clip}"
            raise ValueError(msg)
        if self.type == "cut" and self.duration != 0:
            msg = "a cut has no duration"
            raise ValueError(msg)
        return self


class ScenePlan(Model):
    """Produced by scene planning: characters, scenes, style, one script per clip and the transitions."""

    job_id: UUID
    video_summary: Text
    characters: list[Character] = Field(default_factory=list)
    scenes: list[Scene] = Field(default_factory=list)
    style: Style
    clip_scripts: list[ClipScript] = Field(min_length=1)
    transitions: list[Transition] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references_exist(self) -> ScenePlan:
        check_contiguous([clip.clip_index for clip in self.clip_scripts], what="clip script")
        check_intervals(self.clip_scripts, what="clip")
        characters = {character.id for character in self.characters}
        scenes = {scene.id for scene in self.scenes}
        for clip in self.clip_scripts:
            missing = [name for name in clip.characters if name not in characters]
            missing += [name for name in clip.scenes if name not in scenes]
            if missing:
                msg = f"clip {clip.clip_index} names characters or scenes the plan does not define: {missing}"
                raise ValueError(msg)
        last = len(self.clip_scripts) - 1
        for transition in self.transitions:
            if transition.to_clip > last:
                msg = f"transition {transition.from_clip} -> {transition.to_clip} names a clip that does not exist"
                raise ValueError(msg)
        return self


class ReferenceImage(Model):
    """One generated reference image of a scene or a character, which clip generation conditions on."""

    kind: Literal["scene", "character"]
    subject_id: Name
    image_url: Text
    prompt_used: Text
    cost: Money
    generation_time: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


class ReferenceImages(Model):
    """Produced by reference-image generation: every image, and what they cost together."""

    job_id: UUID
    images: list[ReferenceImage] = Field(default_factory=list)

    @property
    def total_cost(self) -> Decimal:
        """Return the cost of every image together."""
        return sum((image.cost for image in self.images), start=Decimal(0))

    @model_validator(mode="after")
    def _one_image_per_subject(self) -> ReferenceImages:
        seen: set[tuple[str, str]] = set()
        for image in self.images:
            key = (image.kind, image.subject_id)
            if key in seen:
                msg = f"two reference images for the {image.kind} {image.subject_id!r}: keep one"
                raise ValueError(msg)
            seen.add(key)
        return self
