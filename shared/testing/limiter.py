"""An in-process stand-in for :class:`shared.paid.limiter.RateLimiter`, so paid admission runs on the fakes."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING

from shared.errors import RateLimitWaitError
from shared.paid.limiter import Grant, RateScope

if TYPE_CHECKING:
    from shared.config import RateLimits

__all__ = ["FakeRateLimiter"]


class FakeRateLimiter:
    """Grant slots in this process: the concurrency limit holds (a call waits for a slot, up to ``max_wait``), the
    request and token rates are not counted. Every grant and every 429 learnt is kept for the test to read.

    The rates, their shared windows and the store's outages are the real limiter's, tested on the real Redis; a
    module's tests on the fakes check its own logic (what it admits, settles and gives back).
    """

    lease_seconds = 60.0

    def __init__(self) -> None:
        self.grants: list[Grant] = []
        self.slowed: list[tuple[RateScope, float | None]] = []
        self.in_flight: collections.Counter[RateScope] = collections.Counter()
        self.most_in_flight: collections.Counter[RateScope] = collections.Counter()
        self._live: set[str] = set()

    async def acquire(
        self, scope: RateScope, request_id: str, tokens: int, limits: RateLimits, *, max_wait: float
    ) -> Grant:
        """Return a slot at once, or when a concurrency slot frees up; RateLimitWaitError after ``max_wait``."""
        deadline = time.monotonic() + max_wait
        while limits.concurrency is not None and self.in_flight[scope] >= limits.concurrency:
            if time.monotonic() >= deadline:
                raise RateLimitWaitError(scope=str(scope), retry_after=0.1)
            await asyncio.sleep(0.01)
        self.in_flight[scope] += 1
        self.most_in_flight[scope] = max(self.most_in_flight[scope], self.in_flight[scope])
        self._live.add(request_id)
        grant = Grant(scope, request_id, tokens, int(time.time() * 1000), limits.concurrency is not None)
        self.grants.append(grant)
        return grant

    async def release(self, grant: Grant, *, tokens: int | None = None, refund: bool = False) -> None:
        """Give the slot back (once: a second release changes nothing)."""
        del tokens, refund
        if grant.request_id in self._live:
            self._live.discard(grant.request_id)
            self.in_flight[grant.scope] -= 1

    async def renew(self, grant: Grant) -> bool:
        """Return whether the grant still holds its slot."""
        return grant.request_id in self._live or not grant.concurrency

    def keep(self, grant: Grant) -> None:
        """Keep the lease while the call runs (nothing to renew in one process)."""
        del grant

    async def slow_down(self, scope: RateScope, retry_after: float | None) -> None:
        """Record a 429 the provider answered (the real limiter slows every process down)."""
        self.slowed.append((scope, retry_after))
