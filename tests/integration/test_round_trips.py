"""A stage step (reserve, paid call, commit, progress) takes one round trip per state change, counted on the wire.

Issue 24: it took 6 directly (each statement's connection went back with asyncpg's reset, a round trip of its
own) and 9 behind a transaction pooler (each statement was also prepared unnamed and described first). A proxy
in front of the server counts the client's Sync, Flush and Query messages: the round trips.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from decimal import Decimal
from urllib.parse import urlsplit

import pytest

from benchmarks._wire import WireCounter, wire_counter
from shared.cost_tracking import CostTracker
from shared.database import DatabaseClient, init_database
from shared.errors import DatabaseError
from shared.jobs import JobRepository
from shared.models import StageName
from tests.fixtures.core import MakeSettings
from tests.fixtures.servers import PgBouncer, start_pgbouncer

CLIPS = StageName.CLIP_GENERATION


@pytest.fixture
def bouncer(pg_admin_dsn: str) -> Iterator[PgBouncer]:
    server = start_pgbouncer(pool_mode="transaction", pool_size=2, upstream_port=urlsplit(pg_admin_dsn).port or 5432)
    yield server
    server.stop()


@pytest.fixture
async def direct(pg_admin_dsn: str) -> AsyncIterator[WireCounter]:
    async with wire_counter(urlsplit(pg_admin_dsn).port or 5432) as counter:
        yield counter


@pytest.fixture
async def pooled(bouncer: PgBouncer) -> AsyncIterator[WireCounter]:
    async with wire_counter(bouncer.port) as counter:
        yield counter


async def step(db: DatabaseClient, job: uuid.UUID, progress: int) -> None:
    """One stage step: reserve, the paid call, commit, progress."""
    tracker = CostTracker(db, default_budget=Decimal(50), reservation_ttl=timedelta(minutes=15))
    async with tracker.reserve(job, CLIPS, "replicate", "0.10") as reservation:
        await reservation.commit("0.10")
    await JobRepository(db).update_progress(job, CLIPS, progress)


async def counted_step(db: DatabaseClient, counter: WireCounter) -> int:
    user = uuid.uuid4()
    await db.execute("insert into auth.users (id) values ($1)", user)
    job = (await JobRepository(db).create_job(user_id=user, audio_url="a.mp3", user_prompt="p")).id
    for progress in (1, 2):  # the first run of each statement on a connection describes it
        await step(db, job, progress)
    counter.reset()
    await step(db, job, 3)
    return counter.round_trips


async def test_stage_step_takes_three_round_trips_directly(
    make_settings: MakeSettings, pg_dsn: str, direct: WireCounter
) -> None:
    settings = make_settings(database_url=direct.dsn(pg_dsn), db_pool_min_size=1, db_pool_max_size=1)
    async for db in init_database(settings):
        assert 3 == await counted_step(db, direct), direct.messages


async def test_stage_step_takes_three_round_trips_through_a_transaction_pooler_without_the_statement_cache(
    make_settings: MakeSettings, pg_dsn: str, pooled: WireCounter
) -> None:
    settings = make_settings(
        database_url=pooled.dsn(pg_dsn), db_statement_cache_size=0, db_pool_min_size=1, db_pool_max_size=1
    )
    async for db in init_database(settings):
        assert 3 == await counted_step(db, pooled), pooled.messages


async def test_transaction_takes_a_round_trip_per_statement_and_begin_and_commit(
    make_settings: MakeSettings, pg_dsn: str, direct: WireCounter
) -> None:
    settings = make_settings(database_url=direct.dsn(pg_dsn), db_pool_min_size=1, db_pool_max_size=1)
    async for db in init_database(settings):
        for _ in range(2):
            direct.reset()
            async with db.transaction():
                await db.execute("select 1")
                await db.execute("select 2")
        assert 4 == direct.round_trips, direct.messages


async def test_a_connection_taken_from_the_pool_directly_is_still_reset_on_release(
    make_settings: MakeSettings, pg_dsn: str
) -> None:
    """LISTEN, session settings and advisory locks of ``db.pool.acquire()`` do not reach the next user."""
    settings = make_settings(database_url=pg_dsn, db_pool_min_size=1, db_pool_max_size=1)
    async for db in init_database(settings):
        async with db.pool.acquire() as connection:
            await connection.execute("listen somewhere; set application_name = 'leaked'")
            await connection.execute("select pg_advisory_lock(42)")
        state = await db.fetchrow(
            """
            select (select count(*) from pg_listening_channels()) as channels,
                   current_setting('application_name') as name,
                   (select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()) as locks
            """
        )
        assert state is not None
        assert (0, "", 0) == (state["channels"], state["name"], state["locks"])


async def test_hold_connection_runs_the_block_on_one_connection_and_survives_its_loss(
    make_settings: MakeSettings, pg_dsn: str
) -> None:
    settings = make_settings(database_url=pg_dsn, db_pool_min_size=1, db_pool_max_size=3)
    async for db in init_database(settings):
        async with db.hold_connection():
            pids = {await db.fetchval("select pg_backend_pid()") for _ in range(3)}
            with pytest.raises(DatabaseError):
                await db.execute("select 1 / 0")  # PostgreSQL's refusal: the connection stays in use
            pids.add(await db.fetchval("select pg_backend_pid()"))
            assert 1 == len(pids)
            both = await asyncio.gather(db.fetchval("select 1 from pg_sleep(0.05)"), db.fetchval("select 2"))
            assert [1, 2] == list(both)  # the second task took a pooled connection of its own
            await db.execute("select pg_terminate_backend($1)", *pids)  # from another connection of the pool
            assert 7 == await db.fetchval("select 7")  # lost, sent again on a pooled connection
            assert pids.isdisjoint({await db.fetchval("select pg_backend_pid()")})
