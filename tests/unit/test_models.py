"""Model invariants: each one refuses what a stage could not carry out; JSON round trips give equal objects."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.models import (
    AudioAnalysis,
    Character,
    Clip,
    ClipBoundary,
    ClipPrompt,
    ClipPrompts,
    Clips,
    ClipScript,
    Job,
    JobCost,
    JobStage,
    JobStatus,
    Lyric,
    Mood,
    ReferenceImage,
    ReferenceImages,
    Scene,
    ScenePlan,
    SongStructure,
    StageName,
    Style,
    Transition,
    VideoOutput,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
MOOD = Mood(primary="melancholic", secondary=["hopeful"], energy_level="medium", confidence=0.8)


def analysis(**overrides: Any) -> AudioAnalysis:
    values: dict[str, Any] = {
        "job_id": uuid.uuid4(),
        "bpm": 128,
        "duration": 60,
        "beat_timestamps": [0.47, 0.94, 1.41],
        "song_structure": [
            SongStructure(type="intro", start=0, end=10, energy=0.3),
            SongStructure(type="chorus", start=10, end=60, energy=0.9),
        ],
        "lyrics": [Lyric(text="hold on", start=11, end=13), Lyric(text="let go", start=12, end=15)],
        "mood": MOOD,
        "clip_boundaries": [ClipBoundary(start=0, end=8), ClipBoundary(start=8, end=16)],
    }
    values.update(overrides)
    return AudioAnalysis(**values)


def plan(**overrides: Any) -> ScenePlan:
    values: dict[str, Any] = {
        "job_id": uuid.uuid4(),
        "video_summary": "a night drive",
        "characters": [Character(id="c1", name="Ada", description="driver")],
        "scenes": [Scene(id="s1", description="highway at night")],
        "style": Style(color_palette=["#FF00AA"], visual_style="neon noir", mood="moody"),
        "clip_scripts": [
            ClipScript(clip_index=0, start=0, end=8, visual_description="car", characters=["c1"], scenes=["s1"]),
            ClipScript(clip_index=1, start=8, end=16, visual_description="city"),
        ],
        "transitions": [Transition(from_clip=0, to_clip=1, type="crossfade", duration=0.5)],
    }
    values.update(overrides)
    return ScenePlan(**values)


def job(**overrides: Any) -> Job:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "audio_url": "a.mp3",
        "user_prompt": "p",
        "created_at": NOW,
        "updated_at": NOW,
    }
    values.update(overrides)
    return Job(**values)


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(analysis, id="analysis"),
        pytest.param(plan, id="plan"),
        pytest.param(lambda: job(total_cost=Decimal("12.3456")), id="job"),
        pytest.param(
            lambda: JobStage(
                id=uuid.uuid4(),
                job_id=uuid.uuid4(),
                stage_name=StageName.COMPOSITION,
                status="failed",
                started_at=NOW,
                completed_at=NOW + timedelta(seconds=3),
                error="ffmpeg exited 1",
                metadata={"attempt": 2},
                created_at=NOW,
                updated_at=NOW,
            ),
            id="stage",
        ),
        pytest.param(
            lambda: JobCost(
                id=uuid.uuid4(),
                job_id=uuid.uuid4(),
                stage_name=StageName.CLIP_GENERATION,
                api_name="replicate",
                cost=Decimal("0.0100"),
                idempotency_key="clip-3",
                created_at=NOW,
            ),
            id="cost",
        ),
        pytest.param(
            lambda: ReferenceImages(
                job_id=uuid.uuid4(),
                images=[
                    ReferenceImage(
                        kind="scene",
                        subject_id="s1",
                        image_url="https://x/s1.png",
                        prompt_used="p",
                        cost=Decimal("0.04"),
                    )
                ],
            ),
            id="references",
        ),
        pytest.param(
            lambda: ClipPrompts(
                job_id=uuid.uuid4(), clip_prompts=[ClipPrompt(clip_index=0, prompt="a car at night", duration=8)]
            ),
            id="prompts",
        ),
        pytest.param(
            lambda: Clips(
                job_id=uuid.uuid4(),
                clips=[
                    Clip(clip_index=0, status="success", video_url="c0.mp4", target_duration=8, actual_duration=8.2),
                    Clip(clip_index=1, status="failed", target_duration=8, error="nsfw filter", cost=Decimal("0.1")),
                ],
            ),
            id="clips",
        ),
        pytest.param(
            lambda: VideoOutput(
                job_id=uuid.uuid4(),
                video_url="final.mp4",
                duration=60.1,
                audio_duration=60,
                clips_used=8,
                transitions_applied=7,
                file_size_bytes=10_000,
            ),
            id="video",
        ),
    ],
)
def test_json_round_trip_gives_an_equal_object(model: Any) -> None:
    original = model()
    assert original == type(original).model_validate_json(original.model_dump_json())


def test_derived_values() -> None:
    clips = Clips(
        job_id=uuid.uuid4(),
        clips=[
            Clip(
                clip_index=0,
                status="success",
                video_url="c.mp4",
                target_duration=8,
                actual_duration=7.5,
                cost=Decimal("0.3"),
            ),
            Clip(clip_index=1, status="failed", target_duration=8, error="timeout", cost=Decimal("0.2")),
        ],
    )
    assert Decimal("0.5") == clips.total_cost
    assert [0] == [clip.clip_index for clip in clips.successful]
    assert -0.5 == clips.clips[0].duration_diff
    assert clips.clips[1].duration_diff is None
    assert 8 == ClipBoundary(start=2, end=10).duration
    video = VideoOutput(
        job_id=uuid.uuid4(), video_url="v", duration=59.5, audio_duration=60, clips_used=1, file_size_bytes=1
    )
    assert 0.5 == video.sync_drift


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: analysis(beat_timestamps=[1.0, 0.5]), "sorted"),
        (lambda: analysis(beat_timestamps=[61.0]), "after the song ends"),
        (lambda: analysis(clip_boundaries=[ClipBoundary(start=0, end=8), ClipBoundary(start=7, end=16)]), "before"),
        (lambda: analysis(clip_boundaries=[ClipBoundary(start=50, end=70)]), "after the song ends"),
        (lambda: analysis(clip_boundaries=[]), "at least 1"),
        (lambda: analysis(lyrics=[Lyric(text="b", start=5, end=6), Lyric(text="a", start=1, end=2)]), "out of order"),
        (lambda: ClipBoundary(start=5, end=5), "at or before"),
        (lambda: analysis(bpm=0), "greater than 20"),
        (lambda: Mood(primary="x", energy_level="high", confidence=1.5), "less than or equal to 1"),
        (lambda: plan(clip_scripts=[ClipScript(clip_index=1, start=0, end=8, visual_description="x")]), "indexes"),
        (lambda: plan(transitions=[Transition(from_clip=1, to_clip=2)]), "does not exist"),
        (lambda: Transition(from_clip=0, to_clip=2), "next one"),
        (lambda: Transition(from_clip=0, to_clip=1, type="cut", duration=1), "no duration"),
        (
            lambda: plan(
                clip_scripts=[ClipScript(clip_index=0, start=0, end=8, visual_description="x", characters=["ghost"])]
            ),
            "does not define",
        ),
        (lambda: Style(color_palette=["red"], visual_style="x", mood="y"), "pattern"),
        (lambda: job(status="completed"), "completed_at"),
        (lambda: job(status="completed", completed_at=NOW), "video_url"),
        (lambda: job(updated_at=NOW - timedelta(seconds=1)), "before created_at"),
        (lambda: job(created_at=datetime(2026, 1, 1)), "timezone"),  # noqa: DTZ001 - the naive time under test
        (lambda: job(total_cost=Decimal(-1)), "greater than or equal to 0"),
        (lambda: job(total_cost=Decimal("0.00001")), "decimal places"),
        (lambda: job(progress=101), "less than or equal to 100"),
        (lambda: job(surprise=1), "Extra inputs"),
        (
            lambda: JobStage(
                id=uuid.uuid4(),
                job_id=uuid.uuid4(),
                stage_name="composition",
                status="completed",
                started_at=NOW,
                created_at=NOW,
                updated_at=NOW,
            ),
            "completed_at",
        ),
        (
            lambda: JobStage(
                id=uuid.uuid4(),
                job_id=uuid.uuid4(),
                stage_name="composition",
                started_at=NOW,
                completed_at=NOW - timedelta(seconds=1),
                status="completed",
                created_at=NOW,
                updated_at=NOW,
            ),
            "after it starts",
        ),
        (
            lambda: JobStage(
                id=uuid.uuid4(),
                job_id=uuid.uuid4(),
                stage_name="composition",
                started_at=NOW,
                error="x",
                created_at=NOW,
                updated_at=NOW,
            ),
            "error is set",
        ),
        (lambda: Clip(clip_index=0, status="success", target_duration=8), "video_url"),
        (lambda: Clip(clip_index=0, status="failed", target_duration=8), "says why"),
        (
            lambda: Clips(
                job_id=uuid.uuid4(), clips=[Clip(clip_index=2, status="failed", target_duration=1, error="e")]
            ),
            "indexes",
        ),
        (
            lambda: ClipPrompts(job_id=uuid.uuid4(), clip_prompts=[ClipPrompt(clip_index=1, prompt="p", duration=1)]),
            "indexes",
        ),
        (
            lambda: VideoOutput(
                job_id=uuid.uuid4(),
                video_url="v",
                duration=1,
                audio_duration=1,
                clips_used=1,
                clips_trimmed=2,
                file_size_bytes=1,
            ),
            "trimmed",
        ),
        (
            lambda: VideoOutput(
                job_id=uuid.uuid4(),
                video_url="v",
                duration=1,
                audio_duration=1,
                clips_used=2,
                transitions_applied=2,
                file_size_bytes=1,
            ),
            "transitions",
        ),
        (
            lambda: ReferenceImages(
                job_id=uuid.uuid4(),
                images=[ReferenceImage(kind="scene", subject_id="s", image_url="u", prompt_used="p", cost=Decimal(0))]
                * 2,
            ),
            "keep one",
        ),
    ],
)
def test_invariant_is_enforced(build: Any, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        build()


def test_models_are_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        job().progress = 5  # type: ignore[misc]


@given(
    st.lists(st.floats(min_value=0, max_value=600, allow_nan=False), min_size=2, max_size=30, unique=True).map(sorted),
)
def test_sorted_cut_points_make_valid_boundaries(points: list[float]) -> None:
    boundaries = [ClipBoundary(start=a, end=b) for a, b in itertools.pairwise(points)]
    result = analysis(
        duration=max(points[-1], 1), beat_timestamps=[], song_structure=[], lyrics=[], clip_boundaries=boundaries
    )
    assert boundaries == result.clip_boundaries
    assert result == AudioAnalysis.model_validate_json(result.model_dump_json())


def test_the_final_statuses_are_completed_and_failed_and_the_stores_agree() -> None:
    """JobStatus.is_final is the one definition; the repository's SQL list of active statuses derives from it."""
    from shared import jobs  # noqa: PLC0415

    assert {JobStatus.COMPLETED, JobStatus.FAILED} == {status for status in JobStatus if status.is_final}
    assert ("queued", "processing") == jobs._ACTIVE
