"""A frozen PostgreSQL (every process of a private cluster under SIGSTOP) bounds every call; SIGCONT recovers.

Observed before the fix: one query hung for twice the command timeout (asyncpg's release waited for the cancel
request and then for the reset, each up to the command timeout), and callers queued on a pool of one added up
(10, 20 and 30 s for a 5 s setting). The bound is checked against the event loop's clock as a ratio of the
setting with a wide margin, never as a speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from shared.database import DatabaseClient, init_database
from shared.errors import DatabaseUnavailableError, RetryableError
from tests.fixtures.core import MakeSettings
from tests.fixtures.pg_server import PrivatePostgres, private_postgres

TIMEOUT = 2.0
# Before the fix a lone call took 2x the setting, and the third queued caller 3x or more.
BOUND = 1.6 * TIMEOUT


@pytest.fixture
def server() -> Iterator[PrivatePostgres]:
    with private_postgres() as started:
        yield started


@pytest.fixture
async def frozen_db(make_settings: MakeSettings, server: PrivatePostgres) -> AsyncIterator[DatabaseClient]:
    settings = make_settings(
        database_url=server.dsn,
        db_pool_min_size=1,
        db_pool_max_size=1,
        db_command_timeout_seconds=TIMEOUT,
        db_connect_timeout_seconds=TIMEOUT,
    )
    async for client in init_database(settings):
        assert 1 == await client.fetchval("select 1")  # the pool's one connection is open before the freeze
        yield client
        server.thaw()  # the pool's close waits for its connections


async def timed(call: asyncio.Future[object] | asyncio.Task[object]) -> tuple[BaseException | None, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await call
    except Exception as error:
        return error, loop.time() - started
    return None, loop.time() - started


async def test_a_query_on_a_frozen_server_ends_at_its_timeout_as_retryable(
    frozen_db: DatabaseClient, server: PrivatePostgres
) -> None:
    server.freeze()
    error, elapsed = await timed(asyncio.ensure_future(frozen_db.fetchval("select 1")))

    assert isinstance(error, DatabaseUnavailableError)
    assert isinstance(error, RetryableError)
    assert "retry" in str(error)
    assert elapsed < BOUND, f"{elapsed:.1f} s for a {TIMEOUT} s timeout"


async def test_callers_queued_on_the_pool_each_end_at_their_own_timeout(
    frozen_db: DatabaseClient, server: PrivatePostgres
) -> None:
    server.freeze()
    calls = [
        frozen_db.fetchval("select 1"),
        frozen_db.fetchrow("select 1"),
        frozen_db.execute("select 1"),
        frozen_db.fetch("select 1"),
    ]
    results = await asyncio.gather(*(timed(asyncio.ensure_future(call)) for call in calls))

    assert all(isinstance(error, DatabaseUnavailableError) for error, _ in results), results
    assert max(elapsed for _, elapsed in results) < BOUND, results


async def test_a_transaction_on_a_frozen_server_ends_at_its_timeout(
    frozen_db: DatabaseClient, server: PrivatePostgres
) -> None:
    async def transact() -> None:
        async with frozen_db.transaction():
            await frozen_db.execute("select 1")

    server.freeze()
    first, first_elapsed = await timed(asyncio.ensure_future(transact()))
    # The pool's one connection is still being given back (in the background): the next one waits in the pool.
    second, second_elapsed = await timed(asyncio.ensure_future(transact()))

    assert isinstance(first, DatabaseUnavailableError)
    assert isinstance(second, DatabaseUnavailableError)
    assert max(first_elapsed, second_elapsed) < BOUND


async def test_the_client_recovers_after_sigcont_without_a_restart(
    frozen_db: DatabaseClient, server: PrivatePostgres
) -> None:
    server.freeze()
    with pytest.raises(DatabaseUnavailableError):
        await frozen_db.fetchval("select 1")
    health = await frozen_db.health_check()
    assert not health.ok

    server.thaw()

    assert 2 == await frozen_db.fetchval("select 1 + 1")
    async with frozen_db.transaction():
        assert 3 == await frozen_db.fetchval("select 3")
    assert (await frozen_db.health_check()).ok
