"""Apply ``supabase/migrations/<version>_<name>.sql`` the way the Supabase CLI does (``supabase db push``).

As the CLI's ``pkg/migration`` (list.go, apply.go, history.go, and pkg/parser for the statements):

- The folder and ``supabase_migrations.schema_migrations`` are compared first. A version the database has and
  the folder lacks stops everything (the CLI's ``ErrMissingLocal``: :class:`MigrationsMissingLocallyError`). A
  file older than the newest applied version is refused (``ErrMissingRemote``:
  :class:`MigrationsOutOfOrderError`) unless ``include_all`` is given (the CLI's ``--include-all``), which
  applies those first.
- ``RESET ALL`` runs before each file, so that a dump-style ``set_config('search_path', '', false)`` in one
  file cannot change the next.
- Each file's statements (split as the CLI splits them, each without its ``;`` and trimmed) run in one
  transaction with the history row ``(version, name, statements)``, so this command and ``supabase db push``
  agree on what has been applied.

Concurrent runs (several workers starting at once) apply each migration once, directly or through a
transaction pooler (Supavisor or pgbouncer in transaction mode, port 6543), because nothing depends on the
session: every transaction (the compatibility script, the history table, each file) first takes a
*transaction* advisory lock, which ends with it, and then looks again at what is applied, so a run that waited
for another skips what that one applied; no statement is prepared by name (asyncpg's statement cache is off);
and ``RESET ALL`` (and ``RESET ROLE``) run inside each file's transaction, before it and again before its
commit, so nothing a file sets reaches the pooled server connection. (A session lock would be taken on one
server connection and released on another, and stay held by an idle one.)

On a vanilla PostgreSQL (tests, local development) the compatibility script ``shared/sql/supabase_compat.sql``
first creates what Supabase has (roles, ``auth``); it is never applied where the ``auth`` schema exists, and
where the connected role may not do part of it (a non-superuser ``postgres`` in a new database on a Supabase
server), that part is skipped and reported (:attr:`MigrationReport.compat_skipped`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.errors import (
    ConfigError,
    DatabaseError,
    DatabaseUnavailableError,
    MigrationHistoryError,
    MigrationsMissingLocallyError,
    MigrationsOutOfOrderError,
)

__all__ = [
    "Migration",
    "MigrationHistoryError",
    "MigrationReport",
    "MigrationsMissingLocallyError",
    "MigrationsOutOfOrderError",
    "applied_versions",
    "apply_migrations",
    "default_migrations_dir",
    "ensure_database",
    "find_pending",
    "load_migrations",
    "migrate",
    "split_statements",
]

logger = logging.getLogger(__name__)

# Any constant key: two `migrate` runs against one database wait for each other on it.
_LOCK_KEY = 7_404_186_520_196_183_045
_FILE = re.compile(r"^(?P<version>\d+)_(?P<name>[A-Za-z0-9_.-]+)\.sql$")

# The table as the Supabase CLI creates it (pkg/migration/history.go): version first, the rest added later,
# under a lock timeout that ends with the transaction.
_HISTORY_DDL = [
    "set local lock_timeout = '4s'",
    "create schema if not exists supabase_migrations",
    "create table if not exists supabase_migrations.schema_migrations (version text not null primary key)",
    "alter table supabase_migrations.schema_migrations add column if not exists statements text[]",
    "alter table supabase_migrations.schema_migrations add column if not exists name text",
]
_IS_APPLIED = "select exists (select from supabase_migrations.schema_migrations where version = $1)"
_HAS_AUTH = "select exists (select from pg_namespace where nspname = 'auth')"
# RESET ALL leaves the role alone (it is not reset by ALL), so a file's `set role` is undone too.
_RESET = "reset all; reset role"
_INSERT_VERSION = "insert into supabase_migrations.schema_migrations (version, name, statements) values ($1, $2, $3)"


@dataclass
class MigrationReport:
    """What one run did: the labels of the migrations applied, and what the compatibility script skipped."""

    applied: list[str] = field(default_factory=list)
    compat_applied: bool = False
    compat_skipped: list[str] = field(default_factory=list)
    waited: bool = False  # another run held the lock at some point, and this one waited for it


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
    """Split a script into statements as the Supabase CLI does (pkg/parser ``SplitAndTrim``).

    A statement ends at a ``;`` outside quotes (``'`` and ``"``, doubled to escape), dollar quotes, ``--`` and
    nested ``/* */`` comments, parentheses and ``BEGIN ATOMIC ... END`` bodies; a backslash escapes the next
    character. Each statement keeps its comments, loses its trailing ``;`` and surrounding whitespace, and an
    empty one is dropped: what the CLI stores in ``schema_migrations.statements`` and executes.
    """
    statements: list[str] = []
    start = index = 0
    depth: list[str] = []  # closers of the open parentheses and BEGIN ATOMIC bodies
    length = len(sql)
    while index < length:
        char = sql[index]
        if sql.startswith("--", index):
            end = sql.find("\n", index)
            index = length if end < 0 else end + 1
        elif sql.startswith("/*", index):
            index = _block_comment_end(sql, index)
        elif char in {"'", '"'}:
            index = _quote_end(sql, index, char)
        elif char == "$" and (tag := _DOLLAR_TAG.match(sql, index)):
            end = sql.find(tag.group(), index + len(tag.group()))
            index = length if end < 0 else end + len(tag.group())
        elif char == "\\":
            index += 2
        elif char == "(":
            depth.append(")")
            index += 1
        elif depth and depth[-1] == ")" and char == ")":
            depth.pop()
            index += 1
        elif char in "cC" and _begins_atomic(sql, index):
            depth.append("end")
            index += 1
        elif depth and depth[-1] == "end" and sql[index : index + 3].lower() == "end":
            depth.pop()
            index += 3
        elif char == ";" and not depth:
            statements.append(sql[start : index + 1])
            start = index = index + 1
        else:
            index += 1
    statements.append(sql[start:])
    return [text for statement in statements if (text := statement.rstrip(";").strip())]


# A dollar-quote tag: letters, digits and underscores between two `$`, as the CLI's parser accepts them.
_DOLLAR_TAG = re.compile(r"\$\w*\$")


def _begins_atomic(sql: str, index: int) -> bool:
    """Whether ``index`` ends a whitespace-preceded ``ATOMIC`` (the CLI omits BEGIN: any space may split them)."""
    start = index - len("atomic") + 1
    return start > 0 and sql[start : index + 1].lower() == "atomic" and sql[start - 1].isspace()


def _only_comments(statement: str) -> bool:
    """Whether ``statement`` holds nothing but comments: the CLI stores it; PostgreSQL would run nothing."""
    rest = statement.strip()
    while rest:
        if rest.startswith("--"):
            end = rest.find("\n")
            rest = "" if end < 0 else rest[end + 1 :].strip()
        elif rest.startswith("/*"):
            rest = rest[_block_comment_end(rest, 0) :].strip()
        else:
            return False
    return True


def _block_comment_end(sql: str, index: int) -> int:
    """Return the index after the ``*/`` closing the (nested) block comment that opens at ``index``."""
    depth, index = 1, index + 2
    while index < len(sql) and depth:
        if sql.startswith("/*", index):
            depth, index = depth + 1, index + 2
        elif sql.startswith("*/", index):
            depth, index = depth - 1, index + 2
        else:
            index += 1
    return index


def _quote_end(sql: str, index: int, quote: str) -> int:
    """Return the index after the quote opening at ``index`` (a doubled quote escapes itself)."""
    end = index + 1
    while end < len(sql):
        if sql[end] == quote:
            if sql.startswith(quote * 2, end):
                end += 2
                continue
            return end + 1
        end += 1
    return end


async def _connect(dsn: str) -> asyncpg.Connection:
    # No named prepared statements: behind a transaction pooler the next statement may reach another server
    # connection, where the name is unknown or already taken (DuplicatePreparedStatementError).
    try:
        return await asyncpg.connect(dsn, timeout=10, statement_cache_size=0)
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


def find_pending(local: list[Migration], applied: set[str], *, include_all: bool = False) -> list[Migration]:
    """Return the migrations to apply, in order, as the CLI's FindPendingMigrations (and ``--include-all``).

    Raises MigrationsMissingLocallyError when ``applied`` holds a version the folder lacks, and
    MigrationsOutOfOrderError for an unapplied file older than the newest applied one, unless ``include_all``.
    """
    known = {migration.version for migration in local}
    missing = sorted(applied - known, key=_order)
    if missing:
        msg = (
            f"the database has applied migration(s) {', '.join(missing)} that {len(local)} local file(s) lack: "
            "update this checkout (git pull), or, if they were reverted, repair the history with "
            f"`supabase migration repair --status reverted {' '.join(missing)}`"
        )
        raise MigrationsMissingLocallyError(msg, versions=tuple(missing))
    newest = max(applied, key=_order, default=None)
    unapplied = [migration for migration in local if migration.version not in applied]
    older = [m for m in unapplied if newest is not None and _order(m.version) < _order(newest)]
    if older and not include_all:
        labels = [migration.label for migration in older]
        msg = (
            f"migration file(s) {', '.join(labels)} are older than {newest}, the newest applied: rename them with "
            "a later timestamp, or apply them anyway: `python -m shared db migrate --include-all` (include_all=True, "
            "as `supabase db push --include-all`)"
        )
        raise MigrationsOutOfOrderError(msg, versions=tuple(migration.version for migration in older))
    return unapplied


def _order(version: str) -> tuple[int, str]:
    """Order versions as numbers (the files' timestamps); a stray non-numeric one the CLI wrote sorts first."""
    return (int(version) if version.isdigit() else -1, version)


async def migrate(dsn: str, directory: Path | None = None, *, include_all: bool = False) -> list[str]:
    """Apply the pending migrations in order, each in a transaction; return the labels of those applied."""
    return (await apply_migrations(dsn, directory, include_all=include_all)).applied


async def apply_migrations(dsn: str, directory: Path | None = None, *, include_all: bool = False) -> MigrationReport:
    """Apply the pending migrations as :func:`migrate` does; return what was applied and what was skipped."""
    migrations = load_migrations(directory)
    connection = await _connect(dsn)
    try:
        return await _apply_pending(connection, migrations, include_all=include_all)
    except asyncpg.PostgresError as exc:
        raise _failed(exc, "reading the migration history") from exc
    finally:
        await connection.close()


async def _lock(connection: asyncpg.Connection, report: MigrationReport) -> None:
    """Take the migrations' transaction advisory lock, waiting (as long as it takes) for a run that holds it.

    Inside a transaction only: the lock ends with it, on the server connection that took it, pooled or not.
    The wait ignores a ``lock_timeout`` of the role or database (a long migration must not fail the runs
    waiting for it), and the setting is put back for the rest of the transaction.
    """
    if not await connection.fetchval("select pg_try_advisory_xact_lock($1)", _LOCK_KEY):
        if not report.waited:
            logger.info("another `db migrate` run is applying migrations; waiting for it")
        report.waited = True
        previous = await connection.fetchval("select current_setting('lock_timeout')")
        await connection.execute("select set_config('lock_timeout', '0', true)")
        await connection.execute("select pg_advisory_xact_lock($1)", _LOCK_KEY)
        await connection.execute("select set_config('lock_timeout', $1, true)", previous)
    # This transaction's catalog caches may predate what another run committed since the transaction began (a
    # cached "no such schema" for `supabase_migrations` makes `create schema if not exists` collide on
    # pg_namespace). An advisory lock does not make the backend read the invalidations; the transaction's
    # first lock on a relation does, and this is the first.
    await connection.execute("select from pg_catalog.pg_namespace limit 0")


def _failed(exc: asyncpg.PostgresError, what: str) -> DatabaseError:
    msg = f"{what} failed ({type(exc).__name__}: {exc}); it was rolled back: fix it and run again"
    return DatabaseError(msg, sqlstate=exc.sqlstate)


async def _apply_compat(connection: asyncpg.Connection, report: MigrationReport) -> None:
    if await connection.fetchval(_HAS_AUTH):
        return
    compat = (resources.files("shared") / "sql" / "supabase_compat.sql").read_text(encoding="utf-8")
    skipped: list[str] = []

    def listen(_: object, message: asyncpg.PostgresLogMessage) -> None:
        text = str(message.message)
        if text.startswith("skipped: "):
            skipped.append(text.removeprefix("skipped: "))

    connection.add_log_listener(listen)
    try:
        async with connection.transaction():
            await _lock(connection, report)
            if await connection.fetchval(_HAS_AUTH):
                return  # a concurrent run applied it while this one waited
            for statement in split_statements(compat):
                if not _only_comments(statement):
                    await connection.execute(statement)
            await connection.execute(_RESET)
    except asyncpg.PostgresError as exc:
        raise _failed(exc, "the compatibility script (shared/sql/supabase_compat.sql)") from exc
    finally:
        connection.remove_log_listener(listen)
    report.compat_applied = True
    report.compat_skipped = skipped
    for item in skipped:
        logger.warning("compatibility script skipped: %s", item)


async def _apply_pending(
    connection: asyncpg.Connection, migrations: list[Migration], *, include_all: bool
) -> MigrationReport:
    report = MigrationReport()
    await _apply_compat(connection, report)
    pending = find_pending(migrations, await applied_versions(connection), include_all=include_all)
    if not pending:
        return report
    try:
        async with connection.transaction():
            await _lock(connection, report)
            for statement in _HISTORY_DDL:
                await connection.execute(statement)
    except asyncpg.PostgresError as exc:
        raise _failed(exc, "creating supabase_migrations.schema_migrations") from exc
    for migration in pending:
        statements = split_statements(migration.sql)
        number = 0
        try:
            async with connection.transaction():
                # As the CLI: nothing a file set on the session (search_path, role, ...) reaches the next one,
                # and, behind a pooler, nothing reaches the server connection's next client.
                await connection.execute(_RESET)
                await _lock(connection, report)
                if await connection.fetchval(_IS_APPLIED, migration.version):
                    continue  # a concurrent run applied it while this one waited
                for number, statement in enumerate(statements, start=1):  # noqa: B007 - reported on failure
                    if not _only_comments(statement):  # asyncpg cannot run an empty query
                        await connection.execute(statement)
                await connection.execute(_INSERT_VERSION, migration.version, migration.name, statements)
                await connection.execute(_RESET)
        except asyncpg.PostgresError as exc:
            raise _failed(exc, f"migration {migration.label} (statement {number} of {len(statements)})") from exc
        report.applied.append(migration.label)
    return report


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
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            # Created by a concurrent run between the check and here: DuplicateDatabaseError when its
            # CREATE DATABASE had committed, a unique violation on pg_database's name when both ran at once.
            return False
        return True
    finally:
        await connection.close()
