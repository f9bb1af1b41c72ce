"""shared.testing.run_stage, FakeStageQueue and FakeRateLimiter: a module's handlers on the fakes, as a worker would."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import pytest

from shared.config import RateLimits
from shared.container import Container
from shared.errors import ConfigError, RateLimitWaitError, RetryableError, ValidationError
from shared.models import JobStatus, StageName
from shared.paid import RateScope
from shared.stages import StageContext, Stages
from shared.testing import FakeRateLimiter, FakeStageQueue, run_stage
from shared.testing.fixtures import Fakes

stages = Stages()
starts: list[str] = []


@stages.handler("clip_generation", max_attempts=3)
async def clip(ctx: StageContext) -> dict[str, Any]:
    async def start() -> str:
        starts.append(ctx.item)
        return f"prediction-{ctx.item}-{ctx.attempt}"

    handle = await ctx.checkpoint("prediction", start)
    mode = ctx.payload.get("mode")
    if mode == "flaky" and ctx.attempt < 3:
        raise RetryableError("busy", retry_after=5)
    if mode == "broken":
        raise RuntimeError("a bug")
    if mode == "refused":
        raise ValidationError("the prompt was refused")
    await ctx.progress(40)
    ctx.then("composition", payload={"from": ctx.item})
    return {"handle": handle, "key": ctx.key("clip"), "seen": await ctx.results("scene_planning")}


@pytest.fixture(autouse=True)
def _no_starts() -> None:
    starts.clear()


async def test_a_retryable_error_runs_the_item_again_and_keeps_its_checkpoint(
    fake_container: Container, fakes: Fakes
) -> None:
    job = await fakes.add_job()
    run = await run_stage(
        stages,
        "clip_generation",
        container=fake_container,
        job_id=job.id,
        item="7",
        payload={"mode": "flaky"},
        results={"scene_planning": {"": {"plan": "p"}}},
    )
    assert 3 == run.attempts
    assert ["7"] == starts  # the paid start ran once: attempts 2 and 3 got the checkpoint back
    assert {"handle": "prediction-7-1", "key": f"{run.run_id}:clip", "seen": {"": {"plan": "p"}}} == run.result
    assert [("composition", {"": {"from": "7"}})] == [(n.stage, n.items) for n in run.queued]
    assert 40 == (await fakes.jobs.get_job(job.id)).progress


async def test_the_last_attempts_error_is_raised_and_fails_the_job(fake_container: Container, fakes: Fakes) -> None:
    job = await fakes.add_job()
    with pytest.raises(RuntimeError, match="a bug"):
        await run_stage(stages, "clip_generation", container=fake_container, job_id=job.id, payload={"mode": "broken"})
    failed = await fakes.jobs.get_job(job.id)
    assert JobStatus.FAILED == failed.status
    assert "stage clip_generation: failed after 3 attempts: a bug" == failed.error_message


async def test_a_refused_input_fails_at_once(fake_container: Container, fakes: Fakes) -> None:
    job = await fakes.add_job()
    with pytest.raises(ValidationError):
        await run_stage(
            stages, "clip_generation", container=fake_container, job_id=job.id, item="2", payload={"mode": "refused"}
        )
    assert ["2"] == starts  # one attempt only
    assert "stage clip_generation item 2: the prompt was refused" == (await fakes.jobs.get_job(job.id)).error_message


async def test_a_stage_without_a_handler_is_named(fake_container: Container, fakes: Fakes) -> None:
    job = await fakes.add_job()
    with pytest.raises(ConfigError, match="no handler for stage 'composition'"):
        await run_stage(stages, "composition", container=fake_container, job_id=job.id)


async def test_the_fake_queue_records_new_items_only() -> None:
    queue = FakeStageQueue()
    job = uuid.uuid4()
    assert 2 == len(await queue.submit(job, "clip_generation", items={"0": {}, "1": {}}, then="composition"))
    assert 1 == len(await queue.submit(job, "clip_generation", items={"1": {}, "2": {}}))
    assert [["0", "1"], ["2"]] == [list(s.items) for s in queue.submitted]
    assert "composition" == queue.submitted[0].then
    await queue.cancel_job(job, "the user cancelled")
    assert {job: "the user cancelled"} == queue.cancelled


async def test_the_fake_limiter_holds_the_concurrency_limit() -> None:
    limiter = FakeRateLimiter()
    scope = RateScope("replicate", "meta/musicgen")
    limits = RateLimits(concurrency=2)
    first = await limiter.acquire(scope, "a", 0, limits, max_wait=1)
    await limiter.acquire(scope, "b", 0, limits, max_wait=1)
    with pytest.raises(RateLimitWaitError):
        await limiter.acquire(scope, "c", 0, limits, max_wait=0.05)
    waiting = asyncio.create_task(limiter.acquire(scope, "d", 0, limits, max_wait=5))
    await asyncio.sleep(0.02)
    assert not waiting.done()
    await limiter.release(first)
    await limiter.release(first)  # a second release gives nothing back twice
    assert "d" == (await waiting).request_id
    assert (2, 2) == (limiter.in_flight[scope], limiter.most_in_flight[scope])
    assert not await limiter.renew(first)


async def test_paid_admission_runs_on_the_fake_container(fake_container: Container, fakes: Fakes) -> None:
    job = await fakes.add_job(budget_limit=Decimal(1))
    paid = fake_container.paid_calls()
    async with paid.admit(
        job.id,
        StageName.CLIP_GENERATION,
        provider="replicate",
        model="meta/musicgen",
        estimate={"predict_time_seconds": 60},
    ) as call:
        cost = await call.settle_replicate({"status": "succeeded", "metrics": {"predict_time": 10}})
    assert cost.cost == await fakes.costs.get_total_cost(job.id)
    assert (1, 0) == (len(fakes.limiter.grants), sum(fakes.limiter.in_flight.values()))
