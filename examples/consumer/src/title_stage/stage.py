"""The stage: read the job, call the paid API with retries inside a budget reservation, store, cache, complete."""

from __future__ import annotations

import logging
from uuid import UUID

from shared.cost_tracking import CostLedger
from shared.errors import StageConflictError
from shared.jobs import JobStore
from shared.logging import job_context
from shared.models import StageName
from shared.redis_client import Cache
from shared.retry import retry_with_backoff
from shared.storage import Storage
from shared.wiring import Provide, inject

from title_stage.api import PRICE_PER_CALL, TitleApi, TitleSuggestion
from title_stage.container import StageContainer
from title_stage.settings import TitleSettings

__all__ = ["BUCKET", "STAGE", "TitleResult", "title_job"]

STAGE = StageName.PROMPT_GENERATION
BUCKET = "artifacts"
_log = logging.getLogger("title_stage")


class TitleResult:
    """What the stage produced: the title and where its artifact is stored."""

    __slots__ = ("title", "url")

    def __init__(self, title: str, url: str) -> None:
        self.title = title
        self.url = url


@inject
async def title_job(
    job_id: UUID,
    *,
    jobs: JobStore = Provide[StageContainer.jobs],
    ledger: CostLedger = Provide[StageContainer.cost_tracker],
    cache: Cache = Provide[StageContainer.redis],
    storage: Storage = Provide[StageContainer.storage],
    api: TitleApi = Provide[StageContainer.title_api],
    settings: TitleSettings = Provide[StageContainer.title_settings],
) -> TitleResult:
    """Title the job's video; raises BudgetExceededError, before any call, when the budget cannot pay for one."""
    with job_context(job_id=job_id, stage=STAGE.value):
        job = await jobs.get_job(job_id)
        try:
            await jobs.start_stage(job_id, STAGE)
        except StageConflictError:  # 0.2.0: a completed stage is never reopened; a new title is one more paid call
            _log.info("the job was titled before; titling it again")
        call = retry_with_backoff(max_attempts=3, logger=_log)(api.suggest_title)
        async with ledger.reserve(job_id, STAGE, "openai", PRICE_PER_CALL) as reservation:
            suggestion: TitleSuggestion = await call(job.user_prompt)
            await reservation.commit(suggestion.cost)
        title = " ".join(suggestion.title.split()[: settings.max_words])
        _log.info("titled the video %r for %s", title, suggestion.cost)
        url = await storage.upload_file(BUCKET, f"{job_id}/title.txt", title.encode(), "text/plain", upsert=True)
        await cache.set(f"title:{job_id}", title, ttl=3600)
        await jobs.complete_stage(job_id, STAGE, {"title_url": url})
        return TitleResult(title, url)
