"""The stage's HTTP route: POST /jobs/{job_id}/title queues the title stage for the job's owner (202)."""

from __future__ import annotations

from uuid import UUID

from fastapi import FastAPI
from pydantic import BaseModel
from shared.api import CurrentUser, add_health_route, container_lifespan, install_error_handlers
from shared.errors import JobNotFoundError
from shared.jobs import JobStore
from shared.stages import StageQueue
from shared.wiring import Provide, inject

from title_stage.container import StageContainer
from title_stage.stage import STAGE

__all__ = ["TitleQueued", "create_app"]


class TitleQueued(BaseModel):
    """The body of an accepted title request: ``queued`` is false when the job's title was asked for before."""

    job_id: UUID
    stage: str
    queued: bool


@inject
async def _queue_title(
    job_id: UUID,
    user: CurrentUser,
    *,
    jobs: JobStore = Provide[StageContainer.jobs],
    queue: StageQueue = Provide[StageContainer.stages],
) -> TitleQueued:
    job = await jobs.get_job(job_id)
    if not user.can_act_for(job.user_id):
        raise JobNotFoundError(job_id=job_id)  # another user's job answers as a missing one
    new = await queue.submit(job_id, STAGE.value, payload={})  # a worker runs it: title_stage.stage
    return TitleQueued(job_id=job_id, stage=STAGE.value, queued=bool(new))


def create_app(container: StageContainer | None = None) -> FastAPI:
    """Return the app; its lifespan wires the route and opens the container in the server's loop."""
    app = FastAPI(
        title="title stage",
        lifespan=container_lifespan(container or StageContainer(), modules=[__name__], build=["token_verifier"]),
    )
    install_error_handlers(app)  # every PipelineError -> the JSON error body with its status
    add_health_route(app)

    @app.post("/jobs/{job_id}/title", status_code=202)
    async def title(job_id: UUID, user: CurrentUser) -> TitleQueued:
        return await _queue_title(job_id, user)

    return app
