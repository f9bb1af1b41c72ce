"""Housekeeping an operator runs (``python -m shared maintain``, or :func:`maintain`), and the stage heartbeat.

A running stage's worker keeps a heartbeat (``async with stage_heartbeat(jobs, job_id, stage):`` renews
``job_stages.heartbeat_at`` in the background). Then :func:`maintain`, in bounded batches:

1. fails every processing job with no sign of life (its job row's last update, its running stage's start or
   heartbeat) for longer than ``STAGE_HEARTBEAT_TIMEOUT_SECONDS``, its running stage with it, saying why;
2. releases active reservations that expired more than ``RESERVATION_RELEASE_GRACE_SECONDS`` ago (their
   worker stopped renewing them: it died, or is paused), so they stop being rows anyone has to skip; each is
   marked lapsed, and a paused worker's later commit is still recorded (as an overrun);
3. hands to pgqueuer again every stage item that lost its delivery (queued, or running with a stale heartbeat,
   and no delivery left: a worker that failed between pgqueuer's pick and its claim), so no item waits forever;
4. deletes committed and released reservation rows older than ``RESERVATION_RETENTION_DAYS``. The cost
   history is untouched: what a committed reservation spent is its ``job_costs`` row, which no reservation
   row is needed for.

It is safe to run from several machines at once: every batch is one statement that locks its rows with
``FOR UPDATE SKIP LOCKED`` (a second run takes other rows, never waits, and never counts a row twice), and
idempotent (a row it moved no longer matches). No statement touches more than ``MAINTENANCE_BATCH_SIZE``
rows, so no lock is held for long. The run reports what it did as one log line and a :class:`MaintenanceReport`,
and each batch that failed jobs or released reservations logs their ids (``job_ids``, ``reservation_ids``), so
"why did job X fail" is a search of the log, not SQL. Pruned rows are finished history and only counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol
from uuid import UUID

from shared.config import Settings
from shared.database import Database
from shared.errors import PipelineError, ValidationError
from shared.models import StageName

__all__ = ["MaintenancePolicy", "MaintenanceReport", "StageHeartbeats", "maintain", "stage_heartbeat"]

_log = logging.getLogger("shared.maintenance")

# The cutoffs are `now() - $1`, never clock_timestamp(): a volatile function cannot be an index condition, and
# each batch would read every row of the index instead of its oldest ones (tests/integration/test_generic_plans.py).
_FAIL_SILENT_JOBS = """
with stale as (
    select array(
        select j.id
          from public.jobs j
         where j.status = 'processing'
           and j.updated_at < now() - $1::interval
           and not exists (
               select 1 from public.job_stages s
                where s.job_id = j.id and s.status = 'running'
                  and greatest(s.started_at, s.heartbeat_at) >= now() - $1::interval
           )
           -- a job the stage engine holds is run again by it, never failed here (shared.stages)
           and not exists (
               select 1 from public.stage_runs r where r.job_id = j.id and r.status in ('queued', 'running')
           )
         order by j.updated_at
         limit $2
           for update of j skip locked
    ) as ids
), stages as (
    update public.job_stages s
       set status = 'failed', completed_at = greatest(now(), s.started_at), error = $3
     where s.job_id = any((select ids from stale)::uuid[]) and s.status = 'running'
    returning s.job_id
), failed as (
    update public.jobs j
       set status = 'failed', estimated_remaining = null,
           error_message = coalesce('stage ' || j.current_stage || ': ', '') || $3
     where j.id = any((select ids from stale)::uuid[])
    returning j.id
)
select (select count(*) from failed) as jobs, (select count(*) from stages) as stages,
       array(select id from failed) as ids
"""

_RELEASE_EXPIRED = """
with released as (
    update public.job_cost_reservations r
       set status = 'released', lapsed_at = now()
     where r.id = any(array(
         select e.id
           from public.job_cost_reservations e
          where e.status = 'active' and e.expires_at < now() - $1::interval
          order by e.expires_at
          limit $2
            for update skip locked
     ))
    returning r.id, r.job_id
)
select count(*) as moved, array(select id from released) as ids, array(select job_id from released) as job_ids
  from released
"""

# `status <> 'active'` matches job_cost_reservations_finished_created_at_idx's predicate, so a batch reads
# only the oldest finished rows.
_PRUNE_FINISHED = """
with deleted as (
    delete from public.job_cost_reservations r
     where r.id = any(array(
         select o.id
           from public.job_cost_reservations o
          where o.status <> 'active' and o.created_at < now() - $1::interval
          order by o.created_at
          limit $2
            for update skip locked
     ))
    returning r.id
)
select count(*) as moved, array[]::uuid[] as ids, array[]::uuid[] as job_ids from deleted
"""


@dataclass(frozen=True, slots=True)
class MaintenancePolicy:
    """How old is too old, and how many rows one statement may touch."""

    stage_timeout: timedelta
    release_grace: timedelta
    retention: timedelta
    batch_size: int = 500

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 10_000:
            raise ValidationError(f"batch_size must be 1-10000, got {self.batch_size}", field="batch_size")
        for name in ("stage_timeout", "retention"):
            if getattr(self, name) <= timedelta(0):
                raise ValidationError(f"{name} must be longer than zero", field=name)
        if self.release_grace < timedelta(0):
            raise ValidationError("release_grace must not be negative", field="release_grace")

    @classmethod
    def from_settings(cls, settings: Settings) -> MaintenancePolicy:
        """Return the policy the settings describe (``STAGE_HEARTBEAT_TIMEOUT_SECONDS`` and the rest)."""
        return cls(
            stage_timeout=timedelta(seconds=settings.stage_heartbeat_timeout_seconds),
            release_grace=timedelta(seconds=settings.reservation_release_grace_seconds),
            retention=timedelta(days=settings.reservation_retention_days),
            batch_size=settings.maintenance_batch_size,
        )


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """What one :func:`maintain` run did; ``batches`` counts its statements (each at most a batch of rows)."""

    failed_jobs: int
    failed_stages: int
    released_reservations: int
    pruned_reservations: int
    batches: int
    seconds: float
    redelivered_stages: int = 0  # stage items handed to pgqueuer again (their delivery was lost)

    def summary(self) -> str:
        """Return the console summary, one line per task."""
        return "\n".join(
            [
                f"failed {self.failed_jobs} job(s) with no heartbeat ({self.failed_stages} running stage(s))",
                f"released {self.released_reservations} expired reservation(s)",
                f"queued {self.redelivered_stages} stage item(s) whose delivery was lost",
                f"pruned {self.pruned_reservations} finished reservation row(s)",
                f"{self.batches} batch(es) in {self.seconds:.2f} s",
            ]
        )


# Stage items (shared.stages) that are live but have no pgqueuer delivery: one is queued for each, once its own
# timestamp is older than the stage timeout (a fresh item always has its delivery: submit, requeue and the
# worker's hand-back insert it in the same statement as the item's change).
_REDELIVER_ORPHANS = """
with orphans as (
    select r.id, r.stage, r.job_id
      from public.stage_runs r
     where ((r.status = 'running' and r.heartbeat_at < now() - $1::interval)
            or (r.status = 'queued' and r.heartbeat_at is null and r.queued_at < now() - $1::interval))
       and not exists (select from pgqueuer.pgqueuer q where q.payload = convert_to(r.id::text, 'UTF8'))
     order by r.id
     limit $2
       for update skip locked
),
delivered as (
    select public.stage_deliver(array(select id from orphans), array(select stage from orphans), now()) as n
)
select (select n from delivered) as moved, array(select id from orphans) as ids,
       array(select job_id from orphans) as job_ids
"""


async def maintain(db: Database, policy: MaintenancePolicy) -> MaintenanceReport:
    """Fail silent jobs, release expired reservations and prune old ones, in bounded batches; log one line.

    Raises:
        DatabaseError: a statement failed; what earlier batches did stays done, and a new run goes on from there.
    """
    started = time.perf_counter()
    batches = 0
    failed_jobs = failed_stages = 0
    message = (
        f"its worker sent no heartbeat for more than {policy.stage_timeout.total_seconds():g} s (it stopped or "
        "lost the database); the job was failed by `python -m shared maintain`: submit it again"
    )
    while True:
        row = await db.fetchrow(_FAIL_SILENT_JOBS, policy.stage_timeout, policy.batch_size, message)
        assert row is not None  # noqa: S101 - the statement always returns its one row of counts
        batches += 1
        failed_jobs += row["jobs"]
        failed_stages += row["stages"]
        if row["ids"]:
            ids = [str(job_id) for job_id in row["ids"]]
            _log.warning("maintenance failed %d silent job(s): %s", len(ids), ", ".join(ids), extra={"job_ids": ids})
        if row["jobs"] < policy.batch_size:
            break
    released, count = await _in_batches(
        db, _RELEASE_EXPIRED, policy.release_grace, policy.batch_size, action="released expired reservation(s)"
    )
    batches += count
    redelivered, count = await _in_batches(
        db, _REDELIVER_ORPHANS, policy.stage_timeout, policy.batch_size, action="queued a lost stage delivery"
    )
    batches += count
    pruned, count = await _in_batches(db, _PRUNE_FINISHED, policy.retention, policy.batch_size)
    batches += count
    report = MaintenanceReport(
        failed_jobs, failed_stages, released, pruned, batches, time.perf_counter() - started, redelivered
    )
    _log.info(
        "maintenance: failed %d silent job(s), released %d expired reservation(s), pruned %d finished "
        "reservation row(s) in %d batch(es)",
        failed_jobs,
        released,
        pruned,
        batches,
        extra={
            "failed_jobs": failed_jobs,
            "failed_stages": failed_stages,
            "released_reservations": released,
            "redelivered_stages": redelivered,
            "pruned_reservations": pruned,
            "batches": batches,
            "duration_ms": round(report.seconds * 1000, 1),
        },
    )
    return report


async def _in_batches(
    db: Database, statement: str, age: timedelta, batch_size: int, *, action: str | None = None
) -> tuple[int, int]:
    """Run ``statement`` until a batch comes back short; return the rows it moved and the batches run.

    With ``action``, each batch that moved rows is logged with their ids and their jobs' ids.
    """
    total = batches = 0
    while True:
        row = await db.fetchrow(statement, age, batch_size)
        assert row is not None  # noqa: S101 - the statement always returns its one row
        moved: int = row["moved"]
        batches += 1
        total += moved
        if action is not None and moved:
            ids = [str(value) for value in row["ids"]]
            job_ids = sorted({str(value) for value in row["job_ids"]})
            _log.info(
                "maintenance %s %d: %s (jobs %s)",
                action,
                moved,
                ", ".join(ids),
                ", ".join(job_ids),
                extra={"reservation_ids": ids, "job_ids": job_ids},
            )
        if moved < batch_size:
            return total, batches


class StageHeartbeats(Protocol):
    """What :func:`stage_heartbeat` needs (JobRepository has it)."""

    async def heartbeat_stage(self, job_id: UUID, stage: StageName) -> bool: ...


@contextlib.asynccontextmanager
async def stage_heartbeat(
    jobs: StageHeartbeats, job_id: UUID, stage: StageName, *, every: timedelta | None = None
) -> AsyncIterator[None]:
    """Renew the running stage's heartbeat every ``every`` while the block runs; stop when it ends.

    Use it around the work of a stage started with ``start_stage``, with
    ``every=settings.stage_heartbeat_interval`` (``STAGE_HEARTBEAT_INTERVAL_SECONDS``); left out, it is that
    setting's default. A failed renewal is logged and tried again at the next beat; a stage
    that is no longer running (it finished, or maintenance failed it) stops the beats.
    """
    if every is None:
        every = timedelta(seconds=Settings.model_fields["stage_heartbeat_interval_seconds"].default)
    interval = every.total_seconds()
    if interval <= 0:
        raise ValidationError("every must be longer than zero", field="every")

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                running = await jobs.heartbeat_stage(job_id, stage)
            except PipelineError:
                _log.warning("stage %s heartbeat failed; trying again in %g s", stage, interval, exc_info=True)
                continue
            if not running:
                _log.warning(
                    "stage %s of job %s is no longer running; its heartbeat stops",
                    stage,
                    job_id,
                    extra={"job_id": str(job_id), "stage": str(stage)},
                )
                return

    task = asyncio.create_task(beat(), name=f"heartbeat {job_id} {stage}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
