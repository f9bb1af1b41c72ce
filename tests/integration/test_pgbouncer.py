"""Through a real pgbouncer in transaction mode (as Supavisor on port 6543): works with the statement cache off."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal
from urllib.parse import urlsplit

import pytest

from shared.database import DatabaseClient, init_database
from shared.errors import DatabaseError
from shared.jobs import JobRepository
from shared.models import JobStatus, StageName
from tests.fixtures.core import MakeSettings
from tests.fixtures.servers import PgBouncer, start_pgbouncer


@pytest.fixture
def bouncer(pg_admin_dsn: str) -> Iterator[PgBouncer]:
    """A pgbouncer in front of the server this test's database lives on (the machine's or the Supabase-built)."""
    upstream = urlsplit(pg_admin_dsn).port or 5432
    server = start_pgbouncer(pool_mode="transaction", pool_size=2, upstream_port=upstream)
    yield server
    server.stop()


async def workload(db: DatabaseClient) -> None:
    """Many clients over few server connections: parameters, transactions, and the repository's statements."""
    jobs = JobRepository(db)

    async def one(n: int) -> None:
        user = uuid.uuid4()
        await db.execute("insert into auth.users (id) values ($1)", user)
        job = await jobs.create_job(user_id=user, audio_url=f"{n}.mp3", user_prompt="p", budget_limit=Decimal(n))
        async with db.transaction():
            await jobs.start_stage(job.id, StageName.AUDIO_ANALYSIS)
            await jobs.update_progress(job.id, StageName.AUDIO_ANALYSIS, 50)
        done = await jobs.complete_job(job.id, f"{n}.mp4")
        assert (JobStatus.COMPLETED, Decimal(n)) == (done.status, done.budget_limit)

    await asyncio.gather(*(one(n) for n in range(60)))


async def test_transaction_pooler_works_with_the_statement_cache_off(
    make_settings: MakeSettings, pg_dsn: str, bouncer: PgBouncer
) -> None:
    database = pg_dsn.rsplit("/", 1)[1]
    settings = make_settings(database_url=bouncer.dsn(database), db_statement_cache_size=0, db_pool_max_size=10)
    assert 0 == settings.statement_cache_size
    async for db in init_database(settings):
        await workload(db)
        assert 60 == await db.fetchval("select count(*) from jobs where status = 'completed'")


async def test_with_the_statement_cache_on_the_pooler_breaks_prepared_statements(
    make_settings: MakeSettings, pg_dsn: str, bouncer: PgBouncer
) -> None:
    """The control: the same workload with asyncpg's cache on fails, so the setting is what makes it work."""
    database = pg_dsn.rsplit("/", 1)[1]
    settings = make_settings(database_url=bouncer.dsn(database), db_statement_cache_size=100, db_pool_max_size=10)
    async for db in init_database(settings):
        with pytest.raises(DatabaseError, match="prepared statement"):
            await workload(db)


def test_port_6543_turns_the_cache_off_by_default(make_settings: MakeSettings) -> None:
    pooled = make_settings(database_url="postgresql://postgres@db.example.supabase.co:6543/postgres")
    direct = make_settings(database_url="postgresql://postgres@db.example.supabase.co:5432/postgres")
    assert (0, 100) == (pooled.statement_cache_size, direct.statement_cache_size)
