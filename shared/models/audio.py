"""What the audio-analysis stage learns about a song; every later stage plans against it."""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import Field, model_validator

from shared.models._base import Model, Seconds, check_intervals

__all__ = ["AudioAnalysis", "ClipBoundary", "Lyric", "Mood", "SectionType", "SongStructure"]

SectionType = Literal["intro", "verse", "pre_chorus", "chorus", "bridge", "solo", "instrumental", "outro"]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class SongStructure(Model):
    """One section of the song (verse, chorus, ...) with its span and how energetic it is."""

    type: SectionType
    start: Seconds
    end: Seconds
    energy: Fraction = 0.5

    @model_validator(mode="after")
    def _ordered(self) -> SongStructure:
        check_intervals([self], what="section")
        return self


class Lyric(Model):
    """One line of lyrics, timed; the prompt stage quotes it for the clips it falls into."""

    text: Annotated[str, Field(min_length=1)]
    start: Seconds
    end: Seconds

    @model_validator(mode="after")
    def _ordered(self) -> Lyric:
        check_intervals([self], what="lyric")
        return self


class Mood(Model):
    """The song's emotional colour, which steers the visual style."""

    primary: Annotated[str, Field(min_length=1)]
    secondary: list[str] = Field(default_factory=list)
    energy_level: Literal["low", "medium", "high"]
    confidence: Fraction


class ClipBoundary(Model):
    """Where one generated clip starts and ends in the song, cut on the beat."""

    start: Seconds
    end: Seconds

    @property
    def duration(self) -> float:
        """Return the clip's length in seconds."""
        return self.end - self.start

    @model_validator(mode="after")
    def _ordered(self) -> ClipBoundary:
        check_intervals([self], what="clip boundary")
        return self


class AudioAnalysis(Model):
    """Produced by audio analysis: tempo, beats, sections, lyrics, mood and the clip boundaries."""

    job_id: UUID
    bpm: Annotated[float, Field(gt=20, le=300, allow_inf_nan=False)]
    duration: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    beat_timestamps: list[Seconds] = Field(default_factory=list)
    song_structure: list[SongStructure] = Field(default_factory=list)
    lyrics: list[Lyric] = Field(default_factory=list)
    mood: Mood
    clip_boundaries: list[ClipBoundary] = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _inside_the_song(self) -> AudioAnalysis:
        beats = self.beat_timestamps
        if any(later < earlier for earlier, later in itertools.pairwise(beats)):
            msg = "beat_timestamps must be sorted"
            raise ValueError(msg)
        if beats and beats[-1] > self.duration:
            msg = f"beat at {beats[-1]} s is after the song ends ({self.duration} s)"
            raise ValueError(msg)
        check_intervals(self.song_structure, what="section", duration=self.duration)
        check_intervals(self.lyrics, what="lyric", duration=self.duration, overlap=True)
        check_intervals(self.clip_boundaries, what="clip boundary", duration=self.duration)
        return self
