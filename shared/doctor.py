"""``python -m shared doctor``: load the settings (every problem at once) and check each service, with latency.

The services are the ones the container declares checked (:func:`shared.health.service_checks`, the list that
the health route reads too). Each is opened on its own, through the container's own wiring, with one attempt and
a short timeout, so one that is down is reported as down (with what to do) instead of hanging the command or
hiding the others. Exit status 1 when any is down.

It tells the truth on a busy host:

- Each check's imports (asyncpg, redis, supabase: seconds on a loaded machine) happen before any clock starts,
  so they never count against a check's budget and never turn a slow import into a false "down".
- The checks run side by side, each under its own timeout, so the command ends within the timeout plus a small
  constant (the imports, and at most :data:`CLEANUP_SECONDS` for a check that did not answer to let go).
- Nothing is left for the interpreter to complain about: a check that times out is cancelled and awaited, and
  an error that a cancelled driver leaves on a future nobody awaits is retrieved, not printed as
  "Future exception was never retrieved".

It also checks the connection budget: ``--processes`` x ``DB_POOL_MAX_SIZE`` against what the database
accepts (``max_connections`` less the reserved ones) or, behind a pooler that refuses clients past its pool
size (Supabase's session pooler), ``DB_MAX_CLIENT_CONNECTIONS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO
from urllib.parse import urlsplit

from dependency_injector import providers

from shared.config import Settings
from shared.container import Container
from shared.errors import ConfigError, PipelineError
from shared.health import HealthStatus, service_checks
from shared.lifecycle import resolve, stop_resources

__all__ = [
    "CHECKS",
    "CHECK_TIMEOUT_SECONDS",
    "CLEANUP_SECONDS",
    "accepted_tokens",
    "check_connection_budget",
    "check_services",
    "container_check",
    "load_container",
    "run_doctor",
    "service_check_functions",
]

CHECK_TIMEOUT_SECONDS = 5.0
# How long a check that did not answer in time may take to let go of its connection once cancelled.
CLEANUP_SECONDS = 1.0

Check = Callable[[Settings], Awaitable[HealthStatus]]
_log = logging.getLogger("shared.doctor")


def _quick(settings: Settings, timeout: float) -> Settings:
    """Return settings for one connection, one attempt, and a connect timeout within the check's budget."""
    return settings.model_copy(
        update={
            "db_connect_attempts": 1,
            "db_pool_min_size": 1,
            "db_pool_max_size": 1,
            "db_connect_timeout_seconds": min(settings.db_connect_timeout_seconds, timeout),
        }
    )


def container_check(container: type[Any], provider: str) -> Check:
    """Return a check that opens ``provider`` alone, in a container of its own, and asks its ``health_check()``.

    The container is ``container`` itself (the pipeline's wiring, so the doctor checks what the pipeline would
    use) with one connection, one attempt and a connect timeout within the check's budget; only the resources
    ``provider`` needs open, and they close before the check returns.
    """

    async def check(settings: Settings) -> HealthStatus:
        opened = container()
        opened.settings.override(providers.Object(_quick(settings, CHECK_TIMEOUT_SECONDS)))
        try:
            service = await resolve(getattr(opened, provider))
            return await service.health_check()  # type: ignore[no-any-return]  # each service's own health_check
        finally:
            try:
                await stop_resources(opened, timeout=CLEANUP_SECONDS)
            except PipelineError:
                _log.debug("closing the %s check's resources failed", provider, exc_info=True)

    return check


def load_container(target: str) -> type[Any]:
    """Import ``module[:Class]`` (default class ``Container``), a module's container for ``doctor --container``.

    Raises:
        ConfigError: the module cannot be imported, or the name is not a container class.
    """
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        msg = f"cannot import the container module {module_name!r} ({exc}); check the name and PYTHONPATH"
        raise ConfigError(msg) from exc
    found = getattr(module, attribute or "Container", None)
    if not (isinstance(found, type) and issubclass(found, Container)):
        msg = f"{target} names no subclass of shared.container.Container; pass module:ContainerClass"
        raise ConfigError(msg)
    return found


def service_check_functions(container: type[Any] = Container) -> dict[str, Check]:
    """Return a check for each service ``container`` declares (:func:`shared.health.service_checks`), by name."""
    return {check.name: container_check(container, check.provider) for check in service_checks(container)}


_BUDGET = """
select current_setting('max_connections')::int as max_connections,
       current_setting('superuser_reserved_connections')::int as reserved,
       (select count(*) from pg_stat_activity where backend_type = 'client backend')::int as in_use
"""


def _supabase_session_pooler(settings: Settings) -> bool:
    """Return whether DATABASE_URL names Supabase's session pooler (port 5432 of *.pooler.supabase.com)."""
    parts = urlsplit(settings.database_dsn)
    return (parts.hostname or "").endswith(".pooler.supabase.com") and parts.port in {None, 5432}


async def check_connection_budget(settings: Settings, processes: int = 1) -> HealthStatus:
    """Compare ``processes`` x DB_POOL_MAX_SIZE with the connections the database (or its pooler) accepts."""
    from shared.database import init_database  # noqa: PLC0415

    started = time.perf_counter()
    wanted = processes * settings.db_pool_max_size
    claim = f"{processes} process(es) x DB_POOL_MAX_SIZE {settings.db_pool_max_size} = {wanted}"
    limit = settings.db_max_client_connections
    if limit is not None:
        source = f"DB_MAX_CLIENT_CONNECTIONS {limit}"
    elif _supabase_session_pooler(settings):
        return HealthStatus.since(
            "connections",
            started,
            f"{claim}, behind Supabase's session pooler, which refuses clients past its pool size: set "
            "DB_MAX_CLIENT_CONNECTIONS to that pool size (Database settings) so this can be checked",
        )
    else:
        async with contextlib.aclosing(init_database(_quick(settings, CHECK_TIMEOUT_SECONDS))) as opened:
            async for db in opened:
                row = await db.fetchrow(_BUDGET)
        assert row is not None  # noqa: S101 - the statement always returns one row
        limit = row["max_connections"] - row["reserved"]
        source = (
            f"max_connections {row['max_connections']} - {row['reserved']} reserved = {limit}; "
            f"{row['in_use']} in use now"
        )
    latency = (time.perf_counter() - started) * 1000
    if wanted > limit:
        return HealthStatus(
            "connections",
            "down",
            latency,
            f"{claim} is more than {source}: lower DB_POOL_MAX_SIZE or the processes, or raise the limit",
        )
    return HealthStatus("connections", "ok", latency, f"{claim} within {source}")


# The shared Container's services, read from the one list that the health route reads too.
CHECKS: dict[str, Check] = service_check_functions(Container)
check_postgres, check_redis, check_storage = CHECKS["postgres"], CHECKS["redis"], CHECKS["storage"]

# What the checks that are no container service import, loaded before their clock starts.
_IMPORTS: dict[str, tuple[str, ...]] = {"connections": ("shared.database",)}


def _prepare(name: str, settings: Settings, container: type[Any]) -> None:
    """Import what the check ``name`` will use (declared beside its service, or in :data:`_IMPORTS`)."""
    declared = {check.name: check for check in service_checks(container)}
    modules = declared[name].modules(settings) if name in declared else ()
    for module in (*modules, *_IMPORTS.get(name, ())):
        importlib.import_module(module)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Read the outcome of a check that was given up on, so that no "never retrieved" warning is printed."""
    if not task.cancelled():
        task.exception()


def accepted_tokens(settings: Settings) -> str:
    """Say which access tokens the verifier accepts: its issuer, and the algorithms (HS256 only with a secret)."""
    from shared.auth import ACCEPTED_ALGORITHMS, ASYMMETRIC_ALGORITHMS  # noqa: PLC0415 - PyJWT loads when used

    if not settings.supabase_url:
        return "no SUPABASE_URL: access tokens cannot be verified"
    issuer = settings.auth_issuer or f"{settings.supabase_url.rstrip('/')}/auth/v1"
    algorithms: tuple[str, ...]
    if settings.jwt_secret_key is not None and settings.auth_hs256_enabled:
        algorithms, hs256 = ACCEPTED_ALGORITHMS, "HS256 with JWT_SECRET_KEY"
    else:
        why = "AUTH_HS256_ENABLED=false" if not settings.auth_hs256_enabled else "no JWT_SECRET_KEY"
        algorithms, hs256 = ASYMMETRIC_ALGORITHMS, f"HS256 refused ({why})"
    return f"accepts {', '.join(algorithms)} tokens from {issuer}; {hs256}"


async def _run(name: str, check: Check, settings: Settings, timeout: float) -> HealthStatus:
    started = time.perf_counter()
    task = asyncio.ensure_future(check(settings))
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if task in done:
        try:
            return task.result()
        except PipelineError as error:
            return HealthStatus.since(name, started, error.message)
    detail = f"no answer within {timeout:g} s"
    task.cancel()
    await asyncio.wait({task}, timeout=CLEANUP_SECONDS)  # let it close its connection, within a bound
    task.add_done_callback(_retrieve)
    return HealthStatus.since(name, started, detail)


def _quiet_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Keep what a cancelled driver leaves behind off the console (logged at DEBUG); pass anything else on."""
    if "never retrieved" in str(context.get("message", "")):
        _log.debug("after a check: %s", context.get("message"), exc_info=context.get("exception"))
        return
    loop.default_exception_handler(context)


async def check_services(
    settings: Settings,
    checks: dict[str, Check] | None = None,
    *,
    timeout: float = CHECK_TIMEOUT_SECONDS,
    processes: int | None = None,
    container: type[Any] = Container,
) -> list[HealthStatus]:
    """Import what every check needs, then run the checks side by side, each within ``timeout``.

    Args:
        settings: the settings whose services are checked.
        checks: the checks by name (default: every service ``container`` declares, as the health route reads
            them: postgres, redis, storage for the shared Container).
        timeout: seconds each check may take before its service is reported down.
        processes: with the default checks, also check that this many processes' pools fit in the database's
            connections (``connections``); None skips it.
        container: the container class whose services are checked (a module's own, with its services).
    """
    chosen = dict(service_check_functions(container) if checks is None else checks)
    if checks is None and processes is not None:

        async def budget(values: Settings) -> HealthStatus:
            return await check_connection_budget(values, processes)

        chosen["connections"] = budget
    for name in chosen:
        _prepare(name, settings, container)
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(_quiet_handler)
    try:
        return list(await asyncio.gather(*(_run(name, check, settings, timeout) for name, check in chosen.items())))
    finally:
        loop.set_exception_handler(previous)


async def run_doctor(
    settings: Settings,
    *,
    out: TextIO,
    checks: dict[str, Check] | None = None,
    timeout: float = CHECK_TIMEOUT_SECONDS,
    processes: int | None = 1,
    container: type[Any] = Container,
) -> int:
    """Print the configuration summary and each service's health; return 0 when all are up, else 1.

    ``timeout`` is the seconds each check may take (5 by default; ``python -m shared doctor --timeout``);
    ``processes`` the processes that each open a pool of DB_POOL_MAX_SIZE (``--processes``); ``container`` the
    container class whose declared services are checked (the shared Container by default).
    """
    print(f"settings: ok (environment {settings.environment}, storage {settings.storage_backend})", file=out)
    print(f"auth:     {accepted_tokens(settings)}", file=out)
    results = await check_services(settings, checks, timeout=timeout, processes=processes, container=container)
    for result in results:
        line = f"{result.name:<10} {result.status:<5} {result.latency_ms:8.1f} ms"
        print(line + (f"  {result.detail}" if result.detail else ""), file=out)
    down = [result.name for result in results if not result.ok]
    print("all services are up" if not down else f"down: {', '.join(down)}", file=out)
    return 1 if down else 0
