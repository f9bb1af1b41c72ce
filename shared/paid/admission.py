"""Admit a paid call in one step: budget reservation, rate slot and concurrency slot, given back together.

::

    async with paid.admit(job_id, StageName.CLIP_GENERATION, provider="replicate", model="meta/musicgen",
                          api_key=key, estimate={"predict_time_seconds": 120}, attempt=ctx) as call:
        prediction = await run_the_prediction(...)       # a 429/503 raised here becomes a RetryableError
        await call.settle_replicate(prediction)           # cost from metrics.predict_time, recorded once

Admission is two round trips: one Lua script in Redis (rate + concurrency, all or nothing) and one statement in
PostgreSQL (``CostTracker.reserve``, the budget), the budget first so that the rate slot is taken right before
the call. Leaving the block is two more: the commit, with the priced usage written on the cost row in the same
statement (:meth:`PaidCall.settle`), or the release; and the limiter's give-back (the concurrency lease freed,
the tokens-per-minute weight reconciled with the real usage). The limiter's scripts of one process share round
trips: what its callers ask while a batch is in flight goes in the next one (:class:`RateLimiter`), so under
load the Redis side costs a fraction of a round trip per call. A budget refusal takes no rate slot at all.
Cancellation at any await point leaves no hold (the commit or release runs to its end, the give-back is queued
before its first await), and a worker that dies leaves leases that run out (concurrency:
``PAID_CONCURRENCY_LEASE_SECONDS``, budget: ``RESERVATION_TTL_SECONDS``). A provider refusal raised in the
block (HTTP 429/503, the SDKs' rate-limit errors) leaves it as a RetryableError with ``retry_after``, and a
429 slows the shared rate for every process.

The budget and the rate slot are asked one after the other, not at once (``asyncio.gather``): at once would
save one round trip of latency per call, nothing of the CPU that bounds throughput, and would take a rate slot
before the budget is known, so a refused budget would spend a slot until its give-back and widen the delay
between the grant and the call's arrival at the provider (the jitter that made the saturation test meet 429s).

With a stage attempt (``attempt=ctx``) the limiter's request id derives from ``ctx.attempt_id`` (uuid5 with the
effect's ``name``), the reservation belongs to the attempt (``job_cost_reservations.attempt_id``, so the stage
engine releases a taken-over attempt's holds when another worker claims the item), and
:meth:`PaidCalls.track_usage` keys its cost row with ``ctx.key(name)``, the same across attempts, so a re-run
never records it twice.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from uuid import UUID

from shared.cost_tracking import CostLedger, Reservation
from shared.models import JobCost, StageName
from shared.paid.errors import ProviderRateLimitedError, provider_error
from shared.paid.limiter import Grant, RateLimiter, RateScope, key_id
from shared.paid.pricing import OpenAIFlavor, PriceCatalogue, PricedUsage, Usage
from shared.telemetry import PaidCallSpan, instruments, paid_call_span, span

if TYPE_CHECKING:
    from pydantic import SecretStr

    from shared.config import RateLimits, Settings
    from shared.database import Database

__all__ = ["PaidCall", "PaidCalls", "StageAttemptLike"]

_log = logging.getLogger("shared.paid.admission")
_RECORD_USAGE = "update public.job_costs set usage = $2::jsonb where id = $1 and usage is null"


@runtime_checkable
class StageAttemptLike(Protocol):  # pragma: no mutate block
    """What admission reads of a stage attempt (shared.stages.StageContext has it)."""

    job_id: UUID
    attempt_id: UUID

    def key(self, name: str) -> str: ...


class PaidCall:
    """One admitted call: settle it with the provider's usage before leaving the block."""

    def __init__(
        self,
        calls: PaidCalls,
        *,
        grant: Grant,
        reservation: Reservation,
        provider: str,
        model: str,
        hardware: str | None,
    ) -> None:
        self._calls = calls
        self.grant = grant
        self.reservation = reservation
        self.provider = provider
        self.model = model
        self._hardware = hardware
        self.priced: PricedUsage | None = None
        self.cost: JobCost | None = None
        self.traced: PaidCallSpan | None = None  # the call's span (shared.telemetry), given the usage when settled

    @property
    def granted_at_ms(self) -> int:
        """Return when the slot was granted, in milliseconds of the limiter's (Redis's) clock."""
        return self.grant.granted_at_ms

    async def settle(self, usage: Usage) -> JobCost:
        """Price ``usage`` (genai-prices' keys, or ``predict_time_seconds``) and commit it; once only."""
        return await self._commit(
            self._calls.catalogue.price(self.provider, self.model, usage, hardware=self._hardware)
        )

    async def settle_openai(self, payload: Mapping[str, Any], *, flavor: OpenAIFlavor = "chat") -> JobCost:
        """Price an OpenAI answer's own ``usage`` and commit it."""
        return await self._commit(self._calls.catalogue.price_openai(payload, flavor=flavor, model=self.model))

    async def settle_replicate(self, prediction: Mapping[str, Any]) -> JobCost:
        """Price a finished Replicate prediction from ``metrics.predict_time`` and commit it."""
        priced = self._calls.catalogue.price_replicate({**prediction, "model": self.model}, hardware=self._hardware)
        return await self._commit(priced)

    def priced_estimate(self, estimate: Usage) -> PricedUsage:
        """Price ``estimate`` as this call's catalogue entry does (what its reservation held)."""
        return self._calls.catalogue.price(self.provider, self.model, estimate, hardware=self._hardware)

    async def settle_estimate(self, estimate: Usage) -> JobCost:
        """Record the estimate as the cost of a call that went out but whose usage will never be known.

        For a call the provider bills that nobody will settle (its worker was stopped because the job failed):
        the money is recorded at the most the call could cost, never released unrecorded.
        """
        return await self._commit(self.priced_estimate(estimate))

    async def _commit(self, priced: PricedUsage) -> JobCost:
        if self.cost is not None:
            return self.cost
        self.priced = priced
        if self.traced is not None:
            self.traced.usage(priced.units, priced.cost)
        # The priced usage rides in the commit's own statement: one round trip, and never a cost row without it.
        cost = await self.reservation.commit(priced.cost, usage=priced.metadata())
        self.cost = cost
        return cost


class PaidCalls:
    """Admission, pricing and usage records for paid calls (``Container.paid_calls``)."""

    def __init__(
        self,
        *,
        limiter: RateLimiter,
        ledger: CostLedger,
        db: Database | None,
        catalogue: PriceCatalogue,
        settings: Settings,
    ) -> None:
        self.limiter = limiter
        self.ledger = ledger
        self.catalogue = catalogue
        # None, or a stand-in that is falsy (the fakes' NoDatabase): the priced usage is then not recorded.
        self._db = db or None
        self._settings = settings
        # Per process: the limits of each provider/model and the price of each estimate do not change while it runs.
        self._limits: dict[tuple[str, str], RateLimits] = {}
        self._estimates: dict[tuple[str, str, str | None, tuple[tuple[str, Any], ...]], PricedUsage] = {}

    @contextlib.asynccontextmanager
    async def admit(
        self,
        job_id: UUID,
        stage: StageName,
        *,
        provider: str,
        model: str,
        estimate: Usage,
        api_key: str | SecretStr | None = None,
        hardware: str | None = None,
        attempt: StageAttemptLike | None = None,
        name: str = "call",
        max_wait: float | None = None,
    ) -> AsyncIterator[PaidCall]:
        """Hold the budget estimate, a rate slot and a concurrency slot for the block; give all back after it.

        ``estimate`` is the most the call may use (``{"input_tokens": 800, "output_tokens": 400}``,
        ``{"predict_time_seconds": 120}``), priced by the catalogue for the reservation and weighed against the
        tokens-per-minute limit.

        Raises:
            UnknownPriceError: the catalogue cannot price the model or a unit (before anything is held).
            RateLimitWaitError: no slot within ``max_wait`` (PAID_ADMISSION_MAX_WAIT_SECONDS).
            RateLimiterUnavailableError: the limiter's Redis is down (fail closed).
            BudgetExceededError: the estimate does not fit the job's budget.
            ProviderRateLimitedError, ProviderOverloadedError: the provider refused inside the block.
        """
        priced = self._estimate(provider, model, estimate, hardware)
        secret = api_key.get_secret_value() if api_key is not None and not isinstance(api_key, str) else api_key
        scope = RateScope(provider, model, key_id(secret))
        request_id = str(uuid.uuid5(attempt.attempt_id, name) if attempt is not None else uuid.uuid4())
        wait = self._settings.paid_admission_max_wait_seconds if max_wait is None else max_wait
        limits = self._limits.get((provider, model))
        if limits is None:
            limits = self._limits[provider, model] = self._settings.rate_limits(provider, model)
        # The budget first, the rate slot last: the slot is taken right before the call is sent, so the delay
        # between the grant and the call's arrival at the provider (the window's jitter) is the smallest.
        with paid_call_span(provider=provider, model=model) as traced:
            attempt_id = attempt.attempt_id if attempt is not None else None
            async with self.ledger.reserve(
                job_id, stage, f"{provider}/{model}", priced.cost, attempt_id=attempt_id
            ) as reservation:
                waiting = time.perf_counter()
                with span("paid.rate_slot"):
                    grant = await self.limiter.acquire(scope, request_id, priced.tokens, limits, max_wait=wait)
                metrics = instruments()
                labels = {"provider": provider, "model": model}
                if metrics is not None:
                    metrics.rate_limit_wait.record(time.perf_counter() - waiting, labels)
                    if grant.concurrency:
                        metrics.concurrency_in_use.add(1, labels)
                call = PaidCall(
                    self, grant=grant, reservation=reservation, provider=provider, model=model, hardware=hardware
                )
                call.traced = traced
                self.limiter.keep(grant)  # its concurrency lease renewed while the call runs
                try:
                    yield call
                except Exception as exc:
                    mapped = provider_error(exc, provider=provider)
                    if mapped is None:
                        raise
                    if isinstance(mapped, ProviderRateLimitedError):
                        await self.limiter.slow_down(scope, mapped.retry_after)
                    raise mapped from exc
                finally:
                    if metrics is not None and grant.concurrency:
                        metrics.concurrency_in_use.add(-1, labels)
                    # The lease freed; the token weight reconciled with the real usage (the estimate if unsettled).
                    # Queued before release's first await: a cancellation here never loses it.
                    tokens = call.priced.tokens if call.priced is not None else None
                    await self.limiter.release(grant, tokens=tokens)

    def _estimate(self, provider: str, model: str, estimate: Usage, hardware: str | None) -> PricedUsage:
        key = (provider, model, hardware, tuple(sorted(estimate.items())))
        priced = self._estimates.get(key)
        if priced is None:
            if len(self._estimates) > 1024:
                self._estimates.clear()
            priced = self._estimates[key] = self.catalogue.price(provider, model, estimate, hardware=hardware)
        return priced

    async def track_usage(
        self,
        job_id: UUID,
        stage: StageName,
        *,
        provider: str,
        model: str,
        usage: Usage,
        hardware: str | None = None,
        idempotency_key: str | None = None,
        attempt: StageAttemptLike | None = None,
        name: str = "call",
    ) -> JobCost:
        """Record a call's cost priced from its usage (no admission); ``attempt.key(name)`` keys it once."""
        priced = self.catalogue.price(provider, model, usage, hardware=hardware)
        key = idempotency_key if idempotency_key is not None else (attempt.key(name) if attempt is not None else None)
        cost = await self.ledger.track_cost(job_id, stage, f"{provider}/{model}", priced.cost, idempotency_key=key)
        await self.record_usage(cost, priced)
        return cost

    async def record_usage(self, cost: JobCost, priced: PricedUsage) -> None:
        """Write the priced usage on the cost row (once; a re-send changes nothing)."""
        if self._db is None:
            return
        await self._db.execute(_RECORD_USAGE, cost.id, priced.metadata())

    async def usage_of(self, cost_id: UUID) -> dict[str, Any] | None:
        """Return the priced usage recorded on a cost row, or None."""
        if self._db is None:
            return None
        usage: dict[str, Any] | None = await self._db.fetchval(
            "select usage from public.job_costs where id = $1", cost_id
        )
        return usage
