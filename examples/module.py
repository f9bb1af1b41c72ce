"""A pipeline stage written the way module authors write theirs: scene planning for one job, on the stage engine.

Run the handlers with a worker, submit the job's analysis from anywhere::

    $ python -m shared worker examples.module
    await StageQueue(db).submit(job_id, "scene_planning", payload=analysis.model_dump(mode="json"))

The handler takes everything from its :class:`~shared.stages.StageContext`: the job's analysis (``ctx.payload``),
the module's container (``ctx.container``: the job store, storage, the cache and the planner) and paid-call
admission bound to the attempt (``ctx.paid``: the budget estimate, a rate slot and a concurrency slot held
together, the cost priced from the answer's own usage). It logs inside ``job_context``. The planner's 503 leaves
the admission as a RetryableError and the engine runs the item again (``max_attempts``); a budget too small for
the estimate fails the job before the planner is called. Tests run it on the fakes with
:func:`shared.testing.run_stage`.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import httpx
from dependency_injector import providers

from shared.container import Container
from shared.logging import job_context
from shared.models import AudioAnalysis, ClipScript, ScenePlan, Style
from shared.stages import StageContext, Stages

__all__ = ["MODEL", "PLAN_ESTIMATE", "PlanningContainer", "PlanningModel", "SimulatedPlanner", "plan_scenes", "stages"]

MODEL = "gpt-4o-mini"
PLAN_ESTIMATE = {"input_tokens": 2_000, "output_tokens": 1_500}  # the most one plan may use: what is reserved
_log = logging.getLogger("examples.scene_planning")


class PlanningModel(Protocol):
    """The paid LLM call (OpenAI in production): the plan and the answer's JSON, whose ``usage`` prices it."""

    async def plan(self, analysis: AudioAnalysis, prompt: str) -> tuple[ScenePlan, dict[str, Any]]: ...


class SimulatedPlanner:
    """A stand-in for the paid API that answers HTTP 503 ``failures`` times before answering."""

    def __init__(self, failures: int = 1) -> None:
        self.failures = failures
        self.calls = 0

    async def plan(self, analysis: AudioAnalysis, prompt: str) -> tuple[ScenePlan, dict[str, Any]]:
        """Return a plan with one clip per clip boundary, and an OpenAI-shaped answer with its usage."""
        self.calls += 1
        if self.calls <= self.failures:
            request = httpx.Request("POST", "https://api.openai.com/v1/chat/completions")
            busy = httpx.Response(503, headers={"Retry-After": "0"}, request=request)
            raise httpx.HTTPStatusError("503 Service Unavailable", request=request, response=busy)
        scripts = [
            ClipScript(clip_index=n, start=b.start, end=b.end, visual_description=f"{prompt}, shot {n + 1}")
            for n, b in enumerate(analysis.clip_boundaries)
        ]
        style = Style(visual_style="neon noir", mood=analysis.mood.primary, color_palette=["#FF2E88", "#1B1B3A"])
        plan = ScenePlan(job_id=analysis.job_id, video_summary=prompt, style=style, clip_scripts=scripts)
        answer = {
            "object": "chat.completion",
            "model": "gpt-4o-mini-2024-07-18",
            "usage": {"prompt_tokens": 900 + 40 * len(scripts), "completion_tokens": 300 * len(scripts)},
        }
        return plan, answer


class PlanningContainer(Container):
    """The shared Container with the module's planner (a Resource opening an API client in production)."""

    planner = providers.Singleton(SimulatedPlanner, failures=1)


stages = Stages(container=PlanningContainer)  # the worker builds it; handlers reach it as ctx.container


@stages.handler("scene_planning", max_attempts=4)
async def plan_scenes(ctx: StageContext) -> dict[str, Any]:
    """Plan the job's scenes: admit the paid call, price it from its usage, store and cache the plan."""
    analysis = AudioAnalysis.model_validate(ctx.payload)
    container = ctx.container
    with job_context(job_id=ctx.job_id, stage=ctx.stage):
        job = await container.jobs().get_job(ctx.job_id)
        planner: PlanningModel = container.planner()
        async with ctx.paid.admit(provider="openai", model=MODEL, estimate=PLAN_ESTIMATE, name="plan") as call:
            _log.info("planning %d clips (attempt %d)", len(analysis.clip_boundaries), ctx.attempt)
            plan, answer = await planner.plan(analysis, job.user_prompt)
            cost = await call.settle_openai(answer)  # the answer's usage x the catalogue's price, recorded once
        # The path is the same on every attempt: a re-run overwrites the plan, never adds one.
        url = await container.storage().upload_file(
            "plans", f"{ctx.job_id}/scene_plan.json", plan.model_dump_json().encode(), "application/json", upsert=True
        )
        await container.redis().set_json(f"scene_plan:{ctx.job_id}", plan, ttl=3600)
        await ctx.progress(30)
        _log.info("scene plan stored at %s for %s", url, cost.cost)
        return {"plan_url": url, "clips": len(plan.clip_scripts)}
