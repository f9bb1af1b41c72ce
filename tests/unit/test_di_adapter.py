"""The adapter over dependency-injector's internals: what it relies on still holds, and nobody else relies on it."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Iterator
from pathlib import Path

from dependency_injector import containers, providers
from dependency_injector.wiring import Closing, Provide, Provider

import shared
from shared import _di

PACKAGE = Path(shared.__file__).parent


class _Box(containers.DeclarativeContainer):
    value = providers.Object(1)


def test_every_wiring_marker_is_recognised() -> None:
    assert all(
        _di.is_marker(marker) for marker in (Provide[_Box.value], Provider[_Box.value], Closing[Provide[_Box.value]])
    )
    assert not _di.is_marker(_Box.value)
    assert not _di.is_marker(None)


def test_reset_resource_marks_it_closed_without_closing_it_again() -> None:
    closed: list[int] = []

    def resource() -> Iterator[int]:
        yield 1
        closed.append(1)

    provider = providers.Resource(resource)
    assert 1 == provider()
    assert provider.initialized
    _di.reset_resource(provider)
    assert not provider.initialized
    assert [] == closed


def test_a_container_is_bound_to_one_loop_until_unbound() -> None:
    container = _Box()
    loop = asyncio.new_event_loop()
    try:
        assert _di.loop_of(container) is None
        _di.bind_loop(container, loop)
        assert loop is _di.loop_of(container)
        _di.unbind_loop(container)
        _di.unbind_loop(container)
        assert _di.loop_of(container) is None
    finally:
        loop.close()


def _private_uses(path: Path) -> list[str]:
    """Return the dependency-injector internals a module touches: `_names` of its modules, reset_state."""
    tree = ast.parse(path.read_text())
    aliases = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dependency_injector")
        for alias in node.names
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else ""
            if node.attr == "reset_state" or (owner in aliases and node.attr.startswith("_")):
                found.append(f"{path.relative_to(PACKAGE)}: {owner}.{node.attr}")
    return found


def test_only_the_adapter_touches_dependency_injector_internals() -> None:
    found = [use for path in sorted(PACKAGE.rglob("*.py")) if path.name != "_di.py" for use in _private_uses(path)]
    assert [] == found
    assert ["_di.py: _wiring._Marker", "_di.py: provider.reset_state"] == sorted(_private_uses(PACKAGE / "_di.py"))
