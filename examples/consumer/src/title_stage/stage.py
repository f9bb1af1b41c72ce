"""The stage: title a job's video with a paid API, as a handler the stage engine runs.

Run it with ``python -m shared worker title_stage.stage`` (as many processes as you like); the route in
:mod:`title_stage.app`, or any other service, submits the job's ``prompt_generation`` item. The handler admits the
paid call under the job's budget (``ctx.paid``: estimate, rate slot and concurrency slot together), prices it from
the answer's usage, stores and caches the title and moves the job's progress. The API's 503 leaves the admission
as a RetryableError and the engine runs the item again; a budget that cannot hold the estimate fails the job
before the API is called.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.logging import job_context
from shared.models import StageName
from shared.stages import StageContext, Stages

from title_stage.api import MODEL, TitleApi
from title_stage.container import StageContainer
from title_stage.settings import TitleSettings

__all__ = ["BUCKET", "ESTIMATE", "STAGE", "stages", "title_job"]

STAGE = StageName.PROMPT_GENERATION
BUCKET = "artifacts"
ESTIMATE = {"input_tokens": 400, "output_tokens": 60}  # the most one title may use: what the budget holds
_log = logging.getLogger("title_stage")

stages = Stages(container=StageContainer)  # the worker builds it; the handler reaches it as ctx.container


@stages.handler(STAGE.value, max_attempts=3)
async def title_job(ctx: StageContext) -> dict[str, Any]:
    """Title the job's video; its result is ``{"title": ..., "title_url": ...}``."""
    container = ctx.container
    settings: TitleSettings = container.title_settings()
    api: TitleApi = container.title_api()
    with job_context(job_id=ctx.job_id, stage=ctx.stage):
        job = await container.jobs().get_job(ctx.job_id)
        async with ctx.paid.admit(provider="openai", model=MODEL, estimate=ESTIMATE, name="title") as call:
            suggestion = await api.suggest_title(job.user_prompt)
            cost = await call.settle_openai(suggestion.answer)  # priced from the answer's usage, recorded once
        title = " ".join(suggestion.title.split()[: settings.max_words])
        _log.info("titled the video %r for %s", title, cost.cost)
        url = await container.storage().upload_file(
            BUCKET, f"{ctx.job_id}/title.txt", title.encode(), "text/plain", upsert=True
        )
        await container.redis().set(f"title:{ctx.job_id}", title, ttl=3600)
        await ctx.progress(25)
        return {"title": title, "title_url": url}
