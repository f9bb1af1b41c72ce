"""The services that `/health` and `python -m shared doctor` check, declared beside each one; what a check finds.

A provider whose object answers ``async health_check() -> HealthStatus`` is declared checked where the container
declares it (svcs declares a service's ping where it registers the service)::

    class Container(containers.DeclarativeContainer):
        db = health_checked(providers.Resource(init_database, settings=settings), name="postgres")

:func:`service_checks` reads that one list back from a container (class or instance): the health route asks each
provider of a running container, and the doctor opens each provider alone in a container of its own. A module's
container subclass that declares another checked provider is checked by both; one that replaces a checked
provider under the same name stays checked under it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from shared.config import Settings

__all__ = ["HealthStatus", "ServiceCheck", "health_checked", "service_checks"]

P = TypeVar("P")


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


@dataclass(frozen=True, slots=True)
class ServiceCheck:
    """One service that ``/health`` and ``doctor`` check.

    Attributes:
        name: the service's name in their reports when its check cannot answer (``postgres``).
        provider: the container attribute that holds it (``db``).
        imports: the modules its check imports, or a function of the settings that names them; the doctor loads
            them before its clock starts, so a slow import is never taken for a slow service.
    """

    name: str
    provider: str
    imports: Sequence[str] | Callable[[Settings], Sequence[str]] = ()

    def modules(self, settings: Settings) -> tuple[str, ...]:
        """Return the modules this check imports under ``settings``."""
        return tuple(self.imports(settings) if callable(self.imports) else self.imports)


# Each declared provider by identity (kept alive here), with its name and imports; read by service_checks.
_declared: dict[int, tuple[object, str, Sequence[str] | Callable[[Settings], Sequence[str]]]] = {}


def health_checked(provider: P, *, name: str, imports: Sequence[str] | Callable[[Settings], Sequence[str]] = ()) -> P:
    """Declare that ``/health`` and ``doctor`` check what ``provider`` gives (it has ``health_check()``); return it.

    Args:
        provider: a container provider, declared in the container's class body.
        name: the service's name in the reports (``postgres``, ``redis``, ``storage``).
        imports: the modules the check imports (see :class:`ServiceCheck`).
    """
    _declared[id(provider)] = (provider, name, imports)
    return provider


def _declarative_class(container: Any) -> type[Any] | None:
    if isinstance(container, type):
        return container
    parent = getattr(container, "declarative_parent", None)
    return parent if isinstance(parent, type) else None


def service_checks(container: Any) -> tuple[ServiceCheck, ...]:
    """Return the checked services of ``container`` (a declarative container class or an instance of one).

    A provider is checked when it, or the provider of the same name in a base class, was declared with
    :func:`health_checked`; the nearest declaration gives the name and imports. The order is the providers'.
    """
    cls = _declarative_class(container)
    if cls is None:
        return ()
    checks: list[ServiceCheck] = []
    for attribute in getattr(cls, "providers", {}):
        for base in cls.__mro__:
            provider = vars(base).get(attribute)
            declared = _declared.get(id(provider)) if provider is not None else None
            if declared is not None and declared[0] is provider:
                checks.append(ServiceCheck(declared[1], attribute, declared[2]))
                break
    return tuple(checks)
