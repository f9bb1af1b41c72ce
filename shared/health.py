"""HealthStatus: what a service's health check found, shared by the database, cache and storage clients."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

__all__ = ["HealthStatus"]


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """What a health check found: ``ok`` or ``down``, the round trip in milliseconds, and why when down."""

    name: str
    status: Literal["ok", "down"]
    latency_ms: float
    detail: str | None = None

    @property
    def ok(self) -> bool:
        """Return whether the service answered."""
        return self.status == "ok"

    @classmethod
    def since(cls, name: str, started: float, detail: str | None = None) -> HealthStatus:
        """Return ``ok`` (or ``down`` with ``detail``) timed from ``started`` (a ``time.perf_counter()`` value)."""
        latency = (time.perf_counter() - started) * 1000
        return cls(name, "ok", latency) if detail is None else cls(name, "down", latency, detail)
