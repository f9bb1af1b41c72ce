"""The health route: every service the container declares checked, at once; 200 when all answer, else 503.

The services are read from the container (:func:`shared.health.service_checks`), the same list that
``python -m shared doctor`` checks: a module's container that declares another service shows it in both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from shared.api.lifespan import get_container
from shared.container import Container
from shared.health import HealthStatus, service_checks
from shared.lifecycle import resolve

__all__ = ["DEFAULT_SERVICES", "HealthReport", "ServiceHealth", "add_health_route"]

# The shared Container's checked providers ("db", "redis", "storage"); the route reads its own container's.
DEFAULT_SERVICES = tuple(check.provider for check in service_checks(Container))
_log = logging.getLogger("shared.api")


class ServiceHealth(BaseModel):
    """One service's health."""

    name: str
    status: str
    latency_ms: float
    detail: str | None = None


class HealthReport(BaseModel):
    """Every service's health; ``status`` is ok only when all are."""

    status: str
    services: list[ServiceHealth]


async def _check(container: Any, provider: str, name: str) -> HealthStatus:
    """Ask one collaborator for its health; a collaborator that cannot answer is down (this never raises)."""
    started = time.perf_counter()
    try:
        service = await resolve(getattr(container, provider))
        if service is None:  # overridden away (a test's fake world has no database)
            return HealthStatus(name, "down", 0.0, "not configured")
        return await service.health_check()  # type: ignore[no-any-return]  # each Protocol's own health_check
    except Exception as exc:  # noqa: BLE001 - a documented boundary: health reports failures, it does not raise
        _log.warning("health check of %s failed", provider, exc_info=True)
        return HealthStatus(name, "down", (time.perf_counter() - started) * 1000, type(exc).__name__)


def add_health_route(app: FastAPI, *, path: str = "/health", services: Sequence[str] | None = None) -> None:
    """Add ``GET path`` reporting each service with its latency.

    Args:
        app: the application, whose lifespan is :func:`~shared.api.container_lifespan`.
        path: the route's path.
        services: the providers to check, by attribute name; None (the default) checks every service the app's
            container declares with :func:`~shared.health.health_checked`, as ``doctor`` does.
    """

    async def health(request: Request) -> JSONResponse:
        """Check every service; 200 when all answer, 503 when one does not."""
        container = get_container(request)
        declared = {check.provider: check.name for check in service_checks(container)}
        chosen = list(declared) if services is None else list(services)
        results = await asyncio.gather(*(_check(container, name, declared.get(name, name)) for name in chosen))
        report = HealthReport(
            status="ok" if all(r.ok for r in results) else "down",
            services=[
                ServiceHealth(name=r.name, status=r.status, latency_ms=r.latency_ms, detail=r.detail) for r in results
            ],
        )
        return JSONResponse(report.model_dump(), status_code=200 if report.status == "ok" else 503)

    app.add_api_route(
        path,
        health,
        methods=["GET"],
        response_model=HealthReport,
        responses={503: {"model": HealthReport}},
        tags=["health"],
    )
