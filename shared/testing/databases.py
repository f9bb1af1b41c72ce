"""A PostgreSQL database per test, cloned from a template migrated once per set of migrations.

The template's name carries a hash of the migrations (and the compatibility script), so a change to either
builds a new one; each test then pays only for ``CREATE DATABASE ... TEMPLATE`` (tens of milliseconds).
The server is ``TEST_DATABASE_URL`` (default the local one). Used by this project's tests and by the
``real_container`` fixture module authors take from :mod:`shared.testing.fixtures`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
import uuid
from collections.abc import Coroutine, Iterator
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.migrations import default_migrations_dir, migrate

__all__ = ["admin_dsn", "admin_execute", "database_for_test", "dsn_for", "run_sync", "template_database"]

T = TypeVar("T")


def admin_dsn() -> str:
    """Return the DSN of the server's maintenance database (``TEST_DATABASE_URL``)."""
    return os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def dsn_for(database: str, base: str | None = None) -> str:
    """Return ``base`` (the admin DSN by default) pointing at another database of the same server."""
    return urlunsplit(urlsplit(base or admin_dsn())._replace(path=f"/{database}"))


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a loop of its own, even when called inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def admin_execute(statement: str, admin_url: str | None = None) -> None:
    """Run one statement on the server's maintenance database (create or drop a database).

    ``admin_url`` selects another server's maintenance database (default :func:`admin_dsn`).
    """
    admin = await asyncpg.connect(admin_url or admin_dsn())
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


def _migrations_hash() -> str:
    digest = hashlib.sha256((resources.files("shared") / "sql" / "supabase_compat.sql").read_bytes())
    for path in sorted(default_migrations_dir().glob("*.sql")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


async def _build_template(name: str, admin_url: str, base: str | None) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        # One builder at a time across concurrent test runs on this server.
        await admin.execute("select pg_advisory_lock(hashtext($1))", name)
        try:
            if await admin.fetchval("select 1 from pg_database where datname = $1", name):
                return
            building = f"{name}_building"
            await admin.execute(f'drop database if exists "{building}"')
            source = f' template "{base}"' if base else ""
            await admin.execute(f'create database "{building}"{source}')
            await migrate(dsn_for(building, admin_url))
            await admin.execute(f'alter database "{building}" rename to "{name}"')
        finally:
            await admin.execute("select pg_advisory_unlock(hashtext($1))", name)
    finally:
        await admin.close()


def template_database(admin_url: str | None = None, base: str | None = None) -> str:
    """Return the name of the migrated template database, building it when it does not exist yet.

    ``admin_url`` selects the server (default :func:`admin_dsn`); ``base`` is a database to start from instead
    of an empty one (on a server built from Supabase's SQL, the database that SQL was applied to).
    """
    name = f"vg_template_{_migrations_hash()}" + (f"_{base}" if base else "")
    run_sync(_build_template(name, admin_url or admin_dsn(), base))
    return name


@contextlib.contextmanager
def database_for_test(template: str | None = None, admin_url: str | None = None) -> Iterator[str]:
    """Create a migrated database of the caller's own (on ``admin_url``'s server); yield its DSN; drop it after."""
    source = template or template_database(admin_url)
    name = f"vg_test_{uuid.uuid4().hex[:12]}"
    run_sync(admin_execute(f'create database "{name}" template "{source}"', admin_url))
    try:
        yield dsn_for(name, admin_url)
    finally:
        run_sync(admin_execute(f'drop database if exists "{name}" with (force)', admin_url))
