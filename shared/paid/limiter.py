"""Rate and concurrency slots for paid calls, shared by every process on every machine through Redis.

One Lua script grants a slot in one round trip, all or nothing, on Redis's own clock (``TIME``), so the limits
hold across machines whose clocks disagree. Per provider, model and API key (the key appears only as a short
SHA-256 id, never itself), a sliding log of the last minute's grants (a sorted set of request ids scored by their
time, with each grant's tokens in a hash and a running total) answers three questions at once:

- requests per minute: the grants in the last 60 s (plus a margin, 0.1 s by default);
- requests per second: the grants in the last 1 s (plus the margin: a grant and the call's arrival at the
  provider are apart by a varying delay, and the margin keeps that jitter from bunching calls there);
- tokens per minute: the sum of the last 60 s's token weights, reconciled with the real usage once the answer
  arrives (:meth:`RateLimiter.release` with ``tokens=``).

Concurrency slots are leases in a sorted set scored by their expiry: a live call renews its lease every third of
``PAID_CONCURRENCY_LEASE_SECONDS``, a dead worker's lease runs out by itself. A 429 from the provider
(:meth:`RateLimiter.slow_down`) stops every process for its Retry-After and lowers the limits by a quarter for a
minute (to a quarter of them at most).

Why a script of our own and not ``limits``' moving window: see benchmarks/README.md ("Paid calls"). In short,
``limits`` checks one limit per round trip and cannot give back or reweigh a hit, so three limits cost three round
trips, a denial by the third leaves the first two spent, and a token estimate cannot be reconciled.

When Redis is down or frozen the limiter fails closed: :class:`~shared.paid.errors.RateLimiterUnavailableError`
within ``REDIS_OPERATION_TIMEOUT_SECONDS``, and no call is admitted. A Redis that comes back empty (restarted
without persistence) is noticed by its epoch key: the first process that knew the old one holds every call for
one full window (60 s), since nobody can know what the lost minute had spent.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.config import RateLimits
from shared.errors import ValidationError
from shared.paid.errors import RateLimiterUnavailableError, RateLimitWaitError

if TYPE_CHECKING:
    from shared.redis_client import RedisClient

__all__ = ["Grant", "RateLimiter", "RateScope", "key_id"]

_log = logging.getLogger("shared.paid.limiter")
WINDOW_MS = 60_000
# How long a concurrency wait polls before asking again: releases come at any moment, not at a known time.
_CONCURRENCY_POLL_MS = 50

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, tokens = ARGV[1], tonumber(ARGV[2])
local rpm, tpm, rps, conc = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local lease, epoch, fresh = tonumber(ARGV[7]), ARGV[8], ARGV[9]
local minute, second = 60000 + tonumber(ARGV[11]), 1000 + tonumber(ARGV[11])
local current = redis.call('GET', KEYS[6])
if not current then
  redis.call('SET', KEYS[6], fresh)
  current = fresh
  if epoch ~= '' then
    -- The store lost its state (a restart without persistence): hold every call for one full window.
    redis.call('SET', KEYS[4], '1', 'PX', minute)
  end
end
local seen = redis.call('ZSCORE', KEYS[1], id)
if seen then return {1, tonumber(seen), current} end
-- Given back by its process, which never heard the answer (the store was frozen): never grant it late.
if redis.call('EXISTS', KEYS[7]) == 1 then return {-2, 0, current} end
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - minute, 'LIMIT', 0, 4000)
if #old > 0 then
  local weights = redis.call('HMGET', KEYS[2], unpack(old))
  local freed = 0
  for _, w in ipairs(weights) do if w then freed = freed + tonumber(w) end end
  redis.call('HDEL', KEYS[2], unpack(old))
  redis.call('HINCRBY', KEYS[2], '_total', -freed)
  redis.call('ZREM', KEYS[1], unpack(old))
end
local cool = redis.call('PTTL', KEYS[4])
if cool > 0 then return {0, cool, current} end
local factor = tonumber(redis.call('GET', KEYS[5]) or '1000') / 1000
local function scaled(limit) return math.max(1, math.floor(limit * factor)) end
local wait = 0
if rpm > 0 then
  local limit = scaled(rpm)
  local n = redis.call('ZCARD', KEYS[1])
  if n >= limit then
    local e = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
    wait = math.max(wait, tonumber(e[2]) + minute - now + 1)
  end
end
if rps > 0 then
  local limit = scaled(rps)
  local k = redis.call('ZCOUNT', KEYS[1], '(' .. (now - second), '+inf')
  if k >= limit then
    local e = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - second), '+inf', 'WITHSCORES', 'LIMIT', k - limit, 1)
    wait = math.max(wait, tonumber(e[2]) + second - now + 1)
  end
end
if tpm > 0 then
  local limit = scaled(tpm)
  if tokens > limit then return {-1, limit, current} end
  local total = tonumber(redis.call('HGET', KEYS[2], '_total') or '0')
  if total + tokens > limit then
    local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
    local freed = 0
    for i = 1, #entries, 2 do
      freed = freed + tonumber(redis.call('HGET', KEYS[2], entries[i]) or '0')
      if total - freed + tokens <= limit then
        wait = math.max(wait, tonumber(entries[i + 1]) + minute - now + 1)
        break
      end
    end
  end
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc then wait = math.max(wait, tonumber(ARGV[10])) end
end
if wait > 0 then return {0, wait, current} end
redis.call('ZADD', KEYS[1], now, id)
redis.call('HSET', KEYS[2], id, tokens)
redis.call('HINCRBY', KEYS[2], '_total', tokens)
redis.call('PEXPIRE', KEYS[1], minute + 1000)
redis.call('PEXPIRE', KEYS[2], minute + 1000)
if conc > 0 then
  redis.call('ZADD', KEYS[3], now + lease, id)
  redis.call('PEXPIRE', KEYS[3], lease + 1000)
end
return {1, now, current}
"""

# Release a grant's concurrency lease and reweigh its tokens with the real usage (-1: keep the estimate);
# refund = 1 takes the grant back whole (nothing was sent).
_RELEASE = """
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[3] == '1' then redis.call('SET', KEYS[4], '1', 'PX', 180000) end
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  local tokens = tonumber(ARGV[2])
  if ARGV[3] == '1' then
    redis.call('ZREM', KEYS[1], ARGV[1])
    redis.call('HDEL', KEYS[2], ARGV[1])
    redis.call('HINCRBY', KEYS[2], '_total', -tonumber(old))
  elseif tokens >= 0 then
    redis.call('HSET', KEYS[2], ARGV[1], tokens)
    redis.call('HINCRBY', KEYS[2], '_total', tokens - tonumber(old))
  end
end
return 1
"""

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local renewed = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 1000)
return renewed
"""

# A 429: stop everyone for the Retry-After (never shortening a longer stop), and take a quarter off the limits
# for a minute (down to a quarter of them at most, after repeated 429s).
_SLOW_DOWN = """
local wait = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < wait then redis.call('SET', KEYS[1], '1', 'PX', wait) end
local factor = tonumber(redis.call('GET', KEYS[2]) or '1000')
redis.call('SET', KEYS[2], math.max(250, math.floor(factor * 3 / 4)), 'PX', 60000)
return 1
"""


@functools.lru_cache(maxsize=64)
def key_id(api_key: str | None) -> str:
    """Return the short id of an API key used in Redis keys and logs (never the key itself)."""
    if not api_key:
        return "default"
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class RateScope:
    """Whose limits a call counts against: a provider, a model, an API key's id."""

    provider: str
    model: str
    key: str = "default"

    def keys(self, prefix: str, request_id: str = "") -> list[str]:
        """Return the script's keys; one hash tag per provider and key, so they share a Cluster slot."""
        base = f"{prefix}{{{self.provider}:{self.key}}}"
        return [
            f"{base}:win:{self.model}",
            f"{base}:tok:{self.model}",
            f"{base}:conc",
            f"{base}:cool:{self.model}",
            f"{base}:slow:{self.model}",
            f"{base}:epoch",
            f"{base}:gone:{request_id}",
        ]

    def __str__(self) -> str:
        return f"{self.provider}/{self.model} (key {self.key})"


@dataclass(frozen=True, slots=True)
class Grant:
    """A slot granted at ``granted_at_ms`` of Redis's clock: a request id, its token weight, its scope."""

    scope: RateScope
    request_id: str
    tokens: int
    granted_at_ms: int
    concurrency: bool


class RateLimiter:
    """Take, renew and give back rate and concurrency slots in Redis (``Container.rate_limiter``)."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str = "videogen:paid:",
        lease_seconds: float = 60.0,
        operation_timeout: float = 1.0,
        margin_seconds: float = 0.1,
    ) -> None:
        self._redis = redis
        self._margin_ms = int(margin_seconds * 1000)
        self._prefix = prefix
        self._lease_ms = int(lease_seconds * 1000)
        self._timeout = operation_timeout
        self._epochs: dict[str, str] = {}
        self._scripts: dict[str, Any] = {}
        # Slots whose answer or release was lost while the store was down: given back once it answers again.
        self._unsettled: list[tuple[RateScope, str, int, bool]] = []

    @property
    def lease_seconds(self) -> float:
        """Return how long a concurrency lease lasts without renewal."""
        return self._lease_ms / 1000

    async def _run(self, name: str, source: str, keys: list[str], args: list[Any]) -> Any:
        """Run one script in one round trip, within the time bound; any failure of the store fails closed."""
        from redis.exceptions import RedisClusterException, RedisError  # noqa: PLC0415 - redis loads when used

        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._redis.raw.register_script(source)
        try:
            async with asyncio.timeout(self._timeout):
                return await script(keys=keys, args=args)
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            raise RateLimiterUnavailableError(retry_after=0.5) from exc

    async def try_acquire(self, scope: RateScope, request_id: str, tokens: int, limits: RateLimits) -> Grant | float:
        """Take a slot now and return it, or return the milliseconds to wait before one may be free.

        Each call is its own attempt (``request_id`` plus a nonce): redis-py's re-send of the script after a lost
        answer finds its grant, and an attempt whose answer never came (the store frozen) is given back, by a
        tombstone that also stops it from being granted late, as soon as the store answers again.

        Raises:
            ValidationError: ``tokens`` is more than the tokens-per-minute limit: it can never pass.
            RateLimiterUnavailableError: Redis is down or frozen (fail closed).
        """
        # One member per attempt to acquire: redis-py's own re-send of this script finds its grant, and an id given
        # back after a lost answer (its tombstone) never blocks a later attempt under the same request id.
        if self._unsettled:
            await self._settle_lost()
        member = f"{request_id}.{uuid.uuid4().hex[:12]}"
        keys = scope.keys(self._prefix, member)
        epoch_key = keys[5]
        args = [
            member,
            tokens,
            limits.rpm or 0,
            limits.tpm or 0,
            limits.rps or 0,
            limits.concurrency or 0,
            self._lease_ms,
            self._epochs.get(epoch_key, ""),
            uuid.uuid4().hex,
            _CONCURRENCY_POLL_MS,
            self._margin_ms,
        ]
        try:
            granted, at, epoch = await self._run("acquire", _ACQUIRE, keys, args)
        except (RateLimiterUnavailableError, asyncio.CancelledError):
            # The script may have run (or may still run): give the attempt back once the store answers.
            self._unsettled.append((scope, member, -1, True))
            raise
        self._epochs[epoch_key] = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        if granted == -1:
            msg = f"a call of {tokens} tokens is more than {scope}'s tokens-per-minute limit ({at}); split it"
            raise ValidationError(msg, field="tokens")
        if granted == -2:  # pragma: no cover - a tombstoned member is never sent again by this client
            return 0.0
        if granted == 1:
            return Grant(scope, member, tokens, int(at), limits.concurrency is not None)
        return float(at)

    async def acquire(
        self, scope: RateScope, request_id: str, tokens: int, limits: RateLimits, *, max_wait: float
    ) -> Grant:
        """Wait (up to ``max_wait`` seconds) for a slot, sleeping as long as the store says, and return it.

        Raises:
            RateLimitWaitError: no slot within ``max_wait``; ``retry_after`` says when one may be.
            RateLimiterUnavailableError: Redis is down or frozen (fail closed).
        """
        deadline = time.monotonic() + max_wait
        while True:
            answer = await self.try_acquire(scope, request_id, tokens, limits)
            if isinstance(answer, Grant):
                return answer
            # A little jitter so that the processes that waited for the same moment do not all ask at once.
            pause = answer / 1000 * (1 + random.random() / 10)  # noqa: S311 - jitter, not a secret
            if time.monotonic() + pause > deadline:
                raise RateLimitWaitError(scope=str(scope), retry_after=round(pause, 3))
            await asyncio.sleep(pause)

    async def release(self, grant: Grant, *, tokens: int | None = None, refund: bool = False) -> None:
        """Give back the concurrency lease; reweigh the tokens with the real usage, or take the grant back whole.

        Never raises for the store's failures: a lease left behind runs out by itself, a weight stays the
        estimate (logged).
        """
        weight = -1 if tokens is None else tokens
        try:
            await self._give_back(grant.scope, grant.request_id, weight, refund)
        except RateLimiterUnavailableError:
            self._unsettled.append((grant.scope, grant.request_id, weight, refund))
            _log.warning(
                "could not release the slot of %s; released when Redis answers again, or in %s s by itself",
                grant.scope,
                self.lease_seconds,
                exc_info=True,
            )

    async def _give_back(self, scope: RateScope, member: str, tokens: int, refund: bool) -> None:
        keys = scope.keys(self._prefix, member)
        await self._run("release", _RELEASE, [*keys[:3], keys[6]], [member, tokens, "1" if refund else "0"])

    async def _settle_lost(self) -> None:
        """Give back the slots whose answer or release was lost while the store was down (until one fails)."""
        pending, self._unsettled = self._unsettled, []  # taken whole: another task may flush at the same time
        for index, (scope, member, tokens, refund) in enumerate(pending):
            try:
                await self._give_back(scope, member, tokens, refund)
            except RateLimiterUnavailableError:
                self._unsettled.extend(pending[index:])
                return

    async def renew(self, grant: Grant) -> bool:
        """Extend the grant's concurrency lease to a full lease from now; return False once it is gone."""
        keys = grant.scope.keys(self._prefix)
        renewed = await self._run("renew", _RENEW, [keys[2]], [grant.request_id, self._lease_ms])
        return bool(renewed) or not grant.concurrency

    async def slow_down(self, scope: RateScope, retry_after: float | None) -> None:
        """Learn from a 429: stop every process for ``retry_after`` (1 s if none), limits x 3/4 for 60 s."""
        keys = scope.keys(self._prefix)
        wait_ms = max(1, int((retry_after if retry_after is not None else 1.0) * 1000))
        try:
            await self._run("slow_down", _SLOW_DOWN, [keys[3], keys[4]], [wait_ms])
        except RateLimiterUnavailableError:
            _log.warning("could not share a 429 of %s with the other processes", scope, exc_info=True)
