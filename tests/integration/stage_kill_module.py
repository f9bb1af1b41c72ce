"""The stage the kill test runs: a paid clip with an await point between every two effects, and a plan of kills.

Each item of ``clip_generation`` creates a prediction at a fake provider on loopback (a paid call) and
checkpoints its handle, reserves its cost against the job's budget (the stage attempt's, keyed by ``ctx.key``
as every attempt of the effect is: a re-run takes the hold over or gets the commit already made), fetches
the prediction's result, commits the cost, writes its artifact (a file and a row, both keyed by ``ctx.key``) and
moves the job's progress. ``composition`` runs once after all items and writes one artifact.

The plan (``KILL_PLAN``, a JSON object ``{item: [point, ...]}``) makes the worker SIGKILL itself when an item
reaches one of its points for the first time: a marker file in ``KILL_DIR`` per (item, point), created before
the kill, so each planned kill lands exactly once whichever attempt gets there. The engine's own await points
(``claimed``, ``completing``, ``completed``) are planned the same way by
:mod:`tests.integration.stage_kill_supervisor`, which wraps the worker around them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from shared.cost_tracking import CostTracker
from shared.models import StageName
from shared.stages import StageContext, Stages

stages = Stages()
# Every await point of the handler, in order; the supervisor adds the engine's.
HANDLER_POINTS = (
    "begin",
    "created",  # the provider made the prediction; its handle is not kept yet
    "checkpointed",
    "reserved",
    "fetched",
    "committed",
    "released",
    "file",
    "row",
    "progress",
)
ENGINE_POINTS = ("claimed", "completing", "completed")
POINTS = ENGINE_POINTS[:1] + HANDLER_POINTS + ENGINE_POINTS[1:]
COST = Decimal("0.05")
_plan: dict[str, list[str]] | None = None


def plan() -> dict[str, list[str]]:
    global _plan  # noqa: PLW0603 - read once per process
    if _plan is None:
        _plan = json.loads(os.environ.get("KILL_PLAN", "{}"))
    return _plan


def kill_point(item: str, point: str) -> None:
    """SIGKILL this process if ``item`` reaching ``point`` is planned and has not happened yet."""
    if point not in plan().get(item, ()):
        return
    try:
        os.close(os.open(Path(os.environ["KILL_DIR"]) / f"{item}@{point}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


async def provider(line: str) -> str:
    """One request to the fake provider (a line), its answer (a line)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", int(os.environ["PROVIDER_PORT"]))
    try:
        writer.write(line.encode() + b"\n")
        await writer.drain()
        return (await reader.readline()).decode().strip()
    finally:
        writer.close()


@stages.handler("clip_generation", max_attempts=int(os.environ.get("KILL_MAX_ATTEMPTS", "30")))
async def clip(ctx: StageContext) -> dict[str, Any]:
    kill_point(ctx.item, "begin")

    async def create() -> str:
        handle = await provider(f"create {ctx.run_id} {ctx.attempt}")  # paid: the provider counts it
        kill_point(ctx.item, "created")
        return handle

    handle = await ctx.checkpoint("prediction", create)
    kill_point(ctx.item, "checkpointed")
    ledger = CostTracker(ctx.db, default_budget=Decimal("1000"), reservation_ttl=timedelta(minutes=5))
    async with ledger.reserve(
        ctx.job_id,
        StageName.CLIP_GENERATION,
        "fake/clip",
        COST,
        attempt_id=ctx.attempt_id,
        idempotency_key=ctx.key("cost"),
    ) as reservation:
        kill_point(ctx.item, "reserved")
        output = await provider(f"get {handle}")  # free: the result of the prediction already paid for
        kill_point(ctx.item, "fetched")
        await reservation.commit(COST)
        kill_point(ctx.item, "committed")
    kill_point(ctx.item, "released")
    folder = Path(os.environ["ARTIFACT_DIR"])
    temporary = folder / f".{ctx.key('clip')}.{os.getpid()}"
    temporary.write_text(output)
    temporary.replace(folder / ctx.key("clip"))  # the same name on every attempt: written once, however often
    kill_point(ctx.item, "file")
    await ctx.db.execute(
        "insert into kill_artifacts (key, run_id, attempt) values ($1, $2, $3) on conflict (key) do nothing",
        ctx.key("clip"),
        ctx.run_id,
        ctx.attempt,
    )
    kill_point(ctx.item, "row")
    await ctx.progress(50)
    kill_point(ctx.item, "progress")
    return {"clip": handle, "output": output}


@stages.handler("composition", max_attempts=int(os.environ.get("KILL_MAX_ATTEMPTS", "30")))
async def compose(ctx: StageContext) -> dict[str, Any]:
    clips = await ctx.results("clip_generation")
    await ctx.db.execute(
        "insert into kill_artifacts (key, run_id, attempt) values ($1, $2, $3) on conflict (key) do nothing",
        ctx.key("video"),
        ctx.run_id,
        ctx.attempt,
    )
    await ctx.progress(100)
    return {"clips": len(clips)}
