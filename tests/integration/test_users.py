"""The testing kit's users and jobs on the real services, and the demo twice on the Supabase-built database."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

import pytest

from shared.config import Settings
from shared.database import DatabaseClient
from shared.demo import run_demo
from shared.jobs import JobRepository
from shared.models import JobStatus
from shared.testing.users import create_job_for_new_user, create_user, unique_email
from tests.fixtures.core import MakeSettings


async def test_each_user_gets_an_email_of_its_own(db: DatabaseClient) -> None:
    first, second = await create_user(db), await create_user(db)
    emails = await db.fetch("select email from auth.users where id = any($1::uuid[])", [first, second])
    assert 2 == len({row["email"] for row in emails})
    assert all(row["email"].endswith("@videogen.invalid") for row in emails)


async def test_a_given_email_is_taken_once(db: DatabaseClient) -> None:
    """The unique index on auth.users.email, on both databases: the reason the helper makes the emails."""
    email = unique_email("taken")
    await create_user(db, email=email)
    with pytest.raises(Exception, match="users_email_partial_key"):
        await create_user(db, email=email)


async def test_a_job_for_a_new_user_is_queued_and_theirs(db: DatabaseClient) -> None:
    job = await create_job_for_new_user(db, budget_limit=Decimal("1.5000"))
    stored = await JobRepository(db).get_job(job.id)
    assert (JobStatus.QUEUED, Decimal("1.5000"), job.user_id) == (stored.status, stored.budget_limit, stored.user_id)


@pytest.mark.parametrize("pg_flavour", ["supabase"], indirect=True)
async def test_demo_runs_twice_on_the_supabase_built_database(
    make_settings: MakeSettings, pg_dsn: str, redis_prefix: str, tmp_path: Path
) -> None:
    """Before: the second run failed, every demo user having the same email."""
    settings: Settings = make_settings(database_url=pg_dsn, redis_key_prefix=redis_prefix)
    for run in range(2):
        out = io.StringIO()
        status = await run_demo(settings, out=out, log_dir=tmp_path / str(run))
        assert 0 == status, out.getvalue()
        assert "every component behaved as expected" in out.getvalue()
