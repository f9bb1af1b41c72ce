"""Check that every ``@inject`` parameter's annotation matches what its provider produces.

``Provide[...]`` is ``Any`` to mypy, so ``pool: int = Provide[Container.db]`` type-checks and fails only when
the stage runs. :func:`check_injections` walks a module's functions (and its classes' methods), finds each
parameter whose default is a ``Provide``/``Provider``/``Closing`` marker, works out the type the provider
produces (a Factory's or Singleton's class, a factory function's or Resource's declared return or yield type,
an Object's value, every option of a Selector) and reports each parameter whose annotation does not admit it.
Module authors call :func:`assert_injections` from one test.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from shared._di import is_marker
from shared._provided import admits as _admits
from shared._provided import hints as _hints
from shared._provided import provided_types
from shared._provided import show as _show

__all__ = ["InjectionProblem", "assert_injections", "check_injections", "provided_types"]


@dataclass(frozen=True, slots=True)
class InjectionProblem:
    """One ``@inject`` parameter whose annotation does not admit what its provider produces."""

    function: str
    parameter: str
    annotation: str
    provided: str

    def __str__(self) -> str:
        return f"{self.function}({self.parameter}: {self.annotation}) is given {self.provided}"


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
