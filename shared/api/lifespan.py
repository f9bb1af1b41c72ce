"""Open a container for the life of a FastAPI app, with the modules that use ``Provide[...]`` wired to it.

``FastAPI(lifespan=container_lifespan(container, modules=[__name__]))``: at startup the modules are wired, the
container's resources open in the server's own event loop (so its pools belong to the loop that serves the
requests, which is also what starlette's TestClient needs: it runs the app in a loop of its own) and
``app.state.container`` is set for the glue (``current_user``, the health route); at shutdown the resources close
and the modules are unwired.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from types import ModuleType
from typing import Any, cast

from dependency_injector import containers
from fastapi import FastAPI, Request

from shared.container import Container
from shared.errors import PipelineError
from shared.lifecycle import lifespan, resolve

__all__ = ["AppLifespan", "container_lifespan", "get_container"]

AppLifespan = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]


def container_lifespan(
    container: Container,
    *,
    modules: Sequence[ModuleType | str] = (),
    packages: Sequence[ModuleType | str] = (),
    build: Sequence[str] = (),
) -> AppLifespan:
    """Return a FastAPI lifespan that wires ``modules``/``packages`` and opens ``container`` around the app.

    Args:
        container: the module's Container (``shared.container.Container`` or a subclass); not started yet.
        modules: modules whose ``@inject`` functions use ``Provide[...]`` (usually ``[__name__]``).
        packages: packages to wire as a whole.
        build: providers to build at startup (``"token_verifier"``), so that a misconfiguration stops the start
            instead of failing the first request.
    """

    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        app.state.container = container
        if modules or packages:
            container.wire(modules=list(modules) or None, packages=list(packages) or None)
        try:
            async with lifespan(container):
                for name in build:
                    await resolve(getattr(container, name))
                yield
        finally:
            container.unwire()

    return run


def get_container(request: Request) -> Container:
    """Return the container of the app serving ``request`` (set by :func:`container_lifespan`).

    Raises:
        PipelineError: the app was not built with ``container_lifespan``.
    """
    container: Any = getattr(request.app.state, "container", None)
    # Instantiating a DeclarativeContainer gives a DynamicContainer: check the base, not the declared class.
    if not isinstance(container, containers.Container):
        raise PipelineError(
            "The app has no container; build it with FastAPI(lifespan=container_lifespan(container, ...))",
            code="no_container",
        )
    return cast("Container", container)
