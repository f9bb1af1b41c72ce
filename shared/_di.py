"""The one place that reaches past dependency-injector's public, typed API; everything else goes through it.

dependency-injector is compiled (Cython) and its stubs do not cover everything this package needs:

- the base class of the ``Provide``/``Provider``/``Closing`` markers, to tell an unwired parameter
  (:mod:`shared.wiring`);
- ``Resource.reset_state()``, to mark a Resource closed even when its close failed (:mod:`shared.lifecycle`);
- which event loop a started container belongs to: its async Resources (pools, clients) are bound to the
  loop that opened them, and dependency-injector does not record it.

When dependency-injector changes any of these, this module is the one to adapt (its tests,
``tests/unit/test_di_adapter.py``, say which).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from dependency_injector import providers
from dependency_injector import wiring as _wiring

__all__ = ["MARKER_TYPE", "bind_loop", "is_marker", "loop_of", "reset_resource", "unbind_loop"]

# A Protocol in the stubs, a class at run time.
MARKER_TYPE: type[Any] = _wiring._Marker

_loops: weakref.WeakKeyDictionary[Any, asyncio.AbstractEventLoop] = weakref.WeakKeyDictionary()


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
