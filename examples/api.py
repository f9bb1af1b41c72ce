"""The API gateway as a FastAPI app on the shared glue: a signed-in user creates a job from an upload and reads it.

``POST /jobs`` (multipart: ``audio`` and ``prompt``; the service role adds ``user_id``, the user it acts for),
``GET /jobs/{id}`` (the job, its stages and costs: its owner's only, anyone else gets the same 404 as for a
missing job) and ``GET /health``. Every route but health needs ``Authorization: Bearer <Supabase access token>``
(``shared.api.current_user``; creating a job spends paid-API budget, so an anonymous user gets 403 there:
``shared.api.PayingUser``); the token is checked before a byte of the upload is read, the upload is
limited while it streams (``RequestLimits``), and audio stored for a request that then fails is deleted.

Collaborators arrive through ``Depends(Provide[...])``; tests replace them with ``container.x.override(...)``.

Run it: ``python -m examples.api`` (uvicorn with the slow-client limits of ``shared.api.server``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from containers import Container
from shared.api import (
    CurrentUser,
    PayingUser,
    RequestLimits,
    add_health_route,
    container_lifespan,
    error_responses,
    install_error_handlers,
)
from shared.api.server import serve
from shared.auth import Principal
from shared.config import Settings
from shared.container import Container as SharedContainer
from shared.cost_tracking import CostLedger
from shared.errors import JobNotFoundError, NotFoundError
from shared.jobs import JobStore
from shared.models import Job, JobCost, JobStage
from shared.storage import Storage
from shared.validation import validate_audio_file, validate_prompt
from shared.wiring import Provide, inject

__all__ = ["JobDetail", "create_app", "main", "upload_limit"]

AUDIO_BUCKET = "audio"
_MB = 1024 * 1024
# Room for the multipart framing and the prompt around the audio itself.
_FORM_OVERHEAD = 64 * 1024
_log = logging.getLogger("examples.api")

_UPLOAD_SCHEMA = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["audio", "prompt"],
                "properties": {
                    "audio": {"type": "string", "format": "binary", "description": "the song: MP3, WAV or FLAC"},
                    "prompt": {"type": "string", "description": "what the video should look like"},
                    "user_id": {
                        "type": "string",
                        "format": "uuid",
                        "description": "service role only: the user the job is created for",
                    },
                },
            }
        }
    },
}


class JobDetail(BaseModel):
    """A job with its stage rows and cost rows."""

    job: Job
    stages: list[JobStage]
    costs: list[JobCost]


def upload_limit(settings: Settings) -> int:
    """Return the largest request body POST /jobs accepts: the audio limit plus the form around it."""
    return settings.audio_max_size_mb * _MB + _FORM_OVERHEAD


def _owner(principal: Principal, requested: str | None) -> uuid.UUID:
    """Return whom the job is for: the user themself, or for the service role the ``user_id`` it names."""
    if requested is None:
        if principal.is_service:
            raise _invalid("user_id", "the service role must name the user the job is for")
        return principal.user_id
    try:
        user_id = uuid.UUID(requested)
    except ValueError:
        raise _invalid("user_id", "must be a UUID") from None
    if not principal.can_act_for(user_id):
        # The same answer as for a user who does not exist: whether someone else's account exists stays unknown.
        raise NotFoundError(f"user {user_id} not found; create jobs for your own account", code="user_not_found")
    return user_id


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


async def _discard(storage: Storage, path: str) -> None:
    """Delete audio stored for a request that failed afterwards; a failure here is logged, never raised."""
    try:
        await asyncio.shield(storage.delete_file(AUDIO_BUCKET, path))
    except Exception:  # noqa: BLE001 - a documented boundary: the request's own error is the one to report
        _log.warning("could not delete the audio of a failed request", extra={"path": path}, exc_info=True)


@inject
async def create_job(
    request: Request,
    user: PayingUser,
    *,
    settings: Settings = Depends(Provide[Container.settings]),  # noqa: B008 - FastAPI's dependency idiom
    jobs: JobStore = Depends(Provide[Container.jobs]),  # noqa: B008
    storage: Storage = Depends(Provide[Container.storage]),  # noqa: B008
) -> Job:
    """Validate the upload and the prompt, store the audio, and create the job for the token's user."""
    # The form is read here, after current_user: an anonymous upload is refused before its body is read.
    async with request.form(max_files=1, max_fields=2) as form:
        audio, prompt, requested = form.get("audio"), form.get("prompt"), form.get("user_id")
        if not isinstance(audio, UploadFile):
            raise _invalid("audio", "a file part named audio is required")
        if not isinstance(prompt, str):
            raise _invalid("prompt", "a text field named prompt is required")
        if requested is not None and not isinstance(requested, str):
            raise _invalid("user_id", "must be a text field")
        owner = _owner(user, requested)
        text = validate_prompt(prompt, min_length=settings.prompt_min_length, max_length=settings.prompt_max_length)
        info = await asyncio.to_thread(
            validate_audio_file,
            audio,  # the UploadFile itself: its spooled file is read
            max_size_mb=settings.audio_max_size_mb,
            min_duration_seconds=settings.audio_min_duration_seconds,
            max_duration_seconds=settings.audio_max_duration_seconds,
        )
        job_id = uuid.uuid4()
        path = f"{owner}/{job_id}/song.{info.format}"
        audio.file.seek(0)
        url = await storage.upload_file(AUDIO_BUCKET, path, audio.file, info.mime_type)
    try:
        return await jobs.create_job(user_id=owner, audio_url=url, user_prompt=text, job_id=job_id)
    except BaseException:
        await _discard(storage, path)
        raise


@inject
async def get_job(
    job_id: uuid.UUID,
    user: CurrentUser,
    *,
    jobs: JobStore = Depends(Provide[Container.jobs]),  # noqa: B008
    ledger: CostLedger = Depends(Provide[Container.cost_tracker]),  # noqa: B008
) -> JobDetail:
    """Return the job with its stages and costs, to its owner (or the service role) only."""
    job = await jobs.get_job(job_id)
    if not user.can_act_for(job.user_id):
        raise JobNotFoundError(job_id=job_id)  # exactly the answer for a job that does not exist
    stages, costs = await jobs.list_stages(job_id), await ledger.list_costs(job_id)
    return JobDetail(job=job, stages=stages, costs=costs)


def create_app(container: SharedContainer | None = None) -> FastAPI:
    """Build the app around ``container`` (a new one by default), wired and opened in the lifespan."""
    box = container or Container()
    settings: Settings = box.settings()
    app = FastAPI(
        title="videogen gateway (example)",
        lifespan=container_lifespan(box, modules=[__name__], build=["token_verifier"]),
    )
    install_error_handlers(app)
    app.add_middleware(
        RequestLimits,
        max_body_bytes=upload_limit(settings),
        min_bytes_per_second=settings.api_body_min_bytes_per_second,
        grace_seconds=settings.api_body_grace_seconds,
    )
    app.add_api_route(
        "/jobs",
        create_job,
        methods=["POST"],
        status_code=201,
        response_model=Job,
        responses=error_responses(400, 401, 402, 403, 404, 408, 409, 413, 503),
        openapi_extra={"requestBody": _UPLOAD_SCHEMA},
    )
    app.add_api_route(
        "/jobs/{job_id}",
        get_job,
        methods=["GET"],
        response_model=JobDetail,
        responses=error_responses(401, 404, 503),
    )
    add_health_route(app)
    return app


def main() -> None:  # pragma: no cover - runs a server until stopped; tests start uvicorn themselves
    """Serve the gateway on 127.0.0.1:8000 with the settings' limits, in API_WORKERS processes."""
    container = Container()
    settings = container.settings()
    if settings.api_workers > 1:  # each worker process imports the app and builds its own container
        serve("examples.api:create_app", settings, host="127.0.0.1", port=8000, factory=True)
    else:
        serve(create_app(container), settings, host="127.0.0.1", port=8000)


if __name__ == "__main__":  # pragma: no cover
    main()
