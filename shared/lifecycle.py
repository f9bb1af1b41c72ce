"""Start and stop a container's resources the one way every entry point uses (CLI, FastAPI, tests).

``async with lifespan(container):`` checks the container's wiring, then opens every Resource within a time
limit; when one fails to open it closes those already open before raising (dependency-injector leaves them
open), and on the way out it closes all of them within a time limit. :func:`overridden` swaps providers and
resets the singletons that were built before, so an override is never silently ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from dependency_injector import containers, providers
from pydantic_settings import BaseSettings

from shared._di import bind_loop, loop_of, pin_started, reset_resource, unbind_loop, unpin
from shared.container_check import validate_container
from shared.errors import ConfigError, LifecycleError, PipelineError

__all__ = ["LifecycleError", "lifespan", "overridden", "resolve", "start_resources", "stop_resources"]

T = TypeVar("T")
_log = logging.getLogger("shared.lifecycle")
_DEFAULT_STARTUP_TIMEOUT = 30.0
_DEFAULT_SHUTDOWN_TIMEOUT = 10.0


def _timeouts(container: Any, startup: float | None, shutdown: float | None) -> tuple[float, float]:
    """Take the limits from the arguments, else from the container's Settings, else the defaults."""
    settings = None
    if startup is None or shutdown is None:
        try:
            settings = container.settings()
        except PipelineError:
            raise
        except Exception:  # noqa: BLE001 - a container without settings falls back to the defaults
            settings = None
    if startup is None:
        startup = float(getattr(settings, "startup_timeout_seconds", _DEFAULT_STARTUP_TIMEOUT))
    if shutdown is None:
        shutdown = float(getattr(settings, "shutdown_timeout_seconds", _DEFAULT_SHUTDOWN_TIMEOUT))
    return startup, shutdown


def _resources(container: Any) -> list[providers.Resource[Any]]:
    return list(container.traverse(types=[providers.Resource]))


async def _settle(container: Any) -> None:
    """Wait until no resource is half-initialised, so shutdown sees each one opened or failed."""
    pending = []
    for provider in _resources(container):
        if provider.initialized:
            value = provider()
            if isinstance(value, asyncio.Future):
                pending.append(value)
    if pending:
        await asyncio.wait(pending)


def _build_settings(container: Any) -> None:
    """Build every settings object the container provides (Settings, a module's ModuleSettings) before anything
    opens, so that a bad value in any of them stops the start at once with its ConfigError, which names the
    provider too."""
    names = {id(provider): name for name, provider in getattr(container, "providers", {}).items()}
    for provider in container.traverse(types=[providers.Singleton]):
        provides = getattr(provider, "provides", None)
        if isinstance(provides, type) and issubclass(provides, BaseSettings):
            try:
                provider()
            except ConfigError as error:
                where = f"(provider {names.get(id(provider), provides.__name__)!r}, {provides.__name__})"
                if not error.problems:
                    raise
                raise ConfigError(problems=tuple(f"{problem} {where}" for problem in error.problems)) from error


async def start_resources(container: Any, *, timeout: float | None = None) -> None:
    """Open every resource within ``timeout`` seconds; on failure close what had opened, then raise.

    The wiring is checked first (:func:`shared.container_check.validate_container`: a provider that cannot be
    built, or is given or replaced by the wrong type, stops the start before anything opens), then every settings
    provider is built: an invalid module setting fails the start like a shared one.

    Raises:
        WiringError: a provider of the container is wired wrong (the error names each one).
        ConfigError: a setting of the shared Settings or of a module's own settings is invalid.
        LifecycleError: the start took longer than the limit (nothing is left open).
        PipelineError: a resource failed to open (its own error, e.g. DatabaseUnavailableError).
    """
    validate_container(container)
    startup, shutdown = _timeouts(container, timeout, None)
    _build_settings(container)
    owner = loop_of(container)
    running = asyncio.get_running_loop()
    if owner is not None and owner is not running and not owner.is_closed():
        raise LifecycleError(
            "This container was started in another event loop; create one container per event loop "
            "(in tests: one container per test, or one loop scope for the session)"
        )
    try:
        async with asyncio.timeout(startup):
            result = container.init_resources()
            if result is not None:
                await result
    except BaseException as exc:
        # gather() does not cancel the siblings of a failed resource: let them finish, then close them.
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(_settle(container), shutdown)
        try:
            await stop_resources(container, timeout=shutdown)
        except PipelineError:
            _log.exception("closing the resources opened before the failed start also failed")
        if isinstance(exc, TimeoutError):
            raise LifecycleError(
                f"Starting the container's resources took longer than {startup:g} s; check that the "
                "services in the settings are reachable (`python -m shared doctor`)"
            ) from exc
        if isinstance(exc, PipelineError) or not isinstance(exc, Exception):
            raise
        raise LifecycleError(
            f"A resource failed to start ({type(exc).__name__}); see the cause, then run `python -m shared doctor`"
        ) from exc
    pin_started(container)
    bind_loop(container, running)


async def stop_resources(container: Any, *, timeout: float | None = None) -> None:
    """Close every open resource, dependents first, within ``timeout`` seconds; safe to call twice.

    Raises:
        LifecycleError: a resource failed to close, or closing took longer than the limit.
    """
    _, shutdown = _timeouts(container, 1.0, timeout)
    unbind_loop(container)
    unpin(container)
    try:
        async with asyncio.timeout(shutdown):
            result = container.shutdown_resources()
            if inspect.isawaitable(result):
                await result
    except TimeoutError as exc:
        raise LifecycleError(f"Closing the container's resources took longer than {shutdown:g} s") from exc
    except Exception as exc:
        # A documented boundary: whatever a resource's close raised, report it as ours with the cause.
        raise LifecycleError(f"A resource failed to close cleanly ({type(exc).__name__})") from exc
    finally:
        # Whatever failed, nothing should claim to be open any more.
        for provider in _resources(container):
            if provider.initialized:
                reset_resource(provider)


@contextlib.asynccontextmanager
async def lifespan(
    container: containers.Container,
    *,
    startup_timeout: float | None = None,
    shutdown_timeout: float | None = None,
) -> AsyncIterator[containers.Container]:
    """Open the container's resources for the duration of the block and close them after it.

    The limits default to ``Settings.startup_timeout_seconds`` and ``Settings.shutdown_timeout_seconds``.
    """
    await start_resources(container, timeout=startup_timeout)
    try:
        yield container
    finally:
        await stop_resources(container, timeout=shutdown_timeout)


@contextlib.contextmanager
def overridden(container: Any, **replacements: Any) -> Iterator[Any]:
    """Override providers by name for the block, resetting singletons before and after.

    A Singleton built before an override keeps the old collaborator; resetting makes the override take
    effect, and resetting again after the block makes the original take effect again.
    """
    unknown = sorted(
        name for name in replacements if not isinstance(getattr(container, name, None), providers.Provider)
    )
    if unknown:
        raise PipelineError(f"Cannot override {', '.join(unknown)}: the container has no provider of that name")
    container.reset_singletons()
    try:
        with container.override_providers(**replacements):
            yield container
    finally:
        container.reset_singletons()


async def resolve(provider: Callable[[], T | Awaitable[T]]) -> T:
    """Return what ``provider`` gives, awaiting it when it is a Future.

    Once a provider depends on an async Resource (the database pool, Redis, the HTTP client),
    dependency-injector returns a Future for it, while its type stubs promise the value: ``await
    resolve(container.db)`` is right in both cases and type-checks as ``DatabaseClient``.
    """
    value = provider()
    if inspect.isawaitable(value):
        return await value
    return value
