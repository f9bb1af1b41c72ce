"""The stage module the gateway soak's stage workers run (``python -m shared worker benchmarks.soak_stages``).

Each job the soak creates through the gateway gets two ``audio_analysis`` items and then one ``scene_planning``:
short sleeps standing in for work, a progress report, and one item in twenty failing once with a retryable error.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from shared.errors import RetryableError
from shared.stages import StageContext, Stages

stages = Stages()


@stages.handler("audio_analysis", max_attempts=3)
async def analyse(ctx: StageContext) -> dict[str, Any]:
    await asyncio.sleep(random.uniform(0.02, 0.2))
    if ctx.attempt == 1 and random.random() < 0.05:
        raise RetryableError("the stand-in provider is busy", retry_after=0.5)
    await ctx.progress(50)
    return {"item": ctx.item, "attempt": ctx.attempt}


@stages.handler("scene_planning")
async def plan(ctx: StageContext) -> dict[str, Any]:
    analyses = await ctx.results("audio_analysis")
    await asyncio.sleep(random.uniform(0.02, 0.1))
    return {"analyses": len(analyses)}
