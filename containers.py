"""The composition root of this repository: its examples, demo and tests wire :class:`Container`.

The library's container lives in the package (:mod:`shared.container`, typed for consumers); this module builds
on it the way a pipeline module's own container does, and names the modules of this repository to wire.
"""

from __future__ import annotations

from shared.container import Container as SharedContainer

__all__ = ["Container"]


class Container(SharedContainer):
    """The shared Container with every shared provider and the lifecycle, as this repository wires it."""
