"""The shared Container: every collaborator a pipeline module uses, as a provider; nothing is a module-level singleton.

A module's own container subclasses it (``class StageContainer(Container)``) and adds its providers; the
repository's top-level ``containers`` module is this project's composition root, built on it. Start and stop
the resources with ``async with shared.lifecycle.lifespan(container):``. Importing this module stays
light: component modules (asyncpg, redis, httpx, supabase) load inside the resource functions, when first
resolved.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator, Iterator
from typing import TYPE_CHECKING

from dependency_injector import containers, providers

from shared.config import Settings
from shared.errors import ConfigError
from shared.health import health_checked
from shared.logging import LoggerFactory
from shared.storage import LocalStorage, SupabaseStorage, create_supabase_client
from shared.telemetry import init_telemetry

if TYPE_CHECKING:
    import httpx
    from supabase import AsyncClient as SupabaseClient

    from shared.auth import TokenVerifier
    from shared.cost_tracking import CostTracker
    from shared.database import DatabaseClient
    from shared.jobs import JobRepository
    from shared.paid import PaidCalls, PriceCatalogue, RateLimiter
    from shared.redis_client import RedisClient
    from shared.stages import StageQueue

__all__ = ["Container"]


def init_logger_factory(settings: Settings) -> Iterator[LoggerFactory]:
    """Start the JSON log handlers for this process; stop them, flushing the queue, on shutdown."""
    factory = LoggerFactory(
        level=settings.log_level,
        secrets=settings.secret_values(),
        log_file=settings.log_file,
        max_bytes=settings.log_max_bytes,
        backup_count=settings.log_backup_count,
        stream=sys.stderr if settings.log_console else None,
    )
    factory.start()
    try:
        yield factory
    finally:
        factory.stop()


async def init_database(settings: Settings) -> AsyncGenerator[DatabaseClient, None]:
    """Open the asyncpg pool (three attempts with backoff) for this loop; close it on shutdown."""
    from shared.database import init_database as open_database  # noqa: PLC0415 - asyncpg loads when first used

    async for client in open_database(settings):
        yield client


async def init_redis(settings: Settings) -> AsyncGenerator[RedisClient, None]:
    """Create the Redis pool for this loop (connections open on first use); close it on shutdown."""
    from shared.redis_client import init_redis as open_redis  # noqa: PLC0415 - redis loads when first used

    async for client in open_redis(settings):
        yield client


def make_job_repository(db: DatabaseClient) -> JobRepository:
    """Build the JobRepository over the database client."""
    from shared.jobs import JobRepository  # noqa: PLC0415 - asyncpg loads when first used

    return JobRepository(db)


def make_stage_queue(db: DatabaseClient) -> StageQueue:
    """Build the StageQueue (submit stage items, cancel a job's stages) over the database client."""
    from shared.stages import StageQueue  # noqa: PLC0415 - pgqueuer's tables, reached when first used

    return StageQueue(db)


def make_cost_tracker(db: DatabaseClient, settings: Settings) -> CostTracker:
    """Build the CostTracker with the default budget and reservation TTL from the settings."""
    from shared.cost_tracking import CostTracker  # noqa: PLC0415 - asyncpg loads when first used

    return CostTracker(db, default_budget=settings.default_job_budget, reservation_ttl=settings.reservation_ttl)


def make_rate_limiter(redis: RedisClient, settings: Settings) -> RateLimiter:
    """Build the shared rate and concurrency limiter for paid calls on the container's Redis."""
    from shared.paid.limiter import RateLimiter  # noqa: PLC0415 - redis loads when first used

    return RateLimiter(
        redis,
        prefix=settings.paid_key_prefix,
        lease_seconds=settings.paid_concurrency_lease_seconds,
        operation_timeout=settings.redis_operation_timeout_seconds,
        margin_seconds=settings.paid_rate_margin_seconds,
    )


def make_price_catalogue(settings: Settings) -> PriceCatalogue:
    """Build the price catalogue: genai-prices and the Replicate table (PAID_REPLICATE_PRICES_FILE if set)."""
    from shared.paid.pricing import PriceCatalogue, ReplicatePrices  # noqa: PLC0415 - loaded when first used

    path = settings.paid_replicate_prices_file
    return PriceCatalogue(ReplicatePrices.load(path) if path is not None else None)


def make_paid_calls(
    limiter: RateLimiter, cost_tracker: CostTracker, db: DatabaseClient, catalogue: PriceCatalogue, settings: Settings
) -> PaidCalls:
    """Build the admission of paid calls: budget (cost_tracker), rate and concurrency (limiter), prices."""
    from shared.paid.admission import PaidCalls  # noqa: PLC0415 - loaded when first used

    return PaidCalls(limiter=limiter, ledger=cost_tracker, db=db, catalogue=catalogue, settings=settings)


async def init_http_client(settings: Settings) -> AsyncGenerator[httpx.AsyncClient, None]:
    """Open the httpx client that Supabase (which cannot close its own) and storage share; close it on shutdown."""
    import httpx  # noqa: PLC0415 - imported when the container starts, never at import

    timeout = httpx.Timeout(settings.storage_timeout_seconds, connect=min(10.0, settings.storage_timeout_seconds))
    client = httpx.AsyncClient(http2=True, timeout=timeout, follow_redirects=True)
    try:
        yield client
    finally:
        await client.aclose()


def _service_key(settings: Settings) -> str:
    key = settings.supabase_service_key
    return key.get_secret_value() if key is not None else ""


def supabase_client(settings: Settings, http_client: httpx.AsyncClient) -> SupabaseClient:
    """Build supabase-py's async client on the container's httpx client (supabase is imported here, lazily).

    Raises:
        ConfigError: SUPABASE_URL or SUPABASE_SERVICE_KEY is not set.
    """
    missing = [
        f"{name} is not set; the Supabase client (and Supabase storage) needs it"
        for name, value in (("SUPABASE_URL", settings.supabase_url), ("SUPABASE_SERVICE_KEY", _service_key(settings)))
        if not value
    ]
    if missing:
        raise ConfigError(problems=tuple(missing))
    return create_supabase_client(settings.supabase_url or "", _service_key(settings), http_client)


def supabase_storage(settings: Settings, http_client: httpx.AsyncClient, client: SupabaseClient) -> SupabaseStorage:
    """Build the Supabase Storage backend from the settings."""
    return SupabaseStorage(
        settings.supabase_url or "",
        _service_key(settings),
        http_client,
        client=client,
        max_upload_bytes=settings.storage_max_upload_bytes,
        chunk_size=None if settings.storage_tus_chunk_mb is None else settings.storage_tus_chunk_mb * 1024 * 1024,
        retry_window=settings.storage_retry_window_seconds,
    )


def local_storage(settings: Settings) -> LocalStorage:
    """Build the local-folder backend, creating its folder; signed URLs are keyed with JWT_SECRET_KEY if set."""
    key = settings.jwt_secret_key
    settings.storage_local_root.mkdir(parents=True, exist_ok=True)
    return LocalStorage(
        settings.storage_local_root,
        signing_key=key.get_secret_value() if key is not None else None,
        max_upload_bytes=settings.storage_max_upload_bytes,
    )


def make_token_verifier(settings: Settings, http_client: httpx.AsyncClient) -> TokenVerifier:
    """Build the access-token verifier: HS256 with JWT_SECRET_KEY (unless AUTH_HS256_ENABLED=false), the
    asymmetric algorithms from the project's JWKS.

    Raises:
        ConfigError: SUPABASE_URL is not set (the tokens' issuer and the JWKS live under it).
    """
    from shared.auth import TokenVerifier  # noqa: PLC0415 - PyJWT loads when first used

    if not settings.supabase_url:
        raise ConfigError(
            problems=("SUPABASE_URL: required to verify access tokens (their issuer is SUPABASE_URL/auth/v1)",)
        )
    secret = settings.jwt_secret_key
    return TokenVerifier(
        supabase_url=settings.supabase_url,
        jwt_secret=secret.get_secret_value() if secret is not None else None,
        http_client=http_client,
        leeway_seconds=settings.auth_leeway_seconds,
        jwks_cache_seconds=settings.auth_jwks_cache_seconds,
        jwks_refetch_seconds=settings.auth_jwks_refetch_seconds,
        jwks_timeout_seconds=settings.auth_jwks_timeout_seconds,
        issuer=settings.auth_issuer,
        hs256_enabled=settings.auth_hs256_enabled,
        max_token_lifetime_seconds=settings.auth_max_token_lifetime_seconds,
    )


def _storage_imports(settings: Settings) -> tuple[str, ...]:
    """Name what the storage check imports: httpx and supabase (0.4 s) for Supabase Storage, nothing more for local."""
    return ("httpx", "supabase") if settings.storage_backend == "supabase" else ()


class Container(containers.DeclarativeContainer):
    """Every collaborator of a pipeline module; override any of them with ``container.x.override(...)``."""

    settings = providers.Singleton(Settings)
    logger_factory = providers.Resource(init_logger_factory, settings=settings)

    # --- components: each area adds its resource function above and its providers below ---
    # health_checked: /health and `python -m shared doctor` check these (shared.health.service_checks).
    db = health_checked(
        providers.Resource(init_database, settings=settings), name="postgres", imports=("shared.database",)
    )
    redis = health_checked(
        providers.Resource(init_redis, settings=settings), name="redis", imports=("shared.redis_client",)
    )
    telemetry = providers.Resource(init_telemetry, settings=settings, db=db)
    jobs = providers.Factory(make_job_repository, db=db)
    stages = providers.Factory(make_stage_queue, db=db)
    cost_tracker = providers.Factory(make_cost_tracker, db=db, settings=settings)
    rate_limiter = providers.Singleton(make_rate_limiter, redis=redis, settings=settings)
    price_catalogue = providers.Singleton(make_price_catalogue, settings=settings)
    paid_calls = providers.Factory(
        make_paid_calls,
        limiter=rate_limiter,
        cost_tracker=cost_tracker,
        db=db,
        catalogue=price_catalogue,
        settings=settings,
    )

    http_client = providers.Resource(init_http_client, settings=settings)
    supabase = providers.Singleton(supabase_client, settings=settings, http_client=http_client)
    storage_supabase = providers.Singleton(
        supabase_storage, settings=settings, http_client=http_client, client=supabase
    )
    storage_local = providers.Singleton(local_storage, settings=settings)
    # After `async with lifespan(container)`, every provider returns the object itself: `container.storage()`.
    storage = health_checked(
        providers.Selector(settings.provided.storage_backend, supabase=storage_supabase, local=storage_local),
        name="storage",
        imports=_storage_imports,
    )

    token_verifier = providers.Singleton(make_token_verifier, settings=settings, http_client=http_client)
