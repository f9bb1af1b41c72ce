"""CostTracker: what each paid call cost, and budgets that hold across every process and machine.

The budget decision is made inside PostgreSQL, never in Python: ``reserve`` calls ``reserve_job_budget``,
which locks the job's row, sums what is spent and reserved, and inserts the reservation only if the estimate
fits, in one statement. No lock or transaction is held while the paid call runs: the reservation is its own
short statement, committed (``commit_job_reservation``, one statement) or released afterwards. A reservation
that is neither within the TTL (a worker that died) stops counting. ``track_cost`` is one statement too: the
cost row and the job's total move together, and an idempotency key already recorded counts nothing.

Round trips: 1 for ``track_cost``, 2 for a reserve + commit pair, 2 for a reservation that is released.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Protocol, runtime_checkable
from uuid import UUID

from shared.database import Database, Record
from shared.errors import BudgetExceededError, DatabaseError, InvalidStateError, JobNotFoundError, ValidationError
from shared.jobs import check_cursor, check_page_limit
from shared.models import JobCost, StageName

__all__ = ["BudgetStatus", "CostLedger", "CostLine", "CostSummary", "CostTracker", "Reservation", "to_money"]

_log = logging.getLogger("shared.cost_tracking")
_CENT_FRACTION = Decimal("0.0001")
_MAX_MONEY = Decimal("99999999.9999")  # numeric(12, 4)
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
_COST_SUMMARY = """
select grouping(c.stage_name, c.api_name) as grouping, c.stage_name, c.api_name,
       count(c.id) as calls, coalesce(sum(c.cost), 0) as cost, count(j.id) as joined
  from public.jobs j
  left join public.job_costs c on c.job_id = j.id
 where j.id = $1
 group by grouping sets ((c.stage_name), (c.api_name), ())
"""


def to_money(value: Decimal | int | str | float, *, field: str = "cost") -> Decimal:
    """Return ``value`` as Decimal money (4 places, rounded up so a budget is never under-counted).

    Raises:
        ValidationError: negative, NaN, infinite, not a number, or more than numeric(12,4) holds.
    """
    try:
        # str() first: Decimal(0.1) would carry the float's binary noise into the ledger.
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValidationError(f"{field} must be a number of dollars, got {value!r}", field=field) from None
    if isinstance(value, bool) or not amount.is_finite() or amount < 0:
        raise ValidationError(f"{field} must be a finite amount >= 0, got {value!r}", field=field)
    money = amount.quantize(_CENT_FRACTION, rounding=ROUND_CEILING)
    if money > _MAX_MONEY:
        raise ValidationError(f"{field} {value} is more than the ledger holds ({_MAX_MONEY})", field=field)
    return money


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A job's money at one moment: spent, held by active reservations, and its limit."""

    job_id: UUID
    spent: Decimal
    reserved: Decimal
    limit: Decimal

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


class Reservation(Protocol):
    """An estimate held against a job's budget inside ``async with ledger.reserve(...)``."""

    @property
    def id(self) -> UUID: ...
    @property
    def estimated_cost(self) -> Decimal: ...
    @property
    def committed(self) -> JobCost | None: ...
    async def commit(self, actual_cost: Decimal | int | str) -> JobCost: ...


@runtime_checkable
class CostLedger(Protocol):
    """What pipeline modules do with money; CostTracker and shared.testing.FakeCostTracker implement it."""

    async def track_cost(
        self,
        job_id: UUID,
        stage_name: StageName,
        api_name: str,
        cost: Decimal | int | str,
        *,
        idempotency_key: str | None = None,
    ) -> JobCost: ...
    async def get_total_cost(self, job_id: UUID) -> Decimal: ...
    async def get_budget(self, job_id: UUID, limit: Decimal | None = None) -> BudgetStatus: ...
    async def check_budget(self, job_id: UUID, new_cost: Decimal | int | str, limit: Decimal | None = None) -> bool: ...
    async def enforce_budget_limit(self, job_id: UUID, limit: Decimal | None = None) -> None: ...
    async def list_costs(
        self, job_id: UUID, *, limit: int = 1000, after: datetime | None = None, after_id: UUID | None = None
    ) -> list[JobCost]: ...
    def iter_costs(self, job_id: UUID, *, page_size: int = 1000) -> AsyncIterator[JobCost]: ...
    async def cost_summary(self, job_id: UUID) -> CostSummary: ...
    def reserve(
        self,
        job_id: UUID,
        stage_name: StageName,
        api_name: str,
        estimated_cost: Decimal | int | str,
        limit: Decimal | None = None,
    ) -> contextlib.AbstractAsyncContextManager[Reservation]: ...


def check_names(stage_name: StageName | str, api_name: str, idempotency_key: str | None = None) -> StageName:
    """Return the stage as a StageName; refuse an unknown stage, an empty API name or a bad key."""
    try:
        stage = StageName(stage_name)
    except ValueError:
        known = ", ".join(StageName)
        raise ValidationError(f"unknown stage {stage_name!r}; expected one of {known}", field="stage_name") from None
    if not 1 <= len(api_name.strip()) <= 100:
        raise ValidationError("api_name must be 1-100 characters, such as 'openai' or 'replicate'", field="api_name")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
        raise ValidationError("idempotency_key must be 1-200 characters", field="idempotency_key")
    return stage


async def iter_cost_pages(ledger: CostLedger, job_id: UUID, page_size: int) -> AsyncIterator[JobCost]:
    """Walk every page of ``ledger.list_costs`` in order (the one paging loop of every CostLedger)."""
    after: datetime | None = None
    after_id: UUID | None = None
    while True:
        page = await ledger.list_costs(job_id, limit=page_size, after=after, after_id=after_id)
        for cost in page:
            yield cost
        if len(page) < page_size:
            return
        after, after_id = page[-1].created_at, page[-1].id


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


class _DbReservation:
    """A reservation row in PostgreSQL; commit records the cost once."""

    __slots__ = ("_committed", "_tracker", "estimated_cost", "id", "job_id")

    def __init__(self, tracker: CostTracker, reservation_id: UUID, job_id: UUID, estimate: Decimal) -> None:
        self._tracker = tracker
        self.job_id = job_id
        self.id = reservation_id
        self.estimated_cost = estimate
        self._committed: JobCost | None = None

    @property
    def committed(self) -> JobCost | None:
        """Return the cost row once committed."""
        return self._committed

    async def commit(self, actual_cost: Decimal | int | str) -> JobCost:
        """Record the actual cost (once: a second commit returns the first row and counts nothing)."""
        if self._committed is not None:
            return self._committed
        self._committed = await self._tracker._commit(self, to_money(actual_cost, field="actual_cost"))
        return self._committed


class CostTracker:
    """Costs, budgets and reservations in PostgreSQL (``Container.cost_tracker``)."""

    def __init__(self, db: Database, *, default_budget: Decimal, reservation_ttl: timedelta) -> None:
        self._db = db
        self._default = to_money(default_budget, field="default_budget")
        self._ttl = reservation_ttl

    async def track_cost(
        self,
        job_id: UUID,
        stage_name: StageName,
        api_name: str,
        cost: Decimal | int | str,
        *,
        idempotency_key: str | None = None,
    ) -> JobCost:
        """Record a cost and add it to the job's total atomically; a key already recorded counts nothing."""
        stage = check_names(stage_name, api_name, idempotency_key)
        amount = to_money(cost)
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
            idempotency_key,
        )
        if row is None:
            # An unknown job, or a concurrent call with the same key committed after our snapshot was taken.
            row = await self._db.fetchrow(
                "select *, false as newly_recorded from public.job_costs where job_id = $1 and idempotency_key = $2",
                job_id,
                idempotency_key,
            )
            if row is None:
                raise JobNotFoundError(job_id=job_id)
        if row["newly_recorded"]:
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

    async def get_budget(self, job_id: UUID, limit: Decimal | None = None) -> BudgetStatus:
        """Return what the job has spent and reserved, and its limit (``limit``, the job's, or the default)."""
        override = None if limit is None else to_money(limit, field="limit")
        row = await self._db.fetchrow(
            """
            select j.total_cost,
                   coalesce($2, j.budget_limit, $3) as budget,
                   coalesce((select sum(r.estimated_cost) from public.job_cost_reservations r
                              where r.job_id = j.id and r.status = 'active' and r.expires_at > clock_timestamp()),
                            0) as reserved
              from public.jobs j
             where j.id = $1
            """,
            job_id,
            override,
            self._default,
        )
        if row is None:
            raise JobNotFoundError(job_id=job_id)
        return BudgetStatus(job_id, row["total_cost"], row["reserved"], row["budget"])

    async def check_budget(self, job_id: UUID, new_cost: Decimal | int | str, limit: Decimal | None = None) -> bool:
        """Return whether spent + active reservations + ``new_cost`` stays within the limit."""
        amount = to_money(new_cost, field="new_cost")
        return (await self.get_budget(job_id, limit)).allows(amount)

    async def enforce_budget_limit(self, job_id: UUID, limit: Decimal | None = None) -> None:
        """Raise BudgetExceededError when spent + active reservations exceed the limit."""
        status = await self.get_budget(job_id, limit)
        if not status.allows(Decimal(0)):
            raise BudgetExceededError(job_id=job_id, spent=status.spent, reserved=status.reserved, limit=status.limit)

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

    def iter_costs(self, job_id: UUID, *, page_size: int = 1000) -> AsyncIterator[JobCost]:
        """Yield every cost row of the job, oldest first, fetched ``page_size`` rows at a time."""
        return iter_cost_pages(self, job_id, page_size)

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
        estimated_cost: Decimal | int | str,
        limit: Decimal | None = None,
    ) -> AsyncIterator[Reservation]:
        """Hold ``estimated_cost`` against the budget for the block, or raise BudgetExceededError before it.

        Inside, ``await reservation.commit(actual)`` records the cost. Leaving without a commit, or by an
        exception, releases the reservation.
        """
        stage = check_names(stage_name, api_name)
        estimate = to_money(estimated_cost, field="estimated_cost")
        override = None if limit is None else to_money(limit, field="limit")
        row = await self._db.fetchrow(
            "select * from public.reserve_job_budget($1, $2, $3, $4, $5, $6, $7)",
            job_id,
            stage.value,
            api_name,
            estimate,
            override,
            self._default,
            self._ttl,
        )
        if row is None:
            raise JobNotFoundError(job_id=job_id)
        if row["reservation_id"] is None:
            raise BudgetExceededError(
                job_id=job_id, spent=row["spent"], reserved=row["reserved"], limit=row["budget"], requested=estimate
            )
        reservation = _DbReservation(self, row["reservation_id"], job_id, estimate)
        try:
            yield reservation
        finally:
            if reservation.committed is None:
                await self._release(reservation)

    async def _commit(self, reservation: _DbReservation, actual: Decimal) -> JobCost:
        try:
            row = await self._db.fetchrow("select * from public.commit_job_reservation($1, $2)", reservation.id, actual)
        except DatabaseError as error:
            if error.sqlstate == _RAISED:
                msg = "this reservation was released; reserve again before spending"
                raise InvalidStateError(
                    msg, current="released", requested="committed", job_id=reservation.job_id
                ) from error
            raise
        if row is None:  # pragma: no cover - the row exists while the reservation object does
            raise InvalidStateError("the reservation no longer exists", job_id=reservation.job_id)
        if row["newly_recorded"] and actual > reservation.estimated_cost:
            limit = row["budget_limit"] if row["budget_limit"] is not None else self._default
            _log.warning(
                "actual cost %s is above its estimate %s",
                actual,
                reservation.estimated_cost,
                extra={"job_id": str(reservation.job_id), "reservation_id": str(reservation.id)},
            )
            if row["spent"] > limit:
                warn_overshoot(
                    reservation.job_id, row["spent"], limit, estimate=reservation.estimated_cost, actual=actual
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


_COST_FIELDS = tuple(JobCost.model_fields)


def _cost(row: Record) -> JobCost:
    return JobCost.model_validate({name: row[name] for name in _COST_FIELDS})
