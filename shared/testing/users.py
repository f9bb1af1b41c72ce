"""Users (and their jobs) on the real services, for tests and demos: no raw SQL into ``auth.users`` by the caller.

On Supabase a user comes from signing up (GoTrue writes ``auth.users``); a test or a demo has no GoTrue, so
:func:`create_user` writes the row the way GoTrue leaves it for an email sign-up, with the columns both the
compatibility script's ``auth.users`` and Supabase's own have. Every user gets an email of its own: the real
``auth.users`` has a unique index on email (``users_email_partial_key``), so a fixed address fails the second
time, as the demo's did.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from shared.database import DatabaseClient
from shared.jobs import JobRepository
from shared.models import Job

__all__ = ["create_job_for_new_user", "create_user", "unique_email"]

# RFC 2606: .invalid never resolves, so no mail can ever be sent to these users.
EMAIL_DOMAIN = "videogen.invalid"


def unique_email(label: str = "user") -> str:
    """Return an address no other user has: ``<label>+<random>@videogen.invalid``."""
    return f"{label}+{uuid.uuid4().hex}@{EMAIL_DOMAIN}"


async def create_user(db: DatabaseClient, *, email: str | None = None, user_id: uuid.UUID | None = None) -> uuid.UUID:
    """Create a signed-up user in ``auth.users`` (a unique email unless given) and return its id."""
    new_id = user_id or uuid.uuid4()
    await db.execute(
        "insert into auth.users (id, email, created_at) values ($1, $2, now())", new_id, email or unique_email()
    )
    return new_id


async def create_job_for_new_user(
    db: DatabaseClient,
    *,
    budget_limit: Decimal | None = None,
    audio_url: str = "audio/test.wav",
    user_prompt: str = "a test prompt",
) -> Job:
    """Create a new user and a queued job of theirs through JobRepository; return the job."""
    user_id = await create_user(db)
    return await JobRepository(db).create_job(
        user_id=user_id, audio_url=audio_url, user_prompt=user_prompt, budget_limit=budget_limit
    )
