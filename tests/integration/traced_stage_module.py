"""The stage module of the cross-process trace test (``python -m shared worker tests.integration.traced_stage_module``).

Each clip item logs a line, runs a statement and pauses a little (so that two workers of one item at a time share
the items); the composition logs a line and reads the clips' results.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shared.stages import StageContext, Stages

stages = Stages()
_log = logging.getLogger("tests.integration.traced_stage_module")


@stages.handler("clip_generation")
async def clip(ctx: StageContext) -> dict[str, Any]:
    _log.info("clip %s", ctx.item)
    await ctx.db.fetchval("select $1::text", ctx.item)
    await asyncio.sleep(0.3)
    await ctx.progress(50)
    return {"clip": ctx.item}


@stages.handler("composition")
async def compose(ctx: StageContext) -> dict[str, Any]:
    clips = await ctx.results("clip_generation")
    _log.info("composing %d clips", len(clips))
    return {"clips": sorted(clips)}
