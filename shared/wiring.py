"""Provide an ``@inject`` that fails loudly when its module was never wired.

dependency-injector's ``@inject`` leaves the ``Provide[...]`` marker as the parameter's value when the
module was not wired, so the function runs with a marker object instead of the collaborator and fails far
away, or not at all. This ``inject`` is the same decorator with a guard in front: a marker that reaches the
function raises :class:`NotWiredError` naming the parameter and how to wire the module.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

from dependency_injector.wiring import Provide, Provider
from dependency_injector.wiring import inject as _di_inject

from shared._di import is_marker
from shared.errors import NotWiredError

__all__ = ["NotWiredError", "Provide", "Provider", "inject"]

P = ParamSpec("P")
R = TypeVar("R")


def _marked_parameters(func: Callable[..., Any]) -> dict[str, int]:
    """Return the parameters whose default is a wiring marker, with their positions."""
    marked: dict[str, int] = {}
    for index, parameter in enumerate(inspect.signature(func).parameters.values()):
        if is_marker(parameter.default):
            marked[parameter.name] = index
    return marked


def _check(name: str, marked: dict[str, int], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Raise when a marked parameter was not injected: it is missing (its default is the marker) or a marker."""
    for parameter, index in marked.items():
        if parameter in kwargs:
            value = kwargs[parameter]
        elif index < len(args):
            value = args[index]
        else:
            raise NotWiredError(function=name, parameter=parameter)
        if is_marker(value):
            raise NotWiredError(function=name, parameter=parameter)


def inject(func: Callable[P, R]) -> Callable[P, R]:
    """Decorate like dependency-injector's ``@inject``, refusing to run with an unwired marker."""
    marked = _marked_parameters(func)
    name = getattr(func, "__qualname__", repr(func))

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def guarded_async(*args: Any, **kwargs: Any) -> Any:
            _check(name, marked, args, kwargs)
            return await cast("Callable[..., Any]", func)(*args, **kwargs)

        return cast("Callable[P, R]", _di_inject(guarded_async))

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check(name, marked, args, kwargs)
        return func(*args, **kwargs)

    return cast("Callable[P, R]", _di_inject(guarded))
