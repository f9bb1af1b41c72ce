"""The operator's view: ``python -m shared status`` (the whole pipeline) and ``python -m shared job <id>`` (one job).

Both only read, and every statement is bounded: live rows through partial indexes (``stage_runs_live_idx``,
``jobs_active_status_idx``, ``job_cost_reservations_active_idx``), today's costs and the last day's failures
through range indexes (migration ``20261206000900_operator_view.sql``), one job's rows through its ``job_id``
indexes, each list capped by ``LIMIT``; so neither grows with the number of finished jobs
(benchmarks/bench_operator.py: a few milliseconds at 1M jobs).

What ``status`` shows: stage queues (queued and running per stage, the oldest queued), running stages whose
heartbeat is older than ``STAGE_HEARTBEAT_TIMEOUT_SECONDS`` (stuck: ``maintain`` will fail them), pgqueuer's
queue per entrypoint, jobs in flight, active budget holds (and those past expiry), spend today per API, and
the top failure reasons of the last 24 hours. What ``job`` shows: the job row, then its timeline (stage runs
with attempts, workers and errors; the older ``job_stages`` rows; cost rows; reservations) in time order,
and the trace id of its stages (``stage_runs.trace_context``'s traceparent) to look up in the tracing backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TextIO
from uuid import UUID

from shared.errors import JobNotFoundError

if TYPE_CHECKING:
    from shared.database import Database

__all__ = ["JobTimeline", "PipelineStatus", "print_job", "print_status", "read_job", "read_status"]

# Seconds each statement may take: the view must answer, not hang, on a database in trouble.
STATEMENT_TIMEOUT_SECONDS = 5.0
# Rows listed at most per section.
LIST_LIMIT = 20
TIMELINE_LIMIT = 500

_STAGE_QUEUES = """
select stage, status, count(*)::int as count, min(queued_at) as oldest_queued,
       min(coalesce(heartbeat_at, started_at)) as oldest_beat
  from public.stage_runs
 where status in ('queued', 'running')
 group by stage, status
 order by stage, status
"""

_STUCK = """
select job_id, stage, item, attempt, worker, coalesce(heartbeat_at, started_at) as last_beat
  from public.stage_runs
 where status = 'running' and coalesce(heartbeat_at, started_at) < now() - $1::interval
 order by heartbeat_at nulls first
 limit $2
"""

_PGQUEUER = """
select entrypoint, status::text as status, count(*)::int as count, min(created) as oldest
  from pgqueuer.pgqueuer
 group by entrypoint, status
 order by entrypoint, status
"""

_JOBS_IN_FLIGHT = """
select status, count(*)::int as count
  from public.jobs
 where status in ('queued', 'processing')
 group by status
"""

_HOLDS = """
select count(*)::int as count, coalesce(sum(estimated_cost), 0) as amount,
       (count(*) filter (where expires_at < now()))::int as expired
  from public.job_cost_reservations
 where status = 'active'
"""

_SPEND_TODAY = """
select api_name, sum(cost) as spent, count(*)::int as calls
  from public.job_costs
 where created_at >= date_trunc('day', now())
 group by api_name
 order by spent desc
 limit $1
"""

_FAILURES = """
select stage, left(coalesce(error, '(no error text)'), 160) as reason, count(*)::int as count, max(finished_at) as last
  from public.stage_runs
 where status = 'failed' and finished_at >= now() - interval '24 hours'
 group by 1, 2
 order by count desc, last desc
 limit $1
"""

_JOB = """
select id, user_id, status, current_stage, progress, total_cost, budget_limit, error_message,
       created_at, updated_at, completed_at
  from public.jobs where id = $1
"""

_STAGE_RUNS = """
select stage, item, status, attempt, max_attempts, worker, error, trace_context ->> 'traceparent' as traceparent,
       queued_at, started_at, heartbeat_at, finished_at
  from public.stage_runs where job_id = $1
 order by queued_at, stage, item
 limit $2
"""

_JOB_STAGES = """
select stage_name, status, started_at, completed_at, error
  from public.job_stages where job_id = $1
 order by started_at
 limit $2
"""

_COSTS = """
select stage_name, api_name, cost, created_at from public.job_costs where job_id = $1 order by created_at, id limit $2
"""

_RESERVATIONS = """
select stage_name, api_name, estimated_cost, status, expires_at, created_at
  from public.job_cost_reservations where job_id = $1
 order by created_at
 limit $2
"""


@dataclass(frozen=True, slots=True)
class PipelineStatus:
    """What ``python -m shared status`` shows; each list is rows as read (at most ``LIST_LIMIT``)."""

    read_at: datetime
    stage_queues: list[dict[str, Any]]
    stuck: list[dict[str, Any]]
    pgqueuer: list[dict[str, Any]] | None  # None: pgqueuer's schema is not installed
    jobs_in_flight: dict[str, int]
    holds: dict[str, Any]
    spend_today: list[dict[str, Any]]
    failures: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class JobTimeline:
    """What ``python -m shared job <id>`` shows: the job, and its events in time order."""

    job: dict[str, Any]
    stage_runs: list[dict[str, Any]]
    job_stages: list[dict[str, Any]]
    costs: list[dict[str, Any]]
    reservations: list[dict[str, Any]]

    @property
    def trace_ids(self) -> list[str]:
        """Return the trace ids of the job's stages (``traceparent`` is ``00-<trace id>-<span id>-<flags>``)."""
        ids: list[str] = []
        for run in self.stage_runs:
            parts = str(run.get("traceparent") or "").split("-")
            if len(parts) == 4 and parts[1] not in ids:
                ids.append(parts[1])
        return ids


async def _rows(db: Database, query: str, *args: object) -> list[dict[str, Any]]:
    return [dict(row) for row in await db.fetch(query, *args, timeout=STATEMENT_TIMEOUT_SECONDS)]


async def read_status(db: Database, *, stuck_after: timedelta) -> PipelineStatus:
    """Read the pipeline's state in bounded statements (``stuck_after``: STAGE_HEARTBEAT_TIMEOUT_SECONDS)."""
    read_at: datetime = await db.fetchval("select now()", timeout=STATEMENT_TIMEOUT_SECONDS)
    has_pgqueuer = await db.fetchval(
        "select to_regclass('pgqueuer.pgqueuer') is not null", timeout=STATEMENT_TIMEOUT_SECONDS
    )
    holds = await db.fetchrow(_HOLDS, timeout=STATEMENT_TIMEOUT_SECONDS)
    return PipelineStatus(
        read_at=read_at,
        stage_queues=await _rows(db, _STAGE_QUEUES),
        stuck=await _rows(db, _STUCK, stuck_after, LIST_LIMIT),
        pgqueuer=await _rows(db, _PGQUEUER) if has_pgqueuer else None,
        jobs_in_flight={row["status"]: row["count"] for row in await _rows(db, _JOBS_IN_FLIGHT)},
        holds=dict(holds) if holds is not None else {},
        spend_today=await _rows(db, _SPEND_TODAY, LIST_LIMIT),
        failures=await _rows(db, _FAILURES, 5),
    )


async def read_job(db: Database, job_id: UUID) -> JobTimeline:
    """Read one job and its timeline.

    Raises:
        JobNotFoundError: no job has this id.
    """
    job = await db.fetchrow(_JOB, job_id, timeout=STATEMENT_TIMEOUT_SECONDS)
    if job is None:
        raise JobNotFoundError(job_id=job_id)
    return JobTimeline(
        job=dict(job),
        stage_runs=await _rows(db, _STAGE_RUNS, job_id, TIMELINE_LIMIT),
        job_stages=await _rows(db, _JOB_STAGES, job_id, TIMELINE_LIMIT),
        costs=await _rows(db, _COSTS, job_id, TIMELINE_LIMIT),
        reservations=await _rows(db, _RESERVATIONS, job_id, TIMELINE_LIMIT),
    )


def _age(now: datetime, then: datetime | None) -> str:
    if then is None:
        return "-"
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def print_status(status: PipelineStatus, out: TextIO) -> None:
    """Print ``status`` as the operator reads it, one section after another."""
    now = status.read_at
    print(f"pipeline status at {_time(now)} UTC", file=out)
    print("\nstage queues (stage_runs):", file=out)
    if not status.stage_queues:
        print("  nothing queued or running", file=out)
    for row in status.stage_queues:
        oldest = row["oldest_queued"] if row["status"] == "queued" else row["oldest_beat"]
        what = "oldest queued" if row["status"] == "queued" else "oldest heartbeat"
        print(f"  {row['stage']:<24} {row['status']:<8} {row['count']:>7}   {what} {_age(now, oldest)} ago", file=out)
    print(f"\nstuck (running, no heartbeat; `maintain` fails them): {len(status.stuck)}", file=out)
    for row in status.stuck:
        print(
            f"  job {row['job_id']} {row['stage']}{'/' + row['item'] if row['item'] else ''} attempt "
            f"{row['attempt']} on {row['worker'] or '?'}, last heartbeat {_age(now, row['last_beat'])} ago",
            file=out,
        )
    print("\npgqueuer queue:", file=out)
    if status.pgqueuer is None:
        print("  not installed", file=out)
    elif not status.pgqueuer:
        print("  empty", file=out)
    for row in status.pgqueuer or []:
        print(
            f"  {row['entrypoint']:<24} {row['status']:<8} {row['count']:>7}   oldest {_age(now, row['oldest'])}",
            file=out,
        )
    flight = status.jobs_in_flight
    print(f"\njobs in flight: {flight.get('queued', 0)} queued, {flight.get('processing', 0)} processing", file=out)
    holds = status.holds
    print(
        f"budget holds: {holds.get('count', 0)} active (${Decimal(holds.get('amount', 0)):.4f}), "
        f"{holds.get('expired', 0)} past expiry",
        file=out,
    )
    print("\nspend today (UTC) per API:", file=out)
    if not status.spend_today:
        print("  nothing yet", file=out)
    for row in status.spend_today:
        print(f"  {row['api_name']:<24} ${row['spent']:>12.4f}   {row['calls']} call(s)", file=out)
    print("\ntop failure reasons (last 24 h):", file=out)
    if not status.failures:
        print("  none", file=out)
    for row in status.failures:
        print(f"  {row['count']:>5} x {row['stage']}: {row['reason']}", file=out)


def print_job(timeline: JobTimeline, out: TextIO) -> None:
    """Print one job: its row, then every event in time order, then its trace ids."""
    job = timeline.job
    print(f"job {job['id']} ({job['status']}, stage {job['current_stage'] or '-'}, {job['progress']} %)", file=out)
    print(
        f"  user {job['user_id']}, created {_time(job['created_at'])}, updated {_time(job['updated_at'])}, "
        f"cost ${job['total_cost']:.4f} of {'default' if job['budget_limit'] is None else job['budget_limit']}",
        file=out,
    )
    if job["error_message"]:
        print(f"  error: {job['error_message']}", file=out)
    events: list[tuple[datetime, str]] = []
    for run in timeline.stage_runs:
        name = run["stage"] + (f"/{run['item']}" if run["item"] else "")
        events.append((run["queued_at"], f"stage {name} queued (attempts {run['max_attempts'] or 'per handler'})"))
        if run["started_at"] is not None:
            events.append(
                (run["started_at"], f"stage {name} attempt {run['attempt']} started on {run['worker'] or '?'}")
            )
        if run["finished_at"] is not None:
            error = f": {run['error']}" if run["error"] else ""
            events.append((run["finished_at"], f"stage {name} {run['status']} after attempt {run['attempt']}{error}"))
        elif run["status"] == "running":
            events.append((run["heartbeat_at"] or run["started_at"], f"stage {name} last heartbeat"))
    for stage in timeline.job_stages:
        events.append((stage["started_at"], f"job_stages {stage['stage_name']} started"))
        if stage["completed_at"] is not None:
            error = f": {stage['error']}" if stage["error"] else ""
            events.append((stage["completed_at"], f"job_stages {stage['stage_name']} {stage['status']}{error}"))
    events += [
        (cost["created_at"], f"cost ${cost['cost']:.4f} {cost['api_name']} ({cost['stage_name']})")
        for cost in timeline.costs
    ]
    events += [
        (
            hold["created_at"],
            f"hold ${hold['estimated_cost']:.4f} {hold['api_name']} ({hold['stage_name']}) now {hold['status']}, "
            f"expires {_time(hold['expires_at'])}",
        )
        for hold in timeline.reservations
    ]
    print("\ntimeline (UTC):", file=out)
    for when, what in sorted(events, key=lambda event: event[0]):
        print(f"  {_time(when)}  {what}", file=out)
    if not events:
        print("  no stage, cost or hold yet", file=out)
    traces = timeline.trace_ids
    print(f"\ntrace id: {', '.join(traces) if traces else '- (no traceparent recorded)'}", file=out)
