"""``python -m shared doctor``: load the settings (every problem at once) and check each service, with latency.

Each service is opened on its own, with one attempt and a short timeout, so one that is down is reported
as down (with what to do) instead of hanging the command or hiding the others. Exit status 1 when any is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TextIO

from shared.config import Settings
from shared.errors import PipelineError
from shared.health import HealthStatus

__all__ = ["CHECKS", "CHECK_TIMEOUT_SECONDS", "accepted_tokens", "check_services", "run_doctor"]

CHECK_TIMEOUT_SECONDS = 5.0

Check = Callable[[Settings], Awaitable[HealthStatus]]


async def check_postgres(settings: Settings) -> HealthStatus:
    """Open a one-connection pool to DATABASE_URL and run ``select 1``."""
    from shared.database import init_database  # noqa: PLC0415 - each check loads only its driver

    quick = settings.model_copy(update={"db_connect_attempts": 1, "db_pool_min_size": 1, "db_pool_max_size": 1})
    async with contextlib.aclosing(init_database(quick)) as opened:
        async for db in opened:
            return await db.health_check()
    raise AssertionError  # pragma: no cover - init_database always yields once


async def check_redis(settings: Settings) -> HealthStatus:
    """PING REDIS_URL within the cache's time bound."""
    from shared.redis_client import init_redis  # noqa: PLC0415

    async with contextlib.aclosing(init_redis(settings)) as opened:
        async for cache in opened:
            return await cache.health_check()
    raise AssertionError  # pragma: no cover - init_redis always yields once


async def check_storage(settings: Settings) -> HealthStatus:
    """Ask the configured storage backend (Supabase Storage or the local folder) whether it answers."""
    # The container's own builders, so the doctor checks what the pipeline would use.
    from shared.container import init_http_client, local_storage, supabase_client, supabase_storage  # noqa: PLC0415

    if settings.storage_backend == "local":
        return await local_storage(settings).health_check()
    async with contextlib.aclosing(init_http_client(settings)) as opened:
        async for http in opened:
            return await supabase_storage(settings, http, supabase_client(settings, http)).health_check()
    raise AssertionError  # pragma: no cover - init_http_client always yields once


CHECKS: dict[str, Check] = {"postgres": check_postgres, "redis": check_redis, "storage": check_storage}


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
    try:
        return await asyncio.wait_for(check(settings), timeout)
    except TimeoutError:
        detail = f"no answer within {timeout:g} s"
    except PipelineError as error:
        detail = error.message
    return HealthStatus.since(name, started, detail)


async def check_services(
    settings: Settings, checks: dict[str, Check] | None = None, *, timeout: float = CHECK_TIMEOUT_SECONDS
) -> list[HealthStatus]:
    """Run the checks one after another (so one's imports never count in another's latency).

    Args:
        settings: the settings whose services are checked.
        checks: the checks by name (default :data:`CHECKS`: postgres, redis, storage).
        timeout: seconds each check may take before its service is reported down.
    """
    chosen = CHECKS if checks is None else checks
    return [await _run(name, check, settings, timeout) for name, check in chosen.items()]


async def run_doctor(
    settings: Settings,
    *,
    out: TextIO,
    checks: dict[str, Check] | None = None,
    timeout: float = CHECK_TIMEOUT_SECONDS,
) -> int:
    """Print the configuration summary and each service's health; return 0 when all are up, else 1.

    ``timeout`` is the seconds each check may take (5 by default; ``python -m shared doctor --timeout``).
    """
    print(f"settings: ok (environment {settings.environment}, storage {settings.storage_backend})", file=out)
    print(f"auth:     {accepted_tokens(settings)}", file=out)
    results = await check_services(settings, checks, timeout=timeout)
    for result in results:
        line = f"{result.name:<10} {result.status:<5} {result.latency_ms:8.1f} ms"
        print(line + (f"  {result.detail}" if result.detail else ""), file=out)
    down = [result.name for result in results if not result.ok]
    print("all services are up" if not down else f"down: {', '.join(down)}", file=out)
    return 1 if down else 0
