"""Check that every ``@inject`` parameter's annotation matches what its provider produces.

``Provide[...]`` is ``Any`` to mypy, so ``pool: int = Provide[Container.db]`` type-checks and fails only when
the stage runs. :func:`check_injections` walks a module's functions (and its classes' methods), finds each
parameter whose default is a ``Provide``/``Provider``/``Closing`` marker, works out the type the provider
produces (a Factory's or Singleton's class, a factory function's or Resource's declared return or yield type,
an Object's value, every option of a Selector) and reports each parameter whose annotation does not admit it.
Module authors call :func:`assert_injections` from one test.
"""

from __future__ import annotations

import ast
import collections.abc
import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dependency_injector import providers

from shared._di import is_marker

__all__ = ["InjectionProblem", "assert_injections", "check_injections", "provided_types"]

_YIELDING = {
    collections.abc.Iterator,
    collections.abc.AsyncIterator,
    collections.abc.Generator,
    collections.abc.AsyncGenerator,
    collections.abc.Iterable,
    collections.abc.AsyncIterable,
}


@dataclass(frozen=True, slots=True)
class InjectionProblem:
    """One ``@inject`` parameter whose annotation does not admit what its provider produces."""

    function: str
    parameter: str
    annotation: str
    provided: str

    def __str__(self) -> str:
        return f"{self.function}({self.parameter}: {self.annotation}) is given {self.provided}"


def _type_checking_names(module_name: str) -> dict[str, Any]:
    """Import the names a module imports only under ``if TYPE_CHECKING:`` (its annotations name them)."""
    module = sys.modules.get(module_name)
    try:
        source = inspect.getsource(module) if module else ""
    except (OSError, TypeError):
        return {}
    names: dict[str, Any] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            block = ast.Module(
                body=[s for s in node.body if isinstance(s, ast.Import | ast.ImportFrom)], type_ignores=[]
            )
            exec(compile(block, module_name, "exec"), names)  # noqa: S102 - the module's own import lines
    names.pop("__builtins__", None)
    return names


def _hints(function: Callable[..., Any]) -> dict[str, Any]:
    module = getattr(function, "__module__", "")
    namespace = {**vars(sys.modules[module]), **_type_checking_names(module)} if module in sys.modules else {}
    try:
        return typing.get_type_hints(function, globalns=namespace, include_extras=False)
    except (NameError, TypeError, AttributeError):
        return {}


def _returned(function: Callable[..., Any] | None, *, resource: bool) -> list[Any]:
    if function is None:
        return []
    if inspect.isclass(function):
        return [function]
    returned = _hints(function).get("return")
    if returned is None:
        return []
    if resource and typing.get_origin(returned) in _YIELDING:
        return [typing.get_args(returned)[0]]
    if inspect.iscoroutinefunction(function) and typing.get_origin(returned) is collections.abc.Coroutine:
        return [typing.get_args(returned)[-1]]  # pragma: no cover - an explicit Coroutine[...] annotation
    return [returned]


def provided_types(provider: Any) -> list[Any]:
    """Return the types ``provider`` can produce ([] when it cannot be told)."""
    if isinstance(provider, providers.Selector):
        return [t for option in provider.providers.values() for t in provided_types(option)]
    if isinstance(provider, providers.Object):
        return [type(provider.provides)]
    if isinstance(provider, providers.Dependency):
        return [provider.instance_of] if provider.instance_of is not object else []
    if isinstance(provider, providers.Resource):
        return _returned(provider.provides, resource=True)
    if isinstance(provider, providers.Factory | providers.BaseSingleton | providers.Callable):
        return _returned(provider.provides, resource=False)
    return []


def _protocol_members(protocol: type[Any]) -> set[str]:
    members: set[str] = set()
    for base in protocol.__mro__:
        if base is object or base is typing.Protocol or base is typing.Generic:
            continue
        members |= {name for name in vars(base) if not name.startswith("_")}
    return members


def _admits(annotation: Any, provided: Any) -> bool:
    if annotation is Any or provided is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in {typing.Union, types.UnionType}:
        return any(_admits(member, provided) for member in typing.get_args(annotation))
    if origin is not None:
        annotation = origin
    provided = typing.get_origin(provided) or provided
    if not (inspect.isclass(annotation) and inspect.isclass(provided)):
        return True  # a TypeVar, a Literal...: beyond what a run-time check can tell
    if getattr(annotation, "_is_protocol", False):
        return all(hasattr(provided, name) for name in _protocol_members(annotation))
    return issubclass(provided, annotation)


def _functions(module: types.ModuleType) -> Iterable[tuple[str, Callable[..., Any]]]:
    for name, value in vars(module).items():
        if inspect.isfunction(value) and value.__module__ == module.__name__:
            yield name, value
        elif inspect.isclass(value) and value.__module__ == module.__name__:
            for method_name, method in vars(value).items():
                if inspect.isfunction(method):
                    yield f"{name}.{method_name}", method


def check_injections(*modules: types.ModuleType) -> list[InjectionProblem]:
    """Return every ``@inject`` parameter in ``modules`` whose annotation does not admit its provider's type."""
    problems: list[InjectionProblem] = []
    for module in modules:
        for name, function in _functions(module):
            original = inspect.unwrap(function)
            hints = _hints(original)
            for parameter in inspect.signature(original).parameters.values():
                if not is_marker(parameter.default) or parameter.name not in hints:
                    continue
                provider = parameter.default.provider
                if isinstance(provider, str):
                    continue  # a string id, resolved at wiring time; nothing to check statically
                expected = hints[parameter.name]
                where = f"{module.__name__}.{name}"
                problems.extend(
                    InjectionProblem(where, parameter.name, _show(expected), _show(provided))
                    for provided in provided_types(provider)
                    if not _admits(expected, provided)
                )
    return problems


def assert_injections(*modules: types.ModuleType) -> None:
    """Fail (AssertionError, one line per parameter) when an ``@inject`` annotation does not match its provider."""
    problems = check_injections(*modules)
    if problems:
        lines = "\n".join(f"  {problem}" for problem in problems)
        msg = f"@inject parameters annotated with a type their provider does not produce:\n{lines}"
        raise AssertionError(msg)


def _show(annotation: Any) -> str:
    return annotation.__qualname__ if inspect.isclass(annotation) else repr(annotation)
