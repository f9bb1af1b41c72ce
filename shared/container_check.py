"""Check a container's wiring when it starts, not at the first call (dishka does this).

:func:`~shared.lifecycle.start_resources` (so ``lifespan``, the FastAPI lifespan and the test fixtures) calls
:func:`validate_container` before anything opens, and a wrong wiring stops the start with a
:class:`~shared.errors.WiringError` that names each provider at fault:

- **it cannot be built**: its callable does not take the arguments it is given (an unknown keyword, one
  positional too many) or lacks one it needs; a ``Dependency`` that nothing provides; nothing to call;
- **it is given the wrong type**: an argument is another provider whose type the parameter does not admit
  (the shared ``Settings`` where a module's own settings class is needed);
- **a subclass replaced it with the wrong type**: a container subclass redeclares a provider of its base
  with one whose type neither subclasses the base's nor implements a Protocol that the base's type implements
  (a fake that implements ``Cache`` may replace ``RedisClient``; a ``str`` may not replace ``CostTracker``).

Types come from the annotations (a class, a factory function's return, a Resource's yield type). They are
checked for what a class outside this package declares (a module's container subclass): the shared Container's
own declarations are checked by this package's tests, so a start imports nothing for them. A type named only
under ``if TYPE_CHECKING:`` in a third-party module that is not loaded yet is not imported for the check
(supabase costs 0.4 s) and goes unchecked. An override made on a container instance
(``container.db.override(...)``, the test fakes) is a test's choice and is only checked for whether it can be
built.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dependency_injector import containers, providers
from pydantic_settings import BaseSettings

from shared._provided import admits, hints, protocols_of, provided_types, show
from shared.errors import WiringError

__all__ = ["WiringError", "WiringProblem", "check_container", "validate_container"]

_PACKAGE = "shared"
# Providers that call what they provide with the arguments they were declared with.
_CALLING = (providers.Factory, providers.BaseSingleton, providers.Callable, providers.Resource)


@dataclass(frozen=True, slots=True)
class WiringProblem:
    """One provider of a container whose wiring is wrong, and what is wrong with it."""

    provider: str
    problem: str

    def __str__(self) -> str:
        return f"{self.provider}: {self.problem}"


def _fits(expected: Any, provided: Any) -> bool:
    """Return whether ``provided`` may stand where ``expected`` is wanted: a subclass, or a shared Protocol."""
    if admits(expected, provided):
        return True
    return any(admits(protocol, provided) for protocol in protocols_of(expected))


def _callee(provider: Any) -> Any:
    """Return what ``provider`` calls, or None when that is not a plain callable (a Resource class...)."""
    provides = provider.provides
    if isinstance(provider, providers.Resource) and inspect.isclass(provides):
        return None  # a resources.Resource subclass: its init() takes the arguments, checked by the library
    return provides


def _signature_problems(provider: Any) -> Iterator[str]:
    """Say why ``provider`` cannot be called with the arguments it was declared with."""
    callee = _callee(provider)
    if callee is None:
        if provider.provides is None:
            yield f"{type(provider).__name__} has nothing to build: give it a class or function"
        return
    try:
        signature = inspect.signature(callee)
    except (TypeError, ValueError):
        return  # a builtin without a signature: nothing to tell
    what = f"{getattr(callee, '__qualname__', repr(callee))}()"
    try:
        bound = signature.bind_partial(*provider.args, **provider.kwargs)
    except TypeError as error:
        yield f"{what} does not take the arguments it is given ({error})"
        return
    if inspect.isclass(callee) and issubclass(callee, BaseSettings):
        return  # settings read the environment for every field they are not given
    missing = [
        parameter.name
        for parameter in signature.parameters.values()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind not in {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}
        and parameter.name not in bound.arguments
    ]
    if missing:
        yield (
            f"{what} needs {', '.join(repr(m) for m in missing)}, which the provider does not give: add "
            f"{', '.join(f'{m}=<provider>' for m in missing)} to its declaration"
        )


def _argument_problems(provider: Any, named: dict[int, str], *, import_all: bool) -> Iterator[str]:
    """Say which arguments of ``provider`` are providers of a type its callable's parameter does not admit."""
    callee = _callee(provider)
    if callee is None:
        return
    annotations = hints(callee, import_all=import_all)
    try:
        bound = inspect.signature(callee).bind_partial(*provider.args, **provider.kwargs)
    except (TypeError, ValueError):
        return
    for parameter, value in bound.arguments.items():
        if parameter not in annotations or not isinstance(value, providers.Provider):
            continue
        source = f"the provider {named[id(value)]!r}" if id(value) in named else f"a {type(value).__name__}"
        for produced in provided_types(value, import_all=import_all):
            if not _fits(annotations[parameter], produced):
                yield (
                    f"its {parameter!r} wants {show(annotations[parameter])} and is given {source}, which "
                    f"gives {show(produced)}"
                )


def _replacement_problems(cls: type[Any], name: str, provider: Any, *, import_all: bool) -> Iterator[str]:
    """Say whether ``provider`` (``cls``'s own ``name``) replaced a base class's provider with another type."""
    for base in cls.__mro__[1:]:
        replaced = vars(base).get(name)
        if not isinstance(replaced, providers.Provider):
            continue
        before = provided_types(replaced, import_all=import_all)
        after = provided_types(provider, import_all=import_all)
        wrong = [(old, new) for new in after for old in before if not _fits(old, new)]
        for old, new in wrong:
            yield (
                f"{cls.__qualname__} replaces {base.__qualname__}.{name} ({show(old)}) with {show(new)}, which "
                f"neither subclasses {show(old)} nor implements a Protocol it implements"
            )
        return


def _classes(container: Any) -> list[type[Any]]:
    """Return the declarative container classes of ``container``, most derived first ([] for a dynamic one)."""
    cls = container if isinstance(container, type) else getattr(container, "declarative_parent", None)
    return [c for c in cls.__mro__ if issubclass(c, containers.DeclarativeContainer)] if cls else []


def _ours(cls: type[Any]) -> bool:
    """Return whether ``cls`` is this package's (its own tests check its wiring, with every type imported)."""
    return cls.__module__ == _PACKAGE or cls.__module__.startswith(f"{_PACKAGE}.")


def check_container(container: Any, *, every_type: bool = False) -> list[WiringProblem]:
    """Return every wiring problem of ``container`` (a declarative container class, or an instance of one).

    Whether each provider can be built is checked for all; the types, for the providers that a class outside
    this package declares (a module's container subclass), so that a start loads no module for the shared
    Container's own declarations, whose types this package's tests check with ``every_type=True`` (which also
    imports whatever an annotation names).
    """
    named: dict[str, Any] = dict(container.providers)
    ids = {id(provider): name for name, provider in named.items()}
    classes = _classes(container)
    declared_by = {name: next((c for c in classes if name in vars(c)), None) for name in named}
    problems: list[WiringProblem] = []
    for name, provider in named.items():
        if isinstance(provider, providers.Dependency) and not provider.is_defined:
            problems.append(
                WiringProblem(name, "a Dependency that nothing provides: override it, or give it a default")
            )
        # What is called at run time is the last override if any; the declaration if not.
        for candidate in (provider, *getattr(provider, "overridden", ())):
            if isinstance(candidate, _CALLING):
                problems.extend(WiringProblem(name, text) for text in _signature_problems(candidate))
        owner = declared_by[name]
        if owner is not None and _ours(owner) and not every_type:
            continue
        if isinstance(provider, _CALLING):
            problems.extend(
                WiringProblem(name, text) for text in _argument_problems(provider, ids, import_all=every_type)
            )
        if owner is not None:
            replaced = _replacement_problems(owner, name, vars(owner)[name], import_all=every_type)
            problems.extend(WiringProblem(name, text) for text in replaced)
    return problems


def validate_container(container: Any) -> None:
    """Raise :class:`~shared.errors.WiringError` naming every provider of ``container`` whose wiring is wrong."""
    problems = check_container(container)
    if problems:
        raise WiringError(
            problems=tuple(str(problem) for problem in problems),
            providers=tuple(dict.fromkeys(problem.provider for problem in problems)),
        )
