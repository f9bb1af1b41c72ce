"""FakeJobStore: the JobStore contract in memory, for one process (tests and offline demos)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn
from uuid import UUID

from shared.errors import InvalidStateError, JobNotFoundError, UserNotFoundError
from shared.models import Job, JobStage, JobStatus, StageName, StageStatus
from shared.rules import (
    MoneyLike,
    call_token,
    check_cursor,
    check_job_input,
    check_page_limit,
    check_progress,
    check_stage_finish,
    check_stage_start,
    check_text,
)
from shared.testing.world import FakeWorld

__all__ = ["FakeJobStore"]

# The smallest id: a cursor with a time only takes the rows strictly before it, as PostgreSQL's coalesce does.
_ZERO_ID = UUID(int=0)


class FakeJobStore:
    """In-memory JobStore: the same answers and errors as JobRepository.

    Users must be registered (``add_user``), as they must exist in ``auth.users``; ``clock`` lets a test
    control timestamps. Pass the same ``world`` to a FakeCostTracker to make the pair behave as the real one.
    """

    def __init__(self, *, clock: Callable[[], datetime] | None = None, world: FakeWorld | None = None) -> None:
        self.world = world or FakeWorld(clock=clock or (lambda: datetime.now(UTC)))
        self._clock = clock or self.world.clock
        self._users = self.world.users
        self._jobs = self.world.jobs
        self._stages = self.world.stages

    def add_user(self, user_id: UUID | None = None) -> UUID:
        """Register a user (a row in auth.users) and return its id."""
        user = user_id or uuid.uuid4()
        self._users.add(user)
        return user

    async def create_job(
        self,
        *,
        user_id: UUID,
        audio_url: str,
        user_prompt: str,
        budget_limit: MoneyLike | None = None,
        job_id: UUID | None = None,
    ) -> Job:
        budget = check_job_input(audio_url, user_prompt, budget_limit)
        new_id = job_id or uuid.uuid4()
        if new_id in self._jobs:
            existing = self._jobs[new_id]
            if existing.user_id != user_id:
                raise InvalidStateError(
                    "a different job already has this id; let create_job choose the id", job_id=new_id
                )
            return existing
        if user_id not in self._users:
            msg = f"user {user_id} does not exist in auth.users; create the job for a signed-up user"
            raise UserNotFoundError(msg, user_id=user_id, job_id=new_id)
        now = self._clock()
        job = Job(
            id=new_id,
            user_id=user_id,
            audio_url=audio_url,
            user_prompt=user_prompt,
            budget_limit=budget,
            created_at=now,
            updated_at=now,
        )
        self._jobs[new_id] = job
        return job

    async def get_job(self, job_id: UUID) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFoundError(job_id=job_id) from None

    async def list_jobs_for_user(
        self, user_id: UUID, *, limit: int = 50, before: datetime | None = None, before_id: UUID | None = None
    ) -> list[Job]:
        check_page_limit(limit)
        check_cursor(before, before_id, name="before")
        cursor = (before, before_id or _ZERO_ID) if before is not None else None
        mine = [
            job
            for job in self._jobs.values()
            if job.user_id == user_id and (cursor is None or (job.created_at, job.id) < cursor)
        ]
        return sorted(mine, key=lambda job: (job.created_at, job.id), reverse=True)[:limit]

    async def heartbeat_stage(self, job_id: UUID, stage: StageName, *, worker: str | None = None) -> bool:
        current = self._stages.get((job_id, StageName(stage)))
        if current is None or current.status is not StageStatus.RUNNING:
            return False
        if worker is not None and current.worker != worker:
            return False
        if self._jobs[job_id].status.is_final:
            return False
        self._stages[job_id, current.stage_name] = current.model_copy(update={"heartbeat_at": self._clock()})
        return True

    def _update(self, job: Job, **changes: Any) -> Job:
        updated = job.model_copy(update={**changes, "updated_at": max(self._clock(), job.created_at)})
        self._jobs[job.id] = Job.model_validate(updated.model_dump())
        return self._jobs[job.id]

    async def update_progress(
        self, job_id: UUID, stage: StageName, progress: int, estimated_remaining: int | None = None
    ) -> Job:
        check_progress(progress, estimated_remaining)
        job = await self.get_job(job_id)
        if job.status.is_final:
            self._refuse(job, JobStatus.PROCESSING)
        return self._update(
            job,
            status=JobStatus.PROCESSING,
            current_stage=StageName(stage),
            progress=max(job.progress, progress),
            estimated_remaining=estimated_remaining,
        )

    async def start_stage(
        self, job_id: UUID, stage: StageName, metadata: dict[str, Any] | None = None, *, worker: str | None = None
    ) -> JobStage:
        worker = worker or call_token()  # a resent call carries the same token; another call does not
        name = StageName(stage)
        job = await self.get_job(job_id)
        if job.status.is_final:
            self._refuse(job, JobStatus.PROCESSING)
        previous = self._stages.get((job_id, name))
        if not check_stage_start(previous, worker) and previous is not None:
            return previous
        self._update(job, status=JobStatus.PROCESSING, current_stage=name)
        now = self._clock()
        row = JobStage(
            id=previous.id if previous else uuid.uuid4(),
            job_id=job_id,
            stage_name=name,
            started_at=now,
            metadata=metadata or {},
            worker=worker,
            created_at=previous.created_at if previous else now,
            updated_at=now,
        )
        self._stages[job_id, name] = row
        return row

    async def complete_stage(
        self, job_id: UUID, stage: StageName, metadata: dict[str, Any] | None = None, *, worker: str | None = None
    ) -> JobStage:
        return await self._finish(job_id, stage, StageStatus.COMPLETED, None, metadata or {}, worker=worker)

    async def fail_stage(self, job_id: UUID, stage: StageName, error: str, *, worker: str | None = None) -> JobStage:
        check_text(error, "error")
        return await self._finish(job_id, stage, StageStatus.FAILED, error, {}, worker=worker)

    async def _finish(
        self,
        job_id: UUID,
        stage: StageName,
        status: StageStatus,
        error: str | None,
        metadata: dict[str, Any],
        *,
        worker: str | None,
    ) -> JobStage:
        name = StageName(stage)
        current = self._stages.get((job_id, name))
        if current is None:
            await self.get_job(job_id)
            msg = f"stage {name.value} was never started; call start_stage first"
            raise InvalidStateError(msg, current=None, requested=status.value, job_id=job_id)
        mine = worker is None or current.worker == worker
        if current.status is not StageStatus.RUNNING or not mine:
            return check_stage_finish(current, status, metadata, worker)
        if self._jobs[job_id].status.is_final:
            self._refuse(self._jobs[job_id], JobStatus.PROCESSING)
        now = max(self._clock(), current.started_at)
        row = current.model_copy(
            update={
                "status": status,
                "completed_at": now,
                "error": error,
                "metadata": {**current.metadata, **metadata},
                "updated_at": now,
            }
        )
        self._stages[job_id, name] = row
        return row

    async def list_stages(self, job_id: UUID) -> list[JobStage]:
        rows = [row for (owner, _), row in self._stages.items() if owner == job_id]
        return sorted(rows, key=lambda row: (row.started_at, row.stage_name.value))

    async def complete_job(self, job_id: UUID, video_url: str) -> Job:
        check_text(video_url, "video_url")
        job = await self.get_job(job_id)
        if job.status is JobStatus.COMPLETED and job.video_url == video_url:
            return job
        if job.status is not JobStatus.PROCESSING:
            self._refuse(job, JobStatus.COMPLETED)
        return self._update(
            job,
            status=JobStatus.COMPLETED,
            video_url=video_url,
            progress=100,
            estimated_remaining=0,
            completed_at=self._clock(),
        )

    async def fail_job(self, job_id: UUID, error_message: str) -> Job:
        check_text(error_message, "error_message")
        job = await self.get_job(job_id)
        if job.status is JobStatus.FAILED and job.error_message == error_message:
            return job
        if job.status.is_final:
            self._refuse(job, JobStatus.FAILED)
        failed = self._update(job, status=JobStatus.FAILED, error_message=error_message, estimated_remaining=None)
        now = self._clock()
        for key, row in list(self._stages.items()):  # its running stages end with it, as in fail_job's statement
            if key[0] == job_id and row.status is StageStatus.RUNNING:
                end = max(now, row.started_at)
                self._stages[key] = row.model_copy(
                    update={"status": StageStatus.FAILED, "completed_at": end, "error": error_message}
                )
        return failed

    @staticmethod
    def _refuse(job: Job, requested: JobStatus) -> NoReturn:
        msg = f"job is {job.status.value} and cannot become {requested.value}; status moves only forward"
        raise InvalidStateError(msg, current=job.status.value, requested=requested.value, job_id=job.id)
