"""The FastAPI glue every HTTP-facing module uses (the ``[api]`` extra; ``import shared`` never loads FastAPI).

A module's app, in full::

    from fastapi import FastAPI
    from shared.api import CurrentUser, RequestLimits, add_health_route, container_lifespan, install_error_handlers

    def create_app(container: Container) -> FastAPI:
        app = FastAPI(lifespan=container_lifespan(container, modules=[__name__]))
        install_error_handlers(app)            # every PipelineError and framework error -> the JSON error body
        app.add_middleware(RequestLimits, max_body_bytes=10 * 1024 * 1024)
        add_health_route(app)                  # GET /health
        return app

Routes take ``user: CurrentUser`` for the verified Supabase principal (``user: PayingUser`` on routes that spend
paid-API budget: anonymous users are refused there). Serve it with
``shared.api.server.serve(app, settings)`` (uvicorn with the slow-client limits); test it with
``shared.api.testing`` (fixtures for starlette's TestClient).
"""

from shared.api.auth import CurrentUser, PayingUser, bearer_scheme, current_user, require_user
from shared.api.errors import (
    ErrorBody,
    ErrorDetail,
    PayloadTooLargeError,
    RequestTimeoutError,
    error_response,
    error_responses,
    install_error_handlers,
    status_for,
)
from shared.api.health import DEFAULT_SERVICES, HealthReport, ServiceHealth, add_health_route
from shared.api.lifespan import AppLifespan, container_lifespan, get_container
from shared.api.limits import RequestLimits

__all__ = [
    "DEFAULT_SERVICES",
    "AppLifespan",
    "CurrentUser",
    "ErrorBody",
    "ErrorDetail",
    "HealthReport",
    "PayingUser",
    "PayloadTooLargeError",
    "RequestLimits",
    "RequestTimeoutError",
    "ServiceHealth",
    "add_health_route",
    "bearer_scheme",
    "container_lifespan",
    "current_user",
    "error_response",
    "error_responses",
    "get_container",
    "install_error_handlers",
    "require_user",
    "status_for",
]
