"""Rows of ``jobs``, ``job_stages`` and ``job_costs`` as the JobRepository and the CostTracker return them.

The API gateway creates a job; every stage moves it forward (its progress, its stage rows); the CostTracker
records what each paid call cost. tests/integration/test_models_schema.py proves these match their tables.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import Field, model_validator

from shared.models._base import Model, Money, StageName, Timestamp

__all__ = ["Job", "JobCost", "JobStage", "JobStatus", "StageStatus"]


class JobStatus(StrEnum):
    """Where a job is; it moves only forward: queued -> processing -> completed | failed."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        """Return whether nothing can follow this status (the one definition of the final statuses)."""
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)


class StageStatus(StrEnum):
    """Where one stage of a job is."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class Job(Model):
    """One music video being made: created by the API gateway, advanced by every stage."""

    id: UUID
    user_id: UUID
    status: JobStatus = JobStatus.QUEUED
    audio_url: Annotated[str, Field(min_length=1)]
    user_prompt: Annotated[str, Field(min_length=1)]
    current_stage: StageName | None = None
    progress: Annotated[int, Field(ge=0, le=100)] = 0
    estimated_remaining: Annotated[int | None, Field(ge=0, description="seconds until done, when known")] = None
    total_cost: Money = Decimal(0)
    budget_limit: Money | None = Field(default=None, description="this job's budget; None means the default")
    video_url: str | None = None
    error_message: str | None = None
    created_at: Timestamp
    updated_at: Timestamp
    completed_at: Timestamp | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Job:
        if (self.status is JobStatus.COMPLETED) != (self.completed_at is not None):
            msg = "completed_at is set exactly when the status is completed"
            raise ValueError(msg)
        if self.status is JobStatus.COMPLETED and not self.video_url:
            msg = "a completed job has a video_url"
            raise ValueError(msg)
        if self.updated_at < self.created_at:
            msg = "updated_at is before created_at"
            raise ValueError(msg)
        return self


class JobStage(Model):
    """One stage's run for a job (one row per job and stage): when it ran, how it ended, what it noted."""

    id: UUID
    job_id: UUID
    stage_name: StageName
    status: StageStatus = StageStatus.RUNNING
    started_at: Timestamp
    completed_at: Timestamp | None = None
    error: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: Timestamp
    updated_at: Timestamp
    # The last heartbeat of the worker running the stage (shared.maintenance.stage_heartbeat), if any.
    heartbeat_at: Timestamp | None = None
    # Who holds (or last held) the stage: start_stage's ``worker``, named to the loser of a race.
    worker: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> JobStage:
        finished = self.status is not StageStatus.RUNNING
        if finished != (self.completed_at is not None):
            msg = "completed_at is set exactly when the stage has completed or failed"
            raise ValueError(msg)
        if self.completed_at is not None and self.completed_at < self.started_at:
            msg = "a stage completes after it starts"
            raise ValueError(msg)
        if (self.status is StageStatus.FAILED) != (self.error is not None):
            msg = "error is set exactly when the stage failed"
            raise ValueError(msg)
        return self


class JobCost(Model):
    """What one paid API call cost a job, recorded by the CostTracker (at most once per idempotency key)."""

    id: UUID
    job_id: UUID
    stage_name: StageName
    api_name: Annotated[str, Field(min_length=1, max_length=100)]
    cost: Money
    idempotency_key: str | None = None
    # What the provider reported and how it was priced ({provider, model, units, unit_prices, cost,
    # price_version}; shared.paid.pricing), or None for a cost the caller typed in.
    usage: dict[str, Any] | None = None
    created_at: Timestamp
