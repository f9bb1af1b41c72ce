"""HealthStatus: what a service's health check found, shared by the database, cache and storage clients."""

from __future__ import annotations

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
