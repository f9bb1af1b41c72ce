"""A pipeline stage written the way module authors write theirs: scene planning for one job.

Every collaborator comes from the container through ``@inject`` and ``Provide[...]``; the stage logs inside
``job_context`` (each line carries the job id and stage), calls a flaky paid API behind ``retry_with_backoff``,
reserves its estimated cost before spending, uploads the plan to storage and caches it for the next stage.

Wire and run it::

    container = Container()
    container.wire(modules=["examples.module"])
    async with lifespan(container):
        plan = await plan_scenes(job_id, analysis)
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Protocol
from uuid import UUID

from containers import Container
from shared.cost_tracking import CostLedger
from shared.errors import RetryableError
from shared.jobs import JobStore
from shared.logging import job_context
from shared.models import AudioAnalysis, ClipScript, ScenePlan, StageName, Style
from shared.redis_client import Cache
from shared.retry import retry_with_backoff
from shared.storage import Storage
from shared.wiring import Provide, inject

__all__ = ["PLAN_ESTIMATE", "PlanningModel", "SimulatedPlanner", "plan_scenes"]

PLAN_ESTIMATE = Decimal("0.1200")
_log = logging.getLogger("examples.scene_planning")


class PlanningModel(Protocol):
    """The paid LLM call (OpenAI in production); tests pass a mock with ``spec=PlanningModel``."""

    async def plan(self, analysis: AudioAnalysis, prompt: str) -> tuple[ScenePlan, Decimal]: ...


class SimulatedPlanner:
    """A stand-in for the paid API that fails ``failures`` times with a 503 before answering."""

    def __init__(self, failures: int = 1, cost: Decimal = Decimal("0.0950")) -> None:
        self.failures = failures
        self.cost = cost
        self.calls = 0

    async def plan(self, analysis: AudioAnalysis, prompt: str) -> tuple[ScenePlan, Decimal]:
        """Return a plan with one clip per clip boundary, and what the call cost."""
        self.calls += 1
        if self.calls <= self.failures:
            raise RetryableError("the planning API answered 503; try again", retry_after=0.01)
        scripts = [
            ClipScript(clip_index=n, start=b.start, end=b.end, visual_description=f"{prompt}, shot {n + 1}")
            for n, b in enumerate(analysis.clip_boundaries)
        ]
        style = Style(visual_style="neon noir", mood=analysis.mood.primary, color_palette=["#FF2E88", "#1B1B3A"])
        return ScenePlan(job_id=analysis.job_id, video_summary=prompt, style=style, clip_scripts=scripts), self.cost


@inject
async def plan_scenes(
    job_id: UUID,
    analysis: AudioAnalysis,
    model: PlanningModel,
    *,
    jobs: JobStore = Provide[Container.jobs],
    ledger: CostLedger = Provide[Container.cost_tracker],
    storage: Storage = Provide[Container.storage],
    cache: Cache = Provide[Container.redis],
) -> ScenePlan:
    """Plan the job's scenes: reserve the estimate, call the model (retried), record the cost, store and cache."""
    stage = StageName.SCENE_PLANNING
    with job_context(job_id=job_id, stage=stage.value):
        job = await jobs.get_job(job_id)
        await jobs.start_stage(job_id, stage)
        call = retry_with_backoff(max_attempts=4, jitter=True, logger=_log)(model.plan)
        async with ledger.reserve(job_id, stage, "openai", PLAN_ESTIMATE) as reservation:
            _log.info("planning %d clips", len(analysis.clip_boundaries))
            plan, cost = await call(analysis, job.user_prompt)
            await reservation.commit(cost)
        url = await storage.upload_file(
            "plans", f"{job_id}/scene_plan.json", plan.model_dump_json().encode(), "application/json", upsert=True
        )
        await cache.set_json(f"scene_plan:{job_id}", plan, ttl=3600)
        await jobs.complete_stage(job_id, stage, {"plan_url": url, "clips": len(plan.clip_scripts)})
        await jobs.update_progress(job_id, stage, 30)
        _log.info("scene plan stored at %s", url)
        return plan
