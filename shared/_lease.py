"""A lease kept alive while a block runs: renewed every ``interval`` seconds until stopped.

A timer, and a renewal task only while one is due, so a hold shorter than the interval (the common case) costs a
timer and no task. ``CostTracker.reserve`` keeps its reservation with one; a worker that dies stops renewing and
its hold ends at its TTL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from shared.errors import DatabaseError

__all__ = ["Lease"]

_log = logging.getLogger("shared.cost_tracking")


class Lease:
    """Call ``renew`` every ``interval`` seconds until it returns False or the lease is stopped.

    ``renew`` returns whether the hold is still active. A DatabaseError is logged and the next renewal tried: if
    none gets through, the hold ends at its TTL like a dead worker's.
    """

    def __init__(self, renew: Callable[[], Awaitable[bool]], interval: float, *, name: str) -> None:
        self._renew_once = renew
        self._name = name
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._timer = self._loop.call_later(interval, self._due)

    def idle(self) -> bool:
        """Return whether no renewal is in flight."""
        return self._task is None or self._task.done()

    def _due(self) -> None:
        self._task = asyncio.create_task(self._renew(), name=f"lease of {self._name}")

    async def _renew(self) -> None:
        try:
            active = await self._renew_once()
        except DatabaseError:
            _log.warning("could not renew %s; trying again", self._name, exc_info=True)
            active = True
        if active and not self._stopped:
            self._timer = self._loop.call_later(self._interval, self._due)

    def stop(self) -> None:
        """Renew no more."""
        self._stopped = True
        self._timer.cancel()

    async def stop_and_wait(self) -> None:
        """Renew no more, and wait until a renewal in flight has ended."""
        self.stop()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])
            if not self._task.cancelled() and self._task.exception() is not None:
                _log.warning("the lease of %s failed", self._name, exc_info=self._task.exception())
