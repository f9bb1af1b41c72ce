"""The stage's HTTP route: POST /jobs/{job_id}/title runs the stage; the container lives as long as the app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

from fastapi import FastAPI
from pydantic import BaseModel
from shared.lifecycle import lifespan

from title_stage import stage
from title_stage.container import StageContainer

__all__ = ["TitleResponse", "create_app"]


class TitleResponse(BaseModel):
    """The body of a successful title request."""

    title: str
    url: str


def create_app(container: StageContainer | None = None) -> FastAPI:
    """Return the app; it wires the stage and opens the container when it starts, and closes it when it stops."""
    owned = container or StageContainer()

    @asynccontextmanager
    async def run(_: FastAPI) -> AsyncIterator[None]:
        owned.wire(modules=[stage])
        try:
            async with lifespan(owned):
                yield
        finally:
            owned.unwire()

    app = FastAPI(title="title stage", lifespan=run)

    @app.post("/jobs/{job_id}/title")
    async def title(job_id: UUID) -> TitleResponse:
        result = await stage.title_job(job_id)
        return TitleResponse(title=result.title, url=result.url)

    return app
