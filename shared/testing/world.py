"""FakeWorld: the one in-memory database the fakes share, as the real collaborators share one PostgreSQL.

A job created in :class:`~shared.testing.jobs.FakeJobStore` is known to the
:class:`~shared.testing.costs.FakeCostTracker` of the same world at once, with its budget limit, and every cost
the tracker records shows in the job's ``total_cost``, as the database's commit function does for the real pair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

from shared.models import Job, JobStage, StageName

__all__ = ["FakeWorld"]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class FakeWorld:
    """The tables the fakes read and write: users, jobs, stages (the cost rows stay with the cost tracker)."""

    clock: Callable[[], datetime] = _now
    users: set[UUID] = field(default_factory=set)
    jobs: dict[UUID, Job] = field(default_factory=dict)
    stages: dict[tuple[UUID, StageName], JobStage] = field(default_factory=dict)

    def budget_limit(self, job_id: UUID) -> tuple[bool, Decimal | None]:
        """Return whether the job exists, and its budget limit (None: the tracker's default)."""
        job = self.jobs.get(job_id)
        return (job is not None, job.budget_limit if job is not None else None)

    def set_budget_limit(self, job_id: UUID, limit: Decimal) -> None:
        """Give a known job a new budget limit (what ``update jobs set budget_limit`` does)."""
        job = self.jobs[job_id]
        self.jobs[job_id] = job.model_copy(
            update={"budget_limit": limit, "updated_at": max(self.clock(), job.updated_at)}
        )

    def set_total_cost(self, job_id: UUID, total: Decimal) -> None:
        """Record the job's total cost, as ``commit_job_reservation`` updates ``jobs.total_cost``."""
        job = self.jobs.get(job_id)
        if job is not None:
            self.jobs[job_id] = job.model_copy(
                update={"total_cost": total, "updated_at": max(self.clock(), job.updated_at)}
            )
