"""The models serve as FastAPI request and response bodies, and the OpenAPI schema builds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import httpx
from fastapi import FastAPI

from shared.models import AudioAnalysis, ClipBoundary, Job, JobStatus, Mood, ScenePlan, VideoOutput


def make_app() -> FastAPI:
    app = FastAPI()

    @app.post("/analysis")
    async def echo_analysis(analysis: AudioAnalysis) -> AudioAnalysis:
        return analysis

    @app.post("/plans")
    async def echo_plan(plan: ScenePlan) -> ScenePlan:
        return plan

    @app.get("/jobs/{job_id}")
    async def get_job(job_id: uuid.UUID) -> Job:
        now = datetime.now(UTC)
        return Job(
            id=job_id,
            user_id=uuid.uuid4(),
            audio_url="a.mp3",
            user_prompt="p",
            total_cost=Decimal("1.2345"),
            created_at=now,
            updated_at=now,
        )

    @app.post("/videos")
    async def echo_video(video: VideoOutput) -> VideoOutput:
        return video

    return app


def test_openapi_schema_builds_with_every_model() -> None:
    schema = make_app().openapi()
    names = {name.split("-")[0] for name in schema["components"]["schemas"]}  # Model-Input / Model-Output
    assert {"AudioAnalysis", "ScenePlan", "Job", "VideoOutput", "ClipBoundary", "Mood"} <= names


async def test_models_round_trip_through_requests_and_responses() -> None:
    analysis = AudioAnalysis(
        job_id=uuid.uuid4(),
        bpm=120,
        duration=30,
        beat_timestamps=[0.5, 1.0],
        mood=Mood(primary="joyful", energy_level="high", confidence=0.9),
        clip_boundaries=[ClipBoundary(start=0, end=10), ClipBoundary(start=10, end=30)],
    )
    transport = httpx.ASGITransport(app=make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        echoed = await client.post(
            "/analysis", content=analysis.model_dump_json(), headers={"content-type": "application/json"}
        )
        job = await client.get(f"/jobs/{uuid.uuid4()}")
        refused = await client.post("/analysis", json={**analysis.model_dump(mode="json"), "bpm": 0})
    assert analysis == AudioAnalysis.model_validate_json(echoed.content)
    loaded = Job.model_validate_json(job.content)
    assert (JobStatus.QUEUED, Decimal("1.2345")) == (loaded.status, loaded.total_cost)
    assert 422 == refused.status_code
