"""FakeCostTracker: the CostLedger contract in memory, for one process (tests and offline demos)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from shared.cost_tracking import (
    BudgetStatus,
    CostLine,
    CostSummary,
    LedgerRules,
    Reservation,
    warn_lapsed,
    warn_overrun,
    warn_overshoot,
)
from shared.errors import BudgetExceededError, InvalidStateError, JobNotFoundError
from shared.models import JobCost, StageName
from shared.rules import MoneyLike, check_cursor, check_names, check_page_limit, to_money
from shared.testing.world import FakeWorld

# The largest id: a cursor with a time only takes the rows strictly after it, as PostgreSQL's coalesce does.
_MAX_ID = UUID(int=2**128 - 1)

__all__ = ["FakeCostTracker"]


@dataclass
class _Held:
    job_id: UUID
    stage: StageName
    api_name: str
    estimate: Decimal
    expires_at: datetime
    status: str = "active"
    actual: Decimal | None = None
    attempt_id: UUID | None = None
    lapsed: bool = False


@dataclass
class _Job:
    budget_limit: Decimal | None
    spent: Decimal = Decimal(0)
    costs: list[JobCost] = field(default_factory=list)


class _FakeReservation:
    def __init__(self, tracker: FakeCostTracker, reservation_id: UUID, held: _Held) -> None:
        self._tracker = tracker
        self.id = reservation_id
        self.estimated_cost = held.estimate
        self._held = held
        self._committed: JobCost | None = None

    @property
    def committed(self) -> JobCost | None:
        return self._committed

    async def commit(self, actual_cost: MoneyLike, *, usage: Mapping[str, Any] | None = None) -> JobCost:
        if self._committed is None:
            actual = to_money(actual_cost, field="actual_cost")
            self._committed = self._tracker._commit(self.id, self._held, actual, usage)
        return self._committed


class FakeCostTracker(LedgerRules):
    """In-memory CostLedger: the same answers and errors as CostTracker, within one process.

    It knows the jobs of its ``world`` (those a FakeJobStore of the same world created), with their budget
    limits, and writes each job's total cost back there; ``add_job`` registers a job without a job store.
    ``clock`` lets a test move time to expire reservations.
    """

    def __init__(
        self,
        *,
        default_budget: Decimal = Decimal(50),
        reservation_ttl: timedelta = timedelta(minutes=15),
        clock: Callable[[], datetime] | None = None,
        world: FakeWorld | None = None,
    ) -> None:
        self._default = to_money(default_budget, field="default_budget")
        self._ttl = reservation_ttl
        self.world = world or FakeWorld(clock=clock or (lambda: datetime.now(UTC)))
        self._clock = clock or self.world.clock
        self._jobs: dict[UUID, _Job] = {}
        self._held: dict[UUID, _Held] = {}

    def release_expired(self, grace: timedelta = timedelta(0)) -> int:
        """Release the active reservations expired more than ``grace`` ago, as ``maintain`` does; return how many.

        Their worker may only be paused: a later commit is still recorded, all of it as an overrun.
        """
        now = self._clock()
        lapsed = [h for h in self._held.values() if h.status == "active" and h.expires_at < now - grace]
        for held in lapsed:
            held.status, held.lapsed = "released", True
        return len(lapsed)

    def add_job(self, job_id: UUID, budget_limit: Decimal | None = None) -> None:
        """Register a job (what creating its row does for the real tracker), or set a known job's budget.

        An explicit ``budget_limit`` always takes effect, also on a job the world knows already (one that
        ``fakes.add_job`` or a FakeJobStore created): it is that job's ``budget_limit`` from now on, as
        ``update jobs set budget_limit = ...`` would be. None leaves a known job's budget as it is.
        """
        limit = to_money(budget_limit, field="budget_limit") if budget_limit is not None else None
        if job_id in self.world.jobs:
            if limit is not None:
                self.world.set_budget_limit(job_id, limit)
            self._job(job_id)
            return
        ledger = self._jobs.get(job_id)
        if ledger is None:
            self._jobs[job_id] = _Job(limit)
        elif limit is not None:
            ledger.budget_limit = limit

    def _job(self, job_id: UUID) -> _Job:
        ledger = self._jobs.get(job_id)
        exists, budget_limit = self.world.budget_limit(job_id)
        if ledger is None:
            if not exists:
                raise JobNotFoundError(job_id=job_id)
            ledger = self._jobs[job_id] = _Job(budget_limit)
        elif exists:
            ledger.budget_limit = budget_limit
        return ledger

    def _record(
        self, job_id: UUID, stage: StageName, api_name: str, cost: Decimal, key: str | None
    ) -> tuple[JobCost, bool]:
        job = self._job(job_id)
        if key is not None:
            for existing in job.costs:
                if existing.idempotency_key == key:
                    return existing, False
        # PostgreSQL stamps each statement with its own now(); a fixed test clock would make every row tie, and
        # ties are ordered by their random ids. One microsecond after the last row keeps the order of insertion.
        created_at = self._clock()
        if job.costs and created_at <= job.costs[-1].created_at:
            created_at = job.costs[-1].created_at + timedelta(microseconds=1)
        row = JobCost(
            id=uuid.uuid4(),
            job_id=job_id,
            stage_name=stage,
            api_name=api_name,
            cost=cost,
            idempotency_key=key,
            created_at=created_at,
        )
        job.costs.append(row)
        job.spent += cost
        self.world.set_total_cost(job_id, job.spent)
        return row, True

    def _limit(self, job: _Job, limit: MoneyLike | None) -> Decimal:
        if limit is not None:
            return to_money(limit, field="limit")
        return job.budget_limit if job.budget_limit is not None else self._default

    async def track_cost(
        self,
        job_id: UUID,
        stage_name: StageName,
        api_name: str,
        cost: MoneyLike,
        *,
        idempotency_key: str | None = None,
    ) -> JobCost:
        stage = check_names(stage_name, api_name, idempotency_key)
        amount = to_money(cost)
        row, new = self._record(job_id, stage, api_name, amount, idempotency_key)
        job = self._jobs[job_id]
        if new and job.spent > self._limit(job, None):
            warn_overshoot(job_id, job.spent, self._limit(job, None), estimate=None, actual=amount)
        return row

    async def get_total_cost(self, job_id: UUID) -> Decimal:
        return self._job(job_id).spent

    async def get_budget(self, job_id: UUID, limit: MoneyLike | None = None) -> BudgetStatus:
        job = self._job(job_id)
        now = self._clock()
        reserved = sum(
            (
                h.estimate
                for h in self._held.values()
                if h.job_id == job_id and h.status == "active" and h.expires_at > now
            ),
            start=Decimal(0),
        )
        overrun = sum(
            (
                _overrun(h)
                for h in self._held.values()
                if h.job_id == job_id and h.status == "committed" and h.actual is not None
            ),
            start=Decimal(0),
        )
        return BudgetStatus(job_id, job.spent, reserved, self._limit(job, limit), overrun)

    async def list_costs(
        self, job_id: UUID, *, limit: int = 1000, after: datetime | None = None, after_id: UUID | None = None
    ) -> list[JobCost]:
        check_page_limit(limit)
        check_cursor(after, after_id, name="after")
        rows = sorted(self._job(job_id).costs, key=lambda row: (row.created_at, row.id))
        if after is not None:
            cursor = (after, after_id or _MAX_ID)
            rows = [row for row in rows if (row.created_at, row.id) > cursor]
        return rows[:limit]

    async def cost_summary(self, job_id: UUID) -> CostSummary:
        rows = self._job(job_id).costs
        by_stage: dict[StageName, CostLine] = {}
        by_api: dict[str, CostLine] = {}
        for row in rows:
            stage, api = by_stage.get(row.stage_name), by_api.get(row.api_name)
            by_stage[row.stage_name] = CostLine(
                (stage.calls if stage else 0) + 1, (stage.cost if stage else 0) + row.cost
            )
            by_api[row.api_name] = CostLine((api.calls if api else 0) + 1, (api.cost if api else 0) + row.cost)
        total = CostLine(len(rows), sum((row.cost for row in rows), start=Decimal(0)))
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
    ) -> AsyncIterator[Reservation]:
        stage = check_names(stage_name, api_name)
        estimate = to_money(estimated_cost, field="estimated_cost")
        status = await self.get_budget(job_id, limit)
        if not status.allows(estimate):
            raise BudgetExceededError(
                job_id=job_id, spent=status.spent, reserved=status.reserved, limit=status.limit, requested=estimate
            )
        reservation_id = uuid.uuid4()
        held = _Held(job_id, stage, api_name, estimate, self._clock() + self._ttl, attempt_id=attempt_id)
        self._held[reservation_id] = held
        reservation = _FakeReservation(self, reservation_id, held)
        try:
            yield reservation
        finally:
            if reservation.committed is None and held.status == "active":
                held.status = "released"

    def _commit(
        self, reservation_id: UUID, held: _Held, actual: Decimal, usage: Mapping[str, Any] | None = None
    ) -> JobCost:
        if held.status == "released" and not held.lapsed:
            msg = "this reservation was released when its block was left; reserve again before spending"
            raise InvalidStateError(msg, current="released", requested="committed", job_id=held.job_id)
        row, new = self._record(held.job_id, held.stage, held.api_name, actual, f"reservation:{reservation_id}")
        if new and usage is not None:  # written in the commit's own statement, as commit_job_reservation does
            costs = self._jobs[held.job_id].costs
            row = costs[-1] = row.model_copy(update={"usage": dict(usage)})
        held.status, held.actual = "committed", actual
        job = self._jobs[held.job_id]
        if new and _overrun(held) > 0:
            limit = self._limit(job, None)
            if held.lapsed:
                warn_lapsed(held.job_id, reservation_id, actual=actual, spent=job.spent, limit=limit)
            else:
                warn_overrun(
                    held.job_id, reservation_id, estimate=held.estimate, actual=actual, spent=job.spent, limit=limit
                )
        return row


def _overrun(held: _Held) -> Decimal:
    """Return what a committed reservation cost above what it held (all of it once it had lapsed)."""
    assert held.actual is not None  # noqa: S101 - only asked of committed reservations
    return max(held.actual - (Decimal(0) if held.lapsed else held.estimate), Decimal(0))
