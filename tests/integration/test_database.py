"""DatabaseClient against the real PostgreSQL: results, transactions, error translation, timeouts, retries."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from shared.config import Settings
from shared.database import DatabaseClient, _IdleReaper, init_database, translate_error
from shared.errors import (
    DatabaseError,
    DatabaseTimeoutError,
    DatabaseUnavailableError,
    PipelineError,
    RetryableError,
)
from tests.fixtures.core import MakeSettings
from tests.fixtures.postgres import ADMIN_DSN


async def make_table(db: DatabaseClient) -> None:
    await db.execute("create table t (id int primary key, amount numeric(12,4) not null, doc jsonb)")


async def test_queries_return_rows_values_and_status(db: DatabaseClient) -> None:
    await make_table(db)
    assert "INSERT 0 1" == await db.execute("insert into t values ($1, $2, $3)", 1, Decimal("1.5"), {"a": [1]})
    await db.executemany("insert into t values ($1, $2, null)", [(2, Decimal(2)), (3, Decimal(3))])

    rows = await db.fetch("select id from t order by id")
    row = await db.fetchrow("select amount, doc from t where id = $1", 1)
    total = await db.fetchval("select sum(amount) from t")

    assert [1, 2, 3] == [r["id"] for r in rows]
    assert row is not None
    assert (Decimal("1.5000"), {"a": [1]}) == (row["amount"], row["doc"])
    assert Decimal("6.5000") == total
    assert await db.fetchrow("select * from t where id = 99") is None


async def test_transaction_commits_when_the_block_ends(db: DatabaseClient) -> None:
    await make_table(db)
    async with db.transaction():
        await db.execute("insert into t values (1, 1)")
        await db.execute("insert into t values (2, 1)")
    assert 2 == await db.fetchval("select count(*) from t")


async def test_transaction_rolls_back_when_the_block_raises(db: DatabaseClient) -> None:
    await make_table(db)
    with pytest.raises(RuntimeError):
        async with db.transaction():
            await db.execute("insert into t values (1, 1)")
            assert 1 == await db.fetchval("select count(*) from t")  # seen inside the transaction
            raise RuntimeError("the stage failed")
    assert 0 == await db.fetchval("select count(*) from t")


async def test_nested_transaction_is_a_savepoint(db: DatabaseClient) -> None:
    await make_table(db)
    async with db.transaction():
        await db.execute("insert into t values (1, 1)")
        with pytest.raises(DatabaseError):
            async with db.transaction():
                await db.execute("insert into t values (2, 1)")
                await db.execute("insert into t values (1, 1)")  # duplicate: the savepoint rolls back
        await db.execute("insert into t values (3, 1)")
    assert [1, 3] == [r["id"] for r in await db.fetch("select id from t order by id")]


async def test_other_tasks_do_not_see_an_open_transaction(db: DatabaseClient) -> None:
    await make_table(db)
    inside = asyncio.Event()
    finish = asyncio.Event()

    async def writer() -> None:
        async with db.transaction():
            await db.execute("insert into t values (1, 1)")
            inside.set()
            await finish.wait()

    task = asyncio.create_task(writer())
    await inside.wait()
    assert 0 == await db.fetchval("select count(*) from t")
    finish.set()
    await task
    assert 1 == await db.fetchval("select count(*) from t")


async def test_a_task_started_inside_a_transaction_cannot_use_its_connection(db: DatabaseClient) -> None:
    await make_table(db)
    async with db.transaction():
        task = asyncio.create_task(db.fetchval("select 1"))
        with pytest.raises(DatabaseError) as caught:
            await task
    assert "transaction_shared_across_tasks" == caught.value.code


async def test_constraint_violation_is_a_database_error_with_sqlstate_and_cause(db: DatabaseClient) -> None:
    await make_table(db)
    await db.execute("insert into t values (1, 1)")
    with pytest.raises(DatabaseError) as caught:
        await db.execute("insert into t values (1, 1)")
    assert "23505" == caught.value.sqlstate
    assert isinstance(caught.value.__cause__, asyncpg.UniqueViolationError)
    assert not isinstance(caught.value, RetryableError)
    assert "t_pkey" in caught.value.message


async def test_query_past_its_timeout_is_retryable_and_not_resent(db: DatabaseClient) -> None:
    with pytest.raises(DatabaseUnavailableError) as caught:
        await db.fetchval("select pg_sleep(5)", timeout=0.2)
    assert "database_timeout" == caught.value.code
    assert 1 == await db.fetchval("select 1")  # the connection went back to the pool usable


async def test_connection_killed_by_the_server_while_idle_is_replaced(make_settings: MakeSettings, pg_dsn: str) -> None:
    settings = make_settings(database_url=pg_dsn, db_pool_min_size=1, db_pool_max_size=1)
    async for db in init_database(settings):
        first = await db.fetchval("select pg_backend_pid()")
        await terminate(first)
        await asyncio.sleep(0.2)  # idle, as a connection the server closed minutes ago
        assert first != await db.fetchval("select pg_backend_pid()")


async def test_connection_lost_mid_statement_is_retried_on_a_new_connection(
    db: DatabaseClient, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    database = pg_dsn.rsplit("/", 1)[1]
    query = "select pg_backend_pid() from pg_sleep(0.5)"

    async def kill_the_first_run() -> int:
        while True:
            pid = await admin_value(
                "select pid from pg_stat_activity where datname = $1 and query = $2", database, query
            )
            if pid:
                await terminate(pid)
                return int(pid)
            await asyncio.sleep(0.02)

    with caplog.at_level(logging.WARNING, logger="shared.database"):
        killed, answered = await asyncio.gather(kill_the_first_run(), db.fetchval(query))
    assert killed != answered
    assert any("connection lost" in record.getMessage() for record in caplog.records)


async def admin_value(query: str, *args: object) -> Any:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        return await admin.fetchval(query, *args)
    finally:
        await admin.close()


async def terminate(pid: object) -> None:
    assert await admin_value("select pg_terminate_backend($1)", pid)


async def test_lost_connection_inside_a_transaction_reaches_the_caller(
    make_settings: MakeSettings, pg_dsn: str
) -> None:
    settings = make_settings(database_url=pg_dsn, db_pool_min_size=1, db_pool_max_size=2)
    async for db in init_database(settings):
        with pytest.raises(DatabaseUnavailableError) as caught:
            async with db.transaction():
                await terminate(await db.fetchval("select pg_backend_pid()"))
                await db.fetchval("select 1")
        assert isinstance(caught.value, RetryableError)
        assert 1 == await db.fetchval("select 1")


async def test_start_up_tries_three_times_then_says_what_to_do(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(database_url="postgresql://postgres@127.0.0.1:1/none", db_connect_timeout_seconds=1)
    with caplog.at_level(logging.WARNING, logger="shared.database"), pytest.raises(DatabaseUnavailableError) as caught:
        async for _ in init_database(settings):
            pytest.fail("the pool opened against a closed port")
    retries = [record for record in caplog.records if "retrying" in record.getMessage()]
    assert 2 == len(retries)
    assert "127.0.0.1" in caught.value.message
    assert isinstance(caught.value.__cause__, OSError)


async def test_health_check_reports_ok_with_latency(db: DatabaseClient) -> None:
    health = await db.health_check()
    assert ("postgres", "ok") == (health.name, health.status)
    assert health.ok
    assert health.latency_ms > 0


async def test_health_check_reports_down_after_close(db_settings: Settings) -> None:
    async for db in init_database(db_settings):
        await db.aclose()
        await db.aclose()  # twice is safe
        health = await db.health_check()
        assert "down" == health.status
        assert health.detail


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (asyncpg.SerializationError("could not serialize"), DatabaseUnavailableError),
        (asyncpg.DeadlockDetectedError("deadlock"), DatabaseUnavailableError),
        (asyncpg.AdminShutdownError("terminating"), DatabaseUnavailableError),
        (asyncpg.CannotConnectNowError("starting up"), DatabaseUnavailableError),
        (asyncpg.TooManyConnectionsError("too many"), DatabaseUnavailableError),
        (asyncpg.ConnectionDoesNotExistError("closed"), DatabaseUnavailableError),
        (asyncpg.InterfaceError("connection is closed"), DatabaseUnavailableError),
        (ConnectionResetError("reset"), DatabaseUnavailableError),
        (asyncpg.InternalClientError("cannot switch to state 12"), DatabaseUnavailableError),
        (TimeoutError(), DatabaseTimeoutError),
        (asyncpg.QueryCanceledError("canceling statement due to statement timeout"), DatabaseTimeoutError),
        (asyncpg.UniqueViolationError("duplicate"), DatabaseError),
        (asyncpg.PostgresSyntaxError("syntax"), DatabaseError),
        (asyncpg.InterfaceError("cannot perform operation: another operation is in progress"), DatabaseError),
    ],
)
def test_every_driver_error_becomes_a_pipeline_error(error: BaseException, expected: type[PipelineError]) -> None:
    translated = translate_error(error)
    assert expected is type(translated)
    assert translated.message


def test_every_asyncpg_exception_class_is_mapped() -> None:
    """A driver exception class met at the boundary and left unmapped fails here."""

    def every(cls: type[BaseException]) -> list[type[BaseException]]:
        return [cls, *(sub for child in cls.__subclasses__() for sub in every(child))]

    classes = every(asyncpg.PostgresError) + every(asyncpg.InterfaceError)
    assert len(classes) > 200
    for cls in classes:
        translated = translate_error(cls("x"))
        assert isinstance(translated, DatabaseError), cls
        assert translated.message


async def test_idle_connections_above_the_minimum_are_closed_after_their_lifetime(
    make_settings: MakeSettings, pg_dsn: str
) -> None:
    settings = make_settings(database_url=pg_dsn, db_pool_min_size=1, db_pool_max_size=3)
    async for db in init_database(settings):
        # Three statements at once open three connections; each goes back idle.
        await asyncio.gather(*(db.fetchval("select pg_sleep(0.05)") for _ in range(3)))
        assert 3 == db.pool.get_size()
        reaper = _IdleReaper(db.pool, lifetime=0.2)
        try:
            for _ in range(200):
                if db.pool.get_size() == 1:
                    break
                await asyncio.sleep(0.02)
            assert 1 == db.pool.get_size()  # down to the minimum, never below it
            await asyncio.sleep(0.3)
            assert 1 == db.pool.get_size()
            assert 1 == await db.fetchval("select 1")  # the kept connection still serves
        finally:
            reaper.stop()


async def test_a_connection_in_use_is_never_closed_as_idle(make_settings: MakeSettings, pg_dsn: str) -> None:
    settings = make_settings(database_url=pg_dsn, db_pool_min_size=0, db_pool_max_size=2)
    async for db in init_database(settings):
        reaper = _IdleReaper(db.pool, lifetime=0.05)
        try:
            async with db.hold_connection():
                pid = await db.fetchval("select pg_backend_pid()")
                await asyncio.sleep(0.3)  # several checks while the connection is held
                assert pid == await db.fetchval("select pg_backend_pid()")
        finally:
            reaper.stop()
