"""Stage handlers for the kill test: every await point of a stage is a place a worker may be SIGKILLed.

An item checkpoints its paid handle (``stage_effects`` counts real payments), records its cost in the ledger keyed
by the stage attempt's ``ctx.key`` and writes its artifact keyed the same way, with short sleeps between, so
SIGKILLs land before, between and after each effect.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from decimal import Decimal
from typing import Any

from shared.cost_tracking import CostTracker
from shared.models import StageName
from shared.stages import StageContext, Stages

stages = Stages()


async def _nap() -> None:
    await asyncio.sleep(random.uniform(0, 0.05))


@stages.handler("clip_generation", max_attempts=100)
async def clip(ctx: StageContext) -> dict[str, Any]:
    await _nap()

    async def pay() -> str:
        await ctx.db.execute(
            "insert into stage_effects (run_id, item, name, attempt) values ($1, $2, 'paid', $3)",
            ctx.run_id,
            ctx.item,
            ctx.attempt,
        )
        return f"prediction-{ctx.item}"

    handle = await ctx.checkpoint("prediction", pay)
    await _nap()
    ledger = CostTracker(ctx.db, default_budget=Decimal("100"), reservation_ttl=timedelta(minutes=5))
    await ledger.track_cost(ctx.job_id, StageName.CLIP_GENERATION, "replicate", "0.01", idempotency_key=ctx.key("cost"))
    await _nap()
    await ctx.db.execute(
        "insert into stage_artifacts (key, item) values ($1, $2) on conflict (key) do nothing",
        ctx.key("clip"),
        ctx.item,
    )
    await _nap()
    await ctx.progress(50)
    return {"clip": handle}
