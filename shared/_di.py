"""The one place that reaches past dependency-injector's public, typed API; everything else goes through it.

dependency-injector is compiled (Cython) and its stubs do not cover everything this package needs:

- the base class of the ``Provide``/``Provider``/``Closing`` markers, to tell an unwired parameter
  (:mod:`shared.wiring`);
- ``Resource.reset_state()``, to mark a Resource closed even when its close failed (:mod:`shared.lifecycle`);
- which event loop a started container belongs to: its async Resources (pools, clients) are bound to the
  loop that opened them, and dependency-injector does not record it;
- that an async Resource, and everything built on one, hands out a Future even once it is open, while the
  stubs promise the value: :func:`pin_started` makes every provider return the object itself after start
  (with public provider methods only, but relying on how async mode spreads).

When dependency-injector changes any of these, this module is the one to adapt (its tests,
``tests/unit/test_di_adapter.py``, say which).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from dependency_injector import providers
from dependency_injector import wiring as _wiring

__all__ = ["MARKER_TYPE", "bind_loop", "is_marker", "loop_of", "pin_started", "reset_resource", "unbind_loop", "unpin"]

# A Protocol in the stubs, a class at run time.
MARKER_TYPE: type[Any] = _wiring._Marker

_loops: weakref.WeakKeyDictionary[Any, asyncio.AbstractEventLoop] = weakref.WeakKeyDictionary()
# The Object overrides that pin each started async Resource to its value (see pin_started).
_pins: weakref.WeakKeyDictionary[Any, list[tuple[providers.Provider[Any], providers.Object[Any]]]] = (
    weakref.WeakKeyDictionary()
)


def is_marker(value: object) -> bool:
    """Return whether ``value`` is a ``Provide[...]``-style marker that wiring would have replaced."""
    return isinstance(value, MARKER_TYPE)


def reset_resource(provider: providers.Resource[Any]) -> None:
    """Mark ``provider`` as not initialised, without calling its shutdown again."""
    provider.reset_state()  # type: ignore[attr-defined]  # in the Cython provider, not in its stub


def bind_loop(container: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Record that ``container``'s resources were opened in ``loop``."""
    _loops[container] = loop


def loop_of(container: Any) -> asyncio.AbstractEventLoop | None:
    """Return the loop ``container``'s resources were opened in, or None when they are not open."""
    return _loops.get(container)


def unbind_loop(container: Any) -> None:
    """Forget ``container``'s loop (its resources are being closed); safe to call twice."""
    _loops.pop(container, None)


def pin_started(container: Any) -> None:
    """Make every provider return the object itself once the resources are open, as the type stubs promise.

    dependency-injector hands out a Future for an async Resource, and for everything that depends on one
    (``container.jobs()`` would be a Future typed as JobRepository). Once a Resource is open its value is final
    until shutdown, so each one is overridden with ``providers.Object(value)`` and taken out of async mode,
    the other providers recompute their mode on their next call, and the singletons built on a Future are
    reset. :func:`unpin` undoes it before the resources close. Only public provider methods are used.
    """
    pinned: list[tuple[providers.Provider[Any], providers.Object[Any]]] = []
    for provider in container.traverse(types=[providers.Resource]):
        if not provider.initialized or provider.overridden:
            continue
        value = provider()
        if isinstance(value, asyncio.Future) and value.done() and not value.cancelled():
            pin = providers.Object(value.result())
            provider.override(pin)
            provider.disable_async_mode()
            pinned.append((provider, pin))
    _pins[container] = pinned
    if pinned:
        _recompute_modes(container, {id(provider) for provider, _ in pinned})


def _recompute_modes(container: Any, resources: set[int]) -> None:
    """Let every provider but the Resources find its async mode again; rebuild singletons built on ``resources``."""
    for provider in container.traverse():
        if not isinstance(provider, providers.Resource):
            provider.reset_async_mode()
    for singleton in container.traverse(types=[providers.BaseSingleton]):
        if any(id(dependency) in resources for dependency in singleton.traverse(types=[providers.Resource])):
            singleton.reset()


def unpin(container: Any) -> None:
    """Remove the pins of :func:`pin_started`, leaving any override a caller added on top in place."""
    pinned = _pins.pop(container, [])
    for provider, pin in pinned:
        overrides = [override for override in provider.overridden if override is not pin]
        provider.reset_override()
        for override in overrides:
            provider.override(override)
        provider.enable_async_mode()
    if pinned:
        _recompute_modes(container, {id(provider) for provider, _ in pinned})
