"""Module ``__getattr__`` for names that are not (or no longer) there: the task list's module-level objects
(``from shared.config import settings``...), which raise ContainerOnlyError naming the container provider, and
names that moved, which keep working for one minor release with a DeprecationWarning naming their new home."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

from shared.errors import ContainerOnlyError

__all__ = ["container_only"]


def container_only(
    module: str, providers: Mapping[str, str], *, moved: Mapping[str, tuple[str, object]] | None = None
) -> Callable[[str], Any]:
    """Return a module ``__getattr__``: ContainerOnlyError for ``providers``' names; for ``moved``'s, the object
    with a DeprecationWarning that names its new home (``{"Money": ("shared.rules.MoneyLike", MoneyLike)}``);
    AttributeError otherwise."""
    renamed = dict(moved or {})

    def __getattr__(name: str) -> Any:  # noqa: N807 - it is installed as the module's __getattr__
        if name in renamed:
            home, value = renamed[name]
            warnings.warn(
                f"{module}.{name} is deprecated and goes in videogen-shared 0.3.0: use {home}",
                DeprecationWarning,
                stacklevel=2,
            )
            return value
        provider = providers.get(name)
        if provider is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        raise ContainerOnlyError(module=module, name=name, provider=provider)

    return __getattr__
