"""What a provider produces, and whether a type admits it: read from annotations, shared by two checks.

:mod:`shared.testing.injections` checks each ``@inject`` parameter against its provider, and
:mod:`shared.container_check` checks a container's wiring when it starts. Both ask the same two questions:
which types can this provider produce (a Factory's or Singleton's class, a factory function's or Resource's
declared return or yield type, an Object's value, every option of a Selector), and does this annotation admit
that type (a subclass, or for a Protocol every public member).

Annotations often name types imported under ``if TYPE_CHECKING:``. With ``import_all`` those imports run; without
it (at a container's start, which should not load supabase for a check) only the package's own modules and
modules already loaded are imported, and a name that would need another import is left unchecked.
"""

from __future__ import annotations

import ast
import collections.abc
import functools
import importlib
import inspect
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from dependency_injector import providers

__all__ = ["admits", "hints", "protocols_of", "provided_types", "show"]

_YIELDING = {
    collections.abc.Iterator,
    collections.abc.AsyncIterator,
    collections.abc.Generator,
    collections.abc.AsyncGenerator,
    collections.abc.Iterable,
    collections.abc.AsyncIterable,
}
_OWN_PACKAGE = "shared"


def _importable(module: str, *, import_all: bool) -> bool:
    if import_all or module in sys.modules:
        return True
    return module == _OWN_PACKAGE or module.startswith(f"{_OWN_PACKAGE}.")


@functools.cache
def _type_checking_imports(module_name: str) -> tuple[tuple[str, str | None, str], ...]:
    """Return what ``module_name`` imports under ``if TYPE_CHECKING:``: (module, name or None, bound as)."""
    module = sys.modules.get(module_name)
    try:
        source = inspect.getsource(module) if module else ""
    except (OSError, TypeError):
        return ()
    found: list[tuple[str, str | None, str]] = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
            continue
        for statement in node.body:
            if isinstance(statement, ast.ImportFrom) and statement.module and statement.level == 0:
                found.extend((statement.module, alias.name, alias.asname or alias.name) for alias in statement.names)
            elif isinstance(statement, ast.Import):
                for alias in statement.names:
                    top = alias.name.split(".", 1)[0]
                    found.append((alias.name if alias.asname else top, None, alias.asname or top))
    return tuple(found)


def _type_checking_names(module_name: str, *, import_all: bool) -> dict[str, Any]:
    """Import the names a module imports only under ``if TYPE_CHECKING:`` (its annotations name them)."""
    names: dict[str, Any] = {}
    for module, name, bound in _type_checking_imports(module_name):
        if not _importable(module, import_all=import_all):
            continue
        try:
            imported = importlib.import_module(module)
        except ImportError:
            continue
        if name is None:
            names[bound] = imported
        elif hasattr(imported, name):
            names[bound] = getattr(imported, name)
    return names


def hints(function: Callable[..., Any], *, import_all: bool = True) -> dict[str, Any]:
    """Return the annotations of ``function`` (of a class: its ``__init__``), resolved ({} when one cannot be)."""
    target = function.__init__ if inspect.isclass(function) else function
    module = getattr(target, "__module__", "")
    if module not in sys.modules:
        return {}
    namespace = {**vars(sys.modules[module]), **_type_checking_names(module, import_all=import_all)}
    try:
        return typing.get_type_hints(target, globalns=namespace, include_extras=False)
    except (NameError, TypeError, AttributeError):
        return {}


def _returned(function: Callable[..., Any] | None, *, resource: bool, import_all: bool) -> list[Any]:
    if function is None:
        return []
    if inspect.isclass(function):
        return [function]
    returned = hints(function, import_all=import_all).get("return")
    if returned is None:
        return []
    if resource and typing.get_origin(returned) in _YIELDING:
        return [typing.get_args(returned)[0]]
    if inspect.iscoroutinefunction(function) and typing.get_origin(returned) is collections.abc.Coroutine:
        return [typing.get_args(returned)[-1]]  # pragma: no cover - an explicit Coroutine[...] annotation
    return [returned]


def provided_types(provider: Any, *, import_all: bool = True) -> list[Any]:
    """Return the types ``provider`` can produce ([] when it cannot be told)."""
    if isinstance(provider, providers.Selector):
        return [t for option in provider.providers.values() for t in provided_types(option, import_all=import_all)]
    if isinstance(provider, providers.Object):
        return [type(provider.provides)]
    if isinstance(provider, providers.Dependency):
        return [provider.instance_of] if provider.instance_of is not object else []
    if isinstance(provider, providers.Resource):
        return _returned(provider.provides, resource=True, import_all=import_all)
    if isinstance(provider, providers.Factory | providers.BaseSingleton | providers.Callable):
        return _returned(provider.provides, resource=False, import_all=import_all)
    return []


def _protocol_members(protocol: type[Any]) -> set[str]:
    members: set[str] = set()
    for base in protocol.__mro__:
        if base is object or base is typing.Protocol or base is typing.Generic:
            continue
        members |= {name for name in vars(base) if not name.startswith("_")}
    return members


def admits(annotation: Any, provided: Any) -> bool:
    """Return whether a value of type ``provided`` fits ``annotation`` (True when a run-time check cannot tell)."""
    if annotation is Any or provided is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in {typing.Union, types.UnionType}:
        return any(admits(member, provided) for member in typing.get_args(annotation))
    if origin is not None:
        annotation = origin
    provided = typing.get_origin(provided) or provided
    if not (inspect.isclass(annotation) and inspect.isclass(provided)):
        return True  # a TypeVar, a Literal...: beyond what a run-time check can tell
    if getattr(annotation, "_is_protocol", False):
        return all(hasattr(provided, name) for name in _protocol_members(annotation))
    return issubclass(provided, annotation)


def protocols_of(cls: type[Any]) -> list[type[Any]]:
    """Return the Protocols that ``cls`` satisfies among those defined in its module and the packages above it.

    A fake (``FakeCache``) does not subclass the client it stands in for (``RedisClient``) but implements the same
    Protocol (``Cache``), which lives beside the client.
    """
    found: list[type[Any]] = []
    parts = getattr(cls, "__module__", "").split(".")
    for end in range(len(parts), 0, -1):
        module = sys.modules.get(".".join(parts[:end]))
        for value in vars(module).values() if module is not None else ():
            if (
                inspect.isclass(value)
                and getattr(value, "_is_protocol", False)
                and value not in found
                and value.__module__.split(".", 1)[0] == parts[0]
                and admits(value, cls)
            ):
                found.append(value)
    return found


def show(annotation: Any) -> str:
    """Return a short name for ``annotation``."""
    return annotation.__qualname__ if inspect.isclass(annotation) else repr(annotation)
