"""CostTracker: what each paid call cost, and budgets that hold across every process and machine.

The budget decision is made inside PostgreSQL, never in Python: ``reserve`` calls ``reserve_job_budget``,
which locks the job's row, sums what is spent and reserved, and inserts the reservation only if the estimate
fits, in one statement. No lock or transaction is held while the paid call runs: the reservation is its own
short statement, committed (``commit_job_reservation``, one statement) or released afterwards. A reservation
that is neither within the TTL (a worker that died) stops counting. ``track_cost`` is one statement too: the
cost row and the job's total move together, and an idempotency key already recorded counts nothing.

Every write carries an identity made here before the first send, because the DatabaseClient sends a statement
again when the connection is lost and the answer with it: ``track_cost`` makes an idempotency key when it is
given none, ``reserve`` chooses the reservation's id (a re-sent reserve finds its own reservation), commit and
release are keyed by that id, and a lease renewal only moves the expiry forward.

While the ``async with reserve(...)`` block runs, a background task renews the reservation every third of the
TTL (a lease), so only a worker that died loses its hold. Cancellation never strands money: a commit or release
in flight runs to its end (a second cancel included) before the cancellation goes on, and a cancelled reserve
releases the id it chose, whether or not PostgreSQL had made the reservation yet.

A worker paused past the TTL and ``maintain``'s grace (a GC pause, a frozen VM) finds its reservation released
(lapsed); its commit is still recorded, the whole cost counted as overrun, since the money was spent. Only a
reservation released by its own block refuses a commit. ``get_budget`` reads the reservations in flight and the
job's running overrun total (``job_budget_totals``), never the reservations a job keeps: its cost does not grow
with them, under any plan.

Every amount the API takes goes through :func:`to_money`: a ValidationError or the right Decimal, nothing else.

Round trips: 1 for ``track_cost``, 2 for a reserve + commit pair, 2 for a reservation that is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable
from uuid import UUID

from shared._container_only import container_only
from shared._lease import Lease
from shared.database import Database, Record
from shared.errors import (
    BudgetExceededError,
    DatabaseError,
    DatabaseUnavailableError,
    InvalidStateError,
    JobNotFoundError,
)
from shared.models import JobCost, StageName
from shared.rules import MoneyLike, check_cursor, check_names, check_page_limit, to_money
from shared.telemetry import instruments, span, traced

__all__ = [
    "BudgetStatus",
    "CostLedger",
    "CostLine",
    "CostSummary",
    "CostTracker",
    "LedgerRules",
    "MoneyLike",
    "Reservation",
    "to_money",
]

_T = TypeVar("_T")
_log = logging.getLogger("shared.cost_tracking")
_RAISED = "P0001"
# A keyset page, the optional cursor written as a row comparison against coalesce() so that it stays an Index
# Cond on job_costs_job_id_created_at_id_idx under the generic plan (tests/integration/test_generic_plans.py).
_COSTS_PAGE = """
select * from public.job_costs
 where job_id = $1
   and (created_at, id) > (coalesce($2::timestamptz, '-infinity'),
                           coalesce($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
 order by created_at, id
 limit $4
"""
# grouping(stage_name, api_name): 1 when grouped by the stage alone, 2 by the API alone, 3 the grand total.
_BY_STAGE, _BY_API, _GRAND_TOTAL = 1, 2, 3
# What is reserved is summed over job_cost_reservations_active_held_idx, which holds only active rows (the
# estimate rides in the index), and the overrun is the job's running total: the statement reads the rows in
# flight, never the job's retained committed ones, under the custom and the generic plan alike (a plan made for
# a job with 100k reservations is the plan for an empty one too: tests/integration/test_budget_plans.py).
_BUDGET = """
select j.total_cost,
       coalesce($2, j.budget_limit, $3) as budget,
       (select coalesce(sum(r.estimated_cost), 0)
          from public.job_cost_reservations r
         where r.job_id = j.id and r.status = 'active' and r.expires_at > clock_timestamp()) as reserved,
       coalesce((select t.overrun from public.job_budget_totals t where t.job_id = j.id), 0) as overrun
  from public.jobs j
 where j.id = $1
"""
_COMMIT = "select * from public.commit_job_reservation($1, $2)"
_COMMIT_WITH_USAGE = "select * from public.commit_job_reservation($1, $2, $3::jsonb)"
_COST_SUMMARY = """
select grouping(c.stage_name, c.api_name) as grouping, c.stage_name, c.api_name,
       count(c.id) as calls, coalesce(sum(c.cost), 0) as cost, count(j.id) as joined
  from public.jobs j
  left join public.job_costs c on c.job_id = j.id
 where j.id = $1
 group by grouping sets ((c.stage_name), (c.api_name), ())
"""


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A job's money at one moment: spent, held by active reservations, its limit, and what overran estimates.

    ``overrun`` is the sum, over committed reservations, of what each cost above its estimate: money spent
    that no reservation had held. It is part of ``spent`` already.
    """

    job_id: UUID
    spent: Decimal
    reserved: Decimal
    limit: Decimal
    overrun: Decimal = Decimal(0)

    @property
    def over_limit(self) -> Decimal:
        """Return how far the spend went past the limit (0 when within it)."""
        return max(self.spent - self.limit, Decimal(0))

    @property
    def available(self) -> Decimal:
        """Return what can still be reserved (never negative)."""
        return max(self.limit - self.spent - self.reserved, Decimal(0))

    def allows(self, new_cost: Decimal) -> bool:
        """Return whether ``new_cost`` fits on top of what is spent and reserved."""
        return self.spent + self.reserved + new_cost <= self.limit


@dataclass(frozen=True, slots=True)
class CostLine:
    """How many cost rows and what they add up to."""

    calls: int
    cost: Decimal


@dataclass(frozen=True, slots=True)
class CostSummary:
    """A job's spend in total, per stage and per API (``CostTracker.cost_summary``)."""

    job_id: UUID
    total: CostLine
    by_stage: dict[StageName, CostLine]
    by_api: dict[str, CostLine]


class Reservation(Protocol):  # pragma: no mutate block
    """An estimate held against a job's budget inside ``async with ledger.reserve(...)``."""

    @property
    def id(self) -> UUID:
        """The reservation's id (the same on every attempt of a stage's effect when reserved with its key)."""
        ...

    @property
    def estimated_cost(self) -> Decimal:
        """What the reservation holds against the budget until it is committed or released."""
        ...

    @property
    def committed(self) -> JobCost | None:
        """The cost row its commit recorded, or None before the commit."""
        ...

    async def commit(self, actual_cost: MoneyLike, *, usage: Mapping[str, Any] | None = None) -> JobCost:
        """Record ``actual_cost`` (and the priced ``usage``) once; a second commit returns the first row."""
        ...


@runtime_checkable
class CostLedger(Protocol):  # pragma: no mutate block
    """What pipeline modules do with money; CostTracker and shared.testing.FakeCostTracker implement it."""

    async def track_cost(
        self,
        job_id: UUID,
        stage_name: StageName,
        api_name: str,
        cost: MoneyLike,
        *,
        idempotency_key: str | None = None,
    ) -> JobCost: ...
    async def get_total_cost(self, job_id: UUID) -> Decimal: ...
    async def get_budget(self, job_id: UUID, limit: MoneyLike | None = None) -> BudgetStatus: ...
    async def check_budget(self, job_id: UUID, new_cost: MoneyLike, limit: MoneyLike | None = None) -> bool:
        """Return whether spent + active reservations + ``new_cost`` stays within the limit."""
        ...

    async def enforce_budget_limit(self, job_id: UUID, limit: MoneyLike | None = None) -> None:
        """Raise BudgetExceededError when spent + active reservations exceed the limit."""
        ...

    async def list_costs(
        self, job_id: UUID, *, limit: int = 1000, after: datetime | None = None, after_id: UUID | None = None
    ) -> list[JobCost]: ...
    def iter_costs(self, job_id: UUID, *, page_size: int = 1000) -> AsyncIterator[JobCost]:
        """Yield every cost row of the job, oldest first, a page at a time."""
        ...

    async def cost_summary(self, job_id: UUID) -> CostSummary: ...
    def reserve(
        self,
        job_id: UUID,
        stage_name: StageName,
        api_name: str,
        estimated_cost: MoneyLike,
        limit: MoneyLike | None = None,
        *,
        attempt_id: UUID | None = None,
        idempotency_key: str | None = None,
    ) -> contextlib.AbstractAsyncContextManager[Reservation]: ...


_RESERVATION_KEYS = uuid.UUID("6f1d7a52-3c0e-4f4b-9a57-2a1c9b0e7d31")


def _reservation_id(job_id: UUID, idempotency_key: str) -> UUID:
    """Return the reservation id of a job's effect ``idempotency_key``: the same on every attempt."""
    return uuid.uuid5(_RESERVATION_KEYS, f"{job_id}:{idempotency_key}")


def warn_overshoot(job_id: UUID, spent: Decimal, limit: Decimal, *, estimate: Decimal | None, actual: Decimal) -> None:
    """Log that a job's recorded spend went past its budget (the money was spent: it is recorded truthfully)."""
    _log.warning(
        "job %s spent %s, over its budget %s; further reservations are refused",
        job_id,
        spent,
        limit,
        extra={
            "job_id": str(job_id),
            "spent": str(spent),
            "limit": str(limit),
            "estimated_cost": None if estimate is None else str(estimate),
            "actual_cost": str(actual),
        },
    )


def warn_overrun(
    job_id: UUID, reservation_id: UUID, *, estimate: Decimal, actual: Decimal, spent: Decimal, limit: Decimal
) -> None:
    """Log, in one line with both figures, that a commit cost more than its reservation held."""
    over = "; over its budget, further reservations are refused" if spent > limit else ""
    _log.warning(
        "job %s: actual cost %s is above its estimate %s (overrun %s); spent %s of its budget %s%s",
        job_id,
        actual,
        estimate,
        actual - estimate,
        spent,
        limit,
        over,
        extra={
            "job_id": str(job_id),
            "reservation_id": str(reservation_id),
            "estimated_cost": str(estimate),
            "actual_cost": str(actual),
            "overrun": str(actual - estimate),
            "spent": str(spent),
            "limit": str(limit),
        },
    )


def warn_lapsed(job_id: UUID, reservation_id: UUID, *, actual: Decimal, spent: Decimal, limit: Decimal) -> None:
    """Log that a commit came after housekeeping had released its reservation (its worker paused past the TTL).

    The cost is recorded all the same, the whole of it as an overrun, since nothing held it any more.
    """
    over = "; over its budget, further reservations are refused" if spent > limit else ""
    _log.warning(
        "job %s: reservation %s had lapsed (its worker stopped renewing it past the TTL and maintain released "
        "it); its actual cost %s is recorded as an overrun; spent %s of its budget %s%s",
        job_id,
        reservation_id,
        actual,
        spent,
        limit,
        over,
        extra={
            "job_id": str(job_id),
            "reservation_id": str(reservation_id),
            "actual_cost": str(actual),
            "overrun": str(actual),
            "spent": str(spent),
            "limit": str(limit),
        },
    )


async def _to_the_end(work: Coroutine[Any, Any, _T], *, cancelled: bool = False) -> _T:
    """Run ``work`` to its end even if the caller is cancelled meanwhile (again and again), then go on cancelling.

    ``asyncio.shield`` alone would let the caller leave while the work still runs; money moves must be finished
    when the block is left. A cancellation, from ``task.cancel()`` or ``asyncio.timeout``, is re-raised once the
    work is done, so the task still ends cancelled (and a timeout still becomes TimeoutError). ``cancelled``: the
    caller was cancelled already (the work finishes an interrupted one), so it goes on cancelling in any case.
    """
    task = asyncio.ensure_future(work)
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled() and task.exception() is not None:
            _log.warning("interrupted work failed as well", exc_info=task.exception())
        raise asyncio.CancelledError
    return task.result()


class _DbReservation:
    """A reservation row in PostgreSQL under the id chosen here; commit records the cost once."""

    __slots__ = ("_committed", "_tracker", "api_name", "attempt_id", "estimated_cost", "id", "job_id", "stage")

    def __init__(
        self,
        tracker: CostTracker,
        *,
        reservation_id: UUID,
        job_id: UUID,
        stage: StageName,
        api_name: str,
        estimate: Decimal,
        attempt_id: UUID | None = None,
    ) -> None:
        self._tracker = tracker
        self.id = reservation_id
        self.attempt_id = attempt_id
        self.job_id = job_id
        self.stage = stage
        self.api_name = api_name
        self.estimated_cost = estimate
        self._committed: JobCost | None = None

    @property
    def committed(self) -> JobCost | None:
        """Return the cost row once committed."""
        return self._committed

    async def commit(self, actual_cost: MoneyLike, *, usage: Mapping[str, Any] | None = None) -> JobCost:
        """Record the actual cost (once: a second commit returns the first row and counts nothing).

        ``usage`` (what priced the cost, shared.paid's ``PricedUsage.metadata()``) is written on the cost row in
        the same statement. The money was spent, so a commit in flight finishes even when the task is cancelled
        meanwhile: it runs in the caller's task (no task of its own on the common path), and a cancellation that
        lands in it sends the commit again, keyed by the reservation's id so that it counts once, and waits for
        it to the end.
        """
        if self._committed is None:
            actual = to_money(actual_cost, field="actual_cost")
            try:
                await self._record(actual, usage)
            except asyncio.CancelledError:
                await _to_the_end(self._record(actual, usage), cancelled=True)
                raise
        assert self._committed is not None  # noqa: S101 - set by _record
        return self._committed

    async def _record(self, actual: Decimal, usage: Mapping[str, Any] | None) -> None:
        self._committed = await self._tracker._commit(self, actual, usage)


class LedgerRules:
    """What every CostLedger derives from its own ``get_budget`` and ``list_costs``, written once.

    CostTracker and shared.testing's FakeCostTracker both inherit it, so the budget checks and the paging loop
    cannot differ between the real ledger and its fake.
    """

    async def get_budget(self, job_id: UUID, limit: MoneyLike | None = None) -> BudgetStatus:
        """Return what the job has spent and holds, and its limit (each ledger implements it)."""
        raise NotImplementedError

    async def list_costs(
        self, job_id: UUID, *, limit: int = 1000, after: datetime | None = None, after_id: UUID | None = None
    ) -> list[JobCost]:
        """Return up to ``limit`` cost rows after the keyset cursor, oldest first (each ledger implements it)."""
        raise NotImplementedError

    async def check_budget(self, job_id: UUID, new_cost: MoneyLike, limit: MoneyLike | None = None) -> bool:
        """Return whether spent + active reservations + ``new_cost`` stays within the limit."""
        amount = to_money(new_cost, field="new_cost")
        return (await self.get_budget(job_id, limit)).allows(amount)

    async def enforce_budget_limit(self, job_id: UUID, limit: MoneyLike | None = None) -> None:
        """Raise BudgetExceededError when spent + active reservations exceed the limit."""
        status = await self.get_budget(job_id, limit)
        if not status.allows(Decimal(0)):
            raise BudgetExceededError(job_id=job_id, spent=status.spent, reserved=status.reserved, limit=status.limit)

    async def iter_costs(self, job_id: UUID, *, page_size: int = 1000) -> AsyncIterator[JobCost]:
        """Yield every cost row of the job, oldest first, fetched ``page_size`` rows at a time."""
        after: datetime | None = None
        after_id: UUID | None = None
        while True:
            page = await self.list_costs(job_id, limit=page_size, after=after, after_id=after_id)
            for cost in page:
                yield cost
            if len(page) < page_size:
                return
            after, after_id = page[-1].created_at, page[-1].id


class CostTracker(LedgerRules):
    """Costs, budgets and reservations in PostgreSQL (``Container.cost_tracker``)."""

    def __init__(self, db: Database, *, default_budget: MoneyLike, reservation_ttl: timedelta) -> None:
        self._db = db
        self._default = to_money(default_budget, field="default_budget")
        self._ttl = reservation_ttl

    @traced("cost.track")
    async def track_cost(
        self,
        job_id: UUID,
        stage_name: StageName,
        api_name: str,
        cost: MoneyLike,
        *,
        idempotency_key: str | None = None,
    ) -> JobCost:
        """Record a cost and add it to the job's total atomically; a key already recorded counts nothing.

        Without ``idempotency_key`` one is made here, before the first send, so that the statement sent again
        after a lost answer is counted once. Pass your own to make a retry of the whole call count once too.
        """
        stage = check_names(stage_name, api_name, idempotency_key)
        amount = to_money(cost)
        key = idempotency_key if idempotency_key is not None else f"auto:{uuid.uuid4()}"
        row = await self._db.fetchrow(
            """
            with job as (
                -- The job row's lock first, at full strength: the insert's foreign key check would take a
                -- weaker one, and upgrading it while a reservation waits for the row would deadlock.
                select id from public.jobs where id = $1 for no key update
            ), inserted as (
                insert into public.job_costs (job_id, stage_name, api_name, cost, idempotency_key)
                select job.id, $2, $3, $4, $5 from job
                on conflict (job_id, idempotency_key) do nothing
                returning *
            ), total as (
                update public.jobs j set total_cost = j.total_cost + i.cost
                  from inserted i
                 where j.id = i.job_id
                returning j.total_cost, j.budget_limit
            )
            select i.*, t.total_cost as spent, t.budget_limit, true as newly_recorded
              from inserted i, total t
            union all
            select c.*, null, null, false
              from public.job_costs c
             where c.job_id = $1 and c.idempotency_key = $5 and not exists (select 1 from inserted)
            """,
            job_id,
            stage.value,
            api_name,
            amount,
            key,
        )
        if row is None:
            # An unknown job, or a concurrent call with the same key committed after our snapshot was taken.
            row = await self._db.fetchrow(
                "select *, false as newly_recorded from public.job_costs where job_id = $1 and idempotency_key = $2",
                job_id,
                key,
            )
            if row is None:
                raise JobNotFoundError(job_id=job_id)
        if row["newly_recorded"]:
            if (metrics := instruments()) is not None:
                metrics.record_cost(stage.value, api_name, amount)
            limit = row["budget_limit"] if row["budget_limit"] is not None else self._default
            if row["spent"] > limit:
                warn_overshoot(job_id, row["spent"], limit, estimate=None, actual=amount)
        return _cost(row)

    async def get_total_cost(self, job_id: UUID) -> Decimal:
        """Return what the job has spent; an unknown job is JobNotFoundError, never zero."""
        total = await self._db.fetchval("select total_cost from public.jobs where id = $1", job_id)
        if total is None:
            raise JobNotFoundError(job_id=job_id)
        spent: Decimal = total
        return spent

    async def get_budget(self, job_id: UUID, limit: MoneyLike | None = None) -> BudgetStatus:
        """Return what the job has spent, reserved and overrun, and its limit (``limit``, the job's, or the default)."""
        override = None if limit is None else to_money(limit, field="limit")
        row = await self._db.fetchrow(_BUDGET, job_id, override, self._default)
        if row is None:
            raise JobNotFoundError(job_id=job_id)
        return BudgetStatus(job_id, row["total_cost"], row["reserved"], row["budget"], row["overrun"])

    async def list_costs(
        self, job_id: UUID, *, limit: int = 1000, after: datetime | None = None, after_id: UUID | None = None
    ) -> list[JobCost]:
        """Return a page of the job's cost rows, oldest first (ties on ``created_at`` ordered by id).

        For the next page pass the last row's ``created_at`` as ``after`` and its ``id`` as ``after_id``; every
        page costs the same at any depth. :meth:`iter_costs` walks them all, :meth:`cost_summary` sums them.
        """
        check_page_limit(limit)
        check_cursor(after, after_id, name="after")
        rows = await self._db.fetch(_COSTS_PAGE, job_id, after, after_id, limit)
        return [_cost(row) for row in rows]

    async def cost_summary(self, job_id: UUID) -> CostSummary:
        """Return the job's spend in total, per stage and per API, summed in PostgreSQL (one round trip)."""
        rows = await self._db.fetch(_COST_SUMMARY, job_id)
        if not any(row["joined"] for row in rows):  # the grand total is a row even when no job matched
            raise JobNotFoundError(job_id=job_id)
        by_stage: dict[StageName, CostLine] = {}
        by_api: dict[str, CostLine] = {}
        total = CostLine(0, Decimal(0))
        for row in rows:
            line = CostLine(row["calls"], row["cost"])
            if row["grouping"] == _BY_STAGE and row["stage_name"] is not None:
                by_stage[StageName(row["stage_name"])] = line
            elif row["grouping"] == _BY_API and row["api_name"] is not None:
                by_api[row["api_name"]] = line
            elif row["grouping"] == _GRAND_TOTAL:
                total = line
        return CostSummary(job_id, total, by_stage, by_api)

    @contextlib.asynccontextmanager
    async def reserve(
        self,
        job_id: UUID,
        stage_name: StageName,
        api_name: str,
        estimated_cost: MoneyLike,
        limit: MoneyLike | None = None,
        *,
        attempt_id: UUID | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncIterator[Reservation]:
        """Hold ``estimated_cost`` against the budget for the block, or raise BudgetExceededError before it.

        Inside, ``await reservation.commit(actual)`` records the cost. Leaving without a commit, or by an
        exception or a cancellation, releases the reservation before the block is left. While the block runs
        the hold is renewed every third of the TTL, so a long paid call keeps it; a worker that dies loses it
        at the TTL. A worker that was only paused past the TTL (and whose hold ``maintain`` released) still
        gets its commit recorded, all of it as an overrun: the money was spent.

        ``attempt_id`` names the stage attempt the reservation belongs to (the stage engine's), so that
        housekeeping can tell a live attempt's hold from a dead one's.

        ``idempotency_key`` (with ``attempt_id``; a stage passes ``ctx.key(name)``) makes the reservation one
        across every attempt of the same effect, so that a re-run never records the cost twice: a later attempt
        takes over a hold an earlier one left active (it died or is paused), gets a reservation already committed
        by an earlier one back holding nothing (``commit`` returns the first row, counting nothing), and holds
        a released one again if the budget allows.
        """
        stage = check_names(stage_name, api_name, idempotency_key)
        estimate = to_money(estimated_cost, field="estimated_cost")
        override = None if limit is None else to_money(limit, field="limit")
        reservation = _DbReservation(
            self,
            reservation_id=_reservation_id(job_id, idempotency_key) if idempotency_key is not None else uuid.uuid4(),
            job_id=job_id,
            stage=stage,
            api_name=api_name,
            estimate=estimate,
            attempt_id=attempt_id,
        )
        try:
            with span("cost.reserve"):
                row = await self._db.fetchrow(
                    "select * from public.reserve_job_budget($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    reservation.id,
                    job_id,
                    stage.value,
                    api_name,
                    estimate,
                    override,
                    self._default,
                    self._ttl,
                    attempt_id,
                )
        except (asyncio.CancelledError, DatabaseUnavailableError):
            # PostgreSQL may have made the reservation (or may still make it): release its id either way.
            await _to_the_end(self._abandon(reservation))
            raise
        if row is None:
            raise JobNotFoundError(job_id=job_id)
        if row["reservation_id"] is None:
            if (metrics := instruments()) is not None:
                metrics.budget_refusals.add(1, {"stage": stage.value, "api": api_name.partition("/")[0]})
            raise BudgetExceededError(
                job_id=job_id, spent=row["spent"], reserved=row["reserved"], limit=row["budget"], requested=estimate
            )
        lease = Lease(
            functools.partial(self.renew, reservation),
            self._ttl.total_seconds() / 3,
            name=f"reservation {reservation.id}",
        )
        try:
            yield reservation
        finally:
            if reservation.committed is not None and lease.idle():
                lease.stop()  # the common path: nothing to wait for, so no task is made
            else:
                await _to_the_end(self._close(reservation, lease))

    async def renew(self, reservation: Reservation) -> bool:
        """Extend an active reservation's hold to a full TTL from now; return False once it is no longer active.

        The block of ``reserve`` does this in the background. The expiry only moves forward, so a renewal sent
        again after a lost answer changes nothing more.
        """
        status = await self._db.execute(
            """
            update public.job_cost_reservations
               set expires_at = greatest(expires_at, clock_timestamp() + $2)
             where id = $1 and status = 'active'
            """,
            reservation.id,
            self._ttl,
        )
        return status == "UPDATE 1"

    async def _close(self, reservation: _DbReservation, lease: Lease) -> None:
        """Stop the lease, then release the reservation unless it was committed."""
        await lease.stop_and_wait()
        if reservation.committed is None:
            await self._release(reservation)

    @traced("cost.commit")
    async def _commit(
        self, reservation: _DbReservation, actual: Decimal, usage: Mapping[str, Any] | None = None
    ) -> JobCost:
        try:
            if usage is None:
                row = await self._db.fetchrow(_COMMIT, reservation.id, actual)
            else:
                row = await self._db.fetchrow(_COMMIT_WITH_USAGE, reservation.id, actual, usage)
        except DatabaseError as error:
            if error.sqlstate == _RAISED:
                msg = "this reservation was released when its block was left; reserve again before spending"
                raise InvalidStateError(
                    msg, current="released", requested="committed", job_id=reservation.job_id
                ) from error
            raise
        if row is None:  # pragma: no cover - the row exists while the reservation object does
            raise InvalidStateError("the reservation no longer exists", job_id=reservation.job_id)
        if row["newly_recorded"] and row["overrun"] > 0:
            limit = row["budget_limit"] if row["budget_limit"] is not None else self._default
            if row["held"] < reservation.estimated_cost:
                warn_lapsed(reservation.job_id, reservation.id, actual=actual, spent=row["spent"], limit=limit)
            else:
                warn_overrun(
                    reservation.job_id,
                    reservation.id,
                    estimate=reservation.estimated_cost,
                    actual=actual,
                    spent=row["spent"],
                    limit=limit,
                )
        return _cost(row)

    async def _release(self, reservation: _DbReservation) -> None:
        try:
            await self._db.execute(
                "update public.job_cost_reservations set status = 'released' where id = $1 and status = 'active'",
                reservation.id,
            )
        except DatabaseError:
            # Not raised over the block's own exception: the reservation stops counting at its TTL anyway.
            _log.warning("could not release reservation %s; it expires at its TTL", reservation.id, exc_info=True)

    async def _abandon(self, reservation: _DbReservation) -> None:
        """Release a reservation whose reserve was cancelled or lost, whether or not PostgreSQL made it.

        A released row under the id is written if there is none yet, so a reserve still on its way finds the id
        taken and holds nothing. The job row's lock comes first, as in reserve_job_budget, which checks the id
        under that lock: the two cannot interleave.
        """
        try:
            await self._db.execute(
                """
                with job as (select id from public.jobs where id = $2 for update)
                insert into public.job_cost_reservations
                       (id, job_id, stage_name, api_name, estimated_cost, status, expires_at, attempt_id)
                select $1, job.id, $3, $4, $5, 'released', clock_timestamp(), $6 from job
                on conflict (id) do update
                       set status = 'released',
                           attempt_id = coalesce(excluded.attempt_id, job_cost_reservations.attempt_id)
                 where job_cost_reservations.status = 'active'
                    or (job_cost_reservations.status = 'released' and excluded.attempt_id is not null)
                """,
                reservation.id,
                reservation.job_id,
                reservation.stage.value,
                reservation.api_name,
                reservation.estimated_cost,
                reservation.attempt_id,
            )
        except DatabaseError:
            _log.warning("could not release reservation %s; it expires at its TTL", reservation.id, exc_info=True)


_COST_FIELDS = tuple(JobCost.model_fields)


def _cost(row: Record) -> JobCost:
    # A field the row lacks (track_cost's statements name no usage) takes the model's default.
    columns = set(row.keys())
    return JobCost.model_validate({name: row[name] for name in _COST_FIELDS if name in columns})


# `from shared.cost_tracking import cost_tracker` (an older task list's name) names its provider.
if TYPE_CHECKING:
    Money = MoneyLike  # deprecated in 0.2.0: use shared.rules.MoneyLike
else:  # to mypy a module __getattr__ would make every misspelt name importable
    __getattr__ = container_only(
        "shared.cost_tracking",
        {"cost_tracker": "cost_tracker"},
        moved={"Money": ("shared.rules.MoneyLike", MoneyLike)},  # 0.1.0's re-export, under its new name
    )
