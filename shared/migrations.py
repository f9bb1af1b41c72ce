"""Apply ``supabase/migrations/<version>_<name>.sql`` in order, recording them the way the Supabase CLI does.

Each pending migration runs in its own transaction and is recorded in
``supabase_migrations.schema_migrations (version, statements, name)`` in the same transaction, so this command
and ``supabase db push`` agree on what has been applied. A session advisory lock makes concurrent runs (two
workers starting at once) apply each migration once. On a vanilla PostgreSQL (tests, local development) the
compatibility script ``shared/sql/supabase_compat.sql`` first creates what Supabase has (roles, ``auth``);
it is never applied where the ``auth`` schema exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.errors import ConfigError, DatabaseError, DatabaseUnavailableError

__all__ = [
    "Migration",
    "applied_versions",
    "default_migrations_dir",
    "ensure_database",
    "load_migrations",
    "migrate",
    "split_statements",
]

# Any constant key: two `migrate` runs against one database wait for each other on it.
_LOCK_KEY = 7_404_186_520_196_183_045
_FILE = re.compile(r"^(?P<version>\d+)_(?P<name>[A-Za-z0-9_.-]+)\.sql$")

# The table as the Supabase CLI creates it (pkg/migration/history.go): version first, the rest added later.
_HISTORY_DDL = """
create schema if not exists supabase_migrations;
create table if not exists supabase_migrations.schema_migrations (version text not null primary key);
alter table supabase_migrations.schema_migrations add column if not exists statements text[];
alter table supabase_migrations.schema_migrations add column if not exists name text;
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: its version (the timestamp), name and SQL."""

    version: str
    name: str
    sql: str

    @property
    def label(self) -> str:
        """Return ``<version>_<name>``, the file's name without ``.sql``."""
        return f"{self.version}_{self.name}"


def default_migrations_dir() -> Path:
    """Return the migrations the package ships (``supabase/migrations`` of the checkout links to them)."""
    return Path(str(resources.files("shared") / "sql" / "migrations"))


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Read every ``<version>_<name>.sql`` in ``directory``, ordered by version; refuse a stray or duplicate."""
    folder = directory or default_migrations_dir()
    if not folder.is_dir():
        raise ConfigError(
            problems=(f"migrations folder {folder} does not exist; run from a checkout of videogen-shared",)
        )
    migrations: dict[str, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise ConfigError(problems=(f"{path.name}: migration files are named <timestamp>_<name>.sql",))
        version = match["version"]
        if version in migrations:
            raise ConfigError(problems=(f"{path.name}: version {version} is used by two migration files",))
        migrations[version] = Migration(version, match["name"], path.read_text(encoding="utf-8"))
    return [migrations[version] for version in sorted(migrations, key=int)]


def split_statements(sql: str) -> list[str]:
    """Split a script into statements at top-level semicolons (quotes, dollar quotes and comments respected)."""
    statements: list[str] = []
    start = index = 0
    length = len(sql)
    while index < length:
        char = sql[index]
        if sql.startswith("--", index):
            end = sql.find("\n", index)
            index = length if end < 0 else end + 1
        elif sql.startswith("/*", index):
            end = sql.find("*/", index + 2)
            index = length if end < 0 else end + 2
        elif char in {"'", '"'}:
            end = index + 1
            while end < length:
                if sql[end] == char:
                    if sql.startswith(char * 2, end):  # a doubled quote escapes itself
                        end += 2
                        continue
                    break
                end += 1
            index = end + 1
        elif char == "$" and (tag := re.match(r"\$[A-Za-z_]*\$", sql[index:])):
            end = sql.find(tag.group(), index + len(tag.group()))
            index = length if end < 0 else end + len(tag.group())
        elif char == ";":
            statements.append(sql[start : index + 1])
            start = index = index + 1
        else:
            index += 1
    statements.append(sql[start:])
    return [text for statement in statements if (text := _strip_comments_only(statement))]


def _strip_comments_only(statement: str) -> str:
    """Return the statement trimmed, or '' when it holds nothing but comments and whitespace."""
    lines = [line for line in statement.strip().splitlines() if not line.strip().startswith("--")]
    return statement.strip() if "".join(lines).strip() else ""


async def _connect(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        parts = urlsplit(dsn)
        where = f"{parts.hostname}:{parts.port or 5432}"
        msg = f"cannot connect to PostgreSQL at {where} ({type(exc).__name__}); is it running? (make services)"
        raise DatabaseUnavailableError(msg) from exc


async def applied_versions(connection: asyncpg.Connection) -> set[str]:
    """Return the versions recorded in ``supabase_migrations.schema_migrations`` (none when it is missing)."""
    exists = await connection.fetchval("select to_regclass('supabase_migrations.schema_migrations') is not null")
    if not exists:
        return set()
    rows = await connection.fetch("select version from supabase_migrations.schema_migrations")
    return {row["version"] for row in rows}


async def migrate(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply the pending migrations in order, each in a transaction; return the labels of those applied."""
    migrations = load_migrations(directory)
    connection = await _connect(dsn)
    try:
        await connection.execute("select pg_advisory_lock($1)", _LOCK_KEY)
        try:
            return await _apply_pending(connection, migrations)
        finally:
            await connection.execute("select pg_advisory_unlock($1)", _LOCK_KEY)
    except asyncpg.PostgresError as exc:
        msg = f"migration failed ({type(exc).__name__}: {exc}); it was rolled back: fix it and run again"
        raise DatabaseError(msg, sqlstate=exc.sqlstate) from exc
    finally:
        await connection.close()


async def _apply_pending(connection: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    has_auth = await connection.fetchval("select exists (select 1 from pg_namespace where nspname = 'auth')")
    if not has_auth:
        compat = (resources.files("shared") / "sql" / "supabase_compat.sql").read_text(encoding="utf-8")
        async with connection.transaction():
            await connection.execute(compat)
    await connection.execute(_HISTORY_DDL)
    done = await applied_versions(connection)
    applied: list[str] = []
    for migration in migrations:
        if migration.version in done:
            continue
        async with connection.transaction():
            await connection.execute(migration.sql)
            await connection.execute(
                "insert into supabase_migrations.schema_migrations (version, statements, name) values ($1, $2, $3)",
                migration.version,
                split_statements(migration.sql),
                migration.name,
            )
        applied.append(migration.label)
    return applied


async def ensure_database(dsn: str) -> bool:
    """Create the database ``dsn`` names when it does not exist (development); return whether it was created."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not name:
        raise ConfigError(problems=("DATABASE_URL: expected a database name after the host, such as /videogen",))
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    connection = await _connect(maintenance)
    try:
        if await connection.fetchval("select 1 from pg_database where datname = $1", name):
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await connection.execute(f"create database {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False  # created by a concurrent run between the check and here
        return True
    finally:
        await connection.close()
