"""NoDatabase: what the fake container's ``db`` provides, so that a test which reaches for it learns what to do.

The fakes keep their tables in memory (:class:`~shared.testing.world.FakeWorld`), so ``fake_container.db()`` has
no pool behind it. A module's own database-backed provider built on it fails at its first query with
:class:`~shared.errors.NoDatabaseError`, which names the two ways out, rather than with a raw AttributeError.
"""

from __future__ import annotations

from typing import NoReturn

from shared.errors import NoDatabaseError
from shared.health import HealthStatus

__all__ = ["NoDatabase"]


class NoDatabase:
    """Stand in for the DatabaseClient on the fakes: every attribute raises NoDatabaseError; health is down."""

    __slots__ = ()

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("__"):  # copy, pickle and friends probe dunders; they must see a plain object
            raise AttributeError(name)
        raise NoDatabaseError(attribute=name)

    async def health_check(self) -> HealthStatus:
        """Report the database as down and not configured (the fakes have none); never raises."""
        return HealthStatus("db", "down", 0.0, "not configured")

    def __bool__(self) -> bool:
        """Return False: code that may run without a database (PaidCalls' usage record) tests ``if db``."""
        return False

    def __repr__(self) -> str:
        return "NoDatabase()"
