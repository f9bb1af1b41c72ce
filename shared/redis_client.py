"""RedisClient: a cache that never fails a pipeline job.

Over a ``redis.asyncio`` connection pool owned by a container Resource (:func:`init_redis`). Every key is
stored as ``{prefix}{key}`` (``videogen:cache:`` by default) and validated first. JSON values round-trip
losslessly: pydantic models, Decimal, UUID and timezone-aware datetimes (pass ``model=`` to ``get_json`` to
get typed values back).

Outages: each call returns within ``operation_timeout`` (1 s by default), the wait for a connection, socket
timeouts and the one retry included, whether Redis is gone, frozen or slow, and however many callers wait: the
round trip runs in a task of its own that the caller stops waiting for at the bound (redis-py's own clean-up
after a cancellation, under load, held callers for 3 s). Reads then miss and writes are skipped; one warning is
logged per outage, not one per call; for ``RECOVERY_PROBE_SECONDS`` after a failure, calls miss at once without
touching the network, then the next call probes again, so the client recovers by itself within about a second
after Redis is back. ``strict=True`` raises :class:`~shared.errors.CacheError` (a RetryableError) instead,
for callers that must know. A connection being opened when its caller gives up keeps opening in the background and
joins the pool, so that a distant Redis, whose handshake alone takes most of the bound, is reached on the next
call instead of never.

A command that Redis answers with an error (``-OOM`` when it is full under ``noeviction``, ``-NOPERM`` for an
ACL user without the right, ``-READONLY`` on a replica) is that command's failure, not an outage: Redis is up,
so the call returns its fallback (``False`` for a write) or, when strict, raises ``CacheError``, and every
other call goes on as usual; a warning is logged once a minute per kind of refusal.

A caller's mistake is not an outage: a key, value or TTL the cache cannot take (a dict given to ``set``, a
value over ``max_value_bytes``, 4 MiB by default) raises :class:`~shared.errors.ValidationError` for that
caller, before anything is sent, and the cache stays up.
A stored value that is not valid JSON (or not a valid ``model``) reads as a miss, is deleted and logged.

``REDIS_CLUSTER=true``: ``REDIS_URL`` names a node of a Redis Cluster and redis-py's cluster client is used;
every operation works across slots (``get_many`` is split by slot), and the outage behaviour is the same.

redis-py's defaults are chosen away on purpose: ``Redis.from_url`` retries nothing, and its 5 s socket
timeout, times its retries, would hang a caller for about a minute on a frozen server.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, overload, runtime_checkable
from urllib.parse import urlsplit

import orjson
import pydantic
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AskError,
    ClusterError,
    DataError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from shared._container_only import container_only
from shared.config import Settings
from shared.errors import CacheError, ValidationError
from shared.health import HealthStatus
from shared.telemetry import instruments

__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "Cache",
    "RedisClient",
    "Ttl",
    "decode_json",
    "encode_json",
    "init_redis",
    "ttl_milliseconds",
    "validate_key",
    "validate_value",
]

T = TypeVar("T")
Ttl = int | timedelta | None

_log = logging.getLogger("shared.redis_client")
MAX_KEY_LENGTH = 512
DEFAULT_MAX_VALUE_BYTES = 4 * 1024 * 1024
RECOVERY_PROBE_SECONDS = 0.5
REFUSAL_LOG_SECONDS = 60.0
_BAD_KEY = re.compile(r"[\s\x00-\x1f\x7f]")
_MISS: Any = object()
# What a failing Redis raises: redis-py's errors (RedisClusterException is not one of them), sockets, timeouts.
_FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError)
# Error replies that mean a cluster is missing a node or moving slots: an outage, unlike OOM or NOPERM.
_CLUSTER_TROUBLE = (ClusterError, TryAgainError, AskError)


_HIT = {"result": "hit"}
_MISS = {"result": "miss"}


def validate_key(key: str) -> str:
    """Return ``key`` if it is usable: not empty, no whitespace or control characters, at most 512 characters."""
    if not isinstance(key, str) or not key:
        raise ValidationError("a cache key must be a non-empty string", field="key")
    if len(key) > MAX_KEY_LENGTH:
        raise ValidationError(f"cache key is {len(key)} characters; at most {MAX_KEY_LENGTH} are allowed", field="key")
    if _BAD_KEY.search(key):
        raise ValidationError(f"cache key {key[:40]!r} holds whitespace or control characters", field="key")
    return key


def validate_value(value: bytes | str, max_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> bytes | str:
    """Return ``value`` if the cache can take it: bytes or str, at most ``max_bytes`` bytes.

    Raises:
        ValidationError: another type (use ``set_json``), or a value too large for a cache (it would hold a
            connection for seconds, and Redis would keep it even after the call gave up on it).
    """
    if isinstance(value, bytes):
        size = len(value)
    elif isinstance(value, str):
        size = len(value) if value.isascii() else len(value.encode())
    elif isinstance(value, bytearray | memoryview):
        size = memoryview(value).nbytes
    else:
        msg = f"a cache value must be bytes or str, not {type(value).__name__}; use set_json for other values"
        raise ValidationError(msg, field="value")
    if size > max_bytes:
        msg = (
            f"cache value is {size:,} bytes; at most {max_bytes:,} are allowed (REDIS_MAX_VALUE_BYTES): keep "
            "large data in storage and cache its path"
        )
        raise ValidationError(msg, field="value")
    return value


def ttl_milliseconds(ttl: Ttl) -> int | None:
    """Return ``ttl`` (seconds as an int, or a timedelta) in milliseconds; None stays None (no expiry).

    Raises:
        ValidationError: ``ttl`` is neither, or not positive.
    """
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        milliseconds = int(ttl.total_seconds() * 1000)
    elif isinstance(ttl, int) and not isinstance(ttl, bool):
        milliseconds = ttl * 1000
    else:
        raise ValidationError(f"ttl must be seconds (int) or a timedelta, got {ttl!r}", field="ttl")
    if milliseconds <= 0:
        raise ValidationError(f"ttl must be positive, got {ttl!r}", field="ttl")
    return milliseconds


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # lossless, unlike a float
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError


def encode_json(value: Any) -> bytes:
    """Return ``value`` as JSON bytes: pydantic models, dataclasses, Decimal (as a string, lossless) and sets too.

    Raises:
        ValidationError: ``value`` holds something JSON cannot say.
    """
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump_json().encode()
    try:
        return orjson.dumps(value, default=_default, option=orjson.OPT_PASSTHROUGH_DATACLASS)
    except TypeError as exc:
        raise ValidationError(f"cannot store a {type(value).__name__} as JSON: {exc}", field="value") from exc


@functools.cache
def _adapter(model: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(model)


@runtime_checkable
class Cache(Protocol):
    """What pipeline modules do with the cache; RedisClient and shared.testing.FakeCache implement it."""

    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes | str, ttl: Ttl = None) -> bool: ...
    async def delete(self, *keys: str) -> int: ...
    async def exists(self, key: str) -> bool: ...
    @overload
    async def get_json(self, key: str, model: None = None) -> Any: ...
    @overload
    async def get_json(self, key: str, model: type[T]) -> T | None: ...
    async def get_json(self, key: str, model: type[T] | None = None) -> T | Any | None: ...
    async def set_json(self, key: str, value: Any, ttl: Ttl = None) -> bool: ...
    async def get_many(self, keys: Iterable[str]) -> dict[str, bytes | None]: ...
    async def set_many(self, mapping: Mapping[str, bytes | str], ttl: Ttl = None) -> bool: ...
    async def health_check(self) -> HealthStatus: ...


@dataclass(slots=True)
class _Attempt:
    """How far one call got: whether it waited for a slot, and whether it got one."""

    waiting: bool = False
    acquired: bool = False


def _forget_outcome(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned round trip's outcome, so that asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _refusal(exc: ResponseError) -> str:
    """Return the error code Redis answered with (OOM, NOPERM, READONLY...), never the command's arguments."""
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, str) and code.isalpha() else type(exc).__name__


def decode_json(raw: bytes, model: Any) -> Any:
    """Parse ``raw`` (validated against ``model`` when given); raise ValueError when it does not parse."""
    if model is None:
        return orjson.loads(raw)
    return _adapter(model).validate_json(raw)


class RedisClient:
    """The cache over redis.asyncio (``Container.redis``); never fails a job unless ``strict``."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        *,
        prefix: str = "videogen:cache:",
        strict: bool = False,
        operation_timeout: float = 1.0,
        where: str = "redis",
        max_connections: int = 50,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        self._redis = client
        # redis-py's cluster client, first used by many tasks at once, can hand one of them a connection that
        # another is resetting (AttributeError: 'NoneType' object has no attribute 'writelines'): learn the
        # slots once, before the first command (tests/integration/test_redis_cluster.py reproduces it).
        self._cluster = isinstance(client, RedisCluster)
        self._uninitialised = self._cluster
        self._init_lock = asyncio.Lock()
        self._max_value = max_value_bytes
        # At most one call per pooled connection; the others wait here, first come first served. redis-py's
        # BlockingConnectionPool wakes its waiters unfairly: under a burst some waited past the bound and a
        # busy cache read as an outage (benchmarks/bench_redis.py found it).
        self._slots = asyncio.Semaphore(max_connections)
        self._prefix = prefix
        self._strict = strict
        self._timeout = operation_timeout
        self._where = where
        self._down_since: float | None = None
        self._probe_at = 0.0
        self._last_error = ""
        self._refusals: dict[str, float] = {}
        self._abandoned: set[asyncio.Future[Any]] = set()

    @property
    def raw(self) -> aioredis.Redis | RedisCluster:
        """Return the underlying redis-py client, for what this cache does not wrap (no prefix, no degrading)."""
        return self._redis

    @property
    def available(self) -> bool:
        """Return whether the last call reached Redis."""
        return self._down_since is None

    def _key(self, key: str) -> str:
        return self._prefix + validate_key(key)

    async def _call(self, operation: Callable[[], Awaitable[Any]], *, fallback: T) -> T:
        """Run one Redis round trip within the time bound; on trouble, degrade (or raise when strict)."""
        if self._down_since is not None and (now := time.monotonic()) < self._probe_at:
            if self._strict:
                raise CacheError(
                    f"Redis at {self._where} is unavailable ({self._last_error}); retry shortly",
                    retry_after=self._probe_at - now,
                )
            return fallback
        attempt = _Attempt()
        # The round trip runs in a task of its own, and the caller waits for it at most the bound: redis-py can
        # take a cancellation mid-read for its own socket timeout and retry, and then the caller would wait on.
        task = asyncio.ensure_future(self._attempt(operation, attempt))
        try:
            done, _ = await asyncio.wait((task,), timeout=self._timeout)
        except asyncio.CancelledError:
            self._abandon(task)
            raise
        if not done:
            self._abandon(task)
            error: BaseException | None = TimeoutError(f"no answer within {self._timeout:g} s")
        else:
            error = task.exception()
        if error is None:
            self._mark_up()
            return cast("T", task.result())
        return self._failed(error, attempt, fallback)

    def _failed(self, error: BaseException, attempt: _Attempt, fallback: T) -> T:
        """Sort a failed call: the caller's mistake, a refusal by a Redis that is up, busy, or an outage."""
        if isinstance(error, DataError):
            # redis-py refused the arguments before sending them: the caller's mistake, not an outage.
            msg = f"Redis cannot take these arguments ({error}); pass bytes or str values"
            raise ValidationError(msg, field="value") from error
        if isinstance(error, ResponseError) and not isinstance(error, _CLUSTER_TROUBLE):
            # Redis answered, with an error for this command (full, no permission, read-only): not an outage.
            self._refused(error)
            if self._strict:
                msg = f"Redis at {self._where} refused the command ({_refusal(error)}); see its maxmemory and ACL"
                raise CacheError(msg, retry_after=RECOVERY_PROBE_SECONDS) from error
            return fallback
        if not isinstance(error, _FAILURES) and not (self._cluster and isinstance(error, AttributeError)):
            raise error
        # On a cluster, the AttributeError is redis-py's race above, met again after a node failure made it learn
        # the slots anew: an outage for this call, not the caller's bug.
        if attempt.waiting and not attempt.acquired:
            # Busy, not down: every connection was in use for the whole bound.
            if self._strict:
                raise CacheError(f"Redis at {self._where} is busy; retry shortly", retry_after=0.1) from None
            return fallback
        self._mark_down(error)
        if self._strict:
            msg = f"Redis at {self._where} failed ({type(error).__name__}); retry, or run `python -m shared doctor`"
            raise CacheError(msg, retry_after=RECOVERY_PROBE_SECONDS) from error
        return fallback

    async def _attempt(self, operation: Callable[[], Awaitable[Any]], attempt: _Attempt) -> Any:
        """Wait for a slot (one call per pooled connection) and run ``operation``; the slot is always returned."""
        if self._uninitialised:
            await self._initialise()
        attempt.waiting = True
        await self._slots.acquire()
        attempt.acquired = True
        try:
            return await operation()
        finally:
            self._slots.release()

    def _abandon(self, task: asyncio.Future[Any]) -> None:
        """Cancel a round trip its caller no longer waits for; keep it until its clean-up is over."""
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(_forget_outcome)
        task.add_done_callback(self._abandoned.discard)

    def _refused(self, exc: ResponseError) -> None:
        kind = _refusal(exc)
        now = time.monotonic()
        if now - self._refusals.get(kind, -REFUSAL_LOG_SECONDS) >= REFUSAL_LOG_SECONDS:
            self._refusals[kind] = now
            _log.warning(
                "Redis at %s refused a command (%s); that call misses or is skipped, the cache stays up",
                self._where,
                kind,
                extra={"redis": self._where, "error_type": type(exc).__name__, "refusal": kind},
            )

    async def _initialise(self) -> None:
        """Learn the cluster's nodes and slots once, before the first command (see ``__init__``)."""
        async with self._init_lock:
            if self._uninitialised:
                assert isinstance(self._redis, RedisCluster)  # noqa: S101 - only a cluster starts uninitialised
                await self._redis.initialize()
                self._uninitialised = False

    def _mark_down(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._probe_at = now + RECOVERY_PROBE_SECONDS
        self._last_error = type(exc).__name__
        if self._down_since is None:
            self._down_since = now
            _log.warning(
                "Redis at %s is unavailable (%s); cache reads miss and writes are skipped until it is back",
                self._where,
                type(exc).__name__,
                extra={"redis": self._where, "error_type": type(exc).__name__},
            )

    def _mark_up(self) -> None:
        if self._down_since is not None:
            _log.warning("Redis at %s is back after %.1f s", self._where, time.monotonic() - self._down_since)
            self._down_since = None

    async def get(self, key: str) -> bytes | None:
        """Return the value, or None on a miss (or an outage)."""
        name = self._key(key)
        result: bytes | None = await self._call(lambda: self._redis.get(name), fallback=None)
        if (metrics := instruments()) is not None:
            metrics.cache_requests.add(1, _MISS if result is None else _HIT)
        return result

    async def set(self, key: str, value: bytes | str, ttl: Ttl = None) -> bool:
        """Store ``value`` (for ``ttl`` seconds or a timedelta); return whether it was stored."""
        name, px = self._key(key), ttl_milliseconds(ttl)
        validate_value(value, self._max_value)
        return bool(await self._call(lambda: self._redis.set(name, value, px=px), fallback=False))

    async def delete(self, *keys: str) -> int:
        """Delete ``keys``; return how many existed."""
        if not keys:
            return 0
        names = [self._key(key) for key in keys]
        return int(await self._call(lambda: self._redis.delete(*names), fallback=0))

    async def exists(self, key: str) -> bool:
        """Return whether ``key`` holds a value."""
        name = self._key(key)
        return bool(await self._call(lambda: self._redis.exists(name), fallback=0))

    @overload
    async def get_json(self, key: str, model: None = None) -> Any: ...
    @overload
    async def get_json(self, key: str, model: type[T]) -> T | None: ...
    async def get_json(self, key: str, model: type[T] | None = None) -> T | Any | None:
        """Return the JSON value (validated as ``model`` when given), or None on a miss."""
        raw = await self.get(key)
        if raw is None:
            return None
        return await self._decode(key, raw, model)

    async def _decode(self, key: str, raw: bytes, model: Any) -> Any:
        try:
            return decode_json(raw, model)
        except (orjson.JSONDecodeError, pydantic.ValidationError) as exc:
            _log.warning(
                "cache value at %s is not valid %s; deleted and read as a miss",
                key,
                getattr(model, "__name__", "JSON"),
                extra={"key": key, "error_type": type(exc).__name__},
            )
            await self.delete(key)
            return None

    async def set_json(self, key: str, value: Any, ttl: Ttl = None) -> bool:
        """Store ``value`` as JSON (pydantic models, Decimal, UUID and datetimes kept exactly)."""
        return await self.set(key, encode_json(value), ttl)

    async def get_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """Return every key's value (None for a miss) in one round trip."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        names = [self._key(key) for key in wanted]
        # A cluster's MGET refuses keys of different slots (CROSSSLOT): redis-py splits them by slot for us.
        fetch = self._redis.mget_nonatomic if isinstance(self._redis, RedisCluster) else self._redis.mget
        values: list[bytes | None] = await self._call(lambda: fetch(names), fallback=[None] * len(names))
        if (metrics := instruments()) is not None:
            misses = values.count(None)
            metrics.cache_requests.add(misses, _MISS)
            metrics.cache_requests.add(len(values) - misses, _HIT)
        return dict(zip(wanted, values, strict=True))

    async def set_many(self, mapping: Mapping[str, bytes | str], ttl: Ttl = None) -> bool:
        """Store every value (each with ``ttl``) in one round trip; return whether they were stored."""
        if not mapping:
            return True
        items = [(self._key(key), validate_value(value, self._max_value)) for key, value in mapping.items()]
        px = ttl_milliseconds(ttl)

        async def write() -> bool:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name, value in items:
                    pipe.set(name, value, px=px)
                return all(await pipe.execute())

        return await self._call(write, fallback=False)

    async def health_check(self) -> HealthStatus:
        """PING Redis within the time bound; report ok or down with the latency. Never raises."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.ping()
        except _FAILURES as exc:
            self._mark_down(exc)
            detail = f"{self._where}: {type(exc).__name__}; is redis-server running? (make services)"
            return HealthStatus.since("redis", started, detail)
        self._mark_up()
        return HealthStatus.since("redis", started)

    async def aclose(self) -> None:
        """Close the client and its pool (safe to call twice; a server that is gone cannot stop it)."""
        for task in list(self._abandoned):
            task.cancel()
        await asyncio.gather(*self._abandoned, return_exceptions=True)
        try:
            await self._redis.aclose()
            if isinstance(self._redis, aioredis.Redis):
                await self._redis.connection_pool.disconnect()
            else:
                # After a node failure redis-py marks the cluster client uninitialised until its next command,
                # and its aclose() then closes nothing: close every node's connections ourselves (idempotent).
                await self._redis.nodes_manager.aclose()
                await self._redis.nodes_manager.aclose("startup_nodes")
        except _FAILURES as exc:
            _log.debug("closing the Redis pool at %s: %s", self._where, type(exc).__name__)


class _PatientConnection(aioredis.Connection):
    """A connection whose opening (TCP, TLS, handshake) goes on when the caller that started it gives up.

    Against a distant Redis the handshake's round trips alone can outlast the bound; redis-py would then close
    the half-open connection, and the next caller would start again, never getting one. Here the opening runs
    in a task of its own: the caller that gave up leaves it running, the pool keeps the connection, and the
    next caller that takes it waits for the same opening instead of a new one.
    """

    openings: set[asyncio.Future[None]] | None = None

    async def connect(self) -> None:
        opening = getattr(self, "_opening", None)
        if opening is not None and not opening.done():
            # Connected at the TCP level perhaps, but the handshake's replies are still being read.
            await asyncio.shield(opening)
            return
        if self.is_connected:
            return
        if opening is None or opening.done():
            opening = asyncio.ensure_future(super().connect())  # type: ignore[no-untyped-call] # redis-py is untyped here
            opening.add_done_callback(_forget_outcome)
            self._opening: asyncio.Future[None] = opening
            if self.openings is not None:
                self.openings.add(opening)
                opening.add_done_callback(self.openings.discard)
        await asyncio.shield(opening)


class _PatientSSLConnection(_PatientConnection, aioredis.SSLConnection):
    """The patient connection over TLS (rediss://)."""


_PATIENT: dict[type[Any], type[aioredis.Connection]] = {
    aioredis.Connection: _PatientConnection,
    aioredis.SSLConnection: _PatientSSLConnection,
}


class _PatientPool(aioredis.ConnectionPool):
    """A pool of patient connections that stops their openings when it disconnects (no socket outlives it)."""

    def __init__(self, connection_class: type[Any] = aioredis.Connection, **kwargs: Any) -> None:
        super().__init__(connection_class=_PATIENT.get(connection_class, connection_class), **kwargs)
        self.openings: set[asyncio.Future[None]] = set()

    def make_connection(self) -> Any:
        connection = super().make_connection()  # type: ignore[no-untyped-call] # redis-py is untyped here
        if isinstance(connection, _PatientConnection):
            connection.openings = self.openings
        return connection

    async def disconnect(self, inuse_connections: bool = True) -> None:
        for opening in list(self.openings):
            opening.cancel()
        await asyncio.gather(*self.openings, return_exceptions=True)
        await super().disconnect(inuse_connections)


def build_client(settings: Settings) -> RedisClient:
    """Build a RedisClient whose every call, timeouts and its one retry included, ends within the bound."""
    bound = settings.redis_operation_timeout_seconds
    # One retry after a short backoff; socket timeouts sized so two attempts fit in the bound.
    retry = Retry(ExponentialBackoff(cap=bound / 10, base=bound / 20), retries=1)
    parts = urlsplit(settings.redis_dsn)
    where = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"  # never the password
    client: aioredis.Redis | RedisCluster
    if settings.redis_cluster:
        # REDIS_URL names one node; the client learns the others and the slots from it (CLUSTER SLOTS).
        client = RedisCluster.from_url(
            settings.redis_dsn,
            max_connections=settings.redis_max_connections + 1,  # per node
            socket_connect_timeout=bound * 0.4,
            socket_timeout=bound * 0.4,
            retry=retry,
            require_full_coverage=False,  # a lost master costs its slots only, not the whole cache
        )
        where = f"cluster {where}"
    else:
        # One connection more than the client's slots (RedisClient queues callers fairly), for the health check.
        pool = _PatientPool.from_url(
            settings.redis_dsn,
            max_connections=settings.redis_max_connections + 1,
            socket_connect_timeout=bound * 0.4,
            socket_timeout=bound * 0.4,
            retry=retry,
            retry_on_timeout=True,
            health_check_interval=30,
        )
        client = aioredis.Redis(connection_pool=pool, retry=retry)
    return RedisClient(
        client,
        prefix=settings.redis_key_prefix,
        strict=settings.redis_strict,
        operation_timeout=bound,
        where=where,
        max_connections=settings.redis_max_connections,
        max_value_bytes=settings.redis_max_value_bytes,
    )


async def init_redis(settings: Settings) -> AsyncGenerator[RedisClient, None]:
    """Create the pool in the running loop (connections open on first use); close it on shutdown."""
    client = build_client(settings)
    try:
        yield client
    finally:
        await client.aclose()


# `from shared.redis_client import redis` (an older task list's name) names its provider.
if not TYPE_CHECKING:  # to mypy a module __getattr__ would make every misspelt name importable
    __getattr__ = container_only("shared.redis_client", {"redis": "redis"})
