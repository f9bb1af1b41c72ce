"""The task list's module-level names (``from shared.config import settings``...) lead to the container."""

from __future__ import annotations

import importlib

import pytest

from shared.container import Container
from shared.errors import ContainerOnlyError, PipelineError

NAMES = [
    ("shared.config", "settings", "settings"),
    ("shared.database", "db", "db"),
    ("shared.redis_client", "redis", "redis"),
    ("shared.storage", "storage", "storage"),
    ("shared.cost_tracking", "cost_tracker", "cost_tracker"),
]


@pytest.mark.parametrize(("module", "name", "provider"), NAMES)
def test_importing_a_task_list_name_names_its_container_provider(module: str, name: str, provider: str) -> None:
    with pytest.raises(ImportError, match=rf"container\.{provider}\(\)") as raised:
        exec(f"from {module} import {name}", {})  # noqa: S102 - the import statement itself is under test
    assert isinstance(raised.value, ContainerOnlyError)
    assert isinstance(raised.value, PipelineError)
    assert "container_only" == raised.value.code
    assert provider in Container.providers


@pytest.mark.parametrize("module", sorted({module for module, _, _ in NAMES}))
def test_other_missing_names_stay_attribute_errors(module: str) -> None:
    assert not hasattr(importlib.import_module(module), "no_such_name")
