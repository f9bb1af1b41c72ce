"""Housekeeping on the real PostgreSQL: silent jobs failed, expired reservations released, old ones pruned.

Ages are made by moving rows back in time in the test's own database (the updated_at trigger switched off for
that one statement), never by waiting; only the live worker's heartbeat runs in real time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from shared.cli import main
from shared.config import Settings
from shared.cost_tracking import CostTracker
from shared.database import DatabaseClient, init_database
from shared.errors import ValidationError
from shared.jobs import JobRepository
from shared.maintenance import MaintenancePolicy, MaintenanceReport, maintain, stage_heartbeat
from shared.models import JobStatus, StageName, StageStatus
from tests.fixtures.postgres import MakeUser

STAGE = StageName.CLIP_GENERATION
POLICY = MaintenancePolicy(
    stage_timeout=timedelta(minutes=10), release_grace=timedelta(minutes=5), retention=timedelta(days=30)
)
NOTHING = (0, 0, 0, 0)


def counts(report: MaintenanceReport) -> tuple[int, int, int, int]:
    return (report.failed_jobs, report.failed_stages, report.released_reservations, report.pruned_reservations)


@pytest.fixture
def tracker(db: DatabaseClient) -> CostTracker:
    return CostTracker(db, default_budget=Decimal(50), reservation_ttl=timedelta(minutes=15))


async def processing_job(jobs: JobRepository, make_user: MakeUser) -> uuid.UUID:
    job = await jobs.create_job(user_id=await make_user(), audio_url="a.mp3", user_prompt="p")
    await jobs.start_stage(job.id, STAGE)
    return job.id


async def age_job(db: DatabaseClient, job_id: uuid.UUID, age: timedelta) -> None:
    """Make the job and its stages look ``age`` old: last updated, started and beaten that long ago."""
    async with db.transaction():
        await db.execute("alter table public.jobs disable trigger jobs_set_updated_at")
        await db.execute(
            "update public.jobs set created_at = now() - $2::interval, updated_at = now() - $2::interval where id = $1",
            job_id,
            age,
        )
        await db.execute("alter table public.jobs enable trigger jobs_set_updated_at")
        await db.execute(
            """
            update public.job_stages
               set started_at = now() - $2::interval, heartbeat_at = nullif(heartbeat_at, heartbeat_at)
             where job_id = $1
            """,
            job_id,
            age,
        )


async def reservation(
    db: DatabaseClient, job_id: uuid.UUID, *, status: str = "active", expired: timedelta | None = None
) -> uuid.UUID:
    """Insert a reservation row (``expired`` ago past its expiry; by default 15 minutes still to go)."""
    expires = timedelta(minutes=-15) if expired is None else expired
    reservation_id: uuid.UUID = await db.fetchval(
        """
        insert into public.job_cost_reservations (job_id, stage_name, api_name, estimated_cost, status, expires_at)
        values ($1, 'clip_generation', 'replicate', 0.50, $2, now() - $3::interval)
        returning id
        """,
        job_id,
        status,
        expires,
    )
    return reservation_id


async def test_a_job_whose_worker_died_is_failed_and_one_whose_worker_beats_is_kept(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser
) -> None:
    dead, live = await processing_job(jobs, make_user), await processing_job(jobs, make_user)
    hour = timedelta(hours=1)

    async def worker(job_id: uuid.UUID, started: asyncio.Event) -> None:
        async with stage_heartbeat(jobs, job_id, STAGE, every=timedelta(milliseconds=50)):
            started.set()
            await asyncio.Event().wait()  # the paid call, running for as long as the test needs

    dead_started, live_started = asyncio.Event(), asyncio.Event()
    dying = asyncio.create_task(worker(dead, dead_started))
    running = asyncio.create_task(worker(live, live_started))
    await dead_started.wait()
    dying.cancel()  # the worker dies: its heartbeat stops with it
    await asyncio.gather(dying, return_exceptions=True)
    await live_started.wait()
    await age_job(db, dead, hour)
    await age_job(db, live, hour)  # older than the timeout too, but its worker keeps beating
    async with asyncio.timeout(30):  # a heartbeat that never comes fails the test instead of hanging it
        while (await jobs.list_stages(live))[0].heartbeat_at is None:
            await asyncio.sleep(0.05)

    try:
        report = await maintain(db, POLICY)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    assert (1, 1, 0, 0) == counts(report)
    failed = await jobs.get_job(dead)
    assert JobStatus.FAILED == failed.status
    assert failed.error_message is not None
    assert f"stage {STAGE.value}: " in failed.error_message
    assert "heartbeat for more than 600 s" in failed.error_message
    [stage] = await jobs.list_stages(dead)
    assert (StageStatus.FAILED, True) == (stage.status, "heartbeat" in (stage.error or ""))
    assert JobStatus.PROCESSING == (await jobs.get_job(live)).status
    assert StageStatus.RUNNING == (await jobs.list_stages(live))[0].status


async def test_a_recently_updated_job_is_kept_and_a_silent_queued_or_finished_one_untouched(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser
) -> None:
    recent = await processing_job(jobs, make_user)
    queued = (await jobs.create_job(user_id=await make_user(), audio_url="a.mp3", user_prompt="p")).id
    done = await processing_job(jobs, make_user)
    await jobs.complete_stage(done, STAGE)
    await jobs.complete_job(done, "https://example.com/v.mp4")
    for job_id in (queued, done):
        await age_job(db, job_id, timedelta(days=1))

    assert NOTHING == counts(await maintain(db, POLICY))
    assert [JobStatus.PROCESSING, JobStatus.QUEUED, JobStatus.COMPLETED] == [
        (await jobs.get_job(job_id)).status for job_id in (recent, queued, done)
    ]


async def test_the_heartbeat_stops_when_the_block_ends_and_when_the_stage_is_no_longer_running(
    jobs: JobRepository, make_user: MakeUser, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = await processing_job(jobs, make_user)
    async with stage_heartbeat(jobs, job_id, STAGE, every=timedelta(milliseconds=20)):
        async with asyncio.timeout(30):
            while (await jobs.list_stages(job_id))[0].heartbeat_at is None:
                await asyncio.sleep(0.02)
    last = (await jobs.list_stages(job_id))[0].heartbeat_at
    await asyncio.sleep(0.1)
    assert last == (await jobs.list_stages(job_id))[0].heartbeat_at

    with caplog.at_level(logging.WARNING, logger="shared.maintenance"):
        async with stage_heartbeat(jobs, job_id, STAGE, every=timedelta(milliseconds=20)):
            await jobs.complete_stage(job_id, STAGE)
            async with asyncio.timeout(30):
                while not any("no longer running" in r.getMessage() for r in caplog.records):
                    await asyncio.sleep(0.02)
    assert not await jobs.heartbeat_stage(job_id, STAGE)
    with pytest.raises(ValidationError):
        async with stage_heartbeat(jobs, job_id, STAGE, every=timedelta(0)):
            pass  # pragma: no cover - refused before the block


async def test_expired_reservations_past_the_grace_are_released_and_others_kept(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, tracker: CostTracker
) -> None:
    job_id = await processing_job(jobs, make_user)
    dead = await reservation(db, job_id, expired=timedelta(hours=1))
    just_expired = await reservation(db, job_id, expired=timedelta(minutes=1))
    live = await reservation(db, job_id)
    before = await tracker.get_budget(job_id)

    report = await maintain(db, POLICY)

    assert (0, 0, 1, 0) == counts(report)
    statuses = {row["id"]: row["status"] for row in await db.fetch("select id, status from job_cost_reservations")}
    assert {dead: "released", just_expired: "active", live: "active"} == statuses
    assert before == await tracker.get_budget(job_id)  # expired ones had stopped counting already


async def test_old_finished_reservations_are_pruned_and_the_cost_history_stays_whole(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, tracker: CostTracker
) -> None:
    job_id = await processing_job(jobs, make_user)
    for actual in ("0.40", "0.70"):
        async with tracker.reserve(job_id, STAGE, "replicate", "1.00") as held:
            await held.commit(actual)
    async with tracker.reserve(job_id, STAGE, "replicate", "1.00"):
        pass  # released
    await db.execute("update job_cost_reservations set created_at = now() - interval '40 days'")
    async with tracker.reserve(job_id, STAGE, "replicate", "1.00") as recent:
        await recent.commit("0.10")
    history = (
        await tracker.list_costs(job_id),
        await tracker.get_total_cost(job_id),
        await tracker.cost_summary(job_id),
    )

    report = await maintain(db, POLICY)

    assert (0, 0, 0, 3) == counts(report)
    assert [recent.id] == [row["id"] for row in await db.fetch("select id from job_cost_reservations")]
    assert history == (
        await tracker.list_costs(job_id),
        await tracker.get_total_cost(job_id),
        await tracker.cost_summary(job_id),
    )
    assert Decimal("1.2000") == history[1]
    assert await tracker.check_budget(job_id, "48.80")  # the budget still sees every cent spent


async def test_every_statement_touches_at_most_a_batch_and_a_second_run_does_nothing(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser
) -> None:
    job_id = await processing_job(jobs, make_user)
    for _ in range(5):
        await reservation(db, job_id, expired=timedelta(hours=1))
        await reservation(db, job_id, status="committed")
    await db.execute("update job_cost_reservations set created_at = now() - interval '40 days'")
    silent = [await processing_job(jobs, make_user) for _ in range(4)]
    for silent_job in silent:
        await age_job(db, silent_job, timedelta(hours=1))

    report = await maintain(db, dataclasses.replace(POLICY, batch_size=2))
    again = await maintain(db, dataclasses.replace(POLICY, batch_size=2))

    # Jobs 2 + 2 + 0, released 2 + 2 + 1, pruned 2 + 2 + 2 + 2 + 2 + 0 (the five committed rows and the five
    # just released, as old as they are), and one for the stage items that lost a delivery (none): one statement
    # each.
    assert ((4, 4, 5, 10), 13) == (counts(report), report.batches)
    assert (NOTHING, 4) == (counts(again), again.batches)
    assert 0 == await db.fetchval("select count(*) from job_cost_reservations")


async def test_several_machines_at_once_each_row_is_handled_once(
    db_settings: Settings, db: DatabaseClient, jobs: JobRepository, make_user: MakeUser
) -> None:
    job_id = await processing_job(jobs, make_user)
    for _ in range(40):
        await reservation(db, job_id, expired=timedelta(hours=1))
        await reservation(db, job_id, status="released")
    await db.execute("update job_cost_reservations set created_at = now() - interval '40 days'")
    silent = [await processing_job(jobs, make_user) for _ in range(12)]
    for silent_job in silent:
        await age_job(db, silent_job, timedelta(hours=1))
    policy = dataclasses.replace(POLICY, batch_size=3)

    async def machine() -> MaintenanceReport:
        async for client in init_database(db_settings):  # a pool of its own, as on another machine
            return await maintain(client, policy)
        raise AssertionError("init_database yielded nothing")  # pragma: no cover

    reports = await asyncio.gather(*(machine() for _ in range(4)))

    totals = tuple(sum(column) for column in zip(*(counts(r) for r in reports), strict=True))
    # The 40 released rows are pruned; so are the 40 expired ones when another run released them first.
    assert (12, 12, 40) == totals[:3]
    assert totals[3] in range(40, 81)
    assert 0 == await db.fetchval("select count(*) from job_cost_reservations where status = 'active'")
    assert [JobStatus.FAILED] * len(silent) == [(await jobs.get_job(job)).status for job in silent]
    assert NOTHING[:3] == counts(await maintain(db, policy))[:3]


async def test_a_run_logs_one_line_with_its_figures(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, caplog: pytest.LogCaptureFixture
) -> None:
    await reservation(db, await processing_job(jobs, make_user), expired=timedelta(hours=1))
    with caplog.at_level(logging.INFO, logger="shared.maintenance"):
        await maintain(db, POLICY)
    [line] = [record for record in caplog.records if "failed_jobs" in record.__dict__]
    assert "released 1 expired reservation(s)" in line.getMessage()
    assert (1, 0) == (line.__dict__["released_reservations"], line.__dict__["failed_jobs"])


async def test_a_run_logs_the_ids_it_acted_on(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, caplog: pytest.LogCaptureFixture
) -> None:
    """'Why did job X fail' is a search of the log for X, not SQL."""
    held = await processing_job(jobs, make_user)
    expired = await reservation(db, held, expired=timedelta(hours=1))
    silent = await processing_job(jobs, make_user)
    await age_job(db, silent, timedelta(hours=1))
    with caplog.at_level(logging.INFO, logger="shared.maintenance"):
        await maintain(db, POLICY)
    by_key = {
        key: record for record in caplog.records for key in ("job_ids", "reservation_ids") if key in record.__dict__
    }
    failed = next(record for record in caplog.records if "silent job" in record.getMessage())
    assert [str(silent)] == failed.__dict__["job_ids"]
    assert str(silent) in failed.getMessage()
    assert [str(expired)] == by_key["reservation_ids"].__dict__["reservation_ids"]
    assert [str(held)] == by_key["reservation_ids"].__dict__["job_ids"]


def test_the_policy_refuses_unbounded_or_negative_values() -> None:
    for bad in ({"batch_size": 0}, {"batch_size": 10_001}, {"retention": timedelta(0)}):
        with pytest.raises(ValidationError):
            dataclasses.replace(POLICY, **bad)
    with pytest.raises(ValidationError):
        dataclasses.replace(POLICY, release_grace=timedelta(seconds=-1))


def test_policy_from_settings(settings: Settings) -> None:
    policy = MaintenancePolicy.from_settings(settings)
    assert (timedelta(minutes=10), timedelta(minutes=5), timedelta(days=30), 500) == (
        policy.stage_timeout,
        policy.release_grace,
        policy.retention,
        policy.batch_size,
    )


async def test_the_command_prints_a_summary(
    pg_dsn: str, db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    await reservation(db, await processing_job(jobs, make_user), expired=timedelta(hours=1))
    monkeypatch.setenv("DATABASE_URL", pg_dsn)
    monkeypatch.setenv("ENVIRONMENT", "development")
    out = io.StringIO()

    status = await asyncio.to_thread(main, ["maintain", "--batch-size", "10"], out=out)

    assert 0 == status, out.getvalue()
    assert "released 1 expired reservation(s)" in out.getvalue()
    assert "failed 0 job(s)" in out.getvalue()
