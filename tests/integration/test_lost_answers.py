"""Every write of JobRepository and CostTracker survives its answer being lost after the commit.

A proxy in front of the real PostgreSQL lets the statement run and commit, then drops the connection instead
of relaying the answer. The DatabaseClient sends the statement again on a new connection; each write carries
an identity made by the client before the first send, so the rows and totals count it once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import pytest

from shared.cost_tracking import CostTracker
from shared.database import DatabaseClient, init_database
from shared.errors import DatabaseUnavailableError
from shared.jobs import JobRepository
from shared.models import JobStatus, StageName, StageStatus
from tests.fixtures.core import MakeSettings
from tests.fixtures.postgres import MakeUser
from tests.fixtures.proxy import DroppingProxy

CLIPS = StageName.CLIP_GENERATION


@dataclass
class Proxied:
    """The repositories on a one-connection pool through the proxy, and a direct client to check the rows."""

    proxy: DroppingProxy
    db: DatabaseClient
    jobs: JobRepository
    tracker: CostTracker
    direct: DatabaseClient
    user: uuid.UUID

    async def new_job(self, budget: Decimal = Decimal(10)) -> uuid.UUID:
        job = await JobRepository(self.direct).create_job(
            user_id=self.user, audio_url="a.mp3", user_prompt="p", budget_limit=budget
        )
        return job.id

    async def count(self, query: str, *args: object) -> int:
        value: int = await self.direct.fetchval(query, *args)
        return value


@pytest.fixture
async def proxied(
    dropping_proxy: DroppingProxy, make_settings: MakeSettings, pg_dsn: str, db: DatabaseClient, make_user: MakeUser
) -> AsyncIterator[Proxied]:
    settings = make_settings(database_url=dropping_proxy.dsn(pg_dsn), db_pool_min_size=1, db_pool_max_size=1)
    user = await make_user()
    async for client in init_database(settings):
        tracker = CostTracker(client, default_budget=Decimal(10), reservation_ttl=timedelta(minutes=15))
        yield Proxied(dropping_proxy, client, JobRepository(client), tracker, db, user)


async def lose_next_answer(proxied: Proxied) -> None:
    """Warm the connection up, then arm the proxy: the next statement's answer is lost after its commit."""
    assert 1 == await proxied.db.fetchval("select 1")
    proxied.proxy.arm()


async def test_track_cost_without_a_key_counts_once(proxied: Proxied, caplog: pytest.LogCaptureFixture) -> None:
    job = await proxied.new_job()
    await lose_next_answer(proxied)
    with caplog.at_level(logging.WARNING, logger="shared.database"):
        row = await proxied.tracker.track_cost(job, CLIPS, "openai", "0.10")
    assert 1 == proxied.proxy.dropped
    assert any("connection lost" in r.getMessage() for r in caplog.records)
    assert Decimal("0.1") == row.cost
    assert 1 == await proxied.count("select count(*) from job_costs where job_id = $1", job)
    assert Decimal("0.1") == await proxied.direct.fetchval("select total_cost from jobs where id = $1", job)


async def test_track_cost_with_a_key_counts_once(proxied: Proxied) -> None:
    job = await proxied.new_job()
    await lose_next_answer(proxied)
    row = await proxied.tracker.track_cost(job, CLIPS, "openai", "0.10", idempotency_key="call-1")
    assert 1 == proxied.proxy.dropped
    assert "call-1" == row.idempotency_key
    assert 1 == await proxied.count("select count(*) from job_costs where job_id = $1", job)
    assert Decimal("0.1") == await proxied.tracker.get_total_cost(job)


async def test_reserve_finds_its_own_reservation_when_sent_again(proxied: Proxied) -> None:
    job = await proxied.new_job(Decimal(1))
    await lose_next_answer(proxied)
    async with proxied.tracker.reserve(job, CLIPS, "replicate", "0.60") as reservation:
        assert 1 == proxied.proxy.dropped
        assert 1 == await proxied.count("select count(*) from job_cost_reservations where job_id = $1", job)
        assert reservation.id == await proxied.direct.fetchval(
            "select id from job_cost_reservations where job_id = $1 and status = 'active'", job
        )
        await reservation.commit("0.55")
    assert Decimal("0.55") == await proxied.tracker.get_total_cost(job)
    assert 0 == await proxied.count("select count(*) from job_cost_reservations where status = 'active'")


async def test_commit_sent_again_records_the_cost_once(proxied: Proxied) -> None:
    job = await proxied.new_job()
    async with proxied.tracker.reserve(job, CLIPS, "replicate", 2) as reservation:
        await lose_next_answer(proxied)
        row = await reservation.commit("1.5")
    assert 1 == proxied.proxy.dropped
    assert Decimal("1.5") == row.cost
    assert 1 == await proxied.count("select count(*) from job_costs where job_id = $1", job)
    assert Decimal("1.5") == await proxied.tracker.get_total_cost(job)
    assert "committed" == await proxied.direct.fetchval(
        "select status from job_cost_reservations where id = $1", reservation.id
    )


async def test_release_sent_again_leaves_the_reservation_released(proxied: Proxied) -> None:
    job = await proxied.new_job()
    async with proxied.tracker.reserve(job, CLIPS, "replicate", 2) as reservation:
        await lose_next_answer(proxied)
    assert 1 == proxied.proxy.dropped
    assert "released" == await proxied.direct.fetchval(
        "select status from job_cost_reservations where id = $1", reservation.id
    )
    assert Decimal(0) == (await proxied.tracker.get_budget(job)).reserved


async def test_lease_renewal_sent_again_extends_the_reservation_once(proxied: Proxied) -> None:
    job = await proxied.new_job()
    async with proxied.tracker.reserve(job, CLIPS, "replicate", 2) as reservation:
        before = await proxied.direct.fetchval("select expires_at from job_cost_reservations where job_id = $1", job)
        await lose_next_answer(proxied)
        await proxied.tracker.renew(reservation)
        after = await proxied.direct.fetchval("select expires_at from job_cost_reservations where job_id = $1", job)
        assert 1 == proxied.proxy.dropped
        assert after > before
        assert 1 == await proxied.count("select count(*) from job_cost_reservations where job_id = $1", job)
        assert Decimal(2) == (await proxied.tracker.get_budget(job)).reserved


async def test_create_job_sent_again_makes_one_job(proxied: Proxied) -> None:
    await lose_next_answer(proxied)
    job = await proxied.jobs.create_job(user_id=proxied.user, audio_url="a.mp3", user_prompt="p", budget_limit="2.5")
    assert 1 == proxied.proxy.dropped
    assert Decimal("2.5") == job.budget_limit
    assert 1 == await proxied.count("select count(*) from jobs where user_id = $1", proxied.user)


async def test_update_progress_sent_again_lands_once(proxied: Proxied) -> None:
    job = await proxied.new_job()
    await lose_next_answer(proxied)
    moved = await proxied.jobs.update_progress(job, CLIPS, 40, 12)
    assert 1 == proxied.proxy.dropped
    assert (JobStatus.PROCESSING, 40, 12) == (moved.status, moved.progress, moved.estimated_remaining)
    assert 40 == await proxied.count("select progress from jobs where id = $1", job)


async def test_start_stage_sent_again_makes_one_running_stage(proxied: Proxied) -> None:
    job = await proxied.new_job()
    await lose_next_answer(proxied)
    stage = await proxied.jobs.start_stage(job, CLIPS, {"clips": 3})
    assert 1 == proxied.proxy.dropped
    assert (StageStatus.RUNNING, {"clips": 3}) == (stage.status, stage.metadata)
    assert 1 == await proxied.count("select count(*) from job_stages where job_id = $1", job)


async def test_complete_stage_sent_again_merges_metadata_once(proxied: Proxied) -> None:
    job = await proxied.new_job()
    await proxied.jobs.start_stage(job, CLIPS, {"clips": 3})
    await lose_next_answer(proxied)
    stage = await proxied.jobs.complete_stage(job, CLIPS, {"done": 3})
    assert 1 == proxied.proxy.dropped
    assert (StageStatus.COMPLETED, {"clips": 3, "done": 3}) == (stage.status, stage.metadata)
    assert 1 == await proxied.count("select count(*) from job_stages where job_id = $1", job)


async def test_fail_stage_sent_again_fails_it_once(proxied: Proxied) -> None:
    job = await proxied.new_job()
    await proxied.jobs.start_stage(job, CLIPS)
    await lose_next_answer(proxied)
    stage = await proxied.jobs.fail_stage(job, CLIPS, "the model refused")
    assert 1 == proxied.proxy.dropped
    assert (StageStatus.FAILED, "the model refused") == (stage.status, stage.error)


async def test_complete_job_sent_again_returns_the_completed_job(proxied: Proxied) -> None:
    job = await proxied.new_job()
    await proxied.jobs.update_progress(job, CLIPS, 90)
    await lose_next_answer(proxied)
    done = await proxied.jobs.complete_job(job, "videos/1.mp4")
    assert 1 == proxied.proxy.dropped
    assert (JobStatus.COMPLETED, "videos/1.mp4", 100) == (done.status, done.video_url, done.progress)


async def test_fail_job_sent_again_returns_the_failed_job(proxied: Proxied) -> None:
    job = await proxied.new_job()
    await lose_next_answer(proxied)
    failed = await proxied.jobs.fail_job(job, "the audio is silent")
    assert 1 == proxied.proxy.dropped
    assert (JobStatus.FAILED, "the audio is silent") == (failed.status, failed.error_message)


async def test_statement_marked_not_idempotent_is_not_sent_again(proxied: Proxied) -> None:
    """An insert without an identity cannot be told apart from its re-send: it is refused, retryably, with why."""
    await proxied.direct.execute("create table counter (n int not null)")
    await lose_next_answer(proxied)
    with pytest.raises(DatabaseUnavailableError) as caught, proxied.db.no_resend():
        await proxied.db.execute("insert into counter values (1)")
    assert "not sent again" in caught.value.message
    assert "outcome_unknown" == caught.value.code
    assert 1 == await proxied.count("select count(*) from counter")  # it did run once, and only once
    with proxied.db.no_resend():  # a statement that completes is answered as usual
        assert 1 == await proxied.db.fetchval("select count(*) from counter")
