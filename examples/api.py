"""The API gateway as a FastAPI app: create a job from an upload, read it back, report health.

``POST /jobs`` (multipart: ``audio`` and ``prompt``; the user id in ``X-User-Id``, which the gateway in front
sets after verifying the Supabase JWT), ``GET /jobs/{id}`` (the job, its stages and costs) and ``GET /health``
(every service with its latency). Collaborators arrive through ``Depends(Provide[...])``; tests replace them
with ``container.x.override(...)`` (``app.dependency_overrides`` cannot target a Provide marker). The
container's resources open and close in the app's lifespan, and every PipelineError becomes a JSON error body
with the status a client can act on (content refused: 400; a request off the schema: FastAPI's 422).

Run it: ``uvicorn examples.api:create_app --factory``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Header, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from containers import Container
from shared.config import Settings
from shared.cost_tracking import CostLedger
from shared.database import DatabaseClient
from shared.errors import (
    BudgetExceededError,
    ConfigError,
    InvalidStateError,
    NotFoundError,
    PipelineError,
    RetryableError,
    ValidationError,
)
from shared.health import HealthStatus
from shared.jobs import JobStore
from shared.lifecycle import lifespan
from shared.models import Job, JobCost, JobStage
from shared.redis_client import Cache
from shared.storage import Storage
from shared.validation import validate_audio_file, validate_prompt
from shared.wiring import Provide, inject

__all__ = ["ErrorBody", "HealthReport", "JobDetail", "create_app", "status_for"]

AUDIO_BUCKET = "audio"


class JobDetail(BaseModel):
    """A job with its stage rows and cost rows."""

    job: Job
    stages: list[JobStage]
    costs: list[JobCost]


class ServiceHealth(BaseModel):
    """One service's health."""

    name: str
    status: str
    latency_ms: float
    detail: str | None = None


class HealthReport(BaseModel):
    """Every service's health; ``status`` is ok only when all are."""

    status: str
    services: list[ServiceHealth]


class ErrorDetail(BaseModel):
    """What went wrong, for a client: a stable code, a message that says what to do, and the job when known."""

    code: str
    message: str
    job_id: str | None = None


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


async def _http_error(_: Request, error: Exception) -> JSONResponse:
    """Give the framework's own errors (a malformed multipart body, an unknown route) the same body shape."""
    assert isinstance(error, StarletteHTTPException)  # noqa: S101 - registered for HTTPException only
    body = ErrorBody(error=ErrorDetail(code=f"http_{error.status_code}", message=str(error.detail)))
    return JSONResponse(body.model_dump(), status_code=error.status_code, headers=error.headers)


def status_for(error: PipelineError) -> int:
    """Return the HTTP status for a PipelineError (most specific first)."""
    if isinstance(error, ValidationError):
        return 400  # 422 stays FastAPI's, for requests that do not match the schema at all
    if isinstance(error, BudgetExceededError):
        return 402
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, InvalidStateError):
        return 409
    if isinstance(error, RetryableError):
        return 503
    if isinstance(error, ConfigError):
        return 500
    return 500


async def _pipeline_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, PipelineError)  # noqa: S101 - registered for PipelineError only
    status = status_for(error)
    job_id = None if error.job_id is None else str(error.job_id)
    internal = status >= 500 and not isinstance(error, RetryableError)
    message = "internal error; see the logs" if internal else error.message
    body = ErrorBody(error=ErrorDetail(code=error.code, message=message, job_id=job_id))
    headers = {}
    if isinstance(error, RetryableError):
        headers["Retry-After"] = str(max(1, round(error.retry_after or 1)))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


@inject
async def create_job(
    audio: Annotated[UploadFile, File(description="the song: MP3, WAV or FLAC")],
    prompt: Annotated[str, Form(description="what the video should look like")],
    user_id: Annotated[uuid.UUID, Header(alias="X-User-Id")],
    *,
    settings: Settings = Depends(Provide[Container.settings]),  # noqa: B008 - FastAPI's dependency idiom
    jobs: JobStore = Depends(Provide[Container.jobs]),  # noqa: B008
    storage: Storage = Depends(Provide[Container.storage]),  # noqa: B008
) -> Job:
    """Validate the upload and the prompt, store the audio, and create the job."""
    info = await asyncio.to_thread(validate_audio_file, audio.file, max_size_mb=settings.audio_max_size_mb)
    text = validate_prompt(prompt, min_length=settings.prompt_min_length, max_length=settings.prompt_max_length)
    job_id = uuid.uuid4()
    audio.file.seek(0)
    url = await storage.upload_file(AUDIO_BUCKET, f"{user_id}/{job_id}/song.{info.format}", audio.file, info.mime_type)
    return await jobs.create_job(user_id=user_id, audio_url=url, user_prompt=text, job_id=job_id)


@inject
async def get_job(
    job_id: uuid.UUID,
    *,
    jobs: JobStore = Depends(Provide[Container.jobs]),  # noqa: B008
    ledger: CostLedger = Depends(Provide[Container.cost_tracker]),  # noqa: B008
) -> JobDetail:
    """Return the job with its stages and costs."""
    job = await jobs.get_job(job_id)
    stages, costs = await jobs.list_stages(job_id), await ledger.list_costs(job_id)
    return JobDetail(job=job, stages=stages, costs=costs)


@inject
async def health(
    db: DatabaseClient = Depends(Provide[Container.db]),  # noqa: B008
    cache: Cache = Depends(Provide[Container.redis]),  # noqa: B008
    storage: Storage = Depends(Provide[Container.storage]),  # noqa: B008
) -> JSONResponse:
    """Check every service; 200 when all answer, 503 when one does not."""
    results: list[HealthStatus] = list(
        await asyncio.gather(db.health_check(), cache.health_check(), storage.health_check())
    )
    report = HealthReport(
        status="ok" if all(r.ok for r in results) else "down",
        services=[
            ServiceHealth(name=r.name, status=r.status, latency_ms=r.latency_ms, detail=r.detail) for r in results
        ],
    )
    return JSONResponse(report.model_dump(), status_code=200 if report.status == "ok" else 503)


def create_app(container: Container | None = None) -> FastAPI:
    """Build the app around ``container`` (a new one by default), wired and opened in the lifespan."""
    box = container or Container()

    @contextlib.asynccontextmanager
    async def app_lifespan(_: FastAPI) -> AsyncIterator[None]:
        box.wire(modules=[__name__])
        try:
            async with lifespan(box):
                yield
        finally:
            box.unwire()

    app = FastAPI(title="videogen gateway (example)", lifespan=app_lifespan)
    app.state.container = box
    app.add_exception_handler(PipelineError, _pipeline_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    errors: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 402, 404, 409, 503)}
    app.add_api_route("/jobs", create_job, methods=["POST"], status_code=201, response_model=Job, responses=errors)
    app.add_api_route("/jobs/{job_id}", get_job, methods=["GET"], response_model=JobDetail, responses=errors)
    app.add_api_route(
        "/health", health, methods=["GET"], response_model=HealthReport, responses={503: {"model": HealthReport}}
    )
    return app
