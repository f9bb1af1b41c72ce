"""The schema's indexes: every foreign key has one (a cascade or a key check never scans a whole table)."""

from __future__ import annotations

from shared.database import DatabaseClient

# A foreign key is supported by a whole (non-partial) index whose leading columns are exactly its columns.
FOREIGN_KEYS_WITHOUT_AN_INDEX = """
select c.conrelid::regclass::text as table_name, c.conname as constraint_name
  from pg_constraint c
  join pg_namespace n on n.oid = c.connamespace
 where c.contype = 'f'
   and n.nspname = 'public'
   and not exists (
       select 1
         from pg_index i
        where i.indrelid = c.conrelid
          and i.indpred is null
          and (string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(c.conkey)] @> c.conkey
          and (string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(c.conkey)] <@ c.conkey
   )
 order by 1, 2
"""


async def test_every_foreign_key_has_a_supporting_index(db: DatabaseClient) -> None:
    missing = [f"{row['table_name']}.{row['constraint_name']}" for row in await db.fetch(FOREIGN_KEYS_WITHOUT_AN_INDEX)]
    assert [] == missing


async def test_the_catalog_query_finds_a_foreign_key_without_an_index(db: DatabaseClient) -> None:
    """The query above can fail: a partial index, or one led by another column, does not count."""
    await db.execute("create table public.probe (id int primary key, job_id uuid references public.jobs (id))")
    await db.execute("create index probe_partial on public.probe (job_id) where id > 0")
    await db.execute("create index probe_second on public.probe (id, job_id)")
    assert ["probe.probe_job_id_fkey"] == [
        f"{row['table_name']}.{row['constraint_name']}" for row in await db.fetch(FOREIGN_KEYS_WITHOUT_AN_INDEX)
    ]
    await db.execute("create index probe_job on public.probe (job_id)")
    assert [] == await db.fetch(FOREIGN_KEYS_WITHOUT_AN_INDEX)
