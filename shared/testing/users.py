"""Sign up users on the real database for tests, the way Supabase Auth leaves them in ``auth.users``."""

from __future__ import annotations

import uuid
from decimal import Decimal
from uuid import UUID

from shared.database import Database
from shared.jobs import JobStore
from shared.models import Job

__all__ = ["create_job_for_new_user", "create_user"]


async def create_user(db: Database, *, email: str | None = None, user_id: UUID | None = None) -> UUID:
    """Insert a signed-up user (its id and a unique email, the columns every ``auth.users`` has); return its id.

    The email is unique per call unless given, since ``auth.users`` has a unique index on it on Supabase.
    """
    new_id = user_id or uuid.uuid4()
    await db.execute(
        "insert into auth.users (id, email) values ($1, $2)",
        new_id,
        email or f"user-{new_id.hex}@example.test",
    )
    return new_id


async def create_job_for_new_user(
    db: Database, jobs: JobStore, *, budget_limit: Decimal | None = None, prompt: str = "a test prompt"
) -> Job:
    """Sign up a user and create a queued job of theirs."""
    user_id = await create_user(db)
    return await jobs.create_job(
        user_id=user_id, audio_url="audio/test.wav", user_prompt=prompt, budget_limit=budget_limit
    )
