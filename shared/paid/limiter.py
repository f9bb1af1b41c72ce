"""Rate and concurrency slots for paid calls, shared by every process on every machine through Redis.

One Lua script grants a slot in one round trip, all or nothing, on Redis's own clock (``TIME``), so the limits
hold across machines whose clocks disagree. The callers of one process share that round trip: what they ask
(take, give back, renew) while a batch is in flight goes in the next one, one script per provider and key, run
in order; one caller alone pays one round trip, 64 callers about a tenth of one each (benchmarks/README.md).

Per provider, model and API key (the key appears only as a short SHA-256 id, never itself), a sliding log of
the last minute's grants (a sorted set of request ids scored by their time, with each grant's tokens in a hash
and a running total) answers three questions at once:

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
within ``REDIS_OPERATION_TIMEOUT_SECONDS`` (twice that for a caller queued behind a batch in flight), and no
call is admitted. A Redis that comes back empty (restarted
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

# One script for a batch of entries of one provider and key (one Cluster slot). KEYS: 7 per scope of the batch;
# ARGV: the lease (ms), this process's fresh epoch, the margin (ms), the concurrency poll (ms), then one line per
# entry, its fields apart by spaces, the second one its scope's place in KEYS:
#   a <scope> <id> <tokens> <rpm> <tpm> <rps> <concurrency> <epoch or ->  take a slot (all limits or nothing)
#   r <scope> <id> <tokens or -1> <refund 0/1>                            give one back
#   n <scope> <id>                                                        renew its concurrency lease
# Every process sends the entries its callers queued while its previous batch was in flight: one round trip for
# one caller alone, a fraction of one each under load. Entries run in order, on one reading of Redis's clock.
_BATCH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, fresh = tonumber(ARGV[1]), ARGV[2]
local minute, second, poll = 60000 + tonumber(ARGV[3]), 1000 + tonumber(ARGV[3]), tonumber(ARGV[4])

local function acquire(K, A)
  local id, tokens = A[3], tonumber(A[4])
  local rpm, tpm, rps, conc = tonumber(A[5]), tonumber(A[6]), tonumber(A[7]), tonumber(A[8])
  local current = redis.call('GET', K[6])
  if not current then
    redis.call('SET', K[6], fresh)
    current = fresh
    if A[9] ~= '-' then
      -- The store lost its state (a restart without persistence): hold every call for one full window.
      redis.call('SET', K[4], '1', 'PX', minute)
    end
  end
  local seen = redis.call('ZSCORE', K[1], id)
  if seen then return {1, tonumber(seen), current} end
  -- Given back by its process, which never heard the answer (the store was frozen): never grant it late.
  if redis.call('ZSCORE', K[7], id) then return {-2, 0, current} end
  local old = redis.call('ZRANGEBYSCORE', K[1], '-inf', now - minute, 'LIMIT', 0, 4000)
  if #old > 0 then
    local weights = redis.call('HMGET', K[2], unpack(old))
    local freed = 0
    for _, w in ipairs(weights) do if w then freed = freed + tonumber(w) end end
    redis.call('HDEL', K[2], unpack(old))
    redis.call('HINCRBY', K[2], '_total', -freed)
    redis.call('ZREM', K[1], unpack(old))
  end
  local cool = redis.call('PTTL', K[4])
  if cool > 0 then return {0, cool, current} end
  local factor = tonumber(redis.call('GET', K[5]) or '1000') / 1000
  local function scaled(limit) return math.max(1, math.floor(limit * factor)) end
  local wait = 0
  if rpm > 0 then
    local limit = scaled(rpm)
    local n = redis.call('ZCARD', K[1])
    if n >= limit then
      local e = redis.call('ZRANGE', K[1], n - limit, n - limit, 'WITHSCORES')
      wait = math.max(wait, tonumber(e[2]) + minute - now + 1)
    end
  end
  if rps > 0 then
    local limit = scaled(rps)
    local k = redis.call('ZCOUNT', K[1], '(' .. (now - second), '+inf')
    if k >= limit then
      local e = redis.call('ZRANGEBYSCORE', K[1], '(' .. (now - second), '+inf', 'WITHSCORES', 'LIMIT', k - limit, 1)
      wait = math.max(wait, tonumber(e[2]) + second - now + 1)
    end
  end
  if tpm > 0 then
    local limit = scaled(tpm)
    if tokens > limit then return {-1, limit, current} end
    local total = tonumber(redis.call('HGET', K[2], '_total') or '0')
    if total + tokens > limit then
      local entries = redis.call('ZRANGE', K[1], 0, -1, 'WITHSCORES')
      local freed = 0
      for i = 1, #entries, 2 do
        freed = freed + tonumber(redis.call('HGET', K[2], entries[i]) or '0')
        if total - freed + tokens <= limit then
          wait = math.max(wait, tonumber(entries[i + 1]) + minute - now + 1)
          break
        end
      end
    end
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', K[3], '-inf', now)
    if redis.call('ZCARD', K[3]) >= conc then wait = math.max(wait, poll) end
  end
  if wait > 0 then return {0, wait, current} end
  redis.call('ZADD', K[1], now, id)
  redis.call('HSET', K[2], id, tokens)
  redis.call('HINCRBY', K[2], '_total', tokens)
  redis.call('PEXPIRE', K[1], minute + 1000)
  redis.call('PEXPIRE', K[2], minute + 1000)
  if conc > 0 then
    redis.call('ZADD', K[3], now + lease, id)
    redis.call('PEXPIRE', K[3], lease + 1000)
  end
  return {1, now, current}
end

-- Free a grant's concurrency lease and reweigh its tokens with the real usage (-1: keep the estimate);
-- refund = 1 takes the grant back whole (nothing was sent) and leaves a tombstone (3 minutes) so that it is
-- never granted late.
local function release(K, A)
  local id, tokens = A[3], tonumber(A[4])
  redis.call('ZREM', K[3], id)
  if A[5] == '1' then
    redis.call('ZREMRANGEBYSCORE', K[7], '-inf', now)
    redis.call('ZADD', K[7], now + 180000, id)
    redis.call('PEXPIRE', K[7], 181000)
  end
  local old = redis.call('HGET', K[2], id)
  if old then
    if A[5] == '1' then
      redis.call('ZREM', K[1], id)
      redis.call('HDEL', K[2], id)
      redis.call('HINCRBY', K[2], '_total', -tonumber(old))
    elseif tokens >= 0 then
      redis.call('HSET', K[2], id, tokens)
      redis.call('HINCRBY', K[2], '_total', tokens - tonumber(old))
    end
  end
  return {1}
end

local function renew(K, A)
  local renewed = redis.call('ZADD', K[3], 'XX', 'CH', now + lease, A[3])
  redis.call('PEXPIRE', K[3], lease + 1000)
  return {renewed}
end

local out = {}
for i = 5, #ARGV do
  local A = {}
  for field in string.gmatch(ARGV[i], '[^ ]+') do A[#A + 1] = field end
  local b = tonumber(A[2]) * 7
  local K = {KEYS[b + 1], KEYS[b + 2], KEYS[b + 3], KEYS[b + 4], KEYS[b + 5], KEYS[b + 6], KEYS[b + 7]}
  local kind = A[1]
  if kind == 'a' then out[i - 4] = acquire(K, A)
  elseif kind == 'r' then out[i - 4] = release(K, A)
  else out[i - 4] = renew(K, A) end
end
return out
"""
# The most entries one batch carries.
_BATCH_MAX = 256

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
        """Return the script's keys; one hash tag per provider and key, so they share a Cluster slot.

        ``request_id`` is ignored since 0.2.0: the tombstones of given-back grants are one sorted set per scope.
        """
        base = f"{prefix}{{{self.provider}:{self.key}}}"
        return [
            f"{base}:win:{self.model}",
            f"{base}:tok:{self.model}",
            f"{base}:conc",
            f"{base}:cool:{self.model}",
            f"{base}:slow:{self.model}",
            f"{base}:epoch",
            f"{base}:gone",
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


@dataclass(slots=True)
class _Entry:
    """One entry of a batch: its kind ('a' take, 'r' give back, 'n' renew), its fields after the scope, its waiter."""

    kind: str
    scope: RateScope
    member: str
    fields: str
    future: asyncio.Future[Any] | None


class RateLimiter:
    """Take, renew and give back rate and concurrency slots in Redis (``Container.rate_limiter``).

    The callers of one process share round trips: what they ask while a batch is in flight goes in the next one
    (one script per provider and key), so one caller alone pays one round trip and many pay a fraction of one
    each. A call that waited behind a batch in flight may take two time bounds to fail closed.
    """

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
        # The epoch written by this process into a store found empty (any fresh value will do).
        self._fresh = uuid.uuid4().hex
        self._scripts: dict[str, Any] = {}
        self._keys: dict[RateScope, tuple[str, list[str]]] = {}
        # Entries waiting for the next batch, and the task sending batches, per provider and key (Cluster slot).
        self._queues: dict[str, list[_Entry]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        # Give-backs whose answer was lost while the store was down: sent again with the next batch.
        self._unsettled: list[_Entry] = []
        # Concurrency leases renewed every third of their length while their calls run (one timer for all).
        self._kept: dict[str, Grant] = {}
        self._renewal: asyncio.TimerHandle | None = None
        self._renewal_loop: asyncio.AbstractEventLoop | None = None

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

    def _scope_keys(self, scope: RateScope) -> tuple[str, list[str]]:
        """Return the scope's group (its hash tag: one batch per group) and its seven keys."""
        known = self._keys.get(scope)
        if known is None:
            if len(self._keys) > 4096:
                self._keys.clear()
            keys = scope.keys(self._prefix)
            known = self._keys[scope] = (keys[0][: keys[0].index("}") + 1], keys)
        return known

    def _queue(self, kind: str, scope: RateScope, member: str, fields: str, *, wait: bool = True) -> _Entry:
        """Put an entry in the next batch of its provider and key; ``wait``: with a future for its answer."""
        future = asyncio.get_running_loop().create_future() if wait else None
        entry = _Entry(kind, scope, member, fields, future)
        self._submit(entry)
        return entry

    def _submit(self, entry: _Entry) -> None:
        if self._unsettled:
            pending, self._unsettled = self._unsettled, []
            for lost in pending:  # given back before anything else of their scope is asked
                self._enqueue(lost)
        self._enqueue(entry)

    def _enqueue(self, entry: _Entry) -> None:
        group = self._scope_keys(entry.scope)[0]
        queue = self._queues.get(group)
        if queue is None:
            queue = self._queues[group] = []
        sender = self._senders.get(group)
        loop = asyncio.get_running_loop()
        if sender is not None and sender.get_loop() is not loop:
            # A sender of a loop that was closed under it (a limiter kept across event loops): its waiters are
            # gone with their loop; what nobody waits for (give-backs, renewals) is still sent.
            queue[:] = [queued for queued in queue if queued.future is None]
            sender = None
        queue.append(entry)
        if sender is None:
            self._senders[group] = loop.create_task(self._send(group), name=f"{group} batches")

    async def _send(self, group: str) -> None:
        batch: list[_Entry] = []
        try:
            while queue := self._queues.get(group):
                batch = queue[:_BATCH_MAX]
                del queue[:_BATCH_MAX]
                await self._send_batch(batch)
                batch = []
        finally:
            if self._senders.get(group) is asyncio.current_task():
                del self._senders[group]
            left = [*batch, *self._queues.pop(group, [])]
            for entry in left:  # only when the loop shuts down: what was not sent is lost or runs out by itself
                if entry.future is not None and not entry.future.done():
                    entry.future.cancel()

    async def _send_batch(self, batch: list[_Entry]) -> None:
        places: dict[RateScope, int] = {}
        keys: list[str] = []
        args: list[Any] = [self._lease_ms, self._fresh, self._margin_ms, _CONCURRENCY_POLL_MS]
        for entry in batch:
            place = places.get(entry.scope)
            if place is None:
                place = places[entry.scope] = len(places)
                keys.extend(self._scope_keys(entry.scope)[1])
            args.append(f"{entry.kind} {place} {entry.fields}")
        try:
            results = await self._run("batch", _BATCH, keys, args)
        except (RateLimiterUnavailableError, asyncio.CancelledError) as exc:
            # The script may have run (or may still run): give back what it may have granted, keep the
            # give-backs, once the store answers again; the waiters fail closed.
            self._lost(batch, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for entry, result in zip(batch, results, strict=True):
            future = entry.future
            if future is None:
                continue
            if future.cancelled():
                if entry.kind == "a" and result[0] == 1:  # its waiter is gone: nothing will be sent
                    self._enqueue(self._give_back_entry(entry.scope, entry.member, -1, refund=True))
                continue
            future.set_result(result)

    def _lost(self, batch: list[_Entry], exc: BaseException) -> None:
        renewals = 0
        for entry in batch:
            future, entry.future = entry.future, None
            if entry.kind == "a":
                self._unsettled.append(self._give_back_entry(entry.scope, entry.member, -1, refund=True))
            elif entry.kind == "r":
                self._unsettled.append(entry)  # sent again, unwaited, with the next batch
            else:
                renewals += 1
            if future is not None and not future.done():
                error = RateLimiterUnavailableError(retry_after=0.5)
                error.__cause__ = exc.__cause__ or exc
                future.set_exception(error)
        if renewals:
            _log.warning("could not renew %s concurrency leases; the next renewal may get through", renewals)

    def _give_back_entry(self, scope: RateScope, member: str, tokens: int, *, refund: bool) -> _Entry:
        return _Entry("r", scope, member, f"{member} {tokens} {'1' if refund else '0'}", None)

    async def try_acquire(self, scope: RateScope, request_id: str, tokens: int, limits: RateLimits) -> Grant | float:
        """Take a slot now and return it, or return the milliseconds to wait before one may be free.

        Each call is its own attempt (``request_id`` plus a nonce): redis-py's re-send of the script after a lost
        answer finds its grant, and an attempt whose answer never came (the store frozen) is given back, by a
        tombstone that also stops it from being granted late, as soon as the store answers again.

        Raises:
            ValidationError: ``tokens`` is more than the tokens-per-minute limit: it can never pass.
            RateLimiterUnavailableError: Redis is down or frozen (fail closed).
        """
        member = f"{request_id.replace(' ', '_')}.{uuid.uuid4().hex[:12]}"  # fields are apart by spaces
        epoch_key = self._scope_keys(scope)[0]  # one epoch per provider and key
        knew = "1" if epoch_key in self._epochs else "-"
        fields = (
            f"{member} {int(tokens)} {limits.rpm or 0} {limits.tpm or 0} {limits.rps or 0} {limits.concurrency or 0} "
            f"{knew}"
        )
        entry = self._queue("a", scope, member, fields)
        future = entry.future
        assert future is not None  # noqa: S101 - a waited entry
        try:
            granted, at, epoch = await future
        except asyncio.CancelledError:
            # Cancelled after the answer came but before this task resumed: a grant nobody will use goes back.
            # (Cancelled before the answer, the sender gives it back; lost with the store, the next batch does.)
            if future.done() and not future.cancelled() and future.exception() is None and future.result()[0] == 1:
                self._submit(self._give_back_entry(scope, member, -1, refund=True))
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

    def keep(self, grant: Grant) -> None:
        """Renew the grant's concurrency lease every third of its length until it is released.

        One timer renews every lease this process keeps, in one batch per provider and key.
        """
        if not grant.concurrency:
            return
        self._kept[grant.request_id] = grant
        loop = asyncio.get_running_loop()
        if self._renewal is None or self._renewal_loop is not loop:  # none yet, or one of a closed loop
            self._renewal_loop = loop
            self._renewal = loop.call_later(self.lease_seconds / 3, self._renew_kept)

    def _renew_kept(self) -> None:
        self._renewal = None
        if not self._kept:
            return
        for grant in self._kept.values():
            self._queue("n", grant.scope, grant.request_id, grant.request_id, wait=False)
        self._renewal = asyncio.get_running_loop().call_later(self.lease_seconds / 3, self._renew_kept)

    async def release(self, grant: Grant, *, tokens: int | None = None, refund: bool = False) -> None:
        """Give back the concurrency lease; reweigh the tokens with the real usage, or take the grant back whole.

        The give-back is queued before the first await, so a cancellation of the caller never loses it. Never
        raises for the store's failures: a give-back whose answer was lost is sent again with the next batch,
        and a lease left behind runs out by itself.
        """
        self._kept.pop(grant.request_id, None)
        entry = self._give_back_entry(grant.scope, grant.request_id, -1 if tokens is None else tokens, refund=refund)
        entry.future = asyncio.get_running_loop().create_future()
        self._submit(entry)
        try:
            await entry.future
        except RateLimiterUnavailableError:
            _log.warning(
                "could not release the slot of %s; released when Redis answers again, or in %s s by itself",
                grant.scope,
                self.lease_seconds,
                exc_info=True,
            )

    async def renew(self, grant: Grant) -> bool:
        """Extend the grant's concurrency lease to a full lease from now; return False once it is gone."""
        entry = self._queue("n", grant.scope, grant.request_id, grant.request_id)
        assert entry.future is not None  # noqa: S101 - a waited entry
        (renewed,) = await entry.future
        return bool(renewed) or not grant.concurrency

    async def slow_down(self, scope: RateScope, retry_after: float | None) -> None:
        """Learn from a 429: stop every process for ``retry_after`` (1 s if none), limits x 3/4 for 60 s."""
        keys = scope.keys(self._prefix)
        wait_ms = max(1, int((retry_after if retry_after is not None else 1.0) * 1000))
        try:
            await self._run("slow_down", _SLOW_DOWN, [keys[3], keys[4]], [wait_ms])
        except RateLimiterUnavailableError:
            _log.warning("could not share a 429 of %s with the other processes", scope, exc_info=True)
