"""The module-level objects an older task list names (``from shared.config import settings``...), which do not
exist: a module's ``__getattr__`` built here raises ContainerOnlyError naming the provider to use instead."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NoReturn

from shared.errors import ContainerOnlyError

__all__ = ["container_only"]


def container_only(module: str, providers: Mapping[str, str]) -> Callable[[str], NoReturn]:
    """Return a module ``__getattr__``: ContainerOnlyError for ``providers``' names, AttributeError otherwise."""

    def __getattr__(name: str) -> NoReturn:  # noqa: N807 - it is installed as the module's __getattr__
        provider = providers.get(name)
        if provider is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        raise ContainerOnlyError(module=module, name=name, provider=provider)

    return __getattr__
