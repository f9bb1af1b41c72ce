"""The pydantic models every pipeline stage exchanges; import them from here.

Money is ``Decimal``, ids ``UUID``, times timezone-aware; every model is frozen, refuses unknown fields and
checks the invariants across its fields, so a stage never receives a plan it cannot carry out.
"""

from shared.models._base import Model, StageName
from shared.models.audio import AudioAnalysis, ClipBoundary, Lyric, Mood, SongStructure
from shared.models.job import Job, JobCost, JobStage, JobStatus, StageStatus
from shared.models.scene import (
    Character,
    ClipScript,
    ReferenceImage,
    ReferenceImages,
    Scene,
    ScenePlan,
    Style,
    Transition,
)
from shared.models.video import Clip, ClipPrompt, ClipPrompts, Clips, VideoOutput

__all__ = [
    "AudioAnalysis",
    "Character",
    "Clip",
    "ClipBoundary",
    "ClipPrompt",
    "ClipPrompts",
    "ClipScript",
    "Clips",
    "Job",
    "JobCost",
    "JobStage",
    "JobStatus",
    "Lyric",
    "Model",
    "Mood",
    "ReferenceImage",
    "ReferenceImages",
    "Scene",
    "ScenePlan",
    "SongStructure",
    "StageName",
    "StageStatus",
    "Style",
    "Transition",
    "VideoOutput",
]
