"""FakeCostTracker: the CostLedger contract in memory, for one process (tests and offline demos)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from shared.cost_tracking import BudgetStatus, Money, Reservation, check_names, to_money, warn_overshoot
from shared.errors import BudgetExceededError, InvalidStateError, JobNotFoundError
from shared.models import JobCost, StageName

__all__ = ["FakeCostTracker"]


@dataclass
class _Held:
    job_id: UUID
    stage: StageName
    api_name: str
    estimate: Decimal
    expires_at: datetime
    status: str = "active"


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

    async def commit(self, actual_cost: Money) -> JobCost:
        if self._committed is None:
            self._committed = self._tracker._commit(self.id, self._held, to_money(actual_cost, field="actual_cost"))
        return self._committed


class FakeCostTracker:
    """In-memory CostLedger: the same answers and errors as CostTracker, within one process.

    Jobs must be registered first (``add_job``), as they must exist in PostgreSQL; ``clock`` lets a test move
    time to expire reservations.
    """

    def __init__(
        self,
        *,
        default_budget: Decimal = Decimal(50),
        reservation_ttl: timedelta = timedelta(minutes=15),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._default = to_money(default_budget, field="default_budget")
        self._ttl = reservation_ttl
        self._clock = clock or (lambda: datetime.now(UTC))
        self._jobs: dict[UUID, _Job] = {}
        self._held: dict[UUID, _Held] = {}

    def add_job(self, job_id: UUID, budget_limit: Decimal | None = None) -> None:
        """Register a job (what creating its row does for the real tracker)."""
        self._jobs.setdefault(job_id, _Job(budget_limit))

    def _job(self, job_id: UUID) -> _Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFoundError(job_id=job_id) from None

    def _record(
        self, job_id: UUID, stage: StageName, api_name: str, cost: Decimal, key: str | None
    ) -> tuple[JobCost, bool]:
        job = self._job(job_id)
        if key is not None:
            for existing in job.costs:
                if existing.idempotency_key == key:
                    return existing, False
        row = JobCost(
            id=uuid.uuid4(),
            job_id=job_id,
            stage_name=stage,
            api_name=api_name,
            cost=cost,
            idempotency_key=key,
            created_at=self._clock(),
        )
        job.costs.append(row)
        job.spent += cost
        return row, True

    def _limit(self, job: _Job, limit: Money | None) -> Decimal:
        if limit is not None:
            return to_money(limit, field="limit")
        return job.budget_limit if job.budget_limit is not None else self._default

    async def track_cost(
        self,
        job_id: UUID,
        stage_name: StageName,
        api_name: str,
        cost: Money,
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

    async def get_budget(self, job_id: UUID, limit: Money | None = None) -> BudgetStatus:
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
        return BudgetStatus(job_id, job.spent, reserved, self._limit(job, limit))

    async def check_budget(self, job_id: UUID, new_cost: Money, limit: Money | None = None) -> bool:
        amount = to_money(new_cost, field="new_cost")
        return (await self.get_budget(job_id, limit)).allows(amount)

    async def enforce_budget_limit(self, job_id: UUID, limit: Money | None = None) -> None:
        status = await self.get_budget(job_id, limit)
        if not status.allows(Decimal(0)):
            raise BudgetExceededError(job_id=job_id, spent=status.spent, reserved=status.reserved, limit=status.limit)

    async def list_costs(self, job_id: UUID) -> list[JobCost]:
        return list(self._job(job_id).costs)

    @contextlib.asynccontextmanager
    async def reserve(
        self,
        job_id: UUID,
        stage_name: StageName,
        api_name: str,
        estimated_cost: Money,
        limit: Money | None = None,
    ) -> AsyncIterator[Reservation]:
        stage = check_names(stage_name, api_name)
        estimate = to_money(estimated_cost, field="estimated_cost")
        status = await self.get_budget(job_id, limit)
        if not status.allows(estimate):
            raise BudgetExceededError(
                job_id=job_id, spent=status.spent, reserved=status.reserved, limit=status.limit, requested=estimate
            )
        reservation_id = uuid.uuid4()
        held = _Held(job_id, stage, api_name, estimate, self._clock() + self._ttl)
        self._held[reservation_id] = held
        reservation = _FakeReservation(self, reservation_id, held)
        try:
            yield reservation
        finally:
            if reservation.committed is None and held.status == "active":
                held.status = "released"

    def _commit(self, reservation_id: UUID, held: _Held, actual: Decimal) -> JobCost:
        if held.status == "released":
            msg = "this reservation was released; reserve again before spending"
            raise InvalidStateError(msg, current="released", requested="committed", job_id=held.job_id)
        row, new = self._record(held.job_id, held.stage, held.api_name, actual, f"reservation:{reservation_id}")
        held.status = "committed"
        job = self._jobs[held.job_id]
        if new and job.spent > self._limit(job, None):
            warn_overshoot(held.job_id, job.spent, self._limit(job, None), estimate=held.estimate, actual=actual)
        return row
