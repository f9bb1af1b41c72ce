"""The stage's HTTP route: POST /jobs/{job_id}/title runs the stage for the job's owner, on videogen-shared's glue."""

from __future__ import annotations

from uuid import UUID

from fastapi import FastAPI
from pydantic import BaseModel
from shared.api import CurrentUser, add_health_route, container_lifespan, install_error_handlers
from shared.errors import JobNotFoundError
from shared.jobs import JobStore
from shared.wiring import Provide, inject

from title_stage import stage
from title_stage.container import StageContainer

__all__ = ["TitleResponse", "create_app"]


class TitleResponse(BaseModel):
    """The body of a successful title request."""

    title: str
    url: str


@inject
async def _title_for(
    job_id: UUID, user: CurrentUser, *, jobs: JobStore = Provide[StageContainer.jobs]
) -> TitleResponse:
    job = await jobs.get_job(job_id)
    if not user.can_act_for(job.user_id):
        raise JobNotFoundError(job_id=job_id)  # another user's job answers as a missing one
    result = await stage.title_job(job_id)
    return TitleResponse(title=result.title, url=result.url)


def create_app(container: StageContainer | None = None) -> FastAPI:
    """Return the app; its lifespan wires the stage and opens the container in the server's loop."""
    app = FastAPI(
        title="title stage",
        lifespan=container_lifespan(container or StageContainer(), modules=[stage, __name__], build=["token_verifier"]),
    )
    install_error_handlers(app)  # every PipelineError -> the JSON error body with its status
    add_health_route(app)

    @app.post("/jobs/{job_id}/title")
    async def title(job_id: UUID, user: CurrentUser) -> TitleResponse:
        return await _title_for(job_id, user)

    return app
