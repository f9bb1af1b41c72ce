"""Deprecated: ``from containers import Container`` (0.1.0's import), kept working for one minor release.

The wheel installs this file as the top-level module ``containers`` (``force-include`` in pyproject.toml); this
repository's own ``containers.py`` (its composition root) shadows it here. Import
``shared.container.Container`` instead; this module goes in 0.3.0.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["Container"]  # noqa: F822 - served by __getattr__, which warns

_MOVED = {"Container": "shared.container"}


def __getattr__(name: str) -> Any:
    """Return the moved name from its new home, with a DeprecationWarning that names that home."""
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module 'containers' has no attribute {name!r}")
    warnings.warn(
        f"'from containers import {name}' is deprecated and goes in videogen-shared 0.3.0: "
        f"use 'from {home} import {name}' (subclass it for your module's own providers)",
        DeprecationWarning,
        stacklevel=2,
    )
    from shared.container import Container  # noqa: PLC0415 - only when the old name is asked for

    return Container
