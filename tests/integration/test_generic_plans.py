"""Statements with an optional parameter keep their index under PostgreSQL's generic plan.

asyncpg caches each statement, and after five executions PostgreSQL may switch it to a generic plan, planned
without the parameters' values; whether it does depends on the data, so it can happen in production at any
time. ``($2::timestamptz is null or created_at < $2)`` became a Filter there (90,001 rows removed at 90 % depth
of 100k jobs). Each statement below is captured as the code sends it (asyncpg's query logger), prepared with
``plan_cache_mode = force_generic_plan`` and explained: its cursor is an Index Cond, and no Filter or
sequential scan depends on a parameter.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest

from shared.cost_tracking import CostTracker
from shared.database import DatabaseClient
from shared.jobs import JobRepository
from shared.maintenance import MaintenancePolicy, maintain
from shared.models import StageName

USERS, JOBS_PER_USER, COSTS_PER_JOB = 40, 50, 50
TABLES = {"jobs", "job_stages", "job_costs", "job_cost_reservations"}


@dataclass
class Sent:
    query: str
    args: tuple[object, ...]


@dataclass
class Captured:
    db: DatabaseClient
    jobs: JobRepository
    tracker: CostTracker
    sent: list[Sent]
    user: uuid.UUID
    job: uuid.UUID


def _asyncpg_introspection(query: str) -> bool:
    return "typeinfo_tree" in query or "set_config('jit'" in query


@pytest.fixture
async def captured(pg_dsn: str) -> AsyncIterator[Captured]:
    sent: list[Sent] = []

    async def listen(connection: asyncpg.Connection) -> None:
        await connection.set_type_codec(
            "jsonb", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads, schema="pg_catalog"
        )
        connection.add_query_logger(lambda record: sent.append(Sent(record.query, tuple(record.args or ()))))

    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1, init=listen)
    try:
        db = DatabaseClient(pool)
        await db.execute(
            """
            insert into auth.users (id) select gen_random_uuid() from generate_series(1, $1);
            """.replace("$1", str(USERS))
        )
        await db.execute(
            f"""
            insert into public.jobs (user_id, audio_url, user_prompt, created_at)
            select u.id, 'a.mp3', 'p', now() - n * interval '1 minute'
              from auth.users u, generate_series(1, {JOBS_PER_USER}) as n
            """
        )
        await db.execute(
            f"""
            insert into public.job_costs (job_id, stage_name, api_name, cost, created_at)
            select j.id, 'clip_generation', 'replicate', 0.01, now() - n * interval '1 second'
              from (select id from public.jobs limit {USERS}) j, generate_series(1, {COSTS_PER_JOB}) as n
            """
        )
        await db.execute(
            """
            insert into public.job_cost_reservations (job_id, stage_name, api_name, estimated_cost, status, expires_at)
            select id, 'clip_generation', 'replicate', 0.01, 'committed', now() from public.jobs
            """
        )
        await db.execute(
            """
            insert into public.job_stages (job_id, stage_name, status, completed_at)
            select id, 'audio_analysis', 'completed', now() from public.jobs
            """
        )
        await db.execute("analyze")
        user = await db.fetchval("select id from auth.users limit 1")
        job = await db.fetchval("select job_id from public.job_costs limit 1")
        tracker = CostTracker(db, default_budget=Decimal(50), reservation_ttl=timedelta(minutes=15))
        sent.clear()
        yield Captured(db, JobRepository(db), tracker, sent, user, job)
    finally:
        await pool.close()


def literal(value: object) -> str:
    """Return ``value`` as an SQL literal for EXECUTE (PostgreSQL casts it to the parameter's type)."""
    if value is None:
        return "null"
    if isinstance(value, bool | int | Decimal):
        return str(value)
    if isinstance(value, list | tuple):
        text = "{" + ",".join(str(item) for item in value) + "}"
    elif isinstance(value, dict):
        text = orjson.dumps(value).decode()
    elif isinstance(value, timedelta):
        text = f"{value.total_seconds()} seconds"
    elif isinstance(value, datetime):
        text = value.isoformat()
    else:
        text = str(value)
    return "'" + text.replace("'", "''") + "'"


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


async def generic_plan(db: DatabaseClient, sent: Sent) -> list[dict[str, Any]]:
    """Return the plan nodes of ``sent`` under the generic plan, as PostgreSQL would run it from the cache."""
    async with db.transaction():
        await db.execute("set local plan_cache_mode = force_generic_plan")
        await db.execute(f"prepare probe as {sent.query}")
        try:
            arguments = ", ".join(literal(arg) for arg in sent.args)
            raw = await db.fetchval(f"explain (format json) execute probe({arguments})")
        finally:
            await db.execute("deallocate probe")
    explained = orjson.loads(raw) if isinstance(raw, str) else raw
    return list(nodes(explained[0]["Plan"]))


Call = Callable[[Captured], Awaitable[object]]
NOW = datetime.now(UTC)

# Every statement of JobRepository's and CostTracker's read side with an optional parameter, with it unset
# and set: (name, call, the table whose scan must carry the cursor as an Index Cond, the cursor's column).
CALLS: list[tuple[str, Call, str | None, str | None]] = [
    ("jobs first page", lambda c: c.jobs.list_jobs_for_user(c.user), "jobs", "created_at"),
    (
        "jobs at depth",
        lambda c: c.jobs.list_jobs_for_user(c.user, before=NOW - timedelta(minutes=90), before_id=uuid.uuid4()),
        "jobs",
        "created_at",
    ),
    ("jobs before a time", lambda c: c.jobs.list_jobs_for_user(c.user, before=NOW), "jobs", "created_at"),
    ("costs first page", lambda c: c.tracker.list_costs(c.job, limit=10), "job_costs", "created_at"),
    (
        "costs at depth",
        lambda c: c.tracker.list_costs(c.job, after=NOW - timedelta(seconds=10), after_id=uuid.uuid4()),
        "job_costs",
        "created_at",
    ),
    ("cost summary", lambda c: c.tracker.cost_summary(c.job), "job_costs", None),
    ("budget without a limit", lambda c: c.tracker.get_budget(c.job), "jobs", None),
    ("budget with a limit", lambda c: c.tracker.get_budget(c.job, Decimal(5)), "jobs", None),
    (
        "track_cost without a key",
        lambda c: c.tracker.track_cost(c.job, StageName.CLIP_GENERATION, "replicate", "0.01"),
        "job_costs",
        None,
    ),
]


@pytest.mark.parametrize(("name", "call", "table", "cursor"), CALLS, ids=[c[0] for c in CALLS])
async def test_statement_keeps_its_index_under_the_generic_plan(
    captured: Captured, name: str, call: Call, table: str | None, cursor: str | None
) -> None:
    await call(captured)
    statements = [sent for sent in captured.sent if sent.args]
    assert statements, f"{name} sent no parameterised statement"

    for sent in statements:
        plan = await generic_plan(captured.db, sent)
        scans = [node for node in plan if node.get("Relation Name") == table]
        assert table is None or scans, f"{name}: no scan of {table} in {plan}"
        for node in plan:
            assert "Seq Scan" != node["Node Type"] or node.get("Relation Name") not in TABLES, plan
            assert "$" not in node.get("Filter", ""), f"{name}: a parameter in a Filter: {node}"
        if cursor is not None:
            conditions = " ".join(node.get("Index Cond", "") for node in scans)
            assert cursor in conditions, f"{name}: the cursor is not an Index Cond: {scans}"


async def test_the_old_optional_cursor_form_was_a_filter_under_the_generic_plan(captured: Captured) -> None:
    """The check above can fail: the statement list_jobs_for_user sent before keyset pages had a Filter."""
    old = Sent(
        """
        select * from public.jobs
         where user_id = $1 and ($2::timestamptz is null or created_at < $2)
         order by created_at desc
         limit $3
        """,
        (captured.user, NOW, 50),
    )
    plan = await generic_plan(captured.db, old)
    assert any("$2" in node.get("Filter", "") for node in plan), plan


async def test_each_maintenance_batch_reads_only_its_rows_through_an_index(captured: Captured) -> None:
    """A batch's cutoff is an Index Cond (a volatile clock_timestamp() there made it a Filter over every row)."""
    policy = MaintenancePolicy(timedelta(minutes=10), timedelta(minutes=5), timedelta(days=30), batch_size=10)
    # Stage items as the engine leaves them: thousands finished, a few live (the partial index holds those).
    job = await captured.jobs.create_job(user_id=captured.user, audio_url="a.wav", user_prompt="p")
    await captured.db.execute(
        "insert into stage_runs (job_id, stage, item, status, finished_at)"
        " select $1, 'clip_generation', n::text, 'completed', now() from generate_series(1, 5000) n",
        job.id,
    )
    await captured.db.execute("analyze stage_runs")
    captured.sent.clear()
    await maintain(captured.db, policy)
    # asyncpg introspects a type it meets first (the id arrays maintain returns): its own statements, not ours.
    ours = [sent for sent in captured.sent if sent.args and not _asyncpg_introspection(sent.query)]
    plans = [await generic_plan(captured.db, sent) for sent in ours]

    assert 4 == len(plans)
    for plan in plans:
        assert [] == [node for node in plan if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in TABLES]
    fail_jobs, release, redeliver, prune = plans
    # Stage items that lost their delivery are looked for among the live items only (a partial index).
    assert [] == [n for n in redeliver if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "stage_runs"]
    assert "stage_runs_live_idx" in {n.get("Index Name") for n in redeliver}, redeliver
    # Silent jobs are looked for among the jobs in flight only (a partial index), each one's stages by its key.
    assert {"jobs_active_status_idx", "job_stages_one_per_job_and_stage"} <= {n.get("Index Name") for n in fail_jobs}
    for plan, column in ((release, "expires_at"), (prune, "created_at")):
        scans = [node for node in plan if node.get("Relation Name") == "job_cost_reservations" and "Index Cond" in node]
        assert any(column in node["Index Cond"] and "$1" in node["Index Cond"] for node in scans), plan
