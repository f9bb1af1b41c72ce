"""``python -m shared status`` and ``python -m shared job <id>``: what an operator reads instead of writing SQL."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta

import pytest

from shared.cli import main
from shared.database import DatabaseClient
from shared.jobs import JobRepository
from shared.operator_view import print_job, print_status, read_job, read_status
from tests.fixtures.postgres import MakeUser

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def _world(db: DatabaseClient, jobs: JobRepository, make_user: MakeUser) -> uuid.UUID:
    """One failed job with a stage run, a cost and a hold; a stuck running stage and a queued one elsewhere."""
    user = await make_user()
    failed = (await jobs.create_job(user_id=user, audio_url="a/b.wav", user_prompt="neon")).id
    other = (await jobs.create_job(user_id=user, audio_url="a/c.wav", user_prompt="neon")).id
    await db.execute(
        """
        insert into public.stage_runs (job_id, stage, item, status, attempt, max_attempts, worker, error,
                                       trace_context, queued_at, started_at, finished_at)
        values ($1, 'clip_generation', '3', 'failed', 3, 3, 'worker-a', 'provider refused: content policy',
                jsonb_build_object('traceparent', '00-' || $2 || '-00f067aa0ba902b7-01'),
                now() - interval '5 minutes', now() - interval '4 minutes', now() - interval '1 minute')
        """,
        failed,
        TRACE,
    )
    await db.execute(
        """
        insert into public.stage_runs (job_id, stage, status, attempt, attempt_id, worker, started_at, heartbeat_at)
        values ($1, 'composition', 'running', 1, gen_random_uuid(), 'worker-b', now() - interval '2 hours',
                now() - interval '1 hour')
        """,
        other,
    )
    await db.execute("insert into public.stage_runs (job_id, stage) values ($1, 'scene_planning')", other)
    await db.execute(
        "insert into public.job_costs (job_id, stage_name, api_name, cost) values ($1, 'clip_generation', 'replicate',"
        " 0.25)",
        failed,
    )
    await db.execute(
        "insert into public.job_cost_reservations (job_id, stage_name, api_name, estimated_cost, expires_at)"
        " values ($1, 'clip_generation', 'replicate', 0.5, now() - interval '1 minute')",
        other,
    )
    return failed


async def test_status_shows_queues_stuck_stages_holds_spend_and_failures(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser
) -> None:
    await _world(db, jobs, make_user)
    out = io.StringIO()
    print_status(await read_status(db, stuck_after=timedelta(minutes=10)), out)
    text = out.getvalue()
    assert "scene_planning           queued         1" in text
    assert "composition              running        1" in text
    assert "stuck (running, no heartbeat; `maintain` fails them): 1" in text
    assert "worker-b, last heartbeat 60m ago" in text
    assert "jobs in flight: 2 queued, 0 processing" in text
    assert "budget holds: 1 active ($0.5000), 1 past expiry" in text
    assert "replicate                $      0.2500   1 call(s)" in text
    assert "1 x clip_generation: provider refused: content policy" in text


async def test_job_shows_its_timeline_costs_errors_and_trace_id(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser
) -> None:
    failed = await _world(db, jobs, make_user)
    timeline = await read_job(db, failed)
    out = io.StringIO()
    print_job(timeline, out)
    text = out.getvalue()
    assert [TRACE] == timeline.trace_ids
    assert f"trace id: {TRACE}" in text
    events = [line.split("  ", 2)[-1] for line in text.split("timeline (UTC):\n")[1].splitlines() if line.strip()]
    assert "stage clip_generation/3 queued (attempts 3)" == events[0]
    assert "stage clip_generation/3 attempt 3 started on worker-a" == events[1]
    assert "stage clip_generation/3 failed after attempt 3: provider refused: content policy" in events
    assert any(event.startswith("cost $0.2500 replicate") for event in events)


async def test_the_view_only_reads(db: DatabaseClient, jobs: JobRepository, make_user: MakeUser) -> None:
    """Both commands run in a read-only transaction without error: nothing they send writes."""
    failed = await _world(db, jobs, make_user)
    async with db.transaction():
        await db.execute("set transaction read only")
        await read_status(db, stuck_after=timedelta(minutes=10))
        await read_job(db, failed)


@pytest.mark.parametrize("command", ["status", "job"])
def test_the_commands_run_from_the_command_line(command: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_dsn)
    out = io.StringIO()
    argv = [command] if command == "status" else [command, str(uuid.uuid4())]
    status = main(argv, out=out)
    if command == "status":
        assert 0 == status, out.getvalue()
        assert "pipeline status at" in out.getvalue()
    else:
        assert 1 == status
        assert "Job not found" in out.getvalue()
