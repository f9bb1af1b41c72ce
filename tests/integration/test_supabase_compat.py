"""The compatibility script against the database built from Supabase's own SQL, object by object.

Wherever the project relies on Supabase's set-up, a database migrated on a plain PostgreSQL (through
shared/sql/supabase_compat.sql) must look like one migrated on the Supabase-built server: the API roles, the
default privileges on public, auth.jwt() and auth.role() (and auth.uid(), auth.email()), and the unique index
on auth.users.email. Then the script's own duty on a Supabase server, as the non-superuser postgres.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import orjson
import pytest

from shared.cli import main as cli_main
from shared.migrations import apply_migrations, ensure_database, load_migrations
from shared.testing.databases import admin_execute, database_for_test, dsn_for, run_sync
from tests.fixtures.postgres import PgServers

API_ROLES = ("anon", "authenticated", "service_role")
AUTH_FUNCTIONS = ("uid", "role", "email", "jwt")
USER = "8b5a6c3e-4b1f-4e0a-9c1d-2f3e4a5b6c7d"


@pytest.fixture
async def both(pg_servers: PgServers) -> AsyncIterator[dict[str, asyncpg.Connection]]:
    """Yield a connection (as postgres) to a fresh migrated database on each server: plain and supabase."""
    connections: dict[str, asyncpg.Connection] = {}
    with (
        database_for_test(pg_servers.template("plain"), pg_servers.admin_url("plain")) as plain,
        database_for_test(pg_servers.template("supabase"), pg_servers.admin_url("supabase")) as supabase,
    ):
        for flavour, dsn in (("plain", plain), ("supabase", supabase)):
            connections[flavour] = await asyncpg.connect(dsn)
        try:
            yield connections
        finally:
            for connection in connections.values():
                await connection.close()


async def each(both: dict[str, asyncpg.Connection], query: str, *args: object) -> dict[str, list[dict[str, Any]]]:
    return {flavour: [dict(row) for row in await conn.fetch(query, *args)] for flavour, conn in both.items()}


async def test_api_roles_inherit_and_postgres_is_a_member_of_each(both: dict[str, asyncpg.Connection]) -> None:
    """Before: the script made them NOINHERIT and postgres a member of none."""
    found = await each(
        both,
        """
        select r.rolname, r.rolinherit, r.rolbypassrls, r.rolcanlogin, r.rolsuper,
               exists (select from pg_auth_members m where m.roleid = r.oid and m.member = 'postgres'::regrole)
                   as postgres_is_member
          from pg_roles r where r.rolname = any($1::text[]) order by r.rolname
        """,
        list(API_ROLES),
    )
    assert found["supabase"] == found["plain"]
    assert all(row["rolinherit"] and row["postgres_is_member"] for row in found["plain"])
    assert 3 == len(found["plain"])


async def test_default_privileges_on_public_are_supabases(both: dict[str, asyncpg.Connection]) -> None:
    """Before: the script set none, so a plain database hid the EXECUTE grants Supabase gives (issue 12, 5)."""
    found = await each(
        both,
        """
        select d.defaclobjtype::text as kind, array(select unnest(d.defaclacl)::text order by 1) as acl
          from pg_default_acl d
         where d.defaclrole = 'postgres'::regrole and d.defaclnamespace = 'public'::regnamespace
         order by 1
        """,
    )
    assert found["supabase"] == found["plain"]
    assert {"f", "r", "S"} == {row["kind"] for row in found["plain"]}


def _normalised(definition: str) -> str:
    return re.sub(r"\s+", " ", definition).strip()


async def test_auth_functions_are_defined_as_supabase_defines_them(both: dict[str, asyncpg.Connection]) -> None:
    """Before: auth.jwt() and auth.role() did not exist on the plain database."""
    found = await each(
        both,
        """
        select p.proname, pg_get_functiondef(p.oid) as definition, has_function_privilege('authenticated', p.oid,
               'EXECUTE') as callable
          from pg_proc p where p.pronamespace = 'auth'::regnamespace and p.proname = any($1::text[])
         order by 1
        """,
        list(AUTH_FUNCTIONS),
    )
    assert sorted(AUTH_FUNCTIONS) == [row["proname"] for row in found["supabase"]]
    normalised = {
        flavour: [(row["proname"], _normalised(row["definition"]), row["callable"]) for row in rows]
        for flavour, rows in found.items()
    }
    assert normalised["supabase"] == normalised["plain"]


@pytest.mark.parametrize(
    "settings",
    [
        {"request.jwt.claims": {"sub": USER, "role": "authenticated", "email": "a@b.c"}},
        {"request.jwt.claim.sub": USER, "request.jwt.claim.role": "anon"},
        {},
    ],
    ids=["postgrest-claims", "legacy-claim-settings", "no-claims"],
)
async def test_auth_functions_read_the_claims_the_same_way(
    both: dict[str, asyncpg.Connection], settings: dict[str, object]
) -> None:
    answers = {}
    for flavour, conn in both.items():
        async with conn.transaction():
            for name, value in settings.items():
                text = orjson.dumps(value).decode() if isinstance(value, dict) else str(value)
                await conn.execute("select set_config($1, $2, true)", name, text)
            await conn.execute("set local role authenticated")
            row = await conn.fetchrow("select auth.uid()::text, auth.role(), auth.email(), auth.jwt()::text")
            answers[flavour] = tuple(row) if row else None
    assert answers["supabase"] == answers["plain"]


async def test_auth_users_email_is_unique_except_for_sso_accounts(both: dict[str, asyncpg.Connection]) -> None:
    """Before: the plain auth.users took the same email twice, so the demo passed there and failed on Supabase."""
    indexes = await each(
        both,
        """
        select indexrelid::regclass::text as name, pg_get_indexdef(indexrelid) as definition
          from pg_index where indrelid = 'auth.users'::regclass and indisunique
           and pg_get_indexdef(indexrelid) like '%(email)%'
        """,
    )
    assert indexes["supabase"] == indexes["plain"]
    assert ["auth.users_email_partial_key"] == [row["name"] for row in indexes["plain"]]
    for conn in both.values():
        email = f"same+{uuid.uuid4().hex}@videogen.invalid"
        await conn.execute("insert into auth.users (id, email) values ($1, $2)", uuid.uuid4(), email)
        with pytest.raises(asyncpg.UniqueViolationError, match="users_email_partial_key"):
            await conn.execute("insert into auth.users (id, email) values ($1, $2)", uuid.uuid4(), email)
        await conn.execute("insert into auth.users (id, email, is_sso_user) values ($1, $2, true)", uuid.uuid4(), email)


@pytest.fixture
def new_supabase_database(pg_servers: PgServers) -> Iterator[str]:
    """Yield a new, empty database on the Supabase-built server, created by postgres (no auth schema in it)."""
    admin = pg_servers.admin_url("supabase")
    name = f"vg_new_{uuid.uuid4().hex[:12]}"
    yield dsn_for(name, admin)
    run_sync(admin_execute(f'drop database if exists "{name}" with (force)', admin))


async def test_compat_script_applies_what_is_missing_as_the_non_superuser_postgres(new_supabase_database: str) -> None:
    """Before: 'must be superuser to create bypassrls users', and nothing was migrated."""
    assert await ensure_database(new_supabase_database)
    report = await apply_migrations(new_supabase_database)
    assert report.compat_applied
    assert [] == report.compat_skipped  # the roles are as the script wants them: nothing to skip
    conn = await asyncpg.connect(new_supabase_database)
    try:
        assert not await conn.fetchval("select rolsuper from pg_roles where rolname = current_user")
        assert await conn.fetchval("select to_regclass('public.job_cost_reservations') is not null")
        assert await conn.fetchval("select to_regprocedure('auth.jwt()') is not null")
    finally:
        await conn.close()


def test_compat_script_says_what_it_may_not_do(
    pg_servers: PgServers, new_supabase_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A role attribute only a superuser may set is skipped and reported by `db migrate`; the rest is applied."""
    superuser = pg_servers.admin_url("supabase").replace("postgresql://postgres@", "postgresql://supabase_admin@")
    monkeypatch.setenv("DATABASE_URL", new_supabase_database)
    monkeypatch.setenv("ENVIRONMENT", "development")
    out = io.StringIO()
    run_sync(admin_execute("alter role service_role nobypassrls", superuser))
    try:
        status = cli_main(["db", "migrate"], out=out)
    finally:
        run_sync(admin_execute("alter role service_role bypassrls", superuser))
    assert 0 == status, out.getvalue()
    lines = out.getvalue().splitlines()
    skipped = [line for line in lines if line.startswith("compatibility script skipped: ")]
    assert 1 == len(skipped), lines
    assert "alter role service_role bypassrls (must be superuser" in skipped[0]
    assert any(line.startswith(f"applied {len(load_migrations())} migration(s)") for line in lines)
