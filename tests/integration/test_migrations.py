"""`db migrate` on real databases: order, idempotence, CLI-compatible history, compat only where needed, RLS."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from shared.cli import main as cli_main
from shared.errors import ConfigError, DatabaseError
from shared.migrations import ensure_database, load_migrations, migrate, split_statements
from shared.testing.databases import admin_execute, dsn_for, run_sync


@pytest.fixture
def empty_dsn() -> Iterator[str]:
    """Yield an empty database of this test's own (no migrations, no compat)."""
    name = f"vg_empty_{uuid.uuid4().hex[:12]}"
    yield dsn_for(name)
    run_sync(admin_execute(f'drop database if exists "{name}" with (force)'))


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg_dsn)
    yield connection
    await connection.close()


async def test_migrate_applies_everything_once_and_records_it_like_the_cli(empty_dsn: str) -> None:
    assert await ensure_database(empty_dsn)
    assert not await ensure_database(empty_dsn)
    applied = await migrate(empty_dsn)
    again = await migrate(empty_dsn)

    expected = [migration.label for migration in load_migrations()]
    assert expected == applied
    assert [] == again
    connection = await asyncpg.connect(empty_dsn)
    try:
        rows = await connection.fetch(
            "select version, name, statements from supabase_migrations.schema_migrations order by version"
        )
    finally:
        await connection.close()
    assert [label.split("_", 1) for label in expected] == [[row["version"], row["name"]] for row in rows]
    assert all(row["statements"] for row in rows)
    assert any("create table public.jobs (" in statement for statement in rows[0]["statements"])


async def test_concurrent_runs_apply_each_migration_once(empty_dsn: str) -> None:
    await ensure_database(empty_dsn)
    results = await asyncio.gather(*(migrate(empty_dsn) for _ in range(3)))
    assert len(load_migrations()) == sum(len(applied) for applied in results)


async def test_compat_script_is_skipped_where_auth_exists(empty_dsn: str, tmp_path: Path) -> None:
    await ensure_database(empty_dsn)
    connection = await asyncpg.connect(empty_dsn)
    try:
        await connection.execute("create schema auth")  # as on Supabase, where auth is Supabase's own
        (tmp_path / "20200101000000_probe.sql").write_text("create table probe (id int);")
        assert ["20200101000000_probe"] == await migrate(empty_dsn, tmp_path)
        assert await connection.fetchval("select to_regclass('auth.users')") is None
    finally:
        await connection.close()


async def test_failing_migration_is_rolled_back_and_not_recorded(empty_dsn: str, tmp_path: Path) -> None:
    await ensure_database(empty_dsn)
    (tmp_path / "20200101000000_good.sql").write_text("create table good (id int);")
    (tmp_path / "20200102000000_bad.sql").write_text("create table half (id int);\nselect * from nowhere;")
    with pytest.raises(DatabaseError) as caught:
        await migrate(empty_dsn, tmp_path)
    assert "42P01" == caught.value.sqlstate
    connection = await asyncpg.connect(empty_dsn)
    try:
        versions = await connection.fetch("select version from supabase_migrations.schema_migrations")
        assert ["20200101000000"] == [row["version"] for row in versions]
        assert await connection.fetchval("select to_regclass('public.half')") is None
    finally:
        await connection.close()


@pytest.mark.parametrize("name", ["jobs.sql", "2026_.sql", "abc_jobs.sql"])
def test_badly_named_migration_file_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("select 1;")
    with pytest.raises(ConfigError, match="<timestamp>_<name>"):
        load_migrations(tmp_path)


def test_missing_migrations_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_migrations(tmp_path / "nowhere")


def test_split_statements_respects_quotes_dollar_quotes_and_comments() -> None:
    script = """
    -- a comment; with a semicolon
    create function f() returns int language sql as $$ select 1; $$;
    insert into t values ('a;b', 'it''s;');
    /* block; comment */ select "odd;name" from t;
    do $body$ begin perform 1; end $body$;
    -- trailing comment only
    """
    statements = split_statements(script)
    assert 4 == len(statements)
    assert statements[0].endswith("$$ select 1; $$;")
    assert "'it''s;'" in statements[1]
    assert statements[3].startswith("do $body$")


def test_cli_migrate_reports_what_it_did(empty_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_dsn)
    monkeypatch.setenv("ENVIRONMENT", "development")
    out = io.StringIO()
    assert 0 == cli_main(["db", "migrate"], out=out)
    assert f"applied {len(load_migrations())} migration(s)" in out.getvalue()
    out = io.StringIO()
    assert 0 == cli_main(["db", "migrate"], out=out)
    assert "up to date" in out.getvalue()


async def as_user(conn: asyncpg.Connection, user: uuid.UUID | None, query: str, *args: object) -> list[asyncpg.Record]:
    """Run ``query`` as Supabase runs a signed-in user's request: role authenticated, the JWT's claims set."""
    async with conn.transaction():
        claims = orjson.dumps({"sub": str(user), "role": "authenticated"}).decode() if user else ""
        await conn.execute("select set_config('request.jwt.claims', $1, true)", claims)
        await conn.execute("set local role authenticated")
        return await conn.fetch(query, *args)


async def seed(conn: asyncpg.Connection) -> tuple[uuid.UUID, uuid.UUID]:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    for user in (alice, bob):
        await conn.execute("insert into auth.users (id) values ($1)", user)
        job = await conn.fetchval(
            "insert into jobs (user_id, audio_url, user_prompt) values ($1, 'a.mp3', 'p') returning id", user
        )
        await conn.execute("insert into job_stages (job_id, stage_name) values ($1, 'audio_analysis')", job)
        await conn.execute(
            "insert into job_costs (job_id, stage_name, api_name, cost) values ($1, 'audio_analysis', 'openai', 1)",
            job,
        )
    return alice, bob


@pytest.mark.parametrize("table", ["jobs", "job_stages", "job_costs"])
async def test_signed_in_users_read_only_their_own_rows(conn: asyncpg.Connection, table: str) -> None:
    alice, bob = await seed(conn)
    owner = "user_id" if table == "jobs" else "(select user_id from jobs where jobs.id = job_id)"
    for user in (alice, bob):
        rows = await as_user(conn, user, f"select {owner} as owner from {table}")
        assert [user] == [row["owner"] for row in rows]
    assert [] == await as_user(conn, None, f"select * from {table}")  # no claims: nothing
    assert 2 == await conn.fetchval(f"select count(*) from {table}")  # the backend sees everything


@pytest.mark.parametrize(
    "statement",
    [
        "update jobs set progress = 50",
        "delete from jobs",
        "insert into jobs (user_id, audio_url, user_prompt) values (auth.uid(), 'x', 'y')",
        "update job_stages set error = 'x'",
        "insert into job_costs (job_id, stage_name, api_name, cost) select id, 'composition', 'x', 0 from jobs",
        "delete from job_costs",
        "select * from job_cost_reservations",
    ],
)
async def test_signed_in_users_write_nothing(conn: asyncpg.Connection, statement: str) -> None:
    alice, _ = await seed(conn)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_user(conn, alice, statement)


async def test_service_role_bypasses_rls(conn: asyncpg.Connection) -> None:
    await seed(conn)
    async with conn.transaction():
        await conn.execute("set local role service_role")
        assert 2 == await conn.fetchval("select count(*) from jobs")
        assert "UPDATE 2" == await conn.execute("update jobs set progress = 1")
