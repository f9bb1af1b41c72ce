"""Every privilege anon and authenticated hold in public, against an allow-list, on both databases.

Both have Supabase's default privileges (the Supabase-built one its own, the machine's one the compatibility
script's copy of them): whatever postgres creates in public is granted to anon and authenticated, and
``revoke ... from public`` does not take that away. Privileges are read with has_*_privilege, so grants to
PUBLIC and through role membership count too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

API_ROLES = ("anon", "authenticated")

# What a signed-in user may do in public, directly or through PostgREST: read the job tables (RLS then keeps
# them to their own rows). Nothing for anon; no function, no sequence.
ALLOWED = {
    (kind, name, "authenticated", "SELECT")
    for name in ("jobs", "job_stages", "job_costs", "stage_runs")
    for kind in ("table", "column")
}

PRIVILEGES = """
with roles(role) as (select unnest($1::text[]))
select 'table' as kind, c.relname::text as name, roles.role, p.privilege
  from pg_class c
  cross join roles
  cross join unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) p(privilege)
 where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'f')
   and has_table_privilege(roles.role, c.oid, p.privilege)
union all
select 'column', c.relname::text, roles.role, p.privilege
  from pg_class c
  cross join roles
  cross join unnest(array['SELECT', 'INSERT', 'UPDATE', 'REFERENCES']) p(privilege)
 where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'f')
   and has_any_column_privilege(roles.role, c.oid, p.privilege)
union all
select 'sequence', c.relname::text, roles.role, p.privilege
  from pg_class c
  cross join roles
  cross join unnest(array['USAGE', 'SELECT', 'UPDATE']) p(privilege)
 where c.relnamespace = 'public'::regnamespace and c.relkind = 'S'
   and has_sequence_privilege(roles.role, c.oid, p.privilege)
union all
select 'function', p.oid::regprocedure::text, roles.role, 'EXECUTE'
  from pg_proc p
  cross join roles
 where p.pronamespace = 'public'::regnamespace
   and has_function_privilege(roles.role, p.oid, 'EXECUTE')
"""


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg_dsn)
    yield connection
    await connection.close()


async def test_api_roles_hold_only_the_allowed_privileges_in_public(conn: asyncpg.Connection) -> None:
    """Before 20261202000000, both roles could EXECUTE reserve_job_budget and commit_job_reservation."""
    rows = await conn.fetch(PRIVILEGES, list(API_ROLES))
    held = {(row["kind"], row["name"], row["role"], row["privilege"]) for row in rows}
    assert set() == held - ALLOWED
    assert ALLOWED == held  # the allow-list is not wider than what is granted


async def test_the_database_has_supabases_default_privileges(conn: asyncpg.Connection) -> None:
    """The control: a function created now by postgres is executable by both roles, as on Supabase."""
    async with conn.transaction():
        await conn.execute("set local role postgres")
        await conn.execute("create function public.probe() returns int language sql as 'select 1'")
        rows = await conn.fetch(PRIVILEGES, list(API_ROLES))
        await conn.execute("drop function public.probe()")
    assert {("function", "probe()", role, "EXECUTE") for role in API_ROLES} <= {
        (row["kind"], row["name"], row["role"], row["privilege"]) for row in rows
    }


@pytest.mark.parametrize("role", API_ROLES)
async def test_api_roles_cannot_call_the_budget_functions(conn: asyncpg.Connection, role: str) -> None:
    job = "00000000-0000-0000-0000-000000000000"
    for call in (
        f"select * from public.reserve_job_budget('{job}', '{job}', 'composition', 'x', 1, null, 1, "
        "interval '1 minute')",
        f"select * from public.commit_job_reservation('{job}', 1)",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for function"):
            async with conn.transaction():
                await conn.execute(f"set local role {role}")
                await conn.fetch(call)
