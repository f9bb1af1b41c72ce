"""The stage engine against the real PostgreSQL, with workers as real processes (``python -m shared worker``).

Fan-out and fan-in, retries, a refused input failing the job, a worker SIGKILLed mid-item whose item runs again
elsewhere without paying twice (its checkpoint), and a cancelled job stopping its running item.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import pytest

from shared.database import DatabaseClient
from shared.errors import ConfigError
from shared.jobs import JobRepository
from shared.stages import StageQueue, Stages, load_stages
from tests.fixtures.postgres import MakeUser
from tests.fixtures.stage_workers import WorkerProcesses

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
Start = Callable[[], subprocess.Popen[bytes]]


@pytest.fixture
async def effects(db: DatabaseClient) -> None:
    await db.execute("create table stage_effects (run_id uuid, item text, name text, attempt int)")


@pytest.fixture
def start_worker(pg_dsn: str, tmp_path: Path) -> Iterator[Start]:
    workers = WorkerProcesses(tmp_path)
    env = {
        **os.environ,
        "DATABASE_URL": pg_dsn,
        "STAGE_HEARTBEAT_INTERVAL_SECONDS": "1",
        "ENVIRONMENT": "development",
        "PYTHONPATH": str(ROOT),
    }

    def start() -> subprocess.Popen[bytes]:
        started = workers.start("tests.integration.stage_module", env=env, cwd=ROOT)
        workers.wait_ready([started], timeout=60, interval=0.05)
        return started[0]

    yield start
    workers.stop(timeout=20)


async def new_job(jobs: JobRepository, make_user: MakeUser) -> UUID:
    job = await jobs.create_job(user_id=await make_user(), audio_url="a.mp3", user_prompt="neon city")
    return job.id


async def wait_for(db: DatabaseClient, query: str, *args: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await db.fetchval(query, *args):
        assert time.monotonic() < deadline, f"not true within {timeout} s: {query}"
        await asyncio.sleep(0.1)


async def counts(db: DatabaseClient, job: UUID) -> dict[str, int]:
    rows = await db.fetch(
        "select e.name, count(*) as n from stage_effects e join stage_runs r on r.id = e.run_id"
        " where r.job_id = $1 group by e.name",
        job,
    )
    return {row["name"]: row["n"] for row in rows}


@pytest.mark.usefixtures("effects")
async def test_thirty_items_then_composition_once_across_two_workers(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, start_worker: Start
) -> None:
    job = await new_job(jobs, make_user)
    queue = StageQueue(db)
    items = {str(n): {"mode": "ok"} for n in range(30)}
    assert 30 == len(await queue.submit(job, "clip_generation", items=items, then="composition"))
    assert [] == await queue.submit(job, "clip_generation", items=items, then="composition")  # resent: nothing
    start_worker()
    start_worker()
    await wait_for(db, "select status = 'completed' from stage_runs where job_id = $1 and stage = 'composition'", job)
    assert {"start": 30, "paid": 30, "compose": 1} == await counts(db, job)
    result = await db.fetchval("select result from stage_runs where job_id = $1 and stage = 'composition'", job)
    assert sorted(items) == result["clips"]
    assert 50 == (await jobs.get_job(job)).progress


@pytest.mark.usefixtures("effects")
async def test_a_retryable_error_runs_the_item_again(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, start_worker: Start
) -> None:
    job = await new_job(jobs, make_user)
    await StageQueue(db).submit(job, "clip_generation", payload={"mode": "flaky"})
    start_worker()
    await wait_for(db, "select status = 'completed' from stage_runs where job_id = $1", job)
    row = await db.fetchrow("select attempt, result from stage_runs where job_id = $1", job)
    assert row is not None
    assert (2, 2) == (row["attempt"], row["result"]["attempt"])
    assert {"start": 2, "paid": 1} == await counts(db, job)  # the checkpoint kept the paid call


@pytest.mark.usefixtures("effects")
async def test_a_refused_input_fails_the_job_and_cancels_its_queued_items(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, start_worker: Start
) -> None:
    job = await new_job(jobs, make_user)
    queue = StageQueue(db)
    await queue.submit(job, "clip_generation", items={"bad": {"mode": "refused"}})
    start_worker()
    await wait_for(db, "select status = 'failed' from jobs where id = $1", job)
    failed = await jobs.get_job(job)
    assert "the prompt was refused" in str(failed.error_message)
    assert "failed" == await db.fetchval("select status from stage_runs where job_id = $1", job)


@pytest.mark.usefixtures("effects")
async def test_a_killed_workers_item_runs_again_elsewhere_without_paying_twice(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, start_worker: Start
) -> None:
    job = await new_job(jobs, make_user)
    await StageQueue(db).submit(job, "clip_generation", payload={"mode": "slow"})
    first = start_worker()
    await wait_for(db, "select status = 'running' from stage_runs where job_id = $1", job)
    await wait_for(db, "select count(*) > 0 from stage_effects where name = 'paid'")
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed = time.monotonic()
    start_worker()
    await wait_for(db, "select status = 'completed' from stage_runs where job_id = $1", job)
    rerun = time.monotonic() - killed
    assert {"start": 2, "paid": 1} == await counts(db, job)
    assert 2 == await db.fetchval("select attempt from stage_runs where job_id = $1", job)
    assert rerun < 30  # the heartbeat timeout is 1.5 s; the bound is loose for a loaded machine


@pytest.mark.usefixtures("effects")
async def test_a_cancelled_job_stops_its_running_item(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, start_worker: Start
) -> None:
    job = await new_job(jobs, make_user)
    queue = StageQueue(db)
    await queue.submit(job, "clip_generation", items={"a": {"mode": "slow"}, "b": {"mode": "slow"}})
    start_worker()
    await wait_for(db, "select count(*) = 2 from stage_runs where job_id = $1 and status = 'running'", job)
    await queue.cancel_job(job, "the user cancelled")
    await wait_for(db, "select count(*) = 2 from stage_runs where job_id = $1 and status = 'cancelled'", job, timeout=5)
    assert "failed" == (await jobs.get_job(job)).status.value


def test_load_stages_names_what_is_missing() -> None:
    assert isinstance(load_stages("tests.integration.stage_module"), Stages)
    with pytest.raises(ConfigError, match="cannot import"):
        load_stages("tests.integration.no_such_module")
    with pytest.raises(ConfigError, match="no Stages object"):
        load_stages("tests.integration.stage_module:clip")


async def test_maintain_leaves_a_job_the_engine_holds_to_the_engine(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser
) -> None:
    from datetime import timedelta  # noqa: PLC0415

    from shared.maintenance import MaintenancePolicy, maintain  # noqa: PLC0415

    held, plain = await new_job(jobs, make_user), await new_job(jobs, make_user)
    await StageQueue(db).submit(held, "clip_generation", payload={})
    await db.execute("update jobs set status = 'processing' where id = any($1::uuid[])", [held, plain])
    await asyncio.sleep(0.05)  # both are now silent for longer than the policy's timeout
    silent = timedelta(milliseconds=1)
    await maintain(db, MaintenancePolicy(silent, timedelta(minutes=5), timedelta(days=30)))
    statuses = [(await jobs.get_job(job)).status.value for job in (held, plain)]
    assert ["processing", "failed"] == statuses


@pytest.mark.usefixtures("effects")
async def test_the_handlers_max_attempts_bounds_its_items(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, start_worker: Start
) -> None:
    """``@stages.handler("stubborn", max_attempts=2)`` bounds the item, not the submitter's default of 3."""
    job = await new_job(jobs, make_user)
    await StageQueue(db).submit(job, "stubborn", payload={})
    start_worker()
    await wait_for(db, "select status = 'failed' from jobs where id = $1", job)
    assert {"start": 2} == await counts(db, job)
    assert "failed after 2 attempts" in str((await jobs.get_job(job)).error_message)


@pytest.mark.usefixtures("effects")
async def test_a_delivery_that_finds_its_item_held_comes_back_until_the_holder_is_gone(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, start_worker: Start
) -> None:
    """pgqueuer re-picks a dead worker's delivery before the stage's heartbeat is stale; the item is not lost."""
    job = await new_job(jobs, make_user)
    start_worker()
    async with db.transaction():  # the worker sees the delivery and its holder at once
        await StageQueue(db).submit(job, "clip_generation", payload={"mode": "ok"})
        await db.execute(  # held by an attempt whose worker is gone, its last beat still fresh for 10 s
            "update stage_runs set status = 'running', attempt = 1, attempt_id = gen_random_uuid(),"
            " worker = 'gone:1', started_at = now(), heartbeat_at = now() + interval '10 seconds' where job_id = $1",
            job,
        )
    await wait_for(db, "select status = 'completed' from stage_runs where job_id = $1", job, timeout=30)
    assert 2 == await db.fetchval("select attempt from stage_runs where job_id = $1", job)


async def test_a_taken_over_attempts_failure_does_not_fail_the_job(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, pg_dsn: str
) -> None:
    from shared.stages import StageContext, StageWorker  # noqa: PLC0415

    job = await new_job(jobs, make_user)
    await StageQueue(db).submit(job, "clip_generation", payload={})
    row = await db.fetchrow(
        "update stage_runs set status = 'running', attempt = 2, attempt_id = gen_random_uuid(), heartbeat_at = now()"
        " where job_id = $1 returning *",
        job,
    )
    assert row is not None
    stale = StageContext(db, {**dict(row), "attempt": 1, "attempt_id": uuid.uuid4()})  # the attempt taken over
    worker = StageWorker(Stages(), db=db, dsn=pg_dsn, statement_cache_size=0, heartbeat_interval=1)
    await worker._fail(stale, "its checkpoint was refused")
    assert ("queued", "running") == (
        (await jobs.get_job(job)).status.value,
        await db.fetchval("select status from stage_runs where job_id = $1", job),
    )


@pytest.mark.usefixtures("effects")
async def test_a_delivery_that_fails_comes_back_and_the_item_ends(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, start_worker: Start
) -> None:
    """An error out of the engine's own statements (here the completion's) keeps the item's delivery.

    pgqueuer records a delivery that raised as failed and deletes it; the item stayed running forever (the kill
    test's last item, when PostgreSQL ran out of connections). It comes back until its attempts are spent.
    """
    job = await new_job(jobs, make_user)
    await StageQueue(db).submit(job, "clip_generation", payload={"mode": "unencodable"})
    start_worker()
    await wait_for(db, "select status = 'failed' from stage_runs where job_id = $1", job)
    assert "failed" == (await jobs.get_job(job)).status.value
    assert {"start": 3, "paid": 1} == await counts(db, job)
