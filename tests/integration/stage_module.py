"""A stage module the stage tests run in worker processes (``python -m shared worker tests.integration.stage_module``).

Each handler does what its payload's ``mode`` says, and records its effects in ``stage_effects`` (created by the
test), so a test counts how often each effect really happened.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared.errors import RetryableError, ValidationError
from shared.stages import StageContext, Stages

stages = Stages()


async def _effect(ctx: StageContext, name: str) -> None:
    await ctx.db.execute(
        "insert into stage_effects (run_id, item, name, attempt) values ($1, $2, $3, $4)",
        ctx.run_id,
        ctx.item,
        name,
        ctx.attempt,
    )


@stages.handler("clip_generation", max_attempts=3)
async def clip(ctx: StageContext) -> dict[str, Any]:
    mode = ctx.payload.get("mode", "ok")
    await _effect(ctx, "start")

    async def pay() -> str:
        await _effect(ctx, "paid")
        return f"prediction-{ctx.item}"

    handle = await ctx.checkpoint("prediction", pay)
    if mode == "slow" and ctx.attempt == 1:
        await asyncio.sleep(60)  # the test kills or cancels it here
    if mode == "flaky" and ctx.attempt == 1:
        raise RetryableError("the provider is busy", retry_after=0.1)
    if mode == "refused":
        raise ValidationError("the prompt was refused")
    await ctx.progress(50)
    if mode == "unencodable":  # its completion cannot be written: the delivery itself fails
        return {"clip": handle, "attempt": ctx.attempt, "bad": object()}
    return {"clip": handle, "attempt": ctx.attempt}


@stages.handler("composition")
async def compose(ctx: StageContext) -> dict[str, Any]:
    clips = await ctx.results("clip_generation")
    await _effect(ctx, "compose")
    return {"clips": sorted(clips)}


@stages.handler("stubborn", max_attempts=2)
async def stubborn(ctx: StageContext) -> dict[str, Any]:
    await _effect(ctx, "start")
    raise RetryableError("the provider is still busy", retry_after=0.05)
