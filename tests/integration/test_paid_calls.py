"""Paid calls admitted in one step on the real PostgreSQL and Redis: slots, money and usage given back together."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

import containers
from shared.config import RateLimits, Settings
from shared.errors import BudgetExceededError, ValidationError
from shared.lifecycle import lifespan
from shared.models import StageName
from shared.paid import (
    Grant,
    PaidCalls,
    ProviderRateLimitedError,
    RateLimiter,
    RateLimiterUnavailableError,
    RateLimitWaitError,
    RateScope,
    key_id,
)
from tests.fixtures.core import MakeSettings
from tests.fixtures.postgres import MakeUser
from tests.fixtures.redis import RedisServer

CLIPS = StageName.CLIP_GENERATION
ROOT = Path(__file__).resolve().parents[2]
MODEL = "gpt-4o-mini"
ESTIMATE = {"input_tokens": 800, "output_tokens": 200}


def chat_answer(prompt: int = 700, completion: int = 150) -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


@dataclass
class Paid:
    container: containers.Container
    calls: PaidCalls
    make_user: MakeUser

    async def job(self, budget: Decimal | None = Decimal(5)) -> uuid.UUID:
        job = await self.container.jobs().create_job(
            user_id=await self.make_user(), audio_url="a.mp3", user_prompt="p", budget_limit=budget
        )
        return job.id

    async def active_reservations(self, job: uuid.UUID) -> int:
        count: int = await self.container.db().fetchval(
            "select count(*) from job_cost_reservations where job_id = $1 and status = 'active'", job
        )
        return count

    async def leases(self, provider: str = "openai", api_key: str | None = "sk-test") -> int:
        keys = RateScope(provider, MODEL, key_id(api_key)).keys(self.container.settings().paid_key_prefix)
        count: int = await self.container.redis().raw.zcard(keys[2])
        return count

    async def window(self, api_key: str | None = "sk-test") -> tuple[int, int]:
        keys = RateScope("openai", MODEL, key_id(api_key)).keys(self.container.settings().paid_key_prefix)
        raw = self.container.redis().raw
        total = await raw.hget(keys[1], "_total")
        return int(await raw.zcard(keys[0])), int(total or 0)


@contextlib.asynccontextmanager
async def opened(settings: Settings, make_user: MakeUser) -> AsyncIterator[Paid]:
    instance = containers.Container()
    instance.settings.override(settings)
    async with lifespan(instance):
        yield Paid(instance, instance.paid_calls(), make_user)


@pytest.fixture
def paid_settings(make_settings: MakeSettings, pg_dsn: str, redis_prefix: str) -> Callable[..., Settings]:
    def make(**limits: Any) -> Settings:
        values = {"rpm": 1000, "tpm": 1_000_000, "rps": 100, "concurrency": 10, **limits}
        return make_settings(
            database_url=pg_dsn,
            redis_key_prefix=redis_prefix,
            paid_key_prefix=redis_prefix,
            paid_limits={f"openai/{MODEL}": RateLimits(**values)},
            paid_admission_max_wait_seconds=10.0,
        )

    return make


@pytest.fixture
async def paid(paid_settings: Callable[..., Settings], make_user: MakeUser) -> AsyncIterator[Paid]:
    async with opened(paid_settings(), make_user) as env:
        yield env


async def test_a_settled_call_records_its_priced_usage_and_gives_every_slot_back(paid: Paid) -> None:
    job = await paid.job()
    async with paid.calls.admit(
        job, CLIPS, provider="openai", model=MODEL, estimate=ESTIMATE, api_key="sk-test"
    ) as call:
        assert 1 == await paid.active_reservations(job)
        assert 1 == await paid.leases()
        cost = await call.settle_openai(chat_answer(700, 150))
    expected = paid.calls.catalogue.price("openai", MODEL, {"input_tokens": 700, "output_tokens": 150})
    assert expected.cost.quantize(Decimal("0.0001"), rounding="ROUND_CEILING") == cost.cost
    usage = await paid.calls.usage_of(cost.id)
    assert usage is not None
    assert ("openai", "gpt-4o-mini", str(expected.cost)) == (usage["provider"], usage["model"], usage["cost"])
    assert {"input_tokens": "700", "output_tokens": "150"} == usage["units"]
    assert usage["price_version"].startswith("genai-prices ")
    assert 0 == await paid.active_reservations(job)
    assert 0 == await paid.leases()
    assert (1, 850) == await paid.window()  # the rate slot stays spent, its weight is the real usage


async def test_the_api_key_never_appears_in_redis(paid: Paid) -> None:
    job = await paid.job()
    async with paid.calls.admit(
        job, CLIPS, provider="openai", model=MODEL, estimate=ESTIMATE, api_key="sk-secret-42"
    ) as call:
        keys = [
            key
            async for key in paid.container.redis().raw.scan_iter(match=f"{paid.container.settings().paid_key_prefix}*")
        ]
        await call.settle({"input_tokens": 1, "output_tokens": 1})
    assert keys
    assert not [key for key in keys if b"sk-secret-42" in key]


async def test_a_block_that_raises_releases_the_money_and_the_lease(paid: Paid) -> None:
    job = await paid.job()
    with pytest.raises(RuntimeError):
        async with paid.calls.admit(job, CLIPS, provider="openai", model=MODEL, estimate=ESTIMATE, api_key="sk-test"):
            raise RuntimeError("the call failed")
    assert 0 == await paid.active_reservations(job)
    assert 0 == await paid.leases()
    assert Decimal(0) == await paid.container.cost_tracker().get_total_cost(job)


async def test_a_429_leaves_as_retryable_and_slows_every_process(paid: Paid) -> None:
    job = await paid.job()
    response = httpx.Response(429, headers={"Retry-After": "2"}, request=httpx.Request("POST", "https://x"))
    with pytest.raises(ProviderRateLimitedError) as caught:
        async with paid.calls.admit(job, CLIPS, provider="openai", model=MODEL, estimate=ESTIMATE, api_key="sk-test"):
            raise httpx.HTTPStatusError("429", request=response.request, response=response)
    assert 2.0 == caught.value.retry_after
    other = RateLimiter(paid.container.redis(), prefix=paid.container.settings().paid_key_prefix)
    scope = RateScope("openai", MODEL, key_id("sk-test"))
    wait = await other.try_acquire(scope, "another-process", 10, RateLimits(rpm=1000))
    assert isinstance(wait, float)
    assert 1000 < wait <= 2000


async def test_a_budget_refusal_gives_the_rate_slot_back_whole(paid: Paid) -> None:
    job = await paid.job(Decimal("0.0001"))
    with pytest.raises(BudgetExceededError):
        async with paid.calls.admit(
            job, CLIPS, provider="openai", model=MODEL, estimate={"input_tokens": 1_000_000}, api_key="sk-test"
        ):
            pytest.fail("admitted over the budget")
    assert (0, 0) == await paid.window()
    assert 0 == await paid.leases()


async def test_cancellation_inside_the_call_leaves_no_hold(paid: Paid) -> None:
    job = await paid.job()
    entered = asyncio.Event()

    async def call() -> None:
        async with paid.calls.admit(job, CLIPS, provider="openai", model=MODEL, estimate=ESTIMATE, api_key="sk-test"):
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(call())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 0 == await paid.active_reservations(job)
    assert 0 == await paid.leases()


async def test_concurrency_is_capped_across_limiters(
    paid_settings: Callable[..., Settings], make_user: MakeUser
) -> None:
    async with (
        opened(paid_settings(concurrency=2), make_user) as a,
        opened(paid_settings(concurrency=2), make_user) as b,
    ):
        job = await a.job()
        inside = peak = 0

        async def call(env: Paid) -> None:
            nonlocal inside, peak
            async with env.calls.admit(job, CLIPS, provider="openai", model=MODEL, estimate=ESTIMATE, api_key="k") as c:
                inside += 1
                peak = max(peak, inside)
                await asyncio.sleep(0.05)
                inside -= 1
                await c.settle({"input_tokens": 10, "output_tokens": 10})

        await asyncio.gather(*(call(env) for env in (a, b) * 4))
    assert 2 == peak


async def test_requests_per_second_hold_on_the_limiters_clock(paid: Paid) -> None:
    limiter = paid.calls.limiter
    scope = RateScope("openai", MODEL, "rps-test")
    limits = RateLimits(rps=4)
    grants = [await limiter.acquire(scope, str(uuid.uuid4()), 1, limits, max_wait=5) for _ in range(10)]
    times = sorted(grant.granted_at_ms for grant in grants)
    assert all(sum(1 for t in times if start <= t < start + 1000) <= 4 for start in times)
    assert times[-1] - times[0] >= 2000


async def test_tokens_per_minute_hold_and_an_oversized_call_is_refused(paid: Paid) -> None:
    limiter = paid.calls.limiter
    scope = RateScope("openai", MODEL, "tpm-test")
    limits = RateLimits(tpm=1000)
    first = await limiter.try_acquire(scope, "a", 600, limits)
    assert not isinstance(first, float)
    assert isinstance(await limiter.try_acquire(scope, "b", 600, limits), float)
    await limiter.release(first, tokens=300)  # the real usage was smaller: room comes back
    assert not isinstance(await limiter.try_acquire(scope, "b", 600, limits), float)
    with pytest.raises(ValidationError):
        await limiter.try_acquire(scope, "c", 1001, limits)


async def test_a_dead_workers_lease_runs_out(paid: Paid) -> None:
    limiter = RateLimiter(paid.container.redis(), prefix=paid.container.settings().paid_key_prefix, lease_seconds=1)
    scope = RateScope("openai", MODEL, "lease-test")
    limits = RateLimits(concurrency=1)
    assert not isinstance(await limiter.try_acquire(scope, "dead", 1, limits), float)  # never released
    assert isinstance(await limiter.try_acquire(scope, "next", 1, limits), float)
    await asyncio.sleep(1.1)
    assert not isinstance(await limiter.try_acquire(scope, "next", 1, limits), float)


async def test_callers_of_one_process_share_round_trips_and_the_limits_still_hold(
    paid: Paid, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = paid.calls.limiter
    scripts = 0
    run = limiter._run

    async def counted(*args: Any) -> Any:
        nonlocal scripts
        scripts += 1
        return await run(*args)

    monkeypatch.setattr(limiter, "_run", counted)
    scope = RateScope("openai", MODEL, "batch-test")
    answers = await asyncio.gather(
        *(limiter.try_acquire(scope, f"caller {i}", 1, RateLimits(rpm=20, concurrency=50)) for i in range(60))
    )
    grants = [answer for answer in answers if isinstance(answer, Grant)]
    assert 20 == len(grants)  # in one batch the entries run in order: the 21st sees the first 20
    assert all(answer > 0 for answer in answers if not isinstance(answer, Grant))
    assert scripts < 10  # 60 callers, a handful of round trips
    keys = scope.keys(paid.container.settings().paid_key_prefix)
    raw = paid.container.redis().raw
    assert sorted(grant.request_id.encode() for grant in grants) == sorted(await raw.zrange(keys[0], 0, -1))
    await asyncio.gather(*(limiter.release(grant) for grant in grants))
    assert 0 == await raw.zcard(keys[2])


async def test_an_acquire_cancelled_in_flight_gives_its_slot_back(paid: Paid) -> None:
    limiter = paid.calls.limiter
    scope = RateScope("openai", MODEL, "cancel-test")
    limits = RateLimits(rpm=10, concurrency=1)
    waiter = asyncio.create_task(limiter.try_acquire(scope, "cancelled", 1, limits))
    await asyncio.sleep(0)  # its entry is queued and its batch about to be sent
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    grant = None
    for _ in range(20):  # the batch's answer arrives, and the grant nobody waits for is given back
        grant = await limiter.try_acquire(scope, "next", 1, limits)
        if isinstance(grant, Grant):
            break
        await asyncio.sleep(0.05)
    assert isinstance(grant, Grant)
    keys = scope.keys(paid.container.settings().paid_key_prefix)
    raw = paid.container.redis().raw
    assert [grant.request_id.encode()] == await raw.zrange(keys[0], 0, -1)
    await limiter.release(grant)


async def test_waiting_longer_than_allowed_is_retryable(paid: Paid) -> None:
    limiter = paid.calls.limiter
    scope = RateScope("openai", MODEL, "wait-test")
    await limiter.acquire(scope, "a", 1, RateLimits(rpm=1), max_wait=1)
    with pytest.raises(RateLimitWaitError) as caught:
        await limiter.acquire(scope, "b", 1, RateLimits(rpm=1), max_wait=0.5)
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 50


async def test_a_stage_attempt_keys_the_cost_once(paid: Paid) -> None:
    @dataclass
    class Attempt:
        job_id: uuid.UUID
        attempt_id: uuid.UUID

        def key(self, name: str) -> str:
            return f"{self.job_id}:clips:17:{name}"

    job = await paid.job()
    attempt = Attempt(job, uuid.uuid4())
    for _ in range(2):
        await paid.calls.track_usage(
            job,
            CLIPS,
            provider="replicate",
            model="meta/musicgen",
            usage={"predict_time_seconds": 30},
            attempt=attempt,
            name="music",
        )
    rows = await paid.container.cost_tracker().list_costs(job)
    assert 1 == len(rows)
    assert f"{job}:clips:17:music" == rows[0].idempotency_key


async def test_an_admitted_call_reserves_for_its_stage_attempt(paid: Paid) -> None:
    """The reservation records the attempt, so the stage engine can release a taken-over attempt's holds."""

    @dataclass
    class Attempt:
        job_id: uuid.UUID
        attempt_id: uuid.UUID

        def key(self, name: str) -> str:
            return f"{self.job_id}:clips:3:{name}"

    job = await paid.job()
    attempt = Attempt(job, uuid.uuid4())
    db = paid.container.db()
    async with paid.calls.admit(
        job, CLIPS, provider="openai", model=MODEL, estimate=ESTIMATE, api_key="sk-test", attempt=attempt
    ) as call:
        held = await db.fetchval(
            "select attempt_id from job_cost_reservations where id = $1 and status = 'active'", call.reservation.id
        )
        assert attempt.attempt_id == held
        await call.settle({"input_tokens": 10, "output_tokens": 10})
    async with paid.calls.admit(job, CLIPS, provider="openai", model=MODEL, estimate=ESTIMATE) as call:
        assert await db.fetchval(
            "select attempt_id is null from job_cost_reservations where id = $1", call.reservation.id
        )


# --- the limiter's store down: fail closed ---------------------------------------------------------------------


@pytest.fixture
async def private(
    redis_server: Callable[[], RedisServer], make_settings: MakeSettings, pg_dsn: str, make_user: MakeUser
) -> AsyncIterator[tuple[Paid, RedisServer]]:
    server = redis_server()
    settings = make_settings(
        database_url=pg_dsn,
        redis_url=server.url,
        redis_operation_timeout_seconds=0.5,
        paid_limits={f"openai/{MODEL}": RateLimits(rpm=100, concurrency=5)},
    )
    async with opened(settings, make_user) as env:
        yield env, server


async def admit_once(env: Paid, job: uuid.UUID) -> None:
    async with env.calls.admit(job, CLIPS, provider="openai", model=MODEL, estimate=ESTIMATE, api_key="k") as call:
        await call.settle({"input_tokens": 10, "output_tokens": 10})


@pytest.mark.parametrize("fault", ["killed", "frozen"])
async def test_no_call_is_admitted_while_the_store_is_down(private: tuple[Paid, RedisServer], fault: str) -> None:
    env, server = private
    job = await env.job()
    await admit_once(env, job)
    if fault == "killed":
        server.kill()
    else:
        server.freeze()
    started = time.monotonic()
    with pytest.raises(RateLimiterUnavailableError):
        await admit_once(env, job)
    assert time.monotonic() - started < 2.0
    assert 0 == await env.active_reservations(job)
    assert 1 == len(await env.container.cost_tracker().list_costs(job))
    if fault == "frozen":
        server.thaw()
        await asyncio.sleep(0.6)
        await admit_once(env, job)
        assert 2 == len(await env.container.cost_tracker().list_costs(job))


async def test_a_store_that_comes_back_empty_holds_calls_for_a_window(private: tuple[Paid, RedisServer]) -> None:
    env, server = private
    job = await env.job()
    await admit_once(env, job)
    server.kill()
    server.start()  # same port, no data: the last minute's grants are lost
    scope = RateScope("openai", MODEL, key_id("k"))
    wait = None
    for _ in range(20):
        with contextlib.suppress(RateLimiterUnavailableError):
            wait = await env.calls.limiter.try_acquire(scope, str(uuid.uuid4()), 1, RateLimits(rpm=100))
            break
        await asyncio.sleep(0.2)
    assert isinstance(wait, float)
    assert wait > 55_000


async def test_a_grant_whose_answer_was_lost_is_given_back_once_the_store_answers(
    private: tuple[Paid, RedisServer],
) -> None:
    env, server = private
    limiter = env.calls.limiter
    scope = RateScope("openai", MODEL, "lost-answer")
    limits = RateLimits(rpm=2, concurrency=1)
    server.freeze()
    with pytest.raises(RateLimiterUnavailableError):
        await limiter.try_acquire(scope, "lost", 1, limits)  # queued in the frozen server: runs when it thaws
    server.thaw()
    await asyncio.sleep(0.2)
    grant = await limiter.try_acquire(scope, "next", 1, limits)  # the concurrency slot is free: the lost one went
    assert not isinstance(grant, float)
    keys = scope.keys(env.container.settings().paid_key_prefix)
    raw = env.container.redis().raw
    assert [grant.request_id.encode()] == await raw.zrange(keys[0], 0, -1)
    assert [grant.request_id.encode()] == await raw.zrange(keys[2], 0, -1)


async def test_a_long_call_keeps_its_concurrency_lease(paid: Paid) -> None:
    """The lease is renewed every third of its length while the block runs; another caller waits meanwhile."""
    paid.calls.limiter = RateLimiter(
        paid.container.redis(), prefix=paid.container.settings().paid_key_prefix, lease_seconds=1.2
    )
    job = await paid.job()
    async with paid.calls.admit(
        job, CLIPS, provider="openai", model=MODEL, estimate=ESTIMATE, api_key="sk-test"
    ) as call:
        await asyncio.sleep(1.6)  # longer than the lease: only the renewals keep it
        assert 1 == await paid.leases()
        await call.settle({"input_tokens": 5, "output_tokens": 5})
    assert 0 == await paid.leases()


async def test_a_replicate_prediction_is_settled_from_predict_time(paid: Paid) -> None:
    job = await paid.job()
    prediction = {"status": "succeeded", "metrics": {"predict_time": 12.5}}
    async with paid.calls.admit(
        job, CLIPS, provider="replicate", model="meta/musicgen", estimate={"predict_time_seconds": 60}
    ) as call:
        cost = await call.settle_replicate(prediction)
        again = await call.settle_replicate(prediction)  # settled once: the same row
    assert cost.id == again.id
    assert Decimal("0.0122") == cost.cost  # 12.5 s x $0.000975 = $0.0121875, rounded up
    usage = await paid.calls.usage_of(cost.id)
    assert usage is not None
    assert ("0.0121875", "replicate-2026-12-01") == (usage["cost"], usage["price_version"])


async def test_track_usage_without_a_key_records_each_call(paid: Paid) -> None:
    job = await paid.job()
    for _ in range(2):
        await paid.calls.track_usage(job, CLIPS, provider="openai", model=MODEL, usage={"input_tokens": 100})
    assert 2 == len(await paid.container.cost_tracker().list_costs(job))


async def test_a_429_is_shared_even_when_the_store_cannot_take_it(private: tuple[Paid, RedisServer]) -> None:
    """slow_down and release never raise over the block's own error: the store's trouble is logged."""
    env, server = private
    job = await env.job()
    response = httpx.Response(429, request=httpx.Request("POST", "https://x"))
    with pytest.raises(ProviderRateLimitedError):
        async with env.calls.admit(job, CLIPS, provider="openai", model=MODEL, estimate=ESTIMATE, api_key="k"):
            server.kill()
            raise httpx.HTTPStatusError("429", request=response.request, response=response)
    assert 0 == await env.active_reservations(job)


def test_limits_come_from_the_settings_the_model_first(make_settings: MakeSettings) -> None:
    settings = make_settings(paid_limits={"openai": RateLimits(rps=3), "openai/gpt-4o": RateLimits(tpm=1000)})
    assert RateLimits(rpm=500, tpm=1000, rps=3, concurrency=50) == settings.rate_limits("openai", "gpt-4o")
    assert RateLimits(rpm=600, rps=10, concurrency=10) == settings.rate_limits("replicate", "meta/musicgen")
    assert RateLimits() == settings.rate_limits("elsewhere", "x")


async def test_a_killed_workers_slot_and_reservation_run_out(paid: Paid, pg_dsn: str, redis_prefix: str) -> None:
    """SIGKILL in the middle of a call: its concurrency lease (1 s) and its reservation (TTL 2 s) stop counting."""
    job = await paid.job(Decimal(1))
    config = {"dsn": pg_dsn, "redis": "redis://127.0.0.1:6379/0", "prefix": redis_prefix, "job": str(job)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.paid_saturation_parts", "die", json.dumps(config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert worker.stdout is not None
        line = await asyncio.to_thread(worker.stdout.readline)
        assert b"admitted\n" == line
        assert 1 == await paid.active_reservations(job)
        assert 1 == await paid.leases(api_key="sk-dies")
        worker.send_signal(signal.SIGKILL)
        await asyncio.to_thread(worker.wait)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()
    await asyncio.sleep(2.2)
    budget = await paid.container.cost_tracker().get_budget(job)
    assert Decimal(0) == budget.reserved
    limiter = RateLimiter(paid.container.redis(), prefix=redis_prefix, lease_seconds=1)
    grant = await limiter.try_acquire(
        RateScope("openai", MODEL, key_id("sk-dies")), "next", 1, RateLimits(concurrency=1)
    )
    assert not isinstance(grant, float)
