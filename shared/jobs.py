"""JobRepository: the ``jobs`` and ``job_stages`` rows, moved only forward, returned as models.

A job's status moves queued -> processing -> completed | failed and never back; a wrong move is an
:class:`~shared.errors.InvalidStateError`, an unknown job a :class:`~shared.errors.JobNotFoundError`. Every
write is one statement and idempotent (the id is made here, a repeated move returns the row as it is), so the
DatabaseClient may safely send it again after a lost connection.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, NoReturn, Protocol, runtime_checkable
from uuid import UUID

from shared.database import Database, Record
from shared.errors import DatabaseError, InvalidStateError, JobNotFoundError, UserNotFoundError
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

__all__ = ["JobRepository", "JobStore"]

# The statuses a job can still leave, as text for SQL's any($n::text[]) (JobStatus.is_final defines the others).
_ACTIVE = tuple(status.value for status in JobStatus if not status.is_final)
# A keyset page. The optional cursor is written as a row comparison against coalesce(), never as
# `($2 is null or ...)`: under the generic plan asyncpg's cached statement switches to after five runs, that
# form became a Filter over every earlier row (118-162 ms at 90 % depth of 100k jobs); this one stays an
# Index Cond on jobs_user_id_created_at_id_idx (tests/integration/test_generic_plans.py).
_JOBS_PAGE = """
select * from public.jobs
 where user_id = $1
   and (created_at, id) < (coalesce($2::timestamptz, 'infinity'),
                           coalesce($3::uuid, '00000000-0000-0000-0000-000000000000'))
 order by created_at desc, id desc
 limit $4
"""
_FK_VIOLATION = "23503"


@runtime_checkable
class JobStore(Protocol):  # pragma: no mutate block
    """What pipeline modules do with jobs; JobRepository and shared.testing.FakeJobStore implement it."""

    async def create_job(
        self,
        *,
        user_id: UUID,
        audio_url: str,
        user_prompt: str,
        budget_limit: MoneyLike | None = None,
        job_id: UUID | None = None,
    ) -> Job: ...
    async def get_job(self, job_id: UUID) -> Job: ...
    async def list_jobs_for_user(
        self, user_id: UUID, *, limit: int = 50, before: datetime | None = None, before_id: UUID | None = None
    ) -> list[Job]: ...
    async def heartbeat_stage(self, job_id: UUID, stage: StageName, *, worker: str | None = None) -> bool: ...
    async def update_progress(
        self, job_id: UUID, stage: StageName, progress: int, estimated_remaining: int | None = None
    ) -> Job: ...
    async def start_stage(
        self, job_id: UUID, stage: StageName, metadata: dict[str, Any] | None = None, *, worker: str | None = None
    ) -> JobStage: ...
    async def complete_stage(
        self, job_id: UUID, stage: StageName, metadata: dict[str, Any] | None = None, *, worker: str | None = None
    ) -> JobStage: ...
    async def fail_stage(
        self, job_id: UUID, stage: StageName, error: str, *, worker: str | None = None
    ) -> JobStage: ...
    async def list_stages(self, job_id: UUID) -> list[JobStage]: ...
    async def complete_job(self, job_id: UUID, video_url: str) -> Job: ...
    async def fail_job(self, job_id: UUID, error_message: str) -> Job: ...


class JobRepository:
    """Read and move jobs and their stages in PostgreSQL (``Container.jobs``)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_job(
        self,
        *,
        user_id: UUID,
        audio_url: str,
        user_prompt: str,
        budget_limit: MoneyLike | None = None,
        job_id: UUID | None = None,
    ) -> Job:
        """Create a queued job (``job_id`` makes a retried call return the first job, not a second one)."""
        budget = check_job_input(audio_url, user_prompt, budget_limit)
        new_id = job_id or uuid.uuid4()
        try:
            row = await self._db.fetchrow(
                """
                with inserted as (
                    insert into public.jobs (id, user_id, audio_url, user_prompt, budget_limit)
                    values ($1, $2, $3, $4, $5)
                    on conflict (id) do nothing
                    returning *
                )
                select * from inserted
                union all
                select * from public.jobs where id = $1
                limit 1
                """,
                new_id,
                user_id,
                audio_url,
                user_prompt,
                budget,
            )
        except DatabaseError as error:
            if error.sqlstate == _FK_VIOLATION:
                msg = f"user {user_id} does not exist in auth.users; create the job for a signed-up user"
                raise UserNotFoundError(msg, user_id=user_id, job_id=new_id) from error
            raise
        job = _job(row, new_id)
        if job.user_id != user_id:
            msg = "a different job already has this id; let create_job choose the id"
            raise InvalidStateError(msg, job_id=new_id)
        return job

    async def get_job(self, job_id: UUID) -> Job:
        """Return the job, or raise JobNotFoundError."""
        return _job(await self._db.fetchrow("select * from public.jobs where id = $1", job_id), job_id)

    async def list_jobs_for_user(
        self, user_id: UUID, *, limit: int = 50, before: datetime | None = None, before_id: UUID | None = None
    ) -> list[Job]:
        """Return a page of a user's jobs, newest first (ties on ``created_at`` ordered by id, descending).

        For the next page pass the last job's ``created_at`` as ``before`` and its ``id`` as ``before_id``; every
        page costs the same at any depth. ``before`` alone returns the jobs created strictly before it.
        """
        check_page_limit(limit)
        check_cursor(before, before_id, name="before")
        rows = await self._db.fetch(_JOBS_PAGE, user_id, before, before_id, limit)
        return [Job.model_validate(dict(row)) for row in rows]

    async def update_progress(
        self, job_id: UUID, stage: StageName, progress: int, estimated_remaining: int | None = None
    ) -> Job:
        """Record where a queued or processing job is (it becomes processing); progress never goes back."""
        check_progress(progress, estimated_remaining)
        row = await self._db.fetchrow(
            """
            update public.jobs
               set status = 'processing', current_stage = $2, progress = greatest(progress, $3),
                   estimated_remaining = $4
             where id = $1 and status = any($5::text[])
            returning *
            """,
            job_id,
            StageName(stage).value,
            progress,
            estimated_remaining,
            _ACTIVE,
        )
        if row is None:
            await self._refuse(job_id, JobStatus.PROCESSING)
        return _job(row, job_id)

    async def start_stage(
        self, job_id: UUID, stage: StageName, metadata: dict[str, Any] | None = None, *, worker: str | None = None
    ) -> JobStage:
        """Claim ``stage`` for ``worker`` and make it the job's current stage; one caller wins.

        A stage starts when it has none yet or its last run failed. A completed stage is never reopened and a
        running one is never taken over: the loser gets a :class:`~shared.errors.StageConflictError` naming the
        winner (the same ``worker`` calling again gets its row back). A worker that died is recovered by the
        stage engine (``shared.stages``) or failed by ``maintain``, not by starting the stage again.
        """
        worker = worker or call_token()  # a resent call carries the same token; another call does not
        name = StageName(stage).value
        row = await self._db.fetchrow(
            """
            with job as (
                update public.jobs set status = 'processing', current_stage = $2
                 where id = $1 and status = any($4::text[])
                returning id
            )
            insert into public.job_stages (job_id, stage_name, metadata, worker)
            select id, $2, $3, $5 from job
            on conflict (job_id, stage_name) do update
               set status = 'running', started_at = now(), completed_at = null, error = null,
                   metadata = excluded.metadata, worker = excluded.worker, heartbeat_at = null
             where job_stages.status = 'failed'
            returning *
            """,
            job_id,
            name,
            metadata or {},
            _ACTIVE,
            worker,
        )
        if row is not None:
            return JobStage.model_validate(dict(row))
        current = await self._stage(job_id, name)
        if current is None:  # the job is not active (or unknown): say which
            await self._refuse(job_id, JobStatus.PROCESSING)
        check_stage_start(current, worker)  # raises for everything but our own running stage
        return current

    async def _stage(self, job_id: UUID, name: str) -> JobStage | None:
        current = await self._db.fetchrow(
            "select * from public.job_stages where job_id = $1 and stage_name = $2", job_id, name
        )
        return None if current is None else JobStage.model_validate(dict(current))

    async def complete_stage(
        self, job_id: UUID, stage: StageName, metadata: dict[str, Any] | None = None, *, worker: str | None = None
    ) -> JobStage:
        """Mark a running stage of an active job completed, merging ``metadata`` into what it had.

        Of two completes, one wins; the other gets a :class:`~shared.errors.StageConflictError` naming the
        winner, unless it is the same call again (same metadata). With ``worker``, only that worker's run moves.
        """
        return await self._finish_stage(job_id, stage, StageStatus.COMPLETED, None, metadata or {}, worker=worker)

    async def fail_stage(self, job_id: UUID, stage: StageName, error: str, *, worker: str | None = None) -> JobStage:
        """Mark a running stage failed with the reason."""
        check_text(error, "error")
        return await self._finish_stage(job_id, stage, StageStatus.FAILED, error, {}, worker=worker)

    async def _finish_stage(
        self,
        job_id: UUID,
        stage: StageName,
        status: StageStatus,
        error: str | None,
        metadata: dict[str, Any],
        *,
        worker: str | None,
    ) -> JobStage:
        name = StageName(stage).value
        row = await self._db.fetchrow(
            """
            update public.job_stages s
               set status = $3, completed_at = greatest(now(), s.started_at), error = $4,
                   metadata = s.metadata || $5
              from public.jobs j
             where s.job_id = $1 and s.stage_name = $2 and s.status = 'running'
               and ($6::text is null or s.worker is not distinct from $6)
               and j.id = s.job_id and j.status = any($7::text[])
            returning s.*
            """,
            job_id,
            name,
            status.value,
            error,
            metadata,
            worker,
            _ACTIVE,
        )
        if row is not None:
            return JobStage.model_validate(dict(row))
        current = await self._stage(job_id, name)
        if current is None:
            await self.get_job(job_id)  # raises JobNotFoundError for an unknown job
            msg = f"stage {name} was never started; call start_stage first"
            raise InvalidStateError(msg, current=None, requested=status.value, job_id=job_id)
        if current.status is StageStatus.RUNNING and current.worker == worker:
            await self._refuse(job_id, JobStatus.PROCESSING)  # ours, but the job is no longer active
        return check_stage_finish(current, status, metadata, worker)

    async def heartbeat_stage(self, job_id: UUID, stage: StageName, *, worker: str | None = None) -> bool:
        """Record that the worker of a running stage is alive; False means stop: the stage or its job has ended.

        False when the stage is not running (completed, failed, or failed with its job by ``fail_job``), the job
        is not active, or (with ``worker``) another worker holds it.
        """
        status = await self._db.execute(
            """
            update public.job_stages s set heartbeat_at = now()
              from public.jobs j
             where s.job_id = $1 and s.stage_name = $2 and s.status = 'running'
               and ($3::text is null or s.worker is not distinct from $3)
               and j.id = s.job_id and j.status = any($4::text[])
            """,
            job_id,
            StageName(stage).value,
            worker,
            _ACTIVE,
        )
        return bool(status == "UPDATE 1")

    async def list_stages(self, job_id: UUID) -> list[JobStage]:
        """Return the job's stage rows in the order they started (at most one per stage name: six rows)."""
        rows = await self._db.fetch(
            "select * from public.job_stages where job_id = $1 order by started_at, stage_name", job_id
        )
        return [JobStage.model_validate(dict(row)) for row in rows]

    async def complete_job(self, job_id: UUID, video_url: str) -> Job:
        """Mark a processing job completed with its video."""
        check_text(video_url, "video_url")
        row = await self._db.fetchrow(
            """
            with moved as (
                update public.jobs
                   set status = 'completed', video_url = $2, progress = 100, estimated_remaining = 0,
                       completed_at = now()
                 where id = $1 and status = 'processing'
                returning *
            )
            select * from moved
            union all  -- the same move again (a retried call): the row as it is
            select * from public.jobs where id = $1 and status = 'completed' and video_url = $2
            limit 1
            """,
            job_id,
            video_url,
        )
        if row is None:
            await self._refuse(job_id, JobStatus.COMPLETED)
        return _job(row, job_id)

    async def fail_job(self, job_id: UUID, error_message: str) -> Job:
        """Mark a queued or processing job failed with the reason."""
        check_text(error_message, "error_message")
        row = await self._db.fetchrow(
            """
            with moved as (
                update public.jobs
                   set status = 'failed', error_message = $2, estimated_remaining = null
                 where id = $1 and status = any($3::text[])
                returning *
            ),
            stopped as (  -- its running stages end with it: their heartbeats say stop, their completes are refused
                update public.job_stages
                   set status = 'failed', completed_at = greatest(now(), started_at), error = $2
                 where job_id = (select id from moved) and status = 'running'
            )
            select * from moved
            union all  -- the same move again (a retried call): the row as it is
            select * from public.jobs where id = $1 and status = 'failed' and error_message = $2
            limit 1
            """,
            job_id,
            error_message,
            _ACTIVE,
        )
        if row is None:
            await self._refuse(job_id, JobStatus.FAILED)
        return _job(row, job_id)

    async def _refuse(self, job_id: UUID, requested: JobStatus) -> NoReturn:
        """Raise why a move did not happen: the job is unknown, or its status forbids the move."""
        job = await self.get_job(job_id)
        msg = f"job is {job.status.value} and cannot become {requested.value}; status moves only forward"
        raise InvalidStateError(msg, current=job.status.value, requested=requested.value, job_id=job_id)


def _job(row: Record | None, job_id: UUID) -> Job:
    if row is None:
        raise JobNotFoundError(job_id=job_id)
    return Job.model_validate(dict(row))
