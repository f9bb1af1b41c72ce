"""Names that moved keep working for one minor release, with a DeprecationWarning that names their new home."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from shared.container import Container

_ALIAS = Path(__file__).parents[2] / "compat" / "containers_alias.py"


def _installed_containers_module() -> ModuleType:
    """Load the file the wheel installs as the top-level ``containers`` (this checkout's own shadows it)."""
    spec = importlib.util.spec_from_file_location("_wheel_containers", _ALIAS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_old_containers_import_warns_and_gives_the_shared_container() -> None:
    module = _installed_containers_module()
    with pytest.warns(DeprecationWarning, match=r"use 'from shared\.container import Container'"):
        found = module.Container
    assert Container is found


def test_old_containers_module_refuses_names_it_never_had() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Settings'"):
        _ = _installed_containers_module().Settings


def test_the_package_version_is_the_projects() -> None:
    import tomllib  # noqa: PLC0415

    import shared  # noqa: PLC0415

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert project["version"] == shared.__version__


@pytest.mark.parametrize("module", ["shared.rules", "shared.cost_tracking"])
def test_the_old_money_input_name_warns_and_is_money_like(module: str) -> None:
    import importlib  # noqa: PLC0415

    from shared.rules import MoneyLike  # noqa: PLC0415

    with pytest.warns(DeprecationWarning, match=r"use shared\.rules\.MoneyLike"):
        found = importlib.import_module(module).Money
    assert MoneyLike == found
