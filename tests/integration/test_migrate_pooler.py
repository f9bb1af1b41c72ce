"""`db migrate` through a real pgbouncer in transaction mode (as Supavisor on port 6543), several runs at once.

Before: two runs both crashed with DuplicatePreparedStatementError, the session advisory lock excluded nothing and
stayed held by an idle server connection (the next runs hung), and runs racing to create the database exited with
a raw UniqueViolationError.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from shared.cli import main as cli_main
from shared.migrations import _LOCK_KEY, apply_migrations, ensure_database, load_migrations
from shared.testing.databases import admin_execute, dsn_for, run_sync
from tests.fixtures.servers import PgBouncer, start_pgbouncer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bouncer(pg_admin_dsn: str) -> Iterator[PgBouncer]:
    """pgbouncer in transaction mode with 2 server connections for many clients."""
    server = start_pgbouncer(pool_mode="transaction", pool_size=2, upstream_port=urlsplit(pg_admin_dsn).port or 5432)
    yield server
    server.stop()


@pytest.fixture
def missing_database(pg_admin_dsn: str) -> Iterator[str]:
    """The name of a database that does not exist yet; dropped after the test."""
    name = f"vg_pooled_{uuid.uuid4().hex[:12]}"
    yield name
    run_sync(admin_execute(f'drop database if exists "{name}" with (force)', pg_admin_dsn))


def run_migrate(database_url: str) -> subprocess.CompletedProcess[str]:
    """`python -m shared db migrate` in a process of its own, as a worker's start-up runs it."""
    env = {**os.environ, "DATABASE_URL": database_url, "ENVIRONMENT": "development"}
    return subprocess.run(
        [sys.executable, "-m", "shared", "db", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_concurrent_runs_through_the_pooler_on_a_missing_database_apply_each_migration_once(
    bouncer: PgBouncer, missing_database: str, pg_admin_dsn: str
) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run_migrate, [bouncer.dsn(missing_database)] * 4))

    outputs = [result.stdout + result.stderr for result in results]
    assert [0, 0, 0, 0] == [result.returncode for result in results], outputs
    assert not any("Traceback" in output for output in outputs), outputs
    assert 1 == sum("created the database" in output for output in outputs), outputs
    applied = [int(match[1]) for output in outputs if (match := re.search(r"applied (\d+) migration", output))]
    assert len(load_migrations()) == sum(applied), outputs
    history, advisory = run_sync(_history_and_locks(dsn_for(missing_database, pg_admin_dsn), missing_database))
    assert (len(load_migrations()), 0) == (history, advisory)
    again = run_migrate(bouncer.dsn(missing_database))
    assert (0, True) == (again.returncode, "up to date" in again.stdout), again.stdout + again.stderr


async def _history_and_locks(dsn: str, database: str) -> tuple[int, int]:
    connection = await asyncpg.connect(dsn)
    try:
        history = await connection.fetchval("select count(*) from supabase_migrations.schema_migrations")
        advisory = await connection.fetchval(
            """select count(*) from pg_locks
               where locktype = 'advisory' and database = (select oid from pg_database where datname = $1)""",
            database,
        )
        return int(history), int(advisory)
    finally:
        await connection.close()


async def test_a_run_waits_for_the_run_holding_the_lock_then_skips_what_it_applied(
    bouncer: PgBouncer, missing_database: str, pg_admin_dsn: str
) -> None:
    direct = dsn_for(missing_database, pg_admin_dsn)
    assert await ensure_database(direct)
    holder = await asyncpg.connect(direct)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("select pg_advisory_xact_lock($1)", _LOCK_KEY)
        run = asyncio.create_task(apply_migrations(bouncer.dsn(missing_database)))
        await _until_waiting(holder, run)
        await transaction.commit()
        report = await asyncio.wait_for(run, timeout=120)
    finally:
        await holder.close()
    assert (True, len(load_migrations())) == (report.waited, len(report.applied))
    again = await apply_migrations(bouncer.dsn(missing_database))
    assert ([], False) == (again.applied, again.waited)


async def test_what_a_migration_sets_does_not_reach_the_pooled_server_connection(
    pg_admin_dsn: str, missing_database: str, tmp_path: Path
) -> None:
    server = start_pgbouncer(pool_mode="transaction", pool_size=1, upstream_port=urlsplit(pg_admin_dsn).port or 5432)
    try:
        assert await ensure_database(dsn_for(missing_database, pg_admin_dsn))
        (tmp_path / "20200101000000_sets.sql").write_text(
            "set search_path = nowhere;\nset statement_timeout = '1s';\ncreate table public.t (id int);\n"
        )
        await apply_migrations(server.dsn(missing_database), tmp_path)
        client = await asyncpg.connect(server.dsn(missing_database), statement_cache_size=0)
        try:
            seen = await client.fetchrow(
                "select current_setting('search_path') as path, current_setting('statement_timeout') as timeout"
            )
        finally:
            await client.close()
    finally:
        server.stop()
    assert seen is not None
    assert ('"$user", public', "0") == (seen["path"], seen["timeout"])


async def test_concurrent_runs_creating_one_database_report_one_creation_and_no_error(
    missing_database: str, pg_admin_dsn: str
) -> None:
    created = await asyncio.gather(*(ensure_database(dsn_for(missing_database, pg_admin_dsn)) for _ in range(6)))
    assert 1 == sum(created)


@pytest.mark.parametrize("through", ["direct", "pgbouncer"])
async def test_a_run_that_waited_skips_the_migrations_the_other_run_applied(
    bouncer: PgBouncer, missing_database: str, pg_admin_dsn: str, tmp_path: Path, through: str
) -> None:
    """The other run creates the history and records every version while this one waits: nothing is applied twice.

    Directly, the waiting run's catalog cache still says `supabase_migrations` does not exist (it looked before
    waiting): unless it reads the invalidations after the lock, `create schema if not exists` collides.
    """
    direct = dsn_for(missing_database, pg_admin_dsn)
    runner_dsn = direct if through == "direct" else bouncer.dsn(missing_database)
    assert await ensure_database(direct)
    assert [] == (await apply_migrations(direct, tmp_path)).applied  # the compatibility script only
    holder = await asyncpg.connect(direct)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("select pg_advisory_xact_lock($1)", _LOCK_KEY)
        run = asyncio.create_task(apply_migrations(runner_dsn))
        await _until_waiting(holder, run)
        await holder.execute(
            "create schema supabase_migrations; create table supabase_migrations.schema_migrations"
            " (version text primary key, statements text[], name text)"
        )
        for migration in load_migrations():
            await holder.execute(
                "insert into supabase_migrations.schema_migrations (version, name) values ($1, $2)",
                migration.version,
                migration.name,
            )
        await transaction.commit()
        report = await asyncio.wait_for(run, timeout=120)
        tables = await holder.fetchval("select count(*) from pg_tables where schemaname = 'public'")
    finally:
        await holder.close()
    assert ([], True, 0) == (report.applied, report.waited, tables)


async def test_the_command_says_it_waited_for_another_run(
    bouncer: PgBouncer, missing_database: str, pg_admin_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = dsn_for(missing_database, pg_admin_dsn)
    assert await ensure_database(direct)
    monkeypatch.setenv("DATABASE_URL", bouncer.dsn(missing_database))
    monkeypatch.setenv("ENVIRONMENT", "development")
    out = io.StringIO()
    holder = await asyncpg.connect(direct)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("select pg_advisory_xact_lock($1)", _LOCK_KEY)
        run = asyncio.ensure_future(asyncio.to_thread(cli_main, ["db", "migrate"], out=out))
        await _until_waiting(holder, run)
        await transaction.commit()
        status = await asyncio.wait_for(run, timeout=120)
    finally:
        await holder.close()
    assert 0 == status, out.getvalue()
    assert "waited for another `db migrate` run" in out.getvalue()
    assert f"applied {len(load_migrations())} migration(s)" in out.getvalue()


async def _until_waiting(holder: asyncpg.Connection, run: asyncio.Future[Any]) -> None:
    """Return once a session waits for the advisory lock ``holder`` holds (failing if ``run`` ended first)."""
    while not await holder.fetchval("select exists (select from pg_locks where locktype = 'advisory' and not granted)"):
        assert not run.done(), run
        await asyncio.sleep(0.02)
