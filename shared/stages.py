"""Stages that survive their workers: handlers a worker runs from pgqueuer's queue, state in ``stage_runs``.

A stage item is one unit of work with an identity, ``(job, stage, item)``: clip 17 of 30 is item ``"17"`` of
``clip_generation``. A module declares handlers; ``python -m shared worker <module>`` runs them::

    stages = Stages()

    @stages.handler("clip_generation", concurrency=4, max_attempts=3)
    async def clip(ctx: StageContext) -> dict[str, Any]:
        prediction = await ctx.checkpoint("prediction", start_prediction)   # kept before it is awaited
        ...
        return {"url": url}                                                   # the item's result

    await queue.submit(job_id, "clip_generation", items={str(n): {"scene": n} for n in range(30)},
                       then="composition")                                   # composition once, after all 30

pgqueuer (docs/decisions/queue-engine.md) delivers: a worker picks a queued delivery, and a delivery whose
worker stopped beating is picked again by another after the heartbeat timeout. What a stage *is* lives in
``stage_runs`` and moves forward by one statement per change, fenced on the attempt that holds it
(``attempt_id``): a claim starts a new attempt only on a queued item or a running one whose heartbeat is stale,
so of two deliveries one wins; a completed item is never run again; a paused worker that wakes after its item
was taken over can no longer complete it, checkpoint it or requeue it.

Failure policy: a handler's :class:`~shared.errors.RetryableError` (or an unexpected exception) runs the item
again after ``retry_after`` or a doubling delay, until ``max_attempts`` claims are spent; a worker that dies
counts as an attempt too. Any other :class:`~shared.errors.PipelineError` (a refused input, a budget that ran
out) fails the item and the job at once with its message. A failed job stops its other items: queued ones are
cancelled and a running one is cancelled by its heartbeat within ``STAGE_BEAT_SECONDS`` (0.5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import random
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from shared.config import Settings
from shared.cost_tracking import _to_the_end
from shared.database import DatabaseClient
from shared.errors import (
    BudgetExceededError,
    ConfigError,
    InvalidStateError,
    PipelineError,
    RetryableError,
    StageConflictError,
)

if TYPE_CHECKING:
    from pydantic import SecretStr

    from shared.container import Container
    from shared.models import JobCost, StageName
    from shared.paid.admission import PaidCall, PaidCalls
    from shared.paid.pricing import PricedUsage, Usage

__all__ = ["AttemptPaidCalls", "StageContext", "StageQueue", "StageWorker", "Stages", "load_stages", "run_worker"]

_log = logging.getLogger("shared.stages")
T = TypeVar("T")
A = TypeVar("A")
R = TypeVar("R")
Handler = Callable[["StageContext"], Coroutine[Any, Any, Mapping[str, Any] | None]]
STAGE_BEAT_SECONDS = 0.5
_ACTIVE = ["queued", "processing"]
_GOES_ON = [*_ACTIVE, "completed"]  # a job its items may go on running for (see _BEAT)

# One statement: the items, their group (the fan-in count) and a pgqueuer delivery each, or nothing for items
# already submitted (a resent submit adds nothing).
_SUBMIT = """
with runs as (
    insert into public.stage_runs (job_id, stage, item, payload, max_attempts, trace_context)
    select $1, $2, t.item, t.payload, $7, $9
      from unnest($3::text[], $4::jsonb[]) as t(item, payload)
    on conflict (job_id, stage, item) do nothing
    returning id, stage
),
g as (
    -- The fan-in counts the items this submit added: a later submit of more items to the stage raises it.
    insert into public.stage_groups as g (job_id, stage, expected, then_stage, then_payload, then_max_attempts)
    select $1, $2, count(*), $5, $6, $8 from runs having count(*) > 0
    on conflict (job_id, stage) do update set expected = g.expected + excluded.expected
),
delivered as (
    select public.stage_deliver(array(select id from runs), array(select stage from runs), now()) as n
)
select id from runs, delivered
"""
# Claims and completions go in batches (migration 20261206001600_stage_batches.sql): see _Coalesced.
_CLAIM = "select * from public.stage_claim($1::uuid[], $2, $3::interval, $4::text[])"
_COMPLETE = "select public.stage_complete($1::uuid[], $2::uuid[], $3::jsonb[], $4::jsonb[]) as id"
# Beat for every item the worker holds; say of each whether it is still ours (else another attempt took it
# over) and whether its job goes on. A job that completed goes on for the items still running (its last stage
# may complete it before its own item completes); a failed one stops them.
_BEAT = """
with held as (
    select * from unnest($1::uuid[], $2::uuid[]) as h(id, attempt_id)
),
beat as (
    update public.stage_runs r set heartbeat_at = now()
      from held h
     where r.id = h.id and r.attempt_id = h.attempt_id and r.status = 'running'
       and exists (select from public.jobs j where j.id = r.job_id and j.status = any($3::text[]))
    returning r.id
)
select h.id, b.id is not null as alive, r.attempt_id = h.attempt_id and r.status = 'running' as ours
  from held h
  left join beat b on b.id = h.id
  left join public.stage_runs r on r.id = h.id
"""
_REQUEUE = """
with again as (
    update public.stage_runs
       set status = 'queued', error = $3, attempt = attempt - $5::integer, heartbeat_at = null
     where id = $1 and attempt_id = $2 and status = 'running'
    returning id, stage
)
select public.stage_deliver(array(select id from again), array(select stage from again), now() + $4::interval)
"""
_REDELIVER = "select public.stage_deliver(array[$1::uuid], array[$2::text], now())"
_DROP = """
with r as (
    select r.id, r.stage, r.status, r.heartbeat_at, r.attempt_id, j.status = any($2::text[]) as active,
           r.status = 'running' and r.heartbeat_at < now() - $3::interval as stale
      from public.stage_runs r join public.jobs j on j.id = r.job_id
     where r.id = $1
),
ended as (
    -- queued, or held by an attempt whose worker is gone (stale): nobody else would end it
    update public.stage_runs s set status = 'cancelled', error = 'the job ended', finished_at = now()
      from r where s.id = r.id and not r.active and (s.status = 'queued' or r.stale)
    returning s.id
),
owed as (
    select public.stage_record_owed(array(select id from ended))
        + (select coalesce(sum(public.stage_settle_dead_attempt(r.id, r.attempt_id)), 0)
             from r where r.stale and not r.active) as n
),
held as (
    -- held by an attempt that may be alive: look again when its heartbeat would be stale
    select * from r where r.status = 'running' and not (r.stale and not r.active)
),
delivered as (
    select public.stage_deliver(
        array(select id from held), array(select stage from held),
        greatest(now(), (select heartbeat_at from held) + $3::interval + interval '50 milliseconds')
    ) as n
)
select * from owed, delivered
"""
# An item that ends without running again records the paid calls it still owes (stage_record_owed).
_END = """
with ended as (
    update public.stage_runs set status = $3, error = $4, finished_at = now()
     where id = $1 and (attempt_id = $2 or $2 is null) and status in ('queued', 'running')
    returning id
)
select public.stage_record_owed(array(select id from ended)) as owed, (select count(*) from ended) as ended
"""
_CANCEL_QUEUED = """
with ended as (
    update public.stage_runs set status = 'cancelled', error = $2, finished_at = now()
     where job_id = $1 and status = 'queued'
    returning id
)
select public.stage_record_owed(array(select id from ended))
"""


class _Coalesced(Generic[A, R]):
    """Send the requests that arrive while the previous statement is in flight as one statement (a group commit).

    An idle worker sends each request at once (one loop turn later); a busy one sends one statement per batch
    instead of one per item, which is what lets the engine keep up with pgqueuer's own batched dequeue. A failed
    statement fails every request of its batch with the same error.
    """

    def __init__(self, send: Callable[[list[A]], Awaitable[list[R]]]) -> None:
        self._send = send
        self._pending: list[tuple[A, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, request: A) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self._task is None:
            self._task = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    answers = await self._send([request for request, _ in batch])
                except Exception as exc:  # noqa: BLE001 - handed to every request of the batch, which raises it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._task = None
            for _, future in self._pending:  # cancelled while sending: the requests left are not sent
                future.cancel()
            self._pending = []


@dataclass(frozen=True, slots=True)
class _Handler:
    stage: str
    run: Handler
    concurrency: int
    max_attempts: int


class Stages:
    """A module's stage handlers: ``@stages.handler("clip_generation")``; a worker runs them."""

    def __init__(self, *, container: type[Container] | None = None) -> None:
        """``container``: the module's Container subclass the worker builds (default: shared's own Container)."""
        self.handlers: dict[str, _Handler] = {}
        self.container = container

    def handler(self, stage: str, *, concurrency: int = 0, max_attempts: int = 3) -> Callable[[Handler], Handler]:
        """Register ``fn`` for ``stage``; ``concurrency`` caps it across all workers (0: no cap)."""
        if not 1 <= max_attempts <= 100:
            msg = f"max_attempts must be between 1 and 100, not {max_attempts}"
            raise ConfigError(msg)

        def register(fn: Handler) -> Handler:
            if stage in self.handlers:
                msg = f"stage {stage!r} has two handlers; give each stage one"
                raise ConfigError(msg)
            self.handlers[stage] = _Handler(stage, fn, concurrency, max_attempts)
            return fn

        return register


@dataclass
class _Next:
    stage: str
    items: dict[str, Mapping[str, Any]]
    then: str | None
    then_payload: Mapping[str, Any] | None


def submitted_items(
    job_id: UUID,
    stage: str,
    *,
    payload: Mapping[str, Any] | None,
    items: Mapping[str, Mapping[str, Any]] | None,
    max_attempts: int | None,
) -> dict[str, Mapping[str, Any]]:
    """Check a submit's arguments (the queue's and its fake's one rule) and return its items by key."""
    if max_attempts is not None and not 1 <= max_attempts <= 100:
        msg = f"max_attempts must be between 1 and 100, not {max_attempts}"
        raise ConfigError(msg)
    if items is not None and payload is not None:
        msg = "give either payload (one item) or items (a fan-out), not both"
        raise InvalidStateError(msg, job_id=job_id)
    chosen = dict(items) if items is not None else {"": payload or {}}
    if not chosen:
        msg = f"stage {stage} was submitted with no items; give at least one"
        raise InvalidStateError(msg, job_id=job_id)
    return chosen


class StageQueue:
    """Submit stage items and stop a job's stages (``Container.stages``)."""

    def __init__(self, db: DatabaseClient) -> None:
        self._db = db

    async def submit(
        self,
        job_id: UUID,
        stage: str,
        *,
        payload: Mapping[str, Any] | None = None,
        items: Mapping[str, Mapping[str, Any]] | None = None,
        then: str | None = None,
        then_payload: Mapping[str, Any] | None = None,
        max_attempts: int | None = None,
    ) -> list[UUID]:
        """Queue ``stage`` for the job: one item (``payload``) or many (``items``); ``then`` runs once after all.

        ``max_attempts`` overrides the handler's own (``@stages.handler(max_attempts=)``) for these items and
        their ``then`` stage. Submitting the same items again adds nothing (the ids returned are the new items).
        """
        chosen = submitted_items(job_id, stage, payload=payload, items=items, max_attempts=max_attempts)
        from shared import telemetry  # noqa: PLC0415 - optional extra, imported when used

        rows = await self._db.fetch(
            _SUBMIT,
            job_id,
            stage,
            list(chosen),
            [dict(p) for p in chosen.values()],
            then,
            dict(then_payload) if then_payload is not None else None,
            max_attempts,
            max_attempts,
            telemetry.inject_trace_context(),
        )
        return [row["id"] for row in rows]

    async def cancel_job(self, job_id: UUID, reason: str) -> None:
        """Fail the job with ``reason``: queued items are cancelled, running ones stop within a second."""
        async with self._db.transaction():
            await self._db.execute(
                "update public.jobs set status = 'failed', error_message = $2, estimated_remaining = null"
                " where id = $1 and status = any($3::text[])",
                job_id,
                reason,
                _ACTIVE,
            )
            await self._db.execute(_CANCEL_QUEUED, job_id, reason)


class _Services:
    """What a worker's handlers share: its container, and the paid-call admission built once from it."""

    def __init__(self, container: Container | None) -> None:
        self.container = container
        self._paid: PaidCalls | None = None

    async def paid_calls(self) -> PaidCalls:
        if self._paid is None:
            if self.container is None:
                msg = (
                    "ctx.paid needs the worker's container: run the handler with `python -m shared worker` or "
                    "give StageWorker a container"
                )
                raise ConfigError(msg)
            from shared.lifecycle import resolve  # noqa: PLC0415

            self._paid = await resolve(self.container.paid_calls)
        return self._paid


def _recorded_call(calls: PaidCalls, provider: str, model: str, hardware: str | None, cost: JobCost) -> PaidCall:
    """Return a call an earlier attempt recorded at its estimate: settling it prices the usage, records nothing."""
    from shared.paid.admission import PaidCall  # noqa: PLC0415 - the paid imports, when a handler pays

    class RecordedCall(PaidCall):
        async def _commit(self, priced: PricedUsage) -> JobCost:
            self.priced = priced
            return cost

    call = RecordedCall.__new__(RecordedCall)  # nothing is held: no grant, no reservation
    call._calls = calls
    call.provider = provider
    call.model = model
    call._hardware = hardware
    call.priced = None
    call.cost = cost
    call.traced = None
    return call


class AttemptPaidCalls:
    """``ctx.paid``: paid-call admission bound to the stage attempt (job, stage and effect keys filled in)."""

    def __init__(self, ctx: StageContext) -> None:
        self._ctx = ctx

    def _stage(self) -> StageName:
        from shared.models import StageName  # noqa: PLC0415

        try:
            return StageName(self._ctx.stage)
        except ValueError:
            msg = (
                f"stage {self._ctx.stage!r} is not one of the pipeline's stages ({', '.join(StageName)}); the cost "
                "ledger records costs per pipeline stage, so name the handler's stage after one"
            )
            raise ConfigError(msg) from None

    @contextlib.asynccontextmanager
    async def admit(
        self,
        *,
        provider: str,
        model: str,
        estimate: Usage,
        name: str = "call",
        api_key: str | SecretStr | None = None,
        hardware: str | None = None,
        max_wait: float | None = None,
    ) -> AsyncIterator[PaidCall]:
        """Admit one paid call of this attempt (:meth:`shared.paid.PaidCalls.admit` with ``attempt=ctx``).

        ``name`` tells the attempt's paid calls apart (``f"clip-{n}"``): the limiter's request id and the
        reservation belong to the attempt, so a re-run after a worker's death never holds the same money twice.

        The call is recorded once for the item, whatever its attempts do (see ``_after``): a settled call is not
        recorded again by a later attempt, and one whose handle went out (``ctx.checkpoint`` inside the block)
        but was not settled is recorded at its estimate (``PaidCall.settle_estimate``), never released unrecorded.
        """
        stage = self._stage()
        calls = await self._ctx._services.paid_calls()
        ctx = self._ctx
        recorded = await ctx._kept(f"paid:{name}")
        if recorded is not None:  # an earlier attempt recorded this call: resume it, hold and record nothing
            from shared.models import JobCost  # noqa: PLC0415

            kept = {field: recorded[field] for field in JobCost.model_fields if field in recorded}
            yield _recorded_call(calls, provider, model, hardware, JobCost.model_validate(kept))
            return
        before = ctx._handles_out
        async with calls.admit(
            ctx.job_id,
            stage,
            provider=provider,
            model=model,
            estimate=estimate,
            api_key=api_key,
            hardware=hardware,
            attempt=ctx,
            name=name,
            max_wait=max_wait,
        ) as call:
            try:
                yield call
            except (Exception, asyncio.CancelledError) as exc:
                out = ctx._handles_out > before
                # Taken over or drained, the item runs again at once and its next attempt settles the call.
                again = isinstance(exc, asyncio.CancelledError) and ctx._stop_reason in ("taken over", "drain")
                await _to_the_end(self._after(call, estimate, name, out=out, again=again))
                raise
            await _to_the_end(self._after(call, estimate, name, out=ctx._handles_out > before, again=False))

    async def _after(self, call: PaidCall, estimate: Usage, name: str, *, out: bool, again: bool) -> None:
        """Leave what the next attempt (or the engine, when there is none) needs so the call is recorded once.

        Settled: ``paid:<name>`` keeps its cost row, so a later attempt resumes the handle without recording the
        call again. Out but unsettled (a 429 while polling, a failed job, a handler that forgot to settle): the
        estimate is recorded at once, from the hold the budget kept for it (never past the budget, never lost;
        at most the estimate where the usage would have said less). Taken over or drained, the item runs again
        at once and the next attempt settles the real usage; ``owed:<name>`` keeps the estimate in case none
        comes (the job fails first), and the engine records it then (``stage_record_owed``).
        """
        ctx = self._ctx
        if call.cost is None and out and not again:
            _log.warning(
                "a paid call of stage %s item %r went out but was not settled: it is recorded at its estimate",
                ctx.stage,
                ctx.item,
            )
            await call.settle_estimate(estimate)
        if call.cost is not None:
            await ctx._mark(f"paid:{name}", call.cost.model_dump(mode="json"), drop=f"owed:{name}")
        elif out:
            priced = call.priced_estimate(estimate)
            owed = {
                "stage": ctx.stage,
                "api_name": f"{call.provider}/{call.model}",
                "cost": str(priced.cost),
                "usage": priced.metadata(),
            }
            await ctx._mark(f"owed:{name}", owed)

    async def track_usage(
        self, *, provider: str, model: str, usage: Usage, name: str = "call", hardware: str | None = None
    ) -> JobCost:
        """Record a call's cost priced from its usage, once for the item whatever the attempt (``ctx.key(name)``)."""
        stage = self._stage()
        calls = await self._ctx._services.paid_calls()
        return await calls.track_usage(
            self._ctx.job_id,
            stage,
            provider=provider,
            model=model,
            usage=usage,
            hardware=hardware,
            attempt=self._ctx,
            name=name,
        )


class StageContext:
    """What a handler is given: the item's identity and payload, and its effects fenced on this attempt."""

    def __init__(self, db: DatabaseClient, row: Mapping[str, Any], services: _Services | None = None) -> None:
        self._db = db
        self._services = services or _Services(None)
        self.db = db  # the worker's pool, for the handler's own writes (key them with ctx.key)
        self.paid = AttemptPaidCalls(self)
        self._handles_out = 0  # handles kept, resumed or being sent: a paid call the provider bills is out
        self._stop_reason: str | None = None  # why the worker cancels the handler: job ended, taken over, drain
        self.run_id: UUID = row["id"]
        self.job_id: UUID = row["job_id"]
        self.stage: str = row["stage"]
        self.item: str = row["item"]
        self.attempt: int = row["attempt"]
        self.attempt_id: UUID = row["attempt_id"]
        self.payload: dict[str, Any] = row["payload"] or {}
        self._next: list[_Next] = []

    @property
    def container(self) -> Container:
        """The worker's container (the module's subclass when ``Stages(container=...)`` names one)."""
        if self._services.container is None:
            msg = "this StageContext has no container: run it with `python -m shared worker` or give StageWorker one"
            raise ConfigError(msg)
        return self._services.container

    def key(self, name: str) -> str:
        """Return the idempotency key of effect ``name``: the same on every attempt, so a re-run never doubles it."""
        return f"{self.run_id}:{name}"[:200]

    async def checkpoint(self, name: str, start: Callable[[], Awaitable[T]]) -> T:
        """Return what ``start()`` gave on an earlier attempt, or call it once and keep its JSON result first.

        Keep an external call's handle (a Replicate prediction id) before awaiting its result, so a re-run
        resumes it instead of paying again.
        """
        kept = await self._kept(name)
        if kept is not None:
            self._handles_out += 1
            return kept  # type: ignore[no-any-return]  # the pool decodes jsonb
        try:
            value = await start()
        except asyncio.CancelledError:
            self._handles_out += 1  # stopped while it was being sent: the provider may bill it
            raise
        self._handles_out += 1
        if not await self._keep(name, value):
            raise StageConflictError(stage=self.stage, item=self.item, current="taken", job_id=self.job_id)
        return value

    async def _keep(self, name: str, value: Any) -> bool:
        """Keep ``value`` under ``name`` if this attempt still holds the item and nothing is kept there yet."""
        stored = await self._db.fetchval(
            """
            insert into public.stage_checkpoints (run_id, name, value, attempt)
            select id, $2, $3, attempt from public.stage_runs
             where id = $1 and attempt_id = $4 and status = 'running'
            on conflict (run_id, name) do nothing
            returning 1
            """,
            self.run_id,
            name,
            value,
            self.attempt_id,
        )
        return stored is not None

    async def _mark(self, name: str, value: Mapping[str, Any], *, drop: str | None = None) -> None:
        """Keep ``value`` under ``name`` (replacing it), and drop checkpoint ``drop``, in one statement."""
        await self._db.execute(
            """
            with kept as (
                insert into public.stage_checkpoints (run_id, name, value, attempt)
                values ($1, $2, $3, $4)
                on conflict (run_id, name) do update set value = excluded.value, attempt = excluded.attempt
            )
            delete from public.stage_checkpoints where run_id = $1 and name = $5
            """,
            self.run_id,
            name,
            value,
            self.attempt,
            drop,
        )

    async def _kept(self, name: str) -> Any:
        return await self._db.fetchval(
            "select value from public.stage_checkpoints where run_id = $1 and name = $2", self.run_id, name
        )

    async def progress(self, percent: int) -> None:
        """Move the job's progress forward to ``percent`` (never back)."""
        await self._db.execute(
            "update public.jobs set progress = greatest(progress, $2) where id = $1 and status = any($3::text[])",
            self.job_id,
            percent,
            _ACTIVE,
        )

    async def results(self, stage: str) -> dict[str, Any]:
        """Return the results of ``stage``'s completed items by item (the fan-in's input)."""
        rows = await self._db.fetch(
            "select item, result from public.stage_runs where job_id = $1 and stage = $2 and status = 'completed'",
            self.job_id,
            stage,
        )
        return {row["item"]: row["result"] for row in rows}

    def then(
        self,
        stage: str,
        *,
        payload: Mapping[str, Any] | None = None,
        items: Mapping[str, Mapping[str, Any]] | None = None,
        then: str | None = None,
        then_payload: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue ``stage`` in the same transaction that completes this item (nothing is queued if it fails)."""
        chosen = dict(items) if items is not None else {"": payload or {}}
        self._next.append(_Next(stage, chosen, then, then_payload))


@dataclass
class _Running:
    task: asyncio.Task[Mapping[str, Any] | None]
    ctx: StageContext  # its _stop_reason says why the worker cancels it


class StageWorker:
    """Run a module's handlers from pgqueuer's queue with bounded concurrency, heartbeats and a SIGTERM drain."""

    def __init__(
        self,
        stages: Stages,
        *,
        db: DatabaseClient,
        dsn: str,
        statement_cache_size: int,
        heartbeat_interval: float,
        concurrency: int = 4,
        drain_seconds: float = 10.0,
        retry_base_delay: float = 1.0,
        name: str | None = None,
        container: Container | None = None,
    ) -> None:
        self._stages = stages
        self._db = db
        self._services = _Services(container)
        self._queue = StageQueue(db)
        self._dsn = dsn
        self._cache = statement_cache_size
        self._timeout = heartbeat_interval * 1.5
        self._poll = min(1.0, heartbeat_interval / 4)
        self._concurrency = max(1, concurrency)
        # pgqueuer picks up to twice the concurrency (a prefetch, kept alive by its heartbeats); the slots let
        # `concurrency` run at once, so a finished item is followed at once by a picked one, without a poll.
        self._slots = asyncio.Semaphore(self._concurrency)
        self._stopping = False
        self._claim: _Coalesced[UUID, Mapping[str, Any] | None] = _Coalesced(self._claim_batch)
        self._complete_one: _Coalesced[tuple[StageContext, Mapping[str, Any], Any], bool] = _Coalesced(
            self._complete_batch
        )
        self._drain = drain_seconds
        self._base = retry_base_delay
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._running: dict[UUID, _Running] = {}
        self._manager: Any = None

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Take work until :meth:`stop`; then give in-flight items ``drain_seconds`` and requeue the rest."""
        import asyncpg  # noqa: PLC0415
        from pgqueuer import QueueManager  # noqa: PLC0415
        from pgqueuer.adapters.persistence.qb import (  # noqa: PLC0415
            DBSettings,
            QueryBuilderEnvironment,
            QueryQueueBuilder,
            QuerySchedulerBuilder,
        )
        from pgqueuer.adapters.persistence.queries import Queries  # noqa: PLC0415
        from pgqueuer.db import AsyncpgDriver  # noqa: PLC0415
        from pgqueuer.errors import RetryRequested  # noqa: PLC0415
        from pgqueuer.models import Job  # noqa: PLC0415

        connection = await asyncpg.connect(self._dsn, statement_cache_size=self._cache)
        settings = DBSettings(db_schema="pgqueuer")
        queries = Queries(
            AsyncpgDriver(connection),
            qbe=QueryBuilderEnvironment(settings),
            qbq=QueryQueueBuilder(settings),
            qbs=QuerySchedulerBuilder(settings),
        )
        manager = QueueManager(queries)
        self._manager = manager
        for spec in self._stages.handlers.values():

            def bind(spec: _Handler) -> Callable[[Job], Awaitable[None]]:
                async def deliver(job: Job) -> None:
                    run_id = UUID((job.payload or b"").decode())
                    async with self._slots:
                        if self._stopping:  # picked but not started: hand it back for another worker
                            await self._db.execute(_REDELIVER, run_id, spec.stage)
                            return
                        try:
                            await self._deliver(spec, run_id)
                        except Exception as exc:
                            # pgqueuer would record the delivery as failed and delete it: the item, queued or
                            # held by this attempt, would never run again. pgqueuer queues it again instead
                            # (its own connection), due once this attempt's heartbeat is stale.
                            _log.warning("stage %s delivery failed; it comes back", spec.stage, exc_info=True)
                            raise RetryRequested(timedelta(seconds=self._timeout), reason=str(exc)[:200]) from exc

                return deliver

            manager.entrypoint(spec.stage, concurrency_limit=spec.concurrency)(bind(spec))
        if ready is not None:
            ready()
        beat = asyncio.create_task(self._beat(), name=f"stage heartbeats of {self.name}")
        try:
            await manager.run(
                dequeue_timeout=timedelta(seconds=self._poll),
                batch_size=self._concurrency,
                max_concurrent_tasks=2 * self._concurrency,
                heartbeat_timeout=timedelta(seconds=self._timeout),
            )
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            await connection.close()

    def stop(self) -> None:
        """Take no more work; in-flight items get ``drain_seconds``, then go back to the queue."""
        self._stopping = True
        if self._manager is not None:
            self._manager.shutdown.set()
        loop = asyncio.get_running_loop()
        loop.call_later(self._drain, self._requeue_in_flight)

    def _requeue_in_flight(self) -> None:
        for running in self._running.values():
            running.ctx._stop_reason = "drain"
            running.task.cancel()

    async def _deliver(self, spec: _Handler, run_id: UUID) -> None:
        row = await self._claim(run_id)
        if row is None:
            await self._drop(run_id)
            return
        ctx = StageContext(self._db, row, self._services)
        max_attempts = row["max_attempts"] or spec.max_attempts  # the submit's, else the handler's
        if ctx.attempt > max_attempts:
            await self._fail(ctx, f"its worker stopped {ctx.attempt - 1} times (max_attempts={max_attempts})")
            return
        from shared import telemetry  # noqa: PLC0415

        carried = row["trace_context"]
        with telemetry.stage_span(
            job_id=ctx.job_id, stage=ctx.stage, item=ctx.item, attempt=ctx.attempt, trace_context=carried
        ):
            await self._attempt(spec, ctx, max_attempts)

    async def _drop(self, run_id: UUID) -> None:
        """A delivery that claimed nothing: the item is done, its job ended, or another attempt holds it.

        pgqueuer picks a delivery again when its own heartbeat is late, which can be before the item's heartbeat
        in ``stage_runs`` is stale: an item held by an attempt that looks alive keeps a delivery, due when that
        attempt's heartbeat would be stale, so a worker that died just now still has its item run elsewhere.
        """
        await self._db.execute(_DROP, run_id, _ACTIVE, timedelta(seconds=self._timeout))

    async def _attempt(self, spec: _Handler, ctx: StageContext, max_attempts: int) -> None:
        task: asyncio.Task[Mapping[str, Any] | None] = asyncio.create_task(spec.run(ctx))
        running = _Running(task, ctx)
        self._running[ctx.run_id] = running
        try:
            result = await task
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]  # our own task is cancelled
                raise
            if running.ctx._stop_reason == "drain":
                await self._db.execute(_REQUEUE, ctx.run_id, ctx.attempt_id, "the worker shut down", timedelta(0), 1)
            else:
                await self._db.execute(_END, ctx.run_id, ctx.attempt_id, "cancelled", "the job ended")
            return
        except RetryableError as exc:
            await self._retry_or_fail(ctx, exc, max_attempts, exc.retry_after)
            return
        except BudgetExceededError as exc:
            if exc.spent + exc.requested <= exc.limit:  # only other items' holds stand in the way: wait for them
                delay = self._base * (1 + random.random())  # noqa: S311 - jitter, not a secret
                await self._db.execute(
                    _REQUEUE, ctx.run_id, ctx.attempt_id, str(exc)[:1000], timedelta(seconds=delay), 1
                )
            else:
                await self._fail(ctx, str(exc))
            return
        except PipelineError as exc:
            await self._fail(ctx, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - an unexpected error is retried, then fails the job
            _log.warning("stage %s item %r raised", ctx.stage, ctx.item, exc_info=True)
            await self._retry_or_fail(ctx, exc, max_attempts, None)
            return
        finally:
            self._running.pop(ctx.run_id, None)
        await self._complete(ctx, result)

    async def _beat(self) -> None:
        """Beat for every item this worker runs, in one statement; cancel the items it no longer holds."""
        while True:
            await asyncio.sleep(min(STAGE_BEAT_SECONDS, self._timeout / 3))
            held = dict(self._running)
            if not held:
                continue
            try:
                rows = await self._db.fetch(
                    _BEAT, list(held), [running.ctx.attempt_id for running in held.values()], _GOES_ON
                )
            except PipelineError:
                _log.warning("stage heartbeat failed; trying again", exc_info=True)
                continue
            for row in rows:
                running = self._running.get(row["id"])
                # The job ended or another attempt took the item: stop it (unless it finished meanwhile).
                if not row["alive"] and running is not None and running is held[row["id"]]:
                    running.ctx._stop_reason = "job ended" if row["ours"] else "taken over"
                    running.task.cancel()

    async def _claim_batch(self, run_ids: list[UUID]) -> list[Mapping[str, Any] | None]:
        rows = await self._db.fetch(_CLAIM, run_ids, self.name, timedelta(seconds=self._timeout), _ACTIVE)
        claimed = {row["id"]: dict(row) for row in rows}
        return [claimed.get(run_id) for run_id in run_ids]

    async def _complete_batch(self, done: list[tuple[StageContext, Mapping[str, Any], Any]]) -> list[bool]:
        rows = await self._db.fetch(
            _COMPLETE,
            [ctx.run_id for ctx, _, _ in done],
            [ctx.attempt_id for ctx, _, _ in done],
            [result for _, result, _ in done],
            [carried for _, _, carried in done],
        )
        won = {row["id"] for row in rows}
        return [ctx.run_id in won for ctx, _, _ in done]

    async def _complete(self, ctx: StageContext, result: Mapping[str, Any] | None) -> None:
        from shared import telemetry  # noqa: PLC0415 - optional extra, imported when used

        carried = telemetry.inject_trace_context()
        if not ctx._next:  # the common case: the item's completion goes with the others of its batch
            won = await self._complete_one((ctx, dict(result or {}), carried))
        else:  # what the handler queued goes in the completion's own transaction
            async with self._db.transaction():
                won = bool(
                    await self._db.fetch(_COMPLETE, [ctx.run_id], [ctx.attempt_id], [dict(result or {})], [carried])
                )
                for step in ctx._next if won else ():  # the worker reads what the handler queued
                    await self._queue.submit(
                        ctx.job_id, step.stage, items=step.items, then=step.then, then_payload=step.then_payload
                    )
        if not won:
            _log.warning("stage %s item %r was taken over; its result is dropped", ctx.stage, ctx.item)

    async def _retry_or_fail(
        self, ctx: StageContext, exc: BaseException, max_attempts: int, retry_after: float | None
    ) -> None:
        if ctx.attempt >= max_attempts:
            await self._fail(ctx, f"failed after {ctx.attempt} attempts: {exc}")
            return
        delay = retry_after if retry_after is not None else self._base * 2 ** (ctx.attempt - 1)
        delay *= 1 + random.random() / 10  # noqa: S311 - jitter, not a secret
        await self._db.execute(_REQUEUE, ctx.run_id, ctx.attempt_id, str(exc)[:1000], timedelta(seconds=delay), 0)

    async def _fail(self, ctx: StageContext, reason: str) -> None:
        message = f"stage {ctx.stage}" + (f" item {ctx.item}" if ctx.item else "") + f": {reason}"
        async with self._db.transaction():
            row = await self._db.fetchrow(_END, ctx.run_id, ctx.attempt_id, "failed", message[:1000])
            if (
                row is None or not row["ended"]
            ):  # another attempt took the item over: this one's failure is not the job's
                _log.warning("stage %s item %r was taken over; its failure is dropped: %s", ctx.stage, ctx.item, reason)
                return
            await self._queue.cancel_job(ctx.job_id, message[:1000])


def load_stages(target: str) -> Stages:
    """Import ``module[:attribute]`` (default attribute ``stages``) and return its :class:`Stages`."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        msg = f"cannot import the stage module {module_name!r} ({exc}); check the name and PYTHONPATH"
        raise ConfigError(msg) from exc
    found = getattr(module, attribute or "stages", None)
    if not isinstance(found, Stages):
        msg = f"{target} has no Stages object named {attribute or 'stages'!r}; declare `stages = Stages()`"
        raise ConfigError(msg)
    return found


async def run_worker(settings: Settings, target: str, *, concurrency: int = 4, ready_file: str | None = None) -> None:
    """``python -m shared worker module[:attr]``: start the module's container, run the handlers, drain on SIGTERM.

    The container is ``Stages(container=...)`` or shared's own :class:`~shared.container.Container`, built with
    ``settings`` and started like every entry point's (:func:`shared.lifecycle.lifespan`): JSON logs, the pool,
    Redis and the HTTP client; handlers reach it as ``ctx.container`` and paid calls as ``ctx.paid``.
    """
    from dependency_injector import providers  # noqa: PLC0415

    from shared.container import Container  # noqa: PLC0415 - the worker's own imports, paid once at start
    from shared.lifecycle import lifespan, resolve  # noqa: PLC0415

    stages = load_stages(target)
    container = (stages.container or Container)()
    container.settings.override(providers.Object(settings))
    async with lifespan(container):
        worker = StageWorker(
            stages,
            db=await resolve(container.db),
            dsn=settings.database_dsn,
            statement_cache_size=settings.statement_cache_size,
            heartbeat_interval=settings.stage_heartbeat_interval_seconds,
            concurrency=concurrency,
            container=container,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)

        def ready() -> None:
            _log.info("worker %s ready: stages %s", worker.name, sorted(stages.handlers))
            if ready_file:
                with open(ready_file, "w", encoding="utf-8") as out:
                    out.write(worker.name)

        await worker.run(ready)
